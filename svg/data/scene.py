"""The synthetic scene and its physics: one BAIR-like pushing sequence simulated from a seed
(``svg.data.render`` draws it).

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

import numpy as np

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

PIXEL_Y, PIXEL_X = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) + 0.5


def gripper_geometry(z: np.ndarray, opening: np.ndarray) -> dict[str, np.ndarray]:
    """Sizes in pixels; the gripper looks bigger when higher (closer to the camera)."""
    body = 2.0 + 1.6 * z
    finger = 1.0 + 0.6 * z
    spread = body * (0.5 + 0.7 * opening)
    return {"body": body, "finger": finger, "spread": spread, "length": 2.5 + 2.0 * z, "reach": spread + finger}


def _unit(v: complex, rng: np.random.Generator) -> complex:
    n = abs(v)
    return v / n if n > 1e-6 else cmath.exp(1j * rng.uniform(0, 2 * np.pi))


def _clip(v: complex, low: float, high: float) -> complex:
    return complex(min(max(v.real, low), high), min(max(v.imag, low), high))


def _point(rng: np.random.Generator, low: float, high: float) -> complex:
    return complex(*rng.uniform(low, high, 2))


def _dot(a: complex, b: complex) -> float:
    return (a.conjugate() * b).real


def simulate(rng: np.random.Generator, steps: int) -> dict[str, np.ndarray]:
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
        "grip": xy(grips),
        "z": np.array(heights),
        "opening": np.array(openings),
        "action": np.array(actions),
        "pos": xy(objects),
        "angle": np.array(angles),
        "radius": np.array(radius),
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
