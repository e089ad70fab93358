"""Measure training, prediction and loading throughput, and the speed-up over the seed's per-frame step.

python entrypoints/bench.py --config cpu --out bench/cpu.json
python entrypoints/bench.py --config seed --steps 4 --out bench/seed.json
python entrypoints/bench.py --config cpu --precision bf16 --no-channels-last --no-reference --out bench/x.json

The project's step (time-batched, the trainer's precision/channels_last/compile) and the reference step
(per frame, fp32) alternate in one process on the same batches; see docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from svg.cli import OneLineParser, add_experiment_arguments, at_least, experiment_from_args, run_cli

BRANCHES = {"both": (True, False), "on": (True,), "off": (False,)}
"""--teacher-forcing: the branches timed (True: teacher forced)."""


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(
        prog="bench.py",
        description=__doc__.split("\n\n")[0],
        epilog="Without --config: the seed preset where CUDA is available, else the cpu preset.",
    )
    parser.add_argument("--out", type=Path, help="JSON report (default: bench/<preset>-<device>.json)")
    parser.add_argument("--steps", type=at_least(1), default=5, help="timed training steps per arm (default: 5)")
    parser.add_argument(
        "--warmup",
        type=at_least(1),
        default=1,
        help="untimed steps per arm before timing; the last gives the peak memory (default: 1; 2+ with compile)",
    )
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], help="= --train.precision")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, help="= --train.channels_last")
    parser.add_argument(
        "--compile",
        nargs="?",
        const="default",
        choices=["off", "default", "reduce-overhead"],
        help="= --train.compile (alone: default)",
    )
    parser.add_argument("--no-compile", dest="compile", action="store_const", const="off", help="= --compile off")
    parser.add_argument(
        "--captured",
        action="store_true",
        help="also time the captured step (train.compile=reduce-overhead: CUDA graphs; compile default on a CPU)",
    )
    parser.add_argument(
        "--validation",
        action="store_true",
        help="also time one validation as the trainer runs it (train.val_sequences, val_batch_size, val_samples) and "
        "project an epoch and the whole run",
    )
    parser.add_argument("--threads", type=at_least(1), help="= --train.threads")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help="= --train.device")
    parser.add_argument("--batch-size", type=at_least(1), help="= --data.batch_size")
    parser.add_argument(
        "--teacher-forcing",
        choices=["both", "on", "off"],
        default="both",
        help="time the teacher-forced step (decoder batched over time), the one fed its own predictions, or both, "
        "mixed in the share the run's schedule sets (default: both)",
    )
    parser.add_argument("--no-reference", action="store_true", help="skip the seed's per-frame fp32 step")
    parser.add_argument("--eval-batches", type=at_least(0), default=2, help="timed model.predict batches (default: 2)")
    parser.add_argument(
        "--loader-batches", type=at_least(0), default=20, help="timed batches per loader, 0 = skip (default: 20)"
    )
    parser.add_argument("--loader-workers", type=at_least(0), default=0, help="loader worker processes (default: 0)")
    parser.add_argument(
        "--data-root", type=Path, help="dataset to load from (default: a small synthetic set in a temp folder)"
    )
    parser.add_argument(
        "--step-data",
        choices=["synthetic", "random"],
        default="synthetic",
        help="training batches from the dataset or random uint8 frames (default: synthetic)",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="K=V[,K=V]",
        help="an extra arm timed in the same alternation: step=project|reference, precision=auto|fp32|bf16|fp16, "
        "channels_last=true|false, compile=off|default|reduce-overhead (repeatable)",
    )
    add_experiment_arguments(parser)
    parser.set_defaults(config=None)
    args = parser.parse_args(argv)

    def go() -> None:
        if args.config is None:
            import torch

            args.config = "seed" if torch.cuda.is_available() else "cpu"
        shortcuts = {
            "precision": "train.precision",
            "channels_last": "train.channels_last",
            "compile": "train.compile",
            "threads": "train.threads",
            "device": "train.device",
            "batch_size": "data.batch_size",
        }
        for option, dotted in shortcuts.items():
            if getattr(args, option) is not None:
                setattr(args, dotted, getattr(args, option))
        exp = experiment_from_args(args)  # bad config exits here, before torch is imported
        from svg.bench import BenchOptions, run, summary_lines
        from svg.values import plain

        opts = BenchOptions(
            steps=args.steps,
            warmup=args.warmup,
            branches=BRANCHES[args.teacher_forcing],
            reference=not args.no_reference,
            eval_batches=args.eval_batches,
            loader_batches=args.loader_batches,
            loader_workers=args.loader_workers,
            data_root=args.data_root,
            step_data=args.step_data,
            variants=tuple(args.variant),
            captured=args.captured,
            validation=args.validation,
        )

        def write(report: dict) -> Path:
            out = args.out or Path("bench") / f"{Path(args.config).stem}-{report['device'].split(':')[0]}.json"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(plain(report), indent=1) + "\n")
            return out

        report = run(exp, opts, preset=Path(args.config).stem, on_partial=write)
        out = write(report)
        print("\n".join(summary_lines(report)))
        print(f"report: {out}")

    return run_cli("bench.py", go)


if __name__ == "__main__":
    sys.exit(main())
