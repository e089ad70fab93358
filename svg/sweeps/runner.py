"""The process supervisor: suggest, launch, watch, record. Each trial is a child process started as ``wandb agent``
starts it, in its run folder ``DIR/<run-id>/`` (``--out`` of train.py, with its ``output.log``); its metrics.jsonl is
read as it grows and fed back to the engine (bayes learns from finished trials, hyperband stops running ones). On
SIGINT/SIGTERM every trial checkpoints and exits; ``DIR/sweep.json`` holds what ``--resume`` needs to go on.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from svg.errors import Interrupted
from svg.sweeps.agent import new_id, trial_command, trial_env
from svg.sweeps.engine import suggest, summary_metrics, to_engine, to_stop
from svg.sweeps.gpus import pick_gpu, visible_gpus
from svg.sweeps.spec import SWEEP_FILE, SweepError
from svg.sweeps.trials import Trial, last_line, now, still_running
from svg.tracking import METRICS_FILE, read_metrics

KILL_DELAY = 60.0
"""Seconds a stopped trial gets to finish its step and checkpoint before it is killed (twice the agent's 30 s: a
validation pass on CPU can take half a minute)."""


@dataclass
class _Live:
    trial: Trial
    proc: subprocess.Popen
    log: Any
    t0: float
    stop_sent: float | None = None


class SweepRunner:
    """Suggest, launch, watch, record; ``run()`` returns the sweep record (also in ``DIR/sweep.json``).

    ``count`` bounds the number of trials the sweep holds in all (a resumed sweep counts earlier ones), as does the
    YAML's ``run_cap`` (the smaller wins); ``threads`` is each trial's CPU budget (OMP_NUM_THREADS), default the
    cores divided among ``parallel`` trials; ``gpus`` the CUDA_VISIBLE_DEVICES entries handed out one per live
    trial (default: the runner's own, see ``svg.sweeps.gpus``); ``wandb_sweep_id`` names a sweep created on a W&B
    server that the trial runs join.
    """

    def __init__(
        self,
        config: dict,
        out: Path,
        *,
        count: int | None = None,
        parallel: int = 1,
        threads: int | None = None,
        gpus: list[str] | None = None,
        resume: bool = False,
        wandb_sweep_id: str | None = None,
        source: str = "",
        poll: float = 2.0,
        say: Callable[[str], None] = print,
    ):
        self.config, self.out, self.source = config, Path(out), source
        self.parallel, self.poll, self.say = parallel, poll, say
        self.threads = threads or max(1, (os.cpu_count() or 1) // parallel)
        self.gpus = visible_gpus() if gpus is None else list(gpus)
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
            self.sweep_id, self.count, self.created = wandb_sweep_id or new_id(), count, now()
            self.linked = wandb_sweep_id is not None
        if self.config["method"] in ("random", "bayes") and self.cap is None:
            raise SweepError(
                f"method {self.config['method']} never ends by itself; give --count N (or run_cap: N in the YAML)"
            )

    @property
    def cap(self) -> int | None:
        """The most trials the sweep holds: the smaller of --count and the YAML's run_cap (None: no bound)."""
        bounds = [n for n in (self.count, self.config.get("run_cap")) if n is not None]
        return min(bounds) if bounds else None

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
            if still_running(trial, self.out / trial.id):
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
        path = self.out / trial.id / METRICS_FILE
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
    def _launch(self, trial: Trial, resume: bool) -> None:
        run_dir = self.out / trial.id
        run_dir.mkdir(parents=True, exist_ok=True)
        sweep_dir = self.out / "wandb" / f"sweep-{self.sweep_id.split('/')[-1]}"
        command, param_path = trial_command(self.config, trial.params, trial.id, sweep_dir)
        command.append(f"--out={run_dir}")
        if resume:
            command.append("--resume=auto")
        trial.command, trial.state, trial.exit_code, trial.error = command, "running", None, None
        trial.started, trial.ended = now(), None
        trial.attempts += 1
        trial.gpu = pick_gpu(self.gpus, [live.trial.gpu for live in self.live.values()])
        env = trial_env(
            self.config,
            self.sweep_id,
            trial.id,
            param_path,
            params=trial.params,
            linked=self.linked,
            threads=self.threads,
            gpu=trial.gpu,
        )
        log = open(run_dir / "output.log", "a")  # closed when the trial ends (_reap)
        proc = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
        )
        self.live[trial.id] = _Live(trial, proc, log, time.monotonic())
        trial.pid = proc.pid
        self.save()
        shown = " ".join(f"{k}={v}" for k, v in trial.params.items())
        total = f"/{self.cap}" if self.cap else ""
        verb = "resumed" if resume else "started"
        where = f" on GPU {trial.gpu}" if trial.gpu is not None else ""
        self.say(f"trial {trial.id} {verb} ({self.trials.index(trial) + 1}{total}){where}: {shown}")

    def _next(self) -> tuple[Trial, bool] | None:
        if self._rerun:
            return self._rerun.pop(0), True
        if self.cap is not None and len(self.trials) >= self.cap:
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
            trial.exit_code, trial.ended = code, now()
            trial.summary = summary_metrics(self.records(trial))
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
                trial.error = last_line(self.out / trial.id / "output.log")
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
