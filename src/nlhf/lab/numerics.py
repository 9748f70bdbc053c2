"""log-softmax and logsumexp in plain numpy, for the lab's per-round inner loops.

scipy.special's versions give the same values but pass every call through its array-API
dispatch (~20 µs each); the lab calls them ~50 times a round on (B, C, K) tables of a few
dozen entries, where that dispatch was half the cost of a run (docs/claims.md, "Lab speed").
"""

from __future__ import annotations

import numpy as np


def _logsumexp_kept(x: np.ndarray, axis: int) -> np.ndarray:
    top = x.max(axis=axis, keepdims=True)
    if not np.isfinite(top).all():  # a row of −inf: no shift there
        top = np.where(np.isfinite(top), top, 0.0)
    return np.log(np.exp(x - top).sum(axis=axis, keepdims=True)) + top


def logsumexp(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """log Σ exp(x) along ``axis`` (dropped), shifted by the max for stability."""
    x = np.asarray(x, dtype=np.float64)
    return _logsumexp_kept(x, axis).squeeze(axis)


def log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """x − logsumexp(x) along ``axis``: log-probabilities from logits."""
    x = np.asarray(x, dtype=np.float64)
    return x - _logsumexp_kept(x, axis)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.exp(log_softmax(x, axis=axis))
