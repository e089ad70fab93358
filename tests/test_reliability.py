"""Faults a long run meets: kills, damaged or unsafe checkpoints, NaNs, W&B failing, bad config, bad folders."""

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from typing import Literal

import pytest
import torch
from conftest import ROOT, entrypoint_main, run_entrypoint
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from svg.checkpoint import CheckpointWriter, load_checkpoint
from svg.cli import OneLineParser, add_experiment_arguments, experiment_from_args
from svg.config import ConfigError, Experiment
from svg.errors import SvgError
from svg.train import Trainer, TrainingStopped

DETERMINISTIC = ["--train.deterministic=True", "--train.checkpoint_every=1", "--train.threads=1"]
EPOCHS = ["--train.epochs=3", "--train.iters_per_epoch=4", "--tfr.start_decay_epoch=1"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data") / "smoke")


def train_args(data_root, out, *extra):
    data = ["--data.source=synthetic", "--data.root", data_root]
    return ["--config", "smoke", *data, "--out", str(out), *DETERMINISTIC, *EPOCHS, *extra]


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
    ids = {run.name.rsplit("-", 1)[1] for run in (out / "wandb").glob("offline-run-*")}
    assert ids == {a["wandb_id"]}  # the killed and the resumed process wrote one W&B run


def test_resume_without_deterministic_kernels_matches_to_float_noise(data_root, uninterrupted, tmp_path):
    """README: bit-identical only with train.deterministic=true; otherwise a fresh run's numbers to float noise."""
    out = tmp_path / "run"
    args = [a for a in train_args(data_root, out) if a not in DETERMINISTIC] + ["--train.checkpoint_every=1"]
    proc = run_entrypoint("train", *args, "--train.epochs=1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    resumed = run_entrypoint("train", *args, "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    (steps, vals), (ref_steps, ref_vals) = train_records(out), train_records(uninterrupted)
    assert [i for i, _ in steps] == [i for i, _ in ref_steps]
    assert [loss for _, loss in steps] == pytest.approx([loss for _, loss in ref_steps], rel=1e-3)
    assert [v for _, v in vals] == pytest.approx([v for _, v in ref_vals], abs=0.05)


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


def test_the_checkpoint_writer_saves_the_state_as_it_was_and_in_order(tmp_path):
    weights = torch.zeros(3)
    writer = CheckpointWriter()
    writer.save({"w": weights, "step": 1, "rng": [torch.ones(2)]}, [(tmp_path / "last.pt", True)])
    weights.add_(5.0)  # the next steps change the live tensors while the file is written
    writer.save(
        {"w": weights, "step": 2, "rng": [torch.ones(2)]}, [(tmp_path / "last.pt", True), (tmp_path / "best.pt", False)]
    )
    writer.wait()
    assert load_checkpoint(tmp_path / "last.prev.pt")["w"].tolist() == [0.0, 0.0, 0.0]
    assert load_checkpoint(tmp_path / "last.pt")["step"] == load_checkpoint(tmp_path / "best.pt")["step"] == 2
    assert load_checkpoint(tmp_path / "best.pt")["w"].tolist() == [5.0, 5.0, 5.0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.prev.pt", "last.pt"]  # no temp file left


def test_a_failed_checkpoint_write_is_raised_naming_the_file(tmp_path):
    writer = CheckpointWriter()
    missing = tmp_path / "gone" / "last.pt"
    writer.save({"w": torch.zeros(1)}, [(missing, True)])
    with pytest.raises(SvgError, match=rf"^checkpoint {missing}: cannot write \(No such file or directory\)$"):
        writer.wait()
    writer.wait()  # said once


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
            "data": {"source": "synthetic", "root": data_root, "n_train": 24, "n_val": 8, "n_test": 8, "batch_size": 4},
            "model": {"encoder": "dcgan64", "channels": 8, "g_dim": 16, "z_dim": 4, "rnn_size": 16},
            "tfr": {"start_decay_epoch": 1},
            "train": {
                "epochs": 2,
                "iters_per_epoch": 3,
                "n_future": 4,
                "n_eval": 8,
                "val_sequences": 4,
                "precision": "fp32",
                "threads": 1,
                **train,
            },
            "tracking": {"mode": "disabled"},
        }
    )
    return exp


def test_the_moving_average_is_the_hand_computed_one_and_resumes_exactly(data_root, tmp_path):
    """train.ema_decay 0.75: after step k the average is 0.75 * average + 0.25 * weights_k (the first step's
    weights themselves), buffers included; best.pt and evaluation use it; a run stopped after its first
    checkpoint and resumed ends with the same average as one that was not."""
    from svg.checkpoint import load_model
    from svg.errors import Interrupted

    trainer = Trainer(_smoke(data_root, ema_decay=0.75, deterministic=True), tmp_path / "full")
    step, trajectory = trainer.step, []

    def recording(*args):
        fig = step(*args)
        trajectory.append({k: v.detach().clone() for k, v in trainer.model.state_dict().items()})
        return fig

    trainer.step = recording
    trainer.fit()
    expected = dict(trajectory[0])
    for weights in trajectory[1:]:
        expected = {k: 0.75 * expected[k] + 0.25 * v if v.is_floating_point() else v for k, v in weights.items()}
    last = load_checkpoint(tmp_path / "full/checkpoints/last.pt")
    for name in ("decoder.head.0.weight", "encoder.blocks.0.1.running_mean", "predictor.out.1.running_var"):
        torch.testing.assert_close(last["ema"][name], expected[name], rtol=1e-6, atol=1e-7, msg=name)
    assert not torch.equal(last["ema"]["decoder.head.0.weight"], last["model"]["decoder.head.0.weight"])
    for weights, key in (("auto", "ema"), ("ema", "ema"), ("trained", "model")):
        model, _, _ = load_model(tmp_path / "full/checkpoints/last.pt", weights)
        torch.testing.assert_close(model.state_dict()["decoder.head.0.weight"], last[key]["decoder.head.0.weight"])

    stopped = Trainer(_smoke(data_root, ema_decay=0.75, deterministic=True), tmp_path / "stopped")
    first = stopped.step

    def stop_after_four(*args):
        fig = first(*args)
        if stopped.state.iteration == 3:  # the step that makes iteration 4
            stopped.stop_signal = signal.SIGTERM
        return fig

    stopped.step = stop_after_four
    with pytest.raises(Interrupted):
        stopped.fit()
    Trainer(_smoke(data_root, ema_decay=0.75, deterministic=True), tmp_path / "stopped", resume="auto").fit()
    resumed = load_checkpoint(tmp_path / "stopped/checkpoints/last.pt")
    assert resumed["iteration"] == last["iteration"] == 6
    for name, tensor in last["ema"].items():
        torch.testing.assert_close(resumed["ema"][name], tensor, rtol=0, atol=0, msg=name)

    Trainer(_smoke(data_root, deterministic=True), tmp_path / "plain").fit()
    with pytest.raises(SvgError, match=r"plain/checkpoints/last.pt: has no moving average of the weights"):
        load_model(tmp_path / "plain/checkpoints/last.pt", "ema")


def _poison(trainer: Trainer, at: int) -> None:
    """Make the loss of the ``at``-th step NaN."""
    real, calls = trainer.parts.forward, {"n": 0}

    def poisoned(*args):
        calls["n"] += 1
        res = real(*args)
        if calls["n"] == at:
            res.nll = res.nll * float("nan")
        return res

    trainer.parts.forward = poisoned


@pytest.mark.parametrize("log_every", [1, 3])
def test_a_nan_loss_is_skipped_without_touching_the_weights(data_root, tmp_path, log_every):
    trainer = Trainer(_smoke(data_root, max_bad_steps=3, log_every=log_every), tmp_path / "run")
    _poison(trainer, at=2)
    trainer.fit()
    records = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    logged = [r for r in records if "train/loss" in r]
    assert [r["iter"] for r in logged] == ([1, 3, 4, 5, 6] if log_every == 1 else [3, 6])
    assert all(math.isfinite(r["train/loss"]) for r in logged)
    assert [r["train/skipped_steps"] for r in records if "train/skipped_steps" in r][-1] == 1
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


@pytest.mark.parametrize("teacher_forcing", [True, False])
def test_a_skipped_step_leaves_the_batchnorm_statistics_as_they_were(teacher_forcing):
    """A NaN in the noise makes the forward NaN: the update is skipped, and the running statistics the
    forward had already moved are put back, so eval-mode predictions stay finite."""
    from svg.config import load_experiment
    from svg.models import SVG
    from svg.runtime import Runtime
    from svg.step import Parts, StepInput, make_optimizer, to_model_layout, train_step

    torch.manual_seed(0)
    exp = load_experiment("smoke")
    model = SVG.for_experiment(exp)
    rt = Runtime(torch.device("cpu"), None)
    parts = Parts(model, make_optimizer(model, exp.optim), rt)
    frames, cond = torch.randint(0, 256, (4, 6, 64, 64, 3), dtype=torch.uint8), torch.randn(4, 6, 7)
    eps = torch.randn(5, 4, exp.model.z_dim)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bad = eps.clone()
    bad[3, 1, 0] = float("nan")
    fig = train_step(parts, StepInput(frames, cond, bad, 2, teacher_forcing, 1e-4))
    assert not fig.finite
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0, msg=name)
    model.eval()
    assert torch.isfinite(model.predict(*to_model_layout(frames, cond, rt), 2)).all()
    model.train()
    assert train_step(
        parts, StepInput(frames, cond, eps, 2, teacher_forcing, 1e-4)
    ).finite  # a good step moves them again
    moved = [k for k, v in model.state_dict().items() if "running_mean" in k and not torch.equal(v, before[k])]
    assert len(moved) == sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def test_nan_weights_stop_the_run_and_keep_the_last_good_checkpoint(data_root, tmp_path):
    trainer = Trainer(_smoke(data_root, max_bad_steps=3, log_every=1), tmp_path / "run")
    trainer.checkpoint()
    for p in trainer.model.parameters():
        p.data.fill_(float("nan"))
    with pytest.raises(TrainingStopped, match="3 non-finite losses in a row before iteration 3"):
        trainer.fit()
    good = load_checkpoint(tmp_path / "run/checkpoints/last.pt")
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


