"""Run a W&B sweep YAML offline: W&B's own engine (the ``sweeps`` package) suggests, trials run as ``wandb agent``
runs them.

``wandb sweep`` and ``wandb agent`` need a W&B server. This runner gives the same experience without one: the same
YAML, the same command line (the YAML's ``command:`` macros expanded as the agent expands them, values spelled with
``str()``), the same WANDB_RUN_ID / WANDB_SWEEP_PARAM_PATH environment, so each trial is an ordinary W&B run
(offline without credentials) that ``wandb sync`` uploads later. Each trial's metrics.jsonl is read as it grows and
fed back to the engine: bayes learns from finished trials, hyperband stops running ones.

WANDB_SWEEP_ID is set only to a sweep that exists on a W&B server (``--sweep-id``, from ``wandb sweep``): the server
answers a run naming a sweep it does not know with "sweep … not found" and drops it (wandb/wandb#8115, at
``wandb sync``). Without it the trials are grouped as ``sweep-<local id>`` instead.

``DIR/sweep.json`` records the sweep and every trial (parameters, command, state, exit code, summary);
``DIR/<run-id>/`` is the trial's run folder (``--out`` of train.py) with its ``output.log``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import re
import signal
import string
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from svg.config import Experiment, Tracking, flat
from svg.errors import Interrupted, SvgError

SWEEP_FILE = "sweep.json"
DEFAULT_COMMAND = ["${env}", "${interpreter}", "${program}", "${args}"]
"""What ``wandb agent`` runs when the YAML has no ``command:``."""

ENVVAR_MACRO = re.compile(r"\$\{envvar\:([A-Z0-9_]*)\}")
TRAIN_PROGRAM = Path(__file__).resolve().parents[1] / "entrypoints" / "train.py"
KILL_DELAY = 60.0
"""Seconds a stopped trial gets to finish its step and checkpoint before it is killed (twice the agent's 30 s: a
validation pass on CPU can take half a minute)."""

ENGINE_STATE = {"running": "running", "finished": "finished", "failed": "failed", "stopped": "killed"}
"""Our trial states -> the engine's RunState: an early-stopped trial is a killed run to bayes."""


class SweepError(SvgError):
    """The sweep YAML or the sweep folder is unusable."""


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The engine's pydantic-v1 models, numpy and sklearn emit deprecation/convergence warnings: not the user's."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _engine():
    with _quiet():
        import sweeps
    return sweeps


