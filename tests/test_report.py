"""The comparison report: table, curves and GIFs from sweep and run folders, in one self-contained page."""

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, run_entrypoint
from PIL import Image

from svg.config import load_experiment, to_yaml
from svg.report import Interval, ReportError, collect, study, varied, write_report

PNGS = ["val_psnr.png", "kld.png", "beta.png", "tfr.png", "psnr_per_frame.png"]


def fake_run(
    path: Path, lr: float, mode: str, psnr: list[float], evaluation: dict | None = None, extra: dict | None = None
) -> Path:
    """A run folder as train.py leaves it: config.yaml, metrics.jsonl, media/epochNNNN.gif (+ the evaluator's JSON);
    ``extra``: more config overrides (e.g. train.seed)."""
    path.mkdir(parents=True)
    exp = load_experiment("smoke", {"optim.lr": lr, "kl.mode": mode, **(extra or {})})
    (path / "config.yaml").write_text(to_yaml(exp))
    lines = []
    for epoch, value in enumerate(psnr, start=1):
        lines.append({"iter": epoch * 3, "epoch": epoch - 1, "train/loss": 0.01, "train/kld": 0.1})
        lines.append(
            {
                "epoch": epoch,
                "iter": epoch * 3,
                "beta": 0.5 * epoch,
                "tfr": 1.0 - 0.1 * epoch,
                "epoch/kld": 0.2 / epoch,
                "val/psnr": value,
                "val/psnr_best": max(psnr[:epoch]),
                "val/psnr_copy_last": 20.0,
                "val/ssim": 0.8,
                "kl/active_units": 2,
                "val/psnr_per_frame": [value + 1, value, value - 1],
            }
        )
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    (path / "media").mkdir()
    for epoch in (1, len(psnr)):
        frames = [Image.fromarray(np.full((20, 30, 3), 40 * epoch + 10 * i, np.uint8)) for i in range(3)]
        frames[0].save(path / "media" / f"epoch{epoch:04d}.gif", save_all=True, append_images=frames[1:])
    if evaluation:
        (path / "eval").mkdir()
        (path / "eval" / "test-best.json").write_text(
            json.dumps({"split": "test", "checkpoint": "x/best.pt", **evaluation})
        )
    return path


@pytest.fixture
def sweep_dir(tmp_path):
    out = tmp_path / "sweep"
    fake_run(
        out / "aaaa1111", 0.002, "monotonic", [20.5, 21.25, 21.0], {"psnr": 22.5, "ssim": 0.81, "psnr_best_of_n": 23.75}
    )
    fake_run(out / "bbbb2222", 0.002, "cyclical", [20.25, 20.75, 21.5])
    parameters = {"config": {"value": "smoke"}, "kl.mode": {"values": ["monotonic", "cyclical", "sigmoid"]}}
    config = {
        "name": "demo",
        "method": "grid",
        "metric": {"name": "val/psnr_best", "goal": "maximize"},
        "parameters": parameters,
    }
    trials = [
        {"id": "aaaa1111", "params": {"config": "smoke", "kl.mode": "monotonic"}, "state": "finished"},
        {"id": "bbbb2222", "params": {"config": "smoke", "kl.mode": "cyclical"}, "state": "finished"},
        {
            "id": "cccc3333",
            "params": {"config": "smoke", "kl.mode": "sigmoid"},
            "state": "failed",
            "error": "train.py: kl.mode: Input should be 'monotonic', 'cyclical' or 'none' (got 'sigmoid')",
        },
    ]
    record = {"sweep_id": "swp00001", "source": "sweeps/demo.yaml", "config": config, "trials": trials}
    (out / "sweep.json").write_text(json.dumps(record))
    return out


