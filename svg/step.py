"""The training step: batch layout, forward, loss, backward, optimizer update. One function, used by
the trainer, the bench and the evaluator's KL pass, so what is benchmarked is what trains.

The step never waits for the host: its figures stay on the device (``StepFigures``, summed by
``Sums`` and ``Divergence``) until the caller reads them, and a non-finite loss skips the update on
the device (fused Adam's ``found_inf``), so no NaN ever reaches the weights and the count of skipped
steps stays exact.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from svg.config import Optim
from svg.models import SVG
from svg.models.svg import StepResult
from svg.runtime import Runtime


def to_model_layout(frames: torch.Tensor, cond: torch.Tensor, rt: Runtime) -> tuple[torch.Tensor, torch.Tensor]:
    """Loader batches (B, T, H, W, 3) uint8 and (B, T, C) -> time-major float (T, B, 3, H, W), (T, B, C).

    One copy, made in uint8 before the conversion to float, into the layout the convolutions use:
    channels-last memory (a view of (T, B, H, W, 3)) or NCHW. Flattening time into the batch is then
    a view, never another copy."""
    x = frames.to(rt.device, non_blocking=True).transpose(0, 1)
    x = x.contiguous().permute(0, 1, 4, 2, 3) if rt.channels_last else x.permute(0, 1, 4, 2, 3).contiguous()
    return x.float().div_(255.0), cond.to(rt.device, non_blocking=True).transpose(0, 1).float()


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
        self.forward = self.forward or self.model
        fp16_cuda = self.rt.amp_dtype == torch.float16 and self.rt.device.type == "cuda"
        self.scaler = self.scaler or torch.amp.GradScaler(enabled=fp16_cuda)


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


def forward(
    module: Callable[..., StepResult],
    x: torch.Tensor,
    c: torch.Tensor,
    n_past: int,
    teacher_forcing: bool,
    eps: torch.Tensor,
    beta: float,
    rt: Runtime,
    free_bits: float = 0.0,
) -> tuple[torch.Tensor, StepResult]:
    """The objective of one batch, summed over predicted steps, and the step's terms: mse + beta * KL,
    where each latent dimension's KL per step counts at least ``free_bits`` nats (no gradient pushes a
    dimension below that: using it is free)."""
    with rt.autocast():
        res = module(x, c, n_past, teacher_forcing, eps)
    kl = res.kl_step_dim.clamp_min(free_bits).sum() if free_bits > 0 else res.kld
    return res.nll + beta * kl, res


def train_step(
    parts: Parts,
    x: torch.Tensor,
    c: torch.Tensor,
    n_past: int,
    teacher_forcing: bool,
    eps: torch.Tensor,
    beta: float,
) -> StepFigures:
    """One optimizer step on a batch already in the model's layout (``to_model_layout``)."""
    parts.model.train()
    loss, res = forward(parts.forward, x, c, n_past, teacher_forcing, eps, beta, parts.rt, parts.free_bits)
    finite = torch.isfinite(loss)
    opt, scaler = parts.optimizer, parts.scaler
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if parts.grad_clip is not None:
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(parts.model.parameters(), parts.grad_clip, foreach=True)
    if scaler.is_enabled():
        scaler.step(opt)  # the scaler finds the infinities itself, on the device
        scaler.update()
    else:
        opt.found_inf = (~finite).float()
        opt.step()
    n = res.steps
    detached = loss.detach().float()
    return StepFigures(detached / n, res.mse.detach() / n, res.kld.detach() / n, res.kld_per_dim, finite)


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
