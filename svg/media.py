"""GIFs and frame strips written with imageio, small enough to log every few epochs.

Layout: one row per sequence, columns ground truth | prediction (| more samples). A bar under
each panel marks context frames (green, given) and predicted frames (red).
"""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch

GIVEN = np.array([40, 170, 60], dtype=np.uint8)
PREDICTED = np.array([200, 40, 40], dtype=np.uint8)
BAR = 3
GAP = 2


def _to_uint8(frames: torch.Tensor) -> np.ndarray:
    """(T, B, 3, H, W) in [0, 1] -> (T, B, H, W, 3) uint8."""
    return (frames.float().clamp(0, 1) * 255).round().byte().permute(0, 1, 3, 4, 2).cpu().numpy()


def compose(panels: list[torch.Tensor], n_past: int, scale: int = 2) -> np.ndarray:
    """Panels of (T, B, 3, H, W) -> (T, rows, cols, 3) uint8 video: sequences down, panels across."""
    arrays = [_to_uint8(p) for p in panels]
    steps, batch, height, width, _ = arrays[0].shape
    cell_h, cell_w = height + BAR + GAP, width + GAP
    video = np.full((steps, batch * cell_h, len(arrays) * cell_w, 3), 255, dtype=np.uint8)
    for t in range(steps):
        bar = GIVEN if t < n_past else PREDICTED
        for b in range(batch):
            for p, arr in enumerate(arrays):
                y, x = b * cell_h, p * cell_w
                video[t, y : y + height, x : x + width] = arr[t, b]
                video[t, y + height : y + height + BAR, x : x + width] = bar
    return video.repeat(scale, axis=1).repeat(scale, axis=2)


def write_gif(path: Path, panels: list[torch.Tensor], n_past: int, fps: int = 4) -> Path:
    """Write the side-by-side video as a looping GIF and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, compose(panels, n_past), duration=1000 / fps, loop=0)
    return path


def write_strip(path: Path, panels: list[torch.Tensor], n_past: int) -> Path:
    """One PNG: time steps left to right, one row per panel (first sequence only)."""
    video = compose([p[:, :1] for p in panels], n_past, scale=1)  # (T, H', W', 3), panels across
    steps, _, _, _ = video.shape
    rows = np.split(video, len(panels), axis=2)
    strip = np.concatenate([np.concatenate(list(r), axis=1) for r in rows], axis=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, strip)
    return path
