"""DENPO-explore on an exact game: DENPO with an adversary that leaves pi_t's support.

Why DENPO's simplified adversary does not explore: its Step B fits
pihat ∝ pi_t·(pi_{t+1}/pi_t)^{s/beta} on candidates u, u' ~ pi_t. A response pi_t barely
samples (the needle) never enters a Step B pair, and pi_{t+1}/pi_t is ≈ 1 on it anyway (Step A
had no data on it either), so pihat ≈ pi_t there: the adversary samples what pi_t samples and
the pairs (y, y') teach nothing INPO's self-play would not. The tilt only re-weights inside
pi_t's effective support, whatever s, beta or the number of candidates.

The practical fix keeps DENPO's SFT-style, oracle-free Step B and changes two things:
the candidates u, u' are drawn from pi_t at an exploration temperature T_e > 1 (so rare
responses are proposed), and the anchor is pi_t^{1/T_e} instead of pi_t (the loss
:func:`nlhf.losses.denpo_explore_step_b_loss`, κ = β·(1 − 1/T_e)), so the fitted adversary is
pihat ∝ pi_t^{1/T_e}·(pi_{t+1}/pi_t)^{s/beta}: flattened where pi_t is confident, tilted
toward what Step A just raised. Pairs are (y'_j, u_j) and (u_j, u'_j), with y' the adversary's
own samples of this round, so the chain links the old adversary's responses to fresh ones.
"""

from __future__ import annotations

import numpy as np
import torch

from nlhf.lab.algorithms.base import newton_minimise, ridge, sample_from, take
from nlhf.lab.algorithms.enpo import DENPO
from nlhf.lab.numerics import log_softmax
from nlhf.losses import Pairs, denpo_explore_step_b_loss, step_b_soft_label


class DENPOExplore(DENPO):
    """DENPO whose Step B proposes from pi_t^{1/T_e} and anchors on it (no oracle calls)."""

    name = "denpo-explore"
    exploration = "denpo-explore"
    temperature = 4.0  # T_e (docs/lab.md: 2 does not reach the needle, 4 and 8 do)

    def step(self) -> None:
        """One round on this round's pairs only, as the LLM trainer does (no buffer draw):
        a needle the adversary just proposed reaches Step A at once, so Step B's tilt sees it.
        """
        st = self.settings
        self.policy_sum += self.policy
        ctx = self.contexts(st.pairs)
        y, y2 = self.collect(ctx)
        score_a, z_a = self.win_rate(ctx, y)
        score_b, z_b = self.win_rate(ctx, y2)
        fresh = np.concatenate([z_a, z_b], axis=-1).reshape(self.B, -1)
        fresh_ctx = np.repeat(ctx[..., None], 2 * st.comparators, axis=-1).reshape(self.B, -1)
        new_logp = self.step_a(ctx, y, y2, score_a, score_b, fresh_ctx, fresh)
        self._adv_ctx, self._adv_y = ctx, y2
        self.step_b(new_logp)
        self.logp = new_logp

    def step_b(self, new_logp: np.ndarray) -> None:
        st, T_e = self.settings, self.temperature
        ctx, y2 = self._adv_ctx, self._adv_y
        hot = log_softmax(self.logp / T_e, axis=-1)
        u1, u2 = sample_from(self.rng, hot, ctx), sample_from(self.rng, hot, ctx)
        a = np.concatenate([y2, u1], axis=1)
        b = np.concatenate([u1, u2], axis=1)
        cc = np.concatenate([ctx, ctx], axis=1)
        gain = new_logp - self.logp  # log(pi_{t+1}/pi_t)
        seeds = np.arange(self.B)[:, None]
        label = step_b_soft_label(
            torch.as_tensor(gain[seeds, cc, a]), torch.as_tensor(gain[seeds, cc, b]), s=st.s
        )
        def objective(theta, ctx, a, b, label, old_a, old_b, prior):
            lp = torch.log_softmax(theta, -1)
            pairs = Pairs(take(lp, ctx, a), take(lp, ctx, b), old_a=old_a, old_b=old_b)
            value = denpo_explore_step_b_loss(pairs, beta=st.beta, temperature=T_e, label=label)
            # The DPO loss's curvature in the logits is ∝ beta²; an unscaled ridge (DENPO's)
            # outweighs it at beta = 0.05 and pins the adversary to its prior.
            return value + ridge(theta, prior, st.ridge * st.beta**2)

        # prior: responses no pair reaches keep the tempered pi_t
        fixed = [take(self.logp, cc, y) for y in (a, b)]
        data = (*self.tensors(cc, a, b), label, *self.tensors(*fixed, hot))
        self.adv_logp = newton_minimise(objective, hot, data)
