"""Compare runs offline: one self-contained HTML page (plots and GIFs inlined) plus the plots as PNGs.

Everything is read from the run folders train.py writes and, for a sweep folder, from its sweep.json; no
W&B account or server is involved: this is what a person without one looks at. ``collect`` reads the runs,
``plots`` draws the figures, ``html`` writes the page.
"""

from svg.report.collect import ReportError, Run, collect, varied
from svg.report.html import write_report

__all__ = ["ReportError", "Run", "collect", "varied", "write_report"]
