"""Checkpoints: atomic writes, safe reads, RNG state, resume checks, a model from a checkpoint.

A checkpoint is one dict of tensors and plain values (weights, optimizer, RNG states, position in the
data stream, W&B run id, the resolved config), read back with ``weights_only=True``.
"""

from __future__ import annotations

import os
import random
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import torch
from pydantic import ValidationError

from svg.config import Experiment
from svg.errors import SvgError, first_line, validation_line
from svg.models import SVG


def atomic_save(obj: dict, path: Path, keep_previous: bool = False) -> None:
    """Write via a temp file, fsync, rename: a crash leaves the old file or the new one, never half."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    if keep_previous and path.exists():
        os.replace(path, path.with_name(path.stem + ".prev.pt"))
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def to_host(state: dict) -> dict:
    """A copy of a checkpoint's state on the host that later steps cannot change: tensors copied, containers
    rebuilt, plain values kept. From a GPU the copies go into pinned memory without waiting each, then one
    wait for all (~400 tensors for the seed model)."""
    on_gpu = False

    def copy(obj):
        nonlocal on_gpu
        if isinstance(obj, torch.Tensor):
            if obj.device.type == "cpu":
                return obj.detach().clone()
            on_gpu = True
            return torch.empty(obj.shape, dtype=obj.dtype, pin_memory=True).copy_(obj, non_blocking=True)
        if isinstance(obj, dict):
            return {k: copy(v) for k, v in obj.items()}
        if isinstance(obj, list | tuple):
            return type(obj)(copy(v) for v in obj)
        return obj

    snapshot = copy(state)
    if on_gpu:
        torch.cuda.synchronize()
    return snapshot


class CheckpointWriter:
    """Writes checkpoints in a background thread, so training waits only for the copy to the host.

    On a GPU a seed-preset checkpoint (267 MB with Adam's moments) takes ~0.5 s to write and fsync,
    several times per ~10 s epoch. One write runs at a time and files land in the order saved: ``save``
    waits for the previous write first. ``wait`` (before reading a file, at the end of a run or when it
    stops) raises a failed write as an SvgError naming the file; every write stays atomic."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: SvgError | None = None

    def save(self, state: dict, paths: list[tuple[Path, bool]]) -> None:
        """Write ``state`` to each (path, keep_previous) in turn, after the previous write."""
        self.wait()
        snapshot = to_host(state)
        self._thread = threading.Thread(target=self._write, args=(snapshot, paths), name="checkpoint-writer")
        self._thread.start()

    def _write(self, snapshot: dict, paths: list[tuple[Path, bool]]) -> None:
        for path, keep_previous in paths:
            try:
                atomic_save(snapshot, path, keep_previous)
            except OSError as e:
                self._error = SvgError(f"checkpoint {path}: cannot write ({e.strerror or e})")
                return

    def wait(self) -> None:
        """Until the last write is on disk; its error, if it failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def load_checkpoint(path: Path) -> dict:
    """Load with weights_only=True: tensors and plain values only, never arbitrary pickled objects."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - turned into a one-line error naming the file
        raise SvgError(f"checkpoint {path}: unreadable or unsafe ({first_line(e)})") from None


def load_latest(ckpt_dir: Path) -> dict | None:
    """last.pt, or last.prev.pt when last.pt is damaged (said on stderr); None when there is neither."""
    last, prev = ckpt_dir / "last.pt", ckpt_dir / "last.prev.pt"
    if not last.exists():
        return load_checkpoint(prev) if prev.exists() else None
    try:
        return load_checkpoint(last)
    except SvgError as e:
        if not prev.exists():
            raise
        print(f"svg-sweeps: {e}; resuming from {prev} instead", file=sys.stderr)
        return load_checkpoint(prev)


def rng_state(tf_gen: torch.Generator) -> dict:
    """Every random stream a run draws from, as tensors and plain values."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "teacher_forcing": tf_gen.get_state(),
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
    }


def set_rng_state(state: dict, tf_gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    tf_gen.set_state(state["teacher_forcing"])
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))


def architecture_mismatch(saved: dict, exp: Experiment) -> list[str]:
    """Config fields whose change would make a checkpoint unusable for this experiment."""
    now = exp.model_dump(mode="json")
    defaults = Experiment().model_dump(mode="json")  # a setting added since the checkpoint was saved: its default
    fields = [f"model.{k}" for k in now["model"]] + ["train.n_past", "train.n_future", "data.batch_size"]
    diff = []
    for name in fields:
        section, key = name.split(".")
        was = saved.get(section, {}).get(key, defaults[section][key])
        if was != now[section][key]:
            diff.append(f"{name} ({was!r} -> {now[section][key]!r})")
    return diff


def model_weights(state: dict, weights: str = "auto") -> str:
    """Which weights ``load_model`` takes: ``ema`` (the moving average of ``train.ema_decay``) or
    ``trained``; auto means the moving average where the checkpoint has one, the weights its run
    validated with."""
    if weights == "auto":
        return "ema" if "ema" in state else "trained"
    return weights


def load_model(path: Path, weights: str = "auto") -> tuple[SVG, Experiment, dict]:
    """A checkpoint's model with the ``weights`` asked for (``model_weights``), its experiment and the raw
    checkpoint dict; SvgError naming the file when it is missing, unreadable, not a checkpoint of this
    project, or without a moving average that was asked for."""
    if not path.is_file():
        raise SvgError(f"checkpoint {path}: no such file")
    if not zipfile.is_zipfile(path):  # what torch.save writes; anything else would get torch's long hint
        raise SvgError(f"checkpoint {path}: not a PyTorch checkpoint (damaged, truncated or another format)")
    state = load_checkpoint(path)
    if not isinstance(state, dict) or not {"model", "config"} <= state.keys():
        raise SvgError(f"checkpoint {path}: not an svg-sweeps checkpoint (expected 'model' and 'config' entries)")
    try:
        exp = Experiment.model_validate(state["config"])
    except ValidationError as e:
        raise SvgError(f"checkpoint {path}: its config is invalid ({validation_line(e)})") from None
    if model_weights(state, weights) == "ema" and "ema" not in state:
        raise SvgError(f"checkpoint {path}: has no moving average of the weights (its run had no train.ema_decay)")
    model = SVG.for_experiment(exp)
    try:
        model.load_state_dict(state[{"ema": "ema", "trained": "model"}[model_weights(state, weights)]])
    except (RuntimeError, TypeError) as e:
        raise SvgError(f"checkpoint {path}: weights do not match its model config ({first_line(e)})") from None
    return model, exp, state
