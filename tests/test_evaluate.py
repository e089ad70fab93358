"""Evaluation: the numbers (copy-last, best of N, intervals, horizon, seeds), the learned prior, the CLI."""

import dataclasses
import importlib.util
import json
import math

import pytest
import torch
from conftest import ROOT, inspect_run, run_entrypoint

from svg.config import Model
from svg.evaluation import (
    ACTIVE_UNITS,
    BEST_MINUS_MEAN,
    COPY_LAST_PSNR,
    KL,
    PERCEPTUAL,
    PSNR,
    PSNR_BEST_OF_N,
    Evaluation,
    Window,
    best_of_n,
    evaluate,
    summarize,
    validation_line,
    validation_record,
    z_interval,
)
from svg.metrics import copy_last
from svg.models import SVG
from svg.runtime import Runtime

TINY = dict(encoder="dcgan64", channels=8, g_dim=16, z_dim=4, rnn_size=16, predictor_layers=1)
N_PAST, HORIZON = 2, 6
CPU = Runtime(torch.device("cpu"), None)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """The test machine's two cores are shared: one thread avoids OpenMP spinning against other jobs."""


def batches(n_batches: int = 2, batch: int = 3, steps: int = N_PAST + HORIZON, seed: int = 0):
    """Loader-shaped batches of a square drifting over a noisy background."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        frames = torch.rand(batch, 1, 64, 64, 3, generator=g).mul(60).add(80).expand(-1, steps, -1, -1, -1).clone()
        for t in range(steps):
            frames[:, t, 20:36, 4 + 3 * t : 20 + 3 * t] = 220
        out.append((frames.to(torch.uint8), torch.randn(batch, steps, 7, generator=g)))
    return out


def run(model, n_samples=1, seed=0, **kw):
    kw.setdefault("media_sequences", 2)
    return evaluate(model, batches(), N_PAST, n_samples, CPU, seed, **kw)


def tiny(prior="fixed", seed=0) -> SVG:
    torch.manual_seed(seed)
    return SVG(Model(**TINY, prior=prior))


class CopyLast(SVG):
    """A "model" that repeats the last context frame: its scores must be the baseline's."""

    def predict(self, x, cond, n_past, generator=None):
        return copy_last(x, n_past, cond.shape[0])


# -- the numbers ------------------------------------------------------------------------------------


def test_copy_last_model_scores_exactly_the_baseline():
    torch.manual_seed(0)
    s = summarize(run(CopyLast(Model(**TINY)), n_samples=2), frames=4)
    h, curves = s.headline, s.per_frame
    assert h.psnr == h.copy_last_psnr and h.ssim == h.copy_last_ssim
    assert h.psnr_best_of_n.mean == h.copy_last_psnr.mean
    assert curves.psnr == curves.copy_last_psnr and curves.ssim == curves.copy_last_ssim


def test_per_frame_curves_have_one_value_per_predicted_frame():
    s = summarize(run(tiny(), n_samples=2), frames=3)
    assert s.horizon == HORIZON and s.frames == 3 and s.n_sequences == 6 and s.n_samples == 2
    for key in ("psnr", "ssim", "psnr_best_of_n", "ssim_best_of_n", "copy_last_psnr", "copy_last_ssim"):
        curve = getattr(s.per_frame, key)
        assert len(curve.mean) == HORIZON and len(curve.ci95) == HORIZON
        assert getattr(s.long_horizon, key).ci95 > 0
    assert s.headline.psnr.mean == pytest.approx(sum(s.per_frame.psnr.mean[:3]) / 3, abs=1e-5)
    assert s.long_horizon.psnr.mean == pytest.approx(sum(s.per_frame.psnr.mean) / HORIZON, abs=1e-5)
    json = s.to_json()  # the evaluation JSON's flat keys
    assert json["psnr"] == s.headline.psnr.mean and json["psnr_per_frame_ci95"] == s.per_frame.psnr.ci95
    assert json["long_horizon"]["best_minus_mean_ci95"] == s.long_horizon.best_minus_mean.ci95
    assert "lpips" not in json and "fvd" not in json
    with pytest.raises(ValueError, match="horizon"):
        summarize(run(tiny()), frames=HORIZON + 1)


