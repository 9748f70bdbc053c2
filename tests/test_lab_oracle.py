"""The optimistic game's solver, the side-by-side runner and the eta rule."""

from __future__ import annotations

import numpy as np
from scipy.special import softmax

from nlhf.lab.algorithms import LabSettings
from nlhf.lab.games import gbpm
from nlhf.lab.games.solver import solve_nash, solve_zero_sum
from nlhf.lab.simulate import build_specs, run_one, side_by_side


def test_zero_sum_solver_matches_nash_on_a_symmetric_game():
    game = gbpm(6, contexts=2, tau=0.02, seed=5)
    pi, q = solve_zero_sum(game.P, game.ref, 0.02)
    star = solve_nash(game.P, game.ref, 0.02)
    assert np.abs(pi - star).max() < 1e-9 and np.abs(q - star).max() < 1e-9


def test_zero_sum_solver_on_an_optimistic_payoff():
    game = gbpm(6, contexts=2, tau=0.02, seed=5)
    A = np.minimum(1.0, game.P + np.random.default_rng(0).uniform(0, 0.3, game.P.shape))
    tau = 0.01
    pi, q = solve_zero_sum(A, game.ref, tau)
    log_ref = np.log(game.ref)
    assert np.abs(pi - softmax(log_ref + np.einsum("cij,cj->ci", A, q) / tau, -1)).max() < 1e-9
    assert np.abs(q - softmax(log_ref - np.einsum("cji,cj->ci", A, pi) / tau, -1)).max() < 1e-9


def test_side_by_side_rows_and_eta_rule():
    settings = LabSettings(tau=0.1, eta_slope=2.0, eta_offset=0.5)
    specs = side_by_side(
        build_specs(["needle"], ["inpo", "oracle"], [0.1, 0.05], 5, 2, settings, K=4, c=0.2)
    )
    assert len(specs) == 2 and specs[0].also == (("needle", 0.05),)
    rows = run_one(specs[0])
    assert [(r["tau"], r["seed"]) for r in rows] == [(0.1, 0), (0.1, 1), (0.05, 0), (0.05, 1)]
    assert rows[2]["eta"] == 2.0 * 0.05 + 0.5
    assert all(np.isfinite(r["final_regret"]) for r in rows)
    alone = run_one(build_specs(["needle"], ["inpo"], [0.05], 5, 2, settings, K=4, c=0.2)[0])
    assert [r["regret_curve"] for r in rows[2:]] == [r["regret_curve"] for r in alone]
