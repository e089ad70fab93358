"""Sweeps over seeds: each trial's W&B group is its setting and its job_type the sweep's name (checked in what the
real wandb library wrote), the YAML's run_cap bounds the sweep, and parallel trials get one GPU each.

The trials here are tiny programs, not train.py: the runner's part is the environment and the bookkeeping."""

import json
from pathlib import Path

import pytest
from conftest import run_entrypoint, run_record

from svg.sweeps import SweepError, SweepRunner, load_sweep, pick_gpu, trial_env, visible_gpus

TRACKED = """
import sys
from pathlib import Path
from svg.config import Experiment
from svg.tracking import Tracker
out = Path(next(a for a in sys.argv if a.startswith("--out="))[6:])
tracker = Tracker(Experiment(), out)  # tracking.group None: the runner's WANDB_RUN_GROUP must win
tracker.log({"epoch": 1, "val/psnr_best": 20.0})
tracker.finish()
"""

SLEEPER = """
import json, os, sys, time
from pathlib import Path
args = dict(a[2:].split("=", 1) for a in sys.argv[1:])
Path(args["out"], "env.json").write_text(json.dumps({"gpu": os.environ.get("CUDA_VISIBLE_DEVICES")}))
time.sleep(float(args.get("sleep", 0)))
"""


def program(tmp_path: Path, text: str) -> str:
    path = tmp_path / "program.py"
    path.write_text(text)
    return str(path)


def sweep_config(prog: str, parameters: dict, method: str = "grid", **more) -> dict:
    return {"name": "seeds-demo", "method": method, "program": prog, "parameters": parameters, **more}


def test_trials_of_one_setting_share_a_wandb_group_named_after_it(tmp_path):
    parameters = {"kl.mode": {"values": ["monotonic", "cyclical"]}, "train.seed": {"values": [1, 2]}}
    config = sweep_config(program(tmp_path, TRACKED), parameters)
    record = SweepRunner(config, tmp_path / "sw", parallel=2, threads=1, gpus=[], poll=0.1, say=lambda _: None).run()
    assert [t["state"] for t in record["trials"]] == ["finished"] * 4, [t["error"] for t in record["trials"]]
    groups = {}
    for trial in record["trials"]:
        run = run_record(tmp_path / "sw" / trial["id"])
        assert run["run_id"] == trial["id"] and run["job_type"] == "seeds-demo"
        assert run["run_group"] == f"{record['sweep_id']}:kl.mode={trial['params']['kl.mode']}"
        groups.setdefault(run["run_group"], set()).add(trial["params"]["train.seed"])
    assert sorted(groups.values()) == [{1, 2}, {1, 2}]  # two settings, each over both seeds


def test_the_group_is_set_for_a_linked_sweep_too():
    config = sweep_config("p.py", {"optim.lr": {"values": [0.001, 0.002]}, "train.seed": {"values": [1, 2]}})
    params = {"optim.lr": 0.001, "train.seed": 2}
    env = trial_env(
        config,
        "ent/proj/swp9",
        "run1",
        Path("c.yaml"),
        params=params,
        linked=True,
        threads=1,
        environ={"WANDB_RUN_GROUP": "old", "CUDA_VISIBLE_DEVICES": "0,1"},
    )
    assert env["WANDB_SWEEP_ID"] == "swp9" and env["WANDB_RUN_GROUP"] == "swp9:optim.lr=0.001"
    assert env["WANDB_JOB_TYPE"] == "seeds-demo" and env["WANDB_ENTITY"] == "ent"
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1"  # no GPU given: the runner's own setting is left alone
    unlinked = trial_env(
        config, "loc1", "run1", Path("c.yaml"), params=params, linked=False, threads=1, gpu="1", environ={}
    )
    assert "WANDB_SWEEP_ID" not in unlinked and unlinked["WANDB_RUN_GROUP"] == "loc1:optim.lr=0.001"
    assert unlinked["CUDA_VISIBLE_DEVICES"] == "1"


# -- run_cap ---------------------------------------------------------------------------------------


CAPS = [("grid", 2, None, 2), ("random", 3, 2, 2), ("random", 2, None, 2), ("grid", 5, None, 3)]


