"""Image-quality metrics shared by validation, evaluation and reports.

PSNR follows the seed: per frame, 10*log10(1/MSE) with the MSE over all pixels and channels of that
frame on [0, 1] images; a sequence's score is the mean over its predicted frames. SSIM is
scikit-image's ``structural_similarity(p, g, data_range=1.0, channel_axis=-1)`` per frame, computed
here in torch (float64, on the frames' device, every frame at once, no host sync) and tested against
scikit-image itself (tests/test_ssim.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MIN_MSE = 1e-10
"""Floor on the MSE so that a perfect frame scores 100 dB instead of infinity."""

SSIM_WINDOW = 7
"""scikit-image's default: a 7x7 uniform window; the mean covers only where it fits inside the frame."""
SSIM_K1, SSIM_K2 = 0.01, 0.03
SSIM_CHUNK = {"cpu": 8}
"""Frames per pass: small on a CPU, where a pass that stays in cache is 3x faster (measured at 64x64);
elsewhere (``SSIM_CHUNK_DEFAULT``) large enough for few kernels, small enough for ~0.5 GiB of float64
window statistics at 64x64."""
SSIM_CHUNK_DEFAULT = 1024


def psnr_per_frame(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(T, B, 3, H, W) in [0, 1] -> (T, B) PSNR in dB."""
    mse = (pred.float() - target.float()).pow(2).mean(dim=(-3, -2, -1))
    return 10.0 * torch.log10(1.0 / mse.clamp_min(MIN_MSE))


def box_mean(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, H-6, W-6): the mean over each 7x7 window that fits inside. One pooling kernel
    on a GPU; on a CPU running sums of shifted views, ~3x faster than ``avg_pool2d`` there (measured)."""
    if x.device.type != "cpu":
        return F.avg_pool2d(x, SSIM_WINDOW, stride=1)
    k = SSIM_WINDOW
    h, w = x.shape[-2] - k + 1, x.shape[-1] - k + 1
    rows = x[..., 0:w] + x[..., 1 : w + 1]
    for i in range(2, k):
        rows += x[..., i : i + w]
    out = rows[..., 0:h, :] + rows[..., 1 : h + 1, :]
    for i in range(2, k):
        out += rows[..., i : i + h, :]
    return out.div_(k * k)


def _ssim(p: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) float64 -> (N,) mean SSIM over channels and the window-sized valid region.

    scikit-image's formula: uniform-window means, sample covariances (N/(N-1) with N = 49), data range 1."""
    c = p.shape[1]
    means = box_mean(torch.cat([p, g, p * p, g * g, p * g], 1))
    ux, uy, uxx, uyy, uxy = means.split(c, 1)
    n = SSIM_WINDOW**2
    cov_norm = n / (n - 1)
    vx, vy, vxy = cov_norm * (uxx - ux * ux), cov_norm * (uyy - uy * uy), cov_norm * (uxy - ux * uy)
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    s = (2 * ux * uy + c1) * (2 * vxy + c2) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.mean((1, 2, 3))


def ssim_per_frame(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(T, B, 3, H, W) in [0, 1] -> (T, B) SSIM, float64, on the frames' device (``pred`` clipped to [0, 1]
    first, as before; frames at least 7 pixels on each side)."""
    if pred.shape != target.shape or pred.dim() != 5:
        raise ValueError(
            f"ssim_per_frame: expected two (T, B, C, H, W) tensors, got {tuple(pred.shape)} and {tuple(target.shape)}"
        )
    t, b, c, h, w = pred.shape
    if min(h, w) < SSIM_WINDOW:
        raise ValueError(f"ssim_per_frame: frames of {h}x{w} are smaller than the {SSIM_WINDOW}x{SSIM_WINDOW} window")
    # float32 first: the values scikit-image was given (bf16 predictions widen exactly either way)
    p = pred.detach().float().clamp(0, 1).reshape(t * b, c, h, w)
    g = target.detach().float().reshape(t * b, c, h, w)
    out = torch.empty(t * b, dtype=torch.float64, device=pred.device)
    chunk = SSIM_CHUNK.get(pred.device.type, SSIM_CHUNK_DEFAULT)
    for i in range(0, t * b, chunk):
        out[i : i + chunk] = _ssim(p[i : i + chunk].double(), g[i : i + chunk].double())
    return out.view(t, b)


def copy_last(x: torch.Tensor, n_past: int, total: int) -> torch.Tensor:
    """The baseline every score is printed beside: repeat the last context frame for every future step."""
    return x[n_past - 1 : n_past].expand(total - n_past, *x.shape[1:])
