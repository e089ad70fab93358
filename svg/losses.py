"""Loss terms of the conditional VAE, per latent dimension so collapse can be seen dimension by dimension."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kl_to_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per element, same shape as mu."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)


def kl_between_gaussians(
    mu_q: torch.Tensor, logvar_q: torch.Tensor, mu_p: torch.Tensor, logvar_p: torch.Tensor
) -> torch.Tensor:
    """KL(q || p) of two diagonal Gaussians per element (the learned prior's term)."""
    return 0.5 * (logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p).pow(2)) / logvar_p.exp() - 1.0)


def reconstruction(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over every pixel and channel, in at least fp32 whatever the autocast dtype."""
    dtype = torch.promote_types(torch.promote_types(pred.dtype, target.dtype), torch.float32)
    return F.mse_loss(pred.to(dtype), target.to(dtype))


def active_units(kl_per_dim: torch.Tensor, threshold: float = 0.01) -> int:
    """Latent dimensions whose average KL exceeds ``threshold`` nats: 0 means the posterior collapsed."""
    return int((kl_per_dim > threshold).sum())
