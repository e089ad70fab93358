"""Run the study: the seed report's three questions (KL annealing, teacher forcing, learning rate) and the
project's beta range, each a sweep YAML over seeds (sweeps/study-*.yaml) run offline, every final checkpoint
evaluated on the test split under the seed and svg protocols, one report per study, the verdicts by the rules
fixed in svg/study.py (docs/study.md). Resumable: run it again to go on where it stopped.

python entrypoints/study.py                      # all four studies into runs/study (make study)
python entrypoints/study.py --studies annealing --parallel 4
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from svg.cli import OneLineParser, at_least, run_cli
from svg.study import STUDIES


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="study.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/study"), help="study folder (default: runs/study)")
    parser.add_argument("--studies", nargs="+", choices=STUDIES, default=list(STUDIES), help="(default: all four)")
    parser.add_argument("--parallel", type=at_least(1), default=2, help="trials run at once (default: 2)")
    parser.add_argument(
        "--seed-sequences",
        type=at_least(1),
        default=128,
        help="test sequences the seed protocol (10 samples each) scores (default: 128; 256 is the whole split)",
    )
    parser.add_argument(
        "--svg-sequences",
        type=at_least(1),
        default=8,
        help="test sequences the svg protocol (100 samples each) scores (default: 8; 256 is the whole split)",
    )
    parser.add_argument("--figures", type=Path, help="also copy the figures and RESULTS.md into this folder")
    args = parser.parse_args(argv)

    def go() -> None:
        from svg.study import run_study

        results = run_study(
            args.out, tuple(args.studies), args.parallel, {"seed": args.seed_sequences, "svg": args.svg_sequences}
        )
        print((args.out / "RESULTS.md").read_text())
        if args.figures:
            args.figures.mkdir(parents=True, exist_ok=True)
            for path in [args.out / "RESULTS.md", *args.out.glob("*.png")]:
                shutil.copy2(path, args.figures / path.name)
        print(f"verdicts of {', '.join(results)}: {args.out / 'RESULTS.md'}; pages: {args.out}/*/report/report.html")

    return run_cli("study.py", go, resume="run the same command again to continue")


if __name__ == "__main__":
    sys.exit(main())
