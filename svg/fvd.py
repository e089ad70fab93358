"""FVD: I3D features of videos, and the Frechet distance between two sets of them.

The I3D is a TorchScript file with the interface of StyleGAN-V's ``i3d_torchscript.pt`` (the one
common_metrics_on_video_quality uses too): ``i3d(x, rescale=False, resize=False, return_features=True)`` on float
videos ``x`` of shape (N, 3, T, 224, 224) with values in [-1, 1] returns (N, D) features, D = 400 for that file (the
Kinetics logits before the softmax). With rescale and resize off it takes the videos as given; the resizing here is
what those repositories do themselves before calling it. The features stay on the device until the evaluation ends.

The distance is computed in float64 from the centred features themselves: with S1 = A'A / (n1 - 1) and
S2 = B'B / (n2 - 1), tr (S1 S2)^1/2 is the sum of the singular values of A B' / sqrt((n1 - 1)(n2 - 1)), taken through
the QR factors of A and B (at most min(n, D) square). No matrix square root is formed: nothing complex to drop, no
square roots of round-off on the zero eigenvalues of a covariance of fewer videos than features (256 against 400
here), and a set against itself gives 0 to 1e-12 of its trace.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from svg.errors import SvgError, first_line
from svg.protocols import I3D_SIZE

I3D_CHUNK = 16
"""Videos per I3D call: 16 videos of 16 frames at 224x224 are 150 MB of float32 input."""


def i3d_input(video: torch.Tensor) -> torch.Tensor:
    """(T, B, 3, H, W) in [0, 1], square frames -> (B, 3, T, 224, 224) in [-1, 1]: each frame resized bilinearly
    (align_corners=False), which for square frames is common_metrics' shorter-side resize with nothing to crop."""
    t, b, c, h, w = video.shape
    if h != w:
        raise ValueError(f"i3d_input: square frames expected, got {h}x{w}")
    frames = video.detach().float().clamp(0, 1).flatten(0, 1)
    frames = F.interpolate(frames, size=(I3D_SIZE, I3D_SIZE), mode="bilinear", align_corners=False)
    return frames.view(t, b, c, I3D_SIZE, I3D_SIZE).permute(1, 2, 0, 3, 4).mul(2).sub(1)


@dataclass
class I3D:
    """The I3D network on a device."""

    path: Path
    module: torch.jit.ScriptModule

    def features(self, video: torch.Tensor) -> torch.Tensor:
        """(T, B, 3, H, W) in [0, 1] -> (B, D) float64 features, on the frames' device."""
        out = []
        with torch.no_grad():
            for i in range(0, video.shape[1], I3D_CHUNK):
                x = i3d_input(video[:, i : i + I3D_CHUNK])
                try:
                    f = self.module(x, rescale=False, resize=False, return_features=True)
                except (RuntimeError, torch.jit.Error) as e:  # what a TorchScript module raises is a jit.Error
                    reason = first_line(e, last=True)
                    raise SvgError(f"I3D {self.path}: failed on videos of shape {tuple(x.shape)} ({reason})") from None
                if not isinstance(f, torch.Tensor) or f.dim() != 2 or f.shape[0] != x.shape[0]:
                    got = tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__
                    raise SvgError(f"I3D {self.path}: returned {got}, expected features of shape ({x.shape[0]}, D)")
                out.append(f.double())
        return torch.cat(out)


def load_i3d(path: Path, device: torch.device) -> I3D:
    try:
        with warnings.catch_warnings():  # torch 2.14 deprecates TorchScript, the format the published I3D comes in
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(path), map_location=device)
    except (RuntimeError, ValueError) as e:
        reason = first_line(e)
        raise SvgError(f"I3D {path}: not a TorchScript file ({reason})") from None
    return I3D(path, module.eval())


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Between Gaussians fitted to two sets of features (N, D) (means, unbiased covariances): ||m1 - m2||^2 +
    tr(S1 + S2 - 2 (S1 S2)^1/2), in float64. Each set needs two features at least."""
    (n1, _), (n2, _) = a.shape, b.shape
    if min(n1, n2) < 2:
        raise ValueError(f"frechet_distance: two features per set at least, got {n1} and {n2}")
    a, b = a.double(), b.double()
    ca, cb = a - a.mean(0), b - b.mean(0)
    r1, r2 = torch.linalg.qr(ca, mode="r")[1], torch.linalg.qr(cb, mode="r")[1]  # A B' = Q1 R1 R2' Q2'
    tr_sqrt = torch.linalg.svdvals(r1 @ r2.T).sum() / math.sqrt((n1 - 1) * (n2 - 1))
    traces = ca.square().sum() / (n1 - 1) + cb.square().sum() / (n2 - 1)
    return ((a.mean(0) - b.mean(0)).square().sum() + traces - 2 * tr_sqrt).item()
