"""Exact games: instances, the regularised Nash solver, the duality gap and regret."""

from nlhf.games.game import Game
from nlhf.games.gap import gap, gap_per_context, regret_curve
from nlhf.games.instances import INSTANCES, bt, cyclic, gbpm, load_game, make_instance, needle
from nlhf.games.solver import fixed_point_residual, solve_nash

__all__ = [
    "INSTANCES",
    "Game",
    "bt",
    "cyclic",
    "fixed_point_residual",
    "gap",
    "gap_per_context",
    "gbpm",
    "load_game",
    "make_instance",
    "needle",
    "regret_curve",
    "solve_nash",
]
