"""The course layout: ROOT/<split>/<trajectory>/<seq>/{0..29}.png + actions.csv + endeffector_positions.csv.

Every source (the synthetic default, the official TFRecords, the course's own tree) is written in or
read from this layout, so one reader and one validator serve all of them. CSVs are comma separated
with no header; floats are written with 9 significant digits, which round-trips float32 exactly.
"""

from __future__ import annotations

import os
import re
import shutil
import warnings
import zlib
from pathlib import Path

import imageio.v3 as iio
import numpy as np

from svg.errors import DataError, DataWarning

SPLITS = ("train", "validate", "test")
SEQ_LEN = 30
FRAME_SHAPE = (64, 64, 3)
ACTION_DIM = 4
POSITION_DIM = 3
COND_DIM = ACTION_DIM + POSITION_DIM
CONDITIONS = {
    "action+position": slice(0, COND_DIM),
    "action": slice(0, ACTION_DIM),
    "none": slice(0, 0),
}
"""``data.conditions`` -> the condition columns a model sees: BAIR's action and end-effector position
(the seed), the action alone, or nothing (action-free BAIR, the SVG paper's setting)."""
ACTIONS_CSV = "actions.csv"
POSITIONS_CSV = "endeffector_positions.csv"
LAYOUT = f"<trajectory>/<seq>/0.png ... with {ACTIONS_CSV} and {POSITIONS_CSV}"

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def natural_key(name: str) -> tuple:
    """Sort key that puts traj_256_to_511 after traj_0_to_255 and seq 10 after seq 9."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def _subdirs(folder: Path) -> list[str]:
    return sorted((e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith(".")), key=natural_key)


def list_sequences(split_dir: Path) -> list[Path]:
    """Sequence folders in natural order; dot-names (temp folders of an interrupted write) are ignored."""
    return [split_dir / traj / seq for traj in _subdirs(split_dir) for seq in _subdirs(split_dir / traj)]


def _chunk(tag: bytes, data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + tag + data + zlib.crc32(tag + data).to_bytes(4, "big")


def encode_png(frame: np.ndarray) -> bytes:
    """A 64x64 RGB frame as a PNG ("up" filter, zlib level 1): any decoder reads it, and it encodes about
    3x faster than imageio/Pillow, which dominates writing the synthetic set."""
    height, width, _ = frame.shape
    rows = frame.reshape(height, width * 3)
    filtered = np.empty((height, width * 3 + 1), np.uint8)
    filtered[:, 0] = 2  # filter type "up": each byte minus the one above it
    filtered[0, 0] = 0
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])
    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return (
        _PNG_SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(filtered.tobytes(), 1))
        + _chunk(b"IEND", b"")
    )


def write_sequence(seq_dir: Path, frames: np.ndarray, actions: np.ndarray, positions: np.ndarray) -> None:
    """Write one sequence into a sibling temp folder, then rename it: a folder that exists is complete."""
    tmp = seq_dir.parent / f".tmp-{seq_dir.name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for t, frame in enumerate(frames):
        (tmp / f"{t}.png").write_bytes(encode_png(np.ascontiguousarray(frame, np.uint8)))
    _write_csv(tmp / ACTIONS_CSV, actions)
    _write_csv(tmp / POSITIONS_CSV, positions)
    os.rename(tmp, seq_dir)


def _write_csv(path: Path, rows: np.ndarray) -> None:
    lines = (",".join(f"{v:.9g}" for v in row) for row in np.asarray(rows, np.float32).tolist())
    path.write_text("".join(line + "\n" for line in lines))


def _read_csv(path: Path, columns: int, seq_len: int) -> np.ndarray:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise DataError(f"{path}: missing (each sequence needs {ACTIONS_CSV} and {POSITIONS_CSV})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: unreadable ({e})") from None
    rows = [line for line in text.splitlines() if line.strip()]
    if len(rows) < seq_len:
        raise DataError(f"{path}: {len(rows)} rows, needs at least {seq_len} (one per frame)")
    values = []
    for n, line in enumerate(rows, 1):
        cells = line.split(",")
        if len(cells) != columns:
            raise DataError(
                f"{path}: row {n} has {len(cells)} columns, expected {columns} (comma separated, no header)"
            )
        try:
            values.append([float(c) for c in cells])
        except ValueError:
            raise DataError(f"{path}: row {n} is not {columns} numbers: {line.strip()[:60]!r}") from None
    array = np.array(values[:seq_len], np.float32)
    bad_rows = np.flatnonzero(~np.isfinite(array).all(axis=1))
    if bad_rows.size:
        raise DataError(f"{path}: row {bad_rows[0] + 1} holds NaN or inf (float32 range)")
    return array


def _check_png(path: Path) -> None:
    """Header and end of a PNG without decoding it: size, colour type and truncation, in two small reads."""
    try:
        with open(path, "rb") as f:
            head = f.read(26)
            f.seek(-12, os.SEEK_END)
            tail = f.read(12)
    except OSError as e:
        raise DataError(f"{path}: unreadable or truncated PNG ({e.strerror or e})") from None
    if len(head) < 26 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
        raise DataError(f"{path}: not a PNG file (expected a 64x64 8-bit RGB PNG)")
    width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    depth, colour = head[24], head[25]
    if (width, height, depth, colour) != (64, 64, 8, 2):
        kind = {0: "grey", 2: "RGB", 3: "palette", 4: "grey+alpha", 6: "RGBA"}.get(colour, f"type-{colour}")
        raise DataError(f"{path}: {width}x{height} {depth}-bit {kind} PNG, expected 64x64 8-bit RGB")
    if tail[4:8] != b"IEND":
        raise DataError(f"{path}: truncated PNG (no IEND chunk at its end)")


def check_sequence(seq_dir: Path, seq_len: int) -> np.ndarray:
    """Validate one sequence folder without decoding frames; returns its conditions (seq_len, 7)."""
    names = set(os.listdir(seq_dir))
    n_frames = 0
    while f"{n_frames}.png" in names:
        n_frames += 1
    if n_frames < seq_len:
        raise DataError(f"{seq_dir}: {n_frames} frames (0.png, 1.png, ...), needs {seq_len}")
    for t in range(seq_len):
        _check_png(seq_dir / f"{t}.png")
    actions = _read_csv(seq_dir / ACTIONS_CSV, ACTION_DIM, seq_len)
    positions = _read_csv(seq_dir / POSITIONS_CSV, POSITION_DIM, seq_len)
    return np.concatenate([actions, positions], axis=1)


def read_frames(seq_dir: Path, seq_len: int) -> np.ndarray:
    """Decode frames 0..seq_len-1 into one uint8 array (seq_len, 64, 64, 3)."""
    out = np.empty((seq_len, *FRAME_SHAPE), np.uint8)
    for t in range(seq_len):
        path = seq_dir / f"{t}.png"
        try:
            frame = iio.imread(path, extension=".png")
        # Decoders raise OSError, SyntaxError, ValueError, zlib.error...: all mean a bad file here.
        except Exception as e:  # noqa: BLE001 - every decoder failure is a bad file
            raise DataError(f"{path}: cannot decode PNG ({type(e).__name__}: {e})") from None
        if frame.shape != FRAME_SHAPE or frame.dtype != np.uint8:
            raise DataError(f"{path}: decoded to {frame.dtype} {frame.shape}, expected uint8 {FRAME_SHAPE}")
        out[t] = frame
    return out


def scan_split(split_dir: Path, seq_len: int, skip_bad: bool) -> tuple[list[Path], np.ndarray]:
    """Check every sequence of a split without decoding frames, so a bad file fails before training
    starts; returns the good sequence folders and their conditions (N, seq_len, 7)."""
    if not split_dir.is_dir():
        raise DataError(f"data.root: {split_dir} is missing (expected {split_dir}/{LAYOUT})")
    candidates = list_sequences(split_dir)
    if not candidates:
        raise DataError(f"data.root: {split_dir} has no sequences (expected {LAYOUT})")
    sequences, conditions = [], []
    for seq_dir in candidates:
        try:
            conditions.append(check_sequence(seq_dir, seq_len))
        except DataError as e:
            if not skip_bad:
                raise
            warnings.warn(f"skipping bad sequence: {e}", DataWarning, stacklevel=4)
            continue
        sequences.append(seq_dir)
    if not sequences:
        raise DataError(f"data.root: {split_dir} has no usable sequences (all {len(candidates)} are bad)")
    return sequences, np.stack(conditions)
