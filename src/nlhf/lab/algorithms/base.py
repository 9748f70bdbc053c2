"""Shared machinery of the tabular algorithms: settings, bandit oracle, sampling, the fitter.

Every tabular algorithm keeps its policies as log-probability tables of shape (B, C, K):
B independent seeds run side by side (vectorised), C contexts, K responses. Each policy
update minimises the algorithm's loss from :mod:`nlhf.losses` (the same code that trains
language models) plus a tiny ridge toward a prior, with Newton's method per seed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy.special import log_softmax
from torch.func import vmap

from nlhf.lab.games.game import Game


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
    optimism: float = 1.0  # minimax oracle: confidence-bound scale
    eta_schedule: str = "harmonic"  # or "constant"

    @property
    def base_eta(self) -> float:
        return 4.0 * self.tau + 0.25 if self.eta is None else self.eta

    def eta_at(self, t: int) -> float:
        """eta for round t (0-based). ``harmonic``: max(eta, tau·(t+1)).

        With a constant eta the noisy bandit targets keep the iterates jittering at a floor
        of order (label variance)/eta, so regret grows linearly on games with an interior
        equilibrium. Once tau·(t+1) exceeds eta, the prior weight tau/eta_t = 1/(t+1) makes
        the update an average of all past regularised best-response estimates, which
        averages the noise away; early rounds keep the large constant steps.
        """
        if self.eta_schedule == "constant":
            return self.base_eta
        if self.eta_schedule == "harmonic":
            return max(self.base_eta, self.tau * (t + 1))
        raise ValueError(
            f"eta_schedule must be 'constant' or 'harmonic', got {self.eta_schedule!r}"
        )


class BanditOracle:
    """Sampled Bernoulli duels: the only way algorithms learn about P."""

    def __init__(self, game: Game, rng: np.random.Generator) -> None:
        self._P = game.P
        self._rng = rng
        self.queries = 0

    def duel(self, ctx: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """1.0 where a beats b (probability P[ctx, a, b]), else 0.0; same shape as inputs."""
        self.queries += int(np.size(a))
        return (self._rng.random(np.shape(a)) < self._P[ctx, a, b]).astype(np.float64)


def sample_categorical(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """One draw per row of ``probs`` (..., K) by inverse CDF (vectorised)."""
    cdf = np.cumsum(probs, axis=-1)
    u = rng.random((*probs.shape[:-1], 1)) * cdf[..., -1:]
    return np.minimum((u > cdf).sum(axis=-1), probs.shape[-1] - 1)


def sample_from(rng: np.random.Generator, logp: np.ndarray, ctx: np.ndarray) -> np.ndarray:
    """Draw y ~ pi(·|ctx) for per-seed contexts ctx (B, n), with logp (B, C, K)."""
    probs = np.exp(np.take_along_axis(logp, ctx[..., None], axis=1))  # (B, n, K)
    return sample_categorical(rng, probs)


def newton_minimise(
    objective: Callable[..., torch.Tensor],
    theta0: np.ndarray,
    data: tuple[torch.Tensor, ...],
    max_steps: int = 30,
    tol: float = 1e-14,
    quadratic: bool = False,
) -> np.ndarray:
    """Minimise ``objective(theta_b, *data_b)`` for every seed b; return log-softmax(theta).

    The objective must be strictly convex in the logits (the ridge makes it so) and separable
    over contexts (true of every tabular objective: a pair lives in one context), so its
    Hessian is block-diagonal and K double-backward passes give every (seed, context) block.
    With ``quadratic=True`` one exact Newton step is taken and no convergence check is spent.
    """
    theta = torch.as_tensor(theta0, dtype=torch.float64).clone()
    K = theta.shape[-1]
    value = vmap(objective)

    def newton_direction(theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        leaf = theta.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(value(leaf, *data).sum(), leaf, create_graph=True)
        rows = [
            torch.autograd.grad(g[..., k].sum(), leaf, retain_graph=k < K - 1)[0] for k in range(K)
        ]
        H = torch.stack(rows, dim=-2)  # (B, C, K, K): H[b, c, k, :]
        g = g.detach()
        step = torch.linalg.solve(H, g[..., None])[..., 0]
        return step, (g * step).sum(dim=(-2, -1))

    for _ in range(1 if quadratic else max_steps):
        step, decrement = newton_direction(theta)  # decrement: Newton decrement², ≥ 0
        if quadratic or bool((decrement < tol).all() and step.abs().max() < 1e-10):
            theta = theta - step
            break
        with torch.no_grad():
            f0 = value(theta, *data)
            scale = torch.ones_like(f0)
            for _ in range(30):  # backtracking per seed, Armijo with rounding slack
                f1 = value(theta - scale[:, None, None] * step, *data)
                ok = f1 <= f0 - 0.25 * scale * decrement + 1e-12 * f0.abs()
                if bool(ok.all()):
                    break
                scale = torch.where(ok, scale, scale / 2)
        theta = theta - scale[:, None, None] * step
    return log_softmax(theta.detach().numpy(), axis=-1)


def omd_prior(old: np.ndarray, log_ref: np.ndarray, tau: float, eta: float) -> np.ndarray:
    """log of pi_t^{1−tau/eta}·pi_ref^{tau/eta}, normalised: where OMD leaves unseen responses."""
    mix = tau / eta
    return log_softmax((1.0 - mix) * old + mix * log_ref, axis=-1)


class TabularAlgorithm(ABC):
    """One algorithm on one exact game, for B seeds at once, seeing bandit feedback only."""

    name: str = "base"
    uses_full_information: bool = False

    def __init__(self, game: Game, settings: LabSettings, n_seeds: int, seed: int = 0) -> None:
        self.game = game
        self.settings = settings
        self.B = n_seeds
        self.rng = np.random.default_rng(seed)
        self.oracle = BanditOracle(game, self.rng)
        self.log_ref = np.broadcast_to(np.log(game.ref), (n_seeds, *game.ref.shape)).copy()
        self.logp = self.log_ref.copy()  # pi_1 = pi_ref
        self.t = 0

    @property
    def eta(self) -> float:
        """This round's eta (see LabSettings.eta_at)."""
        return self.settings.eta_at(self.t)

    @property
    def policy(self) -> np.ndarray:
        """pi_t, the policy played this round, (B, C, K)."""
        return np.exp(self.logp)

    def contexts(self, n: int) -> np.ndarray:
        """Contexts x ~ d0 for n pairs per seed, (B, n)."""
        return sample_categorical(
            self.rng, np.broadcast_to(self.game.d0, (self.B, n, len(self.game.d0)))
        )

    def tensors(self, *arrays: np.ndarray) -> tuple[torch.Tensor, ...]:
        return tuple(torch.as_tensor(np.ascontiguousarray(a)) for a in arrays)

    @abstractmethod
    def step(self) -> None:
        """Play one round: sample, query the oracle, update the policy."""

    def run_round(self) -> None:
        self.step()
        self.t += 1
