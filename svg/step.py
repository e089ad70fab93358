"""The training step: batch layout, forward, loss, backward, optimizer update. One function, used by
the trainer and the bench, so what is benchmarked is what trains.

The step never waits for the host: its figures stay on the device (``StepFigures``, summed by
``Sums`` and ``Divergence``) until the caller reads them, and a non-finite loss skips the update on
the device (fused Adam's ``found_inf``), so no NaN ever reaches the weights and the count of skipped
steps stays exact.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from svg.config import Optim
from svg.errors import first_line
from svg.models import SVG
from svg.models.svg import StepResult
from svg.runtime import Runtime


def to_model_layout(frames: torch.Tensor, cond: torch.Tensor, rt: Runtime) -> tuple[torch.Tensor, torch.Tensor]:
    """Loader batches (B, T, H, W, 3) uint8 and (B, T, C) -> time-major float (T, B, 3, H, W), (T, B, C).

    One copy, made in uint8 before the conversion to float, into the layout the convolutions use:
    channels-last memory (a view of (T, B, H, W, 3)) or NCHW. Flattening time into the batch is then
    a view, never another copy. Floats are torch's default dtype (float32 unless a test asks for float64)."""
    dtype = torch.get_default_dtype()
    x = frames.to(rt.device, non_blocking=True).transpose(0, 1)
    x = x.contiguous().permute(0, 1, 4, 2, 3) if rt.channels_last else x.permute(0, 1, 4, 2, 3).contiguous()
    return x.to(dtype).div_(255.0), cond.to(rt.device, non_blocking=True).transpose(0, 1).to(dtype)


def make_optimizer(model: SVG, optim: Optim) -> torch.optim.Adam:
    """Adam, fused: one kernel per update, and it honours ``found_inf`` without a host sync."""
    return torch.optim.Adam(model.parameters(), lr=optim.lr, betas=(optim.beta1, optim.beta2), fused=True)


