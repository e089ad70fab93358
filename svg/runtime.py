"""Where and how tensors run: device, precision, autocast, CPU threads, allocator, process group.

Every entrypoint that touches the model (train, evaluate, bench) asks this module once, so a run,
its evaluation and its benchmark use the same device and precision rules.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import os
import sys
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist

from svg.config import Train
from svg.errors import SvgError

AMP_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
"""``train.precision`` -> autocast dtype (None: no autocast)."""


@dataclass
class Runtime:
    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool = False
    rank: int = 0
    world_size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def precision(self) -> str:
        return next(name for name, dtype in AMP_DTYPES.items() if dtype == self.amp_dtype)

    def autocast(self):
        """The autocast context of this runtime (a no-op in fp32)."""
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)


def cpu_has_fast_bf16() -> bool:
    """AMX or AVX512-bf16: bf16 matmuls run natively. Elsewhere bf16 is emulated and ~9x slower than fp32."""
    return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())


@functools.cache
def _libc() -> ctypes.CDLL | None:
    if sys.platform != "linux":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def keep_freed_memory() -> None:
    """Ask glibc to keep freed activation buffers instead of returning them to the OS: otherwise every
    CPU training step page-faults its large tensors in again (measured: ~100k faults and ~20% slower)."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(-3, 32 * 1024 * 1024)  # M_MMAP_THRESHOLD: its maximum, so buffers come from the heap
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: keep up to 1 GiB of freed heap


def release_free_heap() -> None:
    """Hand freed heap pages back to the OS, so a following memory measurement is its own."""
    gc.collect()
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def resolve_precision(precision: str, device: torch.device) -> str:
    """auto: fp32 (TF32 matmuls and convolutions) on CUDA; bf16 on CPUs with native bf16; fp32 on other CPUs.

    CUDA: on an H100 (torch 2.11, seed preset, batch 12; a design-phase measurement) the eager step took 0.069 s
    in fp32 with TF32 against 0.095 s in bf16 autocast (0.081 s with channels_last): the step is bound
    by kernel launches, and autocast adds cast kernels. fp32 also needs no loss scaler."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "fp32"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


def resolve_channels_last(cfg: Train, device: torch.device, precision: str) -> bool:
    """``train.channels_last`` where it helps. On CUDA only the eager step under bf16/fp16 autocast uses
    it: the H100 measurement above found it faster there (0.081 vs 0.095 s) and nowhere else, and under
    torch.compile it crashed inductor (a stride assertion in convolution_backward, torch 2.11). The CPU
    follows the setting as it is."""
    if not cfg.channels_last or device.type != "cuda":
        return cfg.channels_last
    if cfg.compile != "off":
        warnings.warn("train.compile on CUDA runs with train.channels_last=false", stacklevel=3)
        return False
    return precision in ("bf16", "fp16")


def cpu_threads(threads: int | None, local_world_size: int, use_cuda: bool) -> int | None:
    """``train.threads``, else for CPU ranks under torchrun a share of this machine's cores: torchrun sets
    OMP_NUM_THREADS=1, so two ranks on a 16-core machine would use 2 cores. None: torch's default."""
    if threads or use_cuda or local_world_size == 1:
        return threads
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // local_world_size)


def setup_runtime(cfg: Train) -> Runtime:
    """Device, precision, threads and (under torchrun) the process group, from the train section."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise SvgError("train.device: cuda was asked for but no CUDA device is available")
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if use_cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
        torch.backends.cudnn.benchmark = not cfg.deterministic
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        device = torch.device("cpu")
        keep_freed_memory()
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    threads = cpu_threads(cfg.threads, int(os.environ.get("LOCAL_WORLD_SIZE", "1")), use_cuda)
    if threads:
        torch.set_num_threads(threads)
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    precision = resolve_precision(cfg.precision, device)
    channels_last = resolve_channels_last(cfg, device, precision)
    return Runtime(device, AMP_DTYPES[precision], channels_last, rank, world_size)