def test_best_of_n_is_at_least_the_mean_of_n_on_the_same_samples():
    ev = run(tiny(), n_samples=4)
    assert not torch.equal(ev.psnr[0], ev.psnr[1])  # the samples differ, so the check means something
    for values, frames in ((ev.psnr, 3), (ev.ssim, 3), (ev.psnr, HORIZON)):
        best, mean = best_of_n(values, frames)[:frames].mean(0), values[:, :frames].mean((0, 1))
        assert (best >= mean - 1e-9).all() and (best > mean).any()
    h = summarize(ev, frames=3).headline
    assert h.psnr_best_of_n.mean > h.psnr.mean and h.ssim_best_of_n.mean >= h.ssim.mean


def test_best_of_n_chooses_per_sequence_and_per_metric_over_the_averaged_frames():
    values = torch.tensor([[[1.0, 5.0], [9.0, 5.0]], [[2.0, 6.0], [2.0, 0.0]]])  # (N=2, T=2, S=2)
    assert best_of_n(values, frames=1).tolist() == [[2.0, 6.0], [2.0, 0.0]]  # sample 1 wins frame 0 for both
    assert best_of_n(values, frames=2).tolist() == [[1.0, 5.0], [9.0, 5.0]]  # sample 0 wins the 2-frame mean


def test_mean_and_95_interval_over_sequences():
    mean, half = z_interval(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert mean == 2.5 and half == pytest.approx(1.96 * (5 / 3) ** 0.5 / 2)
    assert z_interval(torch.tensor([7.0])) == (7.0, 0.0)


def test_evaluation_is_seeded_uses_eval_batchnorm_and_restores_the_mode():
    model = tiny()
    model.train()
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    a, b, c = run(model, n_samples=2, seed=5), run(model, n_samples=2, seed=5), run(model, n_samples=2, seed=6)
    assert torch.equal(a.psnr, b.psnr) and torch.equal(a.ssim, b.ssim) and torch.equal(a.panels.best, b.panels.best)
    assert not torch.equal(a.psnr, c.psnr)
    assert model.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in stats.items())  # eval-mode BatchNorm


def test_media_panels_hold_context_then_the_first_and_the_best_sample():
    model, drawn = tiny(), []
    predict = model.predict
    model.predict = lambda *a, **kw: drawn.append(predict(*a, **kw)) or drawn[-1]
    ev = run(model, n_samples=3, media_sequences=2, seed=2)
    truth, sample, second, best = (v for _, v in ev.panels.videos())
    assert truth.shape == sample.shape == second.shape == best.shape == (N_PAST + HORIZON, 2, 3, 64, 64)
    assert torch.equal(sample[:N_PAST], truth[:N_PAST]) and torch.equal(best[:N_PAST], truth[:N_PAST])
    assert torch.equal(sample[N_PAST:], drawn[0][:, :2]) and torch.equal(second[N_PAST:], drawn[1][:, :2])
    chosen = ev.psnr[:, :, :2].mean(1).argmax(0).tolist()
    assert chosen != [0, 0], "pick a seed where a later sample wins, or the check means nothing"
    for j, i in enumerate(chosen):
        assert torch.equal(best[N_PAST:, j], drawn[i][:, j])
    assert run(tiny(), media_sequences=0).panels is None


def test_a_model_that_ignores_z_has_no_z_use_no_diversity_and_no_best_of_n_gain():
    model = tiny()
    with torch.no_grad():
        model.predictor.embed.weight[:, -TINY["z_dim"] :] = 0  # z enters the predictor here only
    s = summarize(run(model, n_samples=3), frames=3)
    assert s.z_use.mean == 0 and s.sample_diversity == 0
    assert s.headline.best_minus_mean.mean == 0 and s.headline.best_minus_mean.ci95 == 0
    used = summarize(run(tiny(), n_samples=3), frames=3)
    assert used.sample_diversity > 0 and used.headline.best_minus_mean.mean > 0