def plain(value: Any) -> Any:
    """numpy scalars and arrays from the engine -> Python values (YAML, JSON and ``str()`` need them)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


# -- the YAML ------------------------------------------------------------------------------------


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
        raise SweepError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
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
    sweeps = _engine()
    try:
        with _quiet():
            violations = sweeps.schema_violations_from_proposed_config(config)
    except ValueError as e:
        violations = [str(e)]
    violations = list(dict.fromkeys(violations))  # the engine reports some twice
    if violations:
        more = f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""
        raise SweepError(f"{where}: {violations[0].splitlines()[0]}{more}")
    command = config.get("command") or DEFAULT_COMMAND
    if "${program}" in command:
        if not config.get("program"):
            raise SweepError(f"{where}: program: missing (the script ${{program}} in command: stands for)")
        if not Path(config["program"]).is_file():
            raise SweepError(
                f"{where}: program: {config['program']} not found from {Path.cwd()} "
                "(run from the project root, as wandb agent is)"
            )
        if Path(config["program"]).resolve() == TRAIN_PROGRAM:
            fields = set(flat(Experiment()))
            for name in config["parameters"]:
                if name != "config" and name not in fields:
                    raise SweepError(
                        f"{where}: parameters: {name!r} is not a config field (expected config or section.field, "
                        "e.g. kl.mode)"
                    )
    try:
        with _quiet():
            sweeps.next_run(config, [])
    except (ValueError, KeyError, AssertionError) as e:
        raise SweepError(f"{where}: {str(e).splitlines()[0]}") from None


# -- what wandb agent does for one trial ---------------------------------------------------------


def command_args(params: dict[str, Any]) -> dict[str, list[str]]:
    """The argument spellings ``wandb agent`` offers as ``${args}``, ``${args_no_hyphens}``, … (values by ``str()``)."""
    flags = [f"--{name}={value}" for name, value in params.items()]
    no_booleans = [
        (f"--{name}" if value else None) if isinstance(value, bool) else f"--{name}={value}"
        for name, value in params.items()
    ]
    return {
        "args": flags,
        "args_no_hyphens": [f"{name}={value}" for name, value in params.items()],
        "args_no_equals": [part for name, value in params.items() for part in (f"--{name}", str(value))],
        "args_no_boolean_flags": [f for f in no_booleans if f is not None],
        "args_json": [json.dumps(params)],
        "args_append_hydra": [f"+{name}={value}" for name, value in params.items()],
        "args_override_hydra": [f"++{name}={value}" for name, value in params.items()],
    }


def expand_command(
    config: dict,
    params: dict[str, Any],
    args_json_file: str = "",
    interpreter: str = sys.executable,
    environ: dict[str, str] | None = None,
) -> list[str]:
    """The trial's command line, macro by macro as ``wandb agent`` builds it; ``${interpreter}`` is this Python
    (the agent's is ``python`` from PATH), so trials run in the project's environment."""
    environ = os.environ if environ is None else environ
    macros = {
        **command_args(params),
        "env": [] if os.name == "nt" else ["/usr/bin/env"],
        "interpreter": [interpreter],
        "program": [str(config.get("program", ""))],
        "args_json_file": [args_json_file],
    }
    out: list[str] = []
    for chunk in config.get("command") or DEFAULT_COMMAND:
        chunk = ENVVAR_MACRO.sub(lambda m: environ.get(m.group(1), m.group(1)), str(chunk))
        if chunk.startswith("${") and chunk.endswith("}"):
            out += macros.get(chunk[2:-1]) or []
        else:
            out.append(chunk)
    return out


def new_id(length: int = 8) -> str:
    """A W&B-style id: lowercase letters and digits."""
    return "".join(random.SystemRandom().choice(string.ascii_lowercase + string.digits) for _ in range(length))


def write_param_file(path: Path, params: dict[str, Any]) -> None:
    """The file WANDB_SWEEP_PARAM_PATH names, in the agent's format; wandb.init reads it into the run config."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = yaml.safe_dump({k: {"value": v} for k, v in params.items()}, default_flow_style=False, sort_keys=False)
    path.write_text(f"wandb_version: 1\n\n{body}")


# -- trials and what the engine sees of them -----------------------------------------------------


@dataclass
class Trial:
    """One run of the sweep. ``state``: running (also: interrupted, resumable), finished, failed, stopped."""

    id: str
    params: dict[str, Any]
    command: list[str] = field(default_factory=list)
    state: str = "running"
    exit_code: int | None = None
    started: str | None = None
    ended: str | None = None
    attempts: int = 0
    pid: int | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def read_metrics(path: Path) -> list[dict]:
    """The complete records of a metrics.jsonl (a line still being written is skipped)."""
    records = []
    try:
        text = path.read_text()
    except FileNotFoundError:
        return records
    for line in text.splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            record = json.loads(line)
            if isinstance(record, dict):
                records.append(record)
    return records


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def summarize(records: list[dict]) -> dict[str, Any]:
    """Last value of every scalar key, as a W&B run summary holds it."""
    summary: dict[str, Any] = {}
    for record in records:
        summary.update({k: v for k, v in record.items() if _is_number(v) or isinstance(v, str)})
    return summary


def to_engine(trial: Trial, records: list[dict], metric: str | None):
    """A SweepRun the engine can learn from. Its metric fields must be given by their aliases (``summaryMetrics``,
    ``sampledHistory``): the field names are silently dropped by the pydantic-v1-style model."""
    history = [{k: v for k, v in r.items() if _is_number(v)} for r in records if metric and metric in r]
    return _engine().SweepRun(
        name=trial.id,
        state=ENGINE_STATE[trial.state],
        config={k: {"value": v} for k, v in trial.params.items()},
        summaryMetrics=summarize(records),
        sampledHistory=history,
        stopped=trial.state == "stopped",
    )


def suggest(config: dict, runs: list) -> dict[str, Any] | None:
    """The engine's next parameters as Python values; None when a grid is exhausted."""
    with _quiet():
        run = _engine().next_run(config, runs)
    if run is None:
        return None
    return {name: plain(spec["value"]) for name, spec in run.config.items()}


def to_stop(config: dict, runs: list) -> list[str]:
    """Names of running trials hyperband would stop now ([] without ``early_terminate``)."""
    if not config.get("early_terminate"):
        return []
    with _quiet():
        return [run.name for run in _engine().stop_runs(config, runs)]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _still_running(trial: Trial, run_dir: Path) -> bool:
    """Whether the process a killed runner left behind still trains this trial (Linux /proc; else assume not)."""
    try:
        cmdline = Path(f"/proc/{trial.pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, TypeError):
        return False
    return f"--out={run_dir}".encode() in cmdline


def _last_line(path: Path) -> str | None:
    """The last non-empty line of a trial's output (train.py's one-line error), progress bars stripped."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return None
    lines = [line.split("\r")[-1].strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    return lines[-1][:300] if lines else None


# -- the runner ----------------------------------------------------------------------------------


@dataclass
class _Live:
    trial: Trial
    proc: subprocess.Popen
    log: Any
    t0: float
    stop_sent: float | None = None


class SweepRunner:
    """Suggest, launch, watch, record; ``run()`` returns the sweep record (also in ``DIR/sweep.json``).

    ``count`` bounds the number of trials the sweep holds in all (a resumed sweep counts earlier ones); ``threads``
    is each trial's CPU budget (OMP_NUM_THREADS), default the cores divided among ``parallel`` trials;
    ``wandb_sweep_id`` names a sweep created on a W&B server that the trial runs join.
    """

    def __init__(
        self,
        config: dict,
        out: Path,
        *,
        count: int | None = None,
        parallel: int = 1,
        threads: int | None = None,
        resume: bool = False,
        wandb_sweep_id: str | None = None,
        source: str = "",
        poll: float = 2.0,
        say: Callable[[str], None] = print,
    ):
        self.config, self.out, self.source = config, Path(out), source
        self.parallel, self.poll, self.say = parallel, poll, say
        self.threads = threads or max(1, (os.cpu_count() or 1) // parallel)
        self.metric = (config.get("metric") or {}).get("name")
        self.trials: list[Trial] = []
        self.live: dict[str, _Live] = {}
        self._records: dict[str, tuple[tuple[int, int], list[dict]]] = {}
        self._signal: int | None = None
        self._stopping = False
        self._rerun: list[Trial] = []
        state_path = self.out / SWEEP_FILE
        if state_path.exists():
            if not resume:
                raise SweepError(
                    f"--out: {self.out} already holds a sweep; continue it with --resume or choose another --out"
                )
            self._load(state_path, count, wandb_sweep_id)
        else:
            self.sweep_id, self.count, self.created = wandb_sweep_id or new_id(), count, _now()
            self.linked = wandb_sweep_id is not None
        if self.config["method"] in ("random", "bayes") and self.count is None:
            raise SweepError(f"method {self.config['method']} never ends by itself; give --count N")

    def _load(self, path: Path, count: int | None, wandb_sweep_id: str | None) -> None:
        try:
            saved = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise SweepError(f"--resume: {path} is unreadable ({e})") from None
        if saved["config"] != self.config:
            changed = sorted(
                k for k in {*saved["config"], *self.config} if saved["config"].get(k) != self.config.get(k)
            )
            raise SweepError(
                f"--resume: {self.out} holds a sweep with another config (differs in: {', '.join(changed)}); "
                "give the same YAML and --set values, or choose another --out"
            )
        self.sweep_id, self.linked, self.created = saved["sweep_id"], saved["linked"], saved["created"]
        if wandb_sweep_id is not None and (wandb_sweep_id != self.sweep_id or not self.linked):
            raise SweepError(f"--sweep-id: {self.out} holds sweep {self.sweep_id}, not {wandb_sweep_id}")
        self.count = count if count is not None else saved.get("count")
        self.trials = [Trial(**t) for t in saved["trials"]]
        self._rerun = [t for t in self.trials if t.state == "running"]
        for trial in self._rerun:
            if _still_running(trial, self.out / trial.id):
                raise SweepError(
                    f"--resume: trial {trial.id} (pid {trial.pid}) of {self.out} is still running; stop it first"
                )

    def save(self) -> dict:
        record = {
            "sweep_id": self.sweep_id,
            "linked": self.linked,
            "source": self.source,
            "created": self.created,
            "count": self.count,
            "config": self.config,
            "trials": [asdict(t) for t in self.trials],
        }
        tmp = self.out / (SWEEP_FILE + ".tmp")
        tmp.write_text(json.dumps(record, indent=1) + "\n")
        os.replace(tmp, self.out / SWEEP_FILE)
        return record

    # -- metrics fed back --------------------------------------------------------------------------
    def records(self, trial: Trial) -> list[dict]:
        """The trial's metrics.jsonl, reread only when the file changed."""
        path = self.out / trial.id / "metrics.jsonl"
        try:
            st = path.stat()
            key = (st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            return []
        cached = self._records.get(trial.id)
        if cached is None or cached[0] != key:
            cached = (key, read_metrics(path))
            self._records[trial.id] = cached
        return cached[1]

    def engine_runs(self) -> list:
        return [to_engine(t, self.records(t), self.metric) for t in self.trials]

    # -- launching ---------------------------------------------------------------------------------
    def _env(self, trial: Trial, param_path: Path) -> dict[str, str]:
        """What ``wandb agent ENTITY/PROJECT/SWEEP`` exports to a trial, plus its thread budget."""
        env = dict(os.environ)
        env.pop("WANDB_SWEEP_ID", None)
        *path, sweep = self.sweep_id.split("/")
        entity, project = ([None, None] + path)[-2:]
        project = project or self.config.get("project") or env.get("WANDB_PROJECT") or Tracking().project
        entity = entity or self.config.get("entity")
        if self.linked:
            env["WANDB_SWEEP_ID"] = sweep
        else:
            env["WANDB_RUN_GROUP"] = f"sweep-{sweep}"
        if entity:
            env["WANDB_ENTITY"] = str(entity)
        env.update(
            WANDB_RUN_ID=trial.id,
            WANDB_SWEEP_PARAM_PATH=str(param_path),
            WANDB_PROJECT=str(project),
            OMP_NUM_THREADS=str(self.threads),
            MKL_NUM_THREADS=str(self.threads),
        )
        return env

    def _launch(self, trial: Trial, resume: bool) -> None:
        run_dir = self.out / trial.id
        run_dir.mkdir(parents=True, exist_ok=True)
        sweep_dir = self.out / "wandb" / f"sweep-{self.sweep_id.split('/')[-1]}"
        param_path = sweep_dir / f"config-{trial.id}.yaml"
        json_path = sweep_dir / f"config-{trial.id}.json"
        write_param_file(param_path, trial.params)
        command = expand_command(self.config, trial.params, str(json_path))
        if "${args_json_file}" in (self.config.get("command") or []):
            json_path.write_text(json.dumps(trial.params))
        command.append(f"--out={run_dir}")
        if resume:
            command.append("--resume=auto")
        trial.command, trial.state, trial.exit_code, trial.error = command, "running", None, None
        trial.started, trial.ended = _now(), None
        trial.attempts += 1
        log = open(run_dir / "output.log", "a")  # noqa: SIM115 - closed when the trial ends
        proc = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=self._env(trial, param_path), start_new_session=True,
        )  # fmt: skip
        self.live[trial.id] = _Live(trial, proc, log, time.monotonic())
        trial.pid = proc.pid
        self.save()
        shown = " ".join(f"{k}={v}" for k, v in trial.params.items())
        total = f"/{self.count}" if self.count else ""
        verb = "resumed" if resume else "started"
        self.say(f"trial {trial.id} {verb} ({self.trials.index(trial) + 1}{total}): {shown}")

    def _next(self) -> tuple[Trial, bool] | None:
        if self._rerun:
            return self._rerun.pop(0), True
        if self.count is not None and len(self.trials) >= self.count:
            return None
        params = suggest(self.config, self.engine_runs())
        if params is None:
            return None
        trial = Trial(id=new_id(), params=params)
        self.trials.append(trial)
        return trial, False

    # -- watching ----------------------------------------------------------------------------------
    def _reap(self) -> None:
        for run_id, live in list(self.live.items()):
            code = live.proc.poll()
            if code is None:
                if live.stop_sent is not None and time.monotonic() - live.stop_sent > KILL_DELAY:
                    live.proc.kill()
                continue
            live.log.close()
            del self.live[run_id]
            trial = live.trial
            trial.exit_code, trial.ended = code, _now()
            trial.summary = summarize(self.records(trial))
            if self._stopping and code != 0:
                trial.state = "running"  # interrupted with the sweep: resumable
                continue
            minutes = (time.monotonic() - live.t0) / 60
            best = trial.summary.get(self.metric) if self.metric else None
            metric = f", {self.metric} {best:.4g}" if isinstance(best, int | float) else ""
            if live.stop_sent is not None and code != 0:
                trial.state = "stopped"
                self.say(f"trial {trial.id} stopped early by hyperband after {minutes:.1f} min{metric}")
            elif code == 0:
                trial.state = "finished"
                self.say(f"trial {trial.id} finished in {minutes:.1f} min{metric}")
            else:
                trial.state = "failed"
                trial.error = _last_line(self.out / trial.id / "output.log")
                self.say(f"trial {trial.id} failed (exit {code}): {trial.error}")
            self.save()

    def _early_terminate(self) -> None:
        if not self.live or not self.config.get("early_terminate"):
            return
        for name in to_stop(self.config, self.engine_runs()):
            live = self.live.get(name)
            if live is not None and live.stop_sent is None:
                live.proc.send_signal(signal.SIGTERM)
                live.stop_sent = time.monotonic()

    def _on_signal(self, signum, frame) -> None:
        self._signal = signum

    def _wait(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while self._signal is None and time.monotonic() < end:
            time.sleep(min(0.2, seconds))

    def run(self) -> dict:
        self.out.mkdir(parents=True, exist_ok=True)
        self.save()
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            exhausted = False
            while self._signal is None:
                while not exhausted and len(self.live) < self.parallel and self._signal is None:
                    nxt = self._next()
                    if nxt is None:
                        exhausted = True
                    else:
                        self._launch(*nxt)
                if not self.live:
                    break
                self._wait(self.poll)
                self._reap()
                self._early_terminate()
        finally:
            self._stop_all()  # on a signal, and on any error of the runner itself: no orphaned trials
            for s, handler in previous.items():
                signal.signal(s, handler)
            record = self.save()
        if self._signal is not None:
            running = sum(t.state == "running" for t in self.trials)
            raise Interrupted(f"sweep interrupted by signal {self._signal} with {running} trial(s) unfinished")
        return record

    def _stop_all(self) -> None:
        """Ask every trial still running to checkpoint and exit, wait, kill what hangs: all stay resumable."""
        self._stopping = True
        for live in self.live.values():
            with contextlib.suppress(ProcessLookupError):
                live.proc.send_signal(signal.SIGTERM)
            live.stop_sent = time.monotonic()
        while self.live:
            time.sleep(0.2)
            self._reap()
