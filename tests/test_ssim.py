"""SSIM in torch equals scikit-image's ``structural_similarity(p, g, data_range=1.0, channel_axis=-1)``,
the call the project used per frame before: on random, structured and generated frames, within 1e-5."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage.metrics import structural_similarity

from svg.metrics import box_mean, ssim_per_frame


def skimage_ssim(pred: torch.Tensor, target: torch.Tensor, dtype=np.float32) -> np.ndarray:
    """The project's former SSIM: scikit-image per frame on (H, W, 3) arrays, pred clipped to [0, 1]."""
    p = pred.float().clamp(0, 1).permute(0, 1, 3, 4, 2).numpy().astype(dtype)
    g = target.float().permute(0, 1, 3, 4, 2).numpy().astype(dtype)
    out = np.empty(p.shape[:2])
    for t in range(p.shape[0]):
        for b in range(p.shape[1]):
            out[t, b] = structural_similarity(p[t, b], g[t, b], data_range=1.0, channel_axis=-1)
    return out


def structured(seed: int, t: int = 2, b: int = 3, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames with flat regions, edges, gradients and fine texture, and a shifted, noisy prediction."""
    gen = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    target = torch.empty(t, b, 3, size, size)
    for i in range(t):
        for j in range(b):
            base = torch.rand(3, 1, 1, generator=gen) * 0.8
            square = ((ys - 10 - 3 * i).abs() < 8) & ((xs - 20 - 2 * j).abs() < 12)
            target[i, j] = base + 0.5 * xs / size * (j == 1) + 0.2 * square + 0.1 * ((xs + ys) % 2) * (j == 2)
    target = target.clamp(0, 1)
    pred = target.roll(1, -1) + 0.05 * torch.randn(target.shape, generator=gen)
    return pred, target


CASES = {
    "random": lambda: (torch.rand(2, 3, 3, 64, 64), torch.rand(2, 3, 3, 64, 64)),
    "structured": lambda: structured(0),
    "flat near one": lambda: (
        torch.full((1, 2, 3, 64, 64), 0.9) + 1e-3 * torch.randn(1, 2, 3, 64, 64),
        torch.full((1, 2, 3, 64, 64), 0.9),
    ),
    "out of range prediction": lambda: (1.4 * torch.rand(1, 2, 3, 32, 48) - 0.2, torch.rand(1, 2, 3, 32, 48)),
    "identical": lambda: (lambda x: (x, x.clone()))(torch.rand(1, 2, 3, 64, 64)),
}


@pytest.mark.parametrize("case", CASES)
def test_matches_scikit_image(case):
    torch.manual_seed(0)
    pred, target = CASES[case]()
    got = ssim_per_frame(pred, target)
    assert got.shape == pred.shape[:2] and got.dtype == torch.float64 and got.device == pred.device
    np.testing.assert_allclose(got.numpy(), skimage_ssim(pred, target), rtol=0, atol=1e-5)
    # against scikit-image's float64 path the formula itself agrees to rounding
    np.testing.assert_allclose(got.numpy(), skimage_ssim(pred, target, np.float64), rtol=0, atol=1e-10)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    height=st.integers(7, 24),
    width=st.integers(7, 24),
    contrast=st.floats(0.0, 1.0),
    noise=st.floats(0.0, 0.5),
    level=st.floats(0.0, 1.0),
)
def test_matches_scikit_image_on_generated_frames(seed, height, width, contrast, noise, level):
    gen = torch.Generator().manual_seed(seed)
    target = (level + contrast * (torch.rand(2, 2, 3, height, width, generator=gen) - 0.5)).clamp(0, 1)
    pred = target + noise * torch.randn(target.shape, generator=gen)
    # 5e-5: a 7x7 frame is one window, whose fp32 sums round by up to 1.6e-5 (AVX2, one thread); a wrong formula is
    # off by far more
    np.testing.assert_allclose(ssim_per_frame(pred, target).numpy(), skimage_ssim(pred, target), rtol=0, atol=5e-5)


def test_window_mean_is_the_pooling_kernels():
    x = torch.rand(3, 5, 20, 17, dtype=torch.float64)
    torch.testing.assert_close(box_mean(x), F.avg_pool2d(x, 7, stride=1), rtol=0, atol=1e-14)


def test_bf16_predictions_score_as_their_float32_values():
    pred, target = structured(1)
    low = pred.bfloat16()
    torch.testing.assert_close(ssim_per_frame(low, target), ssim_per_frame(low.float(), target), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("shape", "message"), [((1, 1, 3, 6, 64), "smaller than the 7x7 window"), ((1, 3, 64, 64), "(T, B, C, H, W)")]
)
def test_bad_shapes_are_named(shape, message):
    x = torch.rand(shape)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ssim_per_frame(x, x)
