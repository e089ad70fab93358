"""The study: the seed report's three questions and one of the project's own, each a sweep YAML over seeds
(``sweeps/study-*.yaml``) run offline, every finished trial's final checkpoint scored on the test split under the
``seed`` and ``svg`` protocols, one report page per study, and the verdicts, decided by the rules below, which
were written before any study run (docs/study.md states them for readers).

Resumable at every level: a sweep goes on from its ``sweep.json`` (interrupted trials resume from their
checkpoints), an evaluation already written for the trial's final checkpoint is kept.

Rules (M: the seed protocol's test PSNR, mean over the first 10 predicted frames; intervals are 95% t-intervals
over seeds, paired by seed between settings; ``svg.report.stats``):
- annealing, "monotonic beats cyclical", at each beta_max: reproduced if the paired interval of monotonic minus
  cyclical in M lies above 0; not reproduced if it lies below the claimed 0.44 dB gain's CLAIM_MARGIN (0.2 dB);
  else inconclusive.
- teacher forcing: a start fails if M's mean interval lies below copy-last, or its paired interval against the
  best start lies below -2 dB; it succeeds if it lies above copy-last and above -2 dB; else unclear. "A decay from
  epoch 0 fails while a start at 4% succeeds": reproduced if both hold, not reproduced if start 0 succeeds, else
  inconclusive.
- learning rate, "it matters": at the full budget, reproduced if the paired interval of 2e-3 minus 2e-4 in M
  excludes 0, not reproduced if it lies within +-CLAIM_MARGIN, else inconclusive; the half budget's interval tells
  "slower" (the gap shrinks with budget) from "worse".
- beta_max: no claim; per value the active units, KL and best-of-100 minus mean-of-100 (svg protocol); the
  posterior counts as collapsed where the mean active units are below 1.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from svg.evaluation import ACTIVE_UNITS, BEST_MINUS_MEAN, COPY_LAST_PSNR, KL, PERCEPTUAL, PSNR, PSNR_BEST_OF_N
from svg.report.collect import collect, varied
from svg.report.html import write_index, write_report
from svg.report.plots import plot_settings
from svg.report.settings import Setting, group
from svg.report.stats import Interval, mean_ci, minimum_detectable_effect, paired_diff, seeds_for, t_quantile
from svg.sweeps import SWEEP_FILE, SweepRunner, load_sweep

SWEEPS = Path(__file__).resolve().parent.parent / "sweeps"
PROTOCOLS = ("seed", "svg")
CLAIM_MARGIN = 0.2  # dB: an advantage below this is no advantage
CLAIM_HALF_WIDTH = 0.3  # dB: the paired interval's half-width a study's seeds are chosen for
FAIL_MARGIN = 2.0  # dB under the best teacher-forcing start: a failure (the issue's rule)


def _test(protocol: str, figure: str) -> str:
    """The W&B summary key of an evaluation figure under a protocol."""
    return f"test/{protocol}/{figure}"


M, COPY_LAST = _test("seed", PSNR), _test("seed", COPY_LAST_PSNR)
BEST_OF_100, GAIN = _test("svg", PSNR_BEST_OF_N), _test("svg", BEST_MINUS_MEAN)
UNITS, KL_NATS = _test("svg", ACTIVE_UNITS), _test("svg", KL)
SUMMARY = [  # the per-setting columns of RESULTS.md
    (M, "PSNR (seed)"),
    (COPY_LAST, "copy-last (seed)"),
    (_test("seed", PSNR_BEST_OF_N), "best of 10 (seed)"),
    (BEST_OF_100, "best of 100 (svg)"),
    (GAIN, "best − mean (svg)"),
    (UNITS, "active units"),
    (KL_NATS, "KL nats/step"),
]
PANELS = [
    (M, "test PSNR, 10 frames, seed protocol (dB)\nred dashes: copy-last"),
    (BEST_OF_100, "best of 100, 28 frames, svg protocol (dB)"),
    (GAIN, "best of 100 minus mean (dB)"),
    (UNITS, "active latent units"),
]


def run_study(
    out: Path,
    studies: tuple[str, ...],
    parallel: int,
    sequences: dict[str, int | None],
    sweeps: Path = SWEEPS,
    say=print,
) -> dict:
    """Run (or resume) each study's sweep (``sweeps/study-<name>.yaml``) and evaluate its finished trials on the first
    ``sequences[protocol]`` test sequences (None: all); then, for every study in OUT so far, its report page and
    figure, and the verdicts, returned and written to OUT/results.json, OUT/RESULTS.md and OUT/index.html."""
    for name in studies:
        folder = out / name
        config = load_sweep(sweeps / f"study-{name}.yaml")
        say(f"study {name}: sweep in {folder}")
        runner = SweepRunner(config, folder, parallel=parallel, resume=(folder / SWEEP_FILE).exists(), source=name)
        record = runner.run()
        for trial in record["trials"]:
            if trial["state"] == "finished":
                evaluate_trial(folder / trial["id"], sequences, say)
    found = {name: _settings(out / name) for name in STUDIES if (out / name).is_dir()}
    results = {name: STUDIES[name].decide(settings) for name, settings in found.items()}
    tables = {name: summary(settings) for name, settings in found.items()}
    for name, settings in found.items():
        title = f"study-{name}"
        write_report(
            [out / name],
            out / name / "report",
            f"Study: {title}",
            STUDIES[name].reference_label(settings),
            lines(name, results[name]),
        )
        plot_settings(settings, PANELS, out / f"{title}.png", f"{title}: mean ± 95% over seeds")
    (out / "results.json").write_text(json.dumps({"verdicts": results, "settings": tables}, indent=1) + "\n")
    (out / "RESULTS.md").write_text(markdown(results, tables))
    sections = [
        (f"{n}: sweeps/study-{n}.yaml", f"{n}/report/report.html", lines(n, r), out / f"study-{n}.png")
        for n, r in results.items()
    ]
    write_index(out, "svg-sweeps study: verdicts", sections)
    return results


def evaluate_trial(run_dir: Path, sequences: dict[str, int | None], say=print) -> None:
    """Both protocols on the trial's final checkpoint, unless already written for this very checkpoint."""
    from svg.scoring import EvaluationOptions, evaluate_checkpoint

    checkpoint = run_dir / "checkpoints" / "last.pt"
    for protocol in PROTOCOLS:
        path = run_dir / "eval" / f"test-{protocol}.json"
        if path.exists() and path.stat().st_mtime >= checkpoint.stat().st_mtime:
            continue
        limit = sequences.get(protocol)
        say(f"  evaluate {run_dir.name} ({protocol} protocol{f', {limit} sequences' if limit else ''})")
        evaluate_checkpoint(checkpoint, path, EvaluationOptions(protocol=protocol, limit=limit, progress=False))


