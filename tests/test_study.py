"""The study's verdict rules (svg/study.py, fixed before the runs) on hand-made settings over seeds."""

import json
import os
from pathlib import Path

import pytest
import wandb

from svg.report.settings import Setting
from svg.study import annealing, beta_range, learning_rate, lines, markdown, summary, teacher_forcing

M, CL = "test/seed/psnr", "test/seed/copy_last_psnr"


def setting(values: dict, psnr: list[float], copy_last: float = 18.0, **more: list[float]) -> Setting:
    by_seed = {M: dict(enumerate(psnr, 1)), CL: dict.fromkeys(range(1, len(psnr) + 1), copy_last)}
    by_seed.update({f"test/svg/{k}": dict(enumerate(v, 1)) for k, v in more.items()})
    return Setting(",".join(f"{k}={v}" for k, v in values.items()), values, by_seed=by_seed)


def test_annealing_claim_is_reproduced_refuted_or_inconclusive_by_the_paired_interval():
    settings = [
        setting({"kl.beta_max": 1e-5, "kl.mode": "monotonic"}, [25, 26, 27]),
        setting({"kl.beta_max": 1e-5, "kl.mode": "cyclical"}, [24, 25.2, 26.1]),  # differences 1, .8, .9
        setting({"kl.beta_max": 1e-3, "kl.mode": "monotonic"}, [25, 26, 27]),
        setting({"kl.beta_max": 1e-3, "kl.mode": "cyclical"}, [25.05, 25.95, 27]),  # -.05, .05, 0: half 0.124
        setting({"kl.beta_max": 1.0, "kl.mode": "monotonic"}, [25, 26, 27]),
        setting({"kl.beta_max": 1.0, "kl.mode": "cyclical"}, [25.1, 25.9, 27]),  # -.1, .1, 0: half 0.248
    ]
    result = annealing(settings)
    assert result["beta_max=1e-05"]["verdict"] == "reproduced"
    assert result["beta_max=1e-05"]["monotonic_minus_cyclical"]["mean"] == pytest.approx(0.9)
    assert result["beta_max=0.001"]["verdict"] == "not reproduced"  # within +-0.2 dB: no advantage
    assert result["beta_max=1.0"]["verdict"] == "inconclusive"  # the interval reaches above 0.2 dB
    # sd 0.1 over 3 seeds: (t(0.975, 2) + t(0.8, 2)) * 0.1 / sqrt(3) = (4.303 + 1.061) * 0.0577 = 0.31 dB detected
    first = lines("annealing", result)[0]
    assert first.startswith(
        "beta_max=1e-05: monotonic − cyclical +0.90 ± 0.25 (n=3, detects ≥ 0.31 dB; ±0.3 dB takes 3"
    )


def test_teacher_forcing_failure_is_below_copy_last_or_two_db_under_the_best_start():
    starts = {0.0: [17, 17.2, 16.9], 0.4: [22, 22.3, 21.9], 1.0: [22.5, 22.6, 22.4], 5.0: [20.1, 20.2, 20.1]}
    result = teacher_forcing([setting({"tfr.start_decay_epoch": s}, p) for s, p in starts.items()])
    outcomes = {k: v["outcome"] for k, v in result["starts"].items()}
    assert outcomes == {"0.0": "fails", "0.4": "succeeds", "1.0": "succeeds", "5.0": "fails"}  # 5.0: 2.37 dB under
    assert result["best_start"] == 1.0 and result["verdict"] == "reproduced"
    starts[0.0] = [22.4, 22.5, 22.3]
    result = teacher_forcing([setting({"tfr.start_decay_epoch": s}, p) for s, p in starts.items()])
    assert result["starts"]["0.0"]["outcome"] == "succeeds" and result["verdict"] == "not reproduced"


def test_learning_rate_matters_when_the_full_budget_interval_excludes_zero():
    settings = [
        setting({"train.epochs": 5, "optim.lr": 0.002}, [24, 24.4, 24.1]),
        setting({"train.epochs": 5, "optim.lr": 0.0002}, [21, 21.5, 21.2]),
        setting({"train.epochs": 10, "optim.lr": 0.002}, [25, 25.5, 25.2]),
        setting({"train.epochs": 10, "optim.lr": 0.0002}, [23, 23.4, 23.1]),
    ]
    result = learning_rate(settings)
    assert result["verdict"] == "reproduced"
    assert result["lr_2e-3_minus_2e-4"]["epochs=10"]["mean"] == pytest.approx(2.0 + 0.2 / 3)
    settings[3] = setting({"train.epochs": 10, "optim.lr": 0.0002}, [25.05, 25.45, 25.2])
    assert learning_rate(settings)["verdict"] == "not reproduced"


