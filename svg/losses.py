"""Loss terms of the conditional VAE, per latent dimension so collapse can be seen dimension by dimension."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _wide(t: torch.Tensor) -> torch.Tensor:
    """At least fp32 (float64 stays float64)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _expm1_minus(d: torch.Tensor) -> torch.Tensor:
    """exp(d) - 1 - d >= 0, accurate near d = 0 where the KL of a nearly collapsed posterior lives."""
    return (torch.expm1(d) - d).clamp_min(0.0)


def kl_to_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per element, same shape as mu; fp32 whatever the autocast
    dtype (in bf16 its rounding near the prior exceeds the KL itself and made it negative)."""
    with torch.autocast(mu.device.type, enabled=False):
        mu, logvar = _wide(mu), _wide(logvar)
        return 0.5 * (mu.square() + _expm1_minus(logvar))


def kl_between_gaussians(
    mu_q: torch.Tensor, logvar_q: torch.Tensor, mu_p: torch.Tensor, logvar_p: torch.Tensor
) -> torch.Tensor:
    """KL(q || p) of two diagonal Gaussians per element (the learned prior's term), in fp32."""
    with torch.autocast(mu_q.device.type, enabled=False):
        mu_q, logvar_q, mu_p, logvar_p = (_wide(t) for t in (mu_q, logvar_q, mu_p, logvar_p))
        return 0.5 * ((mu_q - mu_p).square() * torch.exp(-logvar_p) + _expm1_minus(logvar_q - logvar_p))


def reconstruction(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over every pixel and channel, in at least fp32 whatever the autocast dtype."""
    dtype = torch.promote_types(torch.promote_types(pred.dtype, target.dtype), torch.float32)
    return F.mse_loss(pred.to(dtype), target.to(dtype))


def psnr_weighted_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Summed over steps, averaged over the batch, of (T, B, 3, H, W) frames: each frame's MSE weighted by the
    mean over all frames over its own (the weights detached). Its value is the step-summed MSE; its gradient is
    that mean times the gradient of sum(log MSE), i.e. of the mean per-frame PSNR that evaluation reports, which
    counts a frame's error relative to how good the frame already is."""
    with torch.autocast(pred.device.type, enabled=False):
        per_frame = (_wide(pred) - _wide(target)).square().mean((2, 3, 4))  # (T, B)
        floor = torch.finfo(per_frame.dtype).tiny
        weight = (per_frame.mean() / per_frame.clamp_min(floor)).detach()
        return (per_frame * weight).mean(1).sum()


INITIAL_LOG_SCALE = -2.3
"""log of the likelihood's pixel scale at initialisation (~0.1 on [0, 1] images); then learned."""


def likelihood_nll(pred: torch.Tensor, target: torch.Tensor, log_scale: torch.Tensor, family: str) -> torch.Tensor:
    """Negative log-likelihood of ``target`` (T, B, 3, H, W) under a Gaussian (scale = std) or Laplace
    (scale = b) centred on ``pred`` with a learned per-channel ``log_scale`` (3, 1, 1): summed over steps
    and pixels, averaged over the batch, in nats, so that with it beta = 1 is the true ELBO."""
    with torch.autocast(pred.device.type, enabled=False):
        diff, log_scale = _wide(pred) - _wide(target), _wide(log_scale)
        if family == "gaussian":
            per_pixel = 0.5 * (diff * torch.exp(-log_scale)).square() + log_scale + 0.5 * math.log(2 * math.pi)
        elif family == "laplace":
            per_pixel = diff.abs() * torch.exp(-log_scale) + log_scale + math.log(2.0)
        else:
            raise ValueError(f"unknown likelihood {family!r}")
        return per_pixel.sum() / pred.shape[1]


def active_units(kl_per_dim: torch.Tensor, threshold: float = 0.01) -> int:
    """Latent dimensions whose average KL exceeds ``threshold`` nats: 0 means the posterior collapsed."""
    return int((kl_per_dim > threshold).sum())
