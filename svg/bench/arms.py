"""The timed arms: one model copy each, stepped by ``svg.step.train_step`` (the trainer's step), with
the config's optimizer (``make_optimizer``, ``optim.lr``, ``optim.grad_clip``). Also: the arms' order
(alternation), their FLOP count, the ``--variant`` grammar, and the prediction and validation timings.

The project arm runs the model's own sequence (time-batched) under the runtime the trainer picks; the
reference arm differs only in ``forward``: the seed's per-frame ``reference_step``, fp32, contiguous,
eager; a variant arm changes one runtime setting of the project's.
"""

from __future__ import annotations

import copy
import functools
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch.utils.flop_counter import FlopCounterMode

from svg.bench.machine import mfu
from svg.config import Experiment, Optim
from svg.data import FRAME_SHAPE
from svg.errors import SvgError
from svg.evaluation import evaluate
from svg.models import SVG
from svg.models.reference import reference_step
from svg.runtime import AMP_DTYPES, Runtime
from svg.step import CompiledStep, Parts, Step, StepInput, make_optimizer, make_step

SEED_EPOCH_SEQUENCES = 600 * 12
"""One epoch of the seed's setup: 600 iterations of batch 12."""

StepKind = Literal["project", "reference"]

BRANCH_NAMES = {True: "teacher_forced", False: "free_running"}
"""The two graphs a run steps through: the decoder batched over time, or fed its own predictions."""

VARIANT_KEYS = {
    "step": ("project", "reference"),
    "precision": ("auto", *AMP_DTYPES),
    "channels_last": ("true", "false"),
    "compile": ("off", "auto", "default", "reduce-overhead"),
}
"""What ``--variant`` may set, and to what."""


def parse_variant(spec: str) -> dict[str, Any]:
    """``precision=bf16,channels_last=false`` -> {"precision": "bf16", "channels_last": False}."""
    out: dict[str, Any] = {}
    for item in spec.split(","):
        key, _, value = item.partition("=")
        key, value = key.strip(), value.strip().lower()
        if key not in VARIANT_KEYS or value not in VARIANT_KEYS[key]:
            choices = "; ".join(f"{k}={'|'.join(v)}" for k, v in VARIANT_KEYS.items())
            raise SvgError(f"--variant: {item!r} is not one of {choices}")
        out[key] = value == "true" if key == "channels_last" else value
    return out


@dataclass
class Arm:
    """One side of the comparison: what a step updates (``Parts``), and the times it took."""

    name: str
    kind: StepKind
    parts: Parts
    compile: str
    """``train.compile`` asked for; ``compile_ran`` says what ran (reduce-overhead is default on a CPU)."""
    times: dict[bool, list[float]] = field(default_factory=dict)
    """Timed steps per teacher forcing branch (True: teacher forced, False: free running)."""
    warmup_times: dict[bool, list[float]] = field(default_factory=dict)
    flops: dict[bool, int] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)
    """The larger of the branches' last warm-up steps (``peak_memory``)."""
    first_step_peak_memory_bytes: int = 0
    """The peak of the arm's first step of either branch: compiling, and on CUDA capturing the graphs."""
    runner: Step | None = None
    compile_ran: str = "off"

    @property
    def model(self) -> SVG:
        return self.parts.model

    def step(self, inp: StepInput) -> float:
        """One training step as the trainer runs it, from loader batches; returns the loss, whose reading
        waits for the whole step (the optimizer's kernels were queued before it)."""
        self.runner = self.runner or make_step(self.parts, "off")
        return self.runner(inp).loss.item()

    def compile_step(self) -> None:
        """From now on step as ``train.compile`` does: ``svg.step.make_step`` with this arm's mode."""
        self.runner = make_step(self.parts, self.compile)
        self.compile_ran = self.runner.mode if isinstance(self.runner, CompiledStep) else "off"

    def summary(
        self, batch: int, iters_per_epoch: int, peak: dict[str, Any] | None, gpu: str | None = None, share: float = 1.0
    ) -> dict[str, Any]:
        """The arm's figures. ``share``: the run's teacher-forced share of steps (``teacher_forced_share``);
        with both branches timed, step time and FLOPs are the run's mix of the two, each branch's own under
        ``branches``."""
        medians = {tf: statistics.median(times) for tf, times in self.times.items()}
        weights = {True: share, False: 1.0 - share} if len(medians) == 2 else {tf: 1.0 for tf in medians}
        median = sum(weights[tf] * medians[tf] for tf in medians)
        flops = round(sum(weights[tf] * self.flops[tf] for tf in medians))
        precision = self.parts.rt.precision
        out: dict[str, Any] = {
            "step_time_s": median,
            "teacher_forced_share": share if len(medians) == 2 else float(next(iter(medians))),
            "branches": {
                BRANCH_NAMES[tf]: {
                    "step_time_s": medians[tf],
                    "step_time_mean_s": statistics.fmean(self.times[tf]),
                    "step_time_min_s": min(self.times[tf]),
                    "step_times_s": [round(t, 4) for t in self.times[tf]],
                    "warmup_times_s": [round(t, 4) for t in self.warmup_times.get(tf, [])],
                    "flops_per_step": self.flops[tf],
                    "flop_per_s": self.flops[tf] / medians[tf],
                }
                for tf in medians
            },
            "steps_per_s": 1 / median,
            "train_seq_per_s": batch / median,
            "flops_per_step": flops,
            "flop_per_s": flops / median,
            "epoch_time_s": iters_per_epoch * median,
            "seed_epoch_time_s": SEED_EPOCH_SEQUENCES * median / batch,
            "precision": precision,
            "channels_last": self.parts.rt.channels_last,
            "compile": self.compile,
            "compile_ran": self.runner.mode if isinstance(self.runner, CompiledStep) else self.compile_ran,
            **self.memory,
            "first_step_peak_memory_bytes": self.first_step_peak_memory_bytes,
            **mfu(flops / median, self.parts.rt.device.type, gpu, precision),
        }
        key = "bf16_flop_per_s" if precision == "bf16" and peak and "bf16_flop_per_s" in peak else "fp32_flop_per_s"
        if peak and key in peak:
            out["fraction_of_peak"] = out["flop_per_s"] / peak[key]
        return out


