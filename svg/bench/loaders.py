"""The bench's data: the dataset it reads (the user's, or a temporary synthetic set), the batches the
arms step on, and the loader benchmark (``train_batches`` over the packed cache and over PNG folders).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from svg.data import (
    COND_DIM,
    CONDITIONS,
    FRAME_SHAPE,
    CacheDataset,
    CourseDataset,
    DataError,
    ensure_synthetic,
    open_split,
    train_batches,
)

SYNTHETIC_MIN_TRAIN = 48
"""Training sequences of the temporary synthetic set, at least (4 batches where the batch is larger);
its validation and test splits hold one sequence each, since the bench never reads them."""


def synthetic_sizes(batch: int) -> tuple[int, int, int]:
    """(train, validate, test) sequences of the temporary synthetic set for this batch size."""
    return max(4 * batch, SYNTHETIC_MIN_TRAIN), 1, 1


@contextlib.contextmanager
def dataset_root(data_root: Path | None, batch: int, needed: bool) -> Iterator[Path | None]:
    """The user's data root, or (where ``needed``) a small synthetic set, both layouts, in a temp folder
    removed afterwards; None where no data is needed."""
    if data_root is not None:
        if not data_root.is_dir():
            raise DataError(f"--data-root: {data_root} does not exist or is not a folder")
        yield data_root
        return
    if not needed:
        yield None
        return
    tmp = Path(tempfile.mkdtemp(prefix="svg-bench-"))
    try:
        yield ensure_synthetic(tmp / "synthetic", *synthetic_sizes(batch), seed=0)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def step_batches(
    root: Path | None, batch: int, seq_len: int, count: int, conditions: str = "action+position"
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` loader batches from the training split of root, or random uint8 frames where root is None,
    with the condition columns ``conditions`` names."""
    if root is None:
        gen = torch.Generator().manual_seed(0)
        return [
            (
                torch.randint(0, 256, (batch, seq_len, *FRAME_SHAPE), dtype=torch.uint8, generator=gen),
                torch.randn(batch, seq_len, COND_DIM, generator=gen)[..., CONDITIONS[conditions]],
            )
            for _ in range(count)
        ]
    stream = train_batches(open_split(root, "train", seq_len=seq_len, conditions=conditions), batch, seed=0)
    try:
        return [next(stream) for _ in range(count)]
    finally:
        stream.close()


def loader_rate(dataset: torch.utils.data.Dataset, batch: int, batches: int, workers: int) -> dict[str, float]:
    """Sequences per second of ``train_batches`` over a dataset, after one untimed batch."""
    stream = train_batches(dataset, batch, seed=0, num_workers=workers)
    try:
        next(stream)
        t0 = time.perf_counter()
        for _ in range(batches):
            next(stream)
        elapsed = time.perf_counter() - t0
    finally:
        stream.close()
    return {"seq_per_s": batch * batches / elapsed, "batch_time_s": elapsed / batches}


def bench_loaders(
    root: Path, seq_len: int, batch: int, batches: int, workers: int, keep_root: bool = True
) -> dict[str, Any]:
    """train_batches over the packed cache and over the PNG folders of the same training split."""
    out: dict[str, Any] = {
        "root": str(root) if keep_root else "temporary synthetic set",
        "seq_len": seq_len,
        "batch_size": batch,
        "workers": workers,
    }
    cache = open_split(root, "train", seq_len)
    out["cache"] = loader_rate(cache, batch, batches, workers) if isinstance(cache, CacheDataset) else None
    if (root / "train").is_dir():
        t0 = time.perf_counter()
        png = CourseDataset(root / "train", seq_len)
        opened = time.perf_counter() - t0
        out["png"] = {**loader_rate(png, batch, batches, workers), "open_s": opened, "sequences": len(png)}
    else:
        out["png"] = None
    if out["cache"] and out["png"]:
        out["cache_vs_png"] = out["cache"]["seq_per_s"] / out["png"]["seq_per_s"]
    return out
