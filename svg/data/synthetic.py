"""Synthetic BAIR-like robot pushing: the embedded default dataset, written in the course layout.

A tabletop seen from above: a textured table, a grey arm reaching in from the top edge to a gripper
(a body and two dark fingers; all of it grows with height z, the fingers open and close), one to
three discs or squares that the gripper pushes when it is low enough to touch them, and in most
sequences a marble that rolls about on its own. A smooth random policy mostly goes behind an
object, descends and pushes it through, so pushes happen in most sequences. Mild lighting drift
and sensor noise on top.

Conditions per frame are BAIR's: action (dx, dy, dz, grip) taken at that frame, and the end-effector
position (x, y, z) shown in it, all within [-1, 1]. x, y map to pixels as 32 + 32 * value (the centre
of the two fingers), z = 2 * height - 1. What the conditions leave out (each object's friction, the
kick and deflection a push gives, the marble's wandering) makes the future partly random given the
past: the reason SVG's stochastic latent exists.

Every sequence is drawn from numpy's default_rng([seed, split, index]), so the data is the same for
any number of worker processes.
"""

from __future__ import annotations

import cmath
import fcntl
import functools
import json
import os
import shutil
from pathlib import Path

import numpy as np

from svg.data import cache
from svg.data.course import SEQ_LEN, SPLITS, write_sequence
from svg.data.errors import DataError

GENERATOR_VERSION = 1
MARKER = ".synthetic.json"
_PARTIAL = ".synthetic.partial.json"
_LOCK = ".synthetic.lock"
_CHUNK = 32  # sequences per worker task
_TRAJECTORY = 256  # sequences per trajectory folder, as in the official files

SIZE = 64
WORKSPACE = (8.0, 56.0)  # the gripper centre stays this far inside the frame (pixels)
V_SCALE = 6.0  # pixels per frame moved for |dx| = 1
Z_SCALE = 0.25  # height change per frame for |dz| = 1
CONTACT_Z = 0.3  # below this height the fingers touch objects
FINGER_GREY = 0.05  # the darkest thing in a frame, so tests can find the gripper
TABLE_COLOURS = np.array(
    [[0.62, 0.50, 0.37], [0.58, 0.58, 0.56], [0.47, 0.53, 0.60], [0.48, 0.56, 0.46], [0.72, 0.67, 0.58]],
    np.float32,
)

_Y, _X = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) + 0.5


def gripper_geometry(z: np.ndarray, opening: np.ndarray) -> dict[str, np.ndarray]:
    """Sizes in pixels; the gripper looks bigger when higher (closer to the camera)."""
    body = 2.0 + 1.6 * z
    finger = 1.0 + 0.6 * z
    spread = body * (0.5 + 0.7 * opening)
    return {"body": body, "finger": finger, "spread": spread, "length": 2.5 + 2.0 * z,
            "reach": spread + finger}


def _unit(v: complex, rng: np.random.Generator) -> complex:
    n = abs(v)
    return v / n if n > 1e-6 else cmath.exp(1j * rng.uniform(0, 2 * np.pi))


def _clip(v: complex, low: float, high: float) -> complex:
    return complex(min(max(v.real, low), high), min(max(v.imag, low), high))


def _point(rng: np.random.Generator, low: float, high: float) -> complex:
    return complex(*rng.uniform(low, high, 2))


def _dot(a: complex, b: complex) -> float:
    return (a.conjugate() * b).real


