"""Exact games: validation, the Nash solver, and the closed-form gap."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.special import log_softmax, softmax

from nlhf.errors import NLHFInputError
from nlhf.lab.games import (
    Game,
    bt,
    cyclic,
    fixed_point_residual,
    gap,
    gap_per_context,
    gbpm,
    load_game,
    needle,
    solve_nash,
)


def _payoff(P, ref, tau, pi, pi2):
    """J(pi, pi') for one context, straight from the definition."""
    kl = lambda p: float(np.sum(p * (np.log(p) - np.log(ref))))  # noqa: E731
    return float(pi @ P @ pi2) - tau * kl(pi) + tau * kl(pi2)


@pytest.mark.parametrize("tau", [0.05, 0.3, 1.0])
def test_gap_matches_brute_force_best_response(tau):
    game = gbpm(6, contexts=1, tau=tau, seed=3)
    P, ref = game.P[0], game.ref[0]
    pi = np.random.default_rng(0).dirichlet(np.ones(6))
    best = minimize(
        lambda z: _payoff(P, ref, tau, pi, softmax(z)),
        np.zeros(6),
        method="BFGS",
        options={"gtol": 1e-12},
    )
    assert gap(game, pi[None]) == pytest.approx(0.5 - best.fun, abs=1e-8)


@pytest.mark.parametrize("make", [needle, cyclic, gbpm, bt])
@pytest.mark.parametrize("tau", [1.0, 0.1, 0.025, 0.01])
def test_solver_reaches_fixed_point_with_zero_gap(make, tau):
    game = make(tau=tau)
    pi = solve_nash(game.P, game.ref, game.tau)
    assert fixed_point_residual(game.P, game.ref, game.tau, pi).max() <= 1e-10
    assert abs(gap(game, pi)) < 1e-9
    others = np.random.default_rng(1).dirichlet(
        np.ones(game.n_responses), size=(5, game.n_contexts)
    )
    assert all(gap(game, p) > 0 for p in others)


def test_large_tau_equilibrium_is_reference():
    game = gbpm(8, contexts=2, tau=1e4, seed=1)
    pi = solve_nash(game.P, game.ref, game.tau)
    assert np.abs(pi - game.ref).max() < 1e-4


def test_transitive_linear_bt_matches_closed_form():
    tau = 0.05
    game = bt(8, contexts=3, link="linear", tau=tau, seed=2)
    pi = solve_nash(game.P, game.ref, tau)
    closed = softmax(np.log(game.ref) + game.rewards / (2 * tau), axis=-1)
    assert np.abs(pi - closed).max() < 1e-10


def test_gap_is_batched_over_leading_axes():
    game = cyclic(3, contexts=2, tau=0.1)
    pis = np.random.default_rng(0).dirichlet(np.ones(3), size=(4, 2))
    batched = gap_per_context(game.P, game.ref, game.tau, pis)
    single = np.stack([gap_per_context(game.P, game.ref, game.tau, p) for p in pis])
    assert np.allclose(batched, single)


def test_warm_start_solves_batches():
    games = [gbpm(8, contexts=1, tau=0.02, seed=s) for s in range(4)]
    P = np.stack([g.P[0] for g in games])
    ref = np.stack([g.ref[0] for g in games])
    pi = solve_nash(P, ref, 0.02)
    pi2 = solve_nash(P, ref, 0.02, init=pi)
    assert np.abs(pi - pi2).max() < 1e-12
    assert np.abs(log_softmax(np.log(pi), -1) - np.log(pi)).max() < 1e-12


BAD_GAMES = [
    ({"P": [[0.5, 0.7], [0.7, 0.5]], "ref": [0.5, 0.5]}, "P + Pᵀ = 1"),
    ({"P": [[0.5, 1.5], [-0.5, 0.5]], "ref": [0.5, 0.5]}, "[0, 1]"),
    ({"P": [[0.4, 0.6], [0.4, 0.6]], "ref": [0.5, 0.5]}, "diagonal"),
    ({"P": [[0.5, 0.6], [0.4, 0.5]], "ref": [1.0, 0.0]}, "full support"),
    ({"P": [[0.5, 0.6], [0.4, 0.5]], "ref": [0.7, 0.7]}, "sum to 1"),
    ({"P": [[0.5, 0.6], [0.4, 0.5]], "ref": [0.5, 0.5, 0.0]}, "shape"),
    ({"P": [[0.5, 0.6], [0.4, 0.5]]}, "missing field 'ref'"),
    ({"P": "abc", "ref": [0.5, 0.5]}, "numeric"),
]


@pytest.mark.parametrize(("fields", "needle_text"), BAD_GAMES)
def test_invalid_game_files_name_the_problem(tmp_path, fields, needle_text):
    path = tmp_path / "g.json"
    path.write_text(json.dumps({**fields, "tau": 0.1}))
    with pytest.raises(NLHFInputError) as err:
        load_game(path)
    assert needle_text in str(err.value)
    assert str(path) in str(err.value)
    assert "\n" not in str(err.value)


def test_game_file_formats(tmp_path):
    game = gbpm(5, contexts=2, tau=0.1)
    np.savez(tmp_path / "g.npz", P=game.P, ref=game.ref)
    loaded = load_game(tmp_path / "g.npz", tau=0.1)
    assert np.array_equal(loaded.P, game.P)
    (tmp_path / "g.json").write_text(json.dumps({"P": game.P.tolist(), "ref": game.ref.tolist()}))
    with pytest.raises(NLHFInputError, match="pass --tau"):
        load_game(tmp_path / "g.json")
    assert load_game(tmp_path / "g.json", tau=0.2).tau == 0.2
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(NLHFInputError, match="not valid JSON"):
        load_game(tmp_path / "bad.json", tau=0.1)
    (tmp_path / "g.txt").write_text("")
    with pytest.raises(NLHFInputError, match=r"\.json or \.npz"):
        load_game(tmp_path / "g.txt", tau=0.1)
    with pytest.raises(NLHFInputError, match="not found"):
        load_game(tmp_path / "missing.json", tau=0.1)


def test_nonpositive_tau_rejected():
    with pytest.raises(NLHFInputError, match="tau"):
        Game(np.full((2, 2), 0.5), np.array([0.5, 0.5]), tau=0.0)
