"""Exact games: instances, the regularised Nash solver, the duality gap and regret."""

from nlhf.lab.games.game import Game
from nlhf.lab.games.gap import gap, gap_per_context, regret_curve
from nlhf.lab.games.instances import INSTANCES, bt, cyclic, gbpm, load_game, make_instance, needle
from nlhf.lab.games.solver import fixed_point_residual, solve_nash

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
