"""The tabular laboratory: run algorithms on exact games and measure regret (SPEC §3).

Each (instance, algorithm, tau) run advances all seeds together; independent runs go to a
process pool (one torch thread each), so a 2-core machine runs two at a time.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from nlhf.errors import NLHFInputError
from nlhf.lab.algorithms import ALGORITHMS, LabSettings
from nlhf.lab.games import Game, gap, gap_per_context, load_game, make_instance, regret_curve
from nlhf.lab.pool import run_jobs


@dataclass(frozen=True)
class RunSpec:
    """One cell of an experiment: every seed of one algorithm on one game at one tau."""

    instance: str
    algorithm: str
    tau: float
    T: int
    seeds: int
    settings: LabSettings
    K: int = 8
    c: float = 0.25
    contexts: int = 1
    game_file: str | None = None
    game_seed: int = 0
    seed: int = 0
    also: tuple[tuple[str, float], ...] = ()  # more (instance, tau) run side by side

    def game(self, tau: float | None = None, instance: str | None = None) -> Game:
        tau = self.tau if tau is None else tau
        if self.game_file:
            return load_game(self.game_file, tau=tau)
        return make_instance(
            instance or self.instance, self.K, self.c, tau, seed=self.game_seed,
            contexts=self.contexts,
        )

    def cells(self) -> list[tuple[str, float]]:
        """(instance, tau) of every game this run advances, in row order."""
        return [(self.instance, self.tau), *self.also]

    def games(self) -> list[Game]:
        return [self.game(tau, inst) for inst, tau in self.cells()]


class RowGaps:
    """Gap(pi_b) of every row b = game·seeds + seed, for games of one shape side by side."""

    def __init__(self, games: list[Game], seeds: int) -> None:
        self.P = np.repeat(np.stack([g.P for g in games]), seeds, axis=0)
        self.ref = np.repeat(np.stack([g.ref for g in games]), seeds, axis=0)
        self.tau = np.repeat([g.tau for g in games], seeds).reshape(-1, 1)
        self.d0 = games[0].d0

    def __call__(self, policy: np.ndarray) -> np.ndarray:
        return gap_per_context(self.P, self.ref, self.tau, policy) @ self.d0


@dataclass
class Experiment:
    specs: list[RunSpec]
    command: str = ""
    meta: dict = field(default_factory=dict)


GAP_BLOCK = 100  # rounds whose gaps are computed together


def play(algo, row_gaps: RowGaps, T: int, progress_queue=None) -> tuple[np.ndarray, float]:
    """Run ``T`` rounds of ``algo``, recording each row's gap before every round.

    Returns the (B, T) gaps and the seconds spent; ``progress_queue`` (from a worker) gets
    the rounds done about fifty times per run, so the parent's bar moves.
    """
    gaps = np.zeros((algo.B, T))
    every = max(T // 50, 1)
    # policies are kept for a block of rounds and their gaps computed in one vectorised call:
    # per round, that call's overhead cost more than the gap itself
    block = np.empty((min(T, GAP_BLOCK), *algo.policy.shape))
    start = time.perf_counter()
    for t in range(T):
        block[t % len(block)] = algo.policy
        if (t + 1) % len(block) == 0 or t == T - 1:
            n = t % len(block) + 1
            gaps[:, t + 1 - n:t + 1] = row_gaps(block[:n]).T
        algo.run_round()
        if progress_queue is not None and (t + 1) % every == 0:
            progress_queue.put(every)
    if progress_queue is not None:
        progress_queue.put(T % every)
    return gaps, time.perf_counter() - start


def run_one(spec: RunSpec, progress_queue=None) -> list[dict]:
    """Run every seed of ``spec`` (at each of its tau); one result row per (tau, seed)."""
    import torch

    torch.set_num_threads(1)
    games = spec.games()
    many = len(games) > 1
    algo = ALGORITHMS[spec.algorithm](
        games if many else games[0], spec.settings, spec.seeds, seed=spec.seed
    )
    gaps, elapsed = play(algo, RowGaps(games, spec.seeds), spec.T, progress_queue)
    last = algo.policy
    average = getattr(algo, "average_policy", None)
    rows = []
    curves = regret_curve(gaps)
    for b in range(algo.B):
        curve = curves[b]
        game = games[b // spec.seeds]
        row = {
            "instance": game.name if spec.game_file else spec.cells()[b // spec.seeds][0],
            "algorithm": spec.algorithm,
            "tau": game.tau,
            "eta": float(spec.settings.eta_for(game.tau)),
            "seed": spec.seed + b % spec.seeds,
            "T": spec.T,
            "final_regret": float(curve[-1]),
            "final_gap_last": gap(game, last[b]),
            "oracle_queries": algo.oracle.queries // algo.B,
            "seconds": elapsed / algo.B,
            "regret_curve": curve.tolist(),
        }
        if average is not None:
            row["final_gap_average"] = gap(game, average[b])
        rows.append(row)
    return rows


def run_experiment(exp: Experiment, workers: int | None = None, progress: bool = True) -> dict:
    """Run all specs (in parallel where cores allow) and gather the results document."""
    for spec in exp.specs:
        if spec.algorithm not in ALGORITHMS:
            raise NLHFInputError(
                f"--algorithms: unknown algorithm {spec.algorithm!r}; choose from "
                f"{', '.join(ALGORITHMS)}"
            )
    order = sorted(range(len(exp.specs)), key=lambda i: -COST.get(exp.specs[i].algorithm, 1.0))
    started = time.perf_counter()
    results = run_jobs(
        [(run_one, (spec,)) for spec in exp.specs],
        total_rounds=sum(s.T for s in exp.specs),
        label="simulate (rounds)",
        workers=workers,
        progress=progress,
        submit_order=order,  # longest runs first; results keep spec order
    )
    rows = [row for result in results for row in result]
    first = exp.specs[0]
    return {
        "runs": rows,
        "instance": {
            "names": sorted({s.instance for s in exp.specs}),
            "K": first.K,
            "c": first.c,
            "contexts": first.contexts,
            "game_file": first.game_file,
            "game_seed": first.game_seed,
        },
        "settings": {k: v for k, v in asdict(first.settings).items() if k != "tau"},
        "command": exp.command,
        "wall_seconds": time.perf_counter() - started,
        **exp.meta,
    }


def build_specs(
    instances: list[str],
    algorithms: list[str],
    taus: list[float],
    T: int,
    seeds: int,
    settings: LabSettings,
    K: int,
    c: float,
    contexts: int = 1,
    game_file: str | None = None,
    game_seed: int = 0,
    seed: int = 0,
) -> list[RunSpec]:
    if T < 1:
        raise NLHFInputError(f"--T must be ≥ 1, got {T}")
    if seeds < 1:
        raise NLHFInputError(f"--seeds must be ≥ 1, got {seeds}")
    if not taus or any(t <= 0 for t in taus):
        raise NLHFInputError(f"--tau must be > 0, got {taus}")
    return [
        RunSpec(
            inst,
            alg,
            tau,
            T,
            seeds,
            replace(settings, tau=tau),
            K,
            c,
            contexts,
            game_file,
            game_seed,
            seed,
        )
        for inst in instances
        for tau in taus
        for alg in algorithms
    ]


def side_by_side(specs: list[RunSpec]) -> list[RunSpec]:
    """Merge specs that differ only in instance and tau into one run of games side by side.

    Each game keeps its own random stream (``RowStreams``), so the merged run's numbers are
    those of the separate runs; only the per-round overhead is shared. The games must have
    one shape (K, contexts), which the caller ensures.
    """
    merged: dict[RunSpec, list[tuple[str, float]]] = {}
    for s in specs:
        key = replace(s, instance="", tau=0.0, settings=replace(s.settings, tau=0.0))
        merged.setdefault(key, []).append((s.instance, s.tau))
    return [
        replace(key, instance=cells[0][0], tau=cells[0][1], also=tuple(cells[1:]),
                settings=replace(key.settings, tau=cells[0][1]))
        for key, cells in merged.items()
    ]


def paper_claims_experiment(command: str = "") -> Experiment:
    """SPEC §3: needle (K=8, c=0.25) at tau ∈ {0.1, 0.025}, plus ENPO on gbpm and cyclic.

    Games of one algorithm run side by side (one process per algorithm, per-game random
    streams, so the numbers equal separate runs'): the per-round overhead, most of the cost
    at these sizes, is paid once (docs/claims.md, "Lab speed").
    """
    base = LabSettings(tau=0.1, pairs=8)
    specs = side_by_side(
        build_specs(["needle"], ["inpo", "enpo", "denpo", "oracle"], [0.1, 0.025], 1000, 3,
                    base, K=8, c=0.25)
        + build_specs(["gbpm", "cyclic"], ["enpo"], [0.1, 0.025], 1000, 3, base, K=8, c=0.25)
    )  # one run per algorithm: ENPO plays its six games side by side
    return Experiment(specs, command, {"preset": "paper-claims"})


PRESETS = {"paper-claims": paper_claims_experiment}

COST = {"denpo": 4.0, "enpo": 2.0, "oracle": 1.6, "inpo": 1.0}  # relative seconds per round
