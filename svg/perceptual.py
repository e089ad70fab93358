"""LPIPS per frame: torchmetrics' LPIPS network (v0.1: AlexNet or VGG16 features, unit-normalised per layer, the
squared differences weighted by the linear heads torchmetrics ships and averaged over space, summed over layers) with
the backbone's ImageNet weights read from a file (``svg.weights``), scored on the frames' device, every frame of a
batch at once, without waiting for the device.

torchmetrics' public metric fetches the backbone through torchvision and checks every batch's value range on the
host; its network class (private, hence the exact pin) takes the weights as loaded here and checks nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from svg.errors import SvgError, first_line
from svg.weights import ALEXNET, VGG16, WeightFile

BACKBONES: dict[str, WeightFile] = {"alex": ALEXNET, "vgg": VGG16}

LPIPS_CHUNK = 256
"""Frames per pass: VGG16's first layers on 256 frames of 64x64 take ~0.5 GB."""


@dataclass
class Lpips:
    """The LPIPS network on a device."""

    net: str
    module: torch.nn.Module

    def per_frame(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(T, B, 3, H, W) in [0, 1] -> (T, B) LPIPS, float32, on the frames' device (``pred`` clipped to [0, 1])."""
        if pred.shape != target.shape or pred.dim() != 5:
            shapes = f"{tuple(pred.shape)} and {tuple(target.shape)}"
            raise ValueError(f"lpips: expected two (T, B, C, H, W) tensors of one shape, got {shapes}")
        t, b = pred.shape[:2]
        p = pred.detach().float().clamp(0, 1).flatten(0, 1)
        g = target.detach().float().flatten(0, 1)
        out = torch.empty(t * b, device=pred.device)
        with torch.no_grad():
            for i in range(0, t * b, LPIPS_CHUNK):
                chunk = slice(i, i + LPIPS_CHUNK)
                out[chunk] = self.module(p[chunk], g[chunk], normalize=True).flatten()
        return out.view(t, b)


def heads_file(net: str) -> Path:
    """The linear heads torchmetrics ships for ``net``."""
    import torchmetrics.functional.image.lpips as tm_lpips

    return Path(tm_lpips.__file__).parent / "lpips_models" / f"{net}.pth"


def load_lpips(net: str, backbone: Path, device: torch.device) -> Lpips:
    """LPIPS with ``net``'s features from ``backbone`` (a torchvision state dict: ``features.N.weight``, ...; other
    entries such as the classifier are not read), every tensor of the network loaded and shape-checked."""
    from torchmetrics.functional.image.lpips import _NoTrainLpips

    module = _NoTrainLpips(pretrained=False, net=net, pnet_rand=True)  # nothing read or fetched: both loaded below
    try:
        features = torch.load(backbone, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - turned into a one-line error naming the file
        reason = first_line(e)
        raise SvgError(f"LPIPS backbone {backbone}: unreadable ({reason})") from None
    try:
        # torchmetrics keeps torchvision's layer numbers: slice2.3.weight is features.3.weight
        module.net.load_state_dict({k: features[f"features.{k.split('.', 1)[1]}"] for k in module.net.state_dict()})
    except (KeyError, IndexError, TypeError, RuntimeError) as e:
        reason = first_line(e)
        raise SvgError(f"LPIPS backbone {backbone}: not torchvision's {net} weights ({reason})") from None
    heads = torch.load(heads_file(net), map_location="cpu", weights_only=True)
    for k, lin in enumerate(module.lins):
        lin.load_state_dict({"model.1.weight": heads[f"lin{k}.model.1.weight"]})
    return Lpips(net, module.to(device).eval())
