"""Frame encoders and decoders for 64x64 RGB frames: the seed's VGG pair and a lighter DCGAN pair.

Both encoders map frames (N, 3, 64, 64) to (h (N, g_dim), [skip 64/32px, 32/16px, 16/8px, 8/4px]); both
decoders map (g (N, g_dim), skips) back to ``out_channels`` maps in [0, 1] (a frame, or a frame and a
compositing mask). A decoder built with a ``ConditionMaps`` also takes the step's condition (N, cond_dim) and
sees it at every scale as maps: tiled beside two coordinate channels, or as spots where the arm's position
puts it in the image. A convolution cannot turn a position given as numbers into a place in the image; with
the pixel's own coordinates beside it one layer can, and a spot is that place already. The trainer encodes
the frames of many time steps as one batch; ``StepBatchNorm2d`` keeps the batch statistics per time step, so a batched
call computes exactly what one call per step would.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


class StepBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are taken per time step when frames of ``steps`` steps
    are stacked along the batch (step-major). With steps == 1 it is plain BatchNorm2d."""

    steps: int = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.steps == 1:
            return super().forward(x)
        n, c, h, w = x.shape
        xs = x.view(self.steps, n // self.steps, c, h, w)
        stats_input = xs.float() if xs.dtype in (torch.float16, torch.bfloat16) else xs
        var, mean = torch.var_mean(stats_input, dim=(1, 3, 4), keepdim=True, unbiased=False)
        scale = self.weight.view(1, 1, c, 1, 1) * torch.rsqrt(var + self.eps)
        shift = self.bias.view(1, 1, c, 1, 1) - mean * scale
        out = (xs * scale.to(x.dtype) + shift.to(x.dtype)).view(n, c, h, w)
        with torch.no_grad():
            count = n // self.steps * h * w
            self.running_mean.lerp_(mean.mean(0).flatten().to(self.running_mean.dtype), self.momentum)
            unbiased = var.mean(0).flatten() * count / max(count - 1, 1)
            self.running_var.lerp_(unbiased.to(self.running_var.dtype), self.momentum)
            self.num_batches_tracked += 1
        return out


@contextmanager
def per_step_statistics(module: nn.Module, steps: int):
    """Within the block, every StepBatchNorm2d in ``module`` treats its batch as ``steps`` time steps."""
    layers = [m for m in module.modules() if isinstance(m, StepBatchNorm2d)]
    for m in layers:
        m.steps = steps
    try:
        yield
    finally:
        for m in layers:
            m.steps = 1


def full_precision(linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``linear(x)`` for x (N, in) in the layer's own precision whatever the autocast dtype: as products and a sum,
    which autocast leaves alone (a place or a motion in the image needs more than bf16's 8 bits)."""
    return (x.to(linear.weight.dtype)[:, None, :] * linear.weight).sum(-1) + linear.bias


SPOT_WIDTHS = (0.08, 0.2)
"""Starting widths (standard deviations, in the image's (-1, 1) coordinates: ~2.6 and ~6.4 px at 64 px) of the
position spots; each is learned."""


class ConditionMaps(nn.Module):
    """(N, C) condition -> the maps a decoder sees at each scale, (N, channels, h, w).

    ``tiled``: the condition tiled over the grid, then the pixel centres' x and y coordinates in (-1, 1).
    ``position`` (the condition's end-effector columns x, y, z): Gaussian spots centred where a learned affine
    map of the position puts the arm in the image, one per learned width (``SPOT_WIDTHS``). The map starts as
    the identity on x, y: BAIR's positions read as image coordinates (the embedded data's exactly, a real
    camera's roughly, and the map adjusts)."""

    def __init__(self, cond_dim: int, tiled: bool = True, position: slice | None = None):
        super().__init__()
        self.cond_dim, self.tiled, self.position = cond_dim, tiled and cond_dim > 0, position
        if position is not None:
            self.to_image = nn.Linear(position.stop - position.start, 2)
            with torch.no_grad():
                self.to_image.weight.copy_(torch.eye(2, position.stop - position.start))
                self.to_image.bias.zero_()
            self.log_width = nn.Parameter(torch.tensor(SPOT_WIDTHS).log())

    @property
    def channels(self) -> int:
        return (self.cond_dim + 2 if self.tiled else 0) + (len(SPOT_WIDTHS) if self.position is not None else 0)

    def image_position(self, cond: torch.Tensor) -> torch.Tensor:
        """(N, 2): x, y in the image's (-1, 1) coordinates where the learned map puts the arm, in the map's own
        precision (not autocast: a sub-pixel place)."""
        return full_precision(self.to_image, cond[:, self.position])

    def forward(self, like: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        n, _, h, w = like.shape
        ys = torch.linspace(-1 + 1 / h, 1 - 1 / h, h, device=like.device, dtype=like.dtype)
        xs = torch.linspace(-1 + 1 / w, 1 - 1 / w, w, device=like.device, dtype=like.dtype)
        maps = []
        if self.tiled:
            grid = torch.stack([xs.view(1, w).expand(h, w), ys.view(h, 1).expand(h, w)])
            maps += [cond.to(like.dtype)[:, :, None, None].expand(n, self.cond_dim, h, w), grid.expand(n, 2, h, w)]
        if self.position is not None:
            centre, dtype = self.image_position(cond), self.to_image.weight.dtype
            dx2 = (xs.to(dtype).view(1, 1, w) - centre[:, 0, None, None]) ** 2  # (N, 1, w)
            dy2 = (ys.to(dtype).view(1, h, 1) - centre[:, 1, None, None]) ** 2  # (N, h, 1)
            inv = 0.5 * torch.exp(-2 * self.log_width).view(1, -1, 1, 1)
            maps.append(torch.exp(-(dx2 + dy2)[:, None] * inv).to(like.dtype))  # (N, spots, h, w)
        out = torch.cat(maps, 1)
        return out.contiguous(memory_format=torch.channels_last) if _channels_last(like) else out


def _channels_last(x: torch.Tensor) -> bool:
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def _with_condition(maps: ConditionMaps, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
    if not maps.channels:
        return x
    if cond is None:
        raise ValueError("this decoder was built to see the condition: it needs the step's condition")
    return torch.cat([x, maps(x, cond)], 1)


def _normalized(conv: nn.Conv2d | nn.ConvTranspose2d) -> nn.Sequential:
    """A convolution, then BatchNorm per step and a leaky ReLU: the layer every encoder and decoder is built of."""
    return nn.Sequential(conv, StepBatchNorm2d(conv.out_channels), nn.LeakyReLU(0.2, inplace=True))


def _encoder_head(cin: int, g_dim: int) -> nn.Sequential:
    """4x4 features -> the g_dim frame code, squashed to (-1, 1)."""
    return nn.Sequential(nn.Conv2d(cin, g_dim, 4, 1, 0), StepBatchNorm2d(g_dim), nn.Tanh())


def _decoder_head(g_dim: int, cout: int) -> nn.Sequential:
    """The g_dim frame code -> 4x4 features."""
    return _normalized(nn.ConvTranspose2d(g_dim, cout, 4, 1, 0))


def _vgg_layer(cin: int, cout: int) -> nn.Sequential:
    return _normalized(nn.Conv2d(cin, cout, 3, 1, 1))


class VGGEncoder(nn.Module):
    def __init__(self, g_dim: int, channels: int = 64):
        super().__init__()
        c = channels
        self.blocks = nn.ModuleList(
            [
                nn.Sequential(_vgg_layer(3, c), _vgg_layer(c, c)),
                nn.Sequential(_vgg_layer(c, 2 * c), _vgg_layer(2 * c, 2 * c)),
                nn.Sequential(*(_vgg_layer(2 * c if i == 0 else 4 * c, 4 * c) for i in range(3))),
                nn.Sequential(*(_vgg_layer(4 * c if i == 0 else 8 * c, 8 * c) for i in range(3))),
            ]
        )
        self.head = _encoder_head(8 * c, g_dim)
        self.pool = nn.MaxPool2d(2, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        for i, block in enumerate(self.blocks):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        return self.head(self.pool(x)).flatten(1), skips


class VGGDecoder(nn.Module):
    def __init__(self, g_dim: int, channels: int = 64, condition: ConditionMaps | None = None, out_channels: int = 3):
        super().__init__()
        c = channels
        self.condition = condition or ConditionMaps(0)
        k = self.condition.channels
        self.head = _decoder_head(g_dim, 8 * c)
        self.blocks = nn.ModuleList(
            [
                nn.Sequential(_vgg_layer(16 * c + k, 8 * c), _vgg_layer(8 * c, 8 * c), _vgg_layer(8 * c, 4 * c)),
                nn.Sequential(_vgg_layer(8 * c + k, 4 * c), _vgg_layer(4 * c, 4 * c), _vgg_layer(4 * c, 2 * c)),
                nn.Sequential(_vgg_layer(4 * c + k, 2 * c), _vgg_layer(2 * c, c)),
                nn.Sequential(_vgg_layer(2 * c + k, c), nn.ConvTranspose2d(c, out_channels, 3, 1, 1), nn.Sigmoid()),
            ]
        )
        self.up = nn.Upsample(scale_factor=2, mode="nearest")

    def forward(self, g: torch.Tensor, skips: list[torch.Tensor], cond: torch.Tensor | None = None) -> torch.Tensor:
        d = self.head(g[:, :, None, None])
        for block, skip in zip(self.blocks, reversed(skips), strict=True):
            d = block(_with_condition(self.condition, torch.cat([self.up(d), skip], 1), cond))
        return d


def _down(cin: int, cout: int) -> nn.Sequential:
    return _normalized(nn.Conv2d(cin, cout, 4, 2, 1))


def _up(cin: int, cout: int) -> nn.Sequential:
    return _normalized(nn.ConvTranspose2d(cin, cout, 4, 2, 1))


class DCGANEncoder(nn.Module):
    def __init__(self, g_dim: int, channels: int = 64):
        super().__init__()
        c = channels
        self.blocks = nn.ModuleList([_down(3, c), _down(c, 2 * c), _down(2 * c, 4 * c), _down(4 * c, 8 * c)])
        self.head = _encoder_head(8 * c, g_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        for block in self.blocks:
            x = block(x)
            skips.append(x)
        return self.head(x).flatten(1), skips


class DCGANDecoder(nn.Module):
    def __init__(self, g_dim: int, channels: int = 64, condition: ConditionMaps | None = None, out_channels: int = 3):
        super().__init__()
        c = channels
        self.condition = condition or ConditionMaps(0)
        k = self.condition.channels
        self.head = _decoder_head(g_dim, 8 * c)
        self.blocks = nn.ModuleList(
            [
                _up(16 * c + k, 4 * c),
                _up(8 * c + k, 2 * c),
                _up(4 * c + k, c),
                nn.Sequential(nn.ConvTranspose2d(2 * c + k, out_channels, 4, 2, 1), nn.Sigmoid()),
            ]
        )

    def forward(self, g: torch.Tensor, skips: list[torch.Tensor], cond: torch.Tensor | None = None) -> torch.Tensor:
        d = self.head(g[:, :, None, None])
        for block, skip in zip(self.blocks, reversed(skips), strict=True):
            d = block(_with_condition(self.condition, torch.cat([d, skip], 1), cond))
        return d


ARCHITECTURES = {"vgg64": (VGGEncoder, VGGDecoder), "dcgan64": (DCGANEncoder, DCGANDecoder)}
