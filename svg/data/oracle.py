"""The oracle error of the synthetic data: how much of a prediction's MSE no model can remove.

For a sequence, K re-simulations keep its scene (layout, sizes, colours, textures, lighting: the scene
and look streams) and its actions, replayed open-loop, but draw the hidden per-step randomness (ball
turns, light changes, push kicks, deflections, friction) and the sensor noise afresh. Two independent draws x, x' from
the same conditional distribution have E|x - x'|^2 / 2 = E|x - E[x]|^2: half their mean squared
difference is the MSE of an oracle that predicts the conditional mean, per predicted frame.

- free-running: the draws share the hidden rows up to frame n_past - 1 (the context), then differ;
- one-step: frame t of each draw shares the true history up to frame t - 1 and differs only in the
  hidden row of the step to frame t (averaged over t);
- "hidden only": all draws share one noise realisation, so only the hidden draws differ;
- "sensor noise alone": the same simulation under different noise.
Beside them copy-last (the last context frame repeated) on the sequences themselves.

Caveat, both ways: the oracle knows the scene's per-sequence constants (e.g. the lighting's phase) that
a model must infer from n_past frames; and the policy chose the later actions seeing where pushed
objects really went, so the real actions say a little more about the pushes than an open-loop replay
under fresh draws has (the ball is unaffected: the policy never looks at it).
"""

from __future__ import annotations

import itertools

import numpy as np

from svg.data import cache
from svg.data.course import SEQ_LEN, SPLITS
from svg.data.render import draw, expose
from svg.data.scene import HIDDEN_WIDTH, hidden_draws, simulate
from svg.data.synthetic import GENERATOR_VERSION, STREAMS, sequence_streams
from svg.errors import DataError

MIN_MSE = 1e-10  # as svg.metrics: a perfect frame scores 100 dB
HEADLINE_FRAMES = 10  # the seed's test protocol averages the first 10 predicted frames
ROWS = {
    "copy_last": "copy-last (last context frame repeated)",
    "free": "oracle, free-running",
    "step": "oracle, one-step",
    "free_hidden": "  free-running, hidden draws only",
    "step_hidden": "  one-step, hidden draws only",
    "free_ball": "  free-running, ball turns only",
    "free_light": "  free-running, light changes only",
    "free_push": "  free-running, pushes only",
    "noise": "sensor noise alone",
}
_NOISE_FREE = ("free_hidden", "step_hidden", "free_ball", "free_light", "free_push")  # per-frame MSE can be 0: no PSNR
_ALL = np.ones(HIDDEN_WIDTH, bool)
_COLUMN = np.arange(HIDDEN_WIDTH)  # scene.py's hidden table: the ball's turn and heading, the light's, the pushes
_BALL, _LIGHT, _PUSHES = _COLUMN < 2, (_COLUMN >= 2) & (_COLUMN < 4), _COLUMN >= 4
_PER_DRAW = 6  # streams per draw: free-running hidden, one-step hidden, noise, ball-only, light-only, push-only


