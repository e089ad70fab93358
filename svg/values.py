"""Plain Python values: what JSON, YAML, W&B and the ``sweeps`` engine accept.

Numbers arrive as numpy scalars (the engine), tensors (the model) or non-finite floats (a diverged
step); configs arrive as nested sections. One conversion serves every writer.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def plain(value: Any, digits: int | None = None) -> Any:
    """numpy scalars/arrays -> Python numbers/lists, non-finite floats -> None, floats rounded to
    ``digits`` when given; dicts, lists and tuples converted throughout."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    elif isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, dict):
        return {k: plain(v, digits) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v, digits) for v in value]
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return round(value, digits) if digits is not None else value
    return value


def is_number(value: Any) -> bool:
    """A finite int or float, not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def dotted(tree: dict) -> dict[str, Any]:
    """Sections as dotted keys (``kl.mode``): the names of W&B config, sweep parameters and overrides.
    Entries that are not sections are left out, so an older config.yaml still reads."""
    return {f"{s}.{k}": v for s, sec in tree.items() if isinstance(sec, dict) for k, v in sec.items()}
