"""ENPO's round on a language model, in its practical form DENPO (SPEC §2).

Data per prompt: ``p`` pairs (y ~ pi_t, y' ~ pihat_t) and ``K = max(n_z, c)`` samples
z ~ pi_t ("comparator" role), drawn in the same generate call as y. The comparators do three
jobs, so no sample or forward pass is duplicated:

- the first ``n_z`` are the comparators of the labels I(y) = mean_z P(y ≻ z);
- the last of those, z_{n_z−1}, is the prompt's fresh sample z̃ of the proximal term
  −alpha·log pi(z̃) (one per prompt). With n_z > c (the paper: 4 > 2) it is not a Step B
  candidate, so Step A's SFT pull on it cannot bias Step B's ranking;
- the first ``c`` are Step B's fresh candidates (extra ones are generated when n_z < c).

The pairs are this round's only (the buffer draw m = n of SPEC §2 with fresh pairs): older
pairs would need fresh comparators from pi_t anyway. pi_t log-probs of y and z come from the
generation cache; pi_t of y' and pi_ref of y, y' take one forward pass each.

Step A trains the "policy" adapter (pi_t → pi_{t+1}). Step B starts the "adversary" from pi_t
(copied before Step A), scores the candidates by r = log pi_{t+1} − log pi_t (one no-grad pass
of the updated policy; pi_t is cached), pairs them by the rank of s·r (best with worst, then
second with second-worst, ...) and trains one DPO pass against pi_t: hard labels (the paper)
or, with ``hparams.step_b_labels: soft``, labels σ(s·(r_w − r_l)).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from nlhf.llm.algorithms.base import LLMAlgorithm, RoundContext, phase_metrics
from nlhf.llm.distributed import sharded_logprobs
from nlhf.llm.fit import Micro, fit
from nlhf.llm.policy.lm import LMPolicy
from nlhf.llm.samples import Comparison, RoundData, Source
from nlhf.losses import Pairs, Samples, denpo_step_b_loss, enpo_step_a_loss, step_b_soft_label


class ENPO(LLMAlgorithm):
    name = "enpo"
    train_phases = ("step_a", "step_b")

    @property
    def n_candidates(self) -> int:
        return max(self.h.n_comparators, self.h.step_b_candidates)

    def sources(self) -> list[Source]:
        p = self.h.pairs_per_prompt
        return [Source("pi_t", (("policy", p), ("comparator", self.n_candidates))),
                Source("pihat_t", (("adversary", p),))]

    def logprob_needs(self) -> list[tuple[str, str]]:
        return [("policy", "ref"), ("policy", "pi_t"), ("adversary", "ref"),
                ("adversary", "pi_t"), ("comparator", "pi_t")]

    def comparisons(self, data: RoundData) -> list[Comparison]:
        """Order: prompt, role (policy, adversary), pair k, comparator j."""
        p, nz = self.h.pairs_per_prompt, self.h.n_comparators
        comp = data.roles["comparator"]
        return [(role, data.roles[role].index(pos, k), "comparator", comp.index(pos, j))
                for pos in range(len(data.prompt_ids))
                for role in ("policy", "adversary")
                for k in range(p)
                for j in range(nz)]

    def scores(self, data: RoundData, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(I(y), I(y')) in role order, from :meth:`comparisons`' answers."""
        p, nz = self.h.pairs_per_prompt, self.h.n_comparators
        table = np.asarray(probs, dtype=np.float64).reshape(len(data.prompt_ids), 2, p, nz)
        means = table.mean(axis=-1)
        return means[:, 0].reshape(-1), means[:, 1].reshape(-1)

    def judge_metrics(self, data: RoundData, probs: np.ndarray) -> dict[str, float]:
        iy, iy2 = self.scores(data, probs)
        return {"score_policy": float(iy.mean()), "score_adversary": float(iy2.mean())}

    def update(self, ctx: RoundContext, data: RoundData, probs: np.ndarray) -> dict[str, float]:
        ctx.policy.copy_adapter("policy", "adversary")  # pihat_{t+1} starts from pi_t
        iy, iy2 = self.scores(data, probs)
        a = ctx.train_phase("step_a", "policy",
                            lambda: step_a(ctx.policy, data, iy, iy2, ctx, self.h.n_comparators))
        b = ctx.train_phase("step_b", "adversary", lambda: step_b(ctx.policy, data, ctx))
        return {**phase_metrics("step_a", a), **phase_metrics("step_b", b)}


