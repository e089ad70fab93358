"""The offline sweep runner: the YAMLs against the engine's schema, the agent's command line, metrics the engine
really sees, and the runner end to end on sweeps/smoke.yaml (failing trial, W&B ids, interrupt and resume)."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import ROOT, inspect_run, run_entrypoint, run_record

from svg.cli import OneLineParser, add_experiment_arguments, experiment_from_args
from svg.sweeps import SweepError, Trial, expand_command, load_sweep, suggest, sweeps_package, to_engine, to_stop
from svg.tracking import read_metrics

YAMLS = sorted((ROOT / "sweeps").glob("*.yaml"))
SMOKE = str(ROOT / "sweeps" / "smoke.yaml")


@pytest.fixture(scope="module")
def smoke_data(tmp_path_factory):
    return tmp_path_factory.mktemp("smoke-data") / "data"


# -- the YAMLs -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", YAMLS, ids=[p.name for p in YAMLS])
def test_every_sweep_yaml_passes_the_engine_schema(path, monkeypatch):
    monkeypatch.chdir(ROOT)
    config = yaml.safe_load(path.read_text())
    assert sweeps_package().schema_violations_from_proposed_config(config) == []
    load_sweep(path)  # plus the engine's method checks and parameter names that are config fields
    assert config["program"] == "entrypoints/train.py"
    assert config["command"] == ["${env}", "${interpreter}", "${program}", "${args}"]
    assert config["metric"] == {"name": "val/psnr_best", "goal": "maximize"}
    preset = "smoke" if path.name == "smoke.yaml" else "study" if path.name.startswith("study-") else "cpu"
    assert config["parameters"]["config"] == {"value": preset}
    if path.name.startswith("study-"):  # seeds first: a capped or interrupted grid still holds whole seeds
        assert list(config["parameters"])[1] == "train.seed" and config["parameters"]["train.seed"]["values"] == [
            1,
            2,
            3,
        ]


def test_a_schema_violation_exits_2_naming_it(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: grd\nprogram: entrypoints/train.py\nparameters: {kl.mode: {values: [cyclical]}}\n")
    proc = run_entrypoint("sweep", str(bad), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "'grd' is not one of" in proc.stderr, proc.stderr


@pytest.mark.parametrize("where", ["copy", "project"])
def test_a_misspelled_parameter_of_train_py_is_refused_wherever_it_lives(tmp_path, monkeypatch, where):
    """The name check must not depend on where svg is installed: a train.py at another path is checked too."""
    monkeypatch.chdir(ROOT)
    program = "entrypoints/train.py"
    if where == "copy":
        program = str(tmp_path / "elsewhere" / "train.py")
        Path(program).parent.mkdir()
        Path(program).write_text((ROOT / "entrypoints" / "train.py").read_text())
    body = "method: grid\nprogram: {}\nparameters:\n  config: {{value: smoke}}\n  kl.{}: {{values: [cyclical]}}\n"
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(body.format(program, "mode"))
    bad.write_text(body.format(program, "mdoe"))
    assert load_sweep(good)["program"] == program
    with pytest.raises(SweepError, match=r"parameters: 'kl\.mdoe' is not a config field") as e:
        load_sweep(bad)
    assert "\n" not in str(e.value)
    proc = run_entrypoint("sweep", str(bad), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "'kl.mdoe'" in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()


def test_agent_command_line_parses_into_the_config(monkeypatch):
    """Values as the engine hands them (numpy floats, booleans, None) spelled as wandb agent spells them."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    monkeypatch.chdir(ROOT)
    config = load_sweep(ROOT / "sweeps" / "annealing.yaml")
    config["parameters"]["optim.lr"] = {"min": 0.0001, "max": 0.003}
    config["method"] = "random"
    params = suggest(config, [])
    assert type(params["optim.lr"]) is float  # not np.float64: YAML, JSON and str() all need the plain value
    params.update({"train.channels_last": False, "optim.grad_clip": None, "train.compile": True})
    argv = expand_command(config, params, interpreter="/venv/bin/python")
    assert argv[:3] == ["/usr/bin/env", "/venv/bin/python", "entrypoints/train.py"]
    assert argv[3:] == create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})["args"]
    assert "--train.channels_last=False" in argv and "--optim.grad_clip=None" in argv

    parser = OneLineParser()
    add_experiment_arguments(parser)
    exp = experiment_from_args(parser.parse_args(argv[3:]))
    assert exp.kl.mode == params["kl.mode"] and exp.kl.ratio == params["kl.ratio"] and exp.kl.cycles == 3
    assert exp.optim.lr == params["optim.lr"] and exp.model.encoder == "dcgan64"  # the cpu preset
    assert exp.train.channels_last is False and exp.train.compile == "default" and exp.optim.grad_clip is None


