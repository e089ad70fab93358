"""The report page: one self-contained HTML file (results table, the study's tables over seeds, curves and GIFs
inlined as data URIs).

``write_report`` is the whole report: collect the runs, give each a colour and a label naming what sets it
apart, group the runs that differ only in their seed (``study``), draw the figures beside the page, write the page.
Nothing on it is fetched from anywhere, so it can be mailed or opened offline.
"""

from __future__ import annotations

import base64
import html
import re
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

from svg.evaluation import (
    ACTIVE_UNITS,
    FVD,
    LPIPS,
    LPIPS_BEST_OF_N,
    PSNR,
    PSNR_BEST_OF_N,
    SSIM,
    VAL_COPY_LAST_PSNR,
    VAL_PSNR,
)
from svg.report.collect import Run, collect, varied
from svg.report.plots import plot_curves
from svg.report.settings import Study, study
from svg.report.stats import Interval
from svg.values import is_number

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"]

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
span.n { color: #888; font-size: 11px; } th.ref { background: #eef3fb; }
td.better { color: #1a7f37; font-weight: 600; } td.worse { color: #b42318; font-weight: 600; }
ul.verdicts { background: #f7f9fc; border: 1px solid #dbe4f0; border-radius: 6px; padding: 10px 10px 10px 30px; }
ul.verdicts li { margin: 3px 0; }
"""

NOTE = (
    "val PSNR: mean over the predicted validation frames (seed protocol, images in [0, 1]); copy-last: the last "
    "context frame repeated, on the same sequences; active z: latent dimensions whose mean KL exceeds 0.01 nats "
    "(0: the KL collapsed). Test columns come from entrypoints/evaluate.py (first 10 predicted frames; LPIPS and FVD, "
    "lower is better, where it computed them). Bold: the best validation PSNR."
)

STUDY_NOTE = (
    "Runs that differ only in train.seed form one setting (finished runs only; runs sharing a seed are averaged "
    "first, so n counts seeds). Each cell: mean ± half-width of the 95% t-interval over seeds (t with n−1 degrees of "
    "freedom); n=1: the value alone, no interval. test/: each run's evaluation JSON (entrypoints/evaluate.py); val/: "
    "its last validation."
)

PAIRED_NOTE = (
    "Each setting minus the reference, seed by seed over the seeds both hold: mean ± 95% t-interval of the per-seed "
    "differences (n: shared seeds). Verdict: better / worse when the interval excludes 0 (PSNR and SSIM: higher is "
    "better; LPIPS and FVD: lower), higher / lower for numbers without a better direction, inconclusive when it holds "
    "0 or with one shared seed. The copy-last baseline is left out: it does not depend on the setting."
)

BOLD = re.compile(r"\*\*(.+?)\*\*")

VERDICT_NOTE = (
    "Decided by the rules fixed before the runs (docs/study.md, svg/study.py); intervals: 95% t-intervals over "
    "seeds, differences paired by seed; PSNR in dB. The tables below are the evidence."
)

GIF_NOTE = (
    "Each run's latest validation GIF: one row per sequence, the columns named in its header (ground truth, then "
    "the model's samples); the bar under each frame is green for given context frames and red for predicted ones."
)


def write_report(
    paths: list[Path],
    out_dir: Path,
    title: str | None = None,
    reference: str | None = None,
    verdicts: list[str] | None = None,
) -> Path:
    """Write out_dir/report.html (self-contained) and the curve PNGs beside it; returns the HTML path. ``reference``:
    the setting the paired differences are taken against (``k=v[,k=v]``; default the first setting). ``verdicts``:
    lines (``**bold**`` allowed) shown first, under "Verdict": a study's answer, above the evidence."""
    runs, searched, sweep = collect(paths)
    keys = varied(runs, searched)
    over_seeds = study(runs, keys, reference)
    _style(runs, keys)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = plot_curves(runs, out_dir)
    if sweep:
        title = title or f"Sweep {sweep['config'].get('name') or sweep['sweep_id']}"
        meta = _sweep_meta(sweep, runs)
    else:
        title = title or "Run comparison"
        meta = f"{len(runs)} run(s): " + ", ".join(html.escape(str(p)) for p in paths)
    meta += f" · generated {datetime.now().strftime('%Y-%m-%d %H:%M')}"
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1><p class='meta'>{meta}</p>",
        *verdict_list(verdicts),
        "<h2>Results</h2>",
        _table(runs, keys),
        f"<p class='note'>{NOTE}</p>",
        *_study(over_seeds),
        *_figures(figures),
        *_gifs(runs),
        "</body></html>",
    ]
    path = out_dir / "report.html"
    path.write_text("\n".join(parts))
    return path


def verdict_list(lines: list[str] | None, heading: str = "<h2>Verdict</h2>") -> list[str]:
    """The lines as an HTML list under ``heading``; ``**x**`` becomes bold."""
    if not lines:
        return []
    items = "".join("<li>" + BOLD.sub(r"<strong>\1</strong>", html.escape(x)) + "</li>" for x in lines)
    return [heading, f"<ul class='verdicts'>{items}</ul>", f"<p class='note'>{VERDICT_NOTE}</p>"]


def write_index(out: Path, title: str, sections: list[tuple[str, str, list[str], Path | None]]) -> Path:
    """out/index.html: per section (heading, link to its page, verdict lines, figure PNG) the answer at a glance."""
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1><p class='meta'>generated {datetime.now().strftime('%Y-%m-%d %H:%M')}</p>",
    ]
    for heading, link, lines, figure in sections:
        parts += verdict_list(lines, f"<h2><a href='{html.escape(link, quote=True)}'>{html.escape(heading)}</a></h2>")
        if figure is not None and figure.exists():
            parts.append(f"<figure><img src='{_data_uri(figure, 'image/png')}' alt='{html.escape(heading)}'></figure>")
    path = out / "index.html"
    path.write_text("\n".join([*parts, "</body></html>"]))
    return path


def _style(runs: list[Run], keys: list[str]) -> None:
    """Each run's colour and its label: the name and the varied config values."""
    short = _short(keys)
    for i, run in enumerate(runs):
        run.color = COLORS[i % len(COLORS)]
        shown = ", ".join(f"{short[k]}={_fmt(run.config[k], 6)}" for k in keys if k in run.config)
        run.label = f"{run.name}: {shown}" if shown else run.name


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


def _sweep_meta(sweep: dict, runs: list[Run]) -> str:
    """Source, method, metric, id and trial states of a sweep, escaped."""
    config = sweep["config"]
    metric = config.get("metric") or {}
    facts = [sweep.get("source") or "", f"method {config['method']}"]
    facts += [f"metric {metric['name']} ({metric.get('goal', 'minimize')})"] if metric.get("name") else []
    facts += [f"sweep id {sweep['sweep_id']}", ", ".join(f"{n} {s}" for s, n in Counter(r.state for r in runs).items())]
    return " · ".join(html.escape(f) for f in facts if f)


TEST_COLUMNS = [(PSNR, "test PSNR", 2), (SSIM, "test SSIM", 3), (PSNR_BEST_OF_N, "test PSNR best of N", 2)]
PERCEPTUAL_COLUMNS = [
    (LPIPS, "test LPIPS", 3),
    (LPIPS_BEST_OF_N, "test LPIPS best of N", 3),
    (FVD, "test FVD", 1),
]
"""Shown where some run's evaluation computed them."""


def _table(runs: list[Run], keys: list[str]) -> str:
    has_eval = any(r.evaluation for r in runs)
    test_columns = TEST_COLUMNS + [c for c in PERCEPTUAL_COLUMNS if any(c[0] in (r.evaluation or {}) for r in runs)]
    has_error = any(r.error for r in runs)
    has_state = any(r.state for r in runs)
    best = max((r for r in runs if r.best_psnr is not None), key=lambda r: r.best_psnr, default=None)
    head = ["", "run"] + (["state"] if has_state else []) + keys
    head += ["best val PSNR", "final val PSNR", "copy-last", "final − copy-last", "val SSIM", "active z", "epochs"]
    if has_eval:
        head += [name for _, name, _ in test_columns]
    if has_error:
        head.append("error")
    rows = []
    for run in runs:
        final, base = run.last(VAL_PSNR), run.last(VAL_COPY_LAST_PSNR)
        margin = final - base if is_number(final) and is_number(base) else None
        cells = [
            f'<td class="l"><span class="sw" style="background:{run.color}"></span></td>',
            f'<td class="l">{html.escape(run.name)}</td>',
        ]
        if has_state:
            state = run.state or "–"
            cells.append(f'<td class="l state-{html.escape(state)}">{html.escape(state)}</td>')
        cells += [f'<td class="l">{html.escape(_fmt(run.config.get(k), 6))}</td>' for k in keys]
        numbers = [
            run.best_psnr,
            final,
            base,
            margin,
            run.last(f"val/{SSIM}"),
            run.last(f"kl/{ACTIVE_UNITS}"),
            run.last("epoch"),
        ]
        cells += [f"<td>{_fmt(v, 3 if i == 4 else 2)}</td>" for i, v in enumerate(numbers)]
        if has_eval:
            ev = run.evaluation or {}
            title = html.escape(ev.get("file", ""), quote=True)
            for key, _, digits in test_columns:
                cells.append(f'<td title="{title}">{_fmt(ev.get(key), digits)}</td>')
        if has_error:
            cells.append(f'<td class="err">{html.escape(run.error or "")}</td>')
        rows.append(f'<tr class="{"best" if run is best else ""}">{"".join(cells)}</tr>')
    left = set(head[: head.index("best val PSNR")]) | {"error"}
    header = "".join(f'<th class="{"l" if h in left else ""}">{html.escape(h)}</th>' for h in head)
    return f"<table><thead><tr>{header}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _digits(metric: str) -> int:
    """SSIM and LPIPS live in [0, 1]: three decimals; dB and the rest: two."""
    return 3 if SSIM in metric or LPIPS in metric else 2


def _interval(iv: Interval | None, digits: int, signed: bool = False) -> str:
    """``mean ± half`` and n; n=1: the value and n=1. ``signed``: a difference (+ shown, n in its own column)."""
    if iv is None:
        return "–"
    mean = ("+" if signed and iv.mean > 0 else "") + _fmt(float(iv.mean), digits)
    body = mean if iv.half is None else f"{mean} ± {_fmt(float(iv.half), digits)}"
    return html.escape(body) if signed else f"{html.escape(body)} <span class='n'>n={iv.n}</span>"


def _study(found: Study | None) -> list[str]:
    """The per-setting table (a column per setting, a row per metric) and the paired differences with verdicts."""
    if found is None:
        return []
    head = "".join(
        f"<th class='{'ref' if s is found.reference else ''}'>{html.escape(s.label)}"
        f"{' (reference)' if s is found.reference else ''}</th>"
        for s in found.settings
    )
    rows = []
    for metric in found.metrics:
        digits = _digits(metric)
        cells = "".join(f"<td>{_interval(s.interval(metric), digits)}</td>" for s in found.settings)
        rows.append(f"<tr><td class='l'>{html.escape(metric)}</td>{cells}</tr>")
    parts = [
        "<h2>Settings over seeds</h2>",
        f"<table class='settings'><thead><tr><th class='l'>metric</th>{head}</tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>",
        f"<p class='note'>{STUDY_NOTE}</p>",
    ]
    if found.paired:
        rows = [
            f"<tr><td class='l'>{html.escape(p.setting)}</td><td class='l'>{html.escape(p.metric)}</td>"
            f"<td>{_interval(p.diff, _digits(p.metric), signed=True)}</td><td>{p.diff.n}</td>"
            f"<td class='l {p.verdict}'>{p.verdict}</td></tr>"
            for p in found.paired
        ]
        parts += [
            f"<h2>Paired differences against {html.escape(found.reference.label)}</h2>",
            "<table class='paired'><thead><tr><th class='l'>setting</th><th class='l'>metric</th>"
            "<th>difference (setting − reference)</th><th>n seeds</th><th class='l'>verdict</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>",
            f"<p class='note'>{PAIRED_NOTE}</p>",
        ]
    return parts


def _figures(figures: list[tuple[str, Path, str]]) -> list[str]:
    if not figures:
        return []
    parts = ["<h2>Curves</h2><div class='plots'>"]
    for caption, path, note in figures:
        parts.append(
            f"<figure><img src='{_data_uri(path, 'image/png')}' alt='{html.escape(caption, quote=True)}'>"
            f"<figcaption>{html.escape(path.name)}{' · ' + html.escape(note) if note else ''}</figcaption></figure>"
        )
    return [*parts, "</div>"]


def _gifs(runs: list[Run]) -> list[str]:
    with_gif = [r for r in runs if r.gif]
    if not with_gif:
        return []
    parts = [f"<h2>Predictions</h2><p class='note'>{GIF_NOTE}</p><div class='gifs'>"]
    for run in with_gif:
        parts.append(
            f"<figure><img src='{_data_uri(run.gif, 'image/gif')}' {_gif_size(run.gif)} "
            f"alt='{html.escape(run.label, quote=True)}'>"
            f"<figcaption><span class='sw' style='background:{run.color}'></span> {html.escape(run.label)} · "
            f"{html.escape(run.gif.name)}</figcaption></figure>"
        )
    return [*parts, "</div>"]


def _gif_size(path: Path, target: int = 560) -> str:
    """width/height attributes enlarging a small GIF by a whole factor (pixels stay sharp, see the CSS)."""
    from PIL import Image

    with Image.open(path) as image:
        width, height = image.size
    scale = max(1, min(3, target // max(width, 1)))
    return f"width='{width * scale}' height='{height * scale}'"


def _data_uri(path: Path, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"
