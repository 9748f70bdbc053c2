"""DENPO-explore: its Step B loss against the closed form, and its regret on a needle."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import log_softmax

from nlhf import losses
from nlhf.lab.algorithms import ALGORITHMS, LabSettings
from nlhf.lab.games import gap_per_context, needle
from test_losses import _fit, _pairs


@pytest.mark.parametrize(("s", "temperature"), [(1.0, 2.0), (1.0, 4.0), (-1.0, 1.5), (0.5, 1.0)])
def test_minimiser_is_the_tilted_tempered_adversary(s, temperature):
    """All pairs, weighted by the tempered pi_t: the fit is pi_t^{1/T_e}·(pi_{t+1}/pi_t)^{s/β}."""
    beta, K = 0.05, 6
    rng = np.random.default_rng(4)
    old = log_softmax(rng.normal(size=K))
    new = log_softmax(old + 0.05 * rng.normal(size=K))
    hot = np.exp(log_softmax(old / temperature))
    a, b = _pairs(K)
    weight = torch.as_tensor((hot[:, None] * hot[None, :]).ravel())
    gain = torch.as_tensor(new - old)
    label = losses.step_b_soft_label(gain[a], gain[b], s=s)
    old_t = torch.as_tensor(old)

    def objective(theta, a, b, weight, label, old_t):
        lp = torch.log_softmax(theta, -1)
        pairs = losses.Pairs(lp[..., a], lp[..., b], old_a=old_t[a], old_b=old_t[b], weight=weight)
        return losses.denpo_explore_step_b_loss(pairs, beta=beta, temperature=temperature,
                                                label=label)

    fitted = _fit(objective, old, a, b, weight, label, old_t)
    expected = log_softmax(old / temperature + (s / beta) * (new - old))
    assert np.abs(fitted - expected).max() < 1e-6


def test_temperature_one_is_denpo_step_b():
    rng = np.random.default_rng(0)
    p, o = (torch.as_tensor(rng.normal(size=(2, 5))) for _ in range(2))
    pairs = losses.Pairs(p[0], p[1], old_a=o[0], old_b=o[1])
    label = torch.as_tensor(rng.uniform(size=5))
    assert float(losses.denpo_explore_step_b_loss(pairs, beta=0.1, temperature=1.0, label=label)
                 ) == pytest.approx(float(losses.denpo_step_b_loss(pairs, beta=0.1, label=label)))
    with pytest.raises(ValueError, match="temperature"):
        losses.denpo_explore_step_b_loss(pairs, beta=0.1, temperature=0.5)


def test_denpo_explore_regret_is_below_inpos_on_a_needle():
    tau = 0.025
    game = needle(8, 0.25, tau)
    regret = {}
    for name in ("inpo", "denpo-explore"):
        algo = ALGORITHMS[name](game, LabSettings(tau=tau), 3, seed=0)
        total = 0.0
        for _ in range(150):
            total += float(gap_per_context(game.P, game.ref, tau, algo.policy).mean())
            algo.run_round()
        regret[name] = total
    assert regret["denpo-explore"] < 0.8 * regret["inpo"], regret


@pytest.mark.parametrize("sampling", ["response", "token"])
def test_llm_denpo_explore_runs_one_iteration(tmp_path, sampling):
    import json

    from nlhf.llm.loop import train
    from test_train import lora_b_norm, tiny_config

    cfg = tiny_config(tmp_path, "denpo-explore", iterations=1,
                      hparams={"explore_temperature": 2.0, "pairs_per_prompt": 2,
                               "explore_sampling": sampling})
    run = train(cfg, progress=False)
    assert lora_b_norm(run / "adapters/iter_1/policy") > 0
    assert lora_b_norm(run / "adapters/iter_1/adversary") > 0
    m = json.loads((run / "metrics.jsonl").read_text())
    assert m["step_b_pairs"] == 16  # 4 prompts x 2 pairs x (y', u), (u, u')
    assert np.isfinite(m["step_b_loss"]) and np.isfinite(m["step_a_loss"])


@pytest.mark.parametrize(("sampling", "per_pair"), [("response", 4), ("token", 2)])
def test_plan_counts_the_tempered_candidates(tmp_path, sampling, per_pair):
    from nlhf.llm.plan import per_prompt_counts
    from test_train import tiny_config

    cfg = tiny_config(tmp_path, "denpo-explore", hparams={"explore_sampling": sampling})
    counts = per_prompt_counts(cfg)
    assert counts["generations"]["explore (~ pi_t)"] == per_pair  # candidates of u, u'
    assert counts["generations_total"] == 1 + 2 + 1 + per_pair  # y, z x 2, y', candidates


@pytest.mark.parametrize("temperature", [2.0, 4.0])
def test_tempered_resample_draws_from_the_tempered_policy(temperature):
    """One pick from a large pool of pi's samples is distributed as pi^{1/T_e}/Z."""
    from nlhf.llm.algorithms.denpo_explore import tempered_resample

    pi = np.array([0.6, 0.25, 0.1, 0.04, 0.01])
    target = pi ** (1 / temperature) / (pi ** (1 / temperature)).sum()
    rng = np.random.default_rng(0)
    draws, pool_size = 20000, 200
    counts = np.zeros(len(pi))
    for _ in range(draws):
        pool = rng.choice(len(pi), size=pool_size, p=pi)
        counts[pool[tempered_resample(np.log(pi[pool]), temperature, rng, n=1)[0]]] += 1
    freq = counts / draws
    # sampling error sd ≤ 0.0035 per entry; self-normalised resampling's bias is O(1/pool)
    np.testing.assert_allclose(freq, target, atol=0.015)
    assert abs(freq[-1] - pi[-1]) > 5 * 0.0035  # and it is not pi itself: the rare one rises


def test_tempered_resample_picks_distinct_samples():
    from nlhf.llm.algorithms.denpo_explore import tempered_resample

    rng = np.random.default_rng(1)
    for _ in range(100):
        a, b = tempered_resample(np.log(rng.dirichlet(np.ones(4))), 2.0, rng)
        assert a != b
