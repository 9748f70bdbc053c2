"""The pairwise NLHF baselines (SPEC §2) as one round and a table of their differences.

Each draws ``p`` pairs per prompt (y ~ pi_t, y' ~ the method's opponent) and asks the judge
P(y ≻ y') once per pair. The judge gives a probability, not a coin flip, so the loss is taken
in expectation over the oracle's Bernoulli outcome: the pair enters in both orientations with
weights p and 1 − p. For INPO that is its objective exactly (the minimiser is the OMD step),
with no sampling noise.

Nash-MD's opponent is the geometric mixture mu_t ∝ pi_t^{1−tau/eta}·pi_ref^{tau/eta}, which has
no sampler for a language model (its normaliser sums over all responses). We sample
y, y' ~ pi_t and weight each pair by mu_t(y)·mu_t(y') / (pi_t(y)·pi_t(y')), i.e. by
exp((tau/eta)·Σ(log ref − log pi_t)), self-normalised over the *round* (weights of mean 1;
normalisers cancel). Each minibatch divides by its number of pairs, not by its weights'
sum, so averaging over minibatches gives the round's estimate whatever the batch size
(dividing by each minibatch's weights would undo the weighting: at batch size 1 it is INPO).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from nlhf.llm.algorithms.round import Algorithm, Round, SideBySide, phase_metrics
from nlhf.llm.fit import Micro
from nlhf.llm.samples import Source
from nlhf.losses import (
    Pairs,
    Samples,
    inpo_loss,
    nash_md_loss,
    online_dpo_loss,
    online_ipo_loss,
    xpo_loss,
)

if TYPE_CHECKING:
    from nlhf.llm.config import HParams

Tensor = torch.Tensor
#: loss(oriented pairs, the policy's log-probs of the opponent's samples, hparams)
PairLoss = Callable[[Pairs, Samples, "HParams"], Tensor]


@dataclass(frozen=True)
class PairwiseMethod:
    """What one pairwise method changes: who samples y', what the loss needs, the loss."""

    opponent: str  # the sampler of y': "pi_t" or "ref"
    uses_pi_t: bool  # the loss reads pi_t's log-probs of the pair
    importance_weighted: bool  # Nash-MD's reweighting from pi_t to the mixture mu_t
    loss: PairLoss


METHODS: dict[str, PairwiseMethod] = {
    "inpo": PairwiseMethod("pi_t", True, False,
                           lambda pairs, _, h: inpo_loss(pairs, eta=h.eta, tau=h.tau)),
    "nash-md": PairwiseMethod("pi_t", True, True,
                              lambda pairs, _, h: nash_md_loss(pairs, eta=h.eta, tau=h.tau)),
    "online-dpo": PairwiseMethod("pi_t", False, False,
                                 lambda pairs, _, h: online_dpo_loss(pairs, beta=h.beta)),
    "online-ipo": PairwiseMethod("pi_t", False, False,
                                 lambda pairs, _, h: online_ipo_loss(pairs, beta=h.beta)),
    "xpo": PairwiseMethod("ref", False, False,
                          lambda pairs, opp, h: xpo_loss(pairs, opp, beta=h.beta, alpha=h.alpha)),
}


def nash_md_weights(ref: np.ndarray, pi_t: np.ndarray, eta: float, tau: float) -> np.ndarray:
    """Per-pair importance weights from pi_t×pi_t to mu_t×mu_t, normalised to mean 1 over
    the round. ``ref`` and ``pi_t`` hold each pair's summed log-probs (y plus y')."""
    log_w = (tau / eta) * (ref - pi_t)
    w = np.exp(log_w - np.max(log_w))
    return w / w.mean()


def oriented(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Both orientations of a pair: (winner, loser) rows (a, b) then (b, a)."""
    return torch.cat([a, b]), torch.cat([b, a])


class Pairwise(Algorithm):
    """The round of every method in :data:`METHODS`; ``name`` picks the row."""

    def __init__(self, h: HParams, name: str) -> None:
        super().__init__(h)
        self.name = name
        self.method = METHODS[name]

    def round(self, r: Round) -> dict[str, float]:
        h, m, p = self.h, self.method, self.h.pairs_per_prompt
        # 1. Sample pairs y ~ pi_t, y' ~ opponent (one generate call when both are pi_t).
        if m.opponent == "pi_t":
            data = r.sample(Source("pi_t", (("policy", p), ("opponent", p))))
        else:
            data = r.sample(Source("pi_t", (("policy", p),)),
                            Source(m.opponent, (("opponent", p),)))
        models = ("ref", "pi_t") if m.uses_pi_t else ("ref",)
        r.logprobs(data, [(role, model) for role in ("policy", "opponent") for model in models])
        y, y2 = data.roles["policy"], data.roles["opponent"]

        # 2. Judge each pair once: P(y ≻ y').
        (p_win,) = r.judge(data, SideBySide("policy", "opponent"))

        # 3. Targets: outcome weights p and 1 − p of the two orientations, times Nash-MD's
        #    importance weights (1 for the others).
        win = r.tensor(p_win)
        iw = r.tensor(nash_md_weights(y.logp["ref"] + y2.logp["ref"],
                                      y.logp["pi_t"] + y2.logp["pi_t"], h.eta, h.tau)
                      if m.importance_weighted else np.ones(len(y)))
        ref_y, ref_y2 = r.tensor(y.logp["ref"]), r.tensor(y2.logp["ref"])
        old_y, old_y2 = (r.tensor(y.logp["pi_t"]), r.tensor(y2.logp["pi_t"])) if m.uses_pi_t \
            else (None, None)

        # 4. Fit pi_{t+1} on the expected loss; each minibatch divides by its pair count.
        def loss(mb: Micro) -> Tensor:
            i, norm = mb.items, float(len(mb.batch))
            lp = r.policy_logprobs(data, [("policy", i), ("opponent", i)], adapter="policy")
            (lw, ll), (rw, rl) = oriented(lp[:len(i)], lp[len(i):]), oriented(ref_y[i], ref_y2[i])
            ow, ol = oriented(old_y[i], old_y2[i]) if old_y is not None else (None, None)
            weight = torch.cat([win[i], 1.0 - win[i]]) * iw[i].repeat(2)
            pairs = Pairs(lw, ll, rw, rl, ow, ol, weight=weight, norm=norm)
            return m.loss(pairs, Samples(lp[len(i):], norm=norm), h)

        stats = r.fit("train", "policy", loss, n_items=len(y))
        return {"score_policy": float(p_win.mean()), **phase_metrics("train", stats)}
