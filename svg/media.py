"""What a person watches to judge a video model: GIFs, frame strips and per-frame plots.

A GIF shows one row per sequence and one column per video (ground truth | a sample | best of N),
under a header that names the columns and counts frames. A bar under every cell marks the frame
as given (green: a context frame, ground truth fed to the model) or predicted (red). All frames of
a GIF share one palette, so Pillow stores only the pixels that change and the file stays small
enough to log every few epochs. Written with Pillow directly: imageio would quantize each frame
on its own and cannot draw text.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

Video = tuple[str, torch.Tensor]
"""(column label, frames (T, B, 3, H, W) in [0, 1]); context frames included, so every video has T frames."""

GIVEN = (40, 160, 60)
PREDICTED = (200, 40, 40)
TEXT = (20, 20, 20)
BAR = 3
GAP = 2
LINE = 14
"""Height of one header line at scale 1, in pixels."""
PALETTE_COLORS = 256
FUZZ = 12
"""A pixel keeps its previous GIF colour while that stays within this many levels of the true one:
sensor noise stops repainting the background every frame."""
PALETTE_SAMPLES = 8
"""Frames spread over the video that the shared GIF palette is fitted on."""


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _to_uint8(frames: torch.Tensor) -> np.ndarray:
    """(T, B, 3, H, W) in [0, 1] -> (T, B, H, W, 3) uint8."""
    return (frames.detach().float().clamp(0, 1) * 255).round().byte().permute(0, 1, 3, 4, 2).cpu().numpy()


def _phase(t: int, n_past: int) -> tuple[str, tuple[int, int, int]]:
    return ("given", GIVEN) if t < n_past else ("predicted", PREDICTED)


def grid(videos: list[Video], n_past: int) -> np.ndarray:
    """(T, rows, cols, 3) uint8 at native size: sequences down, videos across, a phase bar under each cell."""
    arrays = [_to_uint8(v) for _, v in videos]
    steps, batch, height, width, _ = arrays[0].shape
    if any(a.shape != arrays[0].shape for a in arrays):
        raise ValueError(f"videos differ in shape: {[tuple(a.shape) for a in arrays]}")
    cell_h, cell_w = height + BAR + GAP, width + GAP
    out = np.full((steps, batch * cell_h, len(arrays) * cell_w, 3), 255, dtype=np.uint8)
    for c, arr in enumerate(arrays):
        for b in range(batch):
            y, x = b * cell_h, c * cell_w
            out[:, y : y + height, x : x + width] = arr[:, b]
            for t in range(steps):
                out[t, y + height : y + height + BAR, x : x + width] = _phase(t, n_past)[1]
    return out


def compose(videos: list[Video], n_past: int, scale: int = 1) -> np.ndarray:
    """(T, H, W, 3) uint8 GIF frames: the grid enlarged ``scale`` times under a two-line header
    (frame counter and phase, then the column labels)."""
    body = grid(videos, n_past).repeat(scale, axis=1).repeat(scale, axis=2)
    steps, _, width, _ = body.shape
    line = LINE * scale
    cell_w = (videos[0][1].shape[-1] + GAP) * scale
    font = _font(10 * scale)
    labels = Image.new("RGB", (width, 2 * line), "white")
    draw = ImageDraw.Draw(labels)
    for c, (label, _) in enumerate(videos):
        draw.text(
            (c * cell_w + cell_w // 2 - GAP * scale // 2, line + line // 2), label, fill=TEXT, font=font, anchor="mm"
        )
    frames = np.empty((steps, 2 * line + body.shape[1], width, 3), dtype=np.uint8)
    for t in range(steps):
        header = labels.copy()
        phase, color = _phase(t, n_past)
        ImageDraw.Draw(header).text(
            (2 * scale, line // 2), f"frame {t + 1}/{steps}  {phase}", fill=color, font=font, anchor="lm"
        )
        frames[t, : 2 * line] = np.asarray(header)
        frames[t, 2 * line :] = body[t]
    return frames


def save_gif(path: Path, frames: np.ndarray, fps: float = 4, hold_last: float = 1.0) -> Path:
    """Write (T, H, W, 3) uint8 frames as a looping GIF, the last frame held ``hold_last`` s.

    One palette for all frames; after the first frame, pixels whose colour did not change are stored
    as the transparent index over the previous frame, which LZW packs into almost nothing, so a static
    background (most of a robot-pushing video) is paid for once.
    """
    sample = frames[np.linspace(0, len(frames) - 1, min(PALETTE_SAMPLES, len(frames))).round().astype(int)]
    palette = Image.fromarray(np.concatenate(list(sample), axis=0)).quantize(
        PALETTE_COLORS - 1, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE
    )
    unchanged = PALETTE_COLORS - 1
    colors = palette.getpalette()[: 3 * unchanged] + [255, 0, 255] * (256 - unchanged)
    rgb = np.array(colors, dtype=np.int16).reshape(256, 3)
    images, shown = [], None
    for frame in frames:
        index = np.asarray(Image.fromarray(frame).quantize(palette=palette, dither=Image.Dither.NONE))
        if shown is None:
            delta, shown = index, index
        else:
            keep = np.abs(rgb[shown] - frame.astype(np.int16)).max(-1) <= FUZZ
            delta = np.where(keep, unchanged, index).astype(np.uint8)
            shown = np.where(keep, shown, index)
        image = Image.fromarray(delta, mode="P")
        image.putpalette(colors)
        images.append(image)
    durations = [round(1000 / fps)] * (len(images) - 1) + [round(1000 * max(hold_last, 1 / fps))]
    path.parent.mkdir(parents=True, exist_ok=True)
    images[0].save(
        path,
        save_all=True,
        append_images=images[1:],
        duration=durations,
        loop=0,
        transparency=unchanged,
        disposal=1,
        optimize=False,
    )
    return path


def write_gif(path: Path, videos: list[Video], n_past: int, fps: float = 4, scale: int = 1) -> Path:
    """The side-by-side GIF of ``videos`` (see the module docstring); returns its path."""
    return save_gif(path, compose(videos, n_past, scale), fps)


def write_strip(path: Path, videos: list[Video], n_past: int, sequence: int = 0) -> Path:
    """One PNG of one sequence: time steps left to right under their frame numbers (green: given,
    red: predicted), one row per video, labelled on the left."""
    rows = [grid([(label, v[:, sequence : sequence + 1])], n_past) for label, v in videos]  # (T, h, w, 3) each
    steps, row_h, cell_w, _ = rows[0].shape
    font = _font(10)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    margin = max(int(probe.textlength(label, font=font)) for label, _ in videos) + 2 * GAP
    canvas = Image.new("RGB", (margin + steps * cell_w, LINE + len(rows) * row_h), "white")
    draw = ImageDraw.Draw(canvas)
    for r, ((label, _), cells) in enumerate(zip(videos, rows, strict=True)):
        canvas.paste(Image.fromarray(np.concatenate(list(cells), axis=1)), (margin, LINE + r * row_h))
        draw.text((GAP, LINE + r * row_h + (row_h - BAR - GAP) // 2), label, fill=TEXT, font=font, anchor="lm")
    for t in range(steps):
        draw.text(
            (margin + t * cell_w + (cell_w - GAP) // 2, LINE // 2),
            str(t + 1),
            fill=_phase(t, n_past)[1],
            font=font,
            anchor="mm",
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE).save(path, optimize=True)
    return path


Series = dict[str, tuple[list[float], list[float]]]
"""label -> (mean per predicted frame, half-width of its 95% interval per frame)."""


def write_curves(path: Path, plots: dict[str, Series], mark: int | None = None) -> Path:
    """Per-frame curves with their 95% bands, one panel per metric; ``mark`` draws a dashed line after
    that many predicted frames (where the headline average stops)."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    fig = Figure(figsize=(4.2 * len(plots), 3.2), layout="tight")
    axes = fig.subplots(1, len(plots), squeeze=False)
    for ax, (metric, series) in zip(axes[0], plots.items(), strict=True):
        for label, (mean, ci) in series.items():
            x = np.arange(1, len(mean) + 1)
            m, c = np.asarray(mean, dtype=float), np.asarray(ci, dtype=float)
            ax.plot(x, m, label=label, linewidth=1.5)
            ax.fill_between(x, m - c, m + c, alpha=0.2, linewidth=0)
        if mark is not None:
            ax.axvline(mark, color="grey", linestyle="--", linewidth=1, label=f"first {mark} frames")
        ax.set_xlabel("predicted frame")
        ax.set_ylabel(f"{metric} (dB)" if metric == "PSNR" else metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
