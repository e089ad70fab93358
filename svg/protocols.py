"""Named evaluation protocols: which frames are given, which are scored, how many samples and sequences, which
metrics and exactly how each is computed, so that every result and report says how its numbers were made and only
like is compared with like. No torch here: the evaluate CLI lists the protocols in its --help without loading the
model code."""

from __future__ import annotations

from dataclasses import dataclass

SSIM_SETTINGS = "scikit-image structural_similarity: 7x7 uniform window, data_range 1, RGB channels averaged"

METRICS = ("psnr", "ssim", "lpips", "fvd")
ALWAYS = ("psnr", "ssim")
"""Computed by every evaluation: the headline, the media, the report and W&B read them."""

LPIPS_NETS = ("alex", "vgg")

I3D_SIZE = 224
"""Frame side the I3D of the FVD paper takes."""


@dataclass(frozen=True)
class Protocol:
    """A named way to score a checkpoint, stamped into its results."""

    name: str
    summary: str
    n_past: int | None
    """Context frames the protocol requires; None: the checkpoint's."""
    frames: int
    """Predicted frames the headline figures average (and, after the context, the frames of each FVD video)."""
    horizon: int | None
    """Predicted frames per sequence; None: every frame after the context."""
    samples: int
    """Draws from the prior per sequence: their mean estimates one sample's score; best of N picks per sequence."""
    metrics: tuple[str, ...] = ALWAYS
    """What it computes (``METRICS``); PSNR and SSIM always."""
    sequences: int | None = None
    """Test sequences scored, the first ones of the split; None: as many as the split holds or --limit says."""
    lpips_net: str = "alex"


PROTOCOLS = {
    p.name: p
    for p in (
        Protocol("seed", "the seed report's test: 2 given, first 10 predicted frames, 10 samples", 2, 10, 10, 10),
        Protocol("svg", "BAIR as in SVG, SAVP and SRVP: 2 given, 28 predicted frames, best of 100", 2, 28, 28, 100),
        Protocol("project", "the first 10 and all predicted frames, 10 samples", None, 10, None, 10),
        Protocol(
            "bair-fvd",
            "BAIR FVD as in the video-prediction literature: 1 given, 15 predicted, FVD of 256 16-frame videos, "
            "1 sample, LPIPS",
            1,
            15,
            15,
            1,
            metrics=METRICS,
            sequences=256,
        ),
    )
}


@dataclass(frozen=True)
class LpipsSettings:
    """How LPIPS is computed, stamped beside its numbers."""

    net: str
    """alex (AlexNet, the usual choice on BAIR) or vgg (VGG16)."""
    heads: str = "LPIPS v0.1 linear heads as torchmetrics 1.9.0 ships them (the same files as the lpips package's)"
    backbone: str = "torchvision's ImageNet weights of the net, read from the weights file below"
    resolution: str = "64x64 frames as predicted, no resizing; predictions clipped to [0, 1], both mapped to [-1, 1]"
    frames: str = "every predicted frame scored alone against its ground truth; context frames never"
    best_of_n: str = "per sequence the sample with the lowest LPIPS averaged over the headline frames (lower is better)"


@dataclass(frozen=True)
class FvdSettings:
    """How FVD is computed, stamped beside its number."""

    videos: int
    """Generated videos, one per test sequence, against as many real ones: the same sequences."""
    frames: int
    """Frames per video: the context and the first predicted frames."""
    context_frames: int
    """Ground-truth context frames that lead every generated video (and the copy-last one): counted in FVD."""
    samples_per_video: int = 1
    """The first draw of each sequence, whatever --samples is: FVD depends on the set sizes, so it stays comparable."""
    resolution: int = I3D_SIZE
    resize: str = (
        "each frame bilinearly (align_corners=False) from 64x64 to 224x224, no crop, predictions clipped to [0, 1], "
        "then mapped to [-1, 1], as common_metrics_on_video_quality does before StyleGAN-V's I3D"
    )
    i3d: str = (
        "i3d_torchscript.pt: StyleGAN-V's TorchScript port of the Kinetics-400 I3D of the FVD paper, called as "
        "i3d(videos, rescale=False, resize=False, return_features=True): the logits before its softmax"
    )
    distance: str = "Frechet distance of Gaussians fitted to the features (mean, unbiased covariance), in float64"
