"""What the trainer calls: open a split (the packed cache when present, else the PNGs) and iterate batches.

Training order is a pure function of (seed, epoch): epoch e shuffles with numpy's default_rng([seed, e])
and deals the permutation out to the ranks, so resuming at any batch costs nothing and DDP ranks
see disjoint sequences in equal numbers.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.utils.data

from svg.data import cache
from svg.data.course import CONDITIONS, FRAME_SHAPE, SEQ_LEN, SPLITS, read_frames, scan_split
from svg.errors import DataError

Batch = tuple[torch.Tensor, torch.Tensor]


class CourseDataset(torch.utils.data.Dataset):
    """One split read from PNGs: validated and conditions parsed at open, frames decoded per item."""

    def __init__(self, split_dir: Path, seq_len: int = SEQ_LEN, skip_bad: bool = False):
        self.seq_len = seq_len
        self.sequences, self.conditions = scan_split(split_dir, seq_len, skip_bad)

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return read_frames(self.sequences[i], self.seq_len), self.conditions[i].copy()

    def get_batch(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        frames = np.stack([read_frames(self.sequences[i], self.seq_len) for i in indices])
        return frames, self.conditions[np.asarray(indices)]


class CacheDataset(torch.utils.data.Dataset):
    """A packed split read through a memory map: no decoding, and workers share the page cache."""

    def __init__(self, frames_path: Path, conditions_path: Path, seq_len: int = SEQ_LEN, skip_bad: bool = False):
        self.frames_path, self.seq_len = frames_path, seq_len
        self.rows, self.conditions = cache.check_arrays(frames_path, conditions_path, seq_len, skip_bad)
        self._frames: np.ndarray | None = None

    def _map(self) -> np.ndarray:
        if self._frames is None:
            self._frames = np.load(self.frames_path, mmap_mode="r")
        return self._frames

    def __getstate__(self) -> dict:
        # Pickling a memmap would copy the whole array into a worker: reopen it there instead.
        return {**self.__dict__, "_frames": None}

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return np.array(self._map()[self.rows[i], : self.seq_len]), self.conditions[i].copy()

    def get_batch(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        indices = np.asarray(indices)
        rows = self.rows[indices]
        order = np.argsort(rows, kind="stable")
        frames = np.empty((len(rows), self.seq_len, *FRAME_SHAPE), np.uint8)
        frames[order] = self._map()[rows[order], : self.seq_len]  # ascending rows: sequential reads
        return frames, self.conditions[indices]


def open_split(
    root: str | Path, split: str, seq_len: int = SEQ_LEN, skip_bad: bool = False, conditions: str = "action+position"
) -> torch.utils.data.Dataset:
    """A split of ROOT; item i -> (frames uint8 (seq_len, 64, 64, 3), conditions float32 (seq_len, C)),
    C the columns ``conditions`` names (``svg.data.course.CONDITIONS``: 7, 4 or 0).

    Reads the packed cache when it is present and current, else the PNG layout. Validates on open
    (missing or empty split, short sequences, bad PNG headers, bad CSVs, NaN/inf) and raises DataError
    naming the path; skip_bad=True skips bad sequences with a warning each instead.
    """
    if split not in SPLITS:
        raise DataError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"data.root: {root} does not exist or is not a folder (expected a dataset: "
            "train/<trajectory>/<seq>/0.png … or a packed cache; --data.source=synthetic generates one there)"
        )
    if cache.usable(root, split):
        dataset = CacheDataset(*cache.cache_paths(root, split)[:2], seq_len, skip_bad)
    else:
        dataset = CourseDataset(root / split, seq_len, skip_bad)
    dataset.conditions = np.ascontiguousarray(dataset.conditions[..., CONDITIONS[conditions]])
    return dataset


def _fetch(dataset: torch.utils.data.Dataset, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    get_batch = getattr(dataset, "get_batch", None)
    if get_batch is not None:
        return get_batch(indices)
    items = [dataset[int(i)] for i in indices]
    return np.stack([f for f, _ in items]), np.stack([c for _, c in items])


def _as_tensors(batch: tuple[np.ndarray, np.ndarray]) -> Batch:
    frames, conditions = batch
    return torch.from_numpy(frames), torch.from_numpy(conditions)


class _ByBatch(torch.utils.data.Dataset):
    """Lets a DataLoader worker fetch a whole batch per call (one sorted memmap gather, not B reads)."""

    def __init__(self, dataset: torch.utils.data.Dataset):
        self.dataset = dataset

    def __getitem__(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return _fetch(self.dataset, indices)


def _load(dataset: torch.utils.data.Dataset, index_batches: Iterable[np.ndarray], num_workers: int) -> Iterator[Batch]:
    if num_workers == 0:
        for indices in index_batches:
            yield _as_tensors(_fetch(dataset, indices))
        return
    loader = torch.utils.data.DataLoader(
        _ByBatch(dataset),
        batch_size=None,
        sampler=index_batches,
        num_workers=num_workers,
        collate_fn=_as_tensors,
    )
    yield from loader


def train_order(
    n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1, start_batch: int = 0
) -> Iterator[np.ndarray]:
    """Endless index batches of one rank; batch k is the same whether or not batches 0..k-1 were drawn."""
    per_rank = n // world_size
    per_epoch = per_rank // batch_size
    if per_epoch == 0:
        raise DataError(
            f"data: {n} training sequences cannot fill one batch of {batch_size} on each of {world_size} rank(s)"
        )

    def batches() -> Iterator[np.ndarray]:
        epoch, first = divmod(start_batch, per_epoch)
        while True:
            order = np.random.default_rng([seed, epoch]).permutation(n)
            mine = order[rank : per_rank * world_size : world_size]
            for b in range(first, per_epoch):
                yield mine[b * batch_size : (b + 1) * batch_size]
            epoch, first = epoch + 1, 0

    return batches()


def train_batches(
    dataset: torch.utils.data.Dataset,
    batch_size: int,
    seed: int,
    num_workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
    start_batch: int = 0,
) -> Iterator[Batch]:
    """Endless random batches (frames uint8 (B, T, 64, 64, 3), conditions float32 (B, T, 7)), drop_last.

    Reproducible from seed; start_batch=k yields what the stream would yield after k batches (resume);
    with world_size > 1 each rank gets a disjoint share of every epoch and the same number of batches.
    """
    if not 0 <= rank < world_size:
        raise DataError(f"rank {rank} outside world_size {world_size}")
    order = train_order(len(dataset), batch_size, seed, rank, world_size, start_batch)
    return _load(dataset, order, num_workers)


def training_clips(
    frames: torch.Tensor,
    cond: torch.Tensor,
    length: int,
    random_start: bool,
    seed: int,
    batch_index: int,
    rank: int = 0,
) -> Batch:
    """The `length` frames of each sequence one training step sees: the first ones, or from a start drawn per
    sequence, a pure function of (seed, batch index, rank) so that a resumed run draws what it would have."""
    if not random_start:
        return frames[:, :length], cond[:, :length]
    starts = np.random.default_rng([seed, batch_index, rank, _CLIP_STREAM]).integers(
        0, frames.shape[1] - length + 1, size=frames.shape[0]
    )
    steps = torch.as_tensor(starts[:, None] + np.arange(length))
    rows = torch.arange(frames.shape[0])[:, None]
    return frames[rows, steps], cond[rows, steps]


_CLIP_STREAM = 7
"""Keeps the clips' starts apart from the epochs' shuffles, which default_rng([seed, epoch]) draws."""


def eval_batches(
    dataset: torch.utils.data.Dataset, batch_size: int, limit: int | None = None, num_workers: int = 0
) -> Iterator[Batch]:
    """The first `limit` sequences (all when None) in order, the last batch possibly smaller."""
    n = len(dataset) if limit is None else min(limit, len(dataset))
    order = [np.arange(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]
    return _load(dataset, order, num_workers)


_END = object()
"""What the Prefetcher's thread queues after the last batch."""


class Prefetcher:
    """The next batch loaded (and pinned, for asynchronous copies to a GPU) in a thread while the
    current step runs. Order and content are those of ``batches``, and it ends where they end; an error
    in loading is raised by ``next``; ``close`` stops the thread. For GPUs: on a 2-core CPU the thread
    only takes time from the step (measured), so CPU training reads ``train_batches`` directly."""

    def __init__(self, batches: Iterator[Batch], pin: bool = False):
        self._queue: queue.Queue = queue.Queue(maxsize=1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, args=(batches, pin), daemon=True)
        self._thread.start()

    def _fill(self, batches: Iterator[Batch], pin: bool) -> None:
        try:
            for frames, cond in batches:
                item = (frames.pin_memory(), cond.pin_memory()) if pin else (frames, cond)
                if not self._put(item):
                    return
        except Exception as e:  # noqa: BLE001 - handed to the consumer, raised where it asks for a batch
            self._put(e)
            return
        self._put(_END)

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Prefetcher:
        return self

    def __next__(self) -> Batch:
        item = self._queue.get()
        if item is _END:
            self._queue.put(_END)  # every later call ends too
            raise StopIteration
        if isinstance(item, Exception):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
