"""The benchmark: its report (on the smoke preset), its bad-input exits, and its small pure parts."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import run_entrypoint

from svg.bench import alternate, count_flops, cpu_peak_flops, peak_memory


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "smoke.json"
    proc = run_entrypoint(
        "bench", "--config", "smoke", "--steps", "2", "--threads", "1", "--loader-batches", "3",
        "--eval-batches", "1", "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def test_report_holds_training_eval_and_loader_figures(report):
    r, stdout = report
    project, reference = r["project"], r["reference"]
    assert r["speedup_vs_reference"] == pytest.approx(reference["step_time_s"] / project["step_time_s"])
    for arm in (project, reference):
        assert len(arm["step_times_s"]) == 2 and arm["step_time_s"] > 0
        assert arm["train_seq_per_s"] == pytest.approx(4 / arm["step_time_s"])
        assert arm["flop_per_s"] == pytest.approx(arm["flops_per_step"] / arm["step_time_s"])
        assert arm["step_memory_bytes"] > 0 and arm["peak_memory_bytes"] >= arm["step_memory_bytes"]
    # teacher forced: the project encodes each of the 6 frames once, the reference twice per step (10 times)
    assert 0 < project["flops_per_step"] < reference["flops_per_step"]
    assert reference["precision"] == "fp32" and not reference["channels_last"]
    assert project["eval_seq_per_s"] > 0 and project["eval_frames"] == 10
    loader = r["loader"]
    assert loader["cache"]["seq_per_s"] > 0 and loader["png"]["seq_per_s"] > 0
    assert loader["cache_vs_png"] == pytest.approx(loader["cache"]["seq_per_s"] / loader["png"]["seq_per_s"])
    assert len(r["load_average"]["before"]) == 3 and r["machine"]["threads"] == 1
    assert "speed-up" in stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--steps", "0"], "--steps"),
        (["--config", "nosuch"], "nosuch"),
        (["--config", "smoke", "--train.precision=fp8"], "precision"),
    ],
)
def test_bad_input_exits_2_with_one_line(args, message, tmp_path):
    proc = run_entrypoint("bench", *args, "--out", str(tmp_path / "x.json"))
    assert proc.returncode == 2
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.json").exists()


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


def test_flop_count_of_a_linear_layer_forward_and_backward():
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
