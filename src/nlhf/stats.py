"""Confidence intervals for evaluation: a mean's t-interval, its percentile bootstrap, Wilson.

Why these three: per-prompt win probabilities are bounded means over few prompts (t or
bootstrap), and hard win counts are binomial, where Wilson stays inside [0, 1] and behaves
at 0 or n successes where the normal ("Wald") interval collapses.

The t-interval and the bootstrap are scipy.stats' (``t.interval``, ``bootstrap``). Wilson
stays a closed form here: ``scipy.stats.binomtest(k, n).proportion_ci(method="wilson")``
gives the same numbers but takes whole successes only, and evaluation counts a tie as half
a win (tests check the two agree on whole counts).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats as _sp


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"confidence level must be in (0, 1), got {level}")


def _values(values: Sequence[float] | np.ndarray) -> np.ndarray:
    x = np.asarray(values, dtype=float).ravel()
    if x.size == 0:
        raise ValueError("need at least one value for a confidence interval")
    if not np.all(np.isfinite(x)):
        raise ValueError("values must be finite")
    return x


def _no_spread(x: np.ndarray) -> bool:
    """One value, or all equal: the interval is the point (scipy would give nan or warn)."""
    return x.size < 2 or bool(np.all(x == x[0]))


def t_interval(values: Sequence[float] | np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Student-t interval for the mean (scipy.stats.t.interval); no spread gives (mean, mean)."""
    _check_level(level)
    x = _values(values)
    mean = float(x.mean())
    if _no_spread(x):
        return mean, mean
    lo, hi = _sp.t.interval(level, df=x.size - 1, loc=mean, scale=_sp.sem(x))
    return float(lo), float(hi)


def bootstrap_interval(
    values: Sequence[float] | np.ndarray,
    level: float = 0.95,
    n_boot: int = 10_000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval for the mean (scipy.stats.bootstrap), seeded by `seed`.

    Not bit-identical to the hand-written version it replaced (scipy draws its resamples
    in another order and takes percentiles its own way); same method, same limit.
    """
    _check_level(level)
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    x = _values(values)
    if _no_spread(x):
        mean = float(x.mean())
        return mean, mean
    res = _sp.bootstrap(
        (x,), np.mean, confidence_level=level, n_resamples=n_boot, method="percentile",
        rng=np.random.default_rng(seed), vectorized=True,
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def wilson_interval(successes: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; n = 0 carries no information: (0, 1).

    `successes` may be fractional (a tie counts one half), which scipy's binomtest refuses.
    """
    _check_level(level)
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return 0.0, 1.0
    z = float(_sp.norm.ppf(0.5 + level / 2))
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # At 0 or n successes the bound is exactly 0 or 1; do not let rounding move it.
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return lo, hi


def mean_interval(
    values: Sequence[float] | np.ndarray,
    level: float = 0.95,
    method: str = "t",
    *,
    bounds: tuple[float, float] | None = None,
    seed: int = 0,
) -> tuple[float, float]:
    """A mean's interval by `method` ("t" or "bootstrap"), optionally clipped to `bounds`
    (a win-rate cannot leave [0, 1] even when a t-interval would)."""
    if method == "t":
        lo, hi = t_interval(values, level)
    elif method == "bootstrap":
        lo, hi = bootstrap_interval(values, level, seed=seed)
    else:
        raise ValueError(f"unknown interval method {method!r}; use 't' or 'bootstrap'")
    if bounds is not None:
        lo, hi = max(bounds[0], lo), min(bounds[1], hi)
    return lo, hi