def step_a(policy: LMPolicy, data: RoundData, score_y: np.ndarray, score_y2: np.ndarray,
           ctx: RoundContext, n_comparators: int) -> dict[str, Any]:
    """Fit pi_{t+1}: E[(h_t(pi; y, y') − (I(y) − I(y'))/eta)²] − alpha·E[log pi(z̃)]."""
    h = ctx.cfg.hparams
    comp = data.roles["comparator"]
    fresh_of_prompt = [comp.index(pos, n_comparators - 1) for pos in range(len(data.prompt_ids))]
    sa, sb = data.tensor(score_y), data.tensor(score_y2)

    def loss_fn(m: Micro) -> torch.Tensor:
        idx, extra = m.items, m.extra
        pa, ra = data.seqs("policy", idx)
        pb, rb = data.seqs("adversary", idx)
        pf, rf = data.seqs("comparator", [fresh_of_prompt[i] for i in extra])
        prompts, responses = pa + pb + pf, ra + rb + rf
        lp = policy.sequence_logprobs(prompts, responses, "policy", grad=True,
                                      batch_size=len(prompts))
        n = len(idx)
        pairs = Pairs(lp[:n], lp[n:2 * n],
                      data.logp("policy", "ref", idx), data.logp("adversary", "ref", idx),
                      data.logp("policy", "pi_t", idx), data.logp("adversary", "pi_t", idx),
                      norm=float(len(m.batch)))
        fresh = Samples(lp[2 * n:], norm=float(max(1, len(m.batch_extra)))) if pf else None
        return enpo_step_a_loss(pairs, sa[idx] - sb[idx], eta=h.eta, tau=h.tau, alpha=h.alpha,
                                fresh=fresh)

    n_fresh = len(fresh_of_prompt) if h.alpha > 0 else 0
    return fit(policy, "policy", len(data.roles["policy"]), loss_fn, ctx.cfg.train,
               ctx.seed("step_a"), n_extra=n_fresh, progress=ctx.progress,
               desc=f"step A (iter {ctx.iteration})", on_step=ctx.on_step("step_a"),
               dist=ctx.dist)


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


def step_b(policy: LMPolicy, data: RoundData, ctx: RoundContext) -> dict[str, Any]:
    """Fit pihat_{t+1} ∝ pi_t·(pi_{t+1}/pi_t)^{s/beta} by DPO against pi_t (no oracle)."""
    h, c = ctx.cfg.hparams, ctx.cfg.hparams.step_b_candidates
    comp = data.roles["comparator"]
    cand = [comp.index(pos, j) for pos in range(len(data.prompt_ids)) for j in range(c)]
    p_ids, r_ids = data.seqs("comparator", cand)
    start = time.perf_counter()
    with torch.no_grad():
        new = sharded_logprobs(policy, ctx.dist, p_ids, r_ids, "policy",
                               ctx.cfg.rollout.batch_size)
    scoring = time.perf_counter() - start
    old = data.logp("comparator", "pi_t", cand)
    r = (new.detach() - old).double().cpu().numpy()
    win, lose = rank_pairs(r, c, h.s)
    w_idx, l_idx = [cand[i] for i in win], [cand[i] for i in lose]
    r_w, r_l = torch.tensor(r[win]), torch.tensor(r[lose])
    if h.step_b_labels == "soft":
        labels = data.tensor(step_b_soft_label(r_w, r_l, s=h.s).numpy())
    else:
        labels = data.tensor(np.ones(len(win)))
    old_w, old_l = old[win], old[lose]

    def loss_fn(m: Micro) -> torch.Tensor:
        idx = m.items
        pw, rw = data.seqs("comparator", [w_idx[i] for i in idx])
        pl, rl = data.seqs("comparator", [l_idx[i] for i in idx])
        lp = policy.sequence_logprobs(pw + pl, rw + rl, "adversary", grad=True,
                                      batch_size=2 * len(idx))
        n = len(idx)
        pairs = Pairs(lp[:n], lp[n:], old_a=old_w[idx], old_b=old_l[idx], norm=float(len(m.batch)))
        return denpo_step_b_loss(pairs, beta=h.beta, label=labels[idx])

    stats = fit(policy, "adversary", len(win), loss_fn, ctx.cfg.train, ctx.seed("step_b"),
                progress=ctx.progress, desc=f"step B (iter {ctx.iteration})",
                on_step=ctx.on_step("step_b"), dist=ctx.dist)
    gap = (h.s * (r_w - r_l)).numpy()
    return {**stats, "pairs": len(win), "policy_logratio": float(r.mean()),
            "score_gap": float(gap.mean()) if len(gap) else 0.0, "seconds_scoring": scoring}
