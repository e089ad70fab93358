"""The machine the bench runs on: CPU model, flags and threads, the estimated FLOP peak, the load
average, and the memory high-water mark of one step (CUDA's allocator peak, or the CPU's resident set).

Nothing here knows about models or arms: each function reads the machine or times a given callable.
"""

from __future__ import annotations

import os
import platform
import resource
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from svg.runtime import Runtime, cpu_has_fast_bf16, release_free_heap


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is none)."""
    info: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.split("\n\n")[0].splitlines():
        key, _, value = line.partition(":")
        info[key.strip()] = value.strip()
    return info


def _max_mhz() -> float | None:
    """The highest clock the kernel reports: cpufreq's maximum, else /proc/cpuinfo's current (under a
    hypervisor often the nominal clock, so turbo can make the true peak higher)."""
    try:
        return int(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text()) / 1000
    except (OSError, ValueError):
        pass
    mhz = _cpuinfo().get("cpu MHz")
    return float(mhz) if mhz else None


def cpu_peak_flops(cores: int, mhz: float, flags: set[str], vendor: str = "") -> dict[str, Any]:
    """Vector FMA peak: cores x clock x 2 FMA units x fp32 lanes x 2 flop, and AMX's bf16 peak
    (1024 flop/cycle/core) where the flags show AMX. 512-bit lanes only on Intel: AMD's AVX-512
    (Zen 4) runs on 256-bit units."""
    lanes = 16 if "avx512f" in flags and vendor == "GenuineIntel" else 8 if {"avx2", "fma"} <= flags else 4
    per_cycle = 2 * lanes * 2
    peak = {
        "fp32_flop_per_s": cores * mhz * 1e6 * per_cycle,
        "basis": f"{cores} cores x {mhz / 1000:.3f} GHz x {per_cycle} fp32 flop/cycle "
        f"(2 FMA units x {lanes} lanes x 2)",
    }
    if "amx_bf16" in flags:
        peak["bf16_flop_per_s"] = cores * mhz * 1e6 * 1024
    return peak


GPU_PEAKS: list[tuple[tuple[str, ...], str, float, float]] = [
    (("H100", "NVL"), "H100 NVL", 835.5e12, 417.5e12),
    (("H100", "PCIE"), "H100 PCIe", 756e12, 378e12),
    (("H100",), "H100 SXM", 989.4e12, 494.7e12),
    (("H200", "NVL"), "H200 NVL", 835.5e12, 417.5e12),
    (("H200",), "H200 SXM", 989.4e12, 494.7e12),
    (("A100",), "A100", 312e12, 156e12),
]
"""Dense tensor-core peaks (FLOP/s: bf16/fp16, TF32) from NVIDIA's datasheets (half their with-sparsity
figures), by what ``torch.cuda.get_device_name`` contains; the first match wins."""


def mfu(flop_per_s: float, device: str, gpu: str | None, precision: str) -> dict[str, Any]:
    """Model FLOP utilisation: counted FLOPs per second over the device's dense peak for the precision
    that ran (bf16/fp16 autocast: the 16-bit peak; fp32: the TF32 peak, since the runtime turns TF32
    on for CUDA). None, with the reason, on a CPU or an unknown GPU."""
    if device != "cuda" or not gpu:
        return {"mfu": None, "mfu_reason": f"no tensor-core peak for {device}; see fraction_of_peak for a CPU"}
    name = gpu.upper()
    for parts, label, half, tf32 in GPU_PEAKS:
        if all(p in name for p in parts):
            peak, kind = (half, "bf16/fp16") if precision in ("bf16", "fp16") else (tf32, "TF32")
            return {
                "mfu": flop_per_s / peak,
                "mfu_peak_flop_per_s": peak,
                "mfu_basis": f"{label} dense {kind} peak {peak / 1e12:.1f} TFLOP/s (NVIDIA datasheet)",
            }
    return {"mfu": None, "mfu_reason": f"no dense peak known for {gpu!r}"}


def machine(rt: Runtime) -> dict[str, Any]:
    """CPU, flags, threads, torch's vector path, the GPU's name, and (on a CPU run) the peak estimate."""
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    cores = min(torch.get_num_threads(), len(os.sched_getaffinity(0)))
    out: dict[str, Any] = {
        "cpu": info.get("model name") or platform.processor() or platform.machine(),
        "cpus": len(os.sched_getaffinity(0)),
        "threads": torch.get_num_threads(),
        "cpu_flags": sorted(flags & {"avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_fast_bf16": cpu_has_fast_bf16(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(rt.device) if rt.device.type == "cuda" else None,
    }
    mhz = _max_mhz()
    if rt.device.type == "cpu" and mhz:
        out["peak"] = cpu_peak_flops(cores, mhz, flags, info.get("vendor_id", ""))
    return out


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def _status_kib(field_name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_resident_peak() -> bool:
    """Reset the kernel's resident-set high-water mark (Linux >= 4.0); False where that is impossible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_memory(device: torch.device, step: Callable[[], Any]) -> dict[str, Any]:
    """Run ``step`` and report its memory high-water mark: CUDA's allocator peak on a GPU; on a CPU the
    resident set (VmHWM, reset before the step), since torch's CPU allocations are invisible to
    tracemalloc. ``step_memory_bytes`` is the rise above what the process held before the step.

    A CUDA graph's replay allocates nothing: its activations live in the graph's private pool, reserved
    when it was captured, so a replay's allocated peak leaves them out. ``peak_reserved_bytes`` (what the
    allocator holds from the GPU, pools included) is the figure to size a GPU by for a captured step."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        return {
            "peak_memory_bytes": peak,
            "step_memory_bytes": peak - before,
            "peak_reserved_bytes": torch.cuda.max_memory_reserved(device),
            "memory_source": "cuda allocator",
        }
    release_free_heap()
    reset = _reset_resident_peak()
    before = _status_kib("VmRSS")
    step()
    if reset and before is not None:
        peak = _status_kib("VmHWM")
        source = "VmHWM (resident-set peak of the step)"
    else:  # ru_maxrss never goes down: only the first arm measured this way is its own
        peak, source = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "ru_maxrss (process-lifetime peak)"
        before = before or 0
    return {"peak_memory_bytes": peak * 1024, "step_memory_bytes": (peak - before) * 1024, "memory_source": source}
