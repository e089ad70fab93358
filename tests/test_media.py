"""Media a person browses: GIF layout, frame counter, phase marks, palette fidelity and file sizes."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageSequence

from svg.evaluation import Panels
from svg.media import BAR, GAP, GIVEN, LINE, PREDICTED, compose, write_curves, write_gif, write_strip

STEPS, N_PAST, BATCH = 12, 2, 4


def scene(steps: int = STEPS, batch: int = BATCH, seed: int = 0) -> torch.Tensor:
    """Robot-pushing-like video: a textured static background with sensor noise and a moving square."""
    g = torch.Generator().manual_seed(seed)
    background = 0.5 + 0.15 * torch.nn.functional.avg_pool2d(torch.rand(batch, 3, 64, 64, generator=g), 5, 1, 2)
    video = background.expand(steps, -1, -1, -1, -1).clone()
    video += 0.015 * torch.randn(video.shape, generator=g)
    for t in range(steps):
        video[t, :, 0, 20:30, 4 + 4 * t : 14 + 4 * t] = 0.9
    return video.clamp(0, 1)


@pytest.fixture(scope="module")
def videos():
    truth = scene()
    blurred = torch.nn.functional.avg_pool2d(truth.flatten(0, 1), 5, 1, 2).view_as(truth)
    return [("ground truth", truth), ("sample", blurred), ("best of 3", blurred.flip(1))]


def read_gif(path):
    image = Image.open(path)
    frames = [np.asarray(f.convert("RGB")).astype(int) for f in ImageSequence.Iterator(image)]
    durations = [f.info["duration"] for f in ImageSequence.Iterator(Image.open(path))]
    return np.stack(frames), durations


def test_compose_lays_out_sequences_down_videos_across_under_a_header(videos):
    frames = compose(videos, N_PAST)
    assert frames.shape == (STEPS, 2 * LINE + BATCH * (64 + BAR + GAP), 3 * (64 + GAP), 3)
    cell = frames[3, 2 * LINE : 2 * LINE + 64, 0:64]
    assert np.abs(cell.astype(int) - (videos[0][1][3, 0].permute(1, 2, 0).numpy() * 255).round()).max() <= 1


def test_phase_bars_mark_given_and_predicted_frames_and_the_counter_moves(videos):
    frames = compose(videos, N_PAST)
    bar_row = 2 * LINE + 64 + 1
    for t in range(STEPS):
        expected = GIVEN if t < N_PAST else PREDICTED
        assert tuple(frames[t, bar_row, 10]) == expected and tuple(frames[t, bar_row, 66 * 2 + 10]) == expected
    counter = frames[:, :LINE]
    assert not np.array_equal(counter[0], counter[1]) and not np.array_equal(counter[5], counter[6])
    assert np.array_equal(frames[0, LINE : 2 * LINE], frames[7, LINE : 2 * LINE])  # column labels stay


def test_gif_round_trips_close_to_the_frames_small_and_holds_the_last_frame(videos, tmp_path):
    frames = compose(videos, N_PAST)
    path = write_gif(tmp_path / "p.gif", videos, N_PAST, fps=4)
    back, durations = read_gif(path)
    assert back.shape == frames.shape
    error = np.abs(back - frames)
    assert error.mean() < 6 and np.quantile(error, 0.999) <= 40
    assert durations[0] == 250 and durations[-1] == 1000
    assert path.stat().st_size < 120_000, path.stat().st_size  # 12 frames, 4 sequences x 3 videos


def test_strip_has_one_column_per_step_and_one_row_per_video(videos, tmp_path):
    path = write_strip(tmp_path / "s.png", videos, N_PAST)
    strip = np.asarray(Image.open(path).convert("RGB")).astype(int)
    height, width, _ = strip.shape
    assert height == LINE + 3 * (64 + BAR + GAP)
    margin = width - STEPS * (64 + GAP)
    assert 0 < margin < 100
    bar_y = LINE + 64 + 1
    colors = [tuple(strip[bar_y, margin + t * (64 + GAP) + 30]) for t in range(STEPS)]
    assert all(np.abs(np.subtract(c, GIVEN)).max() <= 8 for c in colors[:N_PAST])
    assert all(np.abs(np.subtract(c, PREDICTED)).max() <= 8 for c in colors[N_PAST:])
    assert path.stat().st_size < 80_000, path.stat().st_size


def test_curves_plot_draws_each_series_in_its_own_colour(tmp_path):
    """One panel per metric; each series' line (matplotlib's C0, C1 cycle) is drawn, and other data
    draws other pixels."""
    series = {"mean of 2": ([20.0, 19.0, 18.5], [0.5, 0.6, 0.7]), "copy last": ([22.0, 19.5, 18.0], [0.1] * 3)}
    path = write_curves(tmp_path / "c.png", {"PSNR": series, "SSIM": series}, mark=2)
    image = np.asarray(Image.open(path).convert("RGB")).astype(int)
    assert image.shape == (320, 840, 3)
    for colour in ((31, 119, 180), (255, 127, 14)):  # C0 blue, C1 orange
        near = np.abs(image - colour).sum(-1) < 30
        assert near[:, :420].sum() > 50 and near[:, 420:].sum() > 50, colour  # in both panels
    flat = {"mean of 2": ([20.0, 20.0, 20.0], [0.0] * 3), "copy last": ([22.0, 19.5, 18.0], [0.1] * 3)}
    other = write_curves(tmp_path / "d.png", {"PSNR": flat, "SSIM": series}, mark=2)
    other_image = np.asarray(Image.open(other).convert("RGB")).astype(int)
    assert (np.abs(other_image - image).sum(-1) > 60)[:, :420].sum() > 50
    assert np.array_equal(other_image[:, 440:], image[:, 440:])


def test_panels_show_two_samples_and_the_best_only_with_several_samples(videos):
    truth, sample, best = (v for _, v in videos)
    shown = Panels(truth, sample, best.flip(0), best, 3).videos()
    assert [label for label, _ in shown] == ["ground truth", "sample 1", "sample 2", "best of 3"]
    assert shown[2][1] is not shown[1][1] and torch.equal(shown[2][1], best.flip(0))
    assert [label for label, _ in Panels(truth, sample, None, best, 1).videos()] == ["ground truth", "sample"]
