"""Compare runs offline: one self-contained HTML page (plots and GIFs inlined) plus the plots as PNGs.

Everything is read from the run folders train.py writes (config.yaml, metrics.jsonl, media/epochNNNN.gif, the
evaluator's JSON) and, for a sweep folder, from sweep.json (parameters, states, and the trials that failed before
writing anything). No W&B account or server is involved: this is what a person without one looks at.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from svg.errors import SvgError
from svg.sweep import SWEEP_FILE, read_metrics

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"]

PLOTS = [
    ("val_psnr", "validation PSNR (dB)", "val/psnr", "dashed: copy-last-frame baseline of the same run"),
    ("kld", "KL divergence per step (epoch mean, nats)", "epoch/kld", ""),
    ("beta", "β (KL weight)", "beta", ""),
    ("tfr", "teacher-forcing ratio", "tfr", ""),
]
"""(file stem, title, metric key, note) of the per-epoch curves overlaid per run."""


class ReportError(SvgError):
    """Nothing to report on, or an unreadable run folder."""


@dataclass
class Run:
    """One run folder (or a sweep trial that may never have written one)."""

    name: str
    path: Path
    config: dict[str, Any] = field(default_factory=dict)
    records: list[dict] = field(default_factory=list)
    state: str | None = None
    error: str | None = None
    gif: Path | None = None
    evaluation: dict | None = None
    color: str = COLORS[0]
    label: str = ""

    def series(self, key: str) -> tuple[list[float], list[float]]:
        """(epochs, values) of a per-epoch key."""
        points = [(r["epoch"], r[key]) for r in self.records if _number(r.get(key)) and _number(r.get("epoch"))]
        return [p[0] for p in points], [p[1] for p in points]

    def last(self, key: str) -> Any:
        return next((r[key] for r in reversed(self.records) if r.get(key) is not None), None)

    @property
    def best_psnr(self) -> float | None:
        values = [r["val/psnr"] for r in self.records if _number(r.get("val/psnr"))]
        return max(values) if values else None


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _flat(tree: dict) -> dict[str, Any]:
    """config.yaml as dotted keys, without validating it: a run from an older config schema still reports."""
    return {f"{s}.{k}": v for s, sec in tree.items() if isinstance(sec, dict) for k, v in sec.items()}


def _evaluation(run_dir: Path) -> dict | None:
    """The evaluator's test-split JSON for this run (RUN/eval/*.json, or eval*.json beside the checkpoints);
    the one for best.pt when there are several, else the newest."""
    found = []
    for path in [*run_dir.glob("eval/*.json"), *run_dir.glob("checkpoints/eval*.json"), *run_dir.glob("eval*.json")]:
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(data, dict) and _number(data.get("psnr")) and data.get("split", "test") == "test":
            found.append((Path(str(data.get("checkpoint", ""))).stem == "best", path.stat().st_mtime, path, data))
    if not found:
        return None
    *_, path, data = max(found, key=lambda f: f[:2])
    return {**data, "file": str(path.relative_to(run_dir))}


def read_run(path: Path, name: str | None = None) -> Run:
    run = Run(name=name or path.name, path=path)
    config_path = path / "config.yaml"
    if config_path.exists():
        try:
            run.config = _flat(yaml.safe_load(config_path.read_text()) or {})
        except yaml.YAMLError as e:
            raise ReportError(f"{config_path}: not valid YAML ({str(e).splitlines()[0]})") from None
    run.records = read_metrics(path / "metrics.jsonl")
    gifs = sorted((path / "media").glob("epoch*.gif"))
    run.gif = gifs[-1] if gifs else None
    run.evaluation = _evaluation(path)
    return run


def _is_run(path: Path) -> bool:
    return (path / "metrics.jsonl").exists() or (path / "config.yaml").exists()


def collect(paths: list[Path]) -> tuple[list[Run], list[str], dict | None]:
    """Runs from sweep folders, run folders and folders of run folders; the sweep's searched parameters (shown
    first in the table); the sweep record when exactly one sweep was given."""
    runs: list[Run] = []
    searched: list[str] = []
    sweeps = []
    for path in paths:
        if (path / SWEEP_FILE).exists():
            record = json.loads((path / SWEEP_FILE).read_text())
            sweeps.append(record)
            for name, spec in record["config"].get("parameters", {}).items():
                if "value" not in spec and name not in searched:
                    searched.append(name)
            for trial in record["trials"]:
                run = read_run(path / trial["id"], trial["id"])
                run.config = {**run.config, **trial["params"]}
                run.state, run.error = trial["state"], trial.get("error")
                runs.append(run)
        elif _is_run(path):
            runs.append(read_run(path))
        elif path.is_dir() and any(_is_run(p) for p in path.iterdir()):
            runs += [read_run(p) for p in sorted(path.iterdir()) if p.is_dir() and _is_run(p)]
        else:
            raise ReportError(
                f"{path}: no sweep.json, run folder (config.yaml, metrics.jsonl) or folder of run folders"
            )
    if not runs:
        raise ReportError("no runs to report on")
    names = [r.name for r in runs]
    for run in runs:
        if names.count(run.name) > 1:
            run.name = f"{run.path.parent.name}/{run.name}"
    return runs, searched, sweeps[0] if len(sweeps) == 1 else None


def varied(runs: list[Run], searched: list[str]) -> list[str]:
    """Config keys whose value differs between runs, the sweep's searched parameters first."""
    keys = list(searched)
    for run in runs:
        keys += [k for k in run.config if k not in keys]
    out = []
    for key in keys:
        values = {json.dumps(r.config[key], sort_keys=True) for r in runs if key in r.config}
        if len(values) > 1 or (key in searched and values):
            out.append(key)
    return out


