"""The one place that talks to Weights & Biases, plus the local metrics.jsonl every run keeps
(written here, read back by ``read_metrics`` for sweeps and reports).

Every logged step goes to both, with the same keys and an explicit ``iter`` or ``epoch`` step key
(a resumed offline run restarts W&B's own ``_step``). If W&B cannot start or a call fails, training
goes on with the local files and says so once.
"""

from __future__ import annotations

import contextlib
import json
import netrc
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from svg.config import Experiment, flat
from svg.values import plain

METRICS_FILE = "metrics.jsonl"

EPOCH_KEYS = ("val/", "epoch/", "beta", "tfr", "lr", "kl/", "media/")


def _has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def resolve_mode(mode: str) -> str:
    """auto: WANDB_MODE when set, else online with credentials and offline without."""
    if mode != "auto":
        return mode
    if os.environ.get("WANDB_MODE") in ("online", "offline", "disabled"):
        return os.environ["WANDB_MODE"]
    return "online" if _has_credentials() else "offline"


def run_name(exp: Experiment) -> str:
    """Readable default name: what a study usually varies, so runs tell themselves apart."""
    return f"{exp.model.encoder}-kl_{exp.kl.mode}-tfr{exp.tfr.start_decay_epoch}-lr{exp.optim.lr:g}-s{exp.train.seed}"


def read_metrics(path: Path) -> list[dict]:
    """The complete records of a metrics.jsonl (a line still being written is skipped)."""
    records = []
    try:
        text = path.read_text()
    except FileNotFoundError:
        return records
    for line in text.splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            record = json.loads(line)
            if isinstance(record, dict):
                records.append(record)
    return records


class Tracker:
    """A W&B run (or none) and ``metrics.jsonl`` in the run folder, written side by side."""

    def __init__(self, exp: Experiment, out: Path, run_id: str | None = None, enabled: bool = True):
        self.out = out
        self.metrics_path = out / METRICS_FILE
        self._metrics = None
        self.run = None
        self.run_id = run_id
        self.sync_dir: str | None = None
        self._warned = False
        self.mode = resolve_mode(exp.tracking.mode) if enabled else "disabled"
        if self.mode == "disabled":
            return
        try:
            import wandb

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.run = wandb.init(
                    project=exp.tracking.project,
                    entity=exp.tracking.entity,
                    name=exp.tracking.name or run_name(exp),
                    group=exp.tracking.group,
                    tags=exp.tracking.tags or None,
                    config=flat(exp),
                    dir=str(out),
                    mode=self.mode,
                    id=run_id,
                    resume="allow",
                    settings=wandb.Settings(console="off", quiet=True),
                )
            self.run_id = self.run.id
            self.run.define_metric("iter")
            self.run.define_metric("epoch")
            self.run.define_metric("train/*", step_metric="iter")
            for prefix in EPOCH_KEYS:
                self.run.define_metric(f"{prefix}*" if prefix.endswith("/") else prefix, step_metric="epoch")
            self.run.define_metric("val/psnr", step_metric="epoch", summary="max,last")
            if self.mode == "offline":
                self.sync_dir = str(self.run.settings.sync_dir)
        except Exception as e:  # noqa: BLE001 - any W&B failure must leave training running
            self._fail(f"W&B could not start ({type(e).__name__}: {e})")

    def _fail(self, why: str) -> None:
        if not self._warned:
            print(f"svg-sweeps: {why}; continuing with local logs in {self.metrics_path}", file=sys.stderr)
            self._warned = True
        self.run = None

    def truncate_after(self, key: str, value: int) -> None:
        """Drop local records logged after ``key`` reached ``value`` (resume must not duplicate steps)."""
        if not self.metrics_path.exists():
            return
        kept = [
            line
            for line in self.metrics_path.read_text().splitlines()
            if line and json.loads(line).get(key, -1) <= value
        ]
        tmp = self.metrics_path.with_suffix(".tmp")
        tmp.write_text("".join(f"{line}\n" for line in kept))
        os.replace(tmp, self.metrics_path)

    def log(
        self,
        metrics: dict[str, Any],
        gifs: dict[str, Path] | None = None,
        images: dict[str, Path] | None = None,
        curves: dict[str, tuple[list[float], str]] | None = None,
        tables: dict[str, tuple[list[str], list[list]]] | None = None,
    ) -> None:
        """Log scalars (and lists) plus media files. ``curves`` maps a key to (values, x label),
        ``tables`` a key to (columns, rows)."""
        if self._metrics is None:
            self._metrics = self.metrics_path.open("a", buffering=1)  # line-buffered: readers see whole records
        self._metrics.write(json.dumps(plain(metrics)) + "\n")
        if self.run is None:
            return
        try:
            import wandb

            payload: dict[str, Any] = {k: v for k, v in metrics.items() if not isinstance(v, list)}
            for key, path in (gifs or {}).items():
                payload[key] = wandb.Video(str(path), format="gif")
            for key, path in (images or {}).items():
                payload[key] = wandb.Image(str(path))
            for key, (columns, rows) in (tables or {}).items():
                payload[key] = wandb.Table(columns=columns, data=rows)
            for key, (values, x_label) in (curves or {}).items():
                table = wandb.Table(columns=[x_label, key], data=[[i + 1, v] for i, v in enumerate(values)])
                payload[key] = wandb.plot.line(table, x_label, key, title=key)
            self.run.log(payload)
        except Exception as e:  # noqa: BLE001
            self._fail(f"W&B logging failed ({type(e).__name__}: {e})")

    def summary(self, values: dict[str, Any]) -> None:
        if self.run is None:
            return
        try:
            self.run.summary.update(values)
        except Exception as e:  # noqa: BLE001
            self._fail(f"W&B summary update failed ({type(e).__name__}: {e})")

    def log_checkpoint(self, path: Path, aliases: list[str]) -> None:
        """Store a checkpoint as a W&B model artifact (a reference in the run, the file itself in W&B)."""
        if self.run is None:
            return
        try:
            import wandb

            artifact = wandb.Artifact(f"model-{self.run.id}", type="model")
            artifact.add_file(str(path), name="checkpoint.pt")
            self.run.log_artifact(artifact, aliases=aliases)
        except Exception as e:  # noqa: BLE001
            self._fail(f"W&B artifact upload failed ({type(e).__name__}: {e})")

    def finish(self, exit_code: int = 0) -> None:
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None
        if self.run is None:
            return
        try:
            self.run.finish(exit_code=exit_code)
        except Exception as e:  # noqa: BLE001
            self._fail(f"W&B finish failed ({type(e).__name__}: {e})")
        if self.sync_dir:
            print(f"W&B offline run saved; upload it with: wandb sync {self.sync_dir}")
