"""The study: runs that differ only in ``train.seed`` are repeats of one setting. Per setting, every test-evaluation
number (the run's evaluation JSON) and final validation metric (its last ``val/*`` value) as a mean with its 95%
t-interval over seeds; per other setting, the paired difference against a reference setting over the seeds both
hold, with its verdict.

Only finished runs count (a stopped or failed trial's last numbers are not a result); runs of one setting that share
a seed are averaged into one value first, so ``n`` counts seeds. A run without ``train.seed`` is its own seed.
``tracking.*`` keys (run names, groups) never make a setting.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from svg.evaluation import FVD, LPIPS, LPIPS_BEST_OF_N, PSNR, PSNR_BEST_OF_N, SSIM, SSIM_BEST_OF_N
from svg.report.collect import ReportError, Run
from svg.report.stats import Interval, mean_ci, paired_diff, verdict
from svg.sweeps.groups import SEED, label
from svg.values import is_number

EVAL_META = {"n_sequences", "n_samples", "n_past", "horizon", "frames", "seed"}
"""Evaluation JSON numbers that describe the protocol, not the model."""

BETTER_WHEN_HIGHER = {PSNR, SSIM, "psnr_best", PSNR_BEST_OF_N, SSIM_BEST_OF_N}
"""Metric names (the part after ``test/`` or ``val/``) where higher is better; others get higher/lower verdicts."""
BETTER_WHEN_LOWER = {LPIPS, LPIPS_BEST_OF_N, FVD}


@dataclass
class Setting:
    """The runs of one setting; ``by_seed``: metric -> seed -> value."""

    label: str
    values: dict[str, Any]
    runs: list[Run] = field(default_factory=list)
    by_seed: dict[str, dict[Any, float]] = field(default_factory=dict)

    def interval(self, metric: str) -> Interval | None:
        values = list(self.by_seed.get(metric, {}).values())
        return mean_ci(values) if values else None


@dataclass
class Paired:
    """``setting`` minus the reference for one metric over their shared seeds."""

    setting: str
    metric: str
    diff: Interval
    verdict: str


@dataclass
class Study:
    settings: list[Setting]
    metrics: list[str]
    reference: Setting
    paired: list[Paired]


def numbers(run: Run) -> dict[str, float]:
    """A run's ``test/<protocol>/<key>`` numbers (its evaluation JSONs, per-sequence intervals and the protocol's
    own numbers left out; a nested block such as ``long_horizon`` as ``test/<protocol>/long_horizon/<key>``) and the
    last value of each ``val/*`` metric."""
    out = {}
    for protocol, result in sorted(run.evaluations.items()):
        evaluation = dict(result)
        for block, values in list(evaluation.items()):
            if isinstance(values, dict) and block != "protocol":
                evaluation.update({f"{block}/{k}": v for k, v in values.items()})
        for key, value in evaluation.items():
            if is_number(value) and key not in EVAL_META and not key.endswith("_ci95"):
                out[f"test/{protocol}/{key}"] = value
    for record in run.records:
        out.update({k: v for k, v in record.items() if k.startswith("val/") and is_number(v)})
    return out


def direction(metric: str) -> tuple[str, str]:
    """The verdict's words for "above" and "below" the reference."""
    name = metric.split("/")[-1]
    if name in BETTER_WHEN_HIGHER:
        return "better", "worse"
    return ("worse", "better") if name in BETTER_WHEN_LOWER else ("higher", "lower")


def group(runs: list[Run], keys: list[str]) -> list[Setting]:
    """The finished runs grouped by the values of ``keys`` (the seed and tracking keys left out), in order."""
    keys = [k for k in keys if k != SEED and not k.startswith("tracking.")]
    settings: dict[str, Setting] = {}
    for run in runs:
        if run.state not in (None, "finished") or not run.records:
            continue
        values = {k: run.config[k] for k in keys if k in run.config}
        key = json.dumps(values, sort_keys=True, default=str)
        setting = settings.setdefault(key, Setting(label(values), values))
        setting.runs.append(run)
    for setting in settings.values():
        sums: dict[str, dict[Any, list[float]]] = {}
        for run in setting.runs:
            seed = run.config.get(SEED, f"run {run.name}")
            for metric, value in numbers(run).items():
                sums.setdefault(metric, {}).setdefault(seed, []).append(value)
        setting.by_seed = {m: {s: sum(v) / len(v) for s, v in seeds.items()} for m, seeds in sums.items()}
    return list(settings.values())


def pick(settings: list[Setting], reference: str | None) -> Setting:
    """The setting named by ``reference`` (``k=v[,k=v]``: every pair must match, one setting only), else the first."""
    if reference is None:
        return settings[0]
    wanted = {pair.strip() for pair in reference.split(",") if pair.strip()}
    found = [s for s in settings if wanted <= set(s.label.split(","))]
    if len(found) != 1:
        what = "no setting" if not found else f"{len(found)} settings"
        raise ReportError(f"--reference {reference}: {what} match (settings: {'; '.join(s.label for s in settings)})")
    return found[0]


def study(runs: list[Run], keys: list[str], reference: str | None = None) -> Study | None:
    """The settings and paired differences of these runs; None when no setting has two seeds (nothing to add to
    the per-run table)."""
    settings = group(runs, keys)
    if not any(len({s for m in st.by_seed.values() for s in m}) > 1 for st in settings):
        return None
    metrics: list[str] = []
    for setting in settings:
        metrics += [m for m in setting.by_seed if m not in metrics]
    metrics.sort(key=lambda m: not m.startswith("test/"))  # test first, each in the order it first appeared
    ref = pick(settings, reference)
    paired = []
    for setting in settings:
        if setting is ref:
            continue
        for metric in metrics:
            if "copy_last" in metric:  # the baseline: the same data gives the same number
                continue
            diff = paired_diff(setting.by_seed.get(metric, {}), ref.by_seed.get(metric, {}))
            if diff is not None:
                paired.append(Paired(setting.label, metric, diff, verdict(diff, names=direction(metric))))
    return Study(settings, metrics, ref, paired)
