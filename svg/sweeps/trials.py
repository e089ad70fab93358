"""A sweep's trial as ``DIR/sweep.json`` records it, and what the runner reads about one from the outside: whether
a process a killed runner left behind still trains it, and the last line it printed (its one-line error).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


@dataclass
class Trial:
    """One run of the sweep. ``state``: running (also: interrupted, resumable), finished, failed, stopped.
    ``gpu``: the CUDA_VISIBLE_DEVICES entry it last ran on (None: no GPU given)."""

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
    gpu: str | None = None


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def still_running(trial: Trial, run_dir: Path) -> bool:
    """Whether the process a killed runner left behind still trains this trial (Linux /proc; else assume not)."""
    try:
        cmdline = Path(f"/proc/{trial.pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, TypeError):
        return False
    return f"--out={run_dir}".encode() in cmdline


def last_line(path: Path) -> str | None:
    """The last non-empty line of a trial's output (train.py's one-line error), progress bars stripped."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return None
    lines = [line.split("\r")[-1].strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    return lines[-1][:300] if lines else None
