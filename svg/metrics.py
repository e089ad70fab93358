"""Image-quality metrics shared by validation, evaluation and reports.

PSNR follows the seed: per frame, 10*log10(1/MSE) with the MSE over all pixels and channels of that
frame on [0, 1] images; a sequence's score is the mean over its predicted frames. SSIM is
scikit-image's structural_similarity (data_range=1, over RGB channels), per frame.
"""

from __future__ import annotations

import numpy as np
import torch
from skimage.metrics import structural_similarity

MIN_MSE = 1e-10
"""Floor on the MSE so that a perfect frame scores 100 dB instead of infinity."""


def psnr_per_frame(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(T, B, 3, H, W) in [0, 1] -> (T, B) PSNR in dB."""
    mse = (pred.float() - target.float()).pow(2).mean(dim=(-3, -2, -1))
    return 10.0 * torch.log10(1.0 / mse.clamp_min(MIN_MSE))


def ssim_per_frame(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(T, B, 3, H, W) in [0, 1] -> (T, B) SSIM."""
    p = pred.float().clamp(0, 1).permute(0, 1, 3, 4, 2).cpu().numpy()
    g = target.float().permute(0, 1, 3, 4, 2).cpu().numpy()
    out = np.empty(p.shape[:2], dtype=np.float64)
    for t in range(p.shape[0]):
        for b in range(p.shape[1]):
            out[t, b] = structural_similarity(p[t, b], g[t, b], data_range=1.0, channel_axis=-1)
    return torch.from_numpy(out)


def copy_last(x: torch.Tensor, n_past: int, total: int) -> torch.Tensor:
    """The baseline every score is printed beside: repeat the last context frame for every future step."""
    return x[n_past - 1 : n_past].expand(total - n_past, *x.shape[1:])
