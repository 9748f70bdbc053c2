"""Exact OMD with full information: the reference dynamics every OMD-style method estimates."""

from __future__ import annotations

import numpy as np

from nlhf.lab.algorithms.base import TabularAlgorithm, omd_prior, stack_games


def omd_step(logp: np.ndarray, log_ref: np.ndarray, P: np.ndarray, tau, eta):
    """log pi_{t+1} ∝ (1 − tau/eta)·log pi_t + (tau/eta)·log pi_ref + P(· ≻ pi_t)/eta.

    ``tau`` and ``eta`` are scalars or per-row arrays (B,) for tables (B, C, K).
    """
    wins = np.einsum("...ij,...j->...i", P, np.exp(logp))
    return omd_prior(logp, log_ref, tau, eta, gain=wins)


class OMD(TabularAlgorithm):
    """Reads P directly: a yardstick, not a bandit algorithm."""

    name = "omd"
    uses_full_information = True

    def step(self) -> None:
        P = self.rows([g.P for g in stack_games(self.game)])
        self.logp = omd_step(self.logp, self.log_ref, P, self.tau, self.eta)
