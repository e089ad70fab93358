"""Reading what runs left on disk into ``Run`` objects: run folders, folders of them, sweep folders.

A run folder is what train.py writes (config.yaml, metrics.jsonl, media/epochNNNN.gif, the evaluator's
JSON); a sweep folder adds sweep.json (parameters, states, and the trials that failed before writing
anything). Configs are read as dotted keys without validating them, so a run from an older config
schema still reports. ``varied`` picks the config keys that tell the runs apart.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from svg.errors import SvgError, first_line
from svg.evaluation import PSNR, VAL_PSNR
from svg.sweeps.spec import SWEEP_FILE
from svg.tracking import METRICS_FILE, read_metrics
from svg.values import dotted, is_number

EXPECTED = f"expected a run folder with {METRICS_FILE}, a folder of run folders, or a sweep folder with {SWEEP_FILE}"


class ReportError(SvgError):
    """Nothing to report on, or an unreadable run folder."""


@dataclass
class Run:
    """One run folder (or a sweep trial that may never have written one). ``color`` and ``label`` are set
    by the page, so that its table, curves and GIF captions agree."""

    name: str
    path: Path
    config: dict[str, Any] = field(default_factory=dict)
    records: list[dict] = field(default_factory=list)
    state: str | None = None
    error: str | None = None
    gif: Path | None = None
    evaluations: dict[str, dict] = field(default_factory=dict)
    """Test-split results per evaluation protocol (``svg.protocols``)."""
    color: str = "black"
    label: str = ""

    def series(self, key: str) -> tuple[list[float], list[float]]:
        """(epochs, values) of a per-epoch key."""
        points = [(r["epoch"], r[key]) for r in self.records if is_number(r.get(key)) and is_number(r.get("epoch"))]
        return [p[0] for p in points], [p[1] for p in points]

    def last(self, key: str) -> Any:
        return next((r[key] for r in reversed(self.records) if r.get(key) is not None), None)

    @property
    def evaluation(self) -> dict | None:
        """The results the run table shows: the project protocol's, else the first protocol's by name."""
        return self.evaluations.get("project") or next(iter(dict(sorted(self.evaluations.items())).values()), None)

    @property
    def best_psnr(self) -> float | None:
        values = [r[VAL_PSNR] for r in self.records if is_number(r.get(VAL_PSNR))]
        return max(values) if values else None


def _evaluations(run_dir: Path) -> dict[str, dict]:
    """The evaluator's test-split JSONs for this run (RUN/eval/*.json, or eval*.json beside the checkpoints), one per
    protocol (a JSON from before protocols were stamped counts as "project"): the one for best.pt when there are
    several, else the newest."""
    found: dict[str, list] = {}
    for path in [*run_dir.glob("eval/*.json"), *run_dir.glob("checkpoints/eval*.json"), *run_dir.glob("eval*.json")]:
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(data, dict) and is_number(data.get(PSNR)) and data.get("split", "test") == "test":
            protocol = (data.get("protocol") or {}).get("name", "project")
            is_best = Path(str(data.get("checkpoint", ""))).stem == "best"
            found.setdefault(protocol, []).append((is_best, path.stat().st_mtime, path, data))
    chosen = {}
    for protocol, candidates in found.items():
        *_, path, data = max(candidates, key=lambda f: f[:2])
        chosen[protocol] = {**data, "file": str(path.relative_to(run_dir))}
    return chosen


def read_run(path: Path, name: str | None = None) -> Run:
    run = Run(name=name or path.name, path=path)
    config_path = path / "config.yaml"
    if config_path.exists():
        try:
            run.config = dotted(yaml.safe_load(config_path.read_text()) or {})
        except yaml.YAMLError as e:
            raise ReportError(f"{config_path}: not valid YAML ({first_line(e)})") from None
    run.records = read_metrics(path / METRICS_FILE)
    gifs = sorted((path / "media").glob("epoch*.gif"))
    run.gif = gifs[-1] if gifs else None
    run.evaluations = _evaluations(path)
    return run


def _is_run(path: Path) -> bool:
    return (path / METRICS_FILE).exists() or (path / "config.yaml").exists()


def collect(paths: list[Path]) -> tuple[list[Run], list[str], dict | None]:
    """Runs from sweep folders, run folders and folders of run folders; the sweep's searched parameters (shown
    first in the table); the sweep record when exactly one sweep was given.

    Raises ReportError when nothing was found to compare: no run wrote a metric (a run that crashed before
    its first log leaves only config.yaml) and no sweep trial recorded an error to show."""
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
            raise ReportError(f"{path}: no sweep.json, run folder or folder of run folders ({EXPECTED})")
    if not any(r.records or r.error for r in runs):
        where = ", ".join(str(p) for p in paths)
        found = f"{len(runs)} run folder(s), none with records in {METRICS_FILE}" if runs else "a sweep with no trials"
        raise ReportError(f"{where}: no run has metrics to report ({found}; {EXPECTED})")
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
