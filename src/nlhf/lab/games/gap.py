"""Closed-form duality gap of a policy (SPEC §1) and regret accounting."""

from __future__ import annotations

import numpy as np
from scipy.special import xlogy

from nlhf.lab.games.game import Game
from nlhf.lab.numerics import logsumexp


def gap_per_context(P, ref, tau, pi) -> np.ndarray:
    """Gap(pi) = 1/2 − min_{pi'} J(pi, pi'), per context (batched over leading axes).

    min_{pi'} J(pi, pi') = −tau·KL(pi||ref) − tau·log Σ_{y'} ref(y')·exp(−P(pi ≻ y')/tau).
    """
    P, ref, pi = (np.asarray(a, dtype=np.float64) for a in (P, ref, pi))
    tau = np.asarray(tau, dtype=np.float64)
    kl = (xlogy(pi, pi) - pi * np.log(ref)).sum(axis=-1)
    beats = np.einsum("...i,...ij->...j", pi, P)  # P(pi ≻ y')
    lse = logsumexp(np.log(ref) - beats / tau[..., None], axis=-1)
    return 0.5 + tau * kl + tau * lse


def gap(game: Game, pi: np.ndarray) -> float:
    """Gap of a policy table (C×K), averaged over the context distribution d0."""
    return float(np.dot(game.d0, gap_per_context(game.P, game.ref, game.tau, pi)))


def regret_curve(gaps: np.ndarray) -> np.ndarray:
    """Reg(t) = Σ_{s ≤ t} Gap(pi_s) along the last axis."""
    return np.cumsum(np.asarray(gaps, dtype=np.float64), axis=-1)
