"""Settings: trials (or runs) whose parameters differ only in the seed are repeats of one setting. The runner
names each setting's W&B group after what it varies (``<sweep id>:kl.mode=cyclical,kl.ratio=0.25``) and gives
every trial the sweep's name as job_type; the report averages a setting over its seeds.

Names stay within W&B's limits (group 128 characters, job_type 64): a longer name keeps its start and ends in a
short hash of the whole, so it is still deterministic and distinct.
"""

from __future__ import annotations

import hashlib
from typing import Any

SEED = "train.seed"
"""The parameter whose values are repeats, not settings."""

GROUP_LIMIT = 128
JOB_TYPE_LIMIT = 64


def searched(config: dict) -> list[str]:
    """The sweep's parameters that take more than one value, in YAML order (the seed included)."""
    out = []
    for name, spec in (config.get("parameters") or {}).items():
        if not isinstance(spec, dict) or "value" in spec:
            continue
        if "values" in spec and len(spec["values"]) < 2:
            continue
        out.append(name)
    return out


def setting_of(params: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """The values of ``names`` in ``params`` that make the setting: all but the seed."""
    return {name: params[name] for name in names if name != SEED and name in params}


def label(setting: dict[str, Any]) -> str:
    """``kl.mode=cyclical,kl.ratio=0.25``, values spelled with ``str()`` as on the command line; ``all`` when
    nothing but the seed varies."""
    return ",".join(f"{name}={value}" for name, value in setting.items()) or "all"


def fit(name: str, limit: int) -> str:
    """``name`` if it fits in ``limit`` characters, else its start and ``~`` plus 8 hex digits of its hash."""
    if len(name) <= limit:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    return f"{name[: limit - 9]}~{digest}"


def group_name(sweep_id: str, setting: dict[str, Any]) -> str:
    """The W&B group of a setting's trials: the sweep id (without ENTITY/PROJECT/) and the setting's label."""
    return fit(f"{sweep_id.split('/')[-1]}:{label(setting)}", GROUP_LIMIT)


def job_type(config: dict) -> str:
    """The W&B job_type of a sweep's trials: the sweep's ``name``, else ``sweep``."""
    return fit(str(config.get("name") or "sweep"), JOB_TYPE_LIMIT)
