"""Every loss against its closed form, on tabular policies with exact expectations.

The minimiser of each loss over all policies (log-softmax of free logits) is found with the
lab's Newton fitter and compared with the update the algorithm is meant to perform.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.special import expit, log_softmax, logit

from nlhf import losses
from nlhf.lab.algorithms.base import newton_minimise
from nlhf.lab.algorithms.omd import omd_step
from nlhf.lab.games import cyclic, gbpm

TAU, ETA = 0.1, 0.5
RIDGE = 1e-13  # only fixes the softmax-invariant constant


def _game(seed=0):
    return gbpm(6, contexts=1, tau=TAU, seed=seed)


def _pairs(K):
    a, b = np.meshgrid(np.arange(K), np.arange(K), indexing="ij")
    return torch.as_tensor(a.ravel()), torch.as_tensor(b.ravel())


def _fit(objective, start, *data):
    """Minimise objective(theta (..., K), *data) + tiny ridge; returns log pi (K,).

    ``objective`` returns one value per leading index (the Newton points of a pass)."""

    center = torch.as_tensor(start)

    def full(theta):  # theta (..., B=1, C=1, K) -> (..., 1)
        logits = theta[..., 0, 0, :]
        value = objective(logits, *data) + RIDGE * ((logits - center) ** 2).sum(-1)
        return value[..., None]

    return newton_minimise(full, start[None, None], ())[0, 0]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_inpo_minimiser_is_the_omd_step(seed):
    game = _game(seed)
    P, ref = game.P[0], game.ref[0]
    old = log_softmax(np.log(ref) + np.random.default_rng(seed).normal(size=6))
    pi_t = np.exp(old)
    a, b = _pairs(6)
    # exact expectation: y, y' ~ pi_t, y wins w.p. P(y ≻ y'): weight of (w=a, l=b)
    weight = torch.as_tensor((pi_t[:, None] * pi_t[None, :] * P).ravel())
    ref_t, old_t = torch.as_tensor(np.log(ref)), torch.as_tensor(old)

    def objective(theta, a, b, weight, ref_t, old_t):
        lp = torch.log_softmax(theta, -1)
        pairs = losses.Pairs(lp[..., a], lp[..., b], ref_t[a], ref_t[b], old_t[a], old_t[b], weight)
        return losses.inpo_loss(pairs, eta=ETA, tau=TAU)

    fitted = _fit(objective, old, a, b, weight, ref_t, old_t)
    expected = omd_step(old[None], np.log(ref)[None], P[None], TAU, ETA)[0]
    assert np.abs(fitted - expected).max() < 1e-6


@pytest.mark.parametrize("alpha", [0.0])
def test_enpo_step_a_minimiser_is_the_omd_step_for_any_pair_distribution(alpha):
    game = cyclic(5, contexts=1, tau=TAU, seed=4)
    P, ref = game.P[0], game.ref[0]
    old = log_softmax(np.log(ref) + np.random.default_rng(1).normal(size=5))
    pi_t = np.exp(old)
    explorer = np.random.default_rng(2).dirichlet(np.ones(5))  # any pihat_t
    a, b = _pairs(5)
    weight = torch.as_tensor((pi_t[:, None] * explorer[None, :]).ravel())
    score = torch.as_tensor(P @ pi_t)  # I(y) = P(y ≻ pi_t) exactly
    ref_t, old_t = torch.as_tensor(np.log(ref)), torch.as_tensor(old)

    def objective(theta, a, b, weight, score, ref_t, old_t):
        lp = torch.log_softmax(theta, -1)
        pairs = losses.Pairs(lp[..., a], lp[..., b], ref_t[a], ref_t[b], old_t[a], old_t[b], weight)
        return losses.enpo_step_a_loss(pairs, score[a] - score[b], eta=ETA, tau=TAU, alpha=alpha)

    fitted = _fit(objective, old, a, b, weight, score, ref_t, old_t)
    expected = omd_step(old[None], np.log(ref)[None], P[None], TAU, ETA)[0]
    assert np.abs(fitted - expected).max() < 1e-6


def test_enpo_proximal_term_is_minus_alpha_mean_logp():
    x = torch.tensor([-1.0, -2.0])
    zeros = torch.zeros(2)
    pairs = losses.Pairs(x, zeros, zeros, zeros, zeros, zeros)
    base = losses.enpo_step_a_loss(pairs, zeros, eta=ETA, tau=TAU)
    with_prox = losses.enpo_step_a_loss(
        pairs, zeros, eta=ETA, tau=TAU, alpha=0.3,
        fresh=losses.Samples(torch.tensor([-4.0, -2.0])),
    )
    assert float(with_prox - base) == pytest.approx(0.3 * 3.0)


@pytest.mark.parametrize("s", [1.0, -1.0, 0.5])
def test_denpo_step_b_minimiser_is_the_tilted_adversary(s):
    beta = 0.05
    rng = np.random.default_rng(3)
    old = log_softmax(rng.normal(size=6))
    new = log_softmax(old + 0.05 * rng.normal(size=6))
    pi_t = np.exp(old)
    a, b = _pairs(6)
    weight = torch.as_tensor((pi_t[:, None] * pi_t[None, :]).ravel())  # fresh candidates ~ pi_t
    gain = torch.as_tensor(new - old)
    label = losses.step_b_soft_label(gain[a], gain[b], s=s)
    old_t = torch.as_tensor(old)

    def objective(theta, a, b, weight, label, old_t):
        lp = torch.log_softmax(theta, -1)
        pairs = losses.Pairs(lp[..., a], lp[..., b], old_a=old_t[a], old_b=old_t[b], weight=weight)
        return losses.denpo_step_b_loss(pairs, beta=beta, label=label)

    fitted = _fit(objective, old, a, b, weight, label, old_t)
    expected = log_softmax(old + (s / beta) * (new - old))
    assert np.abs(fitted - expected).max() < 1e-6


def test_nash_md_minimiser_is_the_mirror_step_from_the_mixture():
    game = _game(5)
    P, ref = game.P[0], game.ref[0]
    old = log_softmax(np.log(ref) + np.random.default_rng(5).normal(size=6))
    mix = log_softmax((1 - TAU / ETA) * old + (TAU / ETA) * np.log(ref))
    mu = np.exp(mix)
    a, b = _pairs(6)
    weight = torch.as_tensor((mu[:, None] * mu[None, :] * P).ravel())
    ref_t, old_t = torch.as_tensor(np.log(ref)), torch.as_tensor(old)

    def objective(theta, a, b, weight, ref_t, old_t):
        lp = torch.log_softmax(theta, -1)
        pairs = losses.Pairs(lp[..., a], lp[..., b], ref_t[a], ref_t[b], old_t[a], old_t[b], weight)
        return losses.nash_md_loss(pairs, eta=ETA, tau=TAU)

    fitted = _fit(objective, old, a, b, weight, ref_t, old_t)
    expected = log_softmax(mix + (P @ mu) / ETA)
    assert np.abs(fitted - expected).max() < 1e-6


def test_soft_label_dpo_minimiser_is_the_bradley_terry_fit():
    """d/dm of p·softplus(−βm) + (1−p)·softplus(βm) vanishes at βm = logit(p) (and is convex)."""
    beta, p = 0.5, 0.8
    zero = torch.zeros(1, dtype=torch.float64)
    for offset, sign in [(0.0, 0), (-0.1, -1), (0.1, 1)]:
        m = torch.tensor([logit(p) / beta + offset], dtype=torch.float64, requires_grad=True)
        loss = losses.dpo_loss(losses.Pairs(m, zero, zero, zero), beta=beta, label=p)
        (g,) = torch.autograd.grad(loss, m)
        if sign == 0:
            assert abs(float(g)) < 1e-12
        else:
            assert np.sign(float(g)) == sign


def test_pairwise_losses_match_hand_computation():
    lw, ll = torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -1.0])
    rw, rl = torch.tensor([-1.5, -2.0]), torch.tensor([-1.5, -2.0])
    beta = 0.5
    margins = torch.tensor([1.0, -2.0])  # (lw − ll) − (rw − rl)
    pairs = losses.Pairs(lw, ll, rw, rl)
    assert float(losses.online_dpo_loss(pairs, beta=beta)) == pytest.approx(
        float(F.softplus(-beta * margins).mean())
    )
    assert float(losses.online_ipo_loss(pairs, beta=beta)) == pytest.approx(
        float(((margins - 1.0) ** 2).mean())
    )
    ref_samples = losses.Samples(torch.tensor([-4.0, -6.0]))
    xpo = losses.xpo_loss(pairs, ref_samples, beta=beta, alpha=0.1)
    assert float(xpo - losses.online_dpo_loss(pairs, beta=beta)) == pytest.approx(0.1 * -5.0)
    win = torch.tensor([0.75, 0.25])
    assert float(losses.sppo_loss(losses.Samples(lw, old=rw), win, eta=2.0)) == pytest.approx(
        float(((lw - rw - (win - 0.5) / 2.0) ** 2).mean())
    )
    omd = losses.Pairs(lw, ll, rw, rl, rw, rl)
    h = losses.omd_log_ratio(omd, eta=ETA, tau=TAU)
    assert float(h[0]) == pytest.approx(float((lw - ll)[0] - (rw - rl)[0]))
    assert float(losses.inpo_loss(omd, eta=ETA, tau=TAU)) == pytest.approx(
        float(((h - 1 / (2 * ETA)) ** 2).mean())
    )


def test_weights_equal_repetition():
    lw, ll = torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -1.0])
    z = torch.zeros(2)
    weighted = losses.inpo_loss(losses.Pairs(lw, ll, z, z, z, z, torch.tensor([2.0, 1.0])),
                                eta=ETA, tau=TAU)
    z3 = torch.zeros(3)
    repeated = losses.inpo_loss(losses.Pairs(lw[[0, 0, 1]], ll[[0, 0, 1]], z3, z3, z3, z3),
                                eta=ETA, tau=TAU)
    assert float(weighted) == pytest.approx(float(repeated))


@pytest.mark.parametrize(("eta", "tau"), [(0.1, 0.1), (0.05, 0.1), (0.1, 0.0)])
def test_omd_losses_reject_tau_not_below_eta(eta, tau):
    z = torch.zeros(1)
    with pytest.raises(ValueError, match="tau < eta"):
        losses.inpo_loss(losses.Pairs(z, z, z, z, z, z), eta=eta, tau=tau)


def test_soft_label_is_sigmoid_of_scaled_gain():
    assert float(losses.step_b_soft_label(torch.tensor(1.0), torch.tensor(0.0), s=2.0)) == (
        pytest.approx(expit(2.0))
    )