def test_sweep_report_is_one_self_contained_page(sweep_dir, tmp_path):
    page = write_report([sweep_dir], tmp_path / "report")
    text = page.read_text()
    assert sorted(p.name for p in page.parent.glob("*.png")) == sorted(PNGS)
    sources = re.findall(r"src='([^']*)'", text)
    assert len(sources) == len(PNGS) + 2 and all(s.startswith("data:image/") for s in sources)
    assert "href=" not in text and "url(" not in text  # nothing fetched from anywhere
    latest = base64.b64encode((sweep_dir / "bbbb2222" / "media" / "epoch0003.gif").read_bytes()).decode()
    assert latest in text  # each run's latest GIF, not an older one
    first = base64.b64encode((sweep_dir / "bbbb2222" / "media" / "epoch0001.gif").read_bytes()).decode()
    assert first not in text
    # "failed", "cyclical" and "kl.mode" also occur in the CSS or the error message: look for the cells
    for expected in (
        "Sweep demo",
        '<th class="l">kl.mode</th>',
        '<td class="l">cyclical</td>',
        '<td class="l">sigmoid</td>',
        'state-failed">failed</td>',
        "got &#x27;sigmoid&#x27;",
        "<td>21.25</td>",
        "<td>21.50</td>",
        ">22.50</td>",
        ">23.75</td>",
    ):
        assert expected in text, expected
    best = re.findall(r'<tr class="best">.*?</tr>', text)
    assert len(best) == 1 and "bbbb2222" in best[0]  # 21.50 beats 21.25
    assert "Settings over seeds" not in text  # one seed per setting: the per-run table says it all


def test_table_rows_hold_best_final_baseline_and_test_psnr(sweep_dir):
    runs, searched, sweep = collect([sweep_dir])
    assert sweep["sweep_id"] == "swp00001" and searched == ["kl.mode"]
    assert varied(runs, searched) == ["kl.mode"]  # optim.lr is the same everywhere, so not a column
    mono, cyc, failed = runs
    assert mono.best_psnr == 21.25 and mono.last("val/psnr") == 21.0 and mono.last("val/psnr_copy_last") == 20.0
    assert mono.evaluation["psnr"] == 22.5 and mono.evaluation["file"] == "eval/test-best.json"
    assert cyc.evaluation is None and cyc.best_psnr == 21.5
    assert failed.state == "failed" and failed.records == [] and failed.config["kl.mode"] == "sigmoid"


def test_run_folders_compare_on_what_differs(tmp_path):
    fake_run(tmp_path / "runs" / "slow", 0.0002, "monotonic", [19.0, 19.5])
    fake_run(tmp_path / "runs" / "fast", 0.002, "monotonic", [20.0, 20.5])
    runs, searched, sweep = collect([tmp_path / "runs"])  # a folder of run folders
    assert [r.name for r in runs] == ["fast", "slow"] and sweep is None
    assert varied(runs, searched) == ["optim.lr"]
    page = write_report([tmp_path / "runs" / "slow", tmp_path / "runs" / "fast"], tmp_path / "out")
    assert "Run comparison" in page.read_text() and '<th class="l">optim.lr</th>' in page.read_text()


def test_report_entrypoint_on_a_real_sweep(tmp_path):
    data = tmp_path / "data"
    sweep = run_entrypoint(
        "sweep",
        str(ROOT / "sweeps" / "smoke.yaml"),
        "--out",
        str(tmp_path / "sw"),
        "--threads",
        "1",
        "--set",
        "kl.mode=cyclical",
        "--set",
        "data.source=synthetic",
        "--set",
        f"data.root={data}",
    )
    assert sweep.returncode == 0, sweep.stderr[-2000:]
    proc = run_entrypoint("report", str(tmp_path / "sw"))
    assert proc.returncode == 0, proc.stderr
    page = tmp_path / "sw" / "report" / "report.html"
    assert proc.stdout.strip() == f"report: {page.as_uri()}"
    text = page.read_text()
    assert "data:image/gif;base64," in text and 'state-finished">finished</td>' in text
    assert re.search(r"<td>1\d\.\d\d</td>", text)  # a val PSNR in dB made it into the table