def _simulate(rng: np.random.Generator, steps: int) -> dict[str, np.ndarray]:
    """Policy and physics, with 2-D points as complex numbers; returns per-frame states and actions."""
    n_obj = int(rng.integers(1, 4))
    radius = rng.uniform(3.5, 6.0, n_obj).tolist()
    pos: list[complex] = []
    for k in range(n_obj):
        for _ in range(50):
            p = _point(rng, 14, 50)
            if all(abs(p - q) > radius[k] + radius[j] + 3 for j, q in enumerate(pos)):
                break
        pos.append(p)
    vel = [0j] * n_obj
    angle, spin = rng.uniform(0, np.pi / 2, n_obj).tolist(), [0.0] * n_obj
    friction = rng.uniform(0.12, 0.5, n_obj).tolist()  # hidden: how far an object slides after a push
    kick = rng.uniform(0.7, 1.6, n_obj).tolist()  # hidden: how hard a push launches it

    grip = _point(rng, *WORKSPACE)
    z, opening = rng.uniform(0.4, 1.0), rng.random()
    gripper_vel = 0j
    command = float(rng.choice([-1.0, 1.0]))
    vmax = rng.uniform(2.2, 3.6)
    marble = _point(rng, 6, 58) if rng.random() < 0.7 else None
    marble_vel = complex(*rng.normal(0, 1.2, 2))

    centre = complex(SIZE / 2, SIZE / 2)
    mode, timer, target, z_target, k, direction = "wander", 0, grip, z, 0, 1 + 0j
    grips, heights, openings, actions, objects, angles, marbles = [], [], [], [], [], [], []
    for _ in range(steps):
        grips.append(grip), heights.append(z), openings.append(opening)
        objects.append(list(pos)), angles.append(list(angle))
        if marble is not None:
            marbles.append(marble)

        # Policy: approach a spot behind an object (high, then descending), push through it; or wander.
        timer -= 1
        if mode in ("wander", "push") and (timer <= 0 or abs(target - grip) < 2.0):
            if rng.random() < 0.75:
                k = int(rng.integers(n_obj))
                direction = _unit(centre + complex(*rng.normal(0, 10, 2)) - pos[k], rng)
                mode, timer = "approach", 16
            else:
                mode, timer = "wander", int(rng.integers(4, 10))
                target, z_target = _point(rng, *WORKSPACE), rng.uniform(0, 1)
        if mode == "approach":
            target = pos[k] - direction * (radius[k] + gripper_geometry(0.0, opening)["reach"] + 1.0)
            distance = abs(target - grip)
            z_target = 0.0 if distance < 8 else 0.8
            if distance < 2.5 and z < CONTACT_Z:
                mode, timer = "push", 10
                target = pos[k] + direction * rng.uniform(6, 16)
            elif timer <= 0:
                mode, timer = "wander", 0
        if mode == "push":
            z_target = 0.0
        wanted = target - grip
        if abs(wanted) > vmax:
            wanted *= vmax / abs(wanted)
        gripper_vel = 0.5 * gripper_vel + 0.5 * wanted + complex(*rng.normal(0, 0.3, 2))
        if rng.random() < 0.08:
            command = -command
        move = _clip(gripper_vel / V_SCALE, -1, 1)
        dz = min(max((z_target - z) / Z_SCALE + rng.normal(0, 0.05), -1), 1)
        actions.append((move.real, move.imag, dz, command))

        # Physics: objects slide and slow down, the gripper moves, contacts push objects out of it.
        for j in range(n_obj):
            pos[j] += vel[j]
            angle[j] += spin[j]
            vel[j] *= 1 - friction[j]
            spin[j] *= 1 - friction[j]
        previous = grip
        grip = _clip(grip + V_SCALE * move, *WORKSPACE)
        z = min(max(z + Z_SCALE * dz, 0.0), 1.0)
        opening += 0.5 * ((command + 1) / 2 - opening)
        if z < CONTACT_Z:
            reach = gripper_geometry(z, opening)["reach"]
            for j in range(n_obj):
                if abs(pos[j] - grip) < radius[j] + reach:
                    normal = _unit(pos[j] - grip, rng)
                    pos[j] = grip + normal * (radius[j] + reach)
                    push = max(_dot(grip - previous, normal), 0.5) * kick[j]
                    vel[j] = normal * push * cmath.exp(1j * rng.normal(0, 0.3))
                    spin[j] += rng.normal(0, 0.15)
        for i in range(n_obj):
            for j in range(i + 1, n_obj):
                gap = radius[i] + radius[j] - abs(pos[j] - pos[i])
                if gap > 0:
                    normal = _unit(pos[j] - pos[i], rng)
                    pos[i] -= normal * gap / 2
                    pos[j] += normal * gap / 2
                    closing = _dot(vel[i] - vel[j], normal)
                    if closing > 0:
                        vel[i] -= closing * normal
                        vel[j] += closing * normal
        for j in range(n_obj):
            pos[j], vel[j] = _bounce(pos[j], vel[j], radius[j] + 1, SIZE - radius[j] - 1, 0.5)
        if marble is not None:
            marble_vel += complex(*rng.normal(0, 0.5, 2))
            marble_vel *= min(1.0, 2.5 / max(abs(marble_vel), 1e-6))
            marble, marble_vel = _bounce(marble + marble_vel, marble_vel, 3, SIZE - 3, 1.0)

    def xy(points: list) -> np.ndarray:
        array = np.array(points, np.complex128)
        return np.stack([array.real, array.imag], axis=-1)

    sim = {
        "grip": xy(grips), "z": np.array(heights), "opening": np.array(openings), "action": np.array(actions),
        "pos": xy(objects), "angle": np.array(angles), "radius": np.array(radius),
        "square": rng.random(n_obj) < 0.5,
    }
    if marbles:
        sim["marble"] = xy(marbles)
    return sim


