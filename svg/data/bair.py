"""Official BAIR robot pushing (softmotion30_44k TFRecords) to the course layout or the packed cache.

SRC holds train/ and test/ with traj_<a>_to_<b>.tfrecords files of up to 256 sequences. Per step
i = 0..29 a record has `i/image_aux1/encoded` (raw 64x64x3 bytes), `i/image_main/encoded`,
`i/action` (4 floats) and `i/endeffector_pos` (3 floats). Frames come from image_aux1, the camera
the course data uses, stored as the recorded uint8 bytes (no rescaling); conditions are action
followed by end-effector position, as float32, unchanged.

Validation rule (`split_files`; prepare_data.py prints which one it used). With n_files train files,
sorted by name, and val_fraction > 0:
- whole files, when n_files >= 2 and round(val_fraction * n_files) >= 1: the files are permuted by
  numpy's default_rng(seed) and the first round(val_fraction * n_files) of that order (at most all but
  one) go to validate/ whole, so no file is split between train and validate;
- single sequences, otherwise (too few files, e.g. one): the n_records records of the train files,
  numbered in file order then record order, are permuted by default_rng(seed) and the first
  round(val_fraction * n_records) (at least one, at most all but one) go to validate/, the rest to
  train/; a record is in exactly one of them.
val_fraction 0 holds nothing out. A sequence keeps its file's stem as trajectory and its record index
as seq, in whichever split it lands: ROOT/validate/traj_0_to_255/17/. ROOT/.bair.json records the seed,
val_fraction, rule and the held-out files or sequences; converting into ROOT with other ones is refused.

Resumable: a sequence is written to a temp folder and renamed; a finished file gets a `.complete`
marker and is skipped next time. With pack=True the arrays go straight into ROOT/.cache, and a
progress file lets an interrupted run skip the files already written.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from svg.data import cache
from svg.data.course import ACTION_DIM, FRAME_SHAPE, POSITION_DIM, SEQ_LEN, natural_key, write_sequence
from svg.errors import DataError

IMAGE_KEY = "{}/image_aux1/encoded"
ACTION_KEY = "{}/action"
POSITION_KEY = "{}/endeffector_pos"
_DESCRIPTION = {
    key.format(i): kind
    for i in range(SEQ_LEN)
    for key, kind in ((IMAGE_KEY, "byte"), (ACTION_KEY, "float"), (POSITION_KEY, "float"))
}
_COMPLETE = ".complete"
_SETTINGS = ".bair.json"
_FRAME_BYTES = int(np.prod(FRAME_SHAPE))


@dataclass(frozen=True)
class Split:
    """Which records of which files go to each output split, and the rule that chose them.

    parts[split] lists (file, records): the record indices the file gives that split, or None for all;
    settings is what .bair.json records; summary says the rule and what it held out, in one line.
    """

    rule: str  # "files", "sequences" or "none" (--val-fraction 0)
    parts: dict[str, list[tuple[Path, tuple[int, ...] | None]]]
    settings: dict
    summary: str


def _held_out(n: int, val_fraction: float, seed: int) -> list[int]:
    """Indices of the held-out items: the first round(val_fraction * n) (at most n - 1) of a seeded permutation."""
    n_val = min(n - 1, max(1, round(val_fraction * n)))
    return sorted(np.random.default_rng(seed).permutation(n)[:n_val].tolist())


def split_files(src: Path, val_fraction: float, seed: int) -> Split:
    """The files (and records) of each output split, by the validation rule in the module docstring."""
    if not 0 <= val_fraction < 1:
        raise DataError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    found = {}
    for part in ("train", "test"):
        folder = Path(src) / part
        files = sorted(folder.glob("*.tfrecords"), key=lambda p: natural_key(p.name))
        if not files:
            raise DataError(f"{folder}: no *.tfrecords files (expected SRC/{part}/traj_<a>_to_<b>.tfrecords)")
        found[part] = files
    train, test = found["train"], [(p, None) for p in found["test"]]
    settings: dict = {"seed": seed, "val_fraction": val_fraction}
    if val_fraction == 0:
        settings["rule"] = "none"
        parts = {"train": [(p, None) for p in train], "validate": [], "test": test}
        return Split("none", parts, settings, "validation: none (--val-fraction 0)")
    if len(train) >= 2 and round(val_fraction * len(train)) >= 1:
        held = set(_held_out(len(train), val_fraction, seed))
        validate = [p.name for i, p in enumerate(train) if i in held]
        settings.update(rule="files", validate_files=validate)
        parts = {
            "train": [(p, None) for i, p in enumerate(train) if i not in held],
            "validate": [(p, None) for i, p in enumerate(train) if i in held],
            "test": test,
        }
        summary = (
            f"validation: whole train files, {len(held)} of {len(train)} held out "
            f"(seed {seed}, val-fraction {val_fraction}): {', '.join(validate)}"
        )
        return Split("files", parts, settings, summary)
    # Too few files to hold out whole ones: hold out records, numbered across the train files in file order.
    counts = [count_records(p) for p in train]
    total = sum(counts)
    if total < 2:
        raise DataError(
            f"{Path(src) / 'train'}: {total} record(s) cannot be split into train and validate; use --val-fraction 0"
        )
    held = set(_held_out(total, val_fraction, seed))
    parts = {"train": [], "validate": [], "test": test}
    held_by_file = {}
    for path, start, count in zip(train, np.cumsum([0, *counts[:-1]]).tolist(), counts, strict=True):
        out = tuple(k for k in range(count) if start + k in held)
        kept = tuple(k for k in range(count) if start + k not in held)
        if out:
            parts["validate"].append((path, out))
            held_by_file[path.name] = list(out)
        if kept:
            parts["train"].append((path, kept))
    settings.update(rule="sequences", validate_sequences=held_by_file)
    summary = (
        f"validation: single sequences, {len(held)} of the {total} in {len(train)} train file(s) held out "
        f"(too few files to hold out whole ones; seed {seed}, val-fraction {val_fraction})"
    )
    return Split("sequences", parts, settings, summary)


def _decode(record: dict, path: Path, k: int) -> tuple[np.ndarray, np.ndarray]:
    frames = np.empty((SEQ_LEN, *FRAME_SHAPE), np.uint8)
    conditions = np.empty((SEQ_LEN, ACTION_DIM + POSITION_DIM), np.float32)
    for i in range(SEQ_LEN):
        image, action, position = (record[key.format(i)] for key in (IMAGE_KEY, ACTION_KEY, POSITION_KEY))
        if not isinstance(image, bytes) or len(image) != _FRAME_BYTES:
            raise DataError(f"{path}: record {k} step {i}: image is not {_FRAME_BYTES} raw bytes (64x64x3)")
        if len(action) != ACTION_DIM or len(position) != POSITION_DIM:
            raise DataError(
                f"{path}: record {k} step {i}: action/endeffector_pos of length "
                f"{len(action)}/{len(position)}, expected {ACTION_DIM}/{POSITION_DIM}"
            )
        frames[i] = np.frombuffer(image, np.uint8).reshape(FRAME_SHAPE)
        conditions[i, :ACTION_DIM], conditions[i, ACTION_DIM:] = action, position
    if not np.isfinite(conditions).all():
        raise DataError(f"{path}: record {k} has NaN or inf in its action or endeffector_pos")
    return frames, conditions


def read_records(path: Path) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(frames, conditions) of each record in a file, in file order."""
    from tfrecord.reader import tfrecord_loader  # here: the tfrecord package imports torch on import

    records = tfrecord_loader(str(path), None, _DESCRIPTION)
    k = 0
    while True:
        try:
            record = next(records)
        except StopIteration:
            return
        # The reader raises RuntimeError (truncation), KeyError (missing step), TypeError, protobuf errors.
        except Exception as e:  # noqa: BLE001 - every reader failure is a bad file
            raise DataError(f"{path}: record {k} unreadable ({type(e).__name__}: {e})") from None
        yield _decode(record, path, k)
        k += 1


