"""Shared machinery of the tabular algorithms: settings, bandit oracle, sampling, the fitter.

Every tabular algorithm keeps its policies as log-probability tables of shape (B, C, K):
B rows run side by side (vectorised), C contexts, K responses. A row is one seed of one game:
an algorithm may be given several games of the same shape (a sweep over tau and the needle's
gap), and then row b plays game b // seeds with seed b % seeds, each at its own tau and eta.
Each policy update minimises the algorithm's loss from :mod:`nlhf.losses` (the same code that
trains language models) plus a tiny ridge toward a prior, with Newton's method per row.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from nlhf.lab.games.game import Game
from nlhf.lab.numerics import log_softmax


@dataclass(frozen=True)
class LabSettings:
    """Hyperparameters of the tabular lab (SPEC §3); eta defaults to 4·tau + 0.25.

    The prototype's 2·tau + 0.5 gives a needle-discovery time proportional to eta/tau; a
    larger tau-proportional part keeps that ratio flatter across tau (docs/claims.md).
    """

    tau: float
    eta: float | None = None
    pairs: int = 8  # m: pairs per round (collected and trained on)
    comparators: int = 4  # n_z
    lam: float = 1.0  # lambda of the elliptical exploration oracle
    ridge: float = 1e-3  # pull toward the prior on responses no pair pins down
    alpha: float = 0.0  # ENPO proximal weight (tabular default 0: the ridge plays its role)
    beta: float = 0.05  # DENPO Step B inverse temperature
    s: float = 1.0  # DENPO tilt sign/scale
    xpo_alpha: float = 1e-3  # XPO optimism weight
    optimism: float = 0.2  # minimax oracle: confidence-bound scale (docs/lab.md)
    eta_schedule: str = "harmonic"  # or "constant"
    eta_slope: float = 4.0  # the eta rule, eta = eta_slope·tau + eta_offset (docs/lab.md)
    eta_offset: float = 0.25
    step_a_prior: str = "memory"  # ENPO's ridge centre: "memory" or "omd" (SPEC; docs/lab.md)

    def __post_init__(self) -> None:
        if self.step_a_prior not in ("omd", "memory"):
            raise ValueError(f"step_a_prior must be 'omd' or 'memory', got {self.step_a_prior!r}")

    @property
    def base_eta(self) -> float:
        return float(self.eta_for(self.tau))

    def eta_for(self, tau: float | np.ndarray) -> float | np.ndarray:
        """The base eta at KL parameter(s) ``tau``: the rule, or the fixed ``eta``."""
        tau = np.asarray(tau, dtype=np.float64)
        if self.eta is None:
            return self.eta_slope * tau + self.eta_offset
        return np.full_like(tau, self.eta)

    def eta_at(self, t: int, tau: float | np.ndarray | None = None) -> float | np.ndarray:
        """eta for round t (0-based). ``harmonic``: max(eta, tau·(t+1)).

        With a constant eta the noisy bandit targets keep the iterates jittering at a floor
        of order (label variance)/eta, so regret grows linearly on games with an interior
        equilibrium. Once tau·(t+1) exceeds eta, the prior weight tau/eta_t = 1/(t+1) makes
        the update an average of all past regularised best-response estimates, which
        averages the noise away; early rounds keep the large constant steps.
        """
        tau = self.tau if tau is None else tau
        base = self.eta_for(tau)
        if self.eta_schedule == "constant":
            out = base
        elif self.eta_schedule == "harmonic":
            out = np.maximum(base, np.asarray(tau) * (t + 1))
        else:
            raise ValueError(
                f"eta_schedule must be 'constant' or 'harmonic', got {self.eta_schedule!r}"
            )
        return float(out) if np.ndim(out) == 0 else out


class BanditOracle:
    """Sampled Bernoulli duels: the only way algorithms learn about P.

    ``P`` is (C, K, K), shared by all rows, or (B, C, K, K), one game per row; the duel
    arrays are (B, n).
    """

    def __init__(self, P: np.ndarray, rng: np.random.Generator) -> None:
        self._P = P
        self._rng = rng
        self.queries = 0

    def duel(self, ctx: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """1.0 where a beats b (probability P[row, ctx, a, b]), else 0.0; same shape as a."""
        self.queries += int(np.size(a))
        if self._P.ndim == 3:
            p = self._P[ctx, a, b]
        else:
            rows = np.arange(np.shape(a)[0]).reshape(-1, *([1] * (np.ndim(a) - 1)))
            p = self._P[rows, ctx, a, b]
        return (self._rng.random(np.shape(a)) < p).astype(np.float64)


class RowStreams:
    """One random generator per game of a side-by-side run, each drawing its games' rows.

    Every random draw of the tabular algorithms has the rows (B = games × seeds) as its
    leading axis; splitting it into per-game blocks drawn from per-game generators seeded
    alike makes a side-by-side run reproduce, bit for bit, the separate runs of its games.
    """

    def __init__(self, seed: int, n_games: int) -> None:
        self._gens = [np.random.default_rng(seed) for _ in range(n_games)]

    def _split(self, size: tuple[int, ...], draw) -> np.ndarray:
        rows = size[0] // len(self._gens)
        return np.concatenate([draw(g, (rows, *size[1:])) for g in self._gens])

    def random(self, size) -> np.ndarray:
        return self._split(tuple(size), lambda g, s: g.random(s))

    def integers(self, low, high, size) -> np.ndarray:
        return self._split(tuple(size), lambda g, s: g.integers(low, high, size=s))


def sample_categorical(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """One draw per row of ``probs`` (..., K) by inverse CDF (vectorised)."""
    cdf = np.cumsum(probs, axis=-1)
    u = rng.random((*probs.shape[:-1], 1)) * cdf[..., -1:]
    return np.minimum((u > cdf).sum(axis=-1), probs.shape[-1] - 1)


def sample_from(rng: np.random.Generator, logp: np.ndarray, ctx: np.ndarray) -> np.ndarray:
    """Draw y ~ pi(·|ctx) for per-seed contexts ctx (B, n), with logp (B, C, K)."""
    probs = np.exp(np.take_along_axis(logp, ctx[..., None], axis=1))  # (B, n, K)
    return sample_categorical(rng, probs)


def take(table, ctx, y):
    """table[..., b, ctx[b, n], y[b, n]] for every row b and item n, shape (..., B, N).

    The per-row lookup of the tabular objectives, on a torch tensor (leading dims of ``table``,
    the shifted points of a Hessian pass, broadcast) or a numpy table (B, C, K), for the
    constants an objective reads, looked up once per fit instead of once per pass.
    """
    index = ctx * table.shape[-1] + y
    if isinstance(table, np.ndarray):
        return np.take_along_axis(table.reshape(*table.shape[:-2], -1), index, axis=-1)
    flat = table.flatten(-2)
    return flat.gather(-1, index.expand(*flat.shape[:-2], *ctx.shape))


def ridge(theta: torch.Tensor, center: torch.Tensor, weight: float) -> torch.Tensor:
    """weight·‖theta − center‖² per row, (..., B): makes each objective strictly convex."""
    return weight * ((theta - center) ** 2).sum(dim=(-2, -1))


def newton_minimise(
    objective: Callable[..., torch.Tensor],
    theta0: np.ndarray,
    data: tuple[torch.Tensor, ...],
    max_steps: int = 30,
    tol: float = 1e-14,
    quadratic: bool = False,
) -> np.ndarray:
    """Minimise ``objective(theta, *data)`` for every row b; return log-softmax(theta).

    ``objective`` maps logits theta (..., B, C, K) to one value per row, (..., B): row b's
    objective reads only theta[..., b, :, :] and row b of ``data`` (use :func:`take`), and
    the losses of :mod:`nlhf.losses` average over the last axis, so leading dims batch.
    It must be strictly convex in the logits (the ridge makes it so) and separable over
    contexts (true of every tabular objective: a pair lives in one context), so its Hessian is
    block-diagonal per (row, context). The Hessian is read off K + 1 gradients evaluated in
    one batch, H e_k ≈ (g(theta + h·e_k) − g(theta))/h (``hessian_columns``): one backward
    pass instead of K double-backward passes. With ``quadratic=True`` (a squared loss on
    log-ratios: exactly quadratic in the logits) h = 1 makes it exact and one Newton step is
    taken, with no convergence check spent; otherwise h = 1e-5 (an O(h) error in H slows
    Newton's final convergence by a factor ~h, nothing more).
    """
    theta = torch.as_tensor(theta0, dtype=torch.float64).clone()

    def newton_direction(theta: torch.Tensor, h: float):
        f, g, H = hessian_columns(objective, theta, data, h)
        step = torch.linalg.solve(H, g[..., None])[..., 0]
        return f, step, (g * step).sum(dim=(-2, -1))

    if quadratic:
        _, step, _ = newton_direction(theta, 1.0)
        return log_softmax((theta - step).numpy(), axis=-1)
    for _ in range(max_steps):
        # f0: the objective at theta, from the same batched pass; decrement: Newton's, ≥ 0
        f0, step, decrement = newton_direction(theta, 1e-5)
        # converged once the decrement is under tol and the step small: Newton converges
        # quadratically, so the error left after this full step is O(step²) ≤ ~1e-10, and
        # no pass is spent on confirming it (a third of a non-quadratic fit's passes)
        if bool((decrement < tol).all() and step.abs().max() < 1e-5):
            theta = theta - step
            break
        with torch.no_grad():
            scale = torch.ones_like(f0)
            for _ in range(30):  # backtracking per row, Armijo with rounding slack
                f1 = objective(theta - scale[:, None, None] * step, *data)
                ok = f1 <= f0 - 0.25 * scale * decrement + 1e-12 * f0.abs()
                if bool(ok.all()):
                    break
                scale = torch.where(ok, scale, scale / 2)
        theta = theta - scale[:, None, None] * step
    return log_softmax(theta.detach().numpy(), axis=-1)


def hessian_columns(
    objective, theta: torch.Tensor, data: tuple[torch.Tensor, ...], h: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """f(theta), g(theta) and the per-(row, context) Hessian blocks from one batched pass.

    Column k is (g(theta + h·e_k) − g(theta))/h with e_k applied in every context at once
    (the blocks are independent); exact for quadratics, symmetrised otherwise. The K + 1
    points are a leading dim of theta, which the objective broadcasts over.
    """
    K = theta.shape[-1]
    shifts = h * torch.eye(K, dtype=theta.dtype)[:, None, None, :]
    points = torch.cat([theta[None], theta[None] + shifts]).requires_grad_(True)
    f = objective(points, *data)  # (K + 1, B)
    (g,) = torch.autograd.grad(f.sum(), points)
    H = ((g[1:] - g[0]) / h).permute(1, 2, 3, 0)  # H[b, c, :, k] = H e_k
    return f.detach()[0], g[0], 0.5 * (H + H.transpose(-1, -2))


def as_rows(x: float | np.ndarray, ndim: int = 3) -> float | np.ndarray:
    """A per-row value (B,) shaped to broadcast against (B, C, K) tables; scalars pass."""
    return x if np.ndim(x) == 0 else np.asarray(x).reshape(-1, *([1] * (ndim - 1)))


def omd_prior(old: np.ndarray, log_ref: np.ndarray, tau, eta, gain=0.0) -> np.ndarray:
    """log of pi_t^{1−tau/eta}·pi_ref^{tau/eta}·exp(gain/eta), normalised: OMD's step.

    With ``gain`` 0 (the default) it is where OMD leaves responses no data pins down; with
    gain = P(· ≻ pi_t) it is the exact OMD step. ``tau`` and ``eta`` are scalars or per-row
    arrays (B,).
    """
    mix = as_rows(np.asarray(tau) / np.asarray(eta))
    return log_softmax((1.0 - mix) * old + mix * log_ref + gain / as_rows(eta), axis=-1)


def memory_prior(old: np.ndarray, log_ref: np.ndarray, tau, eta,
                 labels: np.ndarray) -> np.ndarray:
    """The OMD step under the last label of each response: where unpinned responses go.

    ``labels`` (B, C, K) holds a response's latest win-rate label I(y) against pi_t's
    comparators, NaN where there is none to use. Its advantage estimate is I(y) − 1/2 (pi_t
    ties itself: Σ_y pi_t(y)·P(y ≻ pi_t) = 1/2), and a response without a label gets 0, i.e.
    :func:`omd_prior`'s step; with exact labels for every response it is the OMD step.
    """
    return omd_prior(old, log_ref, tau, eta, gain=np.nan_to_num(labels - 0.5, nan=0.0))


def stack_games(game: Game | Sequence[Game]) -> tuple[Game, ...]:
    """One game or several of the same shape and context distribution, as a tuple."""
    games = (game,) if isinstance(game, Game) else tuple(game)
    if not games:
        raise ValueError("need at least one game")
    first = games[0]
    for g in games[1:]:
        if g.P.shape != first.P.shape or not np.allclose(g.d0, first.d0):
            raise ValueError("games run side by side need the same shape and d0")
    return games


class TabularAlgorithm(ABC):
    """One algorithm on one or more exact games of one shape, for B rows at once.

    ``game`` is a :class:`Game` or a sequence of them (then B = len(games)·n_seeds, row b
    plays game b // n_seeds, and tau is that game's). Bandit feedback only.
    """

    name: str = "base"
    uses_full_information: bool = False

    def __init__(
        self, game: Game | Sequence[Game], settings: LabSettings, n_seeds: int, seed: int = 0
    ) -> None:
        games = stack_games(game)
        self.game = game
        self.settings = settings
        self.n_seeds = n_seeds
        self.B = len(games) * n_seeds
        # one stream per game: a side-by-side run equals its games' separate runs
        self.rng = (
            np.random.default_rng(seed) if len(games) == 1 else RowStreams(seed, len(games))
        )
        self.d0 = games[0].d0
        self.tau = np.repeat([g.tau for g in games], n_seeds)  # (B,)
        if len(games) == 1:
            self.oracle = BanditOracle(games[0].P, self.rng)
        else:
            self.oracle = BanditOracle(self.rows([g.P for g in games]), self.rng)
        self.log_ref = self.rows([np.log(g.ref) for g in games])
        self.logp = self.log_ref.copy()  # pi_1 = pi_ref
        self.t = 0
        if np.any(settings.eta_for(self.tau) <= self.tau):
            raise ValueError(f"need eta > tau for every game, got eta={settings.eta}")

    def rows(self, per_game: Sequence[np.ndarray]) -> np.ndarray:
        """Per-game arrays stacked and repeated to one per row, (B, ...)."""
        return np.repeat(np.stack(per_game), self.n_seeds, axis=0)

    @property
    def eta(self) -> np.ndarray:
        """This round's eta per row, (B,) (see LabSettings.eta_at)."""
        return np.asarray(self.settings.eta_at(self.t, self.tau), dtype=np.float64)

    @property
    def policy(self) -> np.ndarray:
        """pi_t, the policy played this round, (B, C, K)."""
        return np.exp(self.logp)

    def contexts(self, n: int) -> np.ndarray:
        """Contexts x ~ d0 for n pairs per row, (B, n)."""
        return sample_categorical(self.rng, np.broadcast_to(self.d0, (self.B, n, len(self.d0))))

    def tensors(self, *arrays: np.ndarray) -> tuple[torch.Tensor, ...]:
        return tuple(torch.as_tensor(np.ascontiguousarray(a)) for a in arrays)

    @abstractmethod
    def step(self) -> None:
        """Play one round: sample, query the oracle, update the policy."""

    def run_round(self) -> None:
        self.step()
        self.t += 1
