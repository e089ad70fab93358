"""Compare runs in one self-contained HTML page: results table, settings over seeds (mean ± 95% interval, paired
differences), curves overlaid per run, each run's latest GIF.

python entrypoints/report.py runs/sweep-annealing
python entrypoints/report.py runs/cpu runs/cyc --out runs/report
python entrypoints/report.py runs/sweep-seeds --reference kl.mode=monotonic
"""

from __future__ import annotations

import sys
from pathlib import Path

from svg.cli import OneLineParser, run_cli


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="report.py", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "paths",
        nargs="+",
        type=Path,
        help="a sweep folder (sweep.json), run folders (metrics.jsonl), or folders of run folders",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="folder for report.html and the PNGs (default: PATH/report for one path, else runs/report)",
    )
    parser.add_argument("--title", help="page title (default: the sweep's name)")
    parser.add_argument(
        "--reference",
        metavar="NAME=VALUE[,NAME=VALUE]",
        help="the setting the paired differences over seeds are taken against, e.g. kl.mode=monotonic "
        "(default: the first setting)",
    )
    args = parser.parse_args(argv)

    def go() -> None:
        from svg.report import write_report

        out = args.out or (args.paths[0] / "report" if len(args.paths) == 1 else Path("runs") / "report")
        path = write_report(args.paths, out, args.title, args.reference)
        print(f"report: {path.resolve().as_uri()}")

    return run_cli("report.py", go)


if __name__ == "__main__":
    sys.exit(main())