def count_records(path: Path) -> int:
    """Records in a TFRecord file, from the length fields alone (no parsing)."""
    size, n, offset = path.stat().st_size, 0, 0
    with open(path, "rb") as f:
        while offset < size:
            header = f.read(12)  # length (8 bytes) and its CRC (4); then data and the data's CRC (4)
            if len(header) == 12:
                offset += 12 + int.from_bytes(header[:8], "little") + 4
            if len(header) < 12 or offset > size:
                raise DataError(f"{path}: truncated TFRecord (record {n} is cut off)")
            f.seek(offset)
            n += 1
    return n


def _convert_file(job: tuple[Path, Path, tuple[int, ...] | None]) -> int:
    split_dir, path, records = job
    wanted = None if records is None else set(records)
    trajectory = split_dir / path.stem
    trajectory.mkdir(parents=True, exist_ok=True)
    n = 0
    for k, (frames, conditions) in enumerate(read_records(path)):
        if wanted is not None and k not in wanted:
            continue
        n += 1
        seq_dir = trajectory / str(k)
        if not seq_dir.exists():
            write_sequence(seq_dir, frames, conditions[:, :ACTION_DIM], conditions[:, ACTION_DIM:])
    if records is not None and n != len(records):
        raise DataError(f"{path}: {len(records)} records expected for {split_dir.name}/, only {n} readable")
    (trajectory / _COMPLETE).touch()
    return n


