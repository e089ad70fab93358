"""End to end: the train entrypoint on the smoke preset, read back through wandb's own reader."""

import json

import pytest
import torch
from conftest import inspect_history, inspect_run, run_entrypoint

from svg.config import Model
from svg.metrics import psnr_per_frame
from svg.models import SVG

LOGGED = [
    "train/loss",
    "train/mse",
    "train/kld",
    "beta",
    "tfr",
    "lr",
    "val/psnr",
    "val/psnr_best",
    "val/ssim",
    "val/psnr_copy_last",
    "kl/active_units",
    "iter",
    "epoch",
]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("smoke")
    out = tmp / "run"
    proc = run_entrypoint(
        "train",
        "--config",
        "smoke",
        "--data.source=synthetic",
        "--data.root",
        str(tmp / "data"),
        "--out",
        str(out),
        env={"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": str(tmp)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_run_folder_holds_config_metrics_checkpoints_media(smoke_run):
    out, proc = smoke_run
    assert (out / "config.yaml").is_file()
    assert (out / "checkpoints" / "last.pt").is_file() and (out / "checkpoints" / "best.pt").is_file()
    assert list((out / "media").glob("*.gif"))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    keys = set().union(*records)
    assert set(LOGGED) <= keys
    assert [r["iter"] for r in records if "train/loss" in r] == list(range(1, 7))
    assert "wandb sync" in proc.stdout


def test_wandb_run_holds_every_metric_and_the_gif(smoke_run):
    out, _ = smoke_run
    run = inspect_run(out)
    assert run["state"] == "finished"
    summary = run["summary"]
    for key in LOGGED:
        assert key in summary, key
    assert summary["media/prediction"]["_type"] == "video-file"
    assert summary["media/prediction"]["path"].endswith(".gif")
    assert isinstance(summary["val/psnr_best"], float)  # a plain value the sweep YAMLs can name
    assert run["config"]["kl.mode"] == "monotonic" and run["config"]["train.epochs"] == 2
    history = inspect_history(out)
    records = (out / "metrics.jsonl").read_text().splitlines()
    assert len(history) == len(records)  # every record the run wrote reached its W&B history


def test_tiny_overfit_reaches_a_high_psnr():
    """150 steps on two fixed sequences of a moving square must fit them closely (teacher forced)."""
    torch.manual_seed(0)
    x = torch.full((5, 2, 3, 64, 64), 0.2)
    for t in range(5):
        x[t, 0, :, 10:26, 8 + 4 * t : 24 + 4 * t] = torch.tensor([0.9, 0.3, 0.1])[:, None, None]
        x[t, 1, :, 30 + 3 * t : 46 + 3 * t, 20:36] = torch.tensor([0.1, 0.6, 0.9])[:, None, None]
    cond = torch.randn(5, 2, 7)
    model = SVG(Model(encoder="dcgan64", channels=8, g_dim=16, z_dim=4, rnn_size=16, predictor_layers=1))
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    for _ in range(150):
        res = model.training_step(x, cond, 2, True, torch.randn(4, 2, 4))
        opt.zero_grad()
        (res.mse + 1e-4 * res.kld).backward()
        opt.step()
    assert psnr_per_frame(res.pred, x[1:]).mean().item() > 30.0


@pytest.mark.slow
def test_compiled_step_on_cpu_matches_the_eager_step():
    """train.compile with channels_last: the path that crashed inductor on CUDA, run here on the CPU."""
    from svg.config import Optim, Train
    from svg.runtime import setup_runtime
    from svg.step import Parts, StepInput, make_optimizer, make_step

    torch.manual_seed(0)
    rt = setup_runtime(Train(device="cpu", precision="fp32", channels_last=True, compile="default"))
    assert rt.channels_last  # the CPU keeps it under compile
    frames, cond = torch.randint(0, 256, (2, 6, 64, 64, 3), dtype=torch.uint8), torch.randn(2, 6, 7)
    eps = torch.randn(5, 2, 4)
    losses = []
    for mode in ("off", "default"):
        torch.manual_seed(1)
        model = SVG(Model(encoder="dcgan64", channels=8, g_dim=16, z_dim=4, rnn_size=16)).to(
            memory_format=torch.channels_last
        )
        model.channels_last = True
        step = make_step(Parts(model, make_optimizer(model, Optim()), rt), mode)
        losses.append([step(StepInput(frames, cond, eps, 2, True, 1e-4)).loss.item() for _ in range(3)])
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)


def test_the_training_state_comes_back_from_its_state_dict():
    """Every figure of where a run stands, and its random streams, continue from a checkpoint's entries."""
    from svg.runtime import Runtime
    from svg.train import TrainingState

    rt = Runtime(torch.device("cpu"), None)
    saved_run = TrainingState(seed=3, z_dim=2, rt=rt)
    saved_run.iteration, saved_run.best_psnr, saved_run.validations, saved_run.wandb_id = 7, 21.5, 2, "abc"
    saved_run.divergence.counts += torch.tensor([4, 0, 2])
    torch.rand(5, generator=saved_run.tf_gen)
    saved = saved_run.state_dict()
    coin, noise = torch.rand(3, generator=saved_run.tf_gen), torch.rand(3)

    resumed = TrainingState(seed=99, z_dim=2, rt=rt)
    resumed.load_state_dict(saved)
    assert (resumed.iteration, resumed.best_psnr, resumed.validations, resumed.wandb_id) == (7, 21.5, 2, "abc")
    assert resumed.divergence.counts.tolist() == [4, 0, 2]
    assert torch.equal(torch.rand(3, generator=resumed.tf_gen), coin) and torch.equal(torch.rand(3), noise)
    assert resumed.elapsed() >= saved["elapsed_s"] > 0
