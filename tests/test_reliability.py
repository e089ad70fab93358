"""Faults a long run meets: kills, damaged or unsafe checkpoints, NaNs, W&B failing, bad config, bad folders."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT, run_entrypoint
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from svg.config import ConfigError, Experiment, OneLineParser, add_experiment_arguments, experiment_from_args
from svg.errors import SvgError
from svg.train import Trainer, TrainingStopped, load_checkpoint

DETERMINISTIC = ["--train.deterministic=True", "--train.checkpoint_every=1", "--train.threads=1"]
EPOCHS = ["--train.epochs=3", "--train.iters_per_epoch=4", "--tfr.start_decay_epoch=1"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data") / "smoke")


def train_args(data_root, out, *extra):
    return ["--config", "smoke", "--data.root", data_root, "--out", str(out), *DETERMINISTIC, *EPOCHS, *extra]


def train_records(out):
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["iter"], r["train/loss"]) for r in records if "train/loss" in r], [
        (r["epoch"], r["val/psnr"]) for r in records if "val/psnr" in r
    ]


@pytest.fixture(scope="module")
def uninterrupted(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "run"
    proc = run_entrypoint("train", *train_args(data_root, out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def kill_when(proc: subprocess.Popen, metrics, lines: int, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= lines:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return
        time.sleep(0.02)
    pytest.fail("training ended before it could be killed")


@pytest.mark.parametrize("seed", [3, 11])
def test_sigkill_then_resume_equals_an_uninterrupted_run(seed, data_root, uninterrupted, tmp_path):
    out = tmp_path / "run"
    kill_at = random.Random(seed).randint(2, 12)  # a metrics line count somewhere in the 15 lines of the run
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "entrypoints/train.py"), *train_args(data_root, out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    kill_when(proc, out / "metrics.jsonl", kill_at)
    resumed = run_entrypoint("train", *train_args(data_root, out, "--resume", "auto"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    assert train_records(out) == train_records(uninterrupted)
    a = load_checkpoint(out / "checkpoints/last.pt")
    b = load_checkpoint(uninterrupted / "checkpoints/last.pt")
    for name, tensor in b["model"].items():
        torch.testing.assert_close(a["model"][name], tensor, rtol=0, atol=0, msg=name)
    assert a["wandb_id"] == b["wandb_id"] or a["wandb_id"]  # the resumed run kept one W&B id


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(data_root, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "entrypoints/train.py"),
            *train_args(data_root, out, "--train.checkpoint_every=50"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while not (out / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "checkpoint saved" in err and "--resume" in err
    state = load_checkpoint(out / "checkpoints/last.pt")
    done = [json.loads(x)["iter"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert state["iteration"] == max(done)


def test_truncated_checkpoint_falls_back_to_the_previous_one(data_root, uninterrupted, tmp_path):
    out = tmp_path / "run"
    proc = run_entrypoint("train", *train_args(data_root, out, "--train.epochs=2", "--tfr.start_decay_epoch=1"))
    assert proc.returncode == 0
    last = out / "checkpoints/last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    resumed = run_entrypoint("train", *train_args(data_root, out, "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "last.prev.pt instead" in resumed.stderr
    assert load_checkpoint(last)["iteration"] == 12


class Payload:
    """Stands for arbitrary code a malicious checkpoint could run when unpickled."""


def test_checkpoint_with_a_pickled_object_is_refused(data_root, tmp_path):
    bad = tmp_path / "evil.pt"
    torch.save({"model": {}, "payload": Payload()}, bad)
    with pytest.raises(SvgError, match="evil.pt"):
        load_checkpoint(bad)
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    os.replace(bad, out / "checkpoints/last.pt")
    proc = run_entrypoint("train", *train_args(data_root, out, "--resume"))
    assert proc.returncode == 2
    assert "last.pt" in proc.stderr and "unsafe" in proc.stderr and "Traceback" not in proc.stderr


def test_resume_with_another_architecture_names_the_fields(data_root, uninterrupted, tmp_path):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints/last.pt").write_bytes((uninterrupted / "checkpoints/last.pt").read_bytes())
    proc = run_entrypoint("train", *train_args(data_root, out, "--resume", "--model.z_dim=5"))
    assert proc.returncode == 2
    assert "model.z_dim (4 -> 5)" in proc.stderr


def _smoke(data_root, **train) -> Experiment:
    exp = Experiment.model_validate(
        {
            "data": {"root": data_root, "n_train": 24, "n_val": 8, "n_test": 8, "batch_size": 4},
            "model": {"encoder": "dcgan64", "channels": 8, "g_dim": 16, "z_dim": 4, "rnn_size": 16},
            "tfr": {"start_decay_epoch": 1},
            "train": {"epochs": 2, "iters_per_epoch": 3, "n_future": 4, "n_eval": 8, "val_sequences": 4,
                      "precision": "fp32", "threads": 1, **train},
            "tracking": {"mode": "disabled"},
        }
    )  # fmt: skip
    return exp


def test_nan_losses_are_skipped_then_stop_the_run(data_root, tmp_path):
    trainer = Trainer(_smoke(data_root, max_bad_steps=3), tmp_path / "run")
    real_step = trainer.step_model
    calls = {"n": 0}

    def poisoned_once(*args):
        calls["n"] += 1
        res = real_step(*args)
        if calls["n"] == 2:
            res.mse = res.mse * float("nan")
        return res

    trainer.step_model = poisoned_once
    trainer.fit()
    records = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records if "train/loss" in r] == [1, 3, 4, 5, 6]  # iteration 2 skipped
    assert records[-1]["train/skipped_steps"] == 1

    trainer = Trainer(_smoke(data_root, max_bad_steps=3), tmp_path / "run2")
    trainer.checkpoint()
    for p in trainer.model.parameters():
        p.data.fill_(float("nan"))
    with pytest.raises(TrainingStopped, match="3 non-finite losses in a row"):
        trainer.fit()
    good = load_checkpoint(tmp_path / "run2/checkpoints/last.pt")
    assert all(torch.isfinite(v).all() for v in good["model"].values() if v.is_floating_point())


def test_wandb_failing_to_start_leaves_a_complete_local_run(data_root, tmp_path):
    out = tmp_path / "run"
    proc = run_entrypoint("train", *train_args(data_root, out, "--train.epochs=2"), env={"WANDB_X_SERVICE_WAIT": "-1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.count("W&B could not start") == 1
    assert (out / "checkpoints/best.pt").exists() and list((out / "media").glob("*.gif"))
    keys = set().union(*(json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()))
    assert {"train/loss", "val/psnr", "val/psnr_copy_last"} <= keys


def test_unwritable_output_folder_fails_before_training(data_root, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    proc = run_entrypoint("train", *train_args(data_root, blocker / "run"))
    assert proc.returncode == 2
    assert str(blocker) in proc.stderr and "Traceback" not in proc.stderr


FIELDS = [f"{s}.{n}" for s, m in Experiment.model_fields.items() for n in m.annotation.model_fields]
VALUES = st.one_of(
    st.text(max_size=8),
    st.integers(-(10**6), 10**6).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["True", "False", "None", "null", "[", "[1, x]", "{a: 1}", "1e400", "-0", ""]),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.one_of(st.sampled_from(FIELDS), st.text(max_size=12)), VALUES, max_size=4))
def test_fuzzed_overrides_are_accepted_or_rejected_with_a_config_error(overrides):
    parser = OneLineParser(prog="train.py")
    add_experiment_arguments(parser)
    argv = ["--config", "smoke", *(f"--{k}={v}" for k, v in overrides.items())]
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        assert e.code == 2
        return
    try:
        exp = experiment_from_args(args)
    except ConfigError as e:
        assert "\n" not in str(e)
        return
    assert isinstance(exp, Experiment)


def test_fuzzed_bad_config_exits_2_without_traceback(tmp_path):
    for argv in (["--optim.lr=nan"], ["--kl.ratio=inf"], ["--model.prior=[1"], ["--tracking.tags={a: 1}"]):
        proc = run_entrypoint("train", "--config", "smoke", *argv, "--out", str(tmp_path / "x"))
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, (argv, proc.stderr)