def two_samples_three_sequences() -> Evaluation:
    psnr = torch.tensor([[[20.0, 30.0, 10.0]], [[22.0, 30.0, 16.0]]])  # (N=2, T=1, S=3)
    return Evaluation(
        psnr=psnr,
        ssim=torch.zeros_like(psnr),
        copy_last_psnr=torch.full((1, 3), 18.0),
        copy_last_ssim=torch.zeros(1, 3),
        kl_per_dim=torch.tensor([0.5, 0.0, 0.0, 0.0]),
        z_use=torch.zeros(3),
        diversity=torch.zeros(3),
        n_past=2,
        panels=None,
    )


def test_best_minus_mean_is_paired_per_sequence():
    """Two samples, three sequences: per sequence best-of-2 minus mean-of-2 over the frames, then the
    mean and 1.96 sd / sqrt(3) of those differences."""
    gain = summarize(two_samples_three_sequences(), frames=1).headline.best_minus_mean
    gains = torch.tensor([1.0, 0.0, 3.0])  # 22 - 21, 30 - 30, 16 - 13
    assert gain.mean == pytest.approx(gains.mean().item())
    assert gain.ci95 == pytest.approx(1.96 * gains.std().item() / math.sqrt(3), abs=1e-6)


def test_the_names_other_modules_read_are_the_summarys_keys():
    """The study and the evaluator read figures by these names: each is a key of the evaluation JSON with the
    figure's value, and validation logs the headline ones under val/."""
    s = summarize(two_samples_three_sequences(), frames=1)
    out = s.to_json()
    assert out[PSNR] == pytest.approx(128 / 6) and out[PSNR_BEST_OF_N] == pytest.approx(68 / 3)
    assert out[COPY_LAST_PSNR] == 18 and out[BEST_MINUS_MEAN] == pytest.approx(4 / 3)
    assert out[ACTIVE_UNITS] == 1 and out[KL] == 0.5
    assert set(PERCEPTUAL) <= {f.name for f in dataclasses.fields(Window)} | {f.name for f in dataclasses.fields(s)}
    record = validation_record(s)
    assert record[f"val/{BEST_MINUS_MEAN}"] == out[BEST_MINUS_MEAN] and record["val/psnr"] == out[PSNR]
    assert validation_line(s, best_psnr=25.0) == (
        "val psnr 21.33 dB (copy-last 18.00, best 25.00)  best-of-2 gain +1.33 dB  kl 0.5 nats/step, active units 1"
    )


def test_latent_usage_is_reported():
    s = summarize(run(tiny(), n_samples=1), frames=3)
    assert len(s.kl_per_dim) == TINY["z_dim"] and all(v >= 0 for v in s.kl_per_dim)
    assert s.kl == pytest.approx(sum(s.kl_per_dim), abs=1e-5)
    assert 0 <= s.active_units <= TINY["z_dim"]


# -- the learned prior (SVG-LP) -------------------------------------------------------------------


def test_kl_of_identical_learned_prior_and_posterior_is_zero_through_the_model():
    model = tiny("learned")
    state = model.posterior.state_dict()
    g = state["embed.weight"].shape[1]  # the prior also sees c_t: give its columns zero weight
    state["embed.weight"] = torch.cat([state["embed.weight"], torch.zeros(state["embed.weight"].shape[0], 7)], 1)
    model.prior.load_state_dict(state)
    assert model.prior.embed.weight.shape[1] == g + 7
    still = torch.rand(1, 2, 3, 64, 64).expand(N_PAST + HORIZON, -1, -1, -1, -1)  # x_t == x_{t-1}: same inputs
    eps = torch.zeros(N_PAST + HORIZON - 1, 2, TINY["z_dim"])
    res = model.training_step(still, torch.randn(N_PAST + HORIZON, 2, 7), N_PAST, True, eps)
    assert res.kld.abs().item() < 1e-6 and res.kld_per_dim.abs().max().item() < 1e-6
    moving = torch.rand(N_PAST + HORIZON, 2, 3, 64, 64)
    assert model.training_step(moving, torch.randn(N_PAST + HORIZON, 2, 7), N_PAST, True, eps).kld.item() > 1e-4


