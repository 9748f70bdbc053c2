"""Tabular algorithms: bandit feedback only, reproducibility, iterates, oracle bookkeeping."""

from __future__ import annotations

import numpy as np
import pytest

from nlhf.lab.algorithms import ALGORITHMS, ENPO, OMD, LabSettings
from nlhf.lab.algorithms.base import memory_prior, omd_prior
from nlhf.lab.algorithms.buffer import PairBuffer
from nlhf.lab.algorithms.exploration import EllipticalOracle
from nlhf.lab.algorithms.omd import omd_step
from nlhf.lab.games import gap, gbpm, needle, solve_nash


class _NoPreferences:
    """Stands in for the game after construction: reading P is an error."""

    def __init__(self, game):
        self._game = game

    def __getattr__(self, name):
        if name == "P":
            raise AssertionError("a bandit algorithm read the preference matrix")
        return getattr(self._game, name)


@pytest.mark.parametrize("name", [n for n in ALGORITHMS if n != "omd"])
def test_bandit_algorithms_never_read_P(name):
    game = gbpm(5, contexts=2, tau=0.1, seed=0)
    algo = ALGORITHMS[name](game, LabSettings(tau=0.1, pairs=4, comparators=2), 2, seed=0)
    algo.game = _NoPreferences(game)
    for _ in range(5):
        algo.run_round()
    assert algo.oracle.queries > 0
    assert np.allclose(algo.policy.sum(-1), 1.0)
    assert np.isfinite(algo.logp).all()


@pytest.mark.parametrize("name", ["inpo", "enpo", "denpo", "oracle", "xpo"])
def test_same_seed_same_trajectory(name):
    game = needle(6, 0.25, 0.1)

    def trajectory():
        algo = ALGORITHMS[name](game, LabSettings(tau=0.1), 2, seed=7)
        out = []
        for _ in range(8):
            algo.run_round()
            out.append(algo.policy.copy())
        return np.stack(out)

    assert np.array_equal(trajectory(), trajectory())


def test_full_information_omd_converges_to_nash():
    game = gbpm(6, contexts=2, tau=0.2, seed=2)
    algo = OMD(game, LabSettings(tau=0.2, eta_schedule="constant"), 1)
    for _ in range(300):
        algo.run_round()
    pi_star = solve_nash(game.P, game.ref, game.tau)
    assert np.abs(algo.policy[0] - pi_star).max() < 1e-8
    assert gap(game, algo.policy[0]) < 1e-12


def test_enpo_returns_average_and_last_iterates():
    game = needle(6, 0.25, 0.1)
    algo = ENPO(game, LabSettings(tau=0.1), 2, seed=0)
    played = []
    for _ in range(6):
        played.append(algo.policy.copy())
        algo.run_round()
    assert np.allclose(algo.average_policy, np.mean(played, axis=0))
    assert not np.allclose(algo.policy, algo.average_policy)


def test_enpo_finds_the_needle_that_inpo_misses():
    tau = 0.025
    game = needle(8, 0.25, tau)
    final = {}
    for name in ("inpo", "enpo"):
        algo = ALGORITHMS[name](game, LabSettings(tau=tau), 2, seed=0)
        for _ in range(150):
            algo.run_round()
        final[name] = algo.policy[:, 0, 0]
    assert (final["enpo"] > 0.9).all()
    assert (final["inpo"] < 1e-3).all()


def test_memory_prior_is_the_omd_step_under_the_remembered_labels():
    game = gbpm(6, contexts=2, tau=0.1, seed=1)
    rng = np.random.default_rng(0)
    logp = np.log(rng.dirichlet(np.ones(6), size=(1, 2)))
    log_ref = np.log(game.ref)[None]
    tau, eta = 0.1, 0.6
    nothing = np.full_like(logp, np.nan)
    assert np.allclose(memory_prior(logp, log_ref, tau, eta, nothing),
                       omd_prior(logp, log_ref, tau, eta), atol=1e-12)
    # Every response labelled with its exact win-rate against pi_t: the exact OMD step
    # (a constant offset of the labels cancels in the normalisation).
    wins = np.einsum("cij,bcj->bci", game.P, np.exp(logp))
    exact = omd_step(logp, log_ref, game.P[None], tau, eta)
    assert np.allclose(memory_prior(logp, log_ref, tau, eta, wins), exact, atol=1e-12)
    # Part labelled: an unlabelled response moves as OMD's zero-advantage step does, a
    # labelled one by its advantage over pi_t, which ties itself: label − 1/2.
    part = wins.copy()
    part[..., 3:] = np.nan
    got = memory_prior(logp, log_ref, tau, eta, part)
    prior = omd_prior(logp, log_ref, tau, eta)
    shift = got - prior  # log-normaliser difference (per context) + advantage / eta
    assert np.allclose(shift[..., 3:], shift[..., 3:4])
    assert np.allclose(shift[..., :3] - shift[..., 3:4], (wins[..., :3] - 0.5) / eta)


def test_enpo_memory_prior_remembers_labels_and_rejects_unknown_priors():
    game = needle(6, 0.25, 0.1)
    algo = ENPO(game, LabSettings(tau=0.1, step_a_prior="memory"), 2, seed=0)
    for _ in range(5):
        algo.run_round()
    seen = ~np.isnan(algo.labels)
    assert seen.any() and ((algo.labels[seen] >= 0) & (algo.labels[seen] <= 1)).all()
    with pytest.raises(ValueError, match="step_a_prior must be 'omd' or 'memory'"):
        ENPO(game, LabSettings(tau=0.1, step_a_prior="last"), 1)


def test_elliptical_oracle_keeps_the_exact_inverse():
    rng = np.random.default_rng(0)
    K, lam = 5, 0.5
    oracle = EllipticalOracle(2, 1, K, lam)
    cov = np.stack([np.eye(K) * lam] * 2)
    ctx = np.zeros(2, dtype=int)
    for _ in range(20):
        y, y2 = rng.integers(0, K, 2), rng.integers(0, K, 2)
        oracle.update(ctx, y, y2)
        for b in range(2):
            v = np.eye(K)[y[b]] - np.eye(K)[y2[b]]
            cov[b] += np.outer(v, v)
    assert np.allclose(oracle.cov_inv[:, 0], np.linalg.inv(cov), atol=1e-10)
    probs = rng.dirichlet(np.ones(K), size=(2, 1))
    chosen = oracle.choose(probs, ctx)
    for b in range(2):
        inv = np.linalg.inv(cov[b])
        bonus = [
            (np.eye(K)[a] - probs[b, 0]) @ inv @ (np.eye(K)[a] - probs[b, 0]) for a in range(K)
        ]
        assert chosen[b] == int(np.argmax(bonus))


def test_pair_buffer_grows_and_draws_only_stored_pairs():
    buf = PairBuffer(2, capacity=2)
    for i in range(5):
        buf.append(np.full((2, 3), i), np.full((2, 3), i), np.full((2, 3), i + 1))
    assert buf.size == 15
    ctx, y, y2 = buf.draw(np.random.default_rng(0), 50)
    assert set(np.unique(ctx)) <= set(range(5))
    assert np.array_equal(y2, y + 1)


def test_eta_schedule():
    st = LabSettings(tau=0.1)
    assert st.base_eta == pytest.approx(0.65)
    assert st.eta_at(0) == pytest.approx(0.65)
    assert st.eta_at(99) == pytest.approx(10.0)
    assert LabSettings(tau=0.1, eta_schedule="constant").eta_at(99) == pytest.approx(0.65)
