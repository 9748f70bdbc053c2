"""Named game instances (needle, cyclic, gbpm, bt) and user game files (JSON or .npz)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.special import expit

from nlhf.errors import NLHFInputError
from nlhf.lab.games.game import Game
from nlhf.preferences import read_game_file, read_number

INSTANCES = ("needle", "cyclic", "gbpm", "bt")


def needle(K: int = 8, c: float = 0.25, tau: float = 0.1) -> Game:
    """Response 0 beats every other w.p. 1 but has reference mass exp(−c/tau); others tie.

    The hard case for self-play: pi_ref almost never samples the needle when tau is small.
    """
    if K < 2:
        raise NLHFInputError(f"needle: --K must be ≥ 2, got {K}")
    if c <= 0:
        raise NLHFInputError(f"needle: --c must be > 0, got {c}")
    P = np.full((K, K), 0.5)
    P[0, 1:] = 1.0
    P[1:, 0] = 0.0
    mass = float(np.exp(-c / tau))
    ref = np.full(K, (1.0 - mass) / (K - 1))
    ref[0] = mass
    return Game(P, ref, tau, name="needle")


def cyclic(
    K: int = 3, contexts: int = 4, strength: float = 0.8, tau: float = 0.1, seed: int = 0
) -> Game:
    """Rock-paper-scissors families: circulant skew preferences, y_i beats y_{i+1..}."""
    rng = np.random.default_rng(seed)
    idx = np.arange(K)
    angle = 2 * np.pi * (idx[None, :] - idx[:, None]) / K
    Ps, refs = [], []
    for _ in range(contexts):
        a = strength * rng.uniform(0.5, 1.0)
        Ps.append(0.5 + 0.5 * a * np.sin(angle))
        refs.append(rng.dirichlet(np.full(K, 4.0)))
    return Game(np.stack(Ps), np.stack(refs), tau, name="cyclic")


def gbpm(
    K: int = 8,
    rank: int = 2,
    contexts: int = 4,
    scale: float = 2.0,
    tau: float = 0.1,
    seed: int = 0,
) -> Game:
    """General bilinear preferences: P(i ≻ j) = σ(v_iᵀ R v_j), R skew-symmetric of rank 2·rank."""
    rng = np.random.default_rng(seed)
    block = np.array([[0.0, 1.0], [-1.0, 0.0]])
    Ps, refs = [], []
    for _ in range(contexts):
        R = np.kron(np.diag(rng.uniform(0.5, 1.0, rank) * scale), block)
        V = rng.normal(size=(K, 2 * rank)) / np.sqrt(2 * rank)
        Ps.append(expit(V @ R @ V.T))
        refs.append(rng.dirichlet(np.full(K, 2.0)))
    return Game(np.stack(Ps), np.stack(refs), tau, name="gbpm")


def bt(
    K: int = 8, contexts: int = 4, link: str = "logistic", tau: float = 0.1, seed: int = 0
) -> Game:
    """Transitive Bradley–Terry preferences from random rewards.

    ``link='linear'`` gives P = 1/2 + (r_i − r_j)/2 with r in [0, 1], whose regularised Nash
    equilibrium has the closed form pi* ∝ pi_ref · exp(r / (2 tau)).
    """
    rng = np.random.default_rng(seed)
    rewards = rng.uniform(0, 1, size=(contexts, K))
    diff = rewards[:, :, None] - rewards[:, None, :]
    if link == "logistic":
        P = expit(4.0 * diff)
    elif link == "linear":
        P = 0.5 + 0.5 * diff
    else:
        raise NLHFInputError(f"bt: link must be 'logistic' or 'linear', got {link!r}")
    refs = rng.dirichlet(np.full(K, 2.0), size=contexts)
    game = Game(P, refs, tau, name="bt")
    object.__setattr__(game, "rewards", rewards)
    return game


def make_instance(
    name: str, K: int, c: float, tau: float, seed: int = 0, rank: int = 2, contexts: int = 1
) -> Game:
    """Build a named instance; ``contexts`` applies to the random families (not needle)."""
    if contexts < 1:
        raise NLHFInputError(f"--contexts must be ≥ 1, got {contexts}")
    if name == "needle":
        return needle(K, c, tau)
    if name == "cyclic":
        return cyclic(K, contexts=contexts, tau=tau, seed=seed)
    if name == "gbpm":
        return gbpm(K, rank=rank, contexts=contexts, tau=tau, seed=seed)
    if name == "bt":
        return bt(K, contexts=contexts, tau=tau, seed=seed)
    raise NLHFInputError(
        f"--instance: unknown instance {name!r}; choose one of {', '.join(INSTANCES)}"
    )


def load_game(path: str | Path, tau: float | None = None) -> Game:
    """Read a game file: JSON ``{"P": ..., "ref": ..., "tau"?: ..., "d0"?: ...}`` or .npz."""
    path = Path(path)
    fields = read_game_file(path)
    for key in ("P", "ref"):
        if key not in fields:
            raise NLHFInputError(f"{path}: missing field '{key}'")
    if tau is None:
        if "tau" not in fields:
            raise NLHFInputError(f"{path}: no 'tau' in the file; pass --tau")
        tau = read_number(fields["tau"], f"{path}: field 'tau'")
    try:
        P = np.asarray(fields["P"], dtype=np.float64)
        ref = np.asarray(fields["ref"], dtype=np.float64)
        d0 = np.asarray(fields["d0"], dtype=np.float64) if "d0" in fields else None
    except (TypeError, ValueError):
        raise NLHFInputError(f"{path}: fields 'P' and 'ref' must be numeric arrays") from None
    if P.ndim not in (2, 3) or P.size == 0:
        raise NLHFInputError(f"{path}: field 'P' must be a (K, K) or (C, K, K) matrix of "
                             f"preferences, got shape {P.shape}")
    from nlhf.lab.games.game import validate

    P3 = P[None] if P.ndim == 2 else P
    ref2 = ref[None] if ref.ndim == 1 else ref
    d0v = np.full(P3.shape[0], 1.0 / P3.shape[0]) if d0 is None else d0
    validate(P3, ref2, tau, d0v, where=str(path))
    return Game(P3, ref2, tau, d0v, name=path.stem)
