"""Shared test setup: W&B stays offline, quiet and inside a temp folder; entrypoints run as a user runs them."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WANDB = str(Path(sys.executable).with_name("wandb"))


@pytest.fixture(autouse=True)
def quiet_wandb(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("wandb-home")
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(home / var.lower()))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    for var in ("WANDB_SWEEP_ID", "WANDB_RUN_ID", "WANDB_SWEEP_PARAM_PATH", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def one_thread():
    """One torch thread, for tests that compare two computations bit for bit. On two threads oneDNN's
    convolution backward and other reductions may split their sums differently from call to call
    (2e-10 apart, measured on an EPYC), and Adam's first step divides a near-zero gradient's noise by
    its own size, so two equal steps then differ by up to 2e-4; on one thread they are equal."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_entrypoint(name: str, *args: str, cwd: Path | None = None, timeout: int = 600, env: dict | None = None):
    """Run ``entrypoints/NAME.py`` in a fresh interpreter, as a user would; returns CompletedProcess."""
    return subprocess.run(
        [sys.executable, str(ROOT / "entrypoints" / f"{name}.py"), *args],
        cwd=cwd or ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )


def leet_inspect(*args: str, attempts: int = 20) -> str:
    """``wandb leet inspect ARGS`` output. Retried for a few seconds: wandb's service process may still be
    finishing the run file just after the run's own process has exited (seen on a loaded machine)."""
    for _ in range(attempts - 1):
        out = subprocess.run([WANDB, "leet", "inspect", *args], capture_output=True, text=True)
        if out.returncode == 0:
            return out.stdout
        time.sleep(0.5)
    return subprocess.run([WANDB, "leet", "inspect", *args], capture_output=True, text=True, check=True).stdout


def newest_run(run_dir: Path) -> str:
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert runs, f"no offline W&B run under {run_dir}"
    return str(runs[-1])


def run_record(run_dir: Path) -> dict:
    """The run record (ids, sweep, group, job_type) of the newest offline run, as wandb's own reader prints it."""
    lines = leet_inspect("--json", newest_run(run_dir)).splitlines()
    return next(json.loads(line)["run"] for line in lines if '"type":"run"' in line)


def inspect_run(run_dir: Path) -> dict:
    """What the real wandb library wrote, read back with its own reader (``wandb leet inspect``)."""
    return json.loads(leet_inspect("--summary", "--json", newest_run(run_dir)))


def inspect_history(run_dir: Path) -> list[dict]:
    """Every history record of the newest offline run as {key: value}."""
    return [
        json.loads(line) for line in leet_inspect("--json", newest_run(run_dir)).splitlines() if '"history"' in line
    ]


def entrypoint_main(name: str):
    """``main`` of ``entrypoints/NAME.py``, to call in this process where a subprocess per call is too slow."""
    spec = importlib.util.spec_from_file_location(f"entrypoint_{name}", ROOT / "entrypoints" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main