def test_beta_range_marks_collapse_below_one_active_unit_and_renders_as_markdown():
    rows = beta_range(
        [
            setting({"kl.beta_max": 1.0}, [20, 20, 20], active_units=[0, 0, 1], best_minus_mean=[0.0, 0.01, 0.0]),
            setting({"kl.beta_max": 1e-5}, [21, 21, 21], active_units=[6, 7, 8], best_minus_mean=[1.0, 1.2, 1.1]),
        ]
    )
    assert list(rows) == ["beta_max=1.0", "beta_max=1e-05"]
    assert rows["beta_max=1.0"]["collapsed"] and not rows["beta_max=1e-05"]["collapsed"]
    assert rows["beta_max=1e-05"]["best_minus_mean"]["mean"] == pytest.approx(1.1)
    text = markdown({"beta": rows})
    assert "(collapsed)" in text.splitlines()[3] and "active_units 7.00 ± 2.48 (n=3)" in text


def test_results_md_adds_lpips_and_fvd_columns_only_where_an_evaluation_computed_them():
    plain = [setting({"kl.beta_max": 1.0}, [20, 21])]
    assert "LPIPS" not in markdown({"beta": {}}, {"beta": summary(plain)}) and "lpips" not in str(summary(plain))
    perceptual = [setting({"kl.beta_max": 1.0}, [20, 21], lpips_best_of_n=[0.125, 0.0625], fvd=[300.0, 310.0])]
    text = markdown({"beta": {}}, {"beta": summary(perceptual)})
    header, _, row = text.splitlines()[-3:]
    assert header.endswith("| svg/fvd | svg/lpips_best_of_n |") and row.endswith("| 305.00 ± 63.53 | 0.094 ± 0.397 |")


@pytest.mark.slow  # 2 minutes: four trials in their own processes, eight evaluations
def test_a_study_runs_its_sweep_evaluates_every_trial_under_both_protocols_and_resumes(tmp_path, monkeypatch, request):
    import yaml

    from svg.study import run_study

    root = Path(__file__).resolve().parent.parent
    monkeypatch.chdir(root)  # the YAML's program is entrypoints/train.py, as for wandb agent
    parameters = {
        "config": {"value": "smoke"},
        "train.seed": {"values": [1, 2]},
        "kl.beta_max": {"values": [1.0, 0.00001]},
        "data.source": {"value": "synthetic"},
        "data.root": {"value": str(tmp_path / "data")},
    }
    config = {
        "name": "study-beta",
        "program": "entrypoints/train.py",
        "method": "grid",
        "parameters": parameters,
        "command": ["${env}", "${interpreter}", "${program}", "${args}"],
    }
    (tmp_path / "study-beta.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    out = tmp_path / "study"
    environ = dict(os.environ)  # wandb.init in this process (the evaluations) exports its service's address:
    request.addfinalizer(lambda: (wandb.teardown(), os.environ.clear(), os.environ.update(environ)))  # not to leak
    results = run_study(out, ("beta",), 2, {"svg": 2}, sweeps=tmp_path, say=lambda _: None)
    assert set(results["beta"]) == {"beta_max=1.0", "beta_max=1e-05"}
    assert all(row["psnr"]["n"] == 2 and row["active_units"]["n"] == 2 for row in results["beta"].values())
    evaluations = sorted(out.glob("beta/*/eval/test-*.json"))
    assert len(evaluations) == 8  # 4 trials, 2 protocols
    protocols = {json.loads(p.read_text())["protocol"]["name"] for p in evaluations}
    assert protocols == {"seed", "svg"}
    assert (out / "study-beta.png").stat().st_size > 5000 and "## beta" in (out / "RESULTS.md").read_text()
    assert "| kl.beta_max=1e-05 | " in (out / "RESULTS.md").read_text()  # the per-setting table
    page = (out / "beta" / "report" / "report.html").read_text()
    assert "<h2>Verdict</h2>" in page and "beta_max=1e-05: active_units" in page
    assert "Paired differences against kl.beta_max=1e-05" in page  # the study's reference, not the first setting
    assert "href='beta/report/report.html'" in (out / "index.html").read_text()
    stamps = {p: p.stat().st_mtime_ns for p in evaluations}
    resumed = run_study(out, ("beta",), 2, {"svg": 2}, sweeps=tmp_path, say=lambda _: None)
    assert resumed == results  # nothing new
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
