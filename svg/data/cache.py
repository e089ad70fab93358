"""Packed cache: per split one uint8 array (N, T, 64, 64, 3) and float32 conditions (N, T, 7), memory-mapped.

Files: ROOT/.cache/{split}_frames.npy, {split}_conditions.npy and {split}_manifest.json. Arrays are
written under temp names and renamed; the manifest comes last, so an interrupted pack is never used.
The manifest holds a fingerprint of the course-layout split it came from: when that split changes
the loaders warn and read the PNGs until `prepare_data.py pack ROOT` runs again. A cache with no
course-layout split beside it (`prepare_data.py tfrecord --pack`) is the data itself.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import warnings
from pathlib import Path

import numpy as np
from tqdm import tqdm

from svg.data.course import COND_DIM, FRAME_SHAPE, SEQ_LEN, SPLITS, natural_key, read_frames, scan_split
from svg.errors import DataError, DataWarning

CACHE_DIR = ".cache"
_FORMAT = 1


def cache_paths(root: Path, split: str) -> tuple[Path, Path, Path]:
    folder = Path(root) / CACHE_DIR
    return (folder / f"{split}_frames.npy", folder / f"{split}_conditions.npy", folder / f"{split}_manifest.json")


def _tmp(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


def fingerprint(split_dir: Path) -> str:
    """Cheap identity of a course-layout split: its trajectory folders' names, entry counts and mtimes.

    Adding, removing or renaming a sequence changes its trajectory folder's mtime, so those are seen;
    rewriting a PNG in place is not, so re-pack after editing files by hand.
    """
    entries = []
    for entry in sorted(os.scandir(split_dir), key=lambda e: natural_key(e.name)):
        if entry.is_dir() and not entry.name.startswith("."):
            entries.append([entry.name, entry.stat().st_mtime_ns, len(os.listdir(entry.path))])
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()


def progress_bar(enabled: bool, total: int, desc: str, unit: str, initial: int = 0) -> tqdm:
    """A tqdm bar shown only on a terminal, so logs and one-line error output stay clean."""
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=None if enabled else True)


def pool_context() -> multiprocessing.context.BaseContext:
    """fork where the platform has it: workers start at once, without importing torch again."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else None)


def begin(root: Path, split: str, count: int, seq_len: int) -> tuple[Path, Path]:
    """Drop the split's manifest (the old cache stops being used) and create zeroed temp arrays to fill."""
    frames_path, conditions_path, manifest_path = cache_paths(root, split)
    frames_path.parent.mkdir(parents=True, exist_ok=True)
    manifest_path.unlink(missing_ok=True)
    frames = np.lib.format.open_memmap(
        _tmp(frames_path), mode="w+", dtype=np.uint8, shape=(count, seq_len, *FRAME_SHAPE)
    )
    conditions = np.lib.format.open_memmap(
        _tmp(conditions_path), mode="w+", dtype=np.float32, shape=(count, seq_len, COND_DIM)
    )
    del frames, conditions
    return _tmp(frames_path), _tmp(conditions_path)


def commit(root: Path, split: str, source_fingerprint: str | None, origin: str) -> int:
    """Rename the filled temp arrays into place and write the manifest last; returns the sequence count."""
    frames_path, conditions_path, manifest_path = cache_paths(root, split)
    count, seq_len = np.load(_tmp(frames_path), mmap_mode="r").shape[:2]
    os.replace(_tmp(frames_path), frames_path)
    os.replace(_tmp(conditions_path), conditions_path)
    manifest = {
        "format": _FORMAT,
        "count": int(count),
        "seq_len": int(seq_len),
        "origin": origin,
        "fingerprint": source_fingerprint,
    }
    _tmp(manifest_path).write_text(json.dumps(manifest, indent=1))
    os.replace(_tmp(manifest_path), manifest_path)
    return int(count)


def _read_manifest(path: Path) -> dict | None:
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable cache manifest ({e}); re-run prepare_data.py pack") from None
    if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT:
        raise DataError(f"{path}: unknown cache format; delete it or re-run prepare_data.py pack")
    return manifest


def is_current(root: Path, split: str) -> bool:
    """True when the split's cache exists and matches its course-layout source (if it has one)."""
    manifest = _read_manifest(cache_paths(root, split)[2])
    if manifest is None:
        return False
    split_dir = Path(root) / split
    return not split_dir.is_dir() or manifest["fingerprint"] == fingerprint(split_dir)


def usable(root: Path, split: str) -> bool:
    """Whether the loaders should read the split's cache: it exists, and it is current (else a warning)."""
    manifest_path = cache_paths(root, split)[2]
    if not manifest_path.exists():
        return False
    if not is_current(root, split):
        warnings.warn(
            f"{manifest_path}: cache differs from {Path(root) / split}; reading PNGs instead "
            f"(run `python entrypoints/prepare_data.py pack {root}` to refresh it)",
            DataWarning,
            stacklevel=3,
        )
        return False
    return True


