"""The synthetic scene and its physics: one BAIR-like pushing sequence simulated from random streams
(``svg.data.render`` draws it).

A tabletop seen from above: a textured table, a grey arm reaching in from the top edge to a gripper
(a body and two dark fingers; all of it grows with height z, the fingers open and close), one to
three discs or squares that the gripper pushes when it is low enough to touch them, a ball
(radius 4-5 px, a bright saturated colour) that rolls at a steady speed of its own (1.5-3 px per
frame), turns to a new random heading at random moments (probability 0.2 per frame), and bounces
off the walls, the objects and the lowered gripper, and a room light that changes to a new level
(a factor of 0.85-1.15 on every pixel) at random moments (probability 0.1 per frame). A smooth random
policy mostly goes behind an object, descends and pushes it through, so pushes happen in most
sequences.

Conditions per frame are BAIR's: action (dx, dy, dz, grip) taken at that frame, and the end-effector
position (x, y, z) shown in it, all within [-1, 1]. x, y map to pixels as 32 + 32 * value (the centre
of the two fingers), z = 2 * height - 1. Given them the gripper is determined. What they leave out is
the hidden draws: when and where the ball turns, when the light changes and to what, and for every
push its kick (0.4-2.6 times the gripper's speed), its deflection (up to +-63 degrees) and how fast
the object then slows (friction 0.08-0.5 per frame). So the future is random given the past frames
and the conditions: the reason SVG's stochastic latent exists. (The policy reacts to where objects
really went, so later actions say a little about earlier pushes; they say nothing about the ball or
the light.)

Randomness comes in separate streams, so a sequence can be re-simulated with the same scene and the
same actions but other hidden draws (``svg.data.oracle`` does): ``scene`` draws the initial layout,
sizes, ball speed and first light level first, then the policy's choices; ``hidden`` is a table of
uniforms, one row per step (row i moves the world from frame i to frame i + 1, ``hidden_draws``). Given ``actions`` the
policy is bypassed and they are replayed open-loop; the scene stream is then used only for the layout.
"""

from __future__ import annotations

import cmath

import numpy as np

SIZE = 64
WORKSPACE = (8.0, 56.0)  # the gripper centre stays this far inside the frame (pixels)
V_SCALE = 6.0  # pixels per frame moved for |dx| = 1
Z_SCALE = 0.25  # height change per frame for |dz| = 1
CONTACT_Z = 0.3  # below this height the fingers touch objects and the ball
FINGER_GREY = 0.05  # the darkest thing in a frame, so tests can find the gripper
TABLE_COLOURS = np.array(
    [[0.62, 0.50, 0.37], [0.58, 0.58, 0.56], [0.47, 0.53, 0.60], [0.48, 0.56, 0.46], [0.72, 0.67, 0.58]],
    np.float32,
)
BALL_TURN = 0.2  # chance per frame that the ball turns to a new random heading
LIGHT_SWITCH = 0.1  # chance per frame that the room light changes to a new level
LIGHT_LEVELS = (0.85, 1.15)  # the room light's range, a factor on every pixel
MAX_OBJECTS = 3
# Columns of the hidden table: the ball's turn and new heading, the light's change and new level, then per
# object a push's kick, deflection, friction and spin.
_TURN, _HEADING, _SWITCH, _LEVEL, _PUSH = 0, 1, 2, 3, 4
HIDDEN_WIDTH = _PUSH + 4 * MAX_OBJECTS

PIXEL_Y, PIXEL_X = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) + 0.5


def gripper_geometry(z: np.ndarray, opening: np.ndarray) -> dict[str, np.ndarray]:
    """Sizes in pixels; the gripper looks bigger when higher (closer to the camera)."""
    body = 2.0 + 1.6 * z
    finger = 1.0 + 0.6 * z
    spread = body * (0.5 + 0.7 * opening)
    return {"body": body, "finger": finger, "spread": spread, "length": 2.5 + 2.0 * z, "reach": spread + finger}


