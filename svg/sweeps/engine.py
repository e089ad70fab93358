"""The adapter to W&B's sweep engine, the ``sweeps`` package: imported quietly, fed our trials as its SweepRuns,
asked for the next parameters (as plain Python values) and for the runs hyperband would stop.

The engine's traps, handled here: it hands out numpy values, its schema uses pydantic-v1 aliases, and importing it
warns of deprecations. Keys W&B's server knows but the package's schema refuses (``run_cap``) are the runner's
business and never reach the engine.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

from svg.values import is_number, plain

ENGINE_STATE = {"running": "running", "finished": "finished", "failed": "failed", "stopped": "killed"}
"""Our trial states -> the engine's RunState: an early-stopped trial is a killed run to bayes."""

RUNNER_KEYS = ("run_cap",)
"""Sweep config keys of W&B's server (the most runs the sweep creates) that the ``sweeps`` schema does not allow."""


def engine_config(config: dict) -> dict:
    """The sweep config without the keys the runner, not the engine, acts on."""
    return {k: v for k, v in config.items() if k not in RUNNER_KEYS}


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """The engine's pydantic-v1 models, numpy and sklearn emit deprecation/convergence warnings: not the user's."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def sweeps_package():
    """The ``sweeps`` package, imported without its warnings."""
    with quiet():
        import sweeps
    return sweeps


def schema_violations(config: dict) -> list[str]:
    """The engine's schema violations of a sweep config, each once ([] when it conforms)."""
    try:
        with quiet():
            violations = sweeps_package().schema_violations_from_proposed_config(engine_config(config))
    except ValueError as e:
        violations = [str(e)]
    return list(dict.fromkeys(violations))  # the engine reports some twice


def summary_metrics(records: list[dict]) -> dict[str, Any]:
    """Last value of every scalar key, as a W&B run summary holds it."""
    summary: dict[str, Any] = {}
    for record in records:
        summary.update({k: v for k, v in record.items() if is_number(v) or isinstance(v, str)})
    return summary


def to_engine(trial, records: list[dict], metric: str | None):
    """A SweepRun the engine can learn from, made of a runner ``Trial`` (its id, state and params) and its
    metrics.jsonl records. Its metric fields must be given by their aliases (``summaryMetrics``,
    ``sampledHistory``): the field names are silently dropped by the pydantic-v1-style model."""
    history = [{k: v for k, v in r.items() if is_number(v)} for r in records if metric and metric in r]
    return sweeps_package().SweepRun(
        name=trial.id,
        state=ENGINE_STATE[trial.state],
        config={k: {"value": v} for k, v in trial.params.items()},
        summaryMetrics=summary_metrics(records),
        sampledHistory=history,
        stopped=trial.state == "stopped",
    )


def suggest(config: dict, runs: list) -> dict[str, Any] | None:
    """The engine's next parameters as Python values; None when a grid is exhausted."""
    with quiet():
        run = sweeps_package().next_run(engine_config(config), runs)
    if run is None:
        return None
    return {name: plain(spec["value"]) for name, spec in run.config.items()}


def to_stop(config: dict, runs: list) -> list[str]:
    """Names of running trials hyperband would stop now ([] without ``early_terminate``)."""
    if not config.get("early_terminate"):
        return []
    with quiet():
        return [run.name for run in sweeps_package().stop_runs(engine_config(config), runs)]