def _load(path: Path, dtype: type, tail: tuple[int, ...]) -> np.ndarray:
    try:
        array = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: bad cache array ({e}); re-run prepare_data.py pack") from None
    if array.dtype != dtype or array.ndim != 2 + len(tail) or array.shape[2:] != tail:
        raise DataError(f"{path}: {array.dtype} {array.shape}, expected {np.dtype(dtype)} (N, T, {tail})")
    return array


def check_arrays(
    frames_path: Path, conditions_path: Path, seq_len: int, skip_bad: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Validate a packed split; returns the rows to use and their conditions (rows, seq_len, 7).

    Rows whose conditions hold NaN/inf raise, or with skip_bad are left out with a warning each."""
    frames = _load(frames_path, np.uint8, FRAME_SHAPE)
    conditions = _load(conditions_path, np.float32, (COND_DIM,))
    if frames.shape[:2] != conditions.shape[:2]:
        raise DataError(f"{conditions_path}: shape {conditions.shape} does not match {frames_path} {frames.shape}")
    if frames.shape[1] < seq_len:
        raise DataError(f"{frames_path}: sequences of {frames.shape[1]} frames, needs {seq_len}")
    if len(frames) == 0:
        raise DataError(f"data.root: {frames_path} holds no sequences")
    finite = np.isfinite(conditions[:, :seq_len]).all(axis=(1, 2))
    for i in np.flatnonzero(~finite):
        message = f"{conditions_path}: sequence {i} has NaN or inf conditions"
        if not skip_bad:
            raise DataError(message)
        warnings.warn(f"skipping bad sequence: {message}", DataWarning, stacklevel=4)
    rows = np.flatnonzero(finite)
    if rows.size == 0:
        raise DataError(f"data.root: {conditions_path} has no usable sequences")
    return rows, np.ascontiguousarray(conditions[rows, :seq_len])


def _decode(job: tuple[Path, int]) -> np.ndarray | DataError:
    try:
        return read_frames(*job)
    except DataError as e:
        return e


def _shrink(path: Path, count: int) -> None:
    """Keep the first `count` sequences of a temp array (after skipping sequences that failed to decode)."""
    full = np.load(path, mmap_mode="r")
    part = _tmp(path)
    out = np.lib.format.open_memmap(part, mode="w+", dtype=full.dtype, shape=(count, *full.shape[1:]))
    for start in range(0, count, 256):
        out[start : start + 256] = full[start : min(start + 256, count)]
    out.flush()
    del out, full
    os.replace(part, path)


def _pack_split(
    root: Path,
    split: str,
    seq_len: int,
    scanned: tuple[list[Path], np.ndarray],
    skip_bad: bool,
    workers: int,
    progress: bool,
) -> int:
    sequences, all_conditions = scanned
    source = fingerprint(root / split)
    frames_tmp, conditions_tmp = begin(root, split, len(sequences), seq_len)
    try:
        frames = np.load(frames_tmp, mmap_mode="r+")
        kept = []
        jobs = [(seq_dir, seq_len) for seq_dir in sequences]
        bar = progress_bar(progress, len(jobs), f"pack {split}", "seq")
        with pool_context().Pool(workers) as pool, bar:
            for i, result in enumerate(pool.imap(_decode, jobs, chunksize=8)):
                bar.update()
                if isinstance(result, DataError):
                    if not skip_bad:
                        raise result
                    warnings.warn(f"skipping bad sequence: {result}", DataWarning, stacklevel=3)
                    continue
                frames[len(kept)] = result
                kept.append(i)
        if not kept:
            raise DataError(f"data.root: {root / split} has no usable sequences (all {len(jobs)} are bad)")
        frames.flush()
        del frames
        conditions = np.load(conditions_tmp, mmap_mode="r+")
        conditions[: len(kept)] = all_conditions[kept]
        conditions.flush()
        del conditions
        if len(kept) < len(jobs):
            _shrink(frames_tmp, len(kept))
            _shrink(conditions_tmp, len(kept))
    except BaseException:
        frames_tmp.unlink(missing_ok=True)
        conditions_tmp.unlink(missing_ok=True)
        raise
    return commit(root, split, source, origin="course")


def pack(
    root: str | Path,
    splits: tuple[str, ...] = SPLITS,
    seq_len: int = SEQ_LEN,
    skip_bad: bool = False,
    workers: int | None = None,
    progress: bool = True,
) -> dict[str, int]:
    """Build the cache of each split from its course layout; returns the sequence count per split.

    Every split is validated (headers, CSVs) before any is written, so most bad files fail fast;
    frames are decoded in `workers` processes and a file that fails to decode is named too.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data.root: {root} does not exist or is not a folder")
    scanned = {split: scan_split(root / split, seq_len, skip_bad) for split in splits}
    workers = workers or os.cpu_count() or 1
    return {
        split: _pack_split(root, split, seq_len, found, skip_bad, workers, progress) for split, found in scanned.items()
    }