def hidden_draws(rng: np.random.Generator, steps: int) -> np.ndarray:
    """The hidden table: (steps, HIDDEN_WIDTH) uniforms on [0, 1); row i drives the step to frame i + 1."""
    return rng.random((steps, HIDDEN_WIDTH))


def _unit(v: complex) -> complex:
    n = abs(v)
    return v / n if n > 1e-6 else 1 + 0j


def _clip(v: complex, low: float, high: float) -> complex:
    return complex(min(max(v.real, low), high), min(max(v.imag, low), high))


def _point(rng: np.random.Generator, low: float, high: float) -> complex:
    return complex(*rng.uniform(low, high, 2))


def _dot(a: complex, b: complex) -> float:
    return (a.conjugate() * b).real


def _place(rng: np.random.Generator, radius: float, taken: list[tuple[complex, float]]) -> complex:
    for _ in range(50):
        p = _point(rng, 14, 50)
        if all(abs(p - q) > radius + r + 3 for q, r in taken):
            break
    return p


def simulate(scene: np.random.Generator, hidden: np.ndarray, actions: np.ndarray | None = None) -> dict:
    """Policy (or replayed actions) and physics over len(hidden) frames, 2-D points as complex numbers;
    returns per-frame states (grip, z, opening, pos, angle, ball), the actions and the scene's sizes."""
    steps = len(hidden)
    n_obj = int(scene.integers(1, MAX_OBJECTS + 1))
    radius = scene.uniform(3.5, 6.0, n_obj).tolist()
    taken: list[tuple[complex, float]] = []
    for r in radius:
        taken.append((_place(scene, r, taken), r))
    pos = [p for p, _ in taken]
    angle = scene.uniform(0, np.pi / 2, n_obj).tolist()
    square = scene.random(n_obj) < 0.5
    ball_radius = scene.uniform(4.0, 5.0)
    ball = _place(scene, ball_radius, taken)
    speed = scene.uniform(1.5, 3.0)
    light = scene.uniform(*LIGHT_LEVELS)
    ball_vel = speed * cmath.exp(1j * scene.uniform(0, 2 * np.pi))
    grip = _point(scene, *WORKSPACE)
    z, opening = scene.uniform(0.4, 1.0), scene.random()
    command = float(scene.choice([-1.0, 1.0]))
    vmax = scene.uniform(2.2, 3.6)
    vel, spin, friction = [0j] * n_obj, [0.0] * n_obj, [0.3] * n_obj

    centre = complex(SIZE / 2, SIZE / 2)
    gripper_vel, mode, timer, target, z_target, k, direction = 0j, "wander", 0, grip, z, 0, 1 + 0j
    grips, heights, openings, taken_actions, objects, angles, balls, lights = [], [], [], [], [], [], [], []
    for i, h in enumerate(hidden):
        grips.append(grip), heights.append(z), openings.append(opening)
        objects.append(list(pos)), angles.append(list(angle)), balls.append(ball), lights.append(light)

        if actions is not None:
            move, dz, command = complex(actions[i][0], actions[i][1]), float(actions[i][2]), float(actions[i][3])
        else:  # Policy: approach a spot behind an object (high, then descending), push through it; or wander.
            timer -= 1
            if mode in ("wander", "push") and (timer <= 0 or abs(target - grip) < 2.0):
                if scene.random() < 0.75:
                    k = int(scene.integers(n_obj))
                    direction = _unit(centre + complex(*scene.normal(0, 10, 2)) - pos[k])
                    mode, timer = "approach", 16
                else:
                    mode, timer = "wander", int(scene.integers(4, 10))
                    target, z_target = _point(scene, *WORKSPACE), scene.uniform(0, 1)
            if mode == "approach":
                target = pos[k] - direction * (radius[k] + gripper_geometry(0.0, opening)["reach"] + 1.0)
                distance = abs(target - grip)
                z_target = 0.0 if distance < 8 else 0.8
                if distance < 2.5 and z < CONTACT_Z:
                    mode, timer = "push", 10
                    target = pos[k] + direction * scene.uniform(6, 16)
                elif timer <= 0:
                    mode, timer = "wander", 0
            if mode == "push":
                z_target = 0.0
            wanted = target - grip
            if abs(wanted) > vmax:
                wanted *= vmax / abs(wanted)
            gripper_vel = 0.5 * gripper_vel + 0.5 * wanted + complex(*scene.normal(0, 0.3, 2))
            if scene.random() < 0.08:
                command = -command
            move = _clip(gripper_vel / V_SCALE, -1, 1)
            dz = min(max((z_target - z) / Z_SCALE + scene.normal(0, 0.05), -1), 1)
        taken_actions.append((move.real, move.imag, dz, command))

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
        reach = gripper_geometry(z, opening)["reach"]
        if z < CONTACT_Z:
            for j in range(n_obj):
                if abs(pos[j] - grip) < radius[j] + reach:
                    kick, deflection, slow, twist = h[_PUSH + 4 * j : _PUSH + 4 * j + 4]
                    normal = _unit(pos[j] - grip)
                    push = max(_dot(grip - previous, normal), 0.5) * (0.4 + 2.2 * kick)
                    vel[j] = normal * push * cmath.exp(1.1j * (2 * deflection - 1))
                    pos[j] = grip + normal * (radius[j] + reach) + vel[j]  # launched at once
                    friction[j] = 0.08 + 0.42 * slow
                    spin[j] += 0.4 * (2 * twist - 1)
        for a in range(n_obj):
            for b in range(a + 1, n_obj):
                gap = radius[a] + radius[b] - abs(pos[b] - pos[a])
                if gap > 0:
                    normal = _unit(pos[b] - pos[a])
                    pos[a] -= normal * gap / 2
                    pos[b] += normal * gap / 2
                    closing = _dot(vel[a] - vel[b], normal)
                    if closing > 0:
                        vel[a] -= closing * normal
                        vel[b] += closing * normal
        for j in range(n_obj):
            pos[j], vel[j] = _bounce(pos[j], vel[j], radius[j] + 1, SIZE - radius[j] - 1, 0.5)

        # The ball: a random turn now and then, a step at its own speed, bounces off what it meets.
        if h[_TURN] < BALL_TURN:
            ball_vel = speed * cmath.exp(2j * np.pi * h[_HEADING])
        ball += ball_vel
        obstacles = list(zip(pos, radius, strict=True)) + ([(grip, reach)] if z < CONTACT_Z else [])
        for c, r in obstacles:
            away = ball - c
            if abs(away) < r + ball_radius:
                normal = _unit(away)
                ball = c + normal * (r + ball_radius)
                ball_vel -= 2 * min(_dot(ball_vel, normal), 0.0) * normal
        ball, ball_vel = _bounce(ball, ball_vel, ball_radius + 1, SIZE - ball_radius - 1, 1.0)
        if h[_SWITCH] < LIGHT_SWITCH:
            light = LIGHT_LEVELS[0] + (LIGHT_LEVELS[1] - LIGHT_LEVELS[0]) * h[_LEVEL]

    def xy(points: list) -> np.ndarray:
        array = np.array(points, np.complex128)
        return np.stack([array.real, array.imag], axis=-1)

    return {
        "grip": xy(grips),
        "z": np.array(heights),
        "opening": np.array(openings),
        "action": np.array(taken_actions).reshape(steps, 4),
        "pos": xy(objects),
        "angle": np.array(angles),
        "ball": xy(balls),
        "light": np.array(lights),
        "radius": np.array(radius),
        "square": square,
        "ball_radius": np.float64(ball_radius),
    }


def _bounce(p: complex, v: complex, low: float, high: float, keep: float) -> tuple[complex, complex]:
    """Keep a point inside [low, high] on both axes; off a wall its velocity turns inward (times keep)."""
    vx, vy = _inward(p.real, v.real, low, high, keep), _inward(p.imag, v.imag, low, high, keep)
    return _clip(p, low, high), complex(vx, vy)


def _inward(p: float, v: float, low: float, high: float, keep: float) -> float:
    return keep * abs(v) if p < low else -keep * abs(v) if p > high else v
