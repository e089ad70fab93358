"""DDP on CPU: two gloo ranks train the smoke preset and end with identical weights; torchrun runs the
train entrypoint with rank 0 alone writing checkpoints, metrics and the W&B run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from svg.config import load_experiment
from svg.data import ensure_synthetic

ROOT = Path(__file__).resolve().parents[1]
SHORT = {
    "train.threads": 1,
    "train.epochs": 1,
    "train.iters_per_epoch": 3,
    "tfr.start_decay_epoch": 0,
    "train.val_sequences": 4,
}


@pytest.fixture(scope="module")
def smoke_data(tmp_path_factory) -> Path:
    """The smoke preset's synthetic set, made once, so no rank has to generate it."""
    exp = load_experiment("smoke")
    root = tmp_path_factory.mktemp("ddp") / "data"
    return ensure_synthetic(root, exp.data.n_train, exp.data.n_val, exp.data.n_test, seed=0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_trainer(rank: int, world_size: int, port: int, data: str, out: str, extra: dict | None = None):
    """The Trainer of one rank as torchrun would start it, on the smoke preset shortened by SHORT."""
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    from svg.train import Trainer

    overrides = {**SHORT, "data.root": data, "data.source": "synthetic", "tracking.mode": "disabled", **(extra or {})}
    return Trainer(load_experiment("smoke", overrides), Path(out))


def _train_rank(
    rank: int, world_size: int, port: int, data: str, out: str, results: str, extra: dict | None = None
) -> None:
    """One rank trained, then its weights saved for the parent to compare."""
    from torch._dynamo.utils import counters

    trainer = _rank_trainer(rank, world_size, port, data, out, extra)
    initial = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.fit()
    torch.save(
        {
            "initial": initial,
            "params": dict(trainer.model.named_parameters()),
            "buffers": dict(trainer.model.named_buffers()),
            "adam": trainer.parts.optimizer.state_dict()["state"],
            "graphs": counters["stats"]["unique_graphs"],
        },
        Path(results) / f"rank{rank}.pt",
    )
    dist.destroy_process_group()


def _spawn(fn, args: tuple, nprocs: int, timeout: float) -> None:
    """torch.multiprocessing.spawn with a deadline, so a DDP deadlock fails the test instead of hanging it."""
    context = mp.spawn(fn, args=args, nprocs=nprocs, join=False)
    deadline = time.monotonic() + timeout
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for p in context.processes:
                p.kill()
            pytest.fail(f"DDP ranks still running after {timeout:.0f} s (deadlock?)")


@pytest.mark.parametrize(
    "compile_mode", ["off", pytest.param("default", marks=pytest.mark.slow, id="compiled")]
)  # compiled: torch.compile is handed the DDP module
def test_two_gloo_ranks_train_to_identical_weights(smoke_data, tmp_path, compile_mode):
    results = tmp_path / "results"
    results.mkdir()
    out = tmp_path / "run"
    args = (2, _free_port(), str(smoke_data), str(out), str(results), {"train.compile": compile_mode})
    _spawn(_train_rank, args, nprocs=2, timeout=150 if compile_mode == "off" else 900)

    r0, r1 = (torch.load(results / f"rank{r}.pt", weights_only=True) for r in range(2))
    for name, p in r0["params"].items():
        assert torch.equal(r0["initial"][name], r1["initial"][name]), f"{name}: DDP did not broadcast rank 0's init"
        assert torch.equal(p, r1["params"][name]), f"{name}: the ranks' weights differ after training"
    assert any(not torch.equal(p, r0["initial"][n]) for n, p in r0["params"].items()), "no weight changed"
    for i, state in r0["adam"].items():
        assert torch.equal(state["exp_avg"], r1["adam"][i]["exp_avg"]), f"Adam state {i} differs between ranks"
    # BatchNorm statistics start each step from rank 0's (DDP broadcasts buffers) and then take the rank's
    # own batch: they differ only if the ranks trained on different sequences, as sharding should make them.
    running = [n for n in r0["buffers"] if n.endswith("running_mean")]
    assert any(not torch.equal(r0["buffers"][n], r1["buffers"][n]) for n in running), "ranks saw the same data"
    # compiled: the model's forward is one graph per teacher forcing branch (DDP's own wrapper runs eagerly)
    assert r0["graphs"] == r1["graphs"] and r0["graphs"] in ((0,) if compile_mode == "off" else (1, 2))
    # rank 0 alone writes the run folder
    assert (out / "checkpoints" / "last.pt").is_file()
    iters = [json.loads(line).get("iter") for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert iters.count(1) == 1


def _signal_on_one_rank(rank: int, world_size: int, port: int, data: str, out: str, results: str) -> None:
    """The Trainer under DDP where only rank 1 got SIGTERM (as if before its first step)."""
    from svg.errors import Interrupted

    trainer = _rank_trainer(rank, world_size, port, data, out, {"train.log_every": 2, "train.iters_per_epoch": 6})
    if rank == 1:
        trainer.stop_signal = 15
    try:
        trainer.fit()
    except Interrupted:
        pass
    torch.save({"iteration": trainer.state.iteration}, Path(results) / f"rank{rank}.pt")
    dist.destroy_process_group()


def test_a_signal_on_one_rank_stops_every_rank_at_the_same_iteration(smoke_data, tmp_path):
    _spawn(_signal_on_one_rank, (2, _free_port(), str(smoke_data), str(tmp_path / "run"), str(tmp_path)), 2, 120)
    stopped = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True)["iteration"] for r in range(2)]
    assert stopped == [2, 2]  # the first train.log_every boundary, not rank 1's first step and rank 0's end
    assert torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=True)["iteration"] == 2