def _settings(folder: Path) -> list[Setting]:
    runs, searched, _ = collect([folder])
    return group(runs, varied(runs, searched))


def _find(settings: list[Setting], **values) -> Setting | None:
    return next((s for s in settings if all(s.values.get(k) == v for k, v in values.items())), None)


def _iv(interval: Interval | None) -> dict | None:
    return None if interval is None else {"mean": interval.mean, "half": interval.half, "n": interval.n}


def _above(interval: Interval | None, x: float) -> bool:
    return interval is not None and interval.low is not None and interval.low > x


def _below(interval: Interval | None, x: float) -> bool:
    return interval is not None and interval.high is not None and interval.high < x


def _diff(a: Setting | None, b: Setting | None, metric: str = M) -> Interval | None:
    return None if a is None or b is None else paired_diff(a.by_seed.get(metric, {}), b.by_seed.get(metric, {}))


def annealing(settings: list[Setting]) -> dict:
    out = {}
    for beta in sorted({s.values.get("kl.beta_max") for s in settings}):
        d = _diff(
            _find(settings, **{"kl.beta_max": beta, "kl.mode": "monotonic"}),
            _find(settings, **{"kl.beta_max": beta, "kl.mode": "cyclical"}),
        )
        verdict = "reproduced" if _above(d, 0) else "not reproduced" if _below(d, CLAIM_MARGIN) else "inconclusive"
        out[f"beta_max={beta}"] = {"monotonic_minus_cyclical": _iv(d), "verdict": verdict}
    return out


