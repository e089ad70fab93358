"""Run a W&B sweep YAML offline: W&B's own engine (the ``sweeps`` package) suggests, trials run as ``wandb agent``
runs them, each an ordinary W&B run (offline without credentials) that ``wandb sync`` uploads later.

``spec`` reads and checks the YAML, ``agent`` builds a trial's command line and environment as the agent does,
``engine`` adapts the ``sweeps`` package, ``runner`` launches, watches and resumes the trial processes (``trials``
their record, ``gpus`` one GPU each), ``groups`` names the settings (trials differing only in the seed).
"""

from svg.sweeps.agent import expand_command, trial_env
from svg.sweeps.engine import suggest, sweeps_package, to_engine, to_stop
from svg.sweeps.gpus import pick_gpu, visible_gpus
from svg.sweeps.groups import SEED, group_name, job_type, label, searched, setting_of
from svg.sweeps.runner import SweepRunner
from svg.sweeps.spec import SWEEP_FILE, SweepError, load_sweep, parse_set
from svg.sweeps.trials import Trial

__all__ = [
    "SEED",
    "SWEEP_FILE",
    "SweepError",
    "SweepRunner",
    "Trial",
    "expand_command",
    "group_name",
    "job_type",
    "label",
    "load_sweep",
    "parse_set",
    "pick_gpu",
    "searched",
    "setting_of",
    "suggest",
    "sweeps_package",
    "to_engine",
    "to_stop",
    "trial_env",
    "visible_gpus",
]
