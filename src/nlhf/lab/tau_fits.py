"""How final regret grows as tau shrinks: power-law and exponential fits with bootstrap CIs.

Why two fits: the theory separates methods by the *form* of the growth in 1/tau. Standard
self-play (INPO) pays a factor exp(c/tau) (the needle's reference mass), so log-regret is
linear in 1/tau; ENPO and the minimax oracle should grow at most polynomially, so log-regret
is linear in log(1/tau). Each fit is a least-squares line; its R² says which form fits, and
the percentile bootstrap over seeds gives the slope's uncertainty.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nlhf.errors import NLHFInputError


@dataclass(frozen=True)
class Fit:
    slope: float  # d log R / d log(1/tau) (power) or d log R / d(1/tau) (exponential)
    intercept: float
    r2: float
    ci: tuple[float, float]  # bootstrap interval of the slope


def _line(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares slope, intercept and R² of y against x along the last axis (batched)."""
    xm = x - x.mean()
    ym = y - y.mean(axis=-1, keepdims=True)
    slope = (ym * xm).sum(axis=-1) / (xm**2).sum()
    intercept = y.mean(axis=-1) - slope * x.mean()
    ss_res = ((ym - slope[..., None] * xm) ** 2).sum(axis=-1)
    ss_tot = (ym**2).sum(axis=-1)
    r2 = np.where(ss_tot > 0, 1.0 - ss_res / np.where(ss_tot > 0, ss_tot, 1.0), 1.0)
    return slope, intercept, r2


def _check(taus, regret) -> tuple[np.ndarray, np.ndarray]:
    taus = np.asarray(taus, dtype=np.float64)
    regret = np.asarray(regret, dtype=np.float64)
    if regret.ndim == 1:
        regret = regret[:, None]
    if taus.ndim != 1 or len(np.unique(taus)) < 2 or regret.shape[0] != len(taus):
        raise NLHFInputError("tau fit: need ≥ 2 distinct tau and one regret row per tau")
    if np.any(taus <= 0) or np.any(~np.isfinite(regret)) or np.any(regret <= 0):
        raise NLHFInputError("tau fit: tau and regret must be positive and finite")
    return taus, regret


def fit_growth(
    taus, regret, kind: str = "power", level: float = 0.95, n_boot: int = 2000, seed: int = 0
) -> Fit:
    """Fit log(mean regret) against log(1/tau) (``power``) or 1/tau (``exponential``).

    ``regret`` is (n_tau,) or (n_tau, n_seeds). The CI resamples seeds with replacement
    independently at each tau (the runs at different tau are independent) and refits.
    """
    taus, regret = _check(taus, regret)
    if kind == "power":
        x = np.log(1.0 / taus)
    elif kind == "exponential":
        x = 1.0 / taus
    else:
        raise NLHFInputError(f"tau fit: kind must be 'power' or 'exponential', got {kind!r}")
    slope, intercept, r2 = _line(x, np.log(regret.mean(axis=1)))
    n_seeds = regret.shape[1]
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, n_seeds, size=(n_boot, len(taus), n_seeds))
    resampled = np.take_along_axis(regret[None], pick, axis=2).mean(axis=2)
    boot = _line(x, np.log(resampled))[0]
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(boot, [tail, 1.0 - tail])
    return Fit(float(slope), float(intercept), float(r2), (float(lo), float(hi)))


def local_slopes(taus, regret) -> np.ndarray:
    """d log R / d log(1/tau) between neighbouring tau (sorted by 1/tau): rising for exp."""
    taus, regret = _check(taus, regret)
    order = np.argsort(1.0 / taus)
    x = np.log(1.0 / taus[order])
    y = np.log(regret.mean(axis=1)[order])
    return np.diff(y) / np.diff(x)


def fit_log_t(curve) -> tuple[float, float]:
    """Fit Reg(t) = a + b·log t over the second half of a regret curve; returns (b, R²).

    O(log T) regret is linear in log t; a √T curve bends upward in these coordinates.
    """
    curve = np.asarray(curve, dtype=np.float64)
    if curve.ndim != 1 or len(curve) < 4:
        raise NLHFInputError("log-T fit: need a regret curve of ≥ 4 rounds")
    t = np.arange(len(curve) // 2, len(curve)) + 1.0
    slope, _, r2 = _line(np.log(t), curve[len(curve) // 2:][None])
    return float(slope[0]), float(r2[0])
