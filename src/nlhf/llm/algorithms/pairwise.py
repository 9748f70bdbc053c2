"""The NLHF baselines' rounds on a language model (SPEC §2), one small class each.

Pairwise methods (INPO, online DPO / IPO, XPO, Nash-MD) draw ``p`` pairs per prompt (y, y')
and ask the judge P(y ≻ y'). The judge gives a probability, not a coin flip, so each pairwise
loss is taken in expectation over the oracle's Bernoulli outcome: the pair enters in both
orientations with weights p and 1 − p (:func:`~nlhf.llm.algorithms.base.outcome_weights`). That is
the INPO objective exactly (its minimiser is the OMD step), with no sampling noise.

- **inpo, online-dpo, online-ipo**: y, y' ~ pi_t (one generate call).
- **xpo**: y ~ pi_t, y' = ỹ ~ pi_ref; loss DPO + alpha·mean log pi(ỹ) (SPEC's plus sign).
- **nash-md**: the geometric mixture mu_t ∝ pi_t^{1−tau/eta}·pi_ref^{tau/eta} has no sampler
  for a language model (its normaliser is a sum over all responses). We sample y, y' ~ pi_t
  and importance-weight each pair by mu_t(y)·mu_t(y') / (pi_t(y)·pi_t(y')), i.e. by
  exp((tau/eta)·Σ(log ref − log pi_t)), self-normalised over the round (normalisers cancel).
  The estimate is consistent but high-variance once pi_t drifts far from pi_ref.
- **sppo**: ``p`` samples y ~ pi_t plus ``n_z`` comparators z ~ pi_t per prompt;
  P̂(y ≻ pi_t) = mean_z P(y ≻ z).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from nlhf.llm.algorithms.base import (
    LLMAlgorithm,
    RoundContext,
    oriented,
    outcome_weights,
    phase_metrics,
)
from nlhf.llm.fit import Micro, fit
from nlhf.llm.samples import Comparison, RoundData, Source
from nlhf.losses import (
    Pairs,
    Samples,
    inpo_loss,
    nash_md_loss,
    online_dpo_loss,
    online_ipo_loss,
    sppo_loss,
    xpo_loss,
)

Tensor = torch.Tensor


class PairwiseRound(LLMAlgorithm):
    """Shared round of the pairwise methods: pairs (policy_i, opponent_i), one comparison each."""

    opponent_model: ClassVar[str] = "pi_t"
    uses_pi_t: ClassVar[bool] = False

    def sources(self) -> list[Source]:
        p = self.h.pairs_per_prompt
        if self.opponent_model == "pi_t":
            return [Source("pi_t", (("policy", p), ("opponent", p)))]
        return [Source("pi_t", (("policy", p),)), Source(self.opponent_model, (("opponent", p),))]

    def logprob_needs(self) -> list[tuple[str, str]]:
        needs = [("policy", "ref"), ("opponent", "ref")]
        if self.uses_pi_t:
            needs += [("policy", "pi_t"), ("opponent", "pi_t")]
        return needs

    def comparisons(self, data: RoundData) -> list[Comparison]:
        return [("policy", i, "opponent", i) for i in range(len(data.roles["policy"]))]

    def judge_metrics(self, data: RoundData, probs: np.ndarray) -> dict[str, float]:
        return {"score_policy": float(np.mean(probs))}

    def pair_weights(self, data: RoundData) -> Tensor | None:
        """Extra per-pair weights (Nash-MD's importance weights); None: uniform."""
        return None

    def pair_loss(self, lw: Tensor, ll: Tensor, data: RoundData, idx: list[int],
                  weight: Tensor, norm: float) -> Tensor:
        """The algorithm's loss on the oriented pairs ``idx`` of a micro-batch; ``norm`` is
        the whole minibatch's total weight (the loss's denominator)."""
        raise NotImplementedError

    def update(self, ctx: RoundContext, data: RoundData, probs: np.ndarray) -> dict[str, float]:
        p_win = data.tensor(probs)
        extra_w = self.pair_weights(data)

        def weights(idx: list[int]) -> Tensor:
            """Weights p and 1 − p of the two orientations, times any extra pair weight."""
            w = outcome_weights(p_win[idx])
            return w if extra_w is None else w * extra_w[idx].repeat(2)

        def body() -> dict[str, Any]:
            def loss_fn(m: Micro) -> Tensor:
                idx = m.items
                pa, ra = data.seqs("policy", idx)
                pb, rb = data.seqs("opponent", idx)
                lp = ctx.policy.sequence_logprobs(pa + pb, ra + rb, "policy", grad=True,
                                                  batch_size=2 * len(idx))
                n = len(idx)
                lw, ll = oriented(lp[:n], lp[n:])
                # The loss's denominator is the whole minibatch's weight (fit's micro-batches).
                return self.pair_loss(lw, ll, data, idx, weights(idx),
                                      float(weights(m.batch).sum()))

            return fit(ctx.policy, "policy", len(data.roles["policy"]), loss_fn, ctx.cfg.train,
                       ctx.seed("train"), progress=ctx.progress,
                       desc=f"{self.name} (iter {ctx.iteration})", on_step=ctx.on_step("train"),
                       dist=ctx.dist)

        return phase_metrics("train", ctx.train_phase("train", "policy", body))

    @staticmethod
    def both(data: RoundData, model: str, idx: list[int]) -> tuple[Tensor, Tensor]:
        """Stored log-probs of (policy, opponent) samples, oriented like the policy's."""
        return oriented(data.logp("policy", model, idx), data.logp("opponent", model, idx))


class INPO(PairwiseRound):
    name = "inpo"
    uses_pi_t = True

    def pair_loss(self, lw: Tensor, ll: Tensor, data: RoundData, idx: list[int],
                  weight: Tensor, norm: float) -> Tensor:
        rw, rl = self.both(data, "ref", idx)
        ow, ol = self.both(data, "pi_t", idx)
        return inpo_loss(Pairs(lw, ll, rw, rl, ow, ol, weight, norm), eta=self.h.eta,
                         tau=self.h.tau)


class NashMD(PairwiseRound):
    name = "nash-md"
    uses_pi_t = True

    def pair_weights(self, data: RoundData) -> Tensor:
        mix = self.h.tau / self.h.eta
        log_w = sum(mix * (data.roles[r].logp["ref"] - data.roles[r].logp["pi_t"])
                    for r in ("policy", "opponent"))
        w = np.exp(log_w - np.max(log_w))
        return data.tensor(w / w.mean())

    def pair_loss(self, lw: Tensor, ll: Tensor, data: RoundData, idx: list[int],
                  weight: Tensor, norm: float) -> Tensor:
        rw, rl = self.both(data, "ref", idx)
        ow, ol = self.both(data, "pi_t", idx)
        return nash_md_loss(Pairs(lw, ll, rw, rl, ow, ol, weight, norm), eta=self.h.eta,
                            tau=self.h.tau)


class OnlineDPO(PairwiseRound):
    name = "online-dpo"

    def pair_loss(self, lw: Tensor, ll: Tensor, data: RoundData, idx: list[int],
                  weight: Tensor, norm: float) -> Tensor:
        rw, rl = self.both(data, "ref", idx)
        return online_dpo_loss(Pairs(lw, ll, rw, rl, weight=weight, norm=norm), beta=self.h.beta)


class OnlineIPO(PairwiseRound):
    name = "online-ipo"

    def pair_loss(self, lw: Tensor, ll: Tensor, data: RoundData, idx: list[int],
                  weight: Tensor, norm: float) -> Tensor:
        rw, rl = self.both(data, "ref", idx)
        return online_ipo_loss(Pairs(lw, ll, rw, rl, weight=weight, norm=norm), beta=self.h.beta)


class XPO(PairwiseRound):
    name = "xpo"
    opponent_model = "ref"

    def pair_loss(self, lw: Tensor, ll: Tensor, data: RoundData, idx: list[int],
                  weight: Tensor, norm: float) -> Tensor:
        rw, rl = self.both(data, "ref", idx)
        n = len(idx)
        # Rows n.. of lw are the opponent's samples ỹ ~ pi_ref under the trained policy. XPO
        # has no pair weights beyond the outcome's, so norm is the minibatch's pair count.
        pairs = Pairs(lw, ll, rw, rl, weight=weight, norm=norm)
        return xpo_loss(pairs, Samples(lw[n:], norm=norm), beta=self.h.beta, alpha=self.h.alpha)


class SPPO(LLMAlgorithm):
    name = "sppo"

    def sources(self) -> list[Source]:
        return [Source("pi_t", (("policy", self.h.pairs_per_prompt),
                                ("comparator", self.h.n_comparators)))]

    def logprob_needs(self) -> list[tuple[str, str]]:
        return [("policy", "pi_t")]

    def comparisons(self, data: RoundData) -> list[Comparison]:
        pol, comp = data.roles["policy"], data.roles["comparator"]
        return [("policy", pol.index(pos, k), "comparator", comp.index(pos, j))
                for pos in range(len(data.prompt_ids))
                for k in range(pol.per_prompt)
                for j in range(comp.per_prompt)]

    def win_rates(self, probs: np.ndarray) -> np.ndarray:
        return np.asarray(probs, dtype=np.float64).reshape(-1, self.h.n_comparators).mean(-1)

    def judge_metrics(self, data: RoundData, probs: np.ndarray) -> dict[str, float]:
        return {"score_policy": float(self.win_rates(probs).mean())}

    def update(self, ctx: RoundContext, data: RoundData, probs: np.ndarray) -> dict[str, float]:
        rate = data.tensor(self.win_rates(probs))

        def body() -> dict[str, Any]:
            def loss_fn(m: Micro) -> Tensor:
                idx = m.items
                p_ids, r_ids = data.seqs("policy", idx)
                lp = ctx.policy.sequence_logprobs(p_ids, r_ids, "policy", grad=True,
                                                  batch_size=len(idx))
                samples = Samples(lp, data.logp("policy", "pi_t", idx), norm=float(len(m.batch)))
                return sppo_loss(samples, rate[idx], eta=self.h.eta)

            return fit(ctx.policy, "policy", len(data.roles["policy"]), loss_fn, ctx.cfg.train,
                       ctx.seed("train"), progress=ctx.progress,
                       desc=f"sppo (iter {ctx.iteration})", on_step=ctx.on_step("train"),
                       dist=ctx.dist)

        return phase_metrics("train", ctx.train_phase("train", "policy", body))
