"""INPO on an exact game: self-play pairs from pi_t, one duel each, the INPO regression."""

from __future__ import annotations

import numpy as np
import torch

from nlhf.lab.algorithms.base import (
    TabularAlgorithm,
    as_rows,
    newton_minimise,
    omd_prior,
    ridge,
    sample_from,
    take,
)
from nlhf.losses import Pairs, inpo_loss


class INPO(TabularAlgorithm):
    """Exploration is implicit: only responses pi_t samples ever get data."""

    name = "inpo"
    loss = staticmethod(inpo_loss)

    def sampling_logp(self) -> np.ndarray:
        """Where the self-play pairs come from (pi_t; Nash-MD overrides with its mixture)."""
        return self.logp

    def step(self) -> None:
        st = self.settings
        eta, tau = self.eta, self.tau
        source = self.sampling_logp()
        ctx = self.contexts(st.pairs)
        y1, y2 = sample_from(self.rng, source, ctx), sample_from(self.rng, source, ctx)
        first_wins = self.oracle.duel(ctx, y1, y2) > 0
        w, l = np.where(first_wins, y1, y2), np.where(first_wins, y2, y1)
        prior = omd_prior(self.logp, self.log_ref, tau, eta)
        loss = self.loss

        def objective(theta, ctx, w, l, ref_w, ref_l, old_w, old_l, prior, eta, tau):
            lp = torch.log_softmax(theta, -1)
            pairs = Pairs(take(lp, ctx, w), take(lp, ctx, l), ref_w, ref_l, old_w, old_l)
            return loss(pairs, eta=eta, tau=tau) + ridge(theta, prior, st.ridge)

        fixed = [take(table, ctx, y) for table in (self.log_ref, self.logp) for y in (w, l)]
        data = self.tensors(ctx, w, l, *fixed, prior, as_rows(eta, 2), as_rows(tau, 2))
        self.logp = newton_minimise(objective, prior, data, quadratic=True)