def test_nothing_to_report_exits_2_in_one_line(tmp_path):
    proc = run_entrypoint("report", str(tmp_path))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "no sweep.json" in proc.stderr, proc.stderr
    assert str(tmp_path) in proc.stderr


def crashed_run(path: Path, metrics: str | None = None) -> Path:
    """A run folder whose training stopped before its first log: config.yaml, maybe an empty metrics.jsonl."""
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(to_yaml(load_experiment("smoke")))
    if metrics is not None:
        (path / "metrics.jsonl").write_text(metrics)
    return path


def test_a_run_that_never_logged_exits_2_instead_of_an_empty_report(tmp_path):
    run = crashed_run(tmp_path / "crashed")
    proc = run_entrypoint("report", str(run))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert str(run) in proc.stderr and "metrics.jsonl" in proc.stderr and "sweep.json" in proc.stderr
    assert not (run / "report").exists()


@pytest.mark.parametrize("layout", ["folder of crashed runs", "two crashed runs", "sweep without trials"])
def test_no_run_with_metrics_is_a_report_error(tmp_path, layout):
    if layout == "sweep without trials":
        tmp_path.joinpath("sweep.json").write_text(
            json.dumps({"sweep_id": "swp1", "config": {"method": "grid", "parameters": {}}, "trials": []})
        )
        paths = [tmp_path]
    else:
        runs = [crashed_run(tmp_path / "a"), crashed_run(tmp_path / "b", metrics='{"iter": 1, "epo')]  # torn line
        paths = [tmp_path] if layout == "folder of crashed runs" else runs
    with pytest.raises(ReportError, match="no run has metrics") as caught:
        write_report(paths, tmp_path / "out")
    assert all(str(p) in str(caught.value) for p in paths) and "metrics.jsonl" in str(caught.value)
    assert not (tmp_path / "out").exists()


def test_runs_without_metrics_still_show_beside_ones_with(tmp_path):
    fake_run(tmp_path / "runs" / "ok", 0.002, "monotonic", [20.0, 20.5])
    crashed_run(tmp_path / "runs" / "crashed")
    runs, _, _ = collect([tmp_path / "runs"])
    assert [(r.name, len(r.records)) for r in runs] == [("crashed", 0), ("ok", 4)]


# -- settings over seeds ---------------------------------------------------------------------------

TEST_PSNR = {
    ("monotonic", 1): 22.0,
    ("monotonic", 2): 23.0,
    ("monotonic", 3): 24.0,
    ("cyclical", 1): 23.0,
    ("cyclical", 2): 24.5,
    ("cyclical", 3): 25.0,
    ("cyclical", 4): 25.5,
    ("none", 1): 21.0,
}


@pytest.fixture
def seeds_dir(tmp_path):
    """A sweep over kl.mode and train.seed: monotonic on seeds 1-3, cyclical on 1-4, none on seed 1 only, and a
    failed cyclical trial (left out of the study)."""
    out = tmp_path / "seeds"
    trials = []
    for i, ((mode, seed), psnr) in enumerate(TEST_PSNR.items()):
        evaluation = {
            "psnr": psnr,
            "psnr_ci95": 0.3,
            "kl": 2.0 + seed,
            "n_sequences": 256,
            "long_horizon": {"psnr": psnr - 3, "psnr_ci95": 0.4},
            "media": {"gif": "x.gif"},
        }
        fake_run(out / f"run{i:05d}", 0.002, mode, [20.0, 20.0 + seed], evaluation, {"train.seed": seed})
        trials.append({"id": f"run{i:05d}", "params": {"kl.mode": mode, "train.seed": seed}, "state": "finished"})
    trials.append(
        {"id": "failed01", "params": {"kl.mode": "cyclical", "train.seed": 5}, "state": "failed", "error": "boom"}
    )
    parameters = {"kl.mode": {"values": ["monotonic", "cyclical", "none"]}, "train.seed": {"values": [1, 2, 3, 4, 5]}}
    config = {"name": "seeds", "method": "grid", "parameters": parameters}
    (out / "sweep.json").write_text(json.dumps({"sweep_id": "swp2", "config": config, "trials": trials}))
    return out


