"""DENPO-explore: DENPO whose Step B adversary leaves pi_t's support (docs/trainer.md).

Step A is DENPO's. Step B changes in two ways, both SFT-style and oracle-free:

- candidates: per pair j, the adversary's own y'_j of this round and two fresh candidates
  u_j, u'_j from pi_t^{1/T_e} (``explore_temperature``); the pairs are (y'_j, u_j) and
  (u_j, u'_j), ranked by s·log(pi_{t+1}/pi_t) as in DENPO. With ``explore_sampling:
  response`` (the default) u, u' are resampled, without replacement, from
  ``explore_candidates`` temperature-1 samples with weights pi_t(u)^{1/T_e − 1}: importance
  resampling toward pi_t^{1/T_e} over whole responses, as the lab tempers them. ``token``
  samples each token at T_e instead, which on a small model gives word salad;
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
        p = h.pairs_per_prompt
        adversary = Source("pihat_t", (("adversary", p),))
        if h.explore_sampling == "token":
            hot = Source("pi_t", (("explore", 2 * p),), temperature=h.explore_temperature)
            return (Source("pi_t", (("policy", p), ("comparator", h.n_comparators))),
                    adversary, hot)
        return (Source("pi_t", (("policy", p), ("comparator", h.n_comparators),
                                ("explore", h.explore_candidates * p))), adversary)

    def logprob_needs(self) -> list[tuple[str, str]]:
        return [*super().logprob_needs(), ("explore", "pi_t")]

    def candidates(self, r: Round, data: RoundData) -> list[tuple[int, int]]:
        """(u_j, u'_j) of every adversary sample, as indices into the "explore" role."""
        h, adv, hot = self.h, data.roles["adversary"], data.roles["explore"]
        per_pair = 2 if h.explore_sampling == "token" else h.explore_candidates
        rng = np.random.default_rng(r.seed("step_b/candidates"))
        picked = []
        for i in range(len(adv)):  # adversary sample i is pair j of prompt pos
            pos, j = adv.prompt_pos[i], i % adv.per_prompt
            pool = [hot.at(pos, per_pair * j + k) for k in range(per_pair)]
            if h.explore_sampling == "response":
                pool = [pool[k] for k in tempered_resample(
                    hot.logp["pi_t"][pool], h.explore_temperature, rng)]
            picked.append((pool[0], pool[1]))
        return picked

    def step_b(self, r: Round, data: RoundData) -> dict[str, float]:
        h = self.h
        adv, hot = data.roles["adversary"], data.roles["explore"]
        picks = self.candidates(r, data)
        start = time.perf_counter()
        gain: dict[str, dict[int, float]] = {}
        for role, rs, idx in (("adversary", adv, list(range(len(adv)))),
                              ("explore", hot, sorted({u for pair in picks for u in pair}))):
            new = r.score(data, role, idx, "pi_t")  # log pi_{t+1}: the policy adapter now
            values = (new - r.tensor(rs.logp["pi_t"][idx])).double().cpu().numpy()
            gain[role] = dict(zip(idx, values.tolist(), strict=True))
        scoring = time.perf_counter() - start
        ends: list[tuple[tuple[str, int], tuple[str, int]]] = []
        for i, (u, u2) in enumerate(picks):
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
                "step_b_policy_logratio": float(np.mean(list(gain["explore"].values()))),
                "step_b_score_gap": float(h.s * (g[:, 0] - g[:, 1]).mean()) if ends else 0.0,
                "time_step_b_scoring": scoring, **phase_metrics("step_b", b)}


def tempered_resample(logp: np.ndarray, temperature: float, rng: np.random.Generator,
                      n: int = 2) -> list[int]:
    """``n`` distinct indices of samples u_k ~ pi drawn with weights pi(u_k)^{1/T − 1}.

    Self-normalised importance resampling from pi toward pi^{1/T}/Z: as the pool grows, a
    single pick is distributed as pi^{1/T}/Z (tests/test_denpo_explore.py checks it).
    """
    logw = (1.0 / temperature - 1.0) * np.asarray(logp, dtype=np.float64)
    w = np.exp(logw - logw.max())
    return [int(k) for k in rng.choice(len(w), size=n, replace=False, p=w / w.sum())]
