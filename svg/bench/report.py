"""The whole benchmark: its options, ``run`` (build the arms, count, warm, time, measure prediction and
loading, assemble the report that ``entrypoints/bench.py`` writes as JSON) and the terminal summary.

All arms take the same batches and the same noise and alternate step by step in one process (A B,
B A, A B, ...), so machine drift, which is large on a shared CPU, lands on all of them: the ratio of
their step times is the number to trust, more than any time alone.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from svg.bench.arms import (
    BRANCH_NAMES,
    REFERENCE,
    Arm,
    ArmSetting,
    alternate,
    bench_eval,
    bench_validation,
    count_flops,
    make_arm,
    parse_variant,
)
from svg.bench.loaders import bench_loaders, dataset_root, step_batches
from svg.bench.machine import load_average, machine, peak_memory
from svg.config import Experiment, Train
from svg.errors import SvgError
from svg.models import SVG
from svg.runtime import Runtime, setup_runtime
from svg.schedules import teacher_forced_share
from svg.step import StepInput, compile_counts


@dataclass
class BenchOptions:
    steps: int = 5
    """Timed steps per arm."""
    warmup: int = 1
    """Untimed steps per arm after the FLOP-counting step (compilation, allocator, oneDNN caches); the
    last one is the step whose peak memory is reported."""
    branches: tuple[bool, ...] = (True, False)
    """The teacher forcing branches to time: the teacher-forced step (the decoder runs batched over time)
    and the free-running one (fed its own predictions, sequential decoder); a run steps through both, in
    the share its schedule sets (``teacher_forced_share``), and the arms' step times are that mix."""
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
    captured: bool = False
    """Also time the captured step: ``train.compile=reduce-overhead`` (CUDA graphs; on a CPU it runs as
    compile default, and the report says so in ``compile_ran``)."""
    validation: bool = False
    """Also time one validation as the trainer runs it, and project an epoch and the whole run from it
    and the step times."""
    variants: tuple[str, ...] = ()
    """Extra arms timed in the same alternation, e.g. ``precision=bf16,channels_last=false`` or
    ``step=reference,channels_last=true``: A/B tests of the runtime settings under the same drift."""

    def check(self) -> None:
        """Raise SvgError naming the first option out of range or the first bad variant."""
        for name, value, minimum in (
            ("--steps", self.steps, 1),
            ("--warmup", self.warmup, 1),
            ("--eval-batches", self.eval_batches, 0),
            ("--loader-batches", self.loader_batches, 0),
            ("--loader-workers", self.loader_workers, 0),
        ):
            if value < minimum:
                raise SvgError(f"{name}: must be >= {minimum}, got {value}")
        for spec in self.variants:
            parse_variant(spec)


def _arms(exp: Experiment, opts: BenchOptions, rt: Runtime) -> list[Arm]:
    """The project arm, the reference arm and the captured arm (if asked for), then one per variant, all
    from the same weights."""
    torch.manual_seed(exp.train.seed)
    initial = SVG.for_experiment(exp).to(rt.device)  # fp32, contiguous: every arm starts from a copy of these weights
    project = ArmSetting("project", rt.precision, rt.channels_last, exp.train.compile)
    settings = [("project", project)]
    if opts.reference:
        settings.append(("reference", REFERENCE))
    if opts.captured:
        # channels_last crashed inductor on CUDA (see svg.runtime.resolve_channels_last)
        cl = project.channels_last and rt.device.type != "cuda"
        settings.append(("captured", dataclasses.replace(project, compile="reduce-overhead", channels_last=cl)))
    for spec in opts.variants:
        variant = parse_variant(spec)
        if variant.get("precision") == "auto":
            variant["precision"] = rt.precision
        settings.append((spec, dataclasses.replace(project, **variant)))
    return [make_arm(name, initial, setting, rt, exp.optim, exp.kl.free_bits) for name, setting in settings]


