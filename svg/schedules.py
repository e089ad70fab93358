"""The KL weight beta and the teacher-forcing ratio: pure functions of the epoch.

The trainer passes the fractional epoch (iteration / iters_per_epoch), so short runs follow the curve
instead of aliasing it; ``train.schedule=epoch`` passes whole epochs, as the seed did.
"""

from __future__ import annotations

import math

from svg.config import KL, TeacherForcing


def beta(epoch: float, epochs: int, kl: KL) -> float:
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
