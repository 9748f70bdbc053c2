"""Every algorithm's loss, written once over tensors of sequence log-probabilities.

The same functions drive the tabular policies of the lab and the language models of the
trainer. A loss takes one named input, :class:`Pairs` (or :class:`Samples` for losses on
single responses), and its hyper-parameters by keyword. Fields are tensors with one entry per
pair (or sample) on the last axis; leading axes batch independent losses (the lab's rows and
Newton points), and hyper-parameters given as tensors broadcast against them. ``policy_*``
are sums of token log-probs of the response (EOS included) under the trained policy, ``ref_*``
under pi_ref, ``old_*`` under the current iterate pi_t.
``weight`` (optional, ≥ 0) turns the mean into a weighted mean, so exact expectations (tabular
lab, tests) and count-aggregated buffers use the very same code as sampled minibatches.
``norm`` (optional) replaces the mean's denominator (the weights' sum, or the count): a
minibatch forwarded in micro-batches passes the whole minibatch's, so the micro-batch losses
add up to the minibatch loss exactly.

Notation (SPEC §2): Δ_q(y, y') = log q(y) − log q(y'), and
    h_t(pi; y, y') = Δ_pi − (tau/eta)·Δ_ref − ((eta − tau)/eta)·Δ_{pi_t},
the log-ratio of pi against the OMD prior pi_t^{1−tau/eta}·pi_ref^{tau/eta}.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

Tensor = torch.Tensor
Norm = float | Tensor | None


@dataclass(frozen=True)
class Pairs:
    """Log-probs of pairs (a, b); in the pairwise losses ``a`` is the winner."""

    policy_a: Tensor
    policy_b: Tensor
    ref_a: Tensor | None = None
    ref_b: Tensor | None = None
    old_a: Tensor | None = None
    old_b: Tensor | None = None
    weight: Tensor | None = None
    norm: Norm = None

    def delta(self, model: str) -> Tensor:
        """Δ_model(a, b) for model in {"policy", "ref", "old"}."""
        a, b = getattr(self, f"{model}_a"), getattr(self, f"{model}_b")
        if a is None or b is None:
            raise ValueError(f"this loss needs the pairs' {model} log-probs")
        return a - b

    def mean(self, values: Tensor) -> Tensor:
        return _mean(values, self.weight, self.norm)


@dataclass(frozen=True)
class Samples:
    """Log-probs of single responses: SPPO's samples, the proximal and XPO terms."""

    policy: Tensor
    old: Tensor | None = None
    weight: Tensor | None = None
    norm: Norm = None

    def mean(self, values: Tensor) -> Tensor:
        return _mean(values, self.weight, self.norm)


def _mean(values: Tensor, weight: Tensor | None, norm: Norm = None) -> Tensor:
    """The (weighted) mean over the last axis: leading axes are batches of losses."""
    total = values.sum(-1) if weight is None else (values * weight).sum(-1)
    if norm is not None:
        return total / norm
    if weight is None:
        return values.mean(-1)
    return total / weight.sum(-1).clamp_min(1e-12)


def check_step_sizes(eta: float | Tensor, tau: float | Tensor) -> None:
    """The OMD family needs 0 < tau < eta (eta is the inverse step size).

    Tensor values (one tau and eta per row of a vectorised tabular sweep) cannot be branched
    on here; the caller checks them before the loop.
    """
    if isinstance(eta, Tensor) or isinstance(tau, Tensor):
        return
    if not (tau > 0 and eta > tau):
        raise ValueError(f"need 0 < tau < eta, got tau={tau}, eta={eta}")


def omd_log_ratio(pairs: Pairs, *, eta: float, tau: float) -> Tensor:
    """h_t(pi; a, b): pi's log-ratio on the pair minus that of the OMD prior."""
    mix = tau / eta
    return pairs.delta("policy") - mix * pairs.delta("ref") - (1.0 - mix) * pairs.delta("old")


def inpo_loss(pairs: Pairs, *, eta: float, tau: float) -> Tensor:
    """INPO (Zhang et al. 2024): E[(h_t(pi; y_w, y_l) − 1/(2 eta))²] on self-play pairs.

    With pairs y, y' ~ pi_t and exact win probabilities the minimiser is the OMD step
    pi ∝ pi_t^{1−tau/eta} pi_ref^{tau/eta} exp(P(· ≻ pi_t)/eta) on the support of pi_t.
    """
    check_step_sizes(eta, tau)
    h = omd_log_ratio(pairs, eta=eta, tau=tau)
    return pairs.mean((h - 1.0 / (2.0 * eta)) ** 2)


def nash_md_loss(pairs: Pairs, *, eta: float, tau: float) -> Tensor:
    """Nash-MD's mirror-descent step, pi ∝ mu_t·exp(P(· ≻ mu_t)/eta) with
    mu_t ∝ pi_t^{1−tau/eta}·pi_ref^{tau/eta}, as a regression on pairs y, y' ~ mu_t.

    In log-ratio form this is exactly INPO's regression; the algorithm differs in sampling
    from (and playing against) the mixture mu_t instead of pi_t.
    """
    return inpo_loss(pairs, eta=eta, tau=tau)


