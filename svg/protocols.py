"""Named evaluation protocols: which frames are given, which are scored and how many samples are drawn,
so that every result and report says how its numbers were made and only like is compared with like.
No torch here: the evaluate CLI lists the protocols in its --help without loading the model code."""

from __future__ import annotations

from dataclasses import dataclass

SSIM_SETTINGS = "scikit-image structural_similarity: 7x7 uniform window, data_range 1, RGB channels averaged"


@dataclass(frozen=True)
class Protocol:
    """A named way to score a checkpoint, stamped into its results."""

    name: str
    summary: str
    n_past: int | None
    """Context frames the protocol requires; None: the checkpoint's."""
    frames: int
    """Predicted frames the headline figures average."""
    horizon: int | None
    """Predicted frames per sequence; None: every frame after the context."""
    samples: int
    """Draws from the prior per sequence: their mean estimates one sample's score; best of N picks per sequence."""


PROTOCOLS = {
    p.name: p
    for p in (
        Protocol("seed", "the seed report's test: 2 given, first 10 predicted frames, 10 samples", 2, 10, 10, 10),
        Protocol("svg", "BAIR as in SVG, SAVP and SRVP: 2 given, 28 predicted frames, best of 100", 2, 28, 28, 100),
        Protocol("project", "the first 10 and all predicted frames, 10 samples", None, 10, None, 10),
    )
}
