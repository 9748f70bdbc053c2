"""SPPO (Wu et al. 2024, SPEC §2) as one round on a language model.

Per prompt: ``p`` labelled samples y ~ pi_t and ``n_z`` comparators z ~ pi_t (one generate
call); P̂(y ≻ pi_t) = mean_z P(y ≻ z) is regressed on by log(pi/pi_t)(y).
"""

from __future__ import annotations

import torch

from nlhf.llm.algorithms.round import Algorithm, Round, Versus, phase_metrics
from nlhf.llm.fit import Micro
from nlhf.llm.samples import Source
from nlhf.losses import Samples, sppo_loss


class SPPO(Algorithm):
    name = "sppo"

    def round(self, r: Round) -> dict[str, float]:
        h = self.h
        # 1. Sample labelled responses and comparators from pi_t.
        data = r.sample(Source("pi_t", (("policy", h.pairs_per_prompt),
                                        ("comparator", h.n_comparators))))
        r.logprobs(data, [])
        y = data.roles["policy"]
        # 2. Judge: P̂(y ≻ pi_t) = mean_z P(y ≻ z).
        (wins,) = r.judge(data, Versus("policy", "comparator", h.n_comparators))
        win_rate, old = r.tensor(wins.mean(1)), r.tensor(y.logp["pi_t"])

        # 3. Fit log(pi/pi_t)(y) to (P̂(y ≻ pi_t) − 1/2)/eta.
        def loss(m: Micro) -> torch.Tensor:
            i = m.items
            lp = r.policy_logprobs(data, [("policy", i)], adapter="policy")
            return sppo_loss(Samples(lp, old[i], norm=float(len(m.batch))), win_rate[i],
                             eta=h.eta)

        stats = r.fit("train", "policy", loss, n_items=len(y))
        return {"score_policy": float(wins.mean()), **phase_metrics("train", stats)}