def test_other_command_macros_follow_the_agent(monkeypatch):
    monkeypatch.setenv("DEVICE", "cuda")
    command = [
        "${interpreter}",
        "${program}",
        "--d=${envvar:DEVICE}",
        "${args_no_hyphens}",
        "${args_no_boolean_flags}",
        "${args_json}",
        "${unknown}",
    ]
    config = {"program": "p.py", "command": command}
    argv = expand_command(config, {"a.b": 1, "c.d": False, "e.f": True}, interpreter="py")
    assert argv == [
        "py",
        "p.py",
        "--d=cuda",
        "a.b=1",
        "c.d=False",
        "e.f=True",
        "--a.b=1",
        "--e.f",
        '{"a.b": 1, "c.d": false, "e.f": true}',
    ]


# -- what the engine sees ------------------------------------------------------------------------


def finished_trials(tmp_path: Path, score) -> list:
    """Four finished trials whose metrics.jsonl score the learning rate with ``score``, fed back as the runner does."""
    runs = []
    for i, lr in enumerate([0.0002, 0.0005, 0.001, 0.002]):
        path = tmp_path / f"t{i}" / "metrics.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        best = score(np.log10(lr))
        lines = [
            {"iter": 10, "train/loss": 0.1},
            {"epoch": 1, "val/psnr_best": best - 1},
            {"epoch": 2, "val/psnr_best": best},
        ]
        path.write_text("".join(json.dumps(r) + "\n" for r in lines))
        trial = Trial(id=f"t{i}", params={"config": "cpu", "optim.lr": lr}, state="finished")
        runs.append(to_engine(trial, read_metrics(path), "val/psnr_best"))
    return runs


def test_bayes_suggestions_follow_the_metrics_fed_back(tmp_path):
    config = {
        "method": "bayes",
        "metric": {"name": "val/psnr_best", "goal": "maximize"},
        "parameters": {
            "config": {"value": "cpu"},
            "optim.lr": {"distribution": "log_uniform_values", "min": 0.0001, "max": 0.003},
        },
    }
    high = finished_trials(tmp_path / "high", lambda x: 20 + 5 * x)  # higher lr scores better
    low = finished_trials(tmp_path / "low", lambda x: 20 - 5 * x)
    assert high[0].summary_metrics["val/psnr_best"] == pytest.approx(20 + 5 * np.log10(0.0002))
    assert len(high[0].history) == 2  # the validations, the records holding the metric
    picks = {}
    for name, runs in (("high", high), ("low", low)):
        np.random.seed(0)
        picks[name] = [suggest(config, runs)["optim.lr"] for _ in range(3)]
    assert min(picks["high"]) > 0.001 and max(picks["low"]) < 0.0005, picks


def test_hyperband_stops_the_trailing_running_trial(tmp_path):
    config = {
        "method": "grid",
        "metric": {"name": "val/psnr_best", "goal": "maximize"},
        "early_terminate": {"type": "hyperband", "min_iter": 2, "eta": 2},
        "parameters": {"kl.mode": {"values": ["monotonic", "cyclical"]}},
    }
    runs = []
    for name, state, values in (
        ("done", "finished", [18, 20, 22, 23]),
        ("good", "running", [18, 21, 23]),
        ("poor", "running", [17, 18, 18.5]),
    ):
        path = tmp_path / name / "metrics.jsonl"
        path.parent.mkdir()
        path.write_text("".join(json.dumps({"epoch": i + 1, "val/psnr_best": v}) + "\n" for i, v in enumerate(values)))
        runs.append(
            to_engine(Trial(id=name, params={"kl.mode": "cyclical"}, state=state), read_metrics(path), "val/psnr_best")
        )
    assert to_stop(config, runs) == ["poor"]


