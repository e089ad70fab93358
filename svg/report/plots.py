"""The report's figures: per-epoch curves and PSNR per predicted frame, every run overlaid in its colour.

Each figure is saved as a PNG (the page inlines it). Only matplotlib's object API is used, never pyplot:
no global state, the Agg canvas, no display needed.
"""

from __future__ import annotations

from pathlib import Path

from svg.evaluation import COPY_LAST_PSNR, PSNR, VAL_COPY_LAST_PSNR, VAL_PSNR, VAL_PSNR_PER_FRAME
from svg.report.collect import Run

PLOTS = [
    ("val_psnr", "validation PSNR (dB)", VAL_PSNR, "dashed: copy-last-frame baseline of the same run"),
    ("kld", "KL divergence per step (epoch mean, nats)", "epoch/kld", ""),
    ("beta", "β (KL weight)", "beta", ""),
    ("tfr", "teacher-forcing ratio", "tfr", ""),
]
"""(file stem, title, metric key, note) of the per-epoch curves overlaid per run."""


def plot_curves(runs: list[Run], out_dir: Path) -> list[tuple[str, Path, str]]:
    """One PNG per curve, every run overlaid in its colour; (title, path, note) of those with data."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    made = []
    for stem, title, key, note in PLOTS:
        plotted = [r for r in runs if r.series(key)[0]]
        if not plotted:
            continue
        fig = Figure(figsize=(6.4, 3.8), layout="constrained")
        ax = fig.subplots()
        for run in plotted:
            x, y = run.series(key)
            ax.plot(
                x, y, color=run.color, label=run.label, linewidth=1.6, marker="o" if len(x) < 30 else None, markersize=3
            )
            if key == VAL_PSNR:
                bx, by = run.series(VAL_COPY_LAST_PSNR)
                ax.plot(bx, by, color=run.color, linestyle="--", linewidth=1, alpha=0.6)
        values = [v for r in plotted for v in r.series(key)[1]]
        if key == "epoch/kld" and min(values) > 0 and max(values) / min(values) > 50:
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title, fontsize=11)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
        path = out_dir / f"{stem}.png"
        fig.savefig(path, dpi=110)
        made.append((title, path, note))
    per_frame = [r for r in runs if isinstance(r.last(VAL_PSNR_PER_FRAME), list)]
    if per_frame:
        fig = Figure(figsize=(6.4, 3.8), layout="constrained")
        ax = fig.subplots()
        for run in per_frame:
            values = run.last(VAL_PSNR_PER_FRAME)
            ax.plot(range(1, len(values) + 1), values, color=run.color, label=run.label, linewidth=1.6)
        ax.set_xlabel("predicted frame")
        ax.set_xlim(1, max(len(r.last(VAL_PSNR_PER_FRAME)) for r in per_frame))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title("validation PSNR per predicted frame (last validation, dB)", fontsize=11)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
        path = out_dir / "psnr_per_frame.png"
        fig.savefig(path, dpi=110)
        made.append(("PSNR per predicted frame", path, "how fast each model's predictions drift from the truth"))
    return made


def plot_settings(settings: list, panels: list[tuple[str, str]], path: Path, title: str) -> Path:
    """One panel per (metric, axis label): each setting's mean over seeds with its 95% interval as an error bar
    (``svg.report.settings.Setting``), the seeds as dots; a seed-protocol PSNR panel also shows copy-last dashed."""
    from matplotlib.figure import Figure

    from svg.report.stats import mean_ci

    columns = min(2, len(panels))
    rows = -(-len(panels) // columns)
    fig = Figure(figsize=(5.6 * columns, 3.4 * rows), layout="constrained")
    fig.suptitle(title, fontsize=11)
    keys = list(settings[0].values) if settings else []
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    for ax, (metric, label) in zip(axes, panels, strict=False):
        for i, setting in enumerate(settings):
            values = list(setting.by_seed.get(metric, {}).values())
            if not values:
                continue
            iv = mean_ci(values)
            ax.errorbar([i], [iv.mean], yerr=[[iv.half or 0.0]], fmt="o", color="C0", capsize=4)
            ax.plot([i] * len(values), values, ".", color="0.55", markersize=4)
            base = list(setting.by_seed.get(metric.replace(f"/{PSNR}", f"/{COPY_LAST_PSNR}"), {}).values())
            if metric.endswith(f"/{PSNR}") and base:
                ax.hlines(sum(base) / len(base), i - 0.35, i + 0.35, colors="C3", linestyles="--", linewidth=1)
        ax.set_xticks(range(len(settings)), ["\n".join(map(str, s.values.values())) for s in settings], fontsize=7.5)
        ax.set_xlabel(" / ".join(keys), fontsize=8)
        ax.set_xlim(-0.6, len(settings) - 0.4)
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    fig.savefig(path, dpi=100)
    return path
