"""Checkpoints: atomic writes, safe reads, RNG state, resume checks, a model from a checkpoint.

A checkpoint is one dict of tensors and plain values (weights, optimizer, RNG states, position in the
data stream, W&B run id, the resolved config), read back with ``weights_only=True``.
"""

from __future__ import annotations

import os
import random
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch
from pydantic import ValidationError

from svg.config import Experiment
from svg.errors import SvgError
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


def load_checkpoint(path: Path) -> dict:
    """Load with weights_only=True: tensors and plain values only, never arbitrary pickled objects."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - turned into a one-line error naming the file
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise SvgError(f"checkpoint {path}: unreadable or unsafe ({reason})") from None


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
    fields = [f"model.{k}" for k in now["model"]] + ["train.n_past", "train.n_future", "data.batch_size"]
    diff = []
    for name in fields:
        section, key = name.split(".")
        if saved.get(section, {}).get(key) != now[section][key]:
            diff.append(f"{name} ({saved.get(section, {}).get(key)!r} -> {now[section][key]!r})")
    return diff


def load_model(path: Path) -> tuple[SVG, Experiment, dict]:
    """A checkpoint's model (weights loaded), its experiment and the raw checkpoint dict; SvgError
    naming the file when it is missing, unreadable or not a checkpoint of this project."""
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
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise SvgError(f"checkpoint {path}: its config is invalid ({where}: {first['msg']})") from None
    model = SVG.for_experiment(exp)
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, TypeError) as e:
        reason = str(e).splitlines()[0]
        raise SvgError(f"checkpoint {path}: weights do not match its model config ({reason})") from None
    return model, exp, state
