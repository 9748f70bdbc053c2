"""DENPO-explore: DENPO whose Step B adversary leaves pi_t's support (docs/trainer.md).

Step A is DENPO's. Step B changes in two ways, both SFT-style and oracle-free:

- candidates: per pair j, the adversary's own y'_j of this round and two fresh samples
  u_j, u'_j ~ pi_t drawn at the exploration temperature T_e (``explore_temperature``); the
  pairs are (y'_j, u_j) and (u_j, u'_j), ranked by s·log(pi_{t+1}/pi_t) as in DENPO;
- the anchor: :func:`nlhf.losses.denpo_explore_step_b_loss` fits
  pihat_{t+1} ∝ pi_t^{1/T_e}·(pi_{t+1}/pi_t)^{s/beta}, DENPO's tilt of the tempered pi_t.

DENPO's pihat ∝ pi_t·(pi_{t+1}/pi_t)^{s/beta} only re-weights what pi_t already samples, so
its pairs teach nothing self-play would not; the tempered anchor lifts rare responses.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from nlhf.llm.algorithms.denpo import DENPO
from nlhf.llm.algorithms.round import Round, phase_metrics
from nlhf.llm.fit import Micro
from nlhf.llm.samples import RoundData, Source
from nlhf.losses import Pairs, denpo_explore_step_b_loss, step_b_soft_label


class DENPOExplore(DENPO):
    name = "denpo-explore"

    def sources(self) -> tuple[Source, ...]:
        h = self.h
        hot = Source("pi_t", (("explore", 2 * h.pairs_per_prompt),),
                     temperature=h.explore_temperature)
        return (Source("pi_t", (("policy", h.pairs_per_prompt), ("comparator", h.n_comparators))),
                Source("pihat_t", (("adversary", h.pairs_per_prompt),)), hot)

    def logprob_needs(self) -> list[tuple[str, str]]:
        return [*super().logprob_needs(), ("explore", "pi_t")]

    def step_b(self, r: Round, data: RoundData) -> dict[str, float]:
        h = self.h
        adv, hot = data.roles["adversary"], data.roles["explore"]
        start = time.perf_counter()
        gain = {role: (r.score(data, role, range(len(rs)), "pi_t")  # pi_{t+1} now
                       - r.tensor(rs.logp["pi_t"])).double().cpu().numpy()
                for role, rs in (("adversary", adv), ("explore", hot))}
        scoring = time.perf_counter() - start
        ends: list[tuple[tuple[str, int], tuple[str, int]]] = []
        for i in range(len(adv)):  # adversary sample i is pair j of prompt pos
            pos, j = adv.prompt_pos[i], i % adv.per_prompt
            u, u2 = hot.at(pos, 2 * j), hot.at(pos, 2 * j + 1)
            ends += [(("adversary", i), ("explore", u)), (("explore", u), ("explore", u2))]
        g = np.array([[gain[a[0]][a[1]], gain[b[0]][b[1]]] for a, b in ends]).reshape(-1, 2)
        if h.step_b_labels == "hard":  # winner first, by s·gain
            swap = h.s * (g[:, 1] - g[:, 0]) > 0
            ends = [(b, a) if sw else (a, b) for (a, b), sw in zip(ends, swap, strict=True)]
            g = np.where(swap[:, None], g[:, ::-1], g)
            label = r.tensor(np.ones(len(ends)))
        else:
            label = r.tensor(step_b_soft_label(torch.tensor(g[:, 0]), torch.tensor(g[:, 1]),
                                               s=h.s).numpy())
        old = [r.tensor([data.roles[e[k][0]].logp["pi_t"][e[k][1]] for e in ends])
               for k in (0, 1)]

        def step_b_loss(m: Micro) -> torch.Tensor:
            i = m.items
            groups = [(ends[k][side][0], [ends[k][side][1]]) for side in (0, 1) for k in i]
            lp = r.policy_logprobs(data, groups, adapter="adversary")
            n = len(i)
            pairs = Pairs(lp[:n], lp[n:], old_a=old[0][i], old_b=old[1][i],
                          norm=float(len(m.batch)))
            return denpo_explore_step_b_loss(pairs, beta=h.beta, label=label[i],
                                             temperature=h.explore_temperature)

        b = r.fit("step_b", "adversary", step_b_loss, n_items=len(ends))
        return {"step_b_pairs": float(len(ends)),
                "step_b_policy_logratio": float(gain["explore"].mean()),
                "step_b_score_gap": float(h.s * (g[:, 0] - g[:, 1]).mean()) if ends else 0.0,
                "time_step_b_scoring": scoring, **phase_metrics("step_b", b)}
