"""Evaluate a checkpoint: test PSNR/SSIM (the seed's protocol and the long horizon), best of N samples,
the copy-last-frame baseline, per-frame curves with 95% intervals, GIFs, LPIPS and FVD on request; logged to the
checkpoint's W&B run.

python entrypoints/evaluate.py runs/cpu/checkpoints/best.pt
python entrypoints/evaluate.py runs/cpu/checkpoints/best.pt --protocol svg --out results/cpu-svg.json
python entrypoints/evaluate.py CKPT --metrics psnr,ssim,lpips,fvd --metrics.i3d i3d_torchscript.pt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from svg.cli import OneLineParser, at_least, run_cli
from svg.protocols import LPIPS_NETS, METRICS, PROTOCOLS


def metric_names(text: str) -> tuple[str, ...]:
    """argparse type: comma-separated METRICS names."""
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in METRICS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"{', '.join(unknown) or 'nothing'} is not among {','.join(METRICS)}")
    return names


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="evaluate.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="a checkpoint written by train.py (e.g. RUN/checkpoints/best.pt)")
    parser.add_argument("--split", choices=["train", "validate", "test"], default="test", help="(default: test)")
    parser.add_argument(
        "--out", type=Path, help="results JSON; GIF, strip and plot go beside it (default: RUN/eval/SPLIT-NAME.json)"
    )
    parser.add_argument("--data.root", dest="data_root", help="dataset folder (default: the checkpoint's data.root)")
    parser.add_argument(
        "--protocol",
        choices=list(PROTOCOLS),
        default="project",
        help="; ".join(f"{p.name}: {p.summary}" for p in PROTOCOLS.values()) + " (default: project)",
    )
    parser.add_argument(
        "--samples", type=at_least(1), help="samples from the prior per sequence (default: the protocol's)"
    )
    parser.add_argument(
        "--frames", type=at_least(1), help="predicted frames the headline figures average (default: the protocol's)"
    )
    parser.add_argument("--horizon", type=at_least(1), help="predicted frames per sequence (default: the protocol's)")
    parser.add_argument(
        "--metrics",
        type=metric_names,
        help=f"comma-separated, from {','.join(METRICS)}; PSNR and SSIM are always computed (default: the protocol's, "
        "psnr,ssim but for bair-fvd)",
    )
    parser.add_argument(
        "--metrics.lpips_net", dest="lpips_net", choices=LPIPS_NETS, help="LPIPS backbone (default: the protocol's)"
    )
    parser.add_argument(
        "--metrics.lpips_weights",
        dest="lpips_weights",
        metavar="PATH",
        help="torchvision's ImageNet weights of the LPIPS backbone (alexnet-owt-7be5be79.pth, vgg16-397923af.pth; "
        "default: torch's cache, $TORCH_HOME/hub/checkpoints, fetched there on first use)",
    )
    parser.add_argument(
        "--metrics.i3d",
        dest="i3d",
        metavar="PATH",
        help="the FVD I3D, StyleGAN-V's TorchScript i3d_torchscript.pt (default: torch's cache, fetched there on "
        "first use)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the prior samples (default: 0)")
    parser.add_argument(
        "--limit", type=at_least(1), help="score only the first N sequences (default: the protocol's, else all)"
    )
    parser.add_argument(
        "--batch-size", type=at_least(1), help="sequences per batch (default: the checkpoint's validation batch)"
    )
    parser.add_argument(
        "--weights",
        choices=["auto", "ema", "trained"],
        default="auto",
        help="the moving average of the weights (runs with train.ema_decay) or the trained weights themselves "
        "(default: auto, the moving average where the checkpoint has one, the weights its run validated with)",
    )
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="(default: auto)")
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32", help="(default: fp32)")
    parser.add_argument(
        "--tracking",
        choices=["auto", "online", "offline", "disabled"],
        help="W&B mode (default: the checkpoint's tracking.mode)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    def go() -> None:
        from svg.scoring import EvaluationOptions, default_output, evaluate_checkpoint

        opts = EvaluationOptions(
            split=args.split,
            protocol=args.protocol,
            data_root=args.data_root,
            samples=args.samples,
            frames=args.frames,
            horizon=args.horizon,
            metrics=args.metrics,
            lpips_net=args.lpips_net,
            lpips_weights=args.lpips_weights,
            i3d=args.i3d,
            seed=args.seed,
            limit=args.limit,
            batch_size=args.batch_size,
            weights=args.weights,
            device=args.device,
            precision=args.precision,
            tracking=args.tracking,
            progress=not args.no_progress,
        )
        out = args.out or default_output(args.checkpoint, args.split)
        summary = evaluate_checkpoint(args.checkpoint, out, opts)
        print(f"{args.split}: {summary.describe()}; results in {out}")

    return run_cli("evaluate.py", go)


if __name__ == "__main__":
    sys.exit(main())
