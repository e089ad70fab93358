import math

import pytest
import torch

from svg.losses import active_units, kl_between_gaussians, kl_to_standard_normal, psnr_weighted_mse
from svg.metrics import copy_last, psnr_per_frame, ssim_per_frame


def test_psnr_of_known_images():
    target = torch.zeros(2, 1, 3, 8, 8)
    pred = torch.full_like(target, 0.1)  # MSE 0.01 -> 20 dB
    pred[1] = 0.5  # MSE 0.25 -> 6.0206 dB
    got = psnr_per_frame(pred, target)
    assert got.shape == (2, 1)
    assert abs(got[0, 0].item() - 20.0) < 1e-4
    assert abs(got[1, 0].item() - 10 * math.log10(4)) < 1e-4


def test_psnr_averages_mse_over_channels_of_a_frame():
    target = torch.zeros(1, 1, 3, 4, 4)
    pred = target.clone()
    pred[0, 0, 0] = 0.3  # one channel off by 0.3: MSE = 0.09 / 3 = 0.03
    assert abs(psnr_per_frame(pred, target).item() - 10 * math.log10(1 / 0.03)) < 1e-4


def test_perfect_prediction_is_capped_not_infinite():
    x = torch.rand(1, 1, 3, 8, 8)
    assert psnr_per_frame(x, x).item() == 100.0


def test_ssim_identical_is_one_and_noise_is_lower():
    x = torch.rand(1, 2, 3, 32, 32)
    assert torch.allclose(ssim_per_frame(x, x), torch.ones(1, 2, dtype=torch.float64))
    assert (ssim_per_frame((x + 0.2 * torch.randn_like(x)).clamp(0, 1), x) < 0.9).all()


def test_copy_last_repeats_the_last_context_frame():
    x = torch.arange(5.0).view(5, 1, 1, 1, 1).expand(5, 2, 3, 4, 4)
    out = copy_last(x, n_past=2, total=5)
    assert out.shape == (3, 2, 3, 4, 4)
    assert (out == 1.0).all()


def test_kl_of_identical_gaussians_is_zero():
    mu, logvar = torch.randn(4, 6), torch.randn(4, 6)
    assert torch.allclose(kl_between_gaussians(mu, logvar, mu, logvar), torch.zeros(4, 6), atol=1e-6)
    assert torch.allclose(kl_to_standard_normal(torch.zeros(3), torch.zeros(3)), torch.zeros(3))


def test_kl_matches_closed_form():
    # KL(N(1, 4) || N(0, 1)) = 0.5 * (4 + 1 - 1 - ln 4)
    got = kl_to_standard_normal(torch.tensor([1.0]), torch.tensor([math.log(4.0)]))
    assert abs(got.item() - 0.5 * (4 + 1 - 1 - math.log(4))) < 1e-6
    # KL(N(0, 1) || N(2, e^2)) = 0.5 * (2 + (1 + 4) / e^2 - 1)
    got = kl_between_gaussians(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([2.0]), torch.tensor([2.0]))
    assert abs(got.item() - 0.5 * (2 + 5 / math.e**2 - 1)) < 1e-6


def test_active_units_counts_dimensions_above_threshold():
    assert active_units(torch.tensor([0.0, 0.005, 0.02, 1.0])) == 2


