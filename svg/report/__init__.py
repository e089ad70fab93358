"""Compare runs offline: one self-contained HTML page (plots and GIFs inlined) plus the plots as PNGs.

Everything is read from the run folders train.py writes and, for a sweep folder, from its sweep.json; no
W&B account or server is involved: this is what a person without one looks at. ``collect`` reads the runs,
``study`` groups the ones that differ only in their seed (``stats``: intervals and paired differences), ``plots``
draws the figures, ``html`` writes the page.
"""

from svg.report.collect import ReportError, Run, collect, varied
from svg.report.html import write_report
from svg.report.settings import Study, study
from svg.report.stats import Interval, mean_ci, paired_diff, verdict

__all__ = [
    "Interval",
    "ReportError",
    "Run",
    "Study",
    "collect",
    "mean_ci",
    "paired_diff",
    "study",
    "varied",
    "verdict",
    "write_report",
]
