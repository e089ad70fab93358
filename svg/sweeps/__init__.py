"""Run a W&B sweep YAML offline: W&B's own engine (the ``sweeps`` package) suggests, trials run as ``wandb agent``
runs them, each an ordinary W&B run (offline without credentials) that ``wandb sync`` uploads later.

``spec`` reads and checks the YAML, ``agent`` builds a trial's command line and environment as the agent does,
``engine`` adapts the ``sweeps`` package, ``runner`` launches, watches and resumes the trial processes.
"""

from svg.sweeps.agent import expand_command
from svg.sweeps.engine import suggest, sweeps_package, to_engine, to_stop
from svg.sweeps.runner import SweepRunner, Trial
from svg.sweeps.spec import SWEEP_FILE, SweepError, load_sweep, parse_set

__all__ = [
    "SWEEP_FILE",
    "SweepError",
    "SweepRunner",
    "Trial",
    "expand_command",
    "load_sweep",
    "parse_set",
    "suggest",
    "sweeps_package",
    "to_engine",
    "to_stop",
]
