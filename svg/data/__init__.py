"""Data: the course layout, the synthetic default, the official BAIR converter, the packed cache, loaders.

The loaders (which need torch) are imported on first use, so `prepare_data.py` starts without torch.
"""

from svg.data.bair import convert as convert_tfrecords
from svg.data.cache import pack
from svg.data.course import COND_DIM, CONDITIONS, FRAME_SHAPE, SEQ_LEN, SPLITS
from svg.data.synthetic import ensure_synthetic, holds_other_data
from svg.errors import DataError, DataWarning

_LOADERS = (
    "CacheDataset",
    "CourseDataset",
    "eval_batches",
    "open_split",
    "Prefetcher",
    "train_batches",
    "training_clips",
)

__all__ = [
    "COND_DIM",
    "CONDITIONS",
    "FRAME_SHAPE",
    "SEQ_LEN",
    "SPLITS",
    "DataError",
    "DataWarning",
    "convert_tfrecords",
    "ensure_synthetic",
    "holds_other_data",
    "pack",
    *_LOADERS,
]


def __getattr__(name: str):
    if name in _LOADERS:
        from svg.data import loaders

        return getattr(loaders, name)
    raise AttributeError(f"module 'svg.data' has no attribute {name!r}")