def test_kl_under_bf16_autocast_matches_float64_and_is_never_negative():
    """Posteriors near the prior, where bf16 rounding used to exceed the KL and turn it negative."""
    torch.manual_seed(0)
    mu, logvar = 1e-3 * torch.randn(4096), 1e-3 * torch.randn(4096)
    mu_p, logvar_p = mu + 1e-3 * torch.randn(4096), logvar + 1e-3 * torch.randn(4096)
    exact = kl_to_standard_normal(mu.double(), logvar.double())
    exact_pair = kl_between_gaussians(mu.double(), logvar.double(), mu_p.double(), logvar_p.double())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = kl_to_standard_normal(mu.bfloat16(), logvar.bfloat16())
        got_pair = kl_between_gaussians(mu, logvar, mu_p, logvar_p)
    assert got.dtype == got_pair.dtype == torch.float32
    assert (got >= 0).all() and (got_pair >= 0).all()
    # bf16 inputs keep 8 bits of mu/logvar: the KL of those rounded inputs, not of the originals
    rounded = kl_to_standard_normal(mu.bfloat16().double(), logvar.bfloat16().double())
    torch.testing.assert_close(got.double(), rounded, rtol=1e-3, atol=1e-10)  # fp32 ulps of the terms
    torch.testing.assert_close(got_pair.double(), exact_pair, rtol=1e-3, atol=1e-10)
    assert exact.sum() > 0


def test_posterior_heads_stay_fp32_under_bf16_autocast():
    from svg.models.lstm import GaussianLSTM

    lstm = GaussianLSTM(8, 4, 16, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mu, logvar, _ = lstm(torch.randn(3, 8), lstm.initial_state(3, torch.device("cpu")))
    assert mu.dtype == logvar.dtype == torch.float32


def test_gaussian_and_laplace_nll_known_values():
    from svg.losses import likelihood_nll

    target = torch.zeros(2, 4, 3, 8, 8)  # 2 steps, batch 4: 384 pixels per sequence
    zero = torch.zeros(3, 1, 1)
    nll = likelihood_nll(target, target, zero, "gaussian")
    assert nll.item() == pytest.approx(384 * 0.5 * math.log(2 * math.pi))
    pred = torch.full_like(target, 0.5)
    assert likelihood_nll(pred, target, zero, "gaussian").item() == pytest.approx(
        384 * (0.125 + 0.5 * math.log(2 * math.pi))
    )
    assert likelihood_nll(pred, target, zero, "laplace").item() == pytest.approx(384 * (0.5 + math.log(2)))


@pytest.mark.parametrize(("family", "best_scale"), [("gaussian", "rms"), ("laplace", "mean_abs")])
def test_learned_scale_is_optimal_at_the_error_it_should_measure(family, best_scale):
    """The NLL's minimum over the scale is the RMS error (Gaussian) or the mean absolute error (Laplace):
    the learned scale tracks how wrong the model is, so beta = 1 weighs nats in the data's own units."""
    from svg.losses import likelihood_nll

    torch.manual_seed(0)
    target, pred = torch.rand(2, 4, 3, 8, 8), torch.rand(2, 4, 3, 8, 8)
    diff = pred - target
    scale = diff.square().mean().sqrt() if best_scale == "rms" else diff.abs().mean()
    at = {
        d: likelihood_nll(pred, target, torch.full((3, 1, 1), scale.log().item() + d), family).item()
        for d in (-0.05, 0.0, 0.05)
    }
    assert at[0.0] < at[-0.05] and at[0.0] < at[0.05]


def test_psnr_weighted_mse_is_the_mse_in_value_and_the_psnr_in_gradient():
    """Two steps, two sequences, frames of uniform error e: MSE e², summed over steps and averaged over the batch.
    The gradient is the mean MSE times that of sum(log MSE): d/de of log e² is 2/e, so each frame's error gets
    mean · 2/e / B, and a frame twice as good is pulled twice as hard."""
    errors = torch.tensor([[0.1, 0.2], [0.05, 0.1]], dtype=torch.float64, requires_grad=True)  # (T, B)
    target = torch.zeros(2, 2, 3, 4, 4, dtype=torch.float64)
    pred = errors[:, :, None, None, None].expand(-1, -1, 3, 4, 4)
    value = psnr_weighted_mse(pred, target)
    squares = errors.detach() ** 2
    torch.testing.assert_close(value, squares.mean(1).sum())
    value.backward()
    torch.testing.assert_close(errors.grad, squares.mean() * 2 / errors.detach() / 2)