def test_learned_prior_is_what_prediction_samples_from():
    model = tiny("learned").eval()
    with torch.no_grad():
        model.prior.logvar.weight.zero_()
        model.prior.logvar.bias.fill_(-200.0)  # sigma underflows: a sample from this prior is its mean
    zs, prior_means = [], []
    model.predictor.register_forward_pre_hook(lambda m, args: zs.append(args[0][:, -TINY["z_dim"] :].clone()))
    model.prior.register_forward_hook(lambda m, args, out: prior_means.append(out[0].clone()))
    x, c = torch.rand(N_PAST, 2, 3, 64, 64), torch.randn(N_PAST + HORIZON, 2, 7)
    model.predict(x, c, N_PAST, generator=torch.Generator().manual_seed(0))
    assert len(zs) == len(prior_means) == N_PAST + HORIZON - 1
    for t in range(N_PAST, N_PAST + HORIZON):  # predicted steps: z is the learned prior's sample
        assert torch.equal(zs[t - 1], prior_means[t - 1])
    assert not torch.equal(zs[0], prior_means[0])  # context steps: z from the posterior on the given frames

    fixed, zs_fixed = tiny("fixed").eval(), []
    fixed.predictor.register_forward_pre_hook(lambda m, args: zs_fixed.append(args[0][:, -TINY["z_dim"] :]))
    fixed.predict(x, c, N_PAST, generator=torch.Generator().manual_seed(0))
    assert 0.3 < torch.cat(zs_fixed[N_PAST - 1 :]).std().item() < 3  # N(0, I) samples


