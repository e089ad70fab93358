"""The sweep YAML: reading it, pinning ``--set`` parameters, and checking it before any trial runs (the engine's
schema and method checks, ``run_cap``, the program, parameter names that are config fields). Owns SweepError and
the name of the sweep record, ``SWEEP_FILE``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from svg.config import Experiment, flat
from svg.errors import SvgError, first_line
from svg.sweeps.agent import DEFAULT_COMMAND
from svg.sweeps.engine import schema_violations, suggest

SWEEP_FILE = "sweep.json"
"""``DIR/sweep.json``: the sweep and every trial (parameters, command, state, exit code, summary)."""

TRAIN_PROGRAM = "train.py"
"""The file name of the project's training program. A sweep running a ``train.py`` may only name config fields:
recognised by name, so the check holds wherever the package is installed and whatever path the YAML gives."""


class SweepError(SvgError):
    """The sweep YAML or the sweep folder is unusable."""


def parse_set(items: list[str]) -> dict[str, Any]:
    """``name=value`` pairs of ``--set``, values read as YAML (``12`` -> int, ``True`` -> bool)."""
    out = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name:
            raise SweepError(f"--set {item}: expected NAME=VALUE, e.g. --set train.epochs=6")
        try:
            out[name] = yaml.safe_load(text)
        except yaml.YAMLError:
            out[name] = text
    return out


def load_sweep(path: str | Path, fixed: dict[str, Any] | None = None) -> dict:
    """Read a sweep YAML, pin the ``fixed`` parameters to one value each, and validate it with the engine's own
    schema and suggestion code; SweepError naming the first problem in one line."""
    path = Path(path)
    try:
        config = yaml.safe_load(path.read_text())
    except OSError as e:
        raise SweepError(f"{path}: cannot read ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        raise SweepError(f"{path}: not valid YAML ({first_line(e)})") from None
    if not isinstance(config, dict):
        raise SweepError(f"{path}: a sweep YAML is a mapping (method, metric, parameters, program, command)")
    if fixed:
        if not isinstance(config.get("parameters"), dict):
            raise SweepError(f"{path}: parameters: missing, cannot --set {', '.join(fixed)}")
        config["parameters"].update({name: {"value": value} for name, value in fixed.items()})
    config = json.loads(json.dumps(config, default=str))  # as sweep.json will hold it, so --resume compares equal
    check_sweep(config, str(path))
    return config


def check_sweep(config: dict, where: str = "sweep") -> None:
    """The engine's schema, the engine's own refusal of the method (e.g. a distribution in a grid), the program,
    and, for this project's train.py, parameter names that are config fields."""
    violations = schema_violations(config)
    if violations:
        more = f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""
        raise SweepError(f"{where}: {violations[0].splitlines()[0]}{more}")
    cap = config.get("run_cap")
    if cap is not None and (type(cap) is not int or cap < 1):
        raise SweepError(f"{where}: run_cap: expected a whole number of runs of at least 1 (got {cap!r})")
    command = config.get("command") or DEFAULT_COMMAND
    if "${program}" in command:
        if not config.get("program"):
            raise SweepError(f"{where}: program: missing (the script ${{program}} in command: stands for)")
        if not Path(config["program"]).is_file():
            raise SweepError(
                f"{where}: program: {config['program']} not found from {Path.cwd()} "
                "(run from the project root, as wandb agent is)"
            )
        if Path(config["program"]).name == TRAIN_PROGRAM:
            check_parameter_names(config["parameters"], where)
    try:
        suggest(config, [])
    except (ValueError, KeyError, AssertionError) as e:
        raise SweepError(f"{where}: {first_line(e)}") from None


def check_parameter_names(names: Any, where: str = "sweep") -> None:
    """Every parameter of a train.py sweep is ``config`` (the preset) or a ``section.field`` of the Experiment:
    train.py would refuse anything else, once per trial."""
    fields = set(flat(Experiment()))
    for name in names:
        if name != "config" and name not in fields:
            raise SweepError(
                f"{where}: parameters: {name!r} is not a config field (expected config or section.field, e.g. kl.mode)"
            )
