"""Throughput of training, evaluation and data loading, measured beside the seed's per-frame fp32 step.

Every arm gets its own copy of the preset's model, all from the same initial weights. The project arm
runs ``SVG.training_step`` under the runtime the trainer would choose (device, precision,
channels_last, compile, threads); the reference arm runs ``reference_step`` in plain fp32, contiguous,
eager; variant arms change one setting of the project's (an A/B test). All arms take the same batches
and the same noise and alternate step by step in one process (A B, B A, A B, ...), so machine drift,
which is large on a shared CPU, lands on all of them; the ratio of their step times is the number to
trust, more than any time alone. A step is what ``Trainer._step`` does: layout conversion, forward,
backward, optimizer step and one ``loss.item()``.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import ctypes.util
import gc
import os
import platform
import resource
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from svg.config import Experiment
from svg.data import CacheDataset, CourseDataset, DataError, ensure_synthetic, open_split, train_batches
from svg.errors import SvgError
from svg.models import SVG
from svg.models.reference import reference_step
from svg.train import Runtime, autocast, cpu_has_fast_bf16, setup_runtime, to_model_layout

SEED_EPOCH_SEQUENCES = 600 * 12
"""One epoch of the seed's setup: 600 iterations of batch 12."""

BETA = 1e-4
"""KL weight of the benchmarked loss; any value costs the same."""


@dataclass
class Options:
    steps: int = 5
    """Timed steps per arm."""
    warmup: int = 1
    """Untimed steps per arm after the FLOP-counting step (compilation, allocator, oneDNN caches); the
    last one is the step whose peak memory is reported."""
    teacher_forcing: bool = True
    """Time the teacher-forced step (the seed's first epochs; the decoder runs batched over time) or
    the step that feeds the model its own predictions (sequential decoder)."""
    reference: bool = True
    """Also time the seed's per-frame fp32 step."""
    eval_batches: int = 2
    """Timed batches of ``model.predict`` over ``train.n_eval`` frames."""
    loader_batches: int = 20
    """Timed batches per loader (packed cache, PNG folders); 0 skips the loader benchmark."""
    loader_workers: int = 0
    """DataLoader workers for the loader benchmark (0: read in this process, the per-core rate)."""
    data_root: Path | None = None
    """Dataset for the loaders and the step batches; None: a small synthetic set in a temp folder."""
    step_data: Literal["synthetic", "random"] = "synthetic"
    """Step batches from the dataset, or random uint8 frames (no dataset needed when loaders are off)."""
    variants: tuple[str, ...] = ()
    """Extra arms timed in the same alternation, e.g. ``precision=bf16,channels_last=false`` or
    ``step=reference,channels_last=true``: A/B tests of the runtime settings under the same drift."""


def _at_least(name: str, value: int, minimum: int) -> None:
    if value < minimum:
        raise SvgError(f"{name}: must be >= {minimum}, got {value}")


# -- the machine -----------------------------------------------------------------------------------


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


def machine(rt: Runtime) -> dict[str, Any]:
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


# -- peak memory -----------------------------------------------------------------------------------


