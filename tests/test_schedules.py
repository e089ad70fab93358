import math

import pytest

from svg.config import KL, Optim, TeacherForcing, Train
from svg.schedules import beta_at, epoch_progress, learning_rate, teacher_forced_share, teacher_forcing_ratio


def sigmoid(v):
    return 1 / (1 + math.exp(-(12 * v - 6)))


@pytest.mark.parametrize(
    ("epoch", "expected"),
    [(0, 0.0), (30, 0.2), (75, 0.5), (149, 149 / 150), (150, 1.0), (299, 1.0)],
)
def test_monotonic_rises_linearly_over_first_half(epoch, expected):
    assert beta_at(epoch, 300, KL(mode="monotonic", ratio=0.5)) == pytest.approx(expected)


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
    assert beta_at(epoch, 300, KL(mode="cyclical", ratio=0.5, cycles=3)) == pytest.approx(expected)


def test_cyclical_hand_values():
    kl = KL(mode="cyclical", ratio=0.5, cycles=3)
    assert beta_at(0, 300, kl) == pytest.approx(0.0024726, rel=1e-4)
    assert beta_at(40, 300, kl) == pytest.approx(0.9734030, rel=1e-6)


def test_beta_max_scales_and_none_is_constant():
    assert beta_at(75, 300, KL(mode="monotonic", beta_max=1e-4)) == pytest.approx(0.5e-4)
    assert beta_at(0, 300, KL(mode="none", beta_max=0.3)) == 0.3


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


@pytest.mark.parametrize(
    ("epoch", "expected"),
    [(0.5, sigmoid(0.3)), (1.5, sigmoid(0.9)), (2.25, 1.0), (3.4, sigmoid(0.04))],
)
def test_cyclical_at_fractional_epochs_follows_the_curve(epoch, expected):
    """10 epochs, 3 cycles: a cycle is 10/3 epochs and rises over its first 5/3; v = position / (5/3)."""
    kl = KL(mode="cyclical", ratio=0.5, cycles=3)
    assert beta_at(epoch, 10, kl) == pytest.approx(expected, rel=1e-5)


def test_fractional_epochs_hand_values():
    assert beta_at(1.25, 10, KL(mode="monotonic", ratio=0.5, beta_max=2.0)) == pytest.approx(0.5)
    assert teacher_forcing_ratio(4.5, 10, TeacherForcing(start_decay_epoch=4)) == pytest.approx(1 - 0.5 / 6)


def test_teacher_forcing_never_decays_when_the_start_is_past_the_run():
    tfr = TeacherForcing(start_decay_epoch=10)
    assert [teacher_forcing_ratio(e, 1, tfr) for e in (0, 0.5, 0.99)] == [1.0, 1.0, 1.0]
    assert teacher_forcing_ratio(9.9, 10, tfr) == 1.0


def test_teacher_forcing_start_may_be_a_fraction_of_an_epoch():
    # The seed's 10 of 300 epochs is 4% of a run: 0.4 of a 10-epoch run.
    tfr = TeacherForcing(start_decay_epoch=0.4)
    assert teacher_forcing_ratio(0.4, 10, tfr) == 1.0
    assert teacher_forcing_ratio(5.2, 10, tfr) == pytest.approx(1 - 4.8 / 9.6)
    assert teacher_forcing_ratio(10, 10, tfr) == pytest.approx(0.0)


def test_learning_rate_is_constant_by_default():
    assert [learning_rate(i, 100, Optim(lr=0.002)) for i in (0, 50, 99)] == [0.002] * 3


def test_learning_rate_warms_up_linearly_then_follows_a_cosine_to_its_floor():
    optim = Optim(lr=0.002, warmup_iters=4, decay="cosine", final_lr=0.0002)
    # warm-up: the first update already moves (1/4 of lr), the fourth is at lr
    assert [learning_rate(i, 105, optim) for i in range(4)] == pytest.approx([0.0005, 0.001, 0.0015, 0.002])
    # then 100 updates from lr (iteration 4) to final_lr (iteration 104): halfway at iteration 54
    assert learning_rate(4, 105, optim) == pytest.approx(0.002)
    assert learning_rate(54, 105, optim) == pytest.approx(0.0011)
    assert learning_rate(29, 105, optim) == pytest.approx(0.0002 + 0.0018 * (1 + math.cos(math.pi / 4)) / 2)
    assert learning_rate(104, 105, optim) == pytest.approx(0.0002)


def test_teacher_forced_share_averages_the_ratio_over_the_runs_iterations():
    """2 epochs of 3 iterations, decay from epoch 1: ratios 1, 1, 1, 1, 2/3, 1/3 (fractional epochs), or six
    ones with whole epochs (the second epoch is epoch 1, where the decay has not yet moved)."""
    train = Train(epochs=2, iters_per_epoch=3)
    tfr = TeacherForcing(start_decay_epoch=1)
    assert [epoch_progress(i, train) for i in range(6)] == pytest.approx([0, 1 / 3, 2 / 3, 1, 4 / 3, 5 / 3])
    assert teacher_forced_share(train, tfr) == pytest.approx(5 / 6)
    assert teacher_forced_share(train.model_copy(update={"schedule": "epoch"}), tfr) == 1.0
    assert teacher_forced_share(train, TeacherForcing(start_decay_epoch=2)) == 1.0
