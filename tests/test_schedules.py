import math

import pytest

from svg.config import KL, TeacherForcing
from svg.schedules import beta, teacher_forcing_ratio


def sigmoid(v):
    return 1 / (1 + math.exp(-(12 * v - 6)))


@pytest.mark.parametrize(
    ("epoch", "expected"),
    [(0, 0.0), (30, 0.2), (75, 0.5), (149, 149 / 150), (150, 1.0), (299, 1.0)],
)
def test_monotonic_rises_linearly_over_first_half(epoch, expected):
    assert beta(epoch, 300, KL(mode="monotonic", ratio=0.5)) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("epoch", "expected"),
    [
        (0, sigmoid(0.0)),  # 0.002473: start of cycle 1
        (25, 0.5),  # halfway up: v = 0.5
        (40, sigmoid(0.8)),
        (50, 1.0),  # rise over, flat until the cycle ends
        (99, 1.0),
        (100, sigmoid(0.0)),  # cycle 2 restarts
        (210, sigmoid(0.2)),
    ],
)
def test_cyclical_three_cycles_of_sigmoid(epoch, expected):
    assert beta(epoch, 300, KL(mode="cyclical", ratio=0.5, cycles=3)) == pytest.approx(expected)


def test_cyclical_hand_values():
    kl = KL(mode="cyclical", ratio=0.5, cycles=3)
    assert beta(0, 300, kl) == pytest.approx(0.0024726, rel=1e-4)
    assert beta(40, 300, kl) == pytest.approx(0.9734030, rel=1e-6)


def test_beta_max_scales_and_none_is_constant():
    assert beta(75, 300, KL(mode="monotonic", beta_max=1e-4)) == pytest.approx(0.5e-4)
    assert beta(0, 300, KL(mode="none", beta_max=0.3)) == 0.3


@pytest.mark.parametrize(
    ("epoch", "expected"),
    [(0, 1.0), (10, 1.0), (11, 1 - 1 / 290), (155, 0.5), (299, 1 - 289 / 290)],
)
def test_teacher_forcing_default_decays_to_zero_at_the_end(epoch, expected):
    assert teacher_forcing_ratio(epoch, 300, TeacherForcing(start_decay_epoch=10)) == pytest.approx(expected)


def test_teacher_forcing_step_and_floor():
    tfr = TeacherForcing(start_decay_epoch=0, decay_step=0.1, lower=0.25)
    assert teacher_forcing_ratio(3, 50, tfr) == pytest.approx(0.7)
    assert teacher_forcing_ratio(40, 50, tfr) == 0.25