@pytest.mark.parametrize(("method", "cap", "count", "expected"), CAPS)
def test_run_cap_bounds_the_sweep(tmp_path, method, cap, count, expected):
    """At most run_cap trials, fewer when --count says so; a grid of three still ends after three."""
    parameters = {"sleep": {"values": [0, 0.01, 0.02]} if method == "grid" else {"min": 0.0, "max": 0.01}}
    config = sweep_config(program(tmp_path, SLEEPER), parameters, method, run_cap=cap)
    runner = SweepRunner(config, tmp_path / "sw", count=count, gpus=[], poll=0.05, say=lambda _: None)
    assert len(runner.run()["trials"]) == expected


def test_run_cap_is_checked_and_passes_the_engine_schema(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    prog = program(tmp_path, SLEEPER)
    path = tmp_path / "s.yaml"
    path.write_text(f"method: random\nprogram: {prog}\nrun_cap: 4\nparameters:\n  sleep: {{min: 0.0, max: 1.0}}\n")
    assert load_sweep(path)["run_cap"] == 4
    for bad in ("0", "two", "1.5"):
        path.write_text(f"method: grid\nprogram: {prog}\nrun_cap: {bad}\nparameters:\n  sleep: {{values: [0]}}\n")
        with pytest.raises(SweepError, match=r"run_cap: expected a whole number of runs of at least 1") as e:
            load_sweep(path)
        assert "\n" not in str(e.value)
    proc = run_entrypoint("sweep", str(path), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "run_cap" in proc.stderr, proc.stderr


def test_random_without_count_or_run_cap_is_refused(tmp_path):
    config = sweep_config("p.py", {"sleep": {"min": 0.0, "max": 1.0}}, "random")
    with pytest.raises(SweepError, match=r"give --count N \(or run_cap: N in the YAML\)"):
        SweepRunner(config, tmp_path / "sw", gpus=[])


# -- one GPU per trial -----------------------------------------------------------------------------


def test_visible_gpus(monkeypatch):
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "2,3"}) == ["2", "3"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": " 1, 0 "}) == ["1", "0"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "0,-1,1"}) == ["0"]  # CUDA stops at the first invalid entry
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "GPU-a1,GPU-b2"}) == ["GPU-a1", "GPU-b2"]
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert visible_gpus({}) == ["0", "1"]


def test_pick_gpu_takes_the_least_busy_first():
    assert pick_gpu([], []) is None
    assert pick_gpu(["0", "1"], []) == "0"
    assert pick_gpu(["0", "1"], ["0"]) == "1"
    assert pick_gpu(["0", "1"], ["1"]) == "0"  # a finished trial's GPU is free again
    assert pick_gpu(["0", "1"], ["0", "1"]) == "0"  # more trials than GPUs: shared in turn
    assert pick_gpu(["0", "1"], ["0", "1", "0"]) == "1"


def test_parallel_trials_get_their_own_gpu_and_reuse_a_freed_one(tmp_path):
    """Trial 1 ends first while trial 2 still runs: trial 3 gets trial 1's GPU, never trial 2's."""
    config = sweep_config(program(tmp_path, SLEEPER), {"sleep": {"values": [0.2, 6, 0]}})
    said = []
    record = SweepRunner(
        config, tmp_path / "sw", parallel=2, threads=1, gpus=["3", "5"], poll=0.05, say=said.append
    ).run()
    trials = record["trials"]
    assert [t["params"]["sleep"] for t in trials] == [0.2, 6, 0] and {t["state"] for t in trials} == {"finished"}
    seen = [json.loads((tmp_path / "sw" / t["id"] / "env.json").read_text())["gpu"] for t in trials]
    assert seen == ["3", "5", "3"] and [t["gpu"] for t in trials] == seen
    assert any(line.startswith(f"trial {trials[2]['id']} started (3) on GPU 3:") for line in said), said


def test_without_gpus_nothing_is_set(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    config = sweep_config(program(tmp_path, SLEEPER), {"sleep": {"values": [0]}})
    record = SweepRunner(config, tmp_path / "sw", gpus=[], poll=0.05, say=lambda _: None).run()
    (trial,) = record["trials"]
    assert json.loads((tmp_path / "sw" / trial["id"] / "env.json").read_text())["gpu"] is None
    assert trial["gpu"] is None


def test_the_runner_sees_its_own_gpus_by_default(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")
    config = sweep_config(program(tmp_path, SLEEPER), {"sleep": {"values": [0]}})
    assert SweepRunner(config, tmp_path / "sw", gpus=None).gpus == ["7"]
