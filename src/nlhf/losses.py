"""Every algorithm's loss, written once over tensors of sequence log-probabilities.

The same functions drive the tabular policies of the lab and the language models of the
trainer. Inputs are 1-D tensors with one entry per pair (or per sample); ``logp_*`` are sums
of token log-probs of the response (EOS included) under the trained policy, ``ref_*`` under
pi_ref, ``old_*`` under the current iterate pi_t. ``weight`` (optional, ≥ 0) turns the mean
into a weighted mean, so exact expectations (tabular lab, tests) and count-aggregated buffers
use the very same code as sampled minibatches. ``norm`` (optional) replaces the mean's
denominator (the weights' sum, or the count): a minibatch forwarded in micro-batches passes
the whole minibatch's, so the micro-batch losses add up to the minibatch loss exactly.

Notation (SPEC §2): Δ_q(y, y') = log q(y) − log q(y'), and
    h_t(pi; y, y') = Δ_pi − (tau/eta)·Δ_ref − ((eta − tau)/eta)·Δ_{pi_t},
the log-ratio of pi against the OMD prior pi_t^{1−tau/eta}·pi_ref^{tau/eta}.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


Norm = float | Tensor | None


def _mean(values: Tensor, weight: Tensor | None, norm: Norm = None) -> Tensor:
    total = values.sum() if weight is None else (values * weight).sum()
    if norm is not None:
        return total / norm
    if weight is None:
        return values.mean()
    return total / weight.sum().clamp_min(1e-12)


def check_step_sizes(eta: float, tau: float) -> None:
    """The OMD family needs 0 < tau < eta (eta is the inverse step size)."""
    if not (tau > 0 and eta > tau):
        raise ValueError(f"need 0 < tau < eta, got tau={tau}, eta={eta}")


def omd_log_ratio(
    logp_a: Tensor,
    logp_b: Tensor,
    ref_a: Tensor,
    ref_b: Tensor,
    old_a: Tensor,
    old_b: Tensor,
    eta: float,
    tau: float,
) -> Tensor:
    """h_t(pi; a, b): pi's log-ratio on the pair minus that of the OMD prior."""
    mix = tau / eta
    return (logp_a - logp_b) - mix * (ref_a - ref_b) - (1.0 - mix) * (old_a - old_b)


def omd_regression_loss(h: Tensor, target: Tensor | float, weight: Tensor | None = None,
                        norm: Norm = None) -> Tensor:
    """E[(h − target)²]: its minimiser sets pi's log-ratio to the OMD step on the pairs."""
    return _mean((h - target) ** 2, weight, norm)


def inpo_loss(
    logp_w: Tensor,
    logp_l: Tensor,
    ref_w: Tensor,
    ref_l: Tensor,
    old_w: Tensor,
    old_l: Tensor,
    eta: float,
    tau: float,
    weight: Tensor | None = None,
    norm: Norm = None,
) -> Tensor:
    """INPO (Zhang et al. 2024): E[(h_t(pi; y_w, y_l) − 1/(2 eta))²] on self-play pairs.

    With pairs y, y' ~ pi_t and exact win probabilities the minimiser is the OMD step
    pi ∝ pi_t^{1−tau/eta} pi_ref^{tau/eta} exp(P(· ≻ pi_t)/eta) on the support of pi_t.
    Nash-MD (Munos et al. 2023) uses this same loss with pairs drawn from the geometric
    mixture pi_t^{1−tau/eta}·pi_ref^{tau/eta}: only the sampling differs, see algorithms.
    """
    check_step_sizes(eta, tau)
    h = omd_log_ratio(logp_w, logp_l, ref_w, ref_l, old_w, old_l, eta, tau)
    return omd_regression_loss(h, 1.0 / (2.0 * eta), weight, norm)


def enpo_step_a_loss(
    logp_a: Tensor,
    logp_b: Tensor,
    ref_a: Tensor,
    ref_b: Tensor,
    old_a: Tensor,
    old_b: Tensor,
    score_a: Tensor,
    score_b: Tensor,
    eta: float,
    tau: float,
    alpha: float = 0.0,
    logp_fresh: Tensor | None = None,
    weight: Tensor | None = None,
    fresh_weight: Tensor | None = None,
    norm: Norm = None,
    fresh_norm: Norm = None,
) -> Tensor:
    """ENPO Step A: E[(h_t(pi; y, y') − (I(y) − I(y'))/eta)²] − alpha·E_{z̃~pi_t}[log pi(z̃)].

    ``score_*`` are I(y) = mean_z P(y ≻ z), z ~ pi_t: the target estimates the OMD gradient
    against pi_t for any pair, whoever generated it. ``logp_fresh`` are the policy's
    log-probs of its own fresh samples z̃ ~ pi_t (the SFT-style proximal regulariser).
    """
    check_step_sizes(eta, tau)
    h = omd_log_ratio(logp_a, logp_b, ref_a, ref_b, old_a, old_b, eta, tau)
    loss = omd_regression_loss(h, (score_a - score_b) / eta, weight, norm)
    if alpha and logp_fresh is not None and len(logp_fresh):
        loss = loss - alpha * _mean(logp_fresh, fresh_weight, fresh_norm)
    return loss