def _bounce(p: complex, v: complex, low: float, high: float, keep: float) -> tuple[complex, complex]:
    """Keep a point inside [low, high] on both axes, reflecting (and damping) its velocity off a wall."""
    vx = -keep * v.real if not low <= p.real <= high else v.real
    vy = -keep * v.imag if not low <= p.imag <= high else v.imag
    return _clip(p, low, high), complex(vx, vy)


def _smooth_noise(rng: np.random.Generator, cells: int) -> np.ndarray:
    grid = rng.standard_normal((cells, cells))
    at = np.linspace(0, cells - 1, SIZE)
    i0 = np.minimum(at.astype(int), cells - 2)
    w = at - i0
    rows = grid[i0] * (1 - w)[:, None] + grid[i0 + 1] * w[:, None]
    return (rows[:, i0] * (1 - w) + rows[:, i0 + 1] * w).astype(np.float32)


def _table(rng: np.random.Generator) -> np.ndarray:
    """A per-sequence table: base colour, blotches, wood-like grain and fine static texture."""
    base = TABLE_COLOURS[rng.integers(len(TABLE_COLOURS))] + rng.uniform(-0.05, 0.05, 3).astype(np.float32)
    blotch = _smooth_noise(rng, int(rng.integers(3, 7)))
    a = rng.uniform(0, np.pi)
    grain = np.sin(rng.uniform(0.15, 0.6) * (_X * np.cos(a) + _Y * np.sin(a)) + 2.5 * _smooth_noise(rng, 4))
    texture = (rng.uniform(0.03, 0.08) * blotch + rng.uniform(0.0, 0.06) * grain
               + rng.uniform(0.01, 0.03) * rng.standard_normal((SIZE, SIZE)).astype(np.float32))
    return base * (1 + texture[..., None])