@dataclass
class Parts:
    """What a step updates: the model, optimizer and scaler. ``forward`` runs the sequence: the model
    itself (default), its DDP wrapper, or the bench's per-frame reference."""

    model: SVG
    optimizer: torch.optim.Adam
    rt: Runtime
    grad_clip: float | None = None
    forward: Callable[..., StepResult] | None = None
    scaler: torch.amp.GradScaler | None = None
    free_bits: float = 0.0

    def __post_init__(self) -> None:
        if self.forward is None:  # (a compiled module has no truth value)
            self.forward = self.model
        if self.scaler is None:
            fp16_cuda = self.rt.amp_dtype == torch.float16 and self.rt.device.type == "cuda"
            self.scaler = torch.amp.GradScaler(enabled=fp16_cuda)

    def norm_statistics(self) -> list[torch.Tensor]:
        """Every BatchNorm running statistic: the forward moves them, so a skipped step must put them back."""
        norms = [m for m in self.model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        return [b for m in norms for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]

    def snapshot_statistics(self) -> list[torch.Tensor]:
        """A copy of ``norm_statistics`` taken before the forward, for ``update`` to restore on a skip."""
        return [b.clone() for b in self.norm_statistics()]


@dataclass
class StepFigures:
    """One step's figures as detached device tensors; reading them (``.item()``) waits for the step."""

    loss: torch.Tensor
    """Per predicted step: mse + beta * kld."""
    mse: torch.Tensor
    kld: torch.Tensor
    kld_per_dim: torch.Tensor
    """(z_dim,) averaged over steps and batch."""
    finite: torch.Tensor
    """False when the loss was not finite and the update was skipped."""


@dataclass(frozen=True)
class StepInput:
    """What one training step takes: a loader batch, its reparameterization noise, and what the schedules
    set for this step. ``n_past`` and ``teacher_forcing`` choose the branch (a compiled step has one graph
    for each); ``beta`` is a number or a 0-d tensor on the device."""

    frames: torch.Tensor
    """(B, T, H, W, 3) uint8, as the loader gives them."""
    cond: torch.Tensor
    """(B, T, C) conditions."""
    eps: torch.Tensor
    """(T-1, B, z_dim) noise for the posterior's samples."""
    n_past: int
    teacher_forcing: bool
    beta: float | torch.Tensor


def sequence_loss(res: StepResult, beta: float | torch.Tensor, free_bits: float = 0.0) -> torch.Tensor:
    """The objective of one batch, summed over predicted steps: reconstruction + beta * KL, where each latent
    dimension's KL per step counts at least ``free_bits`` nats (no gradient pushes a dimension below that:
    using it is free)."""
    kl = res.kl_step_dim.clamp_min(free_bits).sum() if free_bits > 0 else res.kld
    return res.nll + beta * kl


def objective(parts: Parts, inp: StepInput) -> tuple[torch.Tensor, StepFigures]:
    """The loss to differentiate and the step's figures (detached, taken before the backward), from the batch
    put into the model's layout: the part of the step that ``CompiledStep`` compiles."""
    parts.model.train()
    x, c = to_model_layout(inp.frames, inp.cond, parts.rt)
    with parts.rt.autocast():
        res = parts.forward(x, c, inp.n_past, inp.teacher_forcing, inp.eps)
    total = sequence_loss(res, inp.beta, parts.free_bits)
    n = res.steps
    detached = total.detach().float()
    return total, StepFigures(
        detached / n, res.mse.detach() / n, res.kld.detach() / n, res.kld_per_dim, torch.isfinite(total)
    )


def update(parts: Parts, loss: torch.Tensor, fig: StepFigures, statistics: list[torch.Tensor]) -> None:
    """Backward, clipping and the optimizer update. A non-finite loss or gradient skips the update on the
    device, and ``fig.finite`` then says so. The gradients' norm decides, not the loss alone: under DDP
    it is taken after the all-reduce, so one rank's NaN, which reaches every rank's gradients, makes
    every rank skip, and their counts of skipped steps agree. A skipped step also puts the BatchNorm
    running statistics back to ``statistics`` (``Parts.snapshot_statistics`` before the forward): a NaN
    forward has already mixed into them, and eval-mode predictions would be NaN from then on. (An fp16
    loss scaler skips overflowing steps itself; those are not counted as divergence.)"""
    opt, scaler = parts.optimizer, parts.scaler
    scaler.scale(loss).backward()
    params = [p for p in parts.model.parameters() if p.grad is not None]
    norm = None
    if parts.grad_clip is not None:
        scaler.unscale_(opt)
        norm = torch.nn.utils.clip_grad_norm_(params, parts.grad_clip, foreach=True)
    if scaler.is_enabled():
        scaler.step(opt)
        scaler.update()
        _restore_unless(fig.finite, parts.norm_statistics(), statistics)
        return
    if norm is None:
        norm = torch.nn.utils.get_total_norm([p.grad for p in params], foreach=True)
    fig.finite = fig.finite & torch.isfinite(norm)
    opt.found_inf = (~fig.finite).float()
    opt.step()
    _restore_unless(fig.finite, parts.norm_statistics(), statistics)


def _restore_unless(finite: torch.Tensor, current: list[torch.Tensor], saved: list[torch.Tensor]) -> None:
    """Where the step was not finite, ``saved`` back into ``current``; decided on the device, no host sync."""
    with torch.no_grad():
        for now, before in zip(current, saved, strict=True):
            now.copy_(torch.where(finite, now, before))


def train_step(parts: Parts, inp: StepInput) -> StepFigures:
    """One optimizer step, op by op: the eager step."""
    parts.optimizer.zero_grad(set_to_none=True)
    statistics = parts.snapshot_statistics()
    total, fig = objective(parts, inp)
    update(parts, total, fig, statistics)
    return fig


COMPILE_MODES = ("off", "default", "reduce-overhead")
"""What ``train.compile`` runs: eager, torch.compile (inductor), or torch.compile with CUDA graphs."""


def resolve_compile(mode: str, rt: Runtime) -> str:
    """``train.compile=auto`` where it was measured faster: inductor kernels on a CPU and under DDP, CUDA
    graphs on one GPU (launch-bound: 0.017 s against 0.069 s eager on an H100). Any other mode is what it
    says."""
    if mode != "auto":
        return mode
    return "reduce-overhead" if rt.device.type == "cuda" and rt.world_size == 1 else "default"


def compiles_free_running(mode: str, rt: Runtime) -> bool:
    """Whether ``train.compile`` compiles the free-running branch too. ``auto`` on one CPU process does not:
    that graph unrolls the encoder and decoder over every predicted step, and compiling it from an empty
    cache takes longer than it saves in a run whose free-running steps are a fifth of its steps (the
    measurements are in docs/performance.md). A mode named explicitly compiles both branches."""
    return not (mode == "auto" and rt.device.type == "cpu" and rt.world_size == 1)


Step = Callable[[StepInput], StepFigures]
"""A training step: ``train_step`` bound to its parts, or a ``CompiledStep``."""


@functools.cache
def _warn_once(message: str) -> None:
    warnings.warn(message, stacklevel=3)


class CompiledStep:
    """The same step with its layout conversion, forward and figures under torch.compile.

    What is compiled is one graph per teacher forcing branch (``teacher_forcing`` and ``n_past`` are
    Python values decided outside the step), and AOTAutograd derives its backward graph. With
    ``reduce-overhead`` on CUDA both replay as CUDA graphs, so the ~3,100 kernel launches of the eager
    step become two graph launches plus the update's few kernels: ``update`` runs as in the eager step
    (foreach clipping, fused Adam reading ``found_inf`` on the device), outside the graphs, since dynamo
    neither traces fused Adam nor carries ``found_inf`` into it (a non-finite step would then update).
    The graphs read static device buffers that each step fills with asynchronous copies of the
    (pinned) batch and noise, and beta as a 0-d tensor filled in place, so neither a new batch nor a new
    beta means a new graph. Nothing in the step waits for the host.

    Where CUDA graphs cannot run (a CPU, several processes) ``reduce-overhead`` runs as ``default``,
    with a warning said once. Where torch.compile itself fails (no C++ compiler, an inductor error), the
    step falls back to eager with a warning and the run goes on; ``mode`` says what ran. With
    ``free_running=False`` only the teacher-forced branch is compiled (``compiles_free_running``)."""

    def __init__(self, parts: Parts, mode: str, free_running: bool = True):
        if mode not in COMPILE_MODES[1:]:
            raise ValueError(f"train.compile: {mode!r} is not a compiled mode ({', '.join(COMPILE_MODES[1:])})")
        rt = parts.rt
        if mode == "reduce-overhead" and (rt.device.type != "cuda" or rt.world_size > 1):
            where = "a CPU" if rt.device.type != "cuda" else "several processes (DDP)"
            _warn_once(f"train.compile=reduce-overhead runs as default on {where}: no CUDA graphs")
            mode = "default"
        self.mode, self.graphs = mode, mode == "reduce-overhead"
        self.eager_free_running = not free_running
        self._buffers: dict[str, torch.Tensor] = {}
        self._eager_parts, self._compiled_branches = parts, set()
        if rt.world_size > 1:
            # torch.compile is handed the DDP module, its documented use (the graph is split at DDP's buckets,
            # so that communication overlaps the backward); a compiled function calling DDP would break its
            # graph at DDP's bookkeeping. Layout and loss then run eagerly around it.
            self.parts = dataclasses.replace(parts, forward=torch.compile(parts.forward, dynamic=False))
            self._objective = self._body
        else:
            self.parts = parts
            self._objective = torch.compile(self._body, mode=None if mode == "default" else mode, dynamic=False)
        self._beta = self._buffer("beta", (), torch.float32)

    def _body(self, inp: StepInput) -> tuple[torch.Tensor, StepFigures]:
        return objective(self.parts, inp)

    def _buffer(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """This step's device buffer ``name`` of that shape and dtype, at an address the graphs keep."""
        buf = self._buffers.get(name)
        if buf is None or buf.shape != shape or buf.dtype != dtype:
            buf = torch.zeros(shape, dtype=dtype, device=self.parts.rt.device)
            torch._dynamo.mark_static_address(buf)
            self._buffers[name] = buf
        return buf

    def __call__(self, inp: StepInput) -> StepFigures:
        self.parts.optimizer.zero_grad(set_to_none=True)  # before the graphs: no gradient of theirs is held
        if self.graphs:
            torch.compiler.cudagraph_mark_step_begin()  # the last step's outputs were read: reuse them
            frames, cond, eps = (
                self._buffer(name, v.shape, v.dtype).copy_(v, non_blocking=True)  # pinned batches: asynchronous
                for name, v in (("frames", inp.frames), ("cond", inp.cond), ("eps", inp.eps))
            )
            inp = dataclasses.replace(inp, frames=frames, cond=cond, eps=eps)
        inp = dataclasses.replace(inp, beta=self._beta.fill_(float(inp.beta)))  # a kernel argument, not a constant
        statistics = self.parts.snapshot_statistics()
        branch = (inp.n_past, bool(inp.teacher_forcing))
        if self.eager_free_running and not inp.teacher_forcing:
            total, fig = self._body(inp)
        elif branch in self._compiled_branches or self.mode == "off":
            total, fig = self._objective(inp)
        else:  # this branch's first call compiles it; nothing has run when compiling fails
            try:
                total, fig = self._objective(inp)
            except Exception as e:  # noqa: BLE001 - any compiler failure: the eager step computes the same
                self._fall_back(e)
                total, fig = self._objective(inp)
            self._compiled_branches.add(branch)
        update(self.parts, total, fig, statistics)
        return fig

    def _fall_back(self, error: Exception) -> None:
        reason = first_line(error)[:200]
        _warn_once(f"train.compile={self.mode} failed ({type(error).__name__}: {reason}); the step runs eagerly")
        self.parts, self.mode, self.graphs = self._eager_parts, "off", False
        self._objective = self._body


@dataclass(frozen=True)
class CompileCounts:
    """What torch.compile did in this process so far (dynamo's counters): graphs compiled, graph breaks,
    and graphs that inductor did not capture as CUDA graphs (each of those replays kernel by kernel)."""

    graphs: int
    graph_breaks: int
    cudagraph_skips: int


def compile_counts() -> CompileCounts:
    from torch._dynamo.utils import counters

    return CompileCounts(
        graphs=counters["stats"]["unique_graphs"],
        graph_breaks=sum(counters["graph_break"].values()),
        cudagraph_skips=counters["inductor"]["cudagraph_skips"],
    )


def make_step(parts: Parts, compile_mode: str = "off") -> Step:
    """The trainer's and the bench's step for ``train.compile``: eager, or compiled (``CompiledStep``)."""
    mode = resolve_compile(compile_mode, parts.rt)
    if mode == "off":
        return functools.partial(train_step, parts)
    return CompiledStep(parts, mode, free_running=compiles_free_running(compile_mode, parts.rt))


class Sums:
    """Running sums of the finite steps' figures, kept on the device: adding never waits for the step."""

    def __init__(self, z_dim: int, device: torch.device):
        self.total = torch.zeros(4 + z_dim, device=device, dtype=torch.float64)
        """loss, mse, kld, teacher forced, KL per latent dimension."""
        self.count = torch.zeros((), device=device, dtype=torch.float64)

    def add(self, fig: StepFigures, teacher_forced: bool) -> None:
        tf = torch.full((1,), float(teacher_forced), device=fig.loss.device)
        values = torch.cat([torch.stack([fig.loss, fig.mse, fig.kld]).float(), tf, fig.kld_per_dim.float()])
        self.total += torch.where(fig.finite, values.double(), 0.0)
        self.count += fig.finite

    def read(self) -> dict | None:
        """Means over the finite steps (one host sync), then start again; None when there were none."""
        total, count = self.total.tolist(), self.count.item()
        self.total.zero_()
        self.count.zero_()
        if not count:
            return None
        loss, mse, kld, tf, *per_dim = (v / count for v in total)
        return {"loss": loss, "mse": mse, "kld": kld, "teacher_forced": tf, "kl_per_dim": per_dim}

    def state(self) -> dict:
        return {"total": self.total.cpu(), "count": self.count.cpu()}

    def load(self, state: dict) -> None:
        self.total.copy_(state["total"])
        self.count.copy_(state["count"])


class Divergence:
    """Non-finite losses counted on the device: how many in all, the current and the longest run in a row."""

    def __init__(self, device: torch.device):
        self.counts = torch.zeros(3, device=device, dtype=torch.long)  # skipped, in a row, longest in a row

    def add(self, finite: torch.Tensor) -> None:
        bad = (~finite).long()
        skipped, row, longest = self.counts.unbind()
        row = (row + 1) * bad
        self.counts = torch.stack([skipped + bad, row, torch.maximum(longest, row)])

    def read(self) -> tuple[int, int]:
        """(skipped steps so far, longest run in a row since the last read); one host sync."""
        skipped, _, longest = self.counts.tolist()
        self.counts[2] = 0
        return skipped, longest
