"""The study's pure parts: intervals over seeds and paired differences against hand-computed values, verdicts, and
the setting / W&B group names the sweep runner gives trials that differ only in their seed."""

import math

import pytest

from svg.report.stats import Interval, mean_ci, paired_diff, t_quantile, verdict
from svg.sweeps.groups import GROUP_LIMIT, fit, group_name, job_type, label, searched, setting_of


@pytest.mark.parametrize(("dof", "expected"), [(1, 12.7062), (2, 4.3027), (4, 2.7764), (30, 2.0423), (10**6, 1.9600)])
def test_t_quantiles_match_the_table(dof, expected):
    assert t_quantile(0.975, dof) == pytest.approx(expected, abs=1e-4)


def test_mean_ci_by_hand():
    ci = mean_ci([1.0, 2.0, 3.0])  # s = 1, t(0.975, 2) = 4.303: 4.303 / sqrt(3)
    assert (ci.mean, ci.n) == (2.0, 3) and ci.half == pytest.approx(2.48414, abs=1e-5)
    assert (ci.low, ci.high) == pytest.approx((2 - 2.48414, 2 + 2.48414), abs=1e-5)
    two = mean_ci([2.0, 4.0])  # s = sqrt(2): t(0.975, 1) * sqrt(2) / sqrt(2)
    assert two.mean == 3.0 and two.half == pytest.approx(12.7062, abs=1e-4)
    assert mean_ci([5.0, 5.0, 5.0]) == Interval(5.0, 0.0, 3)
    assert mean_ci([0.81, 0.81, 0.81]) == Interval(0.81, 0.0, 3)  # equal values: exactly no spread


def test_one_value_has_no_interval_and_none_is_an_error():
    one = mean_ci([26.5])
    assert one == Interval(26.5, None, 1) and one.low is None and one.high is None
    with pytest.raises(ValueError, match="no values"):
        mean_ci([])


def test_paired_diff_uses_only_the_shared_seeds():
    a = {1: 10.0, 2: 12.0, 3: 11.0, 4: 99.0}  # seed 4 has no partner in b
    b = {1: 9.0, 2: 10.0, 3: 10.0, 5: 0.0}
    diff = paired_diff(a, b)  # differences 1, 2, 1: mean 4/3, s = sqrt(1/3), half = 4.303 * s / sqrt(3) = 4.303 / 3
    assert diff.n == 3 and diff.mean == pytest.approx(4 / 3) and diff.half == pytest.approx(4.302653 / 3, abs=1e-6)
    assert paired_diff(a, {7: 1.0}) is None
    assert paired_diff({1: 2.0}, {1: 0.5}) == Interval(1.5, None, 1)


def test_pairing_removes_the_seed_to_seed_spread():
    """Both settings move with the seed; A is always 0.5 dB above B: unpaired intervals overlap, the paired one
    excludes 0."""
    b = {seed: 20.0 + 2 * math.sin(seed) for seed in range(1, 6)}
    a = {seed: value + 0.5 + 0.01 * seed for seed, value in b.items()}
    ia, ib = mean_ci(list(a.values())), mean_ci(list(b.values()))
    assert ia.low < ib.high  # overlapping
    diff = paired_diff(a, b)
    assert diff.low > 0 and verdict(diff) == "A better"


def test_verdict_rule():
    assert verdict(Interval(1.0, 0.5, 3)) == "A better"
    assert verdict(Interval(-1.0, 0.5, 3)) == "B better"
    assert verdict(Interval(0.2, 0.5, 3)) == "inconclusive"  # the interval holds 0
    assert verdict(Interval(1.0, 0.5, 3), margin=0.6) == "inconclusive"  # above 0 but not beyond the margin
    assert verdict(Interval(-1.0, 0.2, 3), margin=0.6) == "B better"
    assert verdict(Interval(3.0, None, 1)) == "inconclusive"  # one seed: no interval, no verdict
    assert verdict(None) == "inconclusive"
    assert verdict(Interval(-1.0, 0.5, 3), names=("higher", "lower")) == "lower"


# -- settings and W&B names ----------------------------------------------------------------------

CONFIG = {
    "name": "kl-annealing",
    "method": "grid",
    "parameters": {
        "config": {"value": "cpu"},
        "kl.mode": {"values": ["monotonic", "cyclical"]},
        "kl.cycles": {"values": [3]},
        "train.seed": {"values": [1, 2, 3]},
        "kl.beta_max": {"values": [1e-05, 0.0001]},
        "optim.lr": {"distribution": "log_uniform_values", "min": 0.0001, "max": 0.003},
    },
}


def test_settings_are_the_varied_parameters_but_the_seed():
    names = searched(CONFIG)
    assert names == ["kl.mode", "train.seed", "kl.beta_max", "optim.lr"]  # one-value parameters never vary
    params = {"config": "cpu", "kl.mode": "cyclical", "kl.cycles": 3, "train.seed": 2, "kl.beta_max": 1e-05}
    setting = setting_of(params, names[:3])
    assert setting == {"kl.mode": "cyclical", "kl.beta_max": 1e-05}
    assert label(setting) == "kl.mode=cyclical,kl.beta_max=1e-05"  # str() spellings, as on the command line
    assert label({}) == "all"
    assert group_name("ent/proj/ab12cd34", setting) == "ab12cd34:kl.mode=cyclical,kl.beta_max=1e-05"
    other_seed = setting_of({**params, "train.seed": 3}, names[:3])
    assert group_name("ab12cd34", other_seed) == group_name("ab12cd34", setting)
    assert job_type(CONFIG) == "kl-annealing" and job_type({"method": "grid"}) == "sweep"


def test_long_names_fit_wandb_limits_and_stay_distinct():
    long = {f"section.field_{i}": "x" * 10 for i in range(12)}
    name = group_name("ab12cd34", long)
    assert len(name) == GROUP_LIMIT and name.startswith("ab12cd34:section.field_0=xxxxxxxxxx")
    assert name == group_name("ab12cd34", dict(long))  # deterministic
    assert group_name("ab12cd34", {**long, "section.field_11": "y" * 10}) != name
    assert fit("short", 10) == "short" and len(fit("n" * 100, 64)) == 64


def test_seeds_for_a_half_width_and_the_effect_they_detect():
    from svg.report.stats import minimum_detectable_effect, seeds_for

    # by hand: t(0.975, 4) = 2.776, 2.776 * 0.3 / sqrt(5) = 0.372 > 0.3; t(0.975, 6) = 2.447, 2.447 * 0.3 / sqrt(7)
    # = 0.277 <= 0.3, and t(0.975, 5) * 0.3 / sqrt(6) = 2.571 * 0.1225 = 0.315 > 0.3
    assert seeds_for(0.3, 0.3) == 7
    assert seeds_for(0.0, 0.3) == 2 and seeds_for(0.1, 0.3) == 3  # 4.303 * 0.1 / sqrt(3) = 0.248
    with pytest.raises(ValueError, match="seeds"):
        seeds_for(100.0, 0.3, most=50)
    # (t(0.975, 4) + t(0.8, 4)) * 0.3 / sqrt(5) = (2.776 + 0.941) * 0.1342 = 0.499
    assert minimum_detectable_effect(0.3, 5) == pytest.approx(0.4987, abs=1e-3)
    assert minimum_detectable_effect(0.3, 10) < minimum_detectable_effect(0.3, 5)