def test_settings_hold_their_seeds_with_intervals_and_paired_differences(seeds_dir):
    runs, searched, _ = collect([seeds_dir])
    found = study(runs, varied(runs, searched))
    mono, cyc, none = found.settings
    assert [s.label for s in found.settings] == ["kl.mode=monotonic", "kl.mode=cyclical", "kl.mode=none"]
    assert len(cyc.runs) == 4 and found.reference is mono  # the failed trial is no result; the first is the reference
    assert found.metrics[:3] == [
        "test/project/psnr",
        "test/project/kl",
        "test/project/long_horizon/psnr",
    ]  # no intervals, no protocol
    assert "val/psnr" in found.metrics and "val/psnr_copy_last" in found.metrics
    ci = mono.interval("test/project/psnr")  # 22, 23, 24: 4.303 / sqrt(3)
    assert (ci.mean, ci.n) == (23.0, 3) and ci.half == pytest.approx(2.48414, abs=1e-5)
    ci = cyc.interval("test/project/psnr")  # 23, 24.5, 25, 25.5: s = sqrt(3.5 / 3), t(0.975, 3) = 3.1824
    assert (ci.mean, ci.n) == (24.5, 4) and ci.half == pytest.approx(3.182446 * (3.5 / 3) ** 0.5 / 2, abs=1e-5)
    assert none.interval("test/project/psnr") == Interval(21.0, None, 1)
    paired = {(p.setting, p.metric): p for p in found.paired}
    psnr = paired["kl.mode=cyclical", "test/project/psnr"]  # seeds 1-3: differences 1, 1.5, 1
    assert psnr.diff.n == 3 and psnr.diff.mean == pytest.approx(7 / 6) and psnr.verdict == "better"
    assert psnr.diff.half == pytest.approx(4.302653 / 6, abs=1e-5)
    assert paired["kl.mode=cyclical", "test/project/kl"].verdict == "inconclusive"  # the same on every seed: 0 ± 0
    assert paired["kl.mode=cyclical", "test/project/long_horizon/psnr"].diff.mean == pytest.approx(7 / 6)
    assert paired["kl.mode=none", "test/project/psnr"].diff == Interval(-1.0, None, 1)
    assert paired["kl.mode=none", "test/project/psnr"].verdict == "inconclusive"  # one shared seed
    assert not any("copy_last" in metric for _, metric in paired)


def test_the_page_shows_settings_and_paired_differences(seeds_dir, tmp_path):
    text = write_report([seeds_dir], tmp_path / "report").read_text()
    for expected in (
        "<h2>Settings over seeds</h2>",
        "<th class='ref'>kl.mode=monotonic (reference)</th>",
        "23.00 ± 2.48 <span class='n'>n=3</span>",
        "24.50 ± 1.72 <span class='n'>n=4</span>",
        "<td>21.00 <span class='n'>n=1</span></td>",
        "Paired differences against kl.mode=monotonic",
        "<td>+1.17 ± 0.72</td><td>3</td><td class='l better'>better</td>",
        "<td>-1.00</td><td>1</td><td class='l inconclusive'>inconclusive</td>",
        "<h2>Results</h2>",
        '<td class="l">run00006</td>',
    ):
        assert expected in text, expected
    assert text.index("<h2>Results</h2>") < text.index("Settings over seeds")  # the per-run table stays first


