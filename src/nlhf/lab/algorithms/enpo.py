"""ENPO on an exact game: a trained policy pi_t and an exploratory adversary pihat_t.

Each round (SPEC §2): collect pairs y ~ pi_t, y' ~ pihat_t into a buffer of all rounds; draw
m pairs from it; label each response by its mean win-rate against fresh comparators z ~ pi_t;
Step A fits pi_{t+1} with ENPO's regression; Step B picks the next adversary, either with the
elliptical oracle (``enpo``) or DENPO's tilted policy pi_t·(pi_{t+1}/pi_t)^{s/beta} fitted by
Step B's DPO loss on synthetic pairs (``denpo``). Returns last and average iterates.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from nlhf.lab.algorithms.base import (
    LabSettings,
    TabularAlgorithm,
    as_rows,
    memory_prior,
    newton_minimise,
    omd_prior,
    ridge,
    sample_from,
    take,
)
from nlhf.lab.algorithms.buffer import PairBuffer
from nlhf.lab.algorithms.exploration import EllipticalOracle
from nlhf.lab.games.game import Game
from nlhf.losses import Pairs, Samples, denpo_step_b_loss, enpo_step_a_loss, step_b_soft_label


class ENPO(TabularAlgorithm):
    name = "enpo"
    exploration = "elliptical"

    def __init__(
        self, game: Game | Sequence[Game], settings: LabSettings, n_seeds: int, seed: int = 0
    ) -> None:
        super().__init__(game, settings, n_seeds, seed)
        self.buffer = PairBuffer(self.B)
        self.oracle_explore = EllipticalOracle(self.B, *self.log_ref.shape[1:], settings.lam)
        self.adv_logp = self.logp.copy()
        self.policy_sum = np.zeros_like(self.logp)
        self.labels = np.full_like(self.logp, np.nan)  # last I(y) per response (memory prior)

    @property
    def average_policy(self) -> np.ndarray:
        """The average iterate (1/t)·Σ pi_s: a mixture, which for tables is the mean."""
        return self.policy_sum / max(self.t, 1)

    def collect(self, ctx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """y' for each pair: the elliptical oracle's choice, updated pair by pair."""
        y = sample_from(self.rng, self.logp, ctx)
        probs = self.policy
        y2 = np.empty_like(y)
        for j in range(ctx.shape[1]):
            y2[:, j] = self.oracle_explore.choose(probs, ctx[:, j])
            self.oracle_explore.update(ctx[:, j], y[:, j], y2[:, j])
        return y, y2

    def win_rate(self, ctx: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """I(y) = mean_z outcome(y ≻ z), z ~ pi_t; also returns the comparators."""
        nz = self.settings.comparators
        ctx_z = np.repeat(ctx[..., None], nz, axis=-1).reshape(self.B, -1)
        z = sample_from(self.rng, self.logp, ctx_z)
        wins = self.oracle.duel(ctx_z, np.repeat(y[..., None], nz, axis=-1).reshape(self.B, -1), z)
        return wins.reshape(*y.shape, nz).mean(axis=-1), z.reshape(*y.shape, nz)

    def step_a(self, ctx, a, b, score_a, score_b, fresh_ctx, fresh) -> np.ndarray:
        st = self.settings
        eta, tau = self.eta, self.tau
        self.remember(ctx, a, score_a)
        self.remember(ctx, b, score_b)
        if st.step_a_prior == "memory":
            # responses no pair pins move by their latest label (this round's included)
            prior = memory_prior(self.logp, self.log_ref, tau, eta, self.labels)
        else:
            prior = omd_prior(self.logp, self.log_ref, tau, eta)

        def objective(theta, ctx, a, b, gap, fctx, fresh, ref_a, ref_b, old_a, old_b, prior,
                      eta, tau):
            lp = torch.log_softmax(theta, -1)
            pairs = Pairs(take(lp, ctx, a), take(lp, ctx, b), ref_a, ref_b, old_a, old_b)
            value = enpo_step_a_loss(pairs, gap, eta=eta, tau=tau, alpha=st.alpha,
                                     fresh=Samples(take(lp, fctx, fresh)))
            return value + ridge(theta, prior, st.ridge)

        fixed = [take(table, ctx, y) for table in (self.log_ref, self.logp) for y in (a, b)]
        data = self.tensors(ctx, a, b, score_a - score_b, fresh_ctx, fresh, *fixed, prior,
                            as_rows(eta, 2), as_rows(tau, 2))
        return newton_minimise(objective, prior, data, quadratic=st.alpha == 0)

    def remember(self, ctx: np.ndarray, y: np.ndarray, score: np.ndarray) -> None:
        """Keep each response's latest label (the last pair of a round wins a tie)."""
        self.labels[np.arange(self.B)[:, None], ctx, y] = score

    def step_b(self, new_logp: np.ndarray) -> None:
        """Elliptical ENPO keeps its oracle's state; pihat is chosen in ``collect``."""

    def step(self) -> None:
        st = self.settings
        self.policy_sum += self.policy
        ctx_new = self.contexts(st.pairs)
        y, y2 = self.collect(ctx_new)
        self.buffer.append(ctx_new, y, y2)
        ctx, a, b = self.buffer.draw(self.rng, st.pairs)
        score_a, z_a = self.win_rate(ctx, a)
        score_b, z_b = self.win_rate(ctx, b)
        fresh = np.concatenate([z_a, z_b], axis=-1).reshape(self.B, -1)
        fresh_ctx = np.repeat(ctx[..., None], 2 * st.comparators, axis=-1).reshape(self.B, -1)
        new_logp = self.step_a(ctx, a, b, score_a, score_b, fresh_ctx, fresh)
        self.step_b(new_logp)
        self.logp = new_logp


class DENPO(ENPO):
    """ENPO with DENPO's practical adversary: no oracle calls in Step B."""

    name = "denpo"
    exploration = "denpo"

    def collect(self, ctx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return sample_from(self.rng, self.logp, ctx), sample_from(self.rng, self.adv_logp, ctx)

    def step_b(self, new_logp: np.ndarray) -> None:
        st = self.settings
        ctx = self.contexts(st.pairs)
        u1, u2 = sample_from(self.rng, self.logp, ctx), sample_from(self.rng, self.logp, ctx)
        gain = new_logp - self.logp  # log(pi_{t+1}/pi_t)
        seeds = np.arange(self.B)[:, None]
        label = step_b_soft_label(
            torch.as_tensor(gain[seeds, ctx, u1]), torch.as_tensor(gain[seeds, ctx, u2]), s=st.s
        )

        def objective(theta, ctx, u1, u2, label, old_1, old_2, old):
            lp = torch.log_softmax(theta, -1)
            pairs = Pairs(take(lp, ctx, u1), take(lp, ctx, u2), old_a=old_1, old_b=old_2)
            value = denpo_step_b_loss(pairs, beta=st.beta, label=label)
            return value + ridge(theta, old, st.ridge)

        fixed = [take(self.logp, ctx, u) for u in (u1, u2)]
        data = (*self.tensors(ctx, u1, u2), label, *self.tensors(*fixed, self.logp))
        self.adv_logp = newton_minimise(objective, self.logp, data)