def _pack_file(job: tuple[Path, tuple[int, ...], int, Path, Path]) -> str:
    path, records, offset, frames_tmp, conditions_tmp = job
    frames_out = np.load(frames_tmp, mmap_mode="r+")
    conditions_out = np.load(conditions_tmp, mmap_mode="r+")
    rows = {k: offset + i for i, k in enumerate(records)}
    n = 0
    for k, (frames, conditions) in enumerate(read_records(path)):
        if k > records[-1]:
            break
        if k in rows:
            frames_out[rows[k]], conditions_out[rows[k]] = frames, conditions
            n += 1
    if n != len(records):
        raise DataError(f"{path}: {n} of the {len(records)} records to pack are readable (its length fields say more)")
    frames_out.flush()
    conditions_out.flush()
    return path.name


def _check_settings(out: Path, settings: dict) -> None:
    """Refuse to resume into a folder converted with another seed, validation fraction or held-out choice."""
    path = out / _SETTINGS
    if path.exists():
        try:
            previous = json.loads(path.read_text())
        except ValueError:
            raise DataError(f"{path}: unreadable; delete it to convert into {out} afresh") from None
        if isinstance(previous, dict) and "rule" not in previous:  # written before the rule was recorded
            previous = {**previous, "rule": "files" if previous.get("validate_files") else "none"}
            if previous["rule"] == "none":
                previous.pop("validate_files", None)
        if previous != settings:
            raise DataError(
                f"{path}: {out} was converted with {previous}, not {settings}; "
                "use the same --seed/--val-fraction and train files, or another --out"
            )
        return
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=1))


def _write_layout(out: Path, split: Split, workers: int, progress: bool) -> dict[str, int]:
    jobs = [(out / name, path, records) for name, parts in split.parts.items() for path, records in parts]
    todo = [job for job in jobs if not (job[0] / job[1].stem / _COMPLETE).exists()]
    bar = cache.progress_bar(progress, len(jobs), "convert", "file", initial=len(jobs) - len(todo))
    with cache.pool_context().Pool(workers) as pool, bar:
        for _ in pool.imap_unordered(_convert_file, todo):
            bar.update()
    return {
        name: sum(len(list((out / name / path.stem).glob("[0-9]*"))) for path, _ in parts)
        for name, parts in split.parts.items()
    }


def _pack_split(
    out: Path, split: str, parts: list[tuple[Path, tuple[int, ...] | None]], workers: int, progress: bool
) -> int:
    paths = [path for path, _ in parts]
    records = [tuple(range(count_records(p))) if r is None else r for p, r in parts]
    counts = [len(r) for r in records]
    total = sum(counts)
    if total == 0:
        raise DataError(f"{paths[0].parent}: the {split} files hold no records")
    frames_path, conditions_path, _ = cache.cache_paths(out, split)
    state_path = frames_path.with_name(f"{split}_progress.json")
    plan = {"files": [str(p) for p in paths], "counts": counts}
    if any(r is not None for _, r in parts):  # some files give this split only some of their records
        plan["records"] = [None if r is None else list(r) for _, r in parts]
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    frames_tmp, conditions_tmp = (p.with_name(p.name + ".tmp") for p in (frames_path, conditions_path))
    if state.get("plan") == plan and frames_tmp.exists() and conditions_tmp.exists():
        done = state["done"]
    else:
        frames_tmp, conditions_tmp = cache.begin(out, split, total, SEQ_LEN)
        done = []
    offsets = np.cumsum([0, *counts[:-1]]).tolist()
    jobs = [
        (p, r, o, frames_tmp, conditions_tmp)
        for p, r, o in zip(paths, records, offsets, strict=True)
        if r and p.name not in done
    ]
    bar = cache.progress_bar(progress, len(paths), f"pack {split}", "file", initial=len(paths) - len(jobs))
    with cache.pool_context().Pool(workers) as pool, bar:
        for name in pool.imap_unordered(_pack_file, jobs):
            done.append(name)
            tmp = state_path.with_name(state_path.name + ".tmp")
            tmp.write_text(json.dumps({"plan": plan, "done": done}))
            os.replace(tmp, state_path)
            bar.update()
    count = cache.commit(out, split, None, origin="tfrecord")
    state_path.unlink()
    return count


def convert(
    src: str | Path,
    out: str | Path,
    val_fraction: float = 0.05,
    seed: int = 0,
    pack: bool = False,
    workers: int | None = None,
    progress: bool = True,
) -> dict[str, int]:
    """Convert SRC (train/, test/ of TFRecords) into ROOT=out; returns sequences per split."""
    src, out = Path(src), Path(out)
    split = split_files(src, val_fraction, seed)
    _check_settings(out, split.settings)
    workers = workers or os.cpu_count() or 1
    if pack:
        return {name: _pack_split(out, name, parts, workers, progress) for name, parts in split.parts.items() if parts}
    return _write_layout(out, split, workers, progress)
