"""DENPO, the practical form of ENPO (SPEC §2), as one round on a language model.

Per prompt: ``p`` pairs (y ~ pi_t, y' ~ pihat_t) and ``K = max(n_z, c)`` samples z ~ pi_t
("comparator" role), drawn in the same generate call as y. The comparators do three jobs, so
no sample or forward pass is duplicated:

- the first ``n_z`` are the comparators of the labels I(y) = mean_z P(y ≻ z);
- the last of those, z_{n_z−1}, is the prompt's fresh sample z̃ of the proximal term
  −alpha·log pi(z̃). With n_z > c (the paper: 4 > 2) it is not a Step B candidate, so Step A's
  SFT pull on it cannot bias Step B's ranking;
- the first ``c`` are Step B's fresh candidates (extra ones are generated when n_z < c).

The pairs are this round's only (the buffer draw m = n of SPEC §2 with fresh pairs): older
pairs would need fresh comparators from pi_t anyway.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from nlhf.llm.algorithms.round import Algorithm, Round, Versus, phase_metrics
from nlhf.llm.fit import Micro
from nlhf.llm.samples import RoundData, Source
from nlhf.losses import Pairs, Samples, denpo_step_b_loss, enpo_step_a_loss, step_b_soft_label


class DENPO(Algorithm):
    name = "denpo"
    adapters = ("policy", "adversary")

    def sources(self) -> tuple[Source, ...]:
        """Pairs (y ~ pi_t, y' ~ pihat_t) and comparators z ~ pi_t (also Step B's candidates)."""
        h = self.h
        return (Source("pi_t", (("policy", h.pairs_per_prompt),
                                ("comparator", max(h.n_comparators, h.step_b_candidates)))),
                Source("pihat_t", (("adversary", h.pairs_per_prompt),)))

    def logprob_needs(self) -> list[tuple[str, str]]:
        return [("policy", "ref"), ("adversary", "ref"), ("adversary", "pi_t"),
                ("comparator", "pi_t")]

    def round(self, r: Round) -> dict[str, float]:
        h = self.h
        nz = h.n_comparators
        # 1. Sample pairs (y ~ pi_t, y' ~ pihat_t) and comparators z ~ pi_t.
        data = r.sample(*self.sources())
        r.logprobs(data, self.logprob_needs())
        y, y2, comp = data.roles["policy"], data.roles["adversary"], data.roles["comparator"]

        # 2. Judge: I(y) = mean_z P(y ≻ z), for both sides of every pair.
        wins_y, wins_y2 = r.judge(data, Versus("policy", "comparator", nz),
                                  Versus("adversary", "comparator", nz))
        score_gap = r.tensor(wins_y.mean(1) - wins_y2.mean(1))  # I(y) − I(y')

        # 3. Step A (exploit): regress pi_{t+1}'s OMD log-ratio on (I(y) − I(y'))/eta, plus
        #    the proximal pull −alpha·log pi(z̃) on each prompt's fresh sample.
        r.copy_adapter("policy", "adversary")  # pihat_{t+1} starts from pi_t
        fresh = comp.column(nz - 1)
        ref_y, ref_y2 = r.tensor(y.logp["ref"]), r.tensor(y2.logp["ref"])
        old_y, old_y2 = r.tensor(y.logp["pi_t"]), r.tensor(y2.logp["pi_t"])

        def step_a_loss(m: Micro) -> torch.Tensor:
            i, z = m.items, [fresh[k] for k in m.extra]
            lp = r.policy_logprobs(data, [("policy", i), ("adversary", i), ("comparator", z)],
                                   adapter="policy")
            n = len(i)
            pairs = Pairs(lp[:n], lp[n:2 * n], ref_y[i], ref_y2[i], old_y[i], old_y2[i],
                          norm=float(len(m.batch)))
            prox = Samples(lp[2 * n:], norm=float(max(1, len(m.batch_extra))))
            return enpo_step_a_loss(pairs, score_gap[i], eta=h.eta, tau=h.tau, alpha=h.alpha,
                                    fresh=prox)

        a = r.fit("step_a", "policy", step_a_loss, n_items=len(y),
                  n_extra=len(fresh) if h.alpha > 0 else 0)
        return {"score_policy": float(wins_y.mean()), "score_adversary": float(wins_y2.mean()),
                **phase_metrics("step_a", a), **self.step_b(r, data)}

    def step_b(self, r: Round, data: RoundData) -> dict[str, float]:
        h = self.h
        c, comp = h.step_b_candidates, data.roles["comparator"]
        # 4. Step B (explore): rank fresh candidates u ~ pi_t by s·log(pi_{t+1}/pi_t), pair
        #    best with worst, and fit pihat_{t+1} ∝ pi_t·(pi_{t+1}/pi_t)^{s/beta} by DPO against
        #    pi_t. No oracle calls.
        cand = comp.first(c)
        start = time.perf_counter()
        new = r.score(data, "comparator", cand, "pi_t")  # pi_{t+1}: the policy adapter now
        gain = (new - r.tensor(comp.logp["pi_t"][cand])).double().cpu().numpy()
        scoring = time.perf_counter() - start
        win, lose = rank_pairs(gain, c, h.s)
        w, l = [cand[k] for k in win], [cand[k] for k in lose]
        old_w, old_l = r.tensor(comp.logp["pi_t"][w]), r.tensor(comp.logp["pi_t"][l])
        soft = step_b_soft_label(torch.tensor(gain[win]), torch.tensor(gain[lose]), s=h.s)
        label = r.tensor(soft.numpy() if h.step_b_labels == "soft" else np.ones(len(w)))

        def step_b_loss(m: Micro) -> torch.Tensor:
            i = m.items
            lp = r.policy_logprobs(data, [("comparator", [w[k] for k in i]),
                                          ("comparator", [l[k] for k in i])], adapter="adversary")
            pairs = Pairs(lp[:len(i)], lp[len(i):], old_a=old_w[i], old_b=old_l[i],
                          norm=float(len(m.batch)))
            return denpo_step_b_loss(pairs, beta=h.beta, label=label[i])

        b = r.fit("step_b", "adversary", step_b_loss, n_items=len(w))
        return {"step_b_pairs": float(len(w)), "step_b_policy_logratio": float(gain.mean()),
                "step_b_score_gap": float(h.s * (gain[win] - gain[lose]).mean()) if w else 0.0,
                "time_step_b_scoring": scoring,
                **phase_metrics("step_b", b)}


def rank_pairs(scores: np.ndarray, per_prompt: int, s: float) -> tuple[list[int], list[int]]:
    """(winners, losers) per prompt by s·score: best with worst, second with second-worst...

    ``scores`` holds ``per_prompt`` candidates per prompt, grouped; indices are into it.
    """
    winners: list[int] = []
    losers: list[int] = []
    for start in range(0, len(scores), per_prompt):
        group = np.arange(start, start + per_prompt)
        ranked = group[np.argsort(-s * scores[group], kind="stable")]
        for i in range(per_prompt // 2):
            winners.append(int(ranked[i]))
            losers.append(int(ranked[per_prompt - 1 - i]))
    return winners, losers
