"""benchmarks/stats.py against closed forms: the bootstrap interval of a large sample approaches the normal
one, a constant difference gives a zero-width interval, subjects (not pairs) are resampled."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import stats  # noqa: E402


def test_large_sample_interval_approaches_the_normal_interval():
    x = np.random.default_rng(1).normal(0.3, 1.0, 4000)
    lo, hi = stats.bootstrap_ci(x, n_boot=4000, seed=0)
    half = 1.959964 * x.std() / math.sqrt(x.size)
    assert lo == pytest.approx(x.mean() - half, abs=0.15 * half)
    assert hi == pytest.approx(x.mean() + half, abs=0.15 * half)


def test_constant_difference_has_zero_width_and_is_resolved():
    a = {(f"s{i}", k): 20.0 + i + 0.1 * k for i in range(6) for k in range(3)}
    b = {key: v - 0.5 for key, v in a.items()}
    c = stats.compare(a, b, target=0.3)
    assert c["mean"] == pytest.approx(0.5) and c["ci"] == pytest.approx([0.5, 0.5])
    assert c["verdict"] == "resolved" and c["target_met"] and c["n_pairs"] == 18 and c["n_subjects"] == 6
    assert not stats.compare(a, b, target=0.6)["target_met"]  # the interval must clear the target


def test_interval_holding_zero_is_not_resolved_and_misses_a_target_its_mean_meets():
    spread = [-2.0, 2.0, -1.5, 1.5, -1.0, 1.0, -0.5, 0.5]  # mean 0.35 meets 0.3, its interval does not
    a = {(f"s{i}", 0): 20.0 + 0.35 + d for i, d in enumerate(spread)}
    b = {(f"s{i}", 0): 20.0 for i in range(8)}
    c = stats.compare(a, b, target=0.3)
    assert c["mean"] == pytest.approx(0.35)
    assert c["ci"][0] < 0 < c["ci"][1] and c["verdict"] == "not resolved" and not c["target_met"]


def test_subjects_are_resampled_not_pairs():
    # two subjects, many seeds each: per-pair resampling would give a narrow interval, subject resampling
    # can only land on the two subjects' means (or their mix)
    values = [1.0] * 50 + [3.0] * 50
    groups = ["a"] * 50 + ["b"] * 50
    lo, hi = stats.bootstrap_ci(values, groups, seed=0)
    assert lo == pytest.approx(1.0) and hi == pytest.approx(3.0)
    lo_pairs, hi_pairs = stats.bootstrap_ci(values, seed=0)
    assert 1.7 < lo_pairs < hi_pairs < 2.3


def test_seeded_and_single_group():
    x = np.arange(10.0)
    assert stats.bootstrap_ci(x, seed=3) == stats.bootstrap_ci(x, seed=3)
    assert stats.bootstrap_ci([2.0, 4.0], ["a", "a"]) == (-math.inf, math.inf)
    assert stats.bootstrap_ci([2.0, 2.0], ["a", "a"]) == (-math.inf, math.inf)  # one subject: nothing to tell
    one = stats.compare({("s0", 0): 3.0}, {("s0", 0): 1.0})
    assert one["verdict"] == "not resolved" and one["mean"] == 2.0


def test_non_finite_pairs_are_dropped_and_counted():
    a = {("s0", 0): math.inf, ("s1", 0): 2.0, ("s2", 0): 3.0}
    b = {("s0", 0): 1.0, ("s1", 0): 1.0, ("s2", 0): 1.0}
    c = stats.compare(a, b)
    assert c["n_pairs"] == 2 and c["n_dropped"] == 1 and c["mean"] == pytest.approx(1.5)
    assert stats.describe(c).startswith("+1.50 dB [")


@pytest.mark.parametrize("case", ["keys", "empty", "nan", "level", "groups"])
def test_errors(case):
    with pytest.raises(ValueError):
        if case == "keys":
            stats.paired_differences({("a", 0): 1.0}, {("b", 0): 1.0})
        elif case == "empty":
            stats.paired_differences({}, {})
        elif case == "nan":
            stats.bootstrap_ci([1.0, math.nan])
        elif case == "level":
            stats.bootstrap_ci([1.0, 2.0], level=1.5)
        else:
            stats.bootstrap_ci([1.0, 2.0], ["a"])
