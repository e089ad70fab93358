"""Drawing a simulated scene (``svg.data.scene``) as uint8 frames: table texture, objects, ball, arm and
gripper, lighting drift (``draw``, from the ``look`` stream), then sensor noise (``expose``, from the
``noise`` stream). Everything the look stream draws is per sequence and visible from the first frame,
so a re-simulation rendered with the same look stream shows the same scene; each frame depends only
on its own state, its index and the per-sequence draws."""

from __future__ import annotations

import colorsys
import functools

import numpy as np

from svg.data.scene import FINGER_GREY, PIXEL_X, PIXEL_Y, SIZE, TABLE_COLOURS, gripper_geometry


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
    grain = np.sin(rng.uniform(0.15, 0.6) * (PIXEL_X * np.cos(a) + PIXEL_Y * np.sin(a)) + 2.5 * _smooth_noise(rng, 4))
    texture = (
        rng.uniform(0.03, 0.08) * blotch
        + rng.uniform(0.0, 0.06) * grain
        + rng.uniform(0.01, 0.03) * rng.standard_normal((SIZE, SIZE)).astype(np.float32)
    )
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


_NOISE_SPAN = 64 * SIZE * SIZE  # room for up to 64 frames, so where noise windows start ignores the length


@functools.cache
def _noise_bank() -> np.ndarray:
    """Fixed unit-normal noise: random windows into it are much cheaper than fresh draws."""
    return np.random.default_rng(0x5EED).standard_normal(1 << 20).astype(np.float32)


def render(sim: dict[str, np.ndarray], look: np.random.Generator, noise: np.random.Generator) -> np.ndarray:
    """uint8 frames (T, 64, 64, 3) of a simulated sequence."""
    return expose(*draw(sim, look), noise)


def draw(sim: dict[str, np.ndarray], rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """The noise-free image, planar (3, T*64*64) on [0, 255], and the sequence's sensor noise sigma."""
    sim = {key: np.asarray(v, np.float32) if np.asarray(v).dtype == np.float64 else v for key, v in sim.items()}
    steps = len(sim["z"])
    image = np.repeat(_table(rng).transpose(2, 0, 1)[:, None], steps, axis=1).reshape(3, -1)
    gx, gy, z = sim["grip"][:, 0], sim["grip"][:, 1], sim["z"]

    colours = []
    for _ in range(len(sim["radius"])):
        rgb = np.array([rng.uniform(0.55, 0.95), rng.uniform(0.0, 0.5), rng.uniform(0.05, 0.6)])
        colours.append(rgb[rng.permutation(3)].astype(np.float32))
    ball_colour = np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.8, 1.0), rng.uniform(0.9, 1.0)), np.float32)
    bx, by, br = sim["ball"][:, 0], sim["ball"][:, 1], sim["ball_radius"]
    for j, r in enumerate(sim["radius"]):
        ox, oy = sim["pos"][:, j, 0], sim["pos"][:, j, 1]
        _Shape.disc(ox + 1.0, oy + 1.5, r, 1.5).darken(image, 0.25)
    _Shape.disc(bx + 1.0, by + 1.5, br, 1.5).darken(image, 0.25)
    for j, r in enumerate(sim["radius"]):
        ox, oy = sim["pos"][:, j, 0], sim["pos"][:, j, 1]
        if sim["square"][j]:
            _Shape.square(ox, oy, 0.88 * r, sim["angle"][:, j]).paint(image, colours[j])
        else:
            _Shape.disc(ox, oy, r).paint(image, colours[j])
    _Shape.disc(bx, by, br).paint(image, ball_colour)
    _Shape.disc(bx - 0.35 * br, by - 0.35 * br, 0.3 * br).paint(image, 0.5 + 0.5 * ball_colour)  # highlight

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
    level = sim["light"] + rng.uniform(0.02, 0.07) * np.sin(rng.uniform(0.05, 0.25) * t + rng.uniform(0, 2 * np.pi))
    theta = rng.uniform(0, 2 * np.pi) + rng.uniform(-0.025, 0.025) * t
    slope = rng.uniform(0.03, 0.1)
    cos, sin = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
    light = level[:, None, None] * (1 + slope * (cos * (PIXEL_X - 32) + sin * (PIXEL_Y - 32)) / 32)
    tint = rng.uniform(0.95, 1.05, 3).astype(np.float32)
    image *= light.reshape(-1)
    image *= (tint * 255)[:, None]
    return image, float(rng.uniform(1.0, 3.0))


def expose(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Sensor noise and uint8 rounding of a ``draw`` image, which it overwrites (pass a copy to keep it).

    Each channel gets its own random window of a fixed bank of unit normals, frame t at offset t*64*64,
    so a frame's noise depends only on the stream and the frame's index."""
    bank = _noise_bank()
    for plane, start in zip(image, rng.integers(0, len(bank) - _NOISE_SPAN, 3), strict=True):
        plane += sigma * bank[start : start + plane.size] + 0.5
    np.clip(image, 0, 255, out=image)
    steps = image.shape[1] // (SIZE * SIZE)
    return image.reshape(3, steps, SIZE, SIZE).transpose(1, 2, 3, 0).astype(np.uint8, order="C")
