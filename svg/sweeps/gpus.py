"""One GPU per parallel trial: the GPUs the runner sees, and which one a new trial gets.

A trial's CUDA_VISIBLE_DEVICES is set to one entry of the runner's own list, so a trial sees exactly one device
(its ``cuda:0``) and parallel trials do not share one while another is idle. Without GPUs nothing is set.
"""

from __future__ import annotations

import os


def visible_gpus(environ: dict[str, str] | None = None) -> list[str]:
    """The runner's GPUs as CUDA_VISIBLE_DEVICES entries: its own CUDA_VISIBLE_DEVICES when set (ids or UUIDs; CUDA
    ignores everything from the first negative entry on), else ``0 … n-1`` for torch's device count."""
    environ = os.environ if environ is None else environ
    if "CUDA_VISIBLE_DEVICES" in environ:
        out = []
        for entry in (e.strip() for e in environ["CUDA_VISIBLE_DEVICES"].split(",")):
            if not entry or entry.startswith("-"):
                break
            out.append(entry)
        return out
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def pick_gpu(gpus: list[str], in_use: list[str | None]) -> str | None:
    """The GPU running the fewest live trials, the first in order among equals (so a finished trial's GPU is the
    next one given; with more trials than GPUs they share round robin); None without GPUs."""
    if not gpus:
        return None
    return min(gpus, key=in_use.count)
