"""The benchmark: it times the trainer's step, its report has the documented keys, bad input exits with
one line, and its measuring parts (FLOP counter, peak memory, alternation, CPU peak) are right."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import run_entrypoint

from svg.bench.arms import REFERENCE, ArmSetting, alternate, count_flops, make_arm
from svg.bench.loaders import step_batches
from svg.bench.machine import cpu_peak_flops, mfu, peak_memory
from svg.config import load_experiment
from svg.models import SVG
from svg.runtime import Runtime
from svg.step import Parts, StepInput, make_optimizer, train_step

TOP_KEYS = {
    "preset",
    "device",
    "settings",
    "speedup_vs_reference",
    "project",
    "reference",
    "flops_ratio",
    "variants",
    "loader",
    "machine",
    "load_average",
    "wall_time_s",
}
ARM_KEYS = {
    "step_time_s",
    "teacher_forced_share",
    "branches",
    "steps_per_s",
    "train_seq_per_s",
    "flops_per_step",
    "flop_per_s",
    "epoch_time_s",
    "seed_epoch_time_s",
    "precision",
    "channels_last",
    "compile",
    "peak_memory_bytes",
    "step_memory_bytes",
    "memory_source",
    "compile_ran",
    "mfu",
    "first_step_peak_memory_bytes",
}
BRANCH_KEYS = {"step_time_s", "step_time_mean_s", "step_time_min_s", "step_times_s", "warmup_times_s", "flops_per_step"}
SMOKE_SHARE = 5 / 6
"""The smoke preset's teacher-forced share of steps (tests/test_schedules.py works it out by hand)."""


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "smoke.json"
    proc = run_entrypoint(
        "bench",
        "--config",
        "smoke",
        "--steps",
        "2",
        "--threads",
        "1",
        "--loader-batches",
        "3",
        "--eval-batches",
        "1",
        "--variant",
        "channels_last=false",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def test_report_has_the_documented_keys_and_figures(report):
    r, stdout = report
    assert TOP_KEYS <= set(r) and "partial" not in r  # the step-times-only report was overwritten at the end
    assert r["settings"]["branches"] == ["teacher_forced", "free_running"]
    assert r["settings"]["teacher_forced_share"] == pytest.approx(SMOKE_SHARE)
    variant = r["variants"]["channels_last=false"]
    for arm in (r["project"], r["reference"], variant):
        assert ARM_KEYS <= set(arm)
        tf, free = arm["branches"]["teacher_forced"], arm["branches"]["free_running"]
        for branch in (tf, free):
            assert BRANCH_KEYS <= set(branch) and len(branch["step_times_s"]) == 2 and branch["step_time_s"] > 0
        # the run's mix of the two branches, in the share its schedule sets
        mixed = SMOKE_SHARE * tf["step_time_s"] + (1 - SMOKE_SHARE) * free["step_time_s"]
        assert arm["step_time_s"] == pytest.approx(mixed) and arm["teacher_forced_share"] == pytest.approx(SMOKE_SHARE)
        assert arm["flops_per_step"] == round(
            SMOKE_SHARE * tf["flops_per_step"] + (1 - SMOKE_SHARE) * free["flops_per_step"]
        )
        assert arm["step_memory_bytes"] > 0 and arm["peak_memory_bytes"] >= arm["step_memory_bytes"]
        assert arm["first_step_peak_memory_bytes"] > 0
    assert r["settings"]["tf32"] is False  # TF32 is a CUDA setting: the fp32 arms there run in it
    # free running feeds the decoder's own frames back through the encoder: more work than teacher forcing
    project = r["project"]["branches"]
    assert project["free_running"]["flops_per_step"] != project["teacher_forced"]["flops_per_step"]
    # the project encodes each of the 6 frames once, the reference twice per step (10 times)
    assert 0 < r["project"]["flops_per_step"] < r["reference"]["flops_per_step"]
    assert r["reference"]["precision"] == "fp32" and not r["reference"]["channels_last"]
    assert variant["step"] == "project" and not variant["channels_last"] and r["project"]["channels_last"]
    assert variant["flops_per_step"] == r["project"]["flops_per_step"]
    assert r["project"]["eval_seq_per_s"] > 0 and r["project"]["eval_frames"] == 10
    assert r["loader"]["cache"]["seq_per_s"] > 0 and r["loader"]["png"]["seq_per_s"] > 0
    assert len(r["load_average"]["before"]) == 3 and r["machine"]["threads"] == 1
    assert "speed-up" in stdout and "variant" in stdout
    for arm in (r["project"], r["reference"], variant):  # no tensor-core peak on a CPU: null, with the reason
        assert arm["mfu"] is None and "cpu" in arm["mfu_reason"] and arm["compile"] == arm["compile_ran"] == "off"


def test_mfu_divides_by_the_dense_peak_of_the_precision_that_ran():
    h100 = mfu(98.94e12, "cuda", "NVIDIA H100 80GB HBM3", "bf16")
    assert h100["mfu"] == pytest.approx(0.1) and "H100 SXM" in h100["mfu_basis"]
    assert mfu(37.8e12, "cuda", "NVIDIA H100 PCIe", "fp32")["mfu"] == pytest.approx(0.1)  # TF32 peak
    assert mfu(15.6e12, "cuda", "NVIDIA A100-SXM4-80GB", "fp32")["mfu"] == pytest.approx(0.1)
    assert "H200" in mfu(1e12, "cuda", "NVIDIA H200", "bf16")["mfu_basis"]
    unknown = mfu(1e12, "cuda", "NVIDIA GeForce RTX 4090", "bf16")
    assert unknown["mfu"] is None and "RTX 4090" in unknown["mfu_reason"]
    assert mfu(1e12, "cpu", None, "fp32")["mfu"] is None


def test_validation_is_timed_as_the_trainer_runs_it_and_projects_the_run(tmp_path):
    """Action-free conditions too (the svg preset's): prediction and validation feed the model's own width."""
    out = tmp_path / "validation.json"
    proc = run_entrypoint(
        "bench",
        "--config",
        "smoke",
        "--data.conditions=none",
        "--steps",
        "1",
        "--threads",
        "1",
        "--no-reference",
        "--loader-batches",
        "0",
        "--step-data",
        "random",
        "--eval-batches",
        "1",
        "--validation",
        "--train.val_sequences=6",
        "--train.val_batch_size=4",
        "--train.val_every=2",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    v, step, cfg = r["validation"], r["project"]["step_time_s"], load_experiment("smoke").train
    assert (v["sequences"], v["batch_size"], v["samples"]) == (6, 4, cfg.val_samples) and v["time_s"] > 0
    assert v["in_steps"] == {"project": pytest.approx(v["time_s"] / step)}
    run = r["projection"]["project"]
    epoch = cfg.iters_per_epoch * step + v["time_s"] / 2
    assert run["epoch_s"] == pytest.approx(epoch) and run["run_h"] == pytest.approx(cfg.epochs * epoch / 3600)
    assert run["training_share"] == pytest.approx(cfg.iters_per_epoch * step / epoch)
    assert r["project"]["eval_seq_per_s"] > 0 and "validate" in proc.stdout


@pytest.mark.slow
def test_captured_arm_runs_as_compile_default_on_a_cpu_and_says_so(tmp_path):
    out = tmp_path / "captured.json"
    proc = run_entrypoint(
        "bench",
        "--config",
        "smoke",
        "--steps",
        "1",
        "--warmup",
        "2",
        "--threads",
        "1",
        "--loader-batches",
        "0",
        "--eval-batches",
        "0",
        "--step-data",
        "random",
        "--captured",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    captured = r["captured"]
    assert captured["compile"] == "reduce-overhead" and captured["compile_ran"] == "default"
    assert captured["flops_per_step"] == r["project"]["flops_per_step"] and captured["mfu"] is None
    # both branches compiled, each at least one graph; on a CPU no CUDA graph can be skipped
    counts = r["compile_counts"]
    assert counts["graphs"] >= 2 and counts["graph_breaks"] >= 0 and counts["cudagraph_skips"] == 0
    assert r["speedup_captured_vs_reference"] > 0 and captured["project_over_this"] > 0
    assert "captured" in proc.stdout and "compile default" in proc.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--steps", "0"], "--steps"),
        (["--config", "nosuch"], "nosuch"),
        (["--config", "smoke", "--train.precision=fp8"], "precision"),
        (["--config", "smoke", "--variant", "channels_last=false,precision=fp8"], "'precision=fp8'"),
        (["--config", "smoke", "--variant", "colour=red"], "'colour=red'"),
        (["--config", "smoke", "--variant", "compile=max"], "'compile=max'"),
        (["--config", "smoke", "--train.compile=max"], "train.compile"),
    ],
)
def test_bad_input_exits_2_with_one_line(args, message, tmp_path):
    proc = run_entrypoint("bench", *args, "--out", str(tmp_path / "x.json"))
    assert proc.returncode == 2
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.json").exists()


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def _one_step(lr: float, grad_clip: float | None):
    """An arm and a trainer-style ``train_step`` from the same weights, config and batch."""
    exp = load_experiment("smoke", {"optim.lr": lr, "optim.grad_clip": grad_clip})
    torch.manual_seed(0)
    initial = SVG(exp.model)
    rt = Runtime(torch.device("cpu"), None, channels_last=False)
    frames, cond = step_batches(None, batch=4, seq_len=6, count=1)[0]
    eps = torch.randn(5, 4, exp.model.z_dim)
    return exp, initial, rt, frames, cond, eps


def test_project_arm_steps_exactly_as_the_trainers_step(one_thread):
    exp, initial, rt, frames, cond, eps = _one_step(lr=1e-3, grad_clip=0.05)
    arm = make_arm("project", initial, ArmSetting("project", "fp32"), rt, exp.optim)
    inp = StepInput(frames, cond, eps, 2, True, exp.kl.beta_max)
    loss = arm.step(inp)

    model = copy.deepcopy(initial)
    parts = Parts(model, make_optimizer(model, exp.optim), rt, exp.optim.grad_clip)
    figures = train_step(parts, inp)

    assert loss == pytest.approx(figures.loss.item(), rel=1e-6)
    assert _same_weights(arm.model, model) and not _same_weights(arm.model, initial)
    # the config's lr reaches the arm: the seed's fixed Adam lr (2e-3) would have moved the weights elsewhere
    other = make_arm("project", initial, ArmSetting("project", "fp32"), rt, _one_step(2e-3, None)[0].optim)
    other.step(inp)
    assert not _same_weights(other.model, arm.model)


def test_reference_arm_differs_only_in_how_the_sequence_runs():
    exp, initial, rt, frames, cond, eps = _one_step(lr=1e-3, grad_clip=None)
    project = make_arm("project", initial, ArmSetting("project", "fp32"), rt, exp.optim)
    reference = make_arm("reference", initial, REFERENCE, rt, exp.optim)
    assert reference.parts.rt.amp_dtype is None and not reference.model.channels_last
    inp = StepInput(frames, cond, eps, 2, True, exp.kl.beta_max)
    losses = [arm.step(inp) for arm in (project, reference)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    assert count_flops(lambda: reference.step(inp)) > count_flops(lambda: project.step(inp))


def test_arms_alternate_so_drift_hits_both():
    order = []
    alternate(["A", "B"], 4, lambda i, arm: order.append(arm))
    assert "".join(order) == "ABBAABBA"


def test_cpu_peak_from_clock_and_vector_units():
    avx2 = cpu_peak_flops(2, 2445.0, {"avx2", "fma"}, "AuthenticAMD")
    assert avx2["fp32_flop_per_s"] == pytest.approx(2 * 2.445e9 * 2 * 8 * 2)
    assert "bf16_flop_per_s" not in avx2
    xeon = cpu_peak_flops(2, 2000.0, {"avx2", "fma", "avx512f", "amx_bf16"}, "GenuineIntel")
    assert xeon["fp32_flop_per_s"] == pytest.approx(2 * 2e9 * 64)
    assert xeon["bf16_flop_per_s"] == pytest.approx(2 * 2e9 * 1024)
    zen4 = cpu_peak_flops(1, 1000.0, {"avx2", "fma", "avx512f"}, "AuthenticAMD")
    assert zen4["fp32_flop_per_s"] == pytest.approx(1e9 * 32)


def test_flop_count_of_a_matmul_and_of_a_linear_layers_backward():
    a, b = torch.randn(7, 5), torch.randn(5, 3)
    assert count_flops(lambda: a @ b) == 2 * 7 * 5 * 3
    layer = torch.nn.Linear(4, 3, bias=False)
    x = torch.randn(5, 4, requires_grad=True)
    # forward 2*5*4*3; backward: grad of input and of weight, the same again each
    assert count_flops(lambda: layer(x).sum().backward()) == 3 * 2 * 5 * 4 * 3


def test_peak_memory_is_the_steps_own():
    big = peak_memory(torch.device("cpu"), lambda: torch.ones(16 * 2**20).add_(1).sum())  # 64 MiB
    small = peak_memory(torch.device("cpu"), lambda: torch.ones(1024).sum())
    assert big["step_memory_bytes"] >= 60 * 2**20
    if big["memory_source"].startswith("VmHWM"):  # resettable peak (Linux): the second step's is its own
        assert small["step_memory_bytes"] < 16 * 2**20