def run(
    exp: Experiment, opts: BenchOptions, preset: str = "", on_partial: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """Measure and return the report (what ``entrypoints/bench.py`` writes as JSON). ``on_partial`` gets the
    report so far (``"partial": true``) once the steps are timed, before prediction, validation and loaders:
    a run stopped after that point still leaves the step times."""
    opts.check()
    started, load_before = time.perf_counter(), load_average()
    rt = setup_runtime(exp.train)
    cfg = exp.train
    batch, seq_len, n_past = exp.data.batch_size, cfg.n_past + cfg.n_future, cfg.n_past
    info = machine(rt)
    peak, gpu = info.get("peak"), info.get("gpu")
    arms = _arms(exp, opts, rt)
    project = arms[0]

    needed = opts.loader_batches > 0 or opts.step_data == "synthetic"
    with dataset_root(opts.data_root, batch, needed) as root:
        loaders = None
        if opts.loader_batches and root is not None:
            loaders = bench_loaders(
                root, seq_len, batch, opts.loader_batches, opts.loader_workers, keep_root=opts.data_root is not None
            )
        data = step_batches(
            None if opts.step_data == "random" else root, batch, seq_len, count=4, conditions=exp.data.conditions
        )
    if rt.device.type == "cuda":  # as the trainer's prefetcher hands them over: copies to the GPU do not block
        data = [(frames.pin_memory(), cond.pin_memory()) for frames, cond in data]
    gen = torch.Generator().manual_seed(cfg.seed)
    noise = [torch.randn(seq_len - 1, batch, exp.model.z_dim, generator=gen).to(rt.device) for _ in data]
    beta = exp.kl.beta_max
    share = teacher_forced_share(cfg, exp.tfr)

    def step(i: int, arm: Arm, tf: bool) -> float:
        frames, cond = data[i % len(data)]
        return arm.step(StepInput(frames, cond, noise[i % len(noise)], n_past, tf, beta))

    counted: dict[tuple[str, bool], int] = {}
    for arm in arms:  # eager, before any compilation: FLOPs depend neither on kernels nor on layout
        for tf in opts.branches:
            if (arm.kind, tf) not in counted:
                counted[arm.kind, tf] = count_flops(lambda arm=arm, tf=tf: step(0, arm, tf))
            else:
                step(0, arm, tf)
            arm.flops[tf] = counted[arm.kind, tf]
    for arm in arms:
        if arm.compile != "off":
            arm.compile_step()

    def warm(i: int, arm: Arm) -> None:
        for tf in opts.branches:
            t0 = time.perf_counter()
            if i in (0, opts.warmup - 1):
                memory = peak_memory(rt.device, lambda tf=tf: step(i, arm, tf))
                if i == 0:  # compiling, and on CUDA capturing: the high-water mark a run must have room for
                    first = max(arm.first_step_peak_memory_bytes, memory["peak_memory_bytes"])
                    arm.first_step_peak_memory_bytes = first
                if i == opts.warmup - 1 and memory["step_memory_bytes"] >= arm.memory.get("step_memory_bytes", -1):
                    arm.memory = memory
            else:
                step(i, arm, tf)
            arm.warmup_times.setdefault(tf, []).append(time.perf_counter() - t0)

    alternate(arms, opts.warmup, warm)

    def timed(i: int, arm: Arm) -> None:
        for tf in opts.branches if i % 2 == 0 else opts.branches[::-1]:
            t0 = time.perf_counter()
            step(i, arm, tf)
            arm.times.setdefault(tf, []).append(time.perf_counter() - t0)

    alternate(arms, opts.steps, timed)

    report: dict[str, Any] = {
        "preset": preset,
        "device": str(rt.device),
        "settings": {
            "batch_size": batch,
            "n_past": n_past,
            "n_future": cfg.n_future,
            "n_eval": cfg.n_eval,
            "epochs": cfg.epochs,
            "iters_per_epoch": cfg.iters_per_epoch,
            "branches": [BRANCH_NAMES[tf] for tf in opts.branches],
            "teacher_forced_share": share,
            "precision": rt.precision,
            "tf32": rt.device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32,
            "channels_last": rt.channels_last,
            "compile": cfg.compile,
            "threads": torch.get_num_threads(),
            "steps": opts.steps,
            "warmup": opts.warmup,
            "step_data": "random" if root is None else opts.step_data,
            "model": exp.model.model_dump(mode="json"),
        },
        "speedup_vs_reference": None,
        "project": project.summary(batch, cfg.iters_per_epoch, peak, gpu, share),
    }
    if opts.reference:
        reference = arms[1]
        report["reference"] = reference.summary(batch, cfg.iters_per_epoch, peak, gpu, share)
        report["speedup_vs_reference"] = report["reference"]["step_time_s"] / report["project"]["step_time_s"]
        report["flops_ratio"] = report["project"]["flops_per_step"] / report["reference"]["flops_per_step"]
    if opts.captured:
        captured = next(arm for arm in arms if arm.name == "captured")
        report["captured"] = captured.summary(batch, cfg.iters_per_epoch, peak, gpu, share)
        report["captured"]["project_over_this"] = report["captured"]["step_time_s"] / report["project"]["step_time_s"]
        if opts.reference:
            report["speedup_captured_vs_reference"] = (
                report["reference"]["step_time_s"] / report["captured"]["step_time_s"]
            )
    if opts.variants:
        report["variants"] = {}
        for arm in arms[len(arms) - len(opts.variants) :]:
            summary = arm.summary(batch, cfg.iters_per_epoch, peak, gpu, share)
            summary["step"] = arm.kind
            summary["project_over_this"] = summary["step_time_s"] / report["project"]["step_time_s"]
            report["variants"][arm.name] = summary
    if any(arm.compile != "off" for arm in arms):
        report["compile_counts"] = dataclasses.asdict(compile_counts())
    if on_partial is not None:
        on_partial({**report, "partial": True})
    if opts.eval_batches:
        report["project"].update(bench_eval(project.model, rt, batch, n_past, cfg.n_eval, opts.eval_batches))
    if opts.validation:
        validation = bench_validation(project.model, rt, exp)
        steps = {name: report[name]["step_time_s"] for name in ("project", "captured") if name in report}
        validation["in_steps"] = {name: validation["time_s"] / step_time for name, step_time in steps.items()}
        report["validation"] = validation
        report["projection"] = {name: projection(cfg, t, validation["time_s"]) for name, t in steps.items()}
    if loaders is not None:
        if loaders["cache"]:
            loaders["cache_vs_training"] = loaders["cache"]["seq_per_s"] / report["project"]["train_seq_per_s"]
        report["loader"] = loaders
    report["machine"] = info
    report["load_average"] = {"before": load_before, "after": load_average()}
    report["wall_time_s"] = time.perf_counter() - started
    return report


def projection(cfg: Train, step_time: float, validation_time: float) -> dict[str, float]:
    """A run of ``train.epochs`` x ``train.iters_per_epoch`` steps at ``step_time``, validating every
    ``train.val_every`` epochs. Left out: compilation, media (every ``train.media_every`` validations) and
    the checkpoints' copies to the host (written in the background). ``training_share`` is the share of the
    time spent stepping: the rate a run sustains over the bench's step rate."""
    epoch = cfg.iters_per_epoch * step_time + validation_time / cfg.val_every
    return {
        "epoch_s": epoch,
        "run_h": cfg.epochs * epoch / 3600,
        "training_share": cfg.iters_per_epoch * step_time / epoch,
    }


def _hours(hours: float) -> str:
    return f"{hours:.2f} h" if hours >= 1 else f"{hours * 60:.1f} min"


def _branches(settings: dict[str, Any]) -> str:
    """Which steps were timed and how they are mixed."""
    if len(settings["branches"]) == 1:
        return settings["branches"][0].replace("_", " ") + " steps only"
    share = settings["teacher_forced_share"]
    return f"teacher-forced and free-running steps mixed {share:.0%} : {1 - share:.0%} as the run's schedule"


def _per_branch(arm: dict[str, Any]) -> str:
    """'  (teacher forced 0.120, free running 0.180 s)' when both branches were timed."""
    b = arm["branches"]
    if len(b) < 2:
        return ""
    return "  (" + ", ".join(f"{name.replace('_', ' ')} {v['step_time_s']:.3f}" for name, v in b.items()) + " s)"


def _arm_line(label: str, arm: dict[str, Any], note: str) -> str:
    return (
        f"{label:<9} {arm['step_time_s']:.3f} s/step  {arm['train_seq_per_s']:.2f} seq/s  "
        f"{arm['flops_per_step'] / 1e9:.1f} GFLOP/step  {arm['flop_per_s'] / 1e9:.1f} GFLOP/s  ({note})"
        + _per_branch(arm)
    )


def summary_lines(report: dict[str, Any]) -> list[str]:
    """A few human lines for the terminal; the JSON holds everything."""
    p, s = report["project"], report["settings"]
    lines = [
        f"{report['preset'] or 'config'} on {report['device']} ({report['machine']['cpu']}, "
        f"{s['threads']} threads), batch {s['batch_size']}, {s['n_past']}+{s['n_future']} frames, "
        f"{_branches(s)}, load {report['load_average']['before'][0]}"
        f"->{report['load_average']['after'][0]}",
        _arm_line("project", p, f"{s['precision']}, channels_last {s['channels_last']}, compile {s['compile']}"),
    ]
    if "reference" in report:
        lines.append(_arm_line("reference", report["reference"], "fp32, per frame"))
        lines.append(f"speed-up  {report['speedup_vs_reference']:.2f}x")
    if "captured" in report:
        c = report["captured"]
        note = f"compile {c['compile_ran']}; project is {c['project_over_this']:.2f}x its speed"
        lines.append(_arm_line("captured", c, note))
    if p.get("mfu") is not None:
        lines.append(f"MFU       {p['mfu']:.1%} of the {p['mfu_basis']}")
    for name, v in report.get("variants", {}).items():
        lines.append(_arm_line("variant", v, f"{name}; project is {v['project_over_this']:.2f}x its speed"))
    if "eval_seq_per_s" in p:
        lines.append(f"predict   {p['eval_seq_per_s']:.2f} seq/s over {p['eval_frames']} frames")
    if "validation" in report:
        v = report["validation"]
        in_steps = ", ".join(f"{k:.0f} {name} steps" for name, k in v["in_steps"].items())
        lines.append(
            f"validate  {v['time_s']:.2f} s for {v['sequences']} sequences x {v['samples']} samples, "
            f"batches of {v['batch_size']} (= {in_steps})"
        )
        for name, run in report["projection"].items():
            lines.append(
                f"run       {s['epochs']} x {s['iters_per_epoch']} steps, {name} step: {_hours(run['run_h'])} "
                f"({run['epoch_s']:.1f} s per epoch, {run['training_share']:.0%} of it stepping)"
            )
    loader = report.get("loader")
    if loader and loader["cache"] and loader["png"]:
        lines.append(
            f"loader    cache {loader['cache']['seq_per_s']:.0f} seq/s, PNG {loader['png']['seq_per_s']:.0f} seq/s "
            f"({loader['cache_vs_png']:.0f}x; cache / training step {loader['cache_vs_training']:.0f}x)"
        )
    return lines
