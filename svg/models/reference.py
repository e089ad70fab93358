"""The seed's training step, one frame at a time: the encoder runs on the target and on the input
frame at every step, the decoder once per step, in fp32.

Kept as the yardstick: tests check that ``SVG.training_step`` computes the same loss and gradients,
and the benchmark measures how much faster that step is.
"""

from __future__ import annotations

import torch

from svg.losses import reconstruction
from svg.models.svg import SVG, StepResult


def reference_step(
    model: SVG, x: torch.Tensor, cond: torch.Tensor, n_past: int, teacher_forcing: bool, eps: torch.Tensor
) -> StepResult:
    steps, batch = x.shape[0], x.shape[1]
    states = model.initial_states(batch, x.device)
    mse = x.new_zeros(())
    kls, preds = [], []
    x_pred, skip, source = None, None, None
    for t in range(1, steps):
        h_target = model.encode(x[t])[0]
        given = teacher_forcing or t - 1 < n_past
        h_prev, own_skip = model.encode(x[t - 1] if given else x_pred)
        if model.last_frame_skip or t - 1 < n_past:
            skip, source = own_skip, cond[t - 1]
        g, kl, states = model.latent_step(h_target, h_prev, cond[t], eps[t - 1], states)
        kls.append(kl)
        x_pred = model.decode(g, skip, cond[t], source)
        preds.append(x_pred)
        mse = mse + reconstruction(x_pred, x[t])
    return model.result(mse, kls, torch.stack(preds), x)