def _train_or_resume(rank: int, world_size: int, port: int, data: str, out: str, results: str, stop: bool) -> None:
    """Six iterations of two ranks, or (stop) the first two of them, or the rest after such a stop; each rank
    saves its weights, and a resumed rank the noise it would draw next."""
    from svg.errors import Interrupted

    resume = "auto" if (Path(out) / "checkpoints" / "last.pt").exists() else None
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    from svg.train import Trainer

    overrides = {**SHORT, "data.root": data, "data.source": "synthetic", "tracking.mode": "disabled"}
    overrides.update({"train.log_every": 2, "train.iters_per_epoch": 6})
    trainer = Trainer(load_experiment("smoke", overrides), Path(out), resume=resume)
    noise = torch.get_rng_state().clone()
    if stop and rank == 1:
        trainer.stop_signal = 15
    try:
        trainer.fit()
    except Interrupted:
        pass
    params = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    torch.save({"params": params, "noise": noise}, Path(results) / f"{'stopped' if stop else 'ran'}-{rank}.pt")
    dist.destroy_process_group()


def test_two_resumed_gloo_ranks_keep_their_own_noise_and_match_an_uninterrupted_run(smoke_data, tmp_path):
    """Each rank's random streams travel in the checkpoint: resumed, rank 1 does not draw rank 0's noise, and
    the two ranks end where an uninterrupted run does."""
    for run, stops in (("whole", [False]), ("resumed", [True, False])):
        for stop in stops:
            results = tmp_path / run / ("stopped" if stop else "ran")
            results.mkdir(parents=True)
            args = (2, _free_port(), str(smoke_data), str(tmp_path / run / "run"), str(results), stop)
            _spawn(_train_or_resume, args, nprocs=2, timeout=150)

    def load(run: str, part: str, rank: int) -> dict:
        return torch.load(tmp_path / run / part / f"{part}-{rank}.pt", weights_only=True)

    resumed, whole, stopped = (
        [load("resumed", "ran", r) for r in range(2)],
        load("whole", "ran", 0),
        load("resumed", "stopped", 0),
    )
    assert not torch.equal(resumed[0]["noise"], resumed[1]["noise"]), "the resumed ranks draw the same noise"
    assert any(not torch.equal(stopped["params"][n], p) for n, p in whole["params"].items()), (
        "the run did not stop early"
    )
    for name, p in whole["params"].items():
        assert torch.equal(resumed[0]["params"][name], p), f"{name}: the resumed run ended elsewhere"


def _nan_on_one_rank(rank: int, world_size: int, port: int, results: str) -> None:
    """One eager step of a tiny model under DDP, with NaN noise on rank 1 only."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    from svg.config import Model, Optim
    from svg.models import SVG
    from svg.runtime import Runtime
    from svg.step import Parts, StepInput, make_optimizer, make_step

    torch.manual_seed(0)
    model = SVG(Model(encoder="dcgan64", channels=8, g_dim=16, z_dim=4, rnn_size=16, prior="learned"))
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    for clip in (None, 1.0):  # the norm comes from clipping, or is taken for the check alone
        parts = Parts(
            model,
            make_optimizer(model, Optim(grad_clip=clip)),
            Runtime(torch.device("cpu"), None, False, rank, world_size),
            clip,
            forward=ddp,
        )
        before = [p.detach().clone() for p in model.parameters()]
        g = torch.Generator().manual_seed(rank)
        frames = torch.randint(0, 256, (3, 6, 64, 64, 3), dtype=torch.uint8, generator=g)
        eps = torch.randn(5, 3, 4, generator=g)
        cond, eps = torch.randn(3, 6, 7, generator=g), eps * (float("nan") if rank else 1.0)
        fig = make_step(parts, "off")(StepInput(frames, cond, eps, 2, True, 1e-4))
        unchanged = all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
        torch.save({"finite": bool(fig.finite), "unchanged": unchanged}, Path(results) / f"rank{rank}-clip{clip}.pt")
    dist.destroy_process_group()


def test_a_nan_on_one_rank_skips_the_update_on_every_rank(tmp_path):
    """DDP averages one rank's NaN gradients into every rank's: all must skip, and all must count it."""
    _spawn(_nan_on_one_rank, (2, _free_port(), str(tmp_path)), nprocs=2, timeout=120)
    for rank in (0, 1):
        for clip in (None, 1.0):
            result = torch.load(tmp_path / f"rank{rank}-clip{clip}.pt", weights_only=True)
            assert result == {"finite": False, "unchanged": True}, (rank, clip)


def test_cpu_ranks_under_torchrun_share_the_cores_unless_threads_are_set():
    from svg.runtime import cpu_threads

    cores = len(os.sched_getaffinity(0))
    assert cpu_threads(None, 2, use_cuda=False) == max(1, cores // 2)
    assert cpu_threads(None, 4 * cores, use_cuda=False) == 1
    assert cpu_threads(3, 2, use_cuda=False) == 3
    assert cpu_threads(None, 1, use_cuda=False) is None and cpu_threads(None, 2, use_cuda=True) is None


def test_torchrun_runs_the_train_entrypoint_on_two_cpu_ranks(smoke_data, tmp_path):
    out = tmp_path / "run"
    overrides = [f"--{k}={v}" for k, v in SHORT.items()]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--standalone",
            str(ROOT / "entrypoints" / "train.py"),
            "--config",
            "smoke",
            "--data.source=synthetic",
            "--data.root",
            str(smoke_data),
            "--out",
            str(out),
            *overrides,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records if "train/loss" in r] == [1, 2, 3], "one rank, and only one, logs"
    assert (out / "checkpoints" / "last.pt").is_file() and (out / "checkpoints" / "best.pt").is_file()
    assert len(list((out / "wandb").glob("offline-run-*"))) == 1, "exactly one W&B run (rank 0's)"
