"""Statistics over seeds: a mean with its 95% t-interval, the paired difference of two settings over the seeds
they share, and the verdict such an interval supports. Pure functions of plain numbers.

The t quantile has n-1 degrees of freedom (scipy, which the ``sweeps`` engine already requires). One value has
no interval: ``half`` is None and the page says n=1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Interval:
    """A mean over ``n`` values and the half-width of its 95% interval (None when n < 2)."""

    mean: float
    half: float | None
    n: int

    @property
    def low(self) -> float | None:
        return None if self.half is None else self.mean - self.half

    @property
    def high(self) -> float | None:
        return None if self.half is None else self.mean + self.half


def t_quantile(p: float, dof: int) -> float:
    """The p-quantile of Student's t with ``dof`` degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(p, dof))


def mean_ci(values: list[float], level: float = 0.95) -> Interval:
    """Mean and half-width t(1-(1-level)/2, n-1) * s / sqrt(n) (s: sample standard deviation, n-1 in the
    denominator). ValueError on no values."""
    n = len(values)
    if n == 0:
        raise ValueError("mean_ci: no values")
    mean = math.fsum(values) / n
    if n == 1:
        return Interval(mean, None, 1)
    if min(values) == max(values):  # exactly 0, not the rounding noise of a mean of equal floats
        return Interval(values[0], 0.0, n)
    s = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    return Interval(mean, t_quantile(1 - (1 - level) / 2, n - 1) * s / math.sqrt(n), n)


def paired_diff(a_by_seed: dict, b_by_seed: dict, level: float = 0.95) -> Interval | None:
    """Mean and t-interval of a - b over the seeds both hold (None when they share none): each seed's data
    order, initialisation and sampling are common to both, so pairing removes their share of the spread."""
    seeds = [seed for seed in a_by_seed if seed in b_by_seed]
    if not seeds:
        return None
    return mean_ci([a_by_seed[seed] - b_by_seed[seed] for seed in seeds], level)


def verdict(diff: Interval | None, margin: float = 0.0, names: tuple[str, str] = ("A better", "B better")) -> str:
    """For a paired difference A - B of a metric where higher is better: "A better" if the 95% paired interval
    lies entirely above +margin, "B better" if entirely below -margin, "inconclusive" otherwise (and always with
    fewer than two seeds). With margin 0: better if the interval excludes 0. ``names`` relabels the two outcomes
    (e.g. "higher"/"lower" for a metric without a better direction)."""
    if diff is None or diff.half is None:
        return "inconclusive"
    if diff.low > margin:
        return names[0]
    if diff.high < -margin:
        return names[1]
    return "inconclusive"


def seeds_for(sd: float, half_width: float, level: float = 0.95, most: int = 1000) -> int:
    """The fewest seeds (at least 2) whose paired interval, at a seed-to-seed standard deviation ``sd`` of the
    paired difference, has a half-width t(1-(1-level)/2, n-1) * sd / sqrt(n) of at most ``half_width``.
    ValueError when even ``most`` seeds are not enough."""
    if sd <= 0:
        return 2
    for n in range(2, most + 1):
        if t_quantile(1 - (1 - level) / 2, n - 1) * sd / math.sqrt(n) <= half_width:
            return n
    raise ValueError(f"seeds_for: more than {most} seeds for a half-width of {half_width} at sd {sd}")


def minimum_detectable_effect(sd: float, n: int, level: float = 0.95, power: float = 0.8) -> float:
    """The smallest true paired difference that a two-sided paired t-test over ``n`` seeds finds (its interval
    excludes 0) with probability ``power``: (t(1-(1-level)/2, n-1) + t(power, n-1)) * sd / sqrt(n)."""
    if n < 2:
        raise ValueError("minimum_detectable_effect: a paired interval needs 2 seeds")
    dof = n - 1
    return (t_quantile(1 - (1 - level) / 2, dof) + t_quantile(power, dof)) * sd / math.sqrt(n)
