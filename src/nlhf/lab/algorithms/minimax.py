"""The minimax-oracle variant: solve the estimated game exactly, explore optimistically.

Keeps win/duel counts per (context, i, j). Each round the learner plays the exact regularised
Nash equilibrium of the empirical game P̂ (with a 1/2 prior of weight one), and the adversary
plays its optimistic best response to it, pihat ∝ pi_ref·exp(P⁺(· ≻ pi_t)/tau), with
P⁺ = min(1, P̂ + c·sqrt(log(1 + t)/(1 + N))): a response that could still beat pi_t gets
tried, however little reference mass it has.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.special import log_softmax

from nlhf.lab.algorithms.base import LabSettings, TabularAlgorithm, as_rows, sample_from
from nlhf.lab.games.game import Game
from nlhf.lab.games.solver import solve_nash


class MinimaxOracle(TabularAlgorithm):
    name = "oracle"

    def __init__(
        self, game: Game | Sequence[Game], settings: LabSettings, n_seeds: int, seed: int = 0
    ) -> None:
        super().__init__(game, settings, n_seeds, seed)
        B, C, K = self.log_ref.shape
        shape = (B, C, K, K)
        self.wins = np.zeros(shape)
        self.duels = np.zeros(shape)
        self.ref_b = np.exp(self.log_ref)

    def estimate(self) -> np.ndarray:
        """P̂ = (wins + 1/2)/(duels + 1): skew-symmetric, 1/2 on the diagonal and where unseen."""
        return (self.wins + 0.5) / (self.duels + 1.0)

    def step(self) -> None:
        st = self.settings
        pi = self.policy
        bonus = st.optimism * np.sqrt(np.log(2.0 + self.t) / (1.0 + self.duels))
        optimistic = np.minimum(1.0, self.estimate() + bonus)
        beats = np.einsum("...ij,...j->...i", optimistic, pi)
        adv = log_softmax(self.log_ref + beats / as_rows(self.tau), axis=-1)
        ctx = self.contexts(st.pairs)
        y, y2 = sample_from(self.rng, self.logp, ctx), sample_from(self.rng, adv, ctx)
        won = self.oracle.duel(ctx, y, y2)
        seeds = np.repeat(np.arange(self.B)[:, None], st.pairs, axis=1)
        np.add.at(self.wins, (seeds, ctx, y, y2), won)
        np.add.at(self.wins, (seeds, ctx, y2, y), 1.0 - won)
        np.add.at(self.duels, (seeds, ctx, y, y2), 1.0)
        np.add.at(self.duels, (seeds, ctx, y2, y), 1.0)
        pi_next = solve_nash(self.estimate(), self.ref_b, self.tau[:, None], init=pi, tol=1e-10)
        self.logp = np.log(pi_next)