def _short(keys: list[str]) -> dict[str, str]:
    """kl.mode -> mode, unless two keys would share a short name."""
    tails = [k.split(".")[-1] for k in keys]
    return {k: t if tails.count(t) == 1 else k for k, t in zip(keys, tails, strict=True)}


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) >= 0.01 or value == 0 else f"{value:.2g}"
    return str(value)


# -- figures -------------------------------------------------------------------------------------


def plot_curves(runs: list[Run], out_dir: Path) -> list[tuple[str, Path, str]]:
    """One PNG per curve, every run overlaid in its colour; (title, path, note) of those with data."""
    from matplotlib.figure import Figure  # no pyplot: no global state, Agg canvas, no display needed
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
            ax.plot(x, y, color=run.color, label=run.label, linewidth=1.6, marker="o" if len(x) < 30 else None,
                    markersize=3)  # fmt: skip
            if key == "val/psnr":
                bx, by = run.series("val/psnr_copy_last")
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
    per_frame = [r for r in runs if isinstance(r.last("val/psnr_per_frame"), list)]
    if per_frame:
        fig = Figure(figsize=(6.4, 3.8), layout="constrained")
        ax = fig.subplots()
        for run in per_frame:
            values = run.last("val/psnr_per_frame")
            ax.plot(range(1, len(values) + 1), values, color=run.color, label=run.label, linewidth=1.6)
        ax.set_xlabel("predicted frame")
        ax.set_xlim(1, max(len(r.last("val/psnr_per_frame")) for r in per_frame))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title("validation PSNR per predicted frame (last validation, dB)", fontsize=11)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
        path = out_dir / "psnr_per_frame.png"
        fig.savefig(path, dpi=110)
        made.append(("PSNR per predicted frame", path, "how fast each model's predictions drift from the truth"))
    return made


