"""What ``wandb agent`` does for one trial, done here without a W&B server: the command line (the YAML's
``command:`` macros expanded as the agent expands them, values spelled with ``str()``), the parameter file that
WANDB_SWEEP_PARAM_PATH names, and the environment (WANDB_RUN_ID, WANDB_PROJECT, …), so each trial is an ordinary
W&B run.

WANDB_SWEEP_ID is set only to a sweep that exists on a W&B server (``--sweep-id``, from ``wandb sweep``): the server
answers a run naming a sweep it does not know with "sweep … not found" and drops it (wandb/wandb#8115, at
``wandb sync``). Either way each trial's W&B group is its setting (``<sweep id>:kl.mode=cyclical``: trials that
differ only in ``train.seed`` share it) and its job_type the sweep's name, set as WANDB_RUN_GROUP / WANDB_JOB_TYPE
(see ``svg.sweeps.groups``); wandb.init takes them unless the run's own tracking.group says otherwise.
"""

from __future__ import annotations

import json
import os
import random
import re
import string
import sys
from pathlib import Path
from typing import Any

import yaml

from svg.config import Tracking
from svg.sweeps.groups import group_name, job_type, searched, setting_of

DEFAULT_COMMAND = ["${env}", "${interpreter}", "${program}", "${args}"]
"""What ``wandb agent`` runs when the YAML has no ``command:``."""

ENVVAR_MACRO = re.compile(r"\$\{envvar\:([A-Z0-9_]*)\}")


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


def trial_command(config: dict, params: dict[str, Any], run_id: str, sweep_dir: Path) -> tuple[list[str], Path]:
    """The trial's command line and the parameter file for WANDB_SWEEP_PARAM_PATH, written (with the JSON file
    ``${args_json_file}`` names, when used) into ``sweep_dir`` as the agent writes them."""
    param_path = sweep_dir / f"config-{run_id}.yaml"
    json_path = sweep_dir / f"config-{run_id}.json"
    write_param_file(param_path, params)
    command = expand_command(config, params, str(json_path))
    if "${args_json_file}" in (config.get("command") or []):
        json_path.write_text(json.dumps(params))
    return command, param_path


def trial_env(
    config: dict,
    sweep_id: str,
    run_id: str,
    param_path: Path,
    *,
    params: dict[str, Any],
    linked: bool,
    threads: int,
    gpu: str | None = None,
    environ: dict[str, str] | None = None,
) -> dict[str, str]:
    """What ``wandb agent ENTITY/PROJECT/SWEEP`` exports to a trial, plus its W&B group and job_type (its setting,
    the sweep's name), its thread budget (OMP_NUM_THREADS) and its GPU (CUDA_VISIBLE_DEVICES, when given).
    ``sweep_id`` may carry ENTITY/PROJECT/; ``linked``: the sweep exists on a W&B server (see the module doc)."""
    env = dict(os.environ if environ is None else environ)
    env.pop("WANDB_SWEEP_ID", None)
    *path, sweep = sweep_id.split("/")
    entity, project = ([None, None] + path)[-2:]
    project = project or config.get("project") or env.get("WANDB_PROJECT") or Tracking().project
    entity = entity or config.get("entity")
    if linked:
        env["WANDB_SWEEP_ID"] = sweep
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    if entity:
        env["WANDB_ENTITY"] = str(entity)
    env.update(
        WANDB_RUN_ID=run_id,
        WANDB_SWEEP_PARAM_PATH=str(param_path),
        WANDB_PROJECT=str(project),
        WANDB_RUN_GROUP=group_name(sweep, setting_of(params, searched(config))),
        WANDB_JOB_TYPE=job_type(config),
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
    )
    return env
