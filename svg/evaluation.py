"""Scoring predictions against ground truth: the code validation and evaluation both use."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch

from svg.metrics import copy_last, psnr_per_frame, ssim_per_frame
from svg.models import SVG

MEDIA_SEQUENCES = 4
"""Sequences shown in the GIF and strip."""


@dataclass
class Scores:
    psnr: float
    ssim: float
    copy_last_psnr: float
    psnr_per_frame: list[float]
    ssim_per_frame: list[float]
    copy_last_per_frame: list[float]
    n_sequences: int
    panels: list[torch.Tensor]
    """[ground truth, prediction] of the first sequences, (T, B, 3, H, W), context included."""


def score(
    model: SVG,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    n_past: int,
    device: torch.device,
    amp: Callable[[], AbstractContextManager],
    seed: int,
) -> Scores:
    """Predict every sequence from its first ``n_past`` frames (BatchNorm in eval mode, z from the
    prior with a seeded generator) and score all following frames."""
    from svg.train import to_model_layout

    was_training = model.training
    model.eval()
    gen = torch.Generator(device=device).manual_seed(seed)
    psnrs, ssims, copies, panels = [], [], [], None
    with torch.no_grad():
        for frames, cond in batches:
            x, c = to_model_layout(frames, cond, device)
            with amp():
                pred = model.predict(x[:n_past], c, n_past, generator=gen).float()
            target = x[n_past:]
            psnrs.append(psnr_per_frame(pred, target))
            ssims.append(ssim_per_frame(pred, target))
            copies.append(psnr_per_frame(copy_last(x, n_past, x.shape[0]), target))
            if panels is None:
                k = MEDIA_SEQUENCES
                panels = [x[:, :k].cpu(), torch.cat([x[:n_past, :k], pred[:, :k]]).cpu()]
    model.train(was_training)
    psnr, ssim, cp = torch.cat(psnrs, 1), torch.cat(ssims, 1), torch.cat(copies, 1)
    return Scores(
        psnr=psnr.mean().item(),
        ssim=ssim.mean().item(),
        copy_last_psnr=cp.mean().item(),
        psnr_per_frame=psnr.mean(1).tolist(),
        ssim_per_frame=ssim.mean(1).tolist(),
        copy_last_per_frame=cp.mean(1).tolist(),
        n_sequences=psnr.shape[1],
        panels=panels,
    )
