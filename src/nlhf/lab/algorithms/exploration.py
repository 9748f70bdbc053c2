"""The elliptical exploration oracle of ENPO's Step B in its tabular form (SPEC §2.4, §3).

With Σ_B = λI + Σ_{(y,y')∈B} (e_y − e_y')(e_y − e_y')ᵀ per context, the adversary plays the
response a maximising (e_a − pi_t)ᵀ Σ_B⁻¹ (e_a − pi_t): the direction in which the data so far
leaves log(pi/pi_t) least pinned down. Σ_B⁻¹ is kept by Sherman–Morrison rank-one updates.
"""

from __future__ import annotations

import numpy as np


class EllipticalOracle:
    def __init__(self, n_seeds: int, n_contexts: int, K: int, lam: float) -> None:
        if lam <= 0:
            raise ValueError(f"lambda must be > 0, got {lam}")
        self.cov_inv = np.broadcast_to(np.eye(K) / lam, (n_seeds, n_contexts, K, K)).copy()
        self._seeds = np.arange(n_seeds)

    def choose(self, probs: np.ndarray, ctx: np.ndarray) -> np.ndarray:
        """argmax_a of the bonus under pi_t(·|ctx) for one context per seed; probs (B, C, K)."""
        A = self.cov_inv[self._seeds, ctx]  # (B, K, K)
        pi = probs[self._seeds, ctx]  # (B, K)
        Api = np.einsum("bij,bj->bi", A, pi)
        bonus = np.diagonal(A, axis1=1, axis2=2) - 2.0 * Api  # + πᵀAπ, constant in a
        return bonus.argmax(axis=-1)

    def update(self, ctx: np.ndarray, y: np.ndarray, y2: np.ndarray) -> None:
        """Σ⁻¹ ← Σ⁻¹ − Σ⁻¹v vᵀΣ⁻¹ / (1 + vᵀΣ⁻¹v) with v = e_y − e_y' (one pair per seed)."""
        A = self.cov_inv[self._seeds, ctx]
        Av = A[self._seeds, :, y] - A[self._seeds, :, y2]  # Σ⁻¹ v (A symmetric)
        vAv = Av[self._seeds, y] - Av[self._seeds, y2]
        A = A - np.einsum("bi,bj->bij", Av, Av) / (1.0 + vAv)[:, None, None]
        self.cov_inv[self._seeds, ctx] = A
