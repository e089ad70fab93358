"""Run a W&B sweep YAML offline with W&B's own sweep engine; every trial is a W&B run (offline without credentials)
and a run folder.

python entrypoints/sweep.py sweeps/annealing.yaml --parallel 2
python entrypoints/sweep.py sweeps/lr_bayes.yaml --count 8 --out runs/sweep-lr
python entrypoints/sweep.py sweeps/annealing.yaml --set kl.ratio=0.5 --set train.epochs=6 --resume
"""

from __future__ import annotations

import sys
from pathlib import Path

from svg.cli import OneLineParser, at_least, run_cli


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="sweep.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", type=Path, help="a W&B sweep YAML (the same file `wandb sweep` takes)")
    parser.add_argument(
        "--out", type=Path, help="sweep folder: sweep.json + one run folder per trial (default: runs/sweep-<YAML name>)"
    )
    parser.add_argument(
        "--count",
        type=at_least(1),
        help="trials in the sweep at most (random and bayes need it or "
        "the YAML's run_cap; the smaller of the two wins)",
    )
    parser.add_argument("--parallel", type=at_least(1), default=1, help="trials run at once (default: 1)")
    parser.add_argument(
        "--threads", type=at_least(1), help="CPU threads per trial, set as OMP_NUM_THREADS (default: cores / parallel)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="pin a parameter to one value for this sweep, e.g. --set train.epochs=6 (repeatable)",
    )
    parser.add_argument(
        "--sweep-id",
        metavar="[ENTITY/PROJECT/]ID",
        help="a sweep made with `wandb sweep` that the trial runs join (online, or at `wandb sync`); "
        "default: a local id. Either way each run's W&B group is ID:<its setting> (runs that differ only in "
        "train.seed share one) and its job_type the sweep's name",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the sweep in --out: finished trials are kept, interrupted ones resume from their checkpoint",
    )
    args = parser.parse_args(argv)

    def go() -> None:
        from svg.sweeps import SWEEP_FILE, SweepRunner, load_sweep, parse_set

        config = load_sweep(args.sweep, parse_set(args.set))
        out = args.out or Path("runs") / f"sweep-{args.sweep.stem}"
        runner = SweepRunner(
            config,
            out,
            count=args.count,
            parallel=args.parallel,
            threads=args.threads,
            resume=args.resume,
            wandb_sweep_id=args.sweep_id,
            source=str(args.sweep),
        )
        gpus = f" and one GPU (of {','.join(runner.gpus)})" if runner.gpus else ""
        print(
            f"sweep {runner.sweep_id} ({config['method']}) in {out}, {args.parallel} trial(s) at a time, "
            f"{runner.threads} thread(s){gpus} each"
        )
        record = runner.run()
        trials = record["trials"]
        states = {s: sum(t["state"] == s for t in trials) for s in ("finished", "stopped", "failed")}
        print(f"sweep done: {', '.join(f'{n} {s}' for s, n in states.items() if n)} ({out / SWEEP_FILE})")
        metric = config.get("metric") or {}
        scored = [t for t in trials if isinstance(t["summary"].get(metric.get("name")), int | float)]
        if scored:
            pick = max if metric.get("goal", "minimize") == "maximize" else min
            best = pick(scored, key=lambda t: t["summary"][metric["name"]])
            shown = " ".join(f"{k}={v}" for k, v in best["params"].items())
            print(f"best: trial {best['id']} {metric['name']} {best['summary'][metric['name']]:.4g} ({shown})")
        print(f"compare: python entrypoints/report.py {out}")
        print(f"upload (with a W&B account): wandb sync {out}/*/wandb/offline-run-*")

    return run_cli("sweep.py", go)


if __name__ == "__main__":
    sys.exit(main())