def dpo_loss(
    logp_w: Tensor,
    logp_l: Tensor,
    base_w: Tensor,
    base_l: Tensor,
    beta: float,
    label: Tensor | float = 1.0,
    weight: Tensor | None = None,
    norm: Norm = None,
) -> Tensor:
    """DPO: softplus(−beta·(Δ_pi − Δ_base)), with an optional soft label P(w ≻ l).

    A soft label p gives p·softplus(−βd) + (1−p)·softplus(βd), whose minimiser is the
    finite Bradley–Terry fit βd = logit(p); p = 1 is the usual hard-label loss.
    """
    if beta <= 0:
        raise ValueError(f"need beta > 0, got {beta}")
    margin = beta * ((logp_w - logp_l) - (base_w - base_l))
    values = label * F.softplus(-margin) + (1.0 - label) * F.softplus(margin)
    return _mean(values, weight, norm)


def online_dpo_loss(
    logp_w: Tensor,
    logp_l: Tensor,
    ref_w: Tensor,
    ref_l: Tensor,
    beta: float,
    weight: Tensor | None = None,
    norm: Norm = None,
) -> Tensor:
    """Online DPO: the DPO loss against pi_ref on pairs sampled from pi_t and judged."""
    return dpo_loss(logp_w, logp_l, ref_w, ref_l, beta, 1.0, weight, norm)


def online_ipo_loss(
    logp_w: Tensor,
    logp_l: Tensor,
    ref_w: Tensor,
    ref_l: Tensor,
    beta: float,
    weight: Tensor | None = None,
    norm: Norm = None,
) -> Tensor:
    """Online IPO (Azar et al. 2023): (Δ_pi − Δ_ref − 1/(2 beta))²."""
    if beta <= 0:
        raise ValueError(f"need beta > 0, got {beta}")
    margin = (logp_w - logp_l) - (ref_w - ref_l)
    return _mean((margin - 1.0 / (2.0 * beta)) ** 2, weight, norm)


def xpo_loss(
    logp_w: Tensor,
    logp_l: Tensor,
    ref_w: Tensor,
    ref_l: Tensor,
    beta: float,
    alpha: float,
    logp_ref_samples: Tensor,
    weight: Tensor | None = None,
    ref_sample_weight: Tensor | None = None,
    norm: Norm = None,
    ref_sample_norm: Norm = None,
) -> Tensor:
    """XPO (Xie et al. 2024): DPO loss + alpha·E_{ỹ~pi_ref}[log pi(ỹ)].

    The plus sign is the paper's optimism: lowering pi on what pi_ref already covers pushes
    mass elsewhere. (The public release of the ENPO paper's code has the sign inverted.)
    """
    loss = online_dpo_loss(logp_w, logp_l, ref_w, ref_l, beta, weight, norm)
    return loss + alpha * _mean(logp_ref_samples, ref_sample_weight, ref_sample_norm)


def sppo_loss(
    logp: Tensor,
    old: Tensor,
    win_rate: Tensor,
    eta: float,
    weight: Tensor | None = None,
    norm: Norm = None,
) -> Tensor:
    """SPPO (Wu et al. 2024): (log pi(y)/pi_t(y) − (P̂(y ≻ pi_t) − 1/2)/eta)²."""
    if eta <= 0:
        raise ValueError(f"need eta > 0, got {eta}")
    return _mean((logp - old - (win_rate - 0.5) / eta) ** 2, weight, norm)


def nash_md_loss(
    logp_w: Tensor,
    logp_l: Tensor,
    ref_w: Tensor,
    ref_l: Tensor,
    old_w: Tensor,
    old_l: Tensor,
    eta: float,
    tau: float,
    weight: Tensor | None = None,
    norm: Norm = None,
) -> Tensor:
    """Nash-MD's mirror-descent step, pi ∝ mu_t·exp(P(· ≻ mu_t)/eta) with
    mu_t ∝ pi_t^{1−tau/eta}·pi_ref^{tau/eta}, as a regression on pairs y, y' ~ mu_t.

    In log-ratio form this is exactly INPO's regression; the algorithm differs in sampling
    from (and playing against) the mixture mu_t instead of pi_t.
    """
    return inpo_loss(logp_w, logp_l, ref_w, ref_l, old_w, old_l, eta, tau, weight, norm)


def denpo_step_b_loss(
    adv_w: Tensor,
    adv_l: Tensor,
    old_w: Tensor,
    old_l: Tensor,
    beta: float,
    label: Tensor | float = 1.0,
    weight: Tensor | None = None,
    norm: Norm = None,
) -> Tensor:
    """DENPO Step B: DPO against pi_t on synthetic pairs ranked by s·(log pi_{t+1} − log pi_t).

    With soft labels σ(s·(r(y) − r(y'))), r = log(pi_{t+1}/pi_t), the minimiser over all
    policies is the tilted adversary pihat ∝ pi_t·(pi_{t+1}/pi_t)^{s/beta}; hard labels
    (label = 1) are the paper's practical form.
    """
    return dpo_loss(adv_w, adv_l, old_w, old_l, beta, label, weight, norm)


def step_b_soft_label(score_w: Tensor, score_l: Tensor, s: float) -> Tensor:
    """σ(s·(r(y_w) − r(y_l))): the Bradley–Terry label whose DPO fit is the tilted adversary."""
    return torch.sigmoid(s * (score_w - score_l))
