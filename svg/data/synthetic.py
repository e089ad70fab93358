"""The embedded synthetic dataset: ``svg.data.scene`` sequences written in the course layout and the
packed cache, generated once per root (a marker says with which sizes, seed and generator version),
by several processes, safely against concurrent callers.

Sequence ``index`` of ``split`` comes from four random streams spawned from
SeedSequence([seed, split number, index]) (``sequence_streams``): scene (layout and policy), hidden
(the per-step draws the conditions leave out), look (table, colours, lighting) and noise (sensor
noise), so it is the same for any number of worker processes and can be re-simulated with other
hidden draws or noise (``svg.data.oracle``). Version 3: a room light that changes at random moments (version 2:
a ball in every sequence, wider push outcomes, separate streams; version 1: one stream, weak hidden randomness
and a marble in 70% of sequences).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from pathlib import Path

import numpy as np

from svg.data import cache
from svg.data.course import SEQ_LEN, SPLITS, write_sequence
from svg.data.render import render
from svg.data.scene import SIZE, hidden_draws, simulate
from svg.errors import DataError

GENERATOR_VERSION = 3
MARKER = ".synthetic.json"
_PARTIAL = ".synthetic.partial.json"
_LOCK = ".synthetic.lock"
_CHUNK = 32  # sequences per worker task
_TRAJECTORY = 256  # sequences per trajectory folder, as in the official files


STREAMS = ("scene", "hidden", "look", "noise")


def sequence_streams(seed: int, split: str, index: int, extra: int = 0) -> list[np.random.SeedSequence]:
    """The seeds of sequence `index` of `split`, in STREAMS order, then `extra` more for re-simulations."""
    return np.random.SeedSequence([seed, SPLITS.index(split), index]).spawn(len(STREAMS) + extra)


def conditions(sim: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """BAIR's conditions of a simulated sequence: actions (T, 4) and end-effector positions (T, 3), float32."""
    xy = (sim["grip"] - SIZE / 2) / (SIZE / 2)
    positions = np.column_stack([xy, 2 * sim["z"] - 1]).astype(np.float32)
    return sim["action"].astype(np.float32), positions


def generate_sequence(seed: int, split: str, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sequence `index` of `split`: frames uint8 (30, 64, 64, 3), actions (30, 4), positions (30, 3)."""
    scene, hidden, look, noise = (np.random.default_rng(s) for s in sequence_streams(seed, split, index))
    sim = simulate(scene, hidden_draws(hidden, SEQ_LEN))
    return render(sim, look, noise), *conditions(sim)


def _sequence_dir(split_dir: Path, index: int) -> Path:
    first = index // _TRAJECTORY * _TRAJECTORY
    return split_dir / f"traj_{first}_to_{first + _TRAJECTORY - 1}" / str(index - first)


def _generate_chunk(job: tuple[Path, str, int, int, int, Path, Path]) -> int:
    root, split, seed, start, stop, frames_tmp, conditions_tmp = job
    frames_out = np.load(frames_tmp, mmap_mode="r+")
    conditions_out = np.load(conditions_tmp, mmap_mode="r+")
    for i in range(start, stop):
        frames, actions, positions = generate_sequence(seed, split, i)
        write_sequence(_sequence_dir(root / split, i), frames, actions, positions)
        frames_out[i] = frames
        conditions_out[i] = np.concatenate([actions, positions], axis=1)
    frames_out.flush()
    conditions_out.flush()
    return stop - start


def holds_other_data(root: str | Path) -> bool:
    """True when root holds a dataset (splits or a packed cache) that ensure_synthetic did not write."""
    root = Path(root)
    ours = (root / MARKER).exists() or (root / _PARTIAL).exists()
    return not ours and any((root / name).exists() for name in (*SPLITS, ".cache"))


def ensure_synthetic(
    root: str | Path,
    n_train: int,
    n_val: int,
    n_test: int,
    seed: int,
    workers: int | None = None,
    progress: bool = False,
) -> Path:
    """Generate the synthetic dataset (course layout and packed cache) under root unless it is already
    complete with these sizes and seed; rebuild only the cache if that is what is missing.

    The marker is written last, so an interrupted run is redone. A file lock makes concurrent callers
    (parallel sweep trials, DDP ranks) wait for one generation. A root holding data this function did
    not write is never overwritten.
    """
    root = Path(root)
    sizes = {"train": n_train, "validate": n_val, "test": n_test}
    if min(sizes.values()) < 1 or seed < 0:
        raise DataError(f"synthetic data: sizes must be >= 1 and seed >= 0, got {sizes}, seed {seed}")
    params = {"generator": GENERATOR_VERSION, "seed": seed, **sizes}
    if holds_other_data(root):
        raise DataError(
            f"data.root: {root} holds data that ensure_synthetic did not write; "
            "refusing to overwrite it (choose another data.root)"
        )
    root.mkdir(parents=True, exist_ok=True)
    with open(root / _LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _read_json(root / MARKER) != params:
            _generate(root, params, workers or os.cpu_count() or 1, progress)
        stale = tuple(split for split in SPLITS if not cache.is_current(root, split))
        if stale:
            cache.pack(root, stale, workers=workers, progress=progress)
    return root


def _generate(root: Path, params: dict, workers: int, progress: bool) -> None:
    (root / _PARTIAL).write_text(json.dumps(params))
    (root / MARKER).unlink(missing_ok=True)
    with cache.pool_context().Pool(workers) as pool:
        for split in SPLITS:
            count = params[split]
            shutil.rmtree(root / split, ignore_errors=True)
            frames_tmp, conditions_tmp = cache.begin(root, split, count, SEQ_LEN)
            jobs = [
                (root, split, params["seed"], start, min(start + _CHUNK, count), frames_tmp, conditions_tmp)
                for start in range(0, count, _CHUNK)
            ]
            with cache.progress_bar(progress, count, f"synthetic {split}", "seq") as bar:
                for done in pool.imap_unordered(_generate_chunk, jobs):
                    bar.update(done)
            cache.commit(root, split, cache.fingerprint(root / split), origin="synthetic")
    tmp = root / (MARKER + ".tmp")
    tmp.write_text(json.dumps(params, indent=1))
    os.replace(tmp, root / MARKER)
    (root / _PARTIAL).unlink()


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
