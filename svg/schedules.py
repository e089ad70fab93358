"""The KL weight beta and the teacher-forcing ratio, pure functions of the epoch, and the learning
rate, a pure function of the iteration.

The trainer passes the fractional epoch (iteration / iters_per_epoch), so short runs follow the curve
instead of aliasing it; ``train.schedule=epoch`` passes whole epochs, as the seed did.
"""

from __future__ import annotations

import math

from svg.config import KL, Optim, TeacherForcing, Train


def epoch_progress(iteration: int, train: Train) -> float:
    """The epoch the schedules see at 0-based ``iteration``: fractional, or whole with ``train.schedule=epoch``."""
    progress = iteration / train.iters_per_epoch
    return math.floor(progress) if train.schedule == "epoch" else progress


def beta_at(epoch: float, epochs: int, kl: KL) -> float:
    """KL weight at ``epoch`` (0-based, possibly fractional) of ``epochs``.

    monotonic: rises linearly from 0 over the first ``ratio`` of the run, then stays at beta_max.
    cyclical: the run is split into ``cycles`` equal periods; in the first ``ratio`` of each, beta
    follows the sigmoid 1/(1+exp(-(12v-6))) of the progress v in [0, 1), then stays at beta_max.
    none: always beta_max.
    """
    if kl.mode == "none":
        return kl.beta_max
    if kl.mode == "monotonic":
        return kl.beta_max * min(1.0, epoch / (epochs * kl.ratio))
    period = epochs / kl.cycles
    v = (epoch - math.floor(epoch / period) * period) / (period * kl.ratio)
    if v >= 1.0:
        return kl.beta_max
    return kl.beta_max / (1.0 + math.exp(-(12.0 * v - 6.0)))


def teacher_forcing_ratio(epoch: float, epochs: int, tfr: TeacherForcing) -> float:
    """Probability that a training sequence is teacher-forced during ``epoch``.

    1 until ``start_decay_epoch``, then lower by ``decay_step`` per epoch (default: linearly to 0 at
    the end of the run), never below ``lower``. A start at or after the last epoch: never decays.
    """
    if tfr.start_decay_epoch >= epochs:
        return 1.0
    step = tfr.decay_step if tfr.decay_step is not None else 1.0 / (epochs - tfr.start_decay_epoch)
    return max(tfr.lower, 1.0 - step * max(0, epoch - tfr.start_decay_epoch))


def teacher_forced_share(train: Train, tfr: TeacherForcing) -> float:
    """The expected share of a run's steps that are teacher forced: the ratio averaged over its iterations."""
    total = train.epochs * train.iters_per_epoch
    return math.fsum(teacher_forcing_ratio(epoch_progress(i, train), train.epochs, tfr) for i in range(total)) / total


def learning_rate(iteration: int, total: int, optim: Optim) -> float:
    """Learning rate of the update at 0-based ``iteration`` of ``total``: a linear warm-up over
    ``warmup_iters`` (the first update already moves, at lr / warmup_iters), then ``lr`` (decay none) or
    a half cosine from ``lr`` to ``final_lr`` at the last iteration (decay cosine)."""
    if iteration < optim.warmup_iters:
        return optim.lr * (iteration + 1) / optim.warmup_iters
    if optim.decay == "none":
        return optim.lr
    span = max(total - 1 - optim.warmup_iters, 1)
    v = min(1.0, (iteration - optim.warmup_iters) / span)
    return optim.final_lr + (optim.lr - optim.final_lr) * 0.5 * (1.0 + math.cos(math.pi * v))
