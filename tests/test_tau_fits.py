"""The tau-growth estimators recover known slopes from synthetic regret curves."""

from __future__ import annotations

import numpy as np
import pytest

from nlhf.errors import NLHFInputError
from nlhf.lab.tau_fits import fit_growth, fit_log_t, local_slopes

TAUS = np.array([0.2, 0.1, 0.05, 0.035, 0.02, 0.01])


def test_power_law_recovers_its_exponent():
    regret = 3.0 * (1.0 / TAUS) ** 1.5
    power = fit_growth(TAUS, regret, "power")
    expo = fit_growth(TAUS, regret, "exponential")
    assert power.slope == pytest.approx(1.5, abs=1e-12)
    assert power.r2 == pytest.approx(1.0) and expo.r2 < 0.95
    assert np.allclose(local_slopes(TAUS, regret), 1.5)


def test_exponential_recovers_its_rate():
    regret = 0.1 * np.exp(0.05 / TAUS)
    expo = fit_growth(TAUS, regret, "exponential")
    power = fit_growth(TAUS, regret, "power")
    assert expo.slope == pytest.approx(0.05, abs=1e-12)
    assert expo.r2 == pytest.approx(1.0) and power.r2 < expo.r2
    assert np.all(np.diff(local_slopes(TAUS, regret)) > 0)  # the exponential signature


def test_bootstrap_ci_covers_the_true_slope_under_noise():
    rng = np.random.default_rng(1)
    regret = 2.0 * (1.0 / TAUS)[:, None] ** 0.7 * np.exp(rng.normal(0, 0.1, (len(TAUS), 5)))
    fit = fit_growth(TAUS, regret, "power", seed=3)
    assert fit.ci[0] < 0.7 < fit.ci[1]
    assert fit.ci[1] - fit.ci[0] < 0.3
    exact = fit_growth(TAUS, np.repeat(regret.mean(1, keepdims=True), 5, axis=1), "power")
    assert exact.ci[0] == pytest.approx(exact.slope) == pytest.approx(exact.ci[1])


def test_log_t_fit():
    t = np.arange(1, 2001)
    slope, r2 = fit_log_t(5.0 + 2.0 * np.log(t))
    assert slope == pytest.approx(2.0) and r2 == pytest.approx(1.0)
    _, r2_sqrt = fit_log_t(np.sqrt(t))
    assert r2_sqrt < 0.999


@pytest.mark.parametrize(
    ("taus", "regret"),
    [([0.1], [1.0]), ([0.1, 0.1], [1.0, 2.0]), ([0.1, 0.05], [1.0, 0.0]), ([0.1, 0.05], [1.0])],
)
def test_bad_input(taus, regret):
    with pytest.raises(NLHFInputError):
        fit_growth(taus, regret)