def enpo_step_a_loss(pairs: Pairs, score_gap: Tensor, *, eta: float, tau: float,
                     alpha: float = 0.0, fresh: Samples | None = None) -> Tensor:
    """ENPO Step A: E[(h_t(pi; y, y') − (I(y) − I(y'))/eta)²] − alpha·E_{z̃~pi_t}[log pi(z̃)].

    ``score_gap`` is I(y) − I(y'), I(y) = mean_z P(y ≻ z), z ~ pi_t: the target estimates the
    OMD gradient against pi_t for any pair, whoever generated it. ``fresh`` holds the
    policy's log-probs of its own fresh samples z̃ ~ pi_t (the SFT-style proximal term).
    """
    check_step_sizes(eta, tau)
    h = omd_log_ratio(pairs, eta=eta, tau=tau)
    loss = pairs.mean((h - score_gap / eta) ** 2)
    if alpha and fresh is not None and fresh.policy.shape[-1]:
        loss = loss - alpha * fresh.mean(fresh.policy)
    return loss


def dpo_loss(pairs: Pairs, *, beta: float, label: Tensor | float = 1.0,
             base: str = "ref") -> Tensor:
    """DPO: softplus(−beta·(Δ_pi − Δ_base)), with an optional soft label P(a ≻ b).

    ``base`` names the anchor policy ("ref": pi_ref; "old": pi_t, DENPO's Step B). A soft
    label p gives p·softplus(−βd) + (1−p)·softplus(βd), whose minimiser is the finite
    Bradley–Terry fit βd = logit(p); p = 1 is the usual hard-label loss.
    """
    if beta <= 0:
        raise ValueError(f"need beta > 0, got {beta}")
    margin = beta * (pairs.delta("policy") - pairs.delta(base))
    return pairs.mean(label * F.softplus(-margin) + (1.0 - label) * F.softplus(margin))


def online_dpo_loss(pairs: Pairs, *, beta: float) -> Tensor:
    """Online DPO: the DPO loss against pi_ref on pairs sampled from pi_t and judged."""
    return dpo_loss(pairs, beta=beta)


def online_ipo_loss(pairs: Pairs, *, beta: float) -> Tensor:
    """Online IPO (Azar et al. 2023): (Δ_pi − Δ_ref − 1/(2 beta))²."""
    if beta <= 0:
        raise ValueError(f"need beta > 0, got {beta}")
    margin = pairs.delta("policy") - pairs.delta("ref")
    return pairs.mean((margin - 1.0 / (2.0 * beta)) ** 2)


def xpo_loss(pairs: Pairs, ref_samples: Samples, *, beta: float, alpha: float) -> Tensor:
    """XPO (Xie et al. 2024): DPO loss + alpha·E_{ỹ~pi_ref}[log pi(ỹ)].

    The plus sign is the paper's optimism: lowering pi on what pi_ref already covers pushes
    mass elsewhere. (The public release of the ENPO paper's code has the sign inverted.)
    """
    return online_dpo_loss(pairs, beta=beta) + alpha * ref_samples.mean(ref_samples.policy)


def sppo_loss(samples: Samples, win_rate: Tensor, *, eta: float | Tensor) -> Tensor:
    """SPPO (Wu et al. 2024): (log pi(y)/pi_t(y) − (P̂(y ≻ pi_t) − 1/2)/eta)²."""
    if not isinstance(eta, Tensor) and eta <= 0:
        raise ValueError(f"need eta > 0, got {eta}")
    if samples.old is None:
        raise ValueError("sppo_loss needs the samples' pi_t log-probs (Samples.old)")
    return samples.mean((samples.policy - samples.old - (win_rate - 0.5) / eta) ** 2)


def denpo_step_b_loss(pairs: Pairs, *, beta: float, label: Tensor | float = 1.0) -> Tensor:
    """DENPO Step B: DPO against pi_t on synthetic pairs ranked by s·(log pi_{t+1} − log pi_t).

    ``pairs.policy_*`` are the adversary's log-probs. With soft labels σ(s·(r(y) − r(y'))),
    r = log(pi_{t+1}/pi_t), the minimiser over all policies is the tilted adversary
    pihat ∝ pi_t·(pi_{t+1}/pi_t)^{s/beta}; hard labels (label = 1) are the paper's form.
    """
    return dpo_loss(pairs, beta=beta, label=label, base="old")


def step_b_soft_label(score_w: Tensor, score_l: Tensor, *, s: float) -> Tensor:
    """σ(s·(r(y_w) − r(y_l))): the Bradley–Terry label whose DPO fit is the tilted adversary."""
    return torch.sigmoid(s * (score_w - score_l))


def denpo_explore_step_b_loss(pairs: Pairs, *, beta: float, temperature: float,
                              label: Tensor | float = 1.0) -> Tensor:
    """DENPO-explore Step B: DPO against pi_t^{1/T_e} instead of pi_t (T_e = ``temperature``).

    The margin is β·(Δ_pihat − Δ_{pi_t}) + κ·Δ_{pi_t} with κ = β·(1 − 1/T_e). With soft labels
    σ(s·(r(a) − r(b))), r = log(pi_{t+1}/pi_t), on pairs that connect the responses, the
    minimiser is pihat ∝ pi_t^{1/T_e}·(pi_{t+1}/pi_t)^{s/beta}: DENPO's tilt applied to the
    tempered pi_t, which lifts the responses pi_t barely samples. T_e = 1 is DENPO's Step B.
    """
    if temperature < 1.0:
        raise ValueError(f"need temperature >= 1, got {temperature}")
    if beta <= 0:
        raise ValueError(f"need beta > 0, got {beta}")
    kappa = beta * (1.0 - 1.0 / temperature)
    old = pairs.delta("old")
    margin = beta * (pairs.delta("policy") - old) + kappa * old
    return pairs.mean(label * F.softplus(-margin) + (1.0 - label) * F.softplus(margin))