# -- the CLI ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def learned_run(tmp_path_factory):
    """The smoke preset trained with the learned prior: training must run, and evaluation needs a checkpoint."""
    tmp = tmp_path_factory.mktemp("learned")
    proc = run_entrypoint(
        "train",
        "--config",
        "smoke",
        "--model.prior=learned",
        "--data.source=synthetic",
        "--data.root",
        str(tmp / "data"),
        "--out",
        str(tmp / "run"),
        env={"WANDB_DIR": str(tmp), "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp


def evaluate_cli():
    spec = importlib.util.spec_from_file_location("evaluate_cli", ROOT / "entrypoints" / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_training_with_the_learned_prior_runs_and_logs_best_of_n_media(learned_run):
    state = torch.load(learned_run / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert state["config"]["model"]["prior"] == "learned"
    assert any(k.startswith("prior.") for k in state["model"])
    records = [json.loads(line) for line in (learned_run / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("kl/active_units" in r and "val/psnr" in r for r in records)
    gif = sorted((learned_run / "run" / "media").glob("*.gif"))[-1]
    from PIL import Image

    assert Image.open(gif).width == 4 * 66  # ground truth | sample 1 | sample 2 | best of N


def test_evaluate_cli_writes_the_results_media_and_logs_to_the_checkpoints_run(learned_run):
    out = learned_run / "eval" / "test.json"
    ckpt = learned_run / "run" / "checkpoints" / "best.pt"
    proc = run_entrypoint(
        "evaluate",
        str(ckpt),
        "--split",
        "test",
        "--out",
        str(out),
        "--samples",
        "2",
        "--horizon",
        "8",
        "--frames",
        "4",
        env={"WANDB_DIR": str(learned_run), "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    contract = ["psnr", "ssim", "psnr_per_frame", "ssim_per_frame", "copy_last_psnr", "n_sequences"]
    extra = ["psnr_best_of_n", "ssim_best_of_n", "n_samples", "horizon", "psnr_ci95", "ssim_best_of_n_ci95"]
    assert set(contract + extra + ["kl_per_dim", "active_units", "long_horizon"]) <= result.keys()
    assert result["n_sequences"] == 8 and result["n_samples"] == 2 and len(result["psnr_per_frame"]) == 8
    assert result["psnr_best_of_n"] >= result["psnr"]
    for name in result["media"].values():
        assert (out.parent / name).stat().st_size < 200_000
    assert "test: PSNR" in proc.stdout and "copy-last" in proc.stdout
    run = inspect_run(out.parent)
    state = torch.load(ckpt, weights_only=True)
    assert run["run_id"] == state["wandb_id"] and run["state"] == "finished"
    assert run["summary"]["test/psnr"] == pytest.approx(result["psnr"])
    assert run["summary"]["test/media/prediction"]["path"].endswith(".gif")


def test_same_seed_gives_the_same_json(learned_run, tmp_path):
    main, ckpt = evaluate_cli(), str(learned_run / "run" / "checkpoints" / "best.pt")
    common = ["--samples", "2", "--horizon", "5", "--frames", "3", "--tracking", "disabled", "--no-progress"]
    for folder in ("a", "b"):
        assert main([ckpt, "--seed", "3", "--out", str(tmp_path / folder / "r.json"), *common]) == 0
    assert (tmp_path / "a" / "r.json").read_text() == (tmp_path / "b" / "r.json").read_text()


@pytest.mark.parametrize("content", [None, b"not a checkpoint", "truncated", "no-config"])
def test_a_missing_or_corrupt_checkpoint_exits_2_with_one_line(tmp_path, capsys, content):
    path = tmp_path / "model.pt"
    if content in ("truncated", "no-config"):
        torch.save({"model": {"w": torch.zeros(1000)}}, path)
        if content == "truncated":
            path.write_bytes(path.read_bytes()[:2000])
    elif content is not None:
        path.write_bytes(content)
    assert evaluate_cli()([str(path), "--out", str(tmp_path / "r.json"), "--tracking", "disabled"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"evaluate.py: checkpoint {path}") and "Traceback" not in err


def test_more_frames_than_the_horizon_is_bad_input(learned_run, capsys):
    ckpt = str(learned_run / "run" / "checkpoints" / "best.pt")
    assert evaluate_cli()([ckpt, "--horizon", "5", "--frames", "10", "--tracking", "disabled"]) == 2
    assert "--frames" in capsys.readouterr().err


def test_a_named_protocol_sets_the_frames_and_samples_and_is_stamped_into_the_results(learned_run, tmp_path):
    ckpt, out = str(learned_run / "run" / "checkpoints" / "best.pt"), tmp_path / "seed.json"
    common = ["--limit", "2", "--tracking", "disabled", "--no-progress"]
    assert evaluate_cli()([ckpt, "--protocol", "seed", "--out", str(out), *common]) == 0
    result = json.loads(out.read_text())
    assert {k: v for k, v in result["protocol"].items() if k != "ssim"} == {
        "name": "seed",
        "n_past": 2,
        "frames": 10,
        "horizon": 10,
        "samples": 10,
    }
    assert len(result["psnr_per_frame"]) == 10 and result["n_samples"] == 10
    assert "7x7" in result["protocol"]["ssim"]
    assert evaluate_cli()([ckpt, "--protocol", "seed", "--samples", "2", "--out", str(out), *common]) == 0
    assert json.loads(out.read_text())["protocol"]["name"] == "custom"
    assert evaluate_cli()([ckpt, "--horizon", "28", "--samples", "1", "--out", str(out), *common]) == 0
    assert json.loads(out.read_text())["protocol"]["name"] == "custom"  # the project protocol draws 10 samples


def test_a_protocol_refuses_a_model_trained_on_other_context(learned_run, tmp_path, capsys):
    state = torch.load(learned_run / "run" / "checkpoints" / "best.pt", weights_only=True)
    state["config"]["train"]["n_past"] = 3
    torch.save(state, tmp_path / "three.pt")
    args = [
        str(tmp_path / "three.pt"),
        "--protocol",
        "svg",
        "--out",
        str(tmp_path / "r.json"),
        "--tracking",
        "disabled",
    ]
    assert evaluate_cli()(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--protocol svg: needs 2 given frames" in err