def test_a_data_root_that_holds_no_dataset_is_refused_and_nothing_is_created(tmp_path):
    typo, out = tmp_path / "bair-typo", tmp_path / "run"
    proc = run_entrypoint("train", "--config", "smoke", f"--data.root={typo}", "--out", str(out))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(typo) in lines[0] and "expected a dataset" in lines[0], proc.stderr
    assert not typo.exists() and not out.exists()


def test_a_second_run_into_the_same_folder_is_refused(data_root, uninterrupted, tmp_path):
    out = tmp_path / "run"
    first = run_entrypoint("train", *train_args(data_root, out, "--train.epochs=1"))
    assert first.returncode == 0, first.stderr[-2000:]
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    second = run_entrypoint("train", *train_args(data_root, out, "--train.epochs=1"))
    assert second.returncode == 2
    assert str(out) in second.stderr and "--resume auto" in second.stderr
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_a_failed_resume_leaves_nothing_behind(data_root, tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    proc = run_entrypoint("train", *train_args(data_root, out, "--resume", "must"))
    assert proc.returncode == 2 and "no checkpoint" in proc.stderr
    assert list(out.iterdir()) == []


NUMBER_FIELDS = {
    f"{s}.{n}": f
    for s, m in Experiment.model_fields.items()
    for n, f in m.annotation.model_fields.items()
    if f.annotation in (int, float, int | None, float | None)
}
LITERAL_FIELDS = {
    f"{s}.{n}": f.annotation.__args__
    for s, m in Experiment.model_fields.items()
    for n, f in m.annotation.model_fields.items()
    if getattr(f.annotation, "__origin__", None) is Literal
}


@st.composite
def bad_override(draw):
    """One setting the config must refuse: a non-number, a non-finite number, a value below a field's
    bound, a choice outside a Literal, or an unknown field."""
    kind = draw(st.sampled_from(["nan", "bound", "literal", "unknown", "text"]))
    if kind == "unknown":
        section = draw(st.sampled_from(list(Experiment.model_fields)))
        name = f"{section}.{draw(st.from_regex(r'zz[a-z_]{1,8}', fullmatch=True))}"
        return name, "1", name
    if kind == "literal":
        name = draw(st.sampled_from(sorted(LITERAL_FIELDS)))
        value = draw(st.from_regex(r"[a-z]{1,10}", fullmatch=True).filter(lambda v: v not in LITERAL_FIELDS[name]))
        return name, value, name
    name = draw(st.sampled_from(sorted(NUMBER_FIELDS)))
    if kind == "nan":
        return name, draw(st.sampled_from(["nan", "inf", "-inf", "1e400"])), name
    if kind == "text":
        word = st.from_regex(r"[a-z]{1,6}", fullmatch=True).filter(lambda v: v not in ("nan", "inf", "null"))
        return name, draw(word), name
    lower = [m for m in NUMBER_FIELDS[name].metadata if hasattr(m, "gt") or hasattr(m, "ge")]
    assume(lower)
    bound = getattr(lower[0], "gt", None)
    value = bound if bound is not None else lower[0].ge - draw(st.integers(1, 1000))
    return name, str(value), name


train_main = entrypoint_main("train")


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(bad=bad_override())
def test_every_bad_setting_exits_2_naming_the_field(bad, capsys):
    name, value, named = bad
    try:
        code = train_main(["--config", "smoke", f"--{name}={value}", "--out", "/nonexistent/never-created"])
    except SystemExit as e:  # argparse's own errors
        code = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and named in err[0], (name, value, err)
