"""XPO, online DPO / IPO and SPPO on exact games.

The DPO-family methods refit on every duel so far (iterative online DPO), aggregated as
counts per (context, winner, loser) and passed to the shared loss as weights, so a round
costs O(C·K²) whatever T is. SPPO regresses on the current round's samples.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from nlhf.lab.algorithms.base import (
    LabSettings,
    TabularAlgorithm,
    as_rows,
    newton_minimise,
    ridge,
    sample_from,
    take,
)
from nlhf.lab.games.game import Game
from nlhf.losses import Pairs, Samples, online_dpo_loss, online_ipo_loss, sppo_loss, xpo_loss


class _DuelCountsAlgorithm(TabularAlgorithm):
    """Pairs from ``opponent_logp`` vs pi_t; every duel so far enters the loss as a count."""

    def __init__(
        self, game: Game | Sequence[Game], settings: LabSettings, n_seeds: int, seed: int = 0
    ) -> None:
        super().__init__(game, settings, n_seeds, seed)
        if np.ptp(self.tau) > 0:
            raise ValueError(f"{self.name} runs one tau at a time (its beta is tau)")
        self.beta = float(self.tau[0])
        C, K = self.log_ref.shape[1:]
        self.counts = np.zeros((self.B, C, K, K))  # [b, c, winner, loser]
        self.opponent_counts = np.zeros((self.B, C, K))
        grid = np.indices((C, K, K)).reshape(3, -1)
        self._c, self._w, self._l = grid

    def opponent_logp(self) -> np.ndarray:
        return self.logp

    def pair_loss(self, pairs: Pairs, opponent: Samples) -> torch.Tensor:
        """The loss of every duel so far (``pairs``, weighted by count); ``opponent``: the
        opponent's samples, weighted by count (XPO's optimism term reads them)."""
        raise NotImplementedError

    def step(self) -> None:
        st = self.settings
        ctx = self.contexts(st.pairs)
        y = sample_from(self.rng, self.logp, ctx)
        y2 = sample_from(self.rng, self.opponent_logp(), ctx)
        first = self.oracle.duel(ctx, y, y2) > 0
        w, l = np.where(first, y, y2), np.where(first, y2, y)
        seeds = np.repeat(np.arange(self.B)[:, None], st.pairs, axis=1)
        np.add.at(self.counts, (seeds, ctx, w, l), 1.0)
        np.add.at(self.opponent_counts, (seeds, ctx, y2), 1.0)
        c, wi, li = (torch.as_tensor(a) for a in (self._c, self._w, self._l))
        weights = torch.as_tensor(self.counts.reshape(self.B, -1))
        opp_w = torch.as_tensor(self.opponent_counts.reshape(self.B, -1))
        pair_loss = self.pair_loss

        def objective(theta, ref, old, weight, opp_weight):
            lp = torch.log_softmax(theta, -1)
            # the opponent's view first: autograd then sums the gradients in the order it
            # always did, so XPO's trajectories stay bit-identical
            opponent = Samples(lp.flatten(-2), weight=opp_weight)
            pairs = Pairs(lp[..., c, wi], lp[..., c, li], ref[..., c, wi], ref[..., c, li],
                          weight=weight)
            value = pair_loss(pairs, opponent)
            return value + ridge(theta, old, st.ridge)

        data = (*self.tensors(self.log_ref, self.logp), weights, opp_w)
        self.logp = newton_minimise(objective, self.logp, data)


class OnlineDPO(_DuelCountsAlgorithm):
    name = "online-dpo"

    def pair_loss(self, pairs: Pairs, opponent: Samples) -> torch.Tensor:
        return online_dpo_loss(pairs, beta=self.beta)


class OnlineIPO(_DuelCountsAlgorithm):
    name = "online-ipo"

    def pair_loss(self, pairs: Pairs, opponent: Samples) -> torch.Tensor:
        return online_ipo_loss(pairs, beta=self.beta)


class XPO(_DuelCountsAlgorithm):
    """Xie et al. 2024: y ~ pi_t against ỹ ~ pi_ref, DPO plus the optimism term on ỹ."""

    name = "xpo"

    def opponent_logp(self) -> np.ndarray:
        return self.log_ref

    def pair_loss(self, pairs: Pairs, opponent: Samples) -> torch.Tensor:
        return xpo_loss(pairs, opponent, beta=self.beta, alpha=self.settings.xpo_alpha)


class SPPO(TabularAlgorithm):
    """Wu et al. 2024: regress log pi/pi_t (y) on (P̂(y ≻ pi_t) − 1/2)/eta, P̂ from comparators."""

    name = "sppo"

    def step(self) -> None:
        st = self.settings
        eta = self.eta
        ctx = self.contexts(st.pairs)
        y = sample_from(self.rng, self.logp, ctx)
        nz = st.comparators
        ctx_z = np.repeat(ctx[..., None], nz, axis=-1).reshape(self.B, -1)
        z = sample_from(self.rng, self.logp, ctx_z)
        wins = self.oracle.duel(ctx_z, np.repeat(y[..., None], nz, axis=-1).reshape(self.B, -1), z)
        win_rate = wins.reshape(self.B, -1, nz).mean(axis=-1)

        def objective(theta, ctx, y, win_rate, old, eta):
            lp = torch.log_softmax(theta, -1)
            return (
                sppo_loss(Samples(take(lp, ctx, y), take(old, ctx, y)), win_rate, eta=eta)
                + ridge(theta, old, st.ridge)
            )

        data = self.tensors(ctx, y, win_rate, self.logp, as_rows(eta, 2))
        self.logp = newton_minimise(objective, self.logp, data)
