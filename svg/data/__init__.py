"""Data: the course layout, the synthetic default, the official BAIR converter, the packed cache, loaders."""

from svg.data.bair import convert as convert_tfrecords
from svg.data.cache import pack
from svg.data.course import COND_DIM, FRAME_SHAPE, SEQ_LEN, SPLITS
from svg.data.errors import DataError, DataWarning
from svg.data.loaders import eval_batches, open_split, train_batches
from svg.data.synthetic import ensure_synthetic

__all__ = [
    "COND_DIM", "FRAME_SHAPE", "SEQ_LEN", "SPLITS", "DataError", "DataWarning", "convert_tfrecords",
    "ensure_synthetic", "eval_batches", "open_split", "pack", "train_batches",
]