def _status_kib(field_name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _release_free_heap() -> None:
    """Hand freed heap pages back to the OS (glibc), so the next step's resident peak is its own."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError, TypeError):
        ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)


def _reset_resident_peak() -> bool:
    """Reset the kernel's resident-set high-water mark (Linux >= 4.0); False where that is impossible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_memory(device: torch.device, step: Callable[[], None]) -> dict[str, Any]:
    """Run ``step`` and report its memory high-water mark: CUDA's allocator peak on a GPU; on a CPU the
    resident set (VmHWM, reset before the step), since torch's CPU allocations are invisible to
    tracemalloc. ``step_memory_bytes`` is the rise above what the process held before the step."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        return {"peak_memory_bytes": peak, "step_memory_bytes": peak - before, "memory_source": "cuda allocator"}
    _release_free_heap()
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


# -- the two arms ----------------------------------------------------------------------------------

StepFn = Callable[[SVG, torch.Tensor, torch.Tensor, int, bool, torch.Tensor], Any]


def _project_step(model: SVG, *args) -> Any:
    return model.training_step(*args)


@dataclass
class Arm:
    """One side of the comparison: a model, its optimizer, the step it runs and the times it took."""

    name: str
    model: SVG
    step_fn: StepFn
    rt: Runtime
    precision: str
    channels_last: bool
    compile: bool
    times: list[float] = field(default_factory=list)
    warmup_times: list[float] = field(default_factory=list)
    flops: int = 0
    memory: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=2e-3)
        cuda_fp16 = self.rt.amp_dtype == torch.float16 and self.rt.device.type == "cuda"
        self.scaler = torch.amp.GradScaler(enabled=cuda_fp16)

    def step(self, frames: torch.Tensor, cond: torch.Tensor, eps: torch.Tensor, n_past: int, tf: bool) -> float:
        """One training step as the trainer runs it; returns the loss (which synchronises the device)."""
        x, c = to_model_layout(frames, cond, self.rt.device)
        self.model.train()
        with autocast(self.rt):
            res = self.step_fn(self.model, x, c, n_past, tf, eps)
        loss = res.mse + BETA * res.kld
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.item()

    def summary(self, batch: int, iters_per_epoch: int, peak: dict[str, Any] | None) -> dict[str, Any]:
        median = statistics.median(self.times)
        out: dict[str, Any] = {
            "step_time_s": median,
            "step_time_mean_s": statistics.fmean(self.times),
            "step_time_min_s": min(self.times),
            "step_times_s": [round(t, 4) for t in self.times],
            "warmup_times_s": [round(t, 4) for t in self.warmup_times],
            "steps_per_s": 1 / median,
            "train_seq_per_s": batch / median,
            "flops_per_step": self.flops,
            "flop_per_s": self.flops / median,
            "epoch_time_s": iters_per_epoch * median,
            "seed_epoch_time_s": SEED_EPOCH_SEQUENCES * median / batch,
            "precision": self.precision,
            "channels_last": self.channels_last,
            "compile": self.compile,
            **self.memory,
        }
        key = (
            "bf16_flop_per_s" if self.precision == "bf16" and peak and "bf16_flop_per_s" in peak else "fp32_flop_per_s"
        )
        if peak and key in peak:
            out["fraction_of_peak"] = out["flop_per_s"] / peak[key]
        return out


def alternate(arms: Sequence[Arm], rounds: int, run: Callable[[int, Arm], None]) -> None:
    """Round i runs every arm once, in order on even rounds and reversed on odd ones (A B, B A, ...):
    a drift linear in time then costs both arms the same."""
    for i in range(rounds):
        for arm in arms if i % 2 == 0 else arms[::-1]:
            run(i, arm)


def count_flops(step: Callable[[], Any]) -> int:
    """FLOPs of one call as torch.utils.flop_counter counts them (matmuls and convolutions, forward and backward)."""
    with FlopCounterMode(display=False) as counter:
        step()
    return int(counter.get_total_flops())


# -- evaluation and loading --------------------------------------------------------------------------


def bench_eval(model: SVG, rt: Runtime, batch: int, n_past: int, n_eval: int, batches: int) -> dict[str, Any]:
    """Sequences per second of ``model.predict`` (eval mode, z from the prior) over n_eval frames."""
    gen = torch.Generator(device=rt.device).manual_seed(0)
    x = torch.rand(n_past, batch, 3, 64, 64, device=rt.device)
    c = torch.randn(n_eval, batch, 7, device=rt.device)
    model.eval()

    def predict() -> None:
        with torch.no_grad(), autocast(rt):
            out = model.predict(x, c, n_past, generator=gen)
        out.sum().item()

    predict()  # warm-up: kernels, compilation for the new shapes
    t0 = time.perf_counter()
    for _ in range(batches):
        predict()
    elapsed = time.perf_counter() - t0
    model.train()
    return {"eval_seq_per_s": batch * batches / elapsed, "eval_batch_time_s": elapsed / batches, "eval_frames": n_eval}


def loader_rate(dataset: torch.utils.data.Dataset, batch: int, batches: int, workers: int) -> dict[str, float]:
    """Sequences per second of ``train_batches`` over a dataset, after one untimed batch."""
    stream = train_batches(dataset, batch, seed=0, num_workers=workers)
    try:
        next(stream)
        t0 = time.perf_counter()
        for _ in range(batches):
            frames, _ = next(stream)
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


# -- the whole benchmark ---------------------------------------------------------------------------


@contextlib.contextmanager
def _dataset_root(opts: Options, batch: int) -> Iterator[Path | None]:
    """The user's data root, or a small synthetic set (both layouts) in a temp folder removed afterwards."""
    if opts.data_root is not None:
        if not opts.data_root.is_dir():
            raise DataError(f"--data-root: {opts.data_root} does not exist or is not a folder")
        yield opts.data_root
        return
    if opts.loader_batches == 0 and opts.step_data == "random":
        yield None
        return
    tmp = Path(tempfile.mkdtemp(prefix="svg-bench-"))
    try:
        yield ensure_synthetic(tmp / "synthetic", max(4 * batch, 48), 1, 1, seed=0)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _step_batches(root: Path | None, opts: Options, batch: int, seq_len: int, count: int) -> list:
    if opts.step_data == "random" or root is None:
        gen = torch.Generator().manual_seed(0)
        return [
            (torch.randint(0, 256, (batch, seq_len, 64, 64, 3), dtype=torch.uint8, generator=gen),
             torch.randn(batch, seq_len, 7, generator=gen))
            for _ in range(count)
        ]  # fmt: skip
    stream = train_batches(open_split(root, "train", seq_len=seq_len), batch, seed=0)
    return [next(stream) for _ in range(count)]


_AMP = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
_VARIANT_KEYS = {"step": ("project", "reference"), "precision": ("auto", *_AMP), "channels_last": ("true", "false"),
                 "compile": ("true", "false")}  # fmt: skip


def parse_variant(spec: str) -> dict[str, Any]:
    """``precision=bf16,channels_last=false`` -> {"precision": "bf16", "channels_last": False}."""
    out: dict[str, Any] = {}
    for item in spec.split(","):
        key, _, value = item.partition("=")
        key, value = key.strip(), value.strip().lower()
        if key not in _VARIANT_KEYS or value not in _VARIANT_KEYS[key]:
            choices = "; ".join(f"{k}={'|'.join(v)}" for k, v in _VARIANT_KEYS.items())
            raise SvgError(f"--variant: {item!r} is not one of {choices}")
        out[key] = value == "true" if key in ("channels_last", "compile") else value
    return out


def _arm(name: str, initial: SVG, step: str, rt: Runtime, precision: str, channels_last: bool, compile: bool) -> Arm:
    model = copy.deepcopy(initial)
    if channels_last:
        model.channels_last = True
        model.to(memory_format=torch.channels_last)
    arm_rt = Runtime(rt.device, _AMP[precision], rt.rank, rt.world_size)
    step_fn = _project_step if step == "project" else reference_step
    return Arm(name, model, step_fn, arm_rt, precision, channels_last, compile)


def run(exp: Experiment, opts: Options, preset: str = "") -> dict[str, Any]:
    """Measure and return the report (what ``entrypoints/bench.py`` writes as JSON)."""
    for name, value, minimum in (("--steps", opts.steps, 1), ("--warmup", opts.warmup, 1),
                                 ("--eval-batches", opts.eval_batches, 0), ("--loader-batches", opts.loader_batches, 0),
                                 ("--loader-workers", opts.loader_workers, 0)):  # fmt: skip
        _at_least(name, value, minimum)
    started, load_before = time.perf_counter(), load_average()
    rt = setup_runtime(exp)
    cfg = exp.train
    batch, seq_len, n_past = exp.data.batch_size, cfg.n_past + cfg.n_future, cfg.n_past
    precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[rt.amp_dtype]
    info = machine(rt)
    peak = info.get("peak")

    torch.manual_seed(cfg.seed)
    initial = SVG(exp.model).to(rt.device)  # fp32, contiguous: every arm starts from a copy of these weights
    project = _arm("project", initial, "project", rt, precision, cfg.channels_last, cfg.compile)
    arms = [project]
    if opts.reference:
        arms.append(_arm("reference", initial, "reference", rt, "fp32", False, False))
    for spec in opts.variants:
        v = {"step": "project", "precision": precision, "channels_last": cfg.channels_last, "compile": cfg.compile}
        v.update(parse_variant(spec))
        v["precision"] = precision if v["precision"] == "auto" else v["precision"]
        arms.append(_arm(spec, initial, v["step"], rt, v["precision"], v["channels_last"], v["compile"]))
    del initial
    model = project.model

    with _dataset_root(opts, batch) as root:
        loaders = None
        if opts.loader_batches and root is not None:
            loaders = bench_loaders(
                root, seq_len, batch, opts.loader_batches, opts.loader_workers, keep_root=opts.data_root is not None
            )
        data = _step_batches(root, opts, batch, seq_len, count=4)
    gen = torch.Generator().manual_seed(cfg.seed)
    noise = [torch.randn(seq_len - 1, batch, exp.model.z_dim, generator=gen).to(rt.device) for _ in data]
    tf = opts.teacher_forcing

    def step(i: int, arm: Arm) -> float:
        frames, cond = data[i % len(data)]
        return arm.step(frames, cond, noise[i % len(noise)], n_past, tf)

    counted: dict[StepFn, int] = {}
    for arm in arms:  # eager, before any compilation: FLOPs depend neither on kernels nor on layout
        if arm.step_fn not in counted:
            counted[arm.step_fn] = count_flops(lambda arm=arm: step(0, arm))
        else:
            step(0, arm)
        arm.flops = counted[arm.step_fn]
    for arm in arms:
        if arm.compile:
            arm.model.encoder.compile()
            arm.model.decoder.compile()

    def warm(i: int, arm: Arm) -> None:
        t0 = time.perf_counter()
        if i == opts.warmup - 1:
            arm.memory = peak_memory(rt.device, lambda: step(i, arm))
        else:
            step(i, arm)
        arm.warmup_times.append(time.perf_counter() - t0)

    alternate(arms, opts.warmup, warm)

    def timed(i: int, arm: Arm) -> None:
        t0 = time.perf_counter()
        step(i, arm)
        arm.times.append(time.perf_counter() - t0)

    alternate(arms, opts.steps, timed)

    report: dict[str, Any] = {
        "preset": preset,
        "device": str(rt.device),
        "settings": {
            "batch_size": batch,
            "n_past": n_past,
            "n_future": cfg.n_future,
            "n_eval": cfg.n_eval,
            "teacher_forcing": tf,
            "precision": precision,
            "channels_last": cfg.channels_last,
            "compile": cfg.compile,
            "threads": torch.get_num_threads(),
            "steps": opts.steps,
            "warmup": opts.warmup,
            "step_data": "random" if root is None else opts.step_data,
            "model": exp.model.model_dump(mode="json"),
        },
        "speedup_vs_reference": None,
        "project": project.summary(batch, cfg.iters_per_epoch, peak),
    }
    if opts.reference:
        report["reference"] = arms[1].summary(batch, cfg.iters_per_epoch, peak)
        report["speedup_vs_reference"] = report["reference"]["step_time_s"] / report["project"]["step_time_s"]
        report["flops_ratio"] = project.flops / arms[1].flops
    if opts.variants:
        report["variants"] = {}
        for arm in arms[len(arms) - len(opts.variants) :]:
            summary = arm.summary(batch, cfg.iters_per_epoch, peak)
            summary["step"] = "reference" if arm.step_fn is reference_step else "project"
            summary["project_over_this"] = summary["step_time_s"] / report["project"]["step_time_s"]
            report["variants"][arm.name] = summary
    if opts.eval_batches:
        report["project"].update(bench_eval(model, rt, batch, n_past, cfg.n_eval, opts.eval_batches))
    if loaders is not None:
        if loaders["cache"]:
            loaders["cache_vs_training"] = loaders["cache"]["seq_per_s"] / report["project"]["train_seq_per_s"]
        report["loader"] = loaders
    report["machine"] = info
    report["load_average"] = {"before": load_before, "after": load_average()}
    report["wall_time_s"] = time.perf_counter() - started
    return report


def summary_lines(report: dict[str, Any]) -> list[str]:
    """A few human lines for the terminal; the JSON holds everything."""
    p, s = report["project"], report["settings"]
    lines = [
        f"{report['preset'] or 'config'} on {report['device']} ({report['machine']['cpu']}, "
        f"{s['threads']} threads), batch {s['batch_size']}, {s['n_past']}+{s['n_future']} frames, "
        f"teacher forcing {'on' if s['teacher_forcing'] else 'off'}, load {report['load_average']['before'][0]}"
        f"->{report['load_average']['after'][0]}",
        f"project   {p['step_time_s']:.3f} s/step  {p['train_seq_per_s']:.2f} seq/s  {p['flops_per_step'] / 1e9:.1f} "
        f"GFLOP/step  {p['flop_per_s'] / 1e9:.1f} GFLOP/s  ({s['precision']}, channels_last {s['channels_last']}, "
        f"compile {s['compile']})",
    ]
    if "reference" in report:
        r = report["reference"]
        lines.append(
            f"reference {r['step_time_s']:.3f} s/step  {r['train_seq_per_s']:.2f} seq/s  "
            f"{r['flops_per_step'] / 1e9:.1f} GFLOP/step  {r['flop_per_s'] / 1e9:.1f} GFLOP/s  (fp32, per frame)"
        )
        lines.append(f"speed-up  {report['speedup_vs_reference']:.2f}x")
    for name, v in report.get("variants", {}).items():
        lines.append(f"variant   {v['step_time_s']:.3f} s/step  {v['train_seq_per_s']:.2f} seq/s  ({name}; project is "
                     f"{v['project_over_this']:.2f}x its speed)")  # fmt: skip
    if "eval_seq_per_s" in p:
        lines.append(f"predict   {p['eval_seq_per_s']:.2f} seq/s over {p['eval_frames']} frames")
    loader = report.get("loader")
    if loader and loader["cache"] and loader["png"]:
        lines.append(
            f"loader    cache {loader['cache']['seq_per_s']:.0f} seq/s, PNG {loader['png']['seq_per_s']:.0f} seq/s "
            f"({loader['cache_vs_png']:.0f}x; cache / training step {loader['cache_vs_training']:.0f}x)"
        )
    return lines


def as_json_safe(value: Any) -> Any:
    """Numbers as plain floats/ints (numpy scalars are not JSON)."""
    if isinstance(value, dict):
        return {k: as_json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [as_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