def teacher_forcing(settings: list[Setting]) -> dict:
    means = {s.values.get("tfr.start_decay_epoch"): s for s in settings if s.by_seed.get(M)}
    if not means:
        return {"verdict": "inconclusive", "starts": {}}
    best = max(means.values(), key=lambda s: mean_ci(list(s.by_seed[M].values())).mean)
    starts = {}
    for start, setting in means.items():
        level = mean_ci(list(setting.by_seed[M].values()))
        copy_last = mean_ci(list(setting.by_seed.get(COPY_LAST, {0: float("nan")}).values())).mean
        gap = _diff(setting, best) if setting is not best else None
        fails = _below(level, copy_last) or _below(gap, -FAIL_MARGIN)
        succeeds = _above(level, copy_last) and (setting is best or _above(gap, -FAIL_MARGIN))
        outcome = "fails" if fails else "succeeds" if succeeds else "unclear"
        starts[str(start)] = {"psnr": _iv(level), "copy_last": copy_last, "minus_best": _iv(gap), "outcome": outcome}
    at_once, early = starts.get("0.0", starts.get("0", {})), starts.get("0.4", {})
    if at_once.get("outcome") == "fails" and early.get("outcome") == "succeeds":
        verdict = "reproduced"
    elif at_once.get("outcome") == "succeeds":
        verdict = "not reproduced"
    else:
        verdict = "inconclusive"
    return {"verdict": verdict, "best_start": best.values.get("tfr.start_decay_epoch"), "starts": starts}


def learning_rate(settings: list[Setting]) -> dict:
    budgets = sorted({s.values.get("train.epochs") for s in settings})
    gaps = {
        budget: _diff(
            _find(settings, **{"train.epochs": budget, "optim.lr": 0.002}),
            _find(settings, **{"train.epochs": budget, "optim.lr": 0.0002}),
        )
        for budget in budgets
    }
    full = gaps[budgets[-1]] if budgets else None
    if full is not None and (_above(full, 0) or _below(full, 0)):
        verdict = "reproduced"
    elif _above(full, -CLAIM_MARGIN) and _below(full, CLAIM_MARGIN):
        verdict = "not reproduced"
    else:
        verdict = "inconclusive"
    return {"verdict": verdict, "lr_2e-3_minus_2e-4": {f"epochs={b}": _iv(g) for b, g in gaps.items()}}


def beta_range(settings: list[Setting]) -> dict:
    rows = {}
    for setting in sorted(settings, key=lambda s: -s.values.get("kl.beta_max", 0)):
        figures = {
            key: _iv(mean_ci(list(setting.by_seed[metric].values())))
            for key, metric in (
                (ACTIVE_UNITS, UNITS),
                (KL, KL_NATS),
                (BEST_MINUS_MEAN, GAIN),
                (PSNR, M),
                ("psnr_best_of_100", BEST_OF_100),
            )
            if setting.by_seed.get(metric)
        }
        units = figures.get(ACTIVE_UNITS)
        rows[f"beta_max={setting.values.get('kl.beta_max')}"] = {
            **figures,
            "collapsed": units is not None and units["mean"] < 1,
        }
    return rows


def _fmt(iv: dict | None, signed: bool = True) -> str:
    return _plain(iv, signed) + ("" if iv is None else f" (n={iv['n']})")


def _fmt_diff(iv: dict | None) -> str:
    """A paired difference with what its seeds can resolve: the minimum detectable effect (80% power) and the
    seeds a half-width of CLAIM_HALF_WIDTH would take at the spread these seeds showed."""
    if iv is None or iv["half"] is None:
        return _fmt(iv)
    sd = iv["half"] * math.sqrt(iv["n"]) / t_quantile(0.975, iv["n"] - 1)
    resolves = f"detects ≥ {minimum_detectable_effect(sd, iv['n']):.2f} dB"
    try:
        needs = f"±{CLAIM_HALF_WIDTH} dB takes {seeds_for(sd, CLAIM_HALF_WIDTH)} seeds"
    except ValueError:
        needs = f"±{CLAIM_HALF_WIDTH} dB takes over 1,000 seeds"
    return f"{_plain(iv, signed=True)} (n={iv['n']}, {resolves}; {needs})"


def annealing_lines(result: dict) -> list[str]:
    return [
        f"{k}: monotonic − cyclical {_fmt_diff(v['monotonic_minus_cyclical'])} dB: **{v['verdict']}**"
        for k, v in result.items()
    ]


