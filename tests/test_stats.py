"""Interval helpers against closed forms: Student t, the binomial law of a bootstrap, Wilson."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from nlhf.stats import bootstrap_interval, mean_interval, t_interval, wilson_interval


def test_t_interval_closed_form() -> None:
    # mean 3, sd sqrt(2.5), t_{0.975, 4} = 2.776445: 3 ± 2.776445 * sqrt(2.5 / 5)
    lo, hi = t_interval([1, 2, 3, 4, 5])
    assert lo == pytest.approx(3 - 2.776445 * math.sqrt(0.5), abs=1e-5)
    assert hi == pytest.approx(3 + 2.776445 * math.sqrt(0.5), abs=1e-5)
    x = np.random.default_rng(0).uniform(size=17)
    half = stats.t.ppf(0.95, 16) * x.std(ddof=1) / math.sqrt(17)  # 90% level
    assert t_interval(x, 0.9) == pytest.approx((x.mean() - half, x.mean() + half), abs=1e-12)
    assert t_interval([0.7]) == (0.7, 0.7)
    assert t_interval([0.5, 0.5, 0.5]) == (0.5, 0.5)


def test_bootstrap_matches_the_binomial_law() -> None:
    """Resampling n Bernoulli values with k ones: the resampled mean is Binomial(n, k/n)/n,
    so the percentile interval is that law's quantiles (up to one step 1/n)."""
    n, k = 40, 14
    x = np.array([1.0] * k + [0.0] * (n - k))
    lo, hi = bootstrap_interval(x, n_boot=20_000, seed=3)
    law = stats.binom(n, k / n)
    assert lo == pytest.approx(law.ppf(0.025) / n, abs=1.01 / n)
    assert hi == pytest.approx(law.ppf(0.975) / n, abs=1.01 / n)


def test_bootstrap_reproducible_and_degenerate() -> None:
    x = np.random.default_rng(3).uniform(size=40)
    a = bootstrap_interval(x, seed=1)
    assert a == bootstrap_interval(x, seed=1)
    assert a != bootstrap_interval(x, seed=2)
    assert a[0] < x.mean() < a[1]
    assert bootstrap_interval([0.5] * 5) == (0.5, 0.5)
    assert bootstrap_interval([0.25]) == (0.25, 0.25)
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_interval(x, n_boot=0)


def test_wilson_closed_form_and_scipy() -> None:
    lo, hi = wilson_interval(8, 10)  # textbook value: (0.4902, 0.9433)
    assert (lo, hi) == pytest.approx((0.490162, 0.943318), abs=1e-5)
    for k, n in [(0, 7), (3, 7), (7, 7), (12, 50), (49, 50)]:
        ci = stats.binomtest(k, n).proportion_ci(0.95, method="wilson")
        assert wilson_interval(k, n) == pytest.approx((ci.low, ci.high), abs=1e-12)
    assert wilson_interval(0, 10)[0] == 0.0
    assert wilson_interval(10, 10)[1] == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(3.5, 7)  # a tie as half a win: symmetric about 1/2
    assert lo == pytest.approx(1 - hi, abs=1e-12) and lo < 0.5 < hi
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_mean_interval_methods_and_bounds() -> None:
    assert mean_interval([0.0, 1.0], bounds=(0.0, 1.0)) == (0.0, 1.0)  # t would leave [0, 1]
    x = [0.2, 0.4, 0.9, 0.6]
    assert mean_interval(x, method="bootstrap", seed=4) == bootstrap_interval(x, seed=4)
    with pytest.raises(ValueError, match="unknown interval"):
        mean_interval([0.1, 0.2], method="wald")
    with pytest.raises(ValueError, match="confidence level"):
        t_interval(x, level=1.0)
