"""Data layer: exact conversion and packing, loader validation, synthetic data, batch order."""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from tfrecord.writer import TFRecordWriter

from svg.data import DataError, DataWarning, convert_tfrecords, ensure_synthetic, open_split, pack
from svg.data.bair import split_files
from svg.data.course import encode_png, write_sequence
from svg.data.loaders import CacheDataset, CourseDataset, eval_batches, train_batches, training_clips
from svg.data.oracle import oracle_error
from svg.data.render import render
from svg.data.scene import FINGER_GREY, LIGHT_LEVELS, hidden_draws, simulate
from svg.data.synthetic import conditions as conditions_of
from svg.data.synthetic import generate_sequence, sequence_streams

REPO = Path(__file__).resolve().parents[1]
PREPARE = REPO / "entrypoints" / "prepare_data.py"


def _sequence(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    frames = rng.integers(0, 256, (30, 64, 64, 3), dtype=np.uint8)
    scale = np.float32(10) ** rng.integers(-3, 3, (30, 7))  # exercise digits across magnitudes
    return frames, (rng.standard_normal((30, 7)) * scale).astype(np.float32)


def _tree(root: Path, counts: dict[str, int], seed: int = 0) -> dict[str, list]:
    """A course-layout tree of random sequences; returns what was written, in loader order."""
    rng = np.random.default_rng(seed)
    written = {}
    for split, n in counts.items():
        written[split] = [_sequence(rng) for _ in range(n)]
        for k, (frames, conditions) in enumerate(written[split]):
            seq_dir = root / split / f"traj_{k // 2}" / str(k % 2)
            write_sequence(seq_dir, frames, conditions[:, :4], conditions[:, 4:])
    return written


def _assert_same(dataset, expected: list[tuple[np.ndarray, np.ndarray]]) -> None:
    assert len(dataset) == len(expected)
    for i, (frames, conditions) in enumerate(expected):
        got_frames, got_conditions = dataset[i]
        assert got_frames.dtype == np.uint8 and got_conditions.dtype == np.float32
        assert np.array_equal(got_frames, frames), i
        assert np.array_equal(got_conditions, conditions), i


def _run_all(commands: list[list[str]]) -> list[subprocess.CompletedProcess]:
    """Run CLI commands concurrently."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(c, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for c in commands
    ]
    outputs = [p.communicate() for p in procs]
    return [
        subprocess.CompletedProcess(c, p.returncode, *out) for c, p, out in zip(commands, procs, outputs, strict=True)
    ]


def test_png_encoder_is_lossless():
    frame = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert np.array_equal(iio.imread(encode_png(frame), extension=".png"), frame)


def test_course_layout_pack_and_loaders_round_trip_bit_exactly(tmp_path):
    written = _tree(tmp_path, {"train": 5, "validate": 3, "test": 2})
    for split, expected in written.items():
        dataset = open_split(tmp_path, split)
        assert isinstance(dataset, CourseDataset)
        _assert_same(dataset, expected)

    (done,) = _run_all([[sys.executable, str(PREPARE), "pack", str(tmp_path), "--workers", "2"]])
    assert done.returncode == 0, done.stderr
    for split, expected in written.items():
        dataset = open_split(tmp_path, split)
        assert isinstance(dataset, CacheDataset)
        _assert_same(dataset, expected)
        picks = np.array([2, 0, 1, 0]) % len(expected)
        frames, conditions = dataset.get_batch(picks)
        for row, i in enumerate(picks):
            assert np.array_equal(frames[row], expected[i][0])
            assert np.array_equal(conditions[row], expected[i][1])

    short = open_split(tmp_path, "train", seq_len=12)
    assert short[4][0].shape == (12, 64, 64, 3) and np.array_equal(short[4][1], written["train"][4][1][:12])
    batches = list(eval_batches(open_split(tmp_path, "train"), batch_size=2))
    assert [len(f) for f, _ in batches] == [2, 2, 1]
    expected = torch.from_numpy(np.stack([f for f, _ in written["train"]]))
    assert torch.equal(torch.cat([f for f, _ in batches]), expected)


def test_changed_source_makes_the_cache_stale(tmp_path):
    written = _tree(tmp_path, {"train": 2, "validate": 1, "test": 1})
    pack(tmp_path, workers=1, progress=False)
    frames, conditions = _sequence(np.random.default_rng(9))
    write_sequence(tmp_path / "train" / "traj_1" / "0", frames, conditions[:, :4], conditions[:, 4:])
    with pytest.warns(DataWarning, match="cache differs"):
        dataset = open_split(tmp_path, "train")
    _assert_same(dataset, [*written["train"], (frames, conditions)])
    pack(tmp_path, ("train",), workers=1, progress=False)
    assert isinstance(open_split(tmp_path, "train"), CacheDataset)


def _break(root: Path, case: str) -> str:
    """Damage a valid tree the way `case` says; returns the path the error must name."""
    seq = root / "train" / "traj_0" / "1"
    if case == "missing split":
        os.rename(root / "validate", root / "old")
        return str(root / "validate")
    if case == "empty dataset":
        for child in (root / "test").iterdir():
            os.rename(child, root / child.name)
        return str(root / "test")
    if case == "too few frames":
        (seq / "29.png").unlink()
        return str(seq)
    if case == "truncated png":
        data = (seq / "5.png").read_bytes()
        (seq / "5.png").write_bytes(data[: len(data) // 2])
        return str(seq / "5.png")
    if case == "corrupt png data":
        data = bytearray((seq / "6.png").read_bytes())
        data[60:400] = bytes(340)
        (seq / "6.png").write_bytes(bytes(data))
        return str(seq / "6.png")
    if case == "non-64x64 png":
        iio.imwrite(seq / "3.png", np.zeros((32, 48, 3), np.uint8), extension=".png")
        return str(seq / "3.png")
    if case == "csv column count":
        (seq / "actions.csv").write_text("1,2,3\n" * 30)
        return str(seq / "actions.csv")
    if case == "nan in conditions":
        lines = (seq / "endeffector_positions.csv").read_text().splitlines()
        lines[7] = "0.5,nan,0.1"
        (seq / "endeffector_positions.csv").write_text("\n".join(lines) + "\n")
        return str(seq / "endeffector_positions.csv")
    raise AssertionError(case)


BAD_CASES = [
    "missing split",
    "empty dataset",
    "too few frames",
    "truncated png",
    "corrupt png data",
    "non-64x64 png",
    "csv column count",
    "nan in conditions",
]


def test_each_bad_data_case_exits_2_naming_the_file(tmp_path):
    commands, expected = [], []
    for n, case in enumerate(BAD_CASES):
        root = tmp_path / f"case{n}"
        _tree(root, {"train": 3, "validate": 1, "test": 1})
        expected.append(_break(root, case))
        commands.append([sys.executable, str(PREPARE), "pack", str(root), "--workers", "1"])
    for case, path, done in zip(BAD_CASES, expected, _run_all(commands), strict=True):
        assert done.returncode == 2, (case, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("prepare_data: "), (case, done.stderr)
        assert path in lines[0], (case, lines[0])


@pytest.mark.parametrize("case", ["too few frames", "nan in conditions", "corrupt png data"])
def test_skip_bad_skips_with_a_warning(tmp_path, case):
    written = _tree(tmp_path, {"train": 3, "validate": 1, "test": 1})
    path = _break(tmp_path, case)
    good = [written["train"][0], written["train"][2]]
    if case != "corrupt png data":  # found at open; decoding errors are found by pack
        with pytest.raises(DataError, match=path):
            open_split(tmp_path, "train")
        with pytest.warns(DataWarning, match=path):
            _assert_same(open_split(tmp_path, "train", skip_bad=True), good)
    with pytest.warns(DataWarning, match=path):
        pack(tmp_path, ("train",), skip_bad=True, workers=1, progress=False)
    _assert_same(open_split(tmp_path, "train", skip_bad=True), good)


def _write_tfrecord(path: Path, sequences: list[tuple[np.ndarray, np.ndarray]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = TFRecordWriter(str(path))
    for frames, conditions in sequences:
        record = {}
        for i in range(30):
            record[f"{i}/image_aux1/encoded"] = (frames[i].tobytes(), "byte")
            record[f"{i}/image_main/encoded"] = ((255 - frames[i]).tobytes(), "byte")
            record[f"{i}/action"] = (conditions[i, :4].tolist(), "float")
            record[f"{i}/endeffector_pos"] = (conditions[i, 4:].tolist(), "float")
        writer.write(record)
    writer.close()


def test_tfrecord_conversion_is_exact_and_resumable(tmp_path):
    rng = np.random.default_rng(3)
    files = {
        "train/traj_0_to_255.tfrecords": 3,
        "train/traj_256_to_511.tfrecords": 2,
        "train/traj_512_to_767.tfrecords": 2,
        "test/traj_0_to_255.tfrecords": 2,
    }
    source = {}
    for name, n in files.items():
        source[name] = [_sequence(rng) for _ in range(n)]
        _write_tfrecord(tmp_path / "src" / name, source[name])

    out = tmp_path / "out"
    counts = convert_tfrecords(tmp_path / "src", out, val_fraction=0.34, seed=0, workers=2, progress=False)
    assert counts["train"] + counts["validate"] == 7 and counts["test"] == 2 and counts["validate"] in (2, 3)
    settings = json.loads((out / ".bair.json").read_text())
    assert settings["rule"] == "files" and len(settings["validate_files"]) == 1  # round(0.34 * 3 files)
    datasets = {split: open_split(out, split) for split in ("train", "validate", "test")}
    for name, sequences in source.items():
        part, stem = name.split("/")[0], Path(name).stem
        split = part if part == "test" or (out / "train" / stem).exists() else "validate"
        for k, expected in enumerate(sequences):
            dataset = datasets[split]
            _assert_same([dataset[dataset.sequences.index(out / split / stem / str(k))]], [expected])

    # Resume: a removed sequence of an unfinished file is rewritten, finished files are not touched.
    victim = out / "test" / "traj_0_to_255" / "1"
    kept = out / "test" / "traj_0_to_255" / "0" / "0.png"
    stamp = kept.stat().st_mtime_ns
    (out / "test" / "traj_0_to_255" / ".complete").unlink()
    for f in victim.iterdir():
        f.unlink()
    victim.rmdir()
    convert_tfrecords(tmp_path / "src", out, val_fraction=0.34, seed=0, workers=1, progress=False)
    assert kept.stat().st_mtime_ns == stamp
    _assert_same(open_split(out, "test"), source["test/traj_0_to_255.tfrecords"])
    with pytest.raises(DataError, match="converted with"):
        convert_tfrecords(tmp_path / "src", out, val_fraction=0.34, seed=1, workers=1, progress=False)
    # A settings file from before the rule was recorded (whole files held out) still resumes.
    (out / ".bair.json").write_text(json.dumps({k: v for k, v in settings.items() if k != "rule"}))
    convert_tfrecords(tmp_path / "src", out, val_fraction=0.34, seed=0, workers=1, progress=False)

    packed = tmp_path / "packed"
    convert_tfrecords(tmp_path / "src", packed, 0.34, seed=0, pack=True, workers=2, progress=False)
    assert not (packed / "train").exists()
    for split, dataset in datasets.items():
        assert isinstance(open_split(packed, split), CacheDataset)
        _assert_same(open_split(packed, split), [dataset[i] for i in range(len(dataset))])


def _prepare_data_module():
    spec = importlib.util.spec_from_file_location("prepare_data", PREPARE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_one_train_file_holds_out_sequences_in_both_modes(tmp_path, capsys):
    rng = np.random.default_rng(5)
    source = [_sequence(rng) for _ in range(9)]
    _write_tfrecord(tmp_path / "src" / "train" / "traj_0_to_255.tfrecords", source)
    _write_tfrecord(tmp_path / "src" / "test" / "traj_0_to_255.tfrecords", [_sequence(rng) for _ in range(2)])
    src, out, packed = tmp_path / "src", tmp_path / "out", tmp_path / "packed"
    held = sorted(np.random.default_rng(7).permutation(9)[:2].tolist())  # round(0.25 * 9) = 2 records

    module = _prepare_data_module()
    args = ["--val-fraction", "0.25", "--seed", "7", "--workers", "1"]
    assert module.main(["tfrecord", str(src), "--out", str(out), *args]) == 0
    rule_line, summary = capsys.readouterr().out.splitlines()
    assert rule_line.startswith("validation: single sequences, 2 of the 9") and "seed 7" in rule_line
    assert summary.startswith("train 7, validate 2, test 2 sequences")
    settings = json.loads((out / ".bair.json").read_text())
    assert settings["rule"] == "sequences" and settings["validate_sequences"] == {"traj_0_to_255.tfrecords": held}

    # Each record is in exactly one split, under its record index, with its frames and conditions.
    seen = {}
    for split in ("train", "validate"):
        dataset = open_split(out, split)
        for i, seq_dir in enumerate(dataset.sequences):
            k = int(seq_dir.name)
            assert k not in seen and seq_dir.parent == out / split / "traj_0_to_255"
            seen[k] = split
            _assert_same([dataset[i]], [source[k]])
    assert seen == {k: "validate" if k in held else "train" for k in range(9)}

    # Resumable: a removed sequence of an unfinished file is rewritten, nothing else is.
    victim = out / "validate" / "traj_0_to_255" / str(held[0])
    shutil.rmtree(victim)
    (victim.parent / ".complete").unlink()
    convert_tfrecords(src, out, val_fraction=0.25, seed=7, workers=1, progress=False)
    _assert_same(open_split(out, "validate"), [source[k] for k in held])
    with pytest.raises(DataError, match="converted with"):
        convert_tfrecords(src, out, val_fraction=0.25, seed=8, workers=1, progress=False)

    # --pack: the same seed gives the same split, straight into the cache.
    assert module.main(["tfrecord", str(src), "--out", str(packed), "--pack", *args]) == 0
    assert capsys.readouterr().out.splitlines()[0] == rule_line
    assert json.loads((packed / ".bair.json").read_text()) == settings
    assert not (packed / "train").exists()
    for split, keys in (("train", [k for k in range(9) if k not in held]), ("validate", held)):
        assert isinstance(open_split(packed, split), CacheDataset)
        _assert_same(open_split(packed, split), [source[k] for k in keys])


def test_whole_files_are_held_out_only_when_there_are_enough(tmp_path):
    rng = np.random.default_rng(6)
    for name, n in (("train/traj_0_to_255", 3), ("train/traj_256_to_511", 2), ("test/traj_0_to_255", 1)):
        _write_tfrecord(tmp_path / f"{name}.tfrecords", [_sequence(rng) for _ in range(n)])
    # round(0.05 * 2 files) = 0: one of the 5 records (at least one) is held out, not a whole file.
    split = split_files(tmp_path, 0.05, seed=3)
    assert split.rule == "sequences" and split == split_files(tmp_path, 0.05, seed=3)
    (k,) = np.random.default_rng(3).permutation(5)[:1].tolist()
    path, record = (("traj_0_to_255", k), ("traj_256_to_511", k - 3))[k >= 3]
    assert split.settings["validate_sequences"] == {f"{path}.tfrecords": [record]}
    assert sum(len(r) for _, r in split.parts["train"]) == 4
    # round(0.5 * 2 files) = 1: a whole file.
    split = split_files(tmp_path, 0.5, seed=3)
    assert split.rule == "files" and [r for _, r in split.parts["validate"]] == [None]
    assert split_files(tmp_path, 0, seed=3).parts["validate"] == []


def test_tfrecord_help_and_missing_source(tmp_path):
    module = _prepare_data_module()
    commands = module.build_parser()._subparsers._group_actions[0].choices
    help_text = " ".join(commands["tfrecord"].format_help().split())
    assert "image_aux1" in help_text and "default_rng" in help_text
    assert module.main(["tfrecord", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2


def test_prepare_data_starts_without_torch():
    code = "import sys, svg.data, svg.data.bair; assert 'torch' not in sys.modules"
    (done,) = _run_all([[sys.executable, "-c", code]])
    assert done.returncode == 0, done.stderr


def test_synthetic_generation_is_deterministic(tmp_path):
    first, again = generate_sequence(4, "train", 7), generate_sequence(4, "train", 7)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(first[0], generate_sequence(5, "train", 7)[0])
    assert not np.array_equal(first[0], generate_sequence(4, "test", 7)[0])

    a = ensure_synthetic(tmp_path / "a", 3, 2, 2, seed=4, workers=2)
    b = ensure_synthetic(tmp_path / "b", 3, 2, 2, seed=4, workers=1)
    for split in ("train", "validate", "test"):
        for suffix in ("frames", "conditions"):
            assert (a / ".cache" / f"{split}_{suffix}.npy").read_bytes() == (
                b / ".cache" / f"{split}_{suffix}.npy"
            ).read_bytes()
    seq = Path("train") / "traj_0_to_255" / "2"
    for name in ("0.png", "29.png", "actions.csv", "endeffector_positions.csv"):
        assert (a / seq / name).read_bytes() == (b / seq / name).read_bytes()
    cached = open_split(a, "train")
    assert isinstance(cached, CacheDataset)
    _assert_same(CourseDataset(a / "train"), [cached[i] for i in range(3)])
    _assert_same(
        cached,
        [(f, np.concatenate([act, pos], 1)) for f, act, pos in (generate_sequence(4, "train", i) for i in range(3))],
    )

    marker = a / ".synthetic.json"
    stamp = marker.stat().st_mtime_ns
    ensure_synthetic(a, 3, 2, 2, seed=4)
    assert marker.stat().st_mtime_ns == stamp and json.loads(marker.read_text())["seed"] == 4
    ensure_synthetic(a, 4, 2, 2, seed=4, workers=1)
    assert len(open_split(a, "train")) == 4
    _tree(tmp_path / "foreign", {"train": 1})
    with pytest.raises(DataError, match="did not write"):
        ensure_synthetic(tmp_path / "foreign", 3, 2, 2, seed=4)


def test_synthetic_generation_survives_interruption_and_concurrent_callers(tmp_path):
    root = ensure_synthetic(tmp_path / "data", 3, 1, 1, seed=2, workers=1)
    expected = [open_split(root, "train")[i] for i in range(3)]
    (root / ".synthetic.json").rename(root / ".synthetic.partial.json")  # as if killed mid-way
    shutil.rmtree(root / "train" / "traj_0_to_255" / "1")
    with ThreadPoolExecutor(2) as pool:  # e.g. two sweep trials starting at once: one generates
        done = list(pool.map(lambda _: ensure_synthetic(root, 3, 1, 1, seed=2, workers=1), range(2)))
    assert done == [root, root] and not (root / ".synthetic.partial.json").exists()
    _assert_same(open_split(root, "train"), expected)
    _assert_same(CourseDataset(root / "train"), expected)


def test_gripper_is_drawn_where_the_end_effector_condition_says():
    steps = []
    for index in range(6):
        frames, actions, positions = generate_sequence(0, "validate", index)
        assert frames.shape == (30, 64, 64, 3) and actions.shape == (30, 4) and positions.shape == (30, 3)
        assert np.abs(positions).max() <= 1 and np.abs(actions).max() <= 1
        for frame, (x, y, _) in zip(frames, positions, strict=True):
            rows, cols = np.nonzero(frame.max(axis=-1) < 255 * FINGER_GREY + 25)  # only fingers are this dark
            assert len(rows) > 4
            assert abs(cols.mean() + 0.5 - (32 + 32 * x)) < 1.5
            assert abs(rows.mean() + 0.5 - (32 + 32 * y)) < 1.5
        steps.append(np.hypot(*np.diff(positions[:, :2] * 32, axis=0).T).mean())
    assert np.mean(steps) > 1.5  # pixels per frame: the gripper really moves


def _streams(split: str, index: int) -> list[np.random.Generator]:
    """Fresh generators of the sequence's scene, hidden, look and noise streams and one more."""
    return [np.random.default_rng(s) for s in sequence_streams(0, split, index, extra=1)]


def test_resimulation_keeps_scene_and_conditions_but_not_the_ball():
    for index in range(4):
        scene, hidden, look, noise, other = _streams("train", index)
        truth = hidden_draws(hidden, 30)
        original = simulate(scene, truth)
        frames = render(original, look, noise)
        assert all(
            np.array_equal(a, b)
            for a, b in zip(generate_sequence(0, "train", index), (frames, *conditions_of(original)), strict=True)
        )

        # Replaying the actions with the same hidden draws is the sequence itself, bit for bit.
        scene, _, look, noise, _ = _streams("train", index)
        replayed = simulate(scene, truth, original["action"])
        assert all(np.array_equal(replayed[key], value) for key, value in original.items())
        assert np.array_equal(render(replayed, look, noise), frames)

        # Other hidden draws: the same conditions and gripper, the same first frame, another ball path.
        scene, _, look, noise, _ = _streams("train", index)
        other_sim = simulate(scene, hidden_draws(other, 30), original["action"])
        for a, b in zip(conditions_of(other_sim), conditions_of(original), strict=True):
            assert np.array_equal(a, b)
        for key in ("grip", "z", "opening", "radius", "square", "ball_radius"):
            assert np.array_equal(other_sim[key], original[key]), key
        assert np.array_equal(other_sim["ball"][0], original["ball"][0])
        assert np.abs(other_sim["ball"] - original["ball"]).max() > 5  # pixels
        other_frames = render(other_sim, look, noise)
        assert np.array_equal(other_frames[0], frames[0]) and not np.array_equal(other_frames, frames)


def test_a_ball_is_visible_in_every_frame_where_the_simulation_puts_it():
    for index in range(8):
        scene, hidden, look, noise, _ = _streams("validate", index)
        sim = simulate(scene, hidden_draws(hidden, 30))
        frames = render(sim, look, noise)
        scene, hidden, look, noise, _ = _streams("validate", index)
        without = render({**sim, "ball": np.full_like(sim["ball"], -100.0)}, look, noise)  # off the table
        counts = []
        for t, (frame, bare) in enumerate(zip(frames, without, strict=True)):
            rows, cols = np.nonzero(np.abs(frame.astype(int) - bare).max(axis=-1) > 60)
            distance = np.hypot(cols + 0.5 - sim["ball"][t, 0], rows + 0.5 - sim["ball"][t, 1])
            assert len(rows) >= 4 and distance.max() < sim["ball_radius"] + 1.5, (index, t)
            counts.append(len(rows))
        assert np.mean(counts) > 25, index  # ~50-78 pixels unless the arm is over it
        assert np.hypot(*np.diff(sim["ball"], axis=0).T).mean() > 1.2  # it rolls


def test_the_room_light_changes_only_where_the_hidden_table_says_and_scales_the_whole_frame():
    scene, hidden, look, noise, _ = _streams("test", 0)
    table = hidden_draws(hidden, 30)
    table[:, 2] = 1.0  # column 2: the light's change, never
    table[9, 2:4] = 0.0, 1.0  # the step to frame 10 switches it to the top of its range
    sim = simulate(scene, table)
    assert len(set(sim["light"][:10])) == 1 and np.all(sim["light"][10:] == LIGHT_LEVELS[1])
    assert LIGHT_LEVELS[0] <= sim["light"][0] <= LIGHT_LEVELS[1]
    frames = render(sim, look, noise).astype(float)
    scene, _, look, noise, _ = _streams("test", 0)
    steady = render({**sim, "light": np.full(30, sim["light"][0])}, look, noise).astype(float)
    assert np.array_equal(frames[:10], steady[:10])
    ratio = frames[10:].mean() / steady[10:].mean()  # about the levels' ratio (less where 255 clips)
    assert abs(ratio - LIGHT_LEVELS[1] / sim["light"][0]) < 0.05


def test_oracle_free_running_exceeds_one_step_which_exceeds_noise_and_zero():
    result = oracle_error(seed=0, split="test", sequences=3, n_past=2, horizon=12, draws=2)
    rows = {key: row["mse_12"] for key, row in result["rows"].items()}
    assert rows["copy_last"] > rows["free"] > rows["step"] > rows["noise"] > 0
    assert rows["free_hidden"] > rows["step_hidden"] > 0
    assert rows["free"] > rows["free_hidden"] and rows["step"] > rows["step_hidden"]
    assert 2e-5 < rows["noise"] < 2e-4  # sigma 1-3 grey levels
    assert result["rows"]["free"]["psnr_10"] > result["rows"]["copy_last"]["psnr_10"]
    assert oracle_error(seed=0, split="test", sequences=3, n_past=2, horizon=12, draws=2, workers=2) == result


def test_oracle_command_prints_a_table_or_json_and_refuses_bad_settings(capsys):
    module = _prepare_data_module()
    args = ["oracle", "--sequences", "2", "--horizon", "4", "--draws", "2", "--workers", "1"]
    assert module.main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("synthetic v3 test split, seed 0: 2 sequences") and lines[2].startswith("copy-last")
    assert module.main([*args, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["sequences"] == 2 and len(result["per_frame_mse"]["free"]) == 4
    assert module.main([*args, "--n-past", "27"]) == 2
    assert "n_past + horizon <= 30" in capsys.readouterr().err


class _Numbered(torch.utils.data.Dataset):
    """Sequence i is filled with the value i, so batches reveal which sequences they hold."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return np.full((30, 64, 64, 3), i, np.uint8), np.full((30, 7), i, np.float32)


def _ids(batches, count: int) -> list[list[int]]:
    out = []
    for frames, conditions in itertools.islice(batches, count):
        assert frames.dtype == torch.uint8 and frames.shape[1:] == (30, 64, 64, 3)
        assert conditions.dtype == torch.float32 and conditions.shape[1:] == (30, 7)
        out.append(frames[:, 0, 0, 0, 0].tolist())
    return out


def test_train_batches_reproducible_resumable_and_sharded():
    data = _Numbered(23)  # 5 batches of 4 per epoch, 3 sequences dropped
    stream = _ids(train_batches(data, 4, seed=1), 12)
    assert stream == _ids(train_batches(data, 4, seed=1), 12)
    assert stream != _ids(train_batches(data, 4, seed=2), 12)
    assert all(len(set(sum(stream[e * 5 : e * 5 + 5], []))) == 20 for e in (0, 1))
    assert _ids(train_batches(data, 4, seed=1, start_batch=7), 5) == stream[7:12]
    assert _ids(train_batches(data, 4, seed=1, num_workers=2, start_batch=3), 6) == stream[3:9]

    shards = [_ids(train_batches(data, 2, seed=1, rank=r, world_size=3), 6) for r in range(3)]
    for epoch in (0, 1):  # 7 sequences per rank and epoch: 3 batches of 2 each
        seen = [sum(shard[epoch * 3 : epoch * 3 + 3], []) for shard in shards]
        assert all(len(s) == 6 for s in seen) and len(set(sum(seen, []))) == 18
    with pytest.raises(DataError, match="cannot fill"):
        train_batches(data, 8, seed=1, world_size=3)


def test_training_clips_are_contiguous_windows_drawn_reproducibly():
    frames = torch.arange(6 * 30, dtype=torch.int32).reshape(6, 30, 1, 1, 1).expand(6, 30, 2, 2, 3)
    cond = torch.arange(6 * 30, dtype=torch.float32).reshape(6, 30, 1).expand(6, 30, 7)
    first, first_cond = training_clips(frames, cond, 12, False, seed=1, batch_index=0)
    assert torch.equal(first, frames[:, :12]) and torch.equal(first_cond, cond[:, :12])

    clips, clip_cond = training_clips(frames, cond, 12, True, seed=1, batch_index=3)
    ids = clips[:, :, 0, 0, 0]
    starts = ids[:, 0] - torch.arange(6) * 30
    assert clips.shape == (6, 12, 2, 2, 3) and torch.equal(clip_cond[:, :, 0], ids.float())
    assert torch.equal(ids, ids[:, :1] + torch.arange(12))  # 12 consecutive frames of the same sequence
    assert ((starts >= 0) & (starts <= 18)).all()
    assert torch.equal(clips, training_clips(frames, cond, 12, True, seed=1, batch_index=3)[0])  # resume draws it again
    draws = {
        tuple(training_clips(frames, cond, 12, True, seed=1, batch_index=k)[0][:, 0, 0, 0, 0].tolist())
        for k in range(20)
    }
    assert len(draws) == 20  # a new start per step
    every_start = torch.cat([training_clips(frames, cond, 12, True, 2, k)[0][:, 0, 0, 0, 0] % 30 for k in range(200)])
    assert set(every_start.tolist()) == set(range(19))  # every window of the 30 frames occurs


def test_eval_batches_in_order_with_limit():
    assert _ids(eval_batches(_Numbered(10), 4, limit=7), 10) == [[0, 1, 2, 3], [4, 5, 6]]
    assert _ids(eval_batches(_Numbered(5), 4, num_workers=1), 10) == [[0, 1, 2, 3], [4]]


def test_prefetched_batches_arrive_in_order_and_errors_reach_the_caller():
    from svg.data.loaders import Prefetcher

    def batches():
        for i in range(3):
            yield torch.full((1,), i), torch.full((1,), -i)
        raise DataError("sequence 3 unreadable")

    stream = Prefetcher(batches())
    assert [int(next(stream)[0]) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(DataError, match="sequence 3"):
        next(stream)
    stream.close()


def test_prefetched_batches_end_where_the_batches_end():
    """Evaluation on a GPU reads its finite batches through the Prefetcher: a for loop over it ends after the
    last batch, and so does every later call, rather than waiting for a batch that never comes."""
    from svg.data.loaders import Prefetcher

    stream = Prefetcher(iter([(torch.full((1,), i), torch.zeros(1)) for i in range(3)]))
    assert [int(frames) for frames, _ in stream] == [0, 1, 2]
    with pytest.raises(StopIteration):
        next(stream)
    stream.close()
