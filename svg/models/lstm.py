"""The recurrent parts of SVG: the frame predictor and the Gaussian LSTM (posterior, learned prior).

Hidden state is passed in and returned, never stored on the module, so one module serves any batch
size and a checkpoint holds no per-batch state.
"""

from __future__ import annotations

import torch
from torch import nn

State = list[tuple[torch.Tensor, torch.Tensor]]


class _StackedLSTM(nn.Module):
    def __init__(self, input_size: int, hidden_size: int, layers: int):
        super().__init__()
        self.hidden_size = hidden_size
        self.embed = nn.Linear(input_size, hidden_size)
        self.cells = nn.ModuleList(nn.LSTMCell(hidden_size, hidden_size) for _ in range(layers))

    def initial_state(self, batch: int, device: torch.device) -> State:
        zeros = torch.zeros(batch, self.hidden_size, device=device, dtype=self.embed.weight.dtype)
        return [(zeros, zeros) for _ in self.cells]

    def _run(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        h = self.embed(x)
        new_state = []
        for cell, hc in zip(self.cells, state, strict=True):
            h, c = cell(h, hc)
            new_state.append((h, c))
        return h, new_state


class FramePredictor(_StackedLSTM):
    """[condition, encoding of the input frame, z] -> g_t, the code the decoder turns into a frame: a linear
    layer, optionally BatchNorm1d, then tanh."""

    def __init__(self, input_size: int, output_size: int, hidden_size: int, layers: int, batchnorm: bool = True):
        super().__init__(input_size, hidden_size, layers)
        norm = nn.BatchNorm1d(output_size) if batchnorm else nn.Identity()
        self.out = nn.Sequential(nn.Linear(hidden_size, output_size), norm, nn.Tanh())

    def forward(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        h, state = self._run(x, state)
        return self.out(h), state


class GaussianLSTM(_StackedLSTM):
    """Frame encoding -> (mu, logvar) of a diagonal Gaussian over z_t; the heads run in fp32 under any
    autocast, since the KL and the sampled z are only as good as mu and logvar."""

    def __init__(self, input_size: int, output_size: int, hidden_size: int, layers: int):
        super().__init__(input_size, hidden_size, layers)
        self.mu = nn.Linear(hidden_size, output_size)
        self.logvar = nn.Linear(hidden_size, output_size)

    def forward(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, torch.Tensor, State]:
        h, state = self._run(x, state)
        with torch.autocast(h.device.type, enabled=False):
            h = h.to(torch.promote_types(h.dtype, torch.float32))
            return self.mu(h), self.logvar(h), state


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """z = mu + sigma * eps; eps is drawn by the caller so every path can share the same noise."""
    return mu + torch.exp(0.5 * logvar) * eps.to(mu.dtype)