# -- the runner end to end -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def smoke_sweep(tmp_path_factory, smoke_data):
    out = tmp_path_factory.mktemp("sweep") / "smoke"
    proc = run_entrypoint(
        "sweep",
        SMOKE,
        "--out",
        str(out),
        "--parallel",
        "2",
        "--threads",
        "1",
        "--sweep-id",
        "testswp1",
        "--set",
        f"data.root={smoke_data}",
        "--set",
        "data.source=synthetic",
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return out, json.loads((out / "sweep.json").read_text()), proc


def test_runner_finishes_the_grid_and_records_the_failing_trial(smoke_sweep):
    out, record, proc = smoke_sweep
    trials = {t["params"]["kl.mode"]: t for t in record["trials"]}
    assert sorted(trials) == ["cyclical", "monotonic", "sigmoid"]
    failed = trials["sigmoid"]
    assert failed["state"] == "failed" and failed["exit_code"] == 2
    assert failed["error"].startswith("train.py: kl.mode:")
    for mode in ("monotonic", "cyclical"):
        trial = trials[mode]
        assert trial["state"] == "finished" and trial["exit_code"] == 0
        assert isinstance(trial["summary"]["val/psnr_best"], float)
        assert trial["command"][:3] == ["/usr/bin/env", sys.executable, "entrypoints/train.py"]
        assert f"--kl.mode={mode}" in trial["command"] and trial["command"][-1] == f"--out={out / trial['id']}"
        assert (out / trial["id"] / "checkpoints" / "best.pt").is_file()
    assert "2 finished, 1 failed" in proc.stdout


def test_trial_is_a_wandb_run_with_the_sweep_and_run_ids(smoke_sweep):
    out, record, _ = smoke_sweep
    trial = next(t for t in record["trials"] if t["state"] == "finished")
    run = inspect_run(out / trial["id"])
    assert run["run_id"] == trial["id"] and run["state"] == "finished"
    assert run["config"]["kl.mode"] == trial["params"]["kl.mode"]
    assert run["config"]["config"] == "smoke"  # read by wandb.init from WANDB_SWEEP_PARAM_PATH
    assert isinstance(run["summary"]["val/psnr_best"], float)  # the metric the YAML names, a plain value
    assert run["project"] == "svg-sweeps"  # under a sweep wandb.init ignores its project argument: WANDB_PROJECT
    assert run_record(out / trial["id"])["sweep_id"] == "testswp1"


def test_interrupted_sweep_resumes_without_rerunning_finished_trials(tmp_path, smoke_data):
    """SIGINT while the second trial trains: it checkpoints, and --resume continues it; the first is left alone."""
    out = tmp_path / "sweep"
    args = [
        SMOKE,
        "--out",
        str(out),
        "--threads",
        "1",
        "--set",
        f"data.root={smoke_data}",
        "--set",
        "data.source=synthetic",
        "--set",
        "train.iters_per_epoch=30",
    ]
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "entrypoints" / "sweep.py"), *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
        trials = json.loads((out / "sweep.json").read_text())["trials"] if (out / "sweep.json").exists() else []
        if len(trials) == 2 and (out / trials[1]["id"] / "checkpoints" / "last.pt").exists():
            break
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "continue with --resume" in stderr, stderr
    before = json.loads((out / "sweep.json").read_text())["trials"]
    assert [t["state"] for t in before] == ["finished", "running"]
    first, second = out / before[0]["id"], out / before[1]["id"]
    assert "stopped by signal" in (second / "output.log").read_text()  # checkpointed mid-run, not killed
    stamp = {p.name: p.stat().st_mtime_ns for p in (first / "metrics.jsonl", first / "output.log")}

    again = run_entrypoint("sweep", *args)
    assert again.returncode == 2 and "--resume" in again.stderr  # an existing sweep is never silently restarted
    again = run_entrypoint("sweep", *args, "--resume")
    assert again.returncode == 0, again.stderr[-2000:]
    record = json.loads((out / "sweep.json").read_text())
    after = record["trials"]
    assert [t["state"] for t in after] == ["finished", "finished", "failed"]
    assert after[0] == before[0]  # not rerun
    assert stamp == {p.name: p.stat().st_mtime_ns for p in (first / "metrics.jsonl", first / "output.log")}
    assert after[1]["id"] == before[1]["id"] and after[1]["attempts"] == 2
    assert after[1]["command"][-1] == "--resume=auto"
    iters = [r["iter"] for r in read_metrics(second / "metrics.jsonl") if "train/loss" in r]
    assert iters == list(range(1, 61))  # continued from the checkpoint, nothing logged twice
    assert inspect_run(second)["run_id"] == after[1]["id"]
    assert run_record(second)["run_group"] == f"{record['sweep_id']}:kl.mode={after[1]['params']['kl.mode']}"


def test_train_out_defaults_to_a_folder_per_agent_run(tmp_path, smoke_data):
    agent = {"WANDB_SWEEP_ID": "agentswp", "WANDB_RUN_ID": "agentrun", "OMP_NUM_THREADS": "1"}
    proc = run_entrypoint(
        "train",
        "--config=smoke",
        f"--data.root={smoke_data}",
        "--data.source=synthetic",
        "--kl.mode=cyclical",
        cwd=tmp_path,
        env=agent,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "runs" / "sweep-agentswp" / "agentrun" / "metrics.jsonl").is_file(), sorted(
        str(p.relative_to(tmp_path)) for p in tmp_path.glob("runs/*/*")
    )
