"""The minimax-oracle variant: solve the estimated game exactly, explore optimistically.

Keeps win/duel counts per (context, i, j) and the upper confidence bound
P⁺ = min(1, P̂ + c·sqrt(log(2 + t)/(1 + N))) of the empirical game P̂ (1/2 prior of weight one).
Each round (SPEC §2, minimax-oracle variant) the learner plays the max player's equilibrium
of the *optimistic* KL-regularised game max_pi min_pi' piᵀP⁺pi' − tau·KL(pi) + tau·KL(pi')
(solved exactly, :func:`solve_zero_sum`), and the adversary plays its own optimistic best
response, pihat ∝ pi_ref·exp(P⁺(· ≻ pi_t)/tau): a response that could still beat pi_t gets
tried, however little reference mass it has.

Until issue 10 the learner played the Nash equilibrium of the point estimate P̂: with no
optimism on its own side it kept the needle at its tiny reference mass until the adversary's
duels had pinned P̂ down, a cost that grows with exp(c/tau).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nlhf.lab.algorithms.base import LabSettings, TabularAlgorithm, as_rows, sample_from
from nlhf.lab.games.game import Game
from nlhf.lab.games.solver import solve_zero_sum
from nlhf.lab.numerics import log_softmax


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
        self.adv_eq = self.ref_b.copy()  # the optimistic game's min player, warm start

    def optimistic(self) -> np.ndarray:
        """P⁺: the confidence bound on P(y ≻ y') that optimism plays against."""
        bonus = self.settings.optimism * np.sqrt(np.log(2.0 + self.t) / (1.0 + self.duels))
        return np.minimum(1.0, self.estimate() + bonus)

    def estimate(self) -> np.ndarray:
        """P̂ = (wins + 1/2)/(duels + 1): skew-symmetric, 1/2 on the diagonal and where unseen."""
        return (self.wins + 0.5) / (self.duels + 1.0)

    def step(self) -> None:
        st = self.settings
        pi = self.policy
        beats = np.einsum("...ij,...j->...i", self.optimistic(), pi)
        adv = log_softmax(self.log_ref + beats / as_rows(self.tau), axis=-1)
        ctx = self.contexts(st.pairs)
        y, y2 = sample_from(self.rng, self.logp, ctx), sample_from(self.rng, adv, ctx)
        won = self.oracle.duel(ctx, y, y2)
        seeds = np.repeat(np.arange(self.B)[:, None], st.pairs, axis=1)
        np.add.at(self.wins, (seeds, ctx, y, y2), won)
        np.add.at(self.wins, (seeds, ctx, y2, y), 1.0 - won)
        np.add.at(self.duels, (seeds, ctx, y, y2), 1.0)
        np.add.at(self.duels, (seeds, ctx, y2, y), 1.0)
        pi_next, self.adv_eq = solve_zero_sum(
            self.optimistic(), self.ref_b, self.tau[:, None], init=(pi, self.adv_eq)
        )
        self.logp = np.log(pi_next)