def _gif_size(path: Path, target: int = 560) -> str:
    """width/height attributes enlarging a small GIF by a whole factor (pixels stay sharp, see the CSS)."""
    from PIL import Image

    with Image.open(path) as image:
        width, height = image.size
    scale = max(1, min(3, target // max(width, 1)))
    return f"width='{width * scale}' height='{height * scale}'"


def _data_uri(path: Path, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


# -- the page ------------------------------------------------------------------------------------

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px auto; max-width: 1320px;
       padding: 0 20px; color: #222; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; margin-top: 28px; }
.meta { color: #666; margin-top: 0; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { padding: 4px 10px; border-bottom: 1px solid #e3e3e3; text-align: right; white-space: nowrap; }
th { background: #f6f6f6; font-weight: 600; }
td.l, th.l { text-align: left; }
tr.best td { font-weight: 600; background: #f3f9f1; }
td.err { color: #a33; white-space: normal; max-width: 420px; text-align: left; font-size: 12px; }
.sw { display: inline-block; width: 12px; height: 12px; border-radius: 2px; vertical-align: -1px; }
.state-failed { color: #a33; } .state-stopped { color: #a60; } .state-running { color: #36c; }
.plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(600px, 1fr)); gap: 12px; }
figure { margin: 0; border: 1px solid #e3e3e3; border-radius: 6px; padding: 8px; background: #fff; }
figure img { max-width: 100%; height: auto; display: block; }
.gifs img { image-rendering: pixelated; }
figcaption { font-size: 12px; color: #555; margin-top: 4px; }
.gifs { display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start; }
.note { color: #666; font-size: 12px; }
"""


def _table(runs: list[Run], keys: list[str]) -> str:
    has_eval = any(r.evaluation for r in runs)
    has_error = any(r.error for r in runs)
    has_state = any(r.state for r in runs)
    best = max((r for r in runs if r.best_psnr is not None), key=lambda r: r.best_psnr, default=None)
    head = ["", "run"] + (["state"] if has_state else []) + keys
    head += ["best val PSNR", "final val PSNR", "copy-last", "final − copy-last", "val SSIM", "active z", "epochs"]
    if has_eval:
        head += ["test PSNR", "test SSIM", "test PSNR best of N"]
    if has_error:
        head.append("error")
    rows = []
    for run in runs:
        final, base = run.last("val/psnr"), run.last("val/psnr_copy_last")
        margin = final - base if _number(final) and _number(base) else None
        cells = [f'<td class="l"><span class="sw" style="background:{run.color}"></span></td>',
                 f'<td class="l">{html.escape(run.name)}</td>']  # fmt: skip
        if has_state:
            state = run.state or "–"
            cells.append(f'<td class="l state-{html.escape(state)}">{html.escape(state)}</td>')
        cells += [f'<td class="l">{html.escape(_fmt(run.config.get(k), 6))}</td>' for k in keys]
        numbers = [run.best_psnr, final, base, margin, run.last("val/ssim"), run.last("kl/active_units"),
                   run.last("epoch")]  # fmt: skip
        cells += [f"<td>{_fmt(v, 3 if i == 4 else 2)}</td>" for i, v in enumerate(numbers)]
        if has_eval:
            ev = run.evaluation or {}
            title = html.escape(ev.get("file", ""), quote=True)
            for key, digits in (("psnr", 2), ("ssim", 3), ("psnr_best_of_n", 2)):
                cells.append(f'<td title="{title}">{_fmt(ev.get(key), digits)}</td>')
        if has_error:
            cells.append(f'<td class="err">{html.escape(run.error or "")}</td>')
        rows.append(f'<tr class="{"best" if run is best else ""}">{"".join(cells)}</tr>')
    left = set(head[: head.index("best val PSNR")]) | {"error"}
    header = "".join(f'<th class="{"l" if h in left else ""}">{html.escape(h)}</th>' for h in head)
    return f"<table><thead><tr>{header}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def write_report(paths: list[Path], out_dir: Path, title: str | None = None) -> Path:
    """Write out_dir/report.html (self-contained) and the curve PNGs beside it; returns the HTML path."""
    runs, searched, sweep = collect(paths)
    keys = varied(runs, searched)
    short = _short(keys)
    for i, run in enumerate(runs):
        run.color = COLORS[i % len(COLORS)]
        shown = ", ".join(f"{short[k]}={_fmt(run.config[k], 6)}" for k in keys if k in run.config)
        run.label = f"{run.name}: {shown}" if shown else run.name
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = plot_curves(runs, out_dir)

    if sweep:
        config = sweep["config"]
        title = title or f"Sweep {config.get('name') or sweep['sweep_id']}"
        metric = config.get("metric") or {}
        facts = [sweep.get("source") or "", f"method {config['method']}"]
        facts += [f"metric {metric['name']} ({metric.get('goal', 'minimize')})"] if metric.get("name") else []
        facts += [
            f"sweep id {sweep['sweep_id']}",
            ", ".join(f"{n} {s}" for s, n in Counter(r.state for r in runs).items()),
        ]
        meta = " · ".join(html.escape(f) for f in facts if f)
    else:
        title = title or "Run comparison"
        meta = f"{len(runs)} run(s): " + ", ".join(html.escape(str(p)) for p in paths)
    meta += f" · generated {datetime.now().strftime('%Y-%m-%d %H:%M')}"

    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1><p class='meta'>{meta}</p>",
        "<h2>Results</h2>",
        _table(runs, keys),
        "<p class='note'>val PSNR: mean over the predicted validation frames (seed protocol, images in [0, 1]); "
        "copy-last: the last context frame repeated, on the same sequences; active z: latent dimensions whose mean "
        "KL exceeds 0.01 nats (0: the KL collapsed). Test columns come from entrypoints/evaluate.py "
        "(first 10 predicted frames). Bold: the best validation PSNR.</p>",
    ]
    if figures:
        parts.append("<h2>Curves</h2><div class='plots'>")
        for caption, path, note in figures:
            parts.append(
                f"<figure><img src='{_data_uri(path, 'image/png')}' alt='{html.escape(caption, quote=True)}'>"
                f"<figcaption>{html.escape(path.name)}{' · ' + html.escape(note) if note else ''}</figcaption></figure>"
            )
        parts.append("</div>")
    with_gif = [r for r in runs if r.gif]
    if with_gif:
        parts.append(
            "<h2>Predictions</h2><p class='note'>Each run's latest validation GIF: one row per sequence, the "
            "columns named in its header (ground truth, then the model's samples); the bar under each frame is "
            "green for given context frames and red for predicted ones.</p><div class='gifs'>"
        )
        for run in with_gif:
            parts.append(
                f"<figure><img src='{_data_uri(run.gif, 'image/gif')}' {_gif_size(run.gif)} "
                f"alt='{html.escape(run.label, quote=True)}'>"
                f"<figcaption><span class='sw' style='background:{run.color}'></span> {html.escape(run.label)} · "
                f"{html.escape(run.gif.name)}</figcaption></figure>"
            )
        parts.append("</div>")
    parts.append("</body></html>")
    path = out_dir / "report.html"
    path.write_text("\n".join(parts))
    return path
