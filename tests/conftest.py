"""Shared test setup: W&B stays offline, quiet and inside a temp folder; entrypoints run as a user runs them."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
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


def inspect_run(run_dir: Path) -> dict:
    """What the real wandb library wrote, read back with its own reader (``wandb leet inspect``)."""
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert runs, f"no offline W&B run under {run_dir}"
    out = subprocess.run(
        [WANDB, "leet", "inspect", "--summary", "--json", str(runs[-1])], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


def inspect_history(run_dir: Path) -> list[dict]:
    """Every history record of the newest offline run as {key: value}."""
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    out = subprocess.run(
        [WANDB, "leet", "inspect", "--json", str(runs[-1])], capture_output=True, text=True, check=True
    )
    return [json.loads(line) for line in out.stdout.splitlines() if '"history"' in line]


def entrypoint_main(name: str):
    """``main`` of ``entrypoints/NAME.py``, to call in this process where a subprocess per call is too slow."""
    spec = importlib.util.spec_from_file_location(f"entrypoint_{name}", ROOT / "entrypoints" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main