def teacher_forcing_lines(result: dict) -> list[str]:
    return [f"verdict: **{result['verdict']}** (best start {result.get('best_start')})"] + [
        f"start {k}: PSNR {_fmt(v['psnr'], signed=False)}, copy-last {v['copy_last']:.2f}, "
        f"minus best {_fmt_diff(v['minus_best'])}: {v['outcome']}"
        for k, v in result["starts"].items()
    ]


def learning_rate_lines(result: dict) -> list[str]:
    return [f"verdict: **{result['verdict']}**"] + [
        f"{k}: 2e-3 − 2e-4 {_fmt_diff(v)} dB" for k, v in result["lr_2e-3_minus_2e-4"].items()
    ]


def beta_range_lines(result: dict) -> list[str]:
    return [
        f"{k}: "
        + ", ".join(f"{m} {_fmt(v, m == BEST_MINUS_MEAN)}" for m, v in row.items() if m != "collapsed")
        + (" (collapsed)" if row["collapsed"] else "")
        for k, row in result.items()
    ]


@dataclass(frozen=True)
class Study:
    """One question: its sweep (``sweeps/study-<name>.yaml``), the setting its report pairs every other setting
    against (the one the question starts from, as parameter values), the rule that decides it and its result as
    lines (``**verdict**`` in bold) for RESULTS.md and the report pages."""

    name: str
    reference: dict[str, Any]
    decide: Callable[[list[Setting]], dict]
    describe: Callable[[dict], list[str]]

    def reference_label(self, settings: list[Setting]) -> str | None:
        """The reference setting's label where it has finished runs (else the report takes the first setting)."""
        found = _find(settings, **self.reference)
        return None if found is None else found.label


STUDIES = {  # the seed report's three questions first, then the project's own
    s.name: s
    for s in (
        Study("annealing", {"kl.beta_max": 1e-05, "kl.mode": "monotonic"}, annealing, annealing_lines),
        Study("tfr", {"tfr.start_decay_epoch": 0.4}, teacher_forcing, teacher_forcing_lines),  # the seed's start
        Study("lr", {"optim.lr": 0.0002, "train.epochs": 10}, learning_rate, learning_rate_lines),  # the seed's lr
        Study("beta", {"kl.beta_max": 1e-05}, beta_range, beta_range_lines),
    )
}


def lines(name: str, result: dict) -> list[str]:
    """One study's verdicts and numbers as lines."""
    return STUDIES[name].describe(result)


def columns(metrics: set[str]) -> list[tuple[str, str]]:
    """SUMMARY, then the LPIPS and FVD figures among ``metrics``."""
    found = sorted(m for m in metrics if m.startswith("test/") and m.split("/")[-1] in PERCEPTUAL)
    return SUMMARY + [(m, m.removeprefix("test/")) for m in found]


def summary(settings: list[Setting]) -> dict:
    """Per setting, the ``columns`` metrics as mean ± 95% t-interval over seeds."""
    shown = columns({m for s in settings for m in s.by_seed})
    return {
        s.label: {m: _iv(mean_ci(list(s.by_seed[m].values()))) for m, _ in shown if s.by_seed.get(m)} for s in settings
    }


def markdown(results: dict, tables: dict | None = None) -> str:
    """The verdicts, and per setting the SUMMARY over seeds, as the Markdown the README's Results section quotes."""
    text = ["# Study results", ""]
    for name, result in results.items():
        text += [f"## {name}", *(f"- {line}" for line in lines(name, result)), ""]
        rows = (tables or {}).get(name)
        if rows:
            shown = columns({m for row in rows.values() for m in row})
            text += ["| setting | " + " | ".join(head for _, head in shown) + " |", "|---" * (len(shown) + 1) + "|"]
            for label, row in rows.items():
                cells = [_plain(row.get(metric), digits=3 if "lpips" in metric else 2) for metric, _ in shown]
                text.append(f"| {label} | " + " | ".join(cells) + " |")
            text.append("")
    return "\n".join(text)


def _plain(iv: dict | None, signed: bool = False, digits: int = 2) -> str:
    if iv is None:
        return "–"
    mean = f"{iv['mean']:{'+' if signed else ''}.{digits}f}"
    return mean + ("" if iv["half"] is None else f" ± {iv['half']:.{digits}f}")