@dataclass(frozen=True)
class ArmSetting:
    """What an arm runs: the model's sequence or the seed's per-frame one, and the runtime settings."""

    step: StepKind = "project"
    precision: str = "fp32"
    channels_last: bool = False
    compile: str = "off"


REFERENCE = ArmSetting("reference", "fp32", channels_last=False, compile="off")
"""The seed's step as the seed ran it: per frame, fp32, contiguous, eager. On CUDA its fp32 matmuls and
convolutions run in TF32, as every fp32 step there does (``settings.tf32`` in the report)."""


def make_arm(name: str, initial: SVG, setting: ArmSetting, rt: Runtime, optim: Optim, free_bits: float = 0.0) -> Arm:
    """An arm on its own copy of ``initial``, with the optimizer, clipping and free bits the trainer would use."""
    model = copy.deepcopy(initial).in_layout(setting.channels_last)
    arm_rt = Runtime(rt.device, AMP_DTYPES[setting.precision], setting.channels_last, rt.rank, rt.world_size)
    forward = functools.partial(reference_step, model) if setting.step == "reference" else None
    parts = Parts(model, make_optimizer(model, optim), arm_rt, optim.grad_clip, forward=forward, free_bits=free_bits)
    return Arm(name, setting.step, parts, setting.compile)


def alternate(arms: Sequence[Any], rounds: int, run: Callable[[int, Any], None]) -> None:
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


def bench_eval(model: SVG, rt: Runtime, batch: int, n_past: int, n_eval: int, batches: int) -> dict[str, Any]:
    """Sequences per second of ``model.predict`` (eval mode, z from the prior) over n_eval frames."""
    gen = torch.Generator(device=rt.device).manual_seed(0)
    height, width, channels = FRAME_SHAPE
    x = torch.rand(n_past, batch, channels, height, width, device=rt.device)
    c = torch.randn(n_eval, batch, model.cond_dim, device=rt.device)
    model.eval()

    def predict() -> None:
        with torch.no_grad(), rt.autocast():
            out = model.predict(x, c, n_past, generator=gen)
        out.sum().item()

    predict()  # warm-up: kernels, compilation for the new shapes
    t0 = time.perf_counter()
    for _ in range(batches):
        predict()
    elapsed = time.perf_counter() - t0
    model.train()
    return {"eval_seq_per_s": batch * batches / elapsed, "eval_batch_time_s": elapsed / batches, "eval_frames": n_eval}


def bench_validation(model: SVG, rt: Runtime, exp: Experiment) -> dict[str, Any]:
    """Seconds of one validation as the trainer runs it: ``train.val_sequences`` random sequences of
    ``train.n_eval`` frames in batches of ``train.val_batch_size``, ``train.val_samples`` samples each,
    scored (PSNR, SSIM, copy-last) with the latent passes, after one untimed batch."""
    cfg = exp.train
    n, size = cfg.val_sequences, exp.val_batch_size
    gen = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (n, cfg.n_eval, *FRAME_SHAPE), dtype=torch.uint8, generator=gen)
    cond = torch.randn(n, cfg.n_eval, model.cond_dim, generator=gen)
    batches = [(frames[i : i + size], cond[i : i + size]) for i in range(0, n, size)]

    def validate(batches: list) -> float:
        t0 = time.perf_counter()
        evaluate(model, batches, cfg.n_past, cfg.val_samples, rt, cfg.seed, media_sequences=0)  # ends on the host
        return time.perf_counter() - t0

    validate(batches[:1])
    return {"sequences": n, "batch_size": size, "samples": cfg.val_samples, "time_s": validate(batches)}