def _mse(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-frame MSE on [0, 1] of uint8 frames (T, 64, 64, 3)."""
    diff = a.astype(np.float32) - b.astype(np.float32)
    return np.mean(diff * diff, axis=(1, 2, 3)) / 255.0**2


def _pairs(frames: list[np.ndarray]) -> np.ndarray:
    """Half the mean squared difference over all pairs of draws: the conditional mean's MSE per frame."""
    return np.mean([_mse(a, b) / 2 for a, b in itertools.combinations(frames, 2)], axis=0)


def sequence_errors(seed: int, split: str, index: int, n_past: int, horizon: int, draws: int) -> dict:
    """Per predicted frame (horizon,) MSE of each ROWS entry for one sequence of the synthetic data."""
    streams = sequence_streams(seed, split, index, extra=_PER_DRAW * draws)
    scene, hidden, look, noise = streams[: len(STREAMS)]
    extra = [streams[len(STREAMS) + _PER_DRAW * k : len(STREAMS) + _PER_DRAW * (k + 1)] for k in range(draws)]
    rng = np.random.default_rng
    steps = n_past + horizon
    truth = hidden_draws(rng(hidden), SEQ_LEN)
    original = simulate(rng(scene), truth)
    actions = original["action"]
    frames = expose(*draw(original, rng(look)), rng(noise))
    future = slice(n_past, steps)

    def replay(table: np.ndarray, own_noise: np.random.SeedSequence) -> tuple[np.ndarray, np.ndarray]:
        """The re-simulation's frames with its own noise and with the original's noise."""
        image, sigma = draw(simulate(rng(scene), table, actions[: len(table)]), rng(look))
        return expose(image.copy(), sigma, rng(own_noise)), expose(image, sigma, rng(noise))

    def one_step(fresh: np.ndarray) -> dict:
        """A sequence whose frame t differs from the truth only by the hidden row of the step to t."""
        sim = {key: value.copy() for key, value in original.items()}
        for t in range(n_past, steps):
            frame_t = simulate(rng(scene), np.concatenate([truth[: t - 1], fresh[t - 1 : t + 1]]), actions[: t + 1])
            for key in ("pos", "angle", "ball"):
                sim[key][t] = frame_t[key][t]
        return sim

    def after_context(stream: np.random.SeedSequence, columns: np.ndarray = _ALL) -> np.ndarray:
        """The true hidden table with `columns` redrawn from the step to frame n_past on."""
        table = truth[:steps].copy()
        table[n_past - 1 :, columns] = hidden_draws(rng(stream), steps)[n_past - 1 :, columns]
        return table

    runs: dict[str, list[np.ndarray]] = {key: [] for key in ROWS if key not in ("copy_last", "noise")}
    noise_only = []
    for free_ss, step_ss, noise_ss, ball_ss, light_ss, push_ss in extra:
        noisy, clean = replay(after_context(free_ss), noise_ss)
        runs["free"].append(noisy[future])
        runs["free_hidden"].append(clean[future])
        noise_only.append(_mse(noisy[future], clean[future]) / 2)
        runs["free_ball"].append(replay(after_context(ball_ss, _BALL), noise_ss)[1][future])
        runs["free_light"].append(replay(after_context(light_ss, _LIGHT), noise_ss)[1][future])
        runs["free_push"].append(replay(after_context(push_ss, _PUSHES), noise_ss)[1][future])
        image, sigma = draw(one_step(hidden_draws(rng(step_ss), steps)), rng(look))
        runs["step"].append(expose(image.copy(), sigma, rng(noise_ss))[future])
        runs["step_hidden"].append(expose(image, sigma, rng(noise))[future])
    errors = {key: _pairs(frames_k) for key, frames_k in runs.items()}
    errors["copy_last"] = _mse(frames[n_past - 1 : n_past], frames[future])
    errors["noise"] = np.mean(noise_only, axis=0)
    return errors


def _chunk(job: tuple) -> list[dict]:
    seed, split, indices, n_past, horizon, draws = job
    return [sequence_errors(seed, split, i, n_past, horizon, draws) for i in indices]


def oracle_error(
    seed: int = 0,
    split: str = "test",
    sequences: int = 256,
    n_past: int = 2,
    horizon: int = 28,
    draws: int = 3,
    workers: int | None = 1,
) -> dict:
    """The oracle and copy-last errors over the first `sequences` of a split of the synthetic data
    generated with `seed`; the same numbers for any number of worker processes."""
    if split not in SPLITS:
        raise DataError(f"oracle: split {split!r} is not one of {', '.join(SPLITS)}")
    if sequences < 1 or draws < 2 or n_past < 1 or horizon < 1 or n_past + horizon > SEQ_LEN:
        raise DataError(
            f"oracle: need sequences >= 1, draws >= 2, n_past >= 1, horizon >= 1 and n_past + horizon <= "
            f"{SEQ_LEN}; got sequences {sequences}, draws {draws}, n_past {n_past}, horizon {horizon}"
        )
    chunks = [range(start, min(start + 16, sequences)) for start in range(0, sequences, 16)]
    jobs = [(seed, split, chunk, n_past, horizon, draws) for chunk in chunks]
    if (workers or 1) > 1:
        with cache.pool_context().Pool(workers) as pool:
            results = sum(pool.map(_chunk, jobs), [])
    else:
        results = sum(map(_chunk, jobs), [])
    first = min(HEADLINE_FRAMES, horizon)
    rows, per_frame = {}, {}
    for key in ROWS:
        mse = np.stack([r[key] for r in results])  # (sequences, horizon)
        psnr = None if key in _NOISE_FREE else 10 * np.log10(1 / np.maximum(mse, MIN_MSE))
        rows[key] = {
            f"mse_{first}": float(mse[:, :first].mean()),
            f"mse_{horizon}": float(mse.mean()),
            f"psnr_{first}": None if psnr is None else float(psnr[:, :first].mean()),
            f"psnr_{horizon}": None if psnr is None else float(psnr.mean()),
        }
        per_frame[key] = [round(float(v), 8) for v in mse.mean(axis=0)]
    settings = {"generator": GENERATOR_VERSION, "seed": seed, "split": split, "sequences": sequences}
    return {**settings, "n_past": n_past, "horizon": horizon, "draws": draws, "rows": rows, "per_frame_mse": per_frame}


def table(result: dict) -> str:
    """The rows as a text table; PSNR is the seed's (mean over sequences and frames of per-frame PSNR)."""
    first, horizon = min(HEADLINE_FRAMES, result["horizon"]), result["horizon"]
    columns = (f"mse_{first}", f"mse_{horizon}", f"psnr_{first}", f"psnr_{horizon}")
    head = (
        f"synthetic v{result['generator']} {result['split']} split, seed {result['seed']}: {result['sequences']} "
        f"sequences, {result['n_past']} context frames, {result['draws']} draws each\n"
        f"{'':40} {'MSE ' + str(first):>10} {'MSE ' + str(horizon):>10} {'PSNR ' + str(first):>9} "
        f"{'PSNR ' + str(horizon):>9}"
    )
    lines = [head]
    for key, label in ROWS.items():
        row = result["rows"][key]
        cells = [f"{row[c]:10.2e}" for c in columns[:2]]
        cells += ["        -" if row[c] is None else f"{row[c]:9.2f}" for c in columns[2:]]
        lines.append(f"{label:40} {' '.join(cells)}")
    return "\n".join(lines)
