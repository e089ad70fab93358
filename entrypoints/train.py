"""Train an SVG model; every run is a W&B run (offline without credentials) and a local run folder.

python entrypoints/train.py --config cpu --out runs/first
python entrypoints/train.py --config seed --kl.mode=cyclical --optim.lr=2e-4 --out runs/cyc
python entrypoints/train.py --config cpu --out runs/first --resume auto
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from svg.cli import OneLineParser, add_experiment_arguments, experiment_from_args, run_cli


def default_out(exp) -> Path:
    """runs/<run name>, or runs/<run name>-N when that holds a run already; under `wandb agent`
    runs/sweep-<sweep id>/<run id>, one folder per agent run."""
    from svg.tracking import run_name
    from svg.train import holds_run

    sweep, run = os.environ.get("WANDB_SWEEP_ID"), os.environ.get("WANDB_RUN_ID")
    if sweep and run:
        return Path("runs") / f"sweep-{sweep}" / run
    base = Path("runs") / (exp.tracking.name or run_name(exp))
    return next(p for n in range(1, 10**6) if not holds_run(p := base if n == 1 else Path(f"{base}-{n}")))


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="train.py", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out",
        type=Path,
        help="run folder, never one that holds another run (default: a fresh runs/<run name>[-N]; "
        "under wandb agent runs/sweep-<sweep id>/<run id>)",
    )
    parser.add_argument(
        "--resume",
        nargs="?",
        const="must",
        choices=["must", "auto"],
        help="continue from OUT/checkpoints/last.pt (bare: it must exist; 'auto': if it exists)",
    )
    add_experiment_arguments(parser)
    args = parser.parse_args(argv)

    def go() -> None:
        import torch.distributed as dist

        from svg.train import Trainer

        exp = experiment_from_args(args)
        out = args.out or default_out(exp)
        try:
            result = Trainer(exp, out, resume=args.resume).fit()
        finally:
            if dist.is_initialized():  # under torchrun: NCCL warns at exit about a group left open
                dist.destroy_process_group()
        if "val/psnr" in result:
            print(
                f"done: val psnr {result['val/psnr']:.2f} dB, copy-last {result['val/psnr_copy_last']:.2f} dB, "
                f"best {result['val/psnr_best']:.2f} dB; run folder {out}"
            )

    return run_cli("train.py", go)


if __name__ == "__main__":
    sys.exit(main())