def test_runs_sharing_a_seed_count_once_and_run_names_make_no_setting(tmp_path):
    for name, seed, psnr in (("a", 1, 20.0), ("b", 2, 22.0), ("c", 2, 24.0)):
        extra = {"train.seed": seed, "tracking.name": f"run-{name}"}
        fake_run(tmp_path / "runs" / name, 0.002, "monotonic", [20.0], {"psnr": psnr}, extra)
    runs, searched, _ = collect([tmp_path / "runs"])
    (setting,) = study(runs, varied(runs, searched)).settings
    assert setting.label == "all" and setting.by_seed["test/project/psnr"] == {1: 20.0, 2: 23.0}
    assert setting.interval("test/project/psnr").n == 2


def test_reference_is_chosen_on_the_command_line(seeds_dir, tmp_path):
    proc = run_entrypoint("report", str(seeds_dir), "--reference", "kl.mode=cyclical", "--out", str(tmp_path / "r"))
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "r" / "report.html").read_text()
    assert "Paired differences against kl.mode=cyclical" in text
    assert "<td>-1.17 ± 0.72</td><td>3</td><td class='l worse'>worse</td>" in text
    proc = run_entrypoint("report", str(seeds_dir), "--reference", "kl.mode=sigmoid", "--out", str(tmp_path / "x"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "--reference kl.mode=sigmoid: no setting match" in proc.stderr and "kl.mode=cyclical;" in proc.stderr
    assert not (tmp_path / "x").exists()


def test_each_protocol_is_its_own_metric_and_the_run_table_prefers_the_projects(tmp_path):
    for name, seed in (("a", 1), ("b", 2)):
        run = fake_run(
            tmp_path / "runs" / name, 0.002, "monotonic", [20.0], {"psnr": 20.0 + seed}, {"train.seed": seed}
        )
        for protocol, psnr in (("seed", 25.0 + seed), ("svg", 30.0 + seed)):
            result = {"split": "test", "checkpoint": "x/last.pt", "psnr": psnr, "protocol": {"name": protocol}}
            (run / "eval" / f"test-{protocol}.json").write_text(json.dumps(result))
    runs, searched, _ = collect([tmp_path / "runs"])
    assert sorted(runs[0].evaluations) == ["project", "seed", "svg"] and runs[0].evaluation["psnr"] == 21.0
    (setting,) = study(runs, varied(runs, searched)).settings
    assert setting.by_seed["test/seed/psnr"] == {1: 26.0, 2: 27.0}
    assert setting.by_seed["test/svg/psnr"] == {1: 31.0, 2: 32.0}
    assert setting.by_seed["test/project/psnr"] == {1: 21.0, 2: 22.0}


def test_lpips_and_fvd_columns_show_where_evaluated_and_lower_is_better(tmp_path):
    scores = {
        ("monotonic", 1): (0.125, 300.0),
        ("monotonic", 2): (0.25, 320.0),
        ("cyclical", 1): (0.0625, 250.0),
        ("cyclical", 2): (0.1875, 270.0),
    }
    for i, ((mode, seed), (lpips, fvd)) in enumerate(scores.items()):
        evaluation = {"psnr": 21.0, "lpips": lpips, "lpips_best_of_n": lpips / 2, "fvd": fvd}
        fake_run(tmp_path / "runs" / f"r{i}", 0.002, mode, [20.0], evaluation, {"train.seed": seed})
    text = write_report([tmp_path / "runs"], tmp_path / "report").read_text()
    cell = '<td title="eval/test-best.json">'
    for expected in (
        '<th class="">test LPIPS</th><th class="">test LPIPS best of N</th><th class="">test FVD</th>',
        f"{cell}0.125</td>{cell}0.062</td>{cell}300.0</td>",
        "<td class='l'>test/project/lpips</td><td>-0.062 ± 0.000</td><td>2</td><td class='l better'>",
        "<td class='l'>test/project/fvd</td><td>-50.00 ± 0.00</td><td>2</td><td class='l better'>",
    ):
        assert expected in text, expected
    fake_run(tmp_path / "plain" / "a", 0.002, "monotonic", [20.0], {"psnr": 21.0})
    assert "test LPIPS" not in write_report([tmp_path / "plain"], tmp_path / "plain-report").read_text()
