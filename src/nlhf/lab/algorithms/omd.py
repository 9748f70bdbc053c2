"""Exact OMD with full information: the reference dynamics every OMD-style method estimates."""

from __future__ import annotations

import numpy as np
from scipy.special import log_softmax

from nlhf.lab.algorithms.base import TabularAlgorithm


def omd_step(logp: np.ndarray, log_ref: np.ndarray, P: np.ndarray, tau: float, eta: float):
    """log pi_{t+1} ∝ (1 − tau/eta)·log pi_t + (tau/eta)·log pi_ref + P(· ≻ pi_t)/eta."""
    mix = tau / eta
    wins = np.einsum("...ij,...j->...i", P, np.exp(logp))
    return log_softmax((1.0 - mix) * logp + mix * log_ref + wins / eta, axis=-1)


class OMD(TabularAlgorithm):
    """Reads P directly: a yardstick, not a bandit algorithm."""

    name = "omd"
    uses_full_information = True

    def step(self) -> None:
        st = self.settings
        self.logp = omd_step(self.logp, self.log_ref, self.game.P, st.tau, self.eta)