class _Shape:
    """Anti-aliased coverage of one shape in each frame, computed only in a per-frame window around it.

    Images are planar (3, T*64*64) while painting, so each channel is a 1-D take/put on the window."""

    def __init__(self, cx: np.ndarray, cy: np.ndarray, extent_x: float, extent_y: float | None = None):
        steps = len(cx)
        w = min(SIZE, 2 * int(np.ceil(extent_x)) + 2)
        h = min(SIZE, 2 * int(np.ceil(extent_x if extent_y is None else extent_y)) + 2)
        cols = np.clip(np.floor(cx).astype(int) - w // 2, 0, SIZE - w)[:, None] + np.arange(w)
        rows = np.clip(np.floor(cy).astype(int) - h // 2, 0, SIZE - h)[:, None] + np.arange(h)
        frame = np.arange(steps)[:, None, None]
        self.pixels = ((frame * SIZE + rows[:, :, None]) * SIZE + cols[:, None, :]).ravel()
        self.dx = (cols[:, None, :] + 0.5 - cx[:, None, None]).astype(np.float32)
        self.dy = (rows[:, :, None] + 0.5 - cy[:, None, None]).astype(np.float32)
        self.coverage = np.zeros(0, np.float32)

    def _cover(self, inside: np.ndarray, soft=1.0) -> _Shape:
        self.coverage = np.clip(inside / _per_frame(soft) + 0.5, 0.0, 1.0)
        return self

    @classmethod
    def disc(cls, x, y, r, soft=1.0) -> _Shape:
        shape = cls(x, y, float(np.max(r + soft)))
        return shape._cover(_per_frame(r) - np.sqrt(shape.dx**2 + shape.dy**2), soft)

    @classmethod
    def square(cls, x, y, half, angle) -> _Shape:
        shape = cls(x, y, 1.5 * half + 1)
        c, s = _per_frame(np.cos(angle)), _per_frame(np.sin(angle))
        du, dv = shape.dx * c + shape.dy * s, shape.dy * c - shape.dx * s
        return shape._cover(half - np.maximum(np.abs(du), np.abs(dv)))

    @classmethod
    def segment(cls, ax, ay, bx, by, half_width) -> _Shape:
        reach = np.max(half_width) + 1
        extent_x, extent_y = np.max(np.abs(bx - ax)) / 2 + reach, np.max(np.abs(by - ay)) / 2 + reach
        shape = cls((ax + bx) / 2, (ay + by) / 2, extent_x, extent_y)
        ux, uy = _per_frame(bx - ax), _per_frame(by - ay)
        dx, dy = shape.dx + ux / 2, shape.dy + uy / 2  # offsets from a, not from the middle
        along = np.clip((dx * ux + dy * uy) / np.maximum(ux * ux + uy * uy, 1e-6), 0, 1)
        return shape._cover(_per_frame(half_width) - np.hypot(dx - along * ux, dy - along * uy))

    def paint(self, image: np.ndarray, colour) -> None:
        """colour: (3,) or per frame (T, 3)."""
        colour = np.asarray(colour, np.float32)
        for c, plane in enumerate(image):
            under = plane.take(self.pixels).reshape(self.coverage.shape)
            plane.put(self.pixels, under + self.coverage * (_per_frame(colour[..., c]) - under))

    def darken(self, image: np.ndarray, strength) -> None:
        keep = (1 - self.coverage * _per_frame(strength)).ravel()
        for plane in image:
            plane.put(self.pixels, plane.take(self.pixels) * keep)


def _per_frame(value) -> np.ndarray:
    """A scalar or per-frame (T,) value shaped to broadcast over (T, h, w)."""
    value = np.asarray(value, np.float32)
    return value[:, None, None] if value.ndim == 1 else value


@functools.cache
def _noise_bank() -> np.ndarray:
    """Fixed unit-normal noise: random windows into it are much cheaper than fresh draws."""
    return np.random.default_rng(0x5EED).standard_normal(1 << 20).astype(np.float32)


def _render(sim: dict[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
    sim = {key: v.astype(np.float32) if v.dtype == np.float64 else v for key, v in sim.items()}
    steps = len(sim["z"])
    image = np.repeat(_table(rng).transpose(2, 0, 1)[:, None], steps, axis=1).reshape(3, -1)
    gx, gy, z = sim["grip"][:, 0], sim["grip"][:, 1], sim["z"]

    colours = []
    for _ in range(len(sim["radius"])):
        rgb = np.array([rng.uniform(0.55, 0.95), rng.uniform(0.0, 0.5), rng.uniform(0.05, 0.6)])
        colours.append(rgb[rng.permutation(3)].astype(np.float32))
    for j, r in enumerate(sim["radius"]):
        ox, oy = sim["pos"][:, j, 0], sim["pos"][:, j, 1]
        _Shape.disc(ox + 1.0, oy + 1.5, r, 1.5).darken(image, 0.25)
    for j, r in enumerate(sim["radius"]):
        ox, oy = sim["pos"][:, j, 0], sim["pos"][:, j, 1]
        if sim["square"][j]:
            _Shape.square(ox, oy, 0.88 * r, sim["angle"][:, j]).paint(image, colours[j])
        else:
            _Shape.disc(ox, oy, r).paint(image, colours[j])
    if "marble" in sim:
        tone = rng.uniform(0.8, 1.0, 3).astype(np.float32)
        _Shape.disc(sim["marble"][:, 0], sim["marble"][:, 1], 2.2).paint(image, tone)

    geo = gripper_geometry(z, sim["opening"])
    shadow = _Shape.disc(gx + 1 + 4 * z, gy + 1.5 + 5 * z, geo["body"] + geo["spread"], 1 + 2 * z)
    shadow.darken(image, 0.3 - 0.12 * z)
    base_x = np.full(steps, rng.uniform(16, 48), np.float32)
    base_y = np.full(steps, -8.0, np.float32)
    ux, uy = gx - base_x, gy - base_y
    norm = np.hypot(ux, uy)
    ux, uy = ux / norm, uy / norm
    wrist = geo["length"] + 0.3 * geo["body"]
    wx, wy = gx - ux * wrist, gy - uy * wrist
    arm_grey = (0.5 + 0.12 * z)[:, None] * np.float32([1.0, 1.0, 1.04])
    _Shape.segment(base_x, base_y, wx, wy, 1.3 + 1.1 * z).paint(image, arm_grey)
    _Shape.disc(wx, wy, geo["body"]).paint(image, [0.42, 0.42, 0.45])
    for side in (-1.0, 1.0):
        fx, fy = gx - side * uy * geo["spread"], gy + side * ux * geo["spread"]
        lx, ly = ux * geo["length"], uy * geo["length"]
        finger = _Shape.segment(fx - lx, fy - ly, fx + lx, fy + ly, geo["finger"])
        finger.paint(image, [FINGER_GREY] * 3)

    # Lighting: a slow global flicker and a drifting gradient, slightly tinted.
    t = np.arange(steps, dtype=np.float32)
    level = 1 + rng.uniform(0.02, 0.07) * np.sin(rng.uniform(0.05, 0.25) * t + rng.uniform(0, 2 * np.pi))
    theta = rng.uniform(0, 2 * np.pi) + rng.uniform(-0.025, 0.025) * t
    slope = rng.uniform(0.03, 0.1)
    cos, sin = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
    light = level[:, None, None] * (1 + slope * (cos * (_X - 32) + sin * (_Y - 32)) / 32)
    tint = rng.uniform(0.95, 1.05, 3).astype(np.float32)
    image *= light.reshape(-1)
    image *= (tint * 255)[:, None]

    # Sensor noise: each channel gets its own random window of a fixed bank of unit normals.
    bank = _noise_bank()
    sigma = rng.uniform(1.0, 3.0)
    for plane, start in zip(image, rng.integers(0, len(bank) - image.shape[1], 3), strict=True):
        plane += sigma * bank[start : start + image.shape[1]] + 0.5
    np.clip(image, 0, 255, out=image)
    return image.reshape(3, steps, SIZE, SIZE).transpose(1, 2, 3, 0).astype(np.uint8, order="C")


def generate_sequence(seed: int, split: str, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sequence `index` of `split`: frames uint8 (30, 64, 64, 3), actions (30, 4), positions (30, 3)."""
    rng = np.random.default_rng([seed, SPLITS.index(split), index])
    sim = _simulate(rng, SEQ_LEN)
    frames = _render(sim, rng)
    xy = (sim["grip"] - SIZE / 2) / (SIZE / 2)
    positions = np.column_stack([xy, 2 * sim["z"] - 1]).astype(np.float32)
    return frames, sim["action"].astype(np.float32), positions


def _sequence_dir(split_dir: Path, index: int) -> Path:
    first = index // _TRAJECTORY * _TRAJECTORY
    return split_dir / f"traj_{first}_to_{first + _TRAJECTORY - 1}" / str(index - first)


def _generate_chunk(job: tuple[Path, str, int, int, int, Path, Path]) -> int:
    root, split, seed, start, stop, frames_tmp, conditions_tmp = job
    frames_out = np.load(frames_tmp, mmap_mode="r+")
    conditions_out = np.load(conditions_tmp, mmap_mode="r+")
    for i in range(start, stop):
        frames, actions, positions = generate_sequence(seed, split, i)
        write_sequence(_sequence_dir(root / split, i), frames, actions, positions)
        frames_out[i] = frames
        conditions_out[i] = np.concatenate([actions, positions], axis=1)
    frames_out.flush()
    conditions_out.flush()
    return stop - start


def holds_other_data(root: str | Path) -> bool:
    """True when root holds a dataset (splits or a packed cache) that ensure_synthetic did not write."""
    root = Path(root)
    ours = (root / MARKER).exists() or (root / _PARTIAL).exists()
    return not ours and any((root / name).exists() for name in (*SPLITS, ".cache"))


def ensure_synthetic(
    root: str | Path, n_train: int, n_val: int, n_test: int, seed: int,
    workers: int | None = None, progress: bool = False,
) -> Path:
    """Generate the synthetic dataset (course layout and packed cache) under root unless it is already
    complete with these sizes and seed; rebuild only the cache if that is what is missing.

    The marker is written last, so an interrupted run is redone. A file lock makes concurrent callers
    (parallel sweep trials, DDP ranks) wait for one generation. A root holding data this function did
    not write is never overwritten.
    """
    root = Path(root)
    sizes = {"train": n_train, "validate": n_val, "test": n_test}
    if min(sizes.values()) < 1 or seed < 0:
        raise DataError(f"synthetic data: sizes must be >= 1 and seed >= 0, got {sizes}, seed {seed}")
    params = {"generator": GENERATOR_VERSION, "seed": seed, **sizes}
    if holds_other_data(root):
        raise DataError(f"data.root: {root} holds data that ensure_synthetic did not write; "
                        "refusing to overwrite it (choose another data.root)")
    root.mkdir(parents=True, exist_ok=True)
    with open(root / _LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _read_json(root / MARKER) != params:
            _generate(root, params, workers or os.cpu_count() or 1, progress)
        stale = tuple(split for split in SPLITS if not cache.is_current(root, split))
        if stale:
            cache.pack(root, stale, workers=workers, progress=progress)
    return root


def _generate(root: Path, params: dict, workers: int, progress: bool) -> None:
    (root / _PARTIAL).write_text(json.dumps(params))
    (root / MARKER).unlink(missing_ok=True)
    with cache.pool_context().Pool(workers) as pool:
        for split in SPLITS:
            count = params[split]
            shutil.rmtree(root / split, ignore_errors=True)
            frames_tmp, conditions_tmp = cache.begin(root, split, count, SEQ_LEN)
            jobs = [(root, split, params["seed"], start, min(start + _CHUNK, count), frames_tmp, conditions_tmp)
                    for start in range(0, count, _CHUNK)]
            with cache.progress_bar(progress, count, f"synthetic {split}", "seq") as bar:
                for done in pool.imap_unordered(_generate_chunk, jobs):
                    bar.update(done)
            cache.commit(root, split, cache.fingerprint(root / split), origin="synthetic")
    tmp = root / (MARKER + ".tmp")
    tmp.write_text(json.dumps(params, indent=1))
    os.replace(tmp, root / MARKER)
    (root / _PARTIAL).unlink()


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
