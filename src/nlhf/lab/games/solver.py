"""Exact regularised Nash equilibrium: pi* ∝ pi_ref · exp(P pi* / tau), solved by damped Newton.

Everything is batched over leading axes (contexts, seeds, taus) so that the tabular lab can
re-solve many games per round. The naive fixed-point iteration diverges for small tau; Newton
on the log-policy residual with a backtracking line search converges quadratically and stays
stable down to tau = 0.01 (tests cover it).
"""

from __future__ import annotations

import numpy as np

from nlhf.lab.numerics import log_softmax, softmax


def _best_response_logits(P: np.ndarray, log_ref: np.ndarray, tau: np.ndarray, pi: np.ndarray):
    """u(pi) = log pi_ref + P pi / tau: the logits of the regularised best response to pi."""
    return log_ref + np.einsum("...ij,...j->...i", P, pi) / tau


def fixed_point_residual(P, ref, tau, pi) -> np.ndarray:
    """max |pi − softmax(log pi_ref + P pi / tau)| over responses, per leading index."""
    P, ref, pi = np.asarray(P, float), np.asarray(ref, float), np.asarray(pi, float)
    tau = np.asarray(tau, float)[..., None]
    target = softmax(_best_response_logits(P, np.log(ref), tau, pi), axis=-1)
    return np.abs(pi - target).max(axis=-1)


def _log_residual(P, log_ref, tau, logpi):
    pi = np.exp(logpi)
    u = _best_response_logits(P, log_ref, tau, pi)
    return logpi - log_softmax(u, axis=-1), pi, softmax(u, axis=-1)


def solve_nash(
    P: np.ndarray,
    ref: np.ndarray,
    tau: float | np.ndarray,
    init: np.ndarray | None = None,
    tol: float = 1e-12,
    max_iter: int = 200,
) -> np.ndarray:
    """Return pi* for every game in the batch (shape of ``ref``).

    ``init`` warm-starts the solve (the lab passes the previous round's solution).
    Raises RuntimeError if some game fails to reach ``tol`` in the log-residual.
    """
    P = np.asarray(P, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    P, ref = np.broadcast_arrays(P, ref[..., None, :])[0], ref
    tau_b = np.broadcast_to(np.asarray(tau, dtype=np.float64), ref.shape[:-1])[..., None]
    log_ref = np.log(ref)
    logpi = log_softmax(np.log(init) if init is not None else log_ref, axis=-1)
    K = ref.shape[-1]
    eye = np.eye(K)
    ones = np.ones(K)
    for _ in range(max_iter):
        r, pi, q = _log_residual(P, log_ref, tau_b, logpi)
        norm = np.abs(r).max(axis=-1)
        if norm.max() <= tol:
            return np.exp(logpi)
        # J = I − (I − 1 qᵀ) (P / tau) (diag(pi) − pi piᵀ)
        dpi = pi[..., :, None] * eye - pi[..., :, None] * pi[..., None, :]
        proj = eye - ones[:, None] * q[..., None, :]
        J = eye - proj @ (P / tau_b[..., None]) @ dpi
        step = -np.linalg.solve(J, r[..., None])[..., 0]
        step = np.where(np.isfinite(step), step, -r)
        # Backtracking per game: accept the largest a in {1, 1/2, ...} that lowers the residual.
        a = np.ones(norm.shape)
        done = norm <= tol
        new = logpi.copy()
        for _ in range(30):
            cand = log_softmax(logpi + a[..., None] * step, axis=-1)
            r_c, _, _ = _log_residual(P, log_ref, tau_b, cand)
            ok = (np.abs(r_c).max(axis=-1) < (1 - 1e-4 * a) * norm) | done
            new = np.where((ok & ~done)[..., None], cand, new)
            done = done | ok
            if done.all():
                break
            a = np.where(done, a, a / 2)
        # Games where no step helped take a small damped fixed-point step instead.
        stuck = ~done
        if stuck.any():
            u = _best_response_logits(P, log_ref, tau_b, np.exp(logpi))
            damped = log_softmax(logpi + 0.05 * (log_softmax(u, axis=-1) - logpi), axis=-1)
            new = np.where(stuck[..., None], damped, new)
        logpi = new
    r, _, _ = _log_residual(P, log_ref, tau_b, logpi)
    worst = np.abs(r).max()
    if worst > max(tol, 1e-9):
        raise RuntimeError(f"Nash solver did not converge (log-residual {worst:.3g})")
    return np.exp(logpi)


def solve_zero_sum(
    A: np.ndarray,
    ref: np.ndarray,
    tau: float | np.ndarray,
    init: tuple[np.ndarray, np.ndarray] | None = None,
    tol: float = 1e-10,
    max_iter: int = 100,
) -> tuple[np.ndarray, np.ndarray]:
    """Both players' equilibrium of max_pi min_q piᵀAq − tau·KL(pi||ref) + tau·KL(q||ref).

    For a payoff A that need not satisfy A + Aᵀ = 1 (an optimistic estimate of P), so the
    game is not symmetric and solve_nash does not apply. Fixed point in logs:
    pi = softmax(log ref + A q/tau), q = softmax(log ref − Aᵀ pi/tau); Newton on the 2K
    residual with per-game backtracking, warm-started from ``init`` (the last round's pair).
    Returns the best iterate reached (the lab's learner tolerates a 1e-6 residual).
    """
    A = np.asarray(A, dtype=np.float64)
    log_ref = np.log(np.asarray(ref, dtype=np.float64))
    K = log_ref.shape[-1]
    tau_b = np.broadcast_to(np.asarray(tau, dtype=np.float64), log_ref.shape[:-1])[..., None]
    At = np.swapaxes(A, -1, -2)
    if init is None:
        l, m = log_ref.copy(), log_ref.copy()
    else:
        l, m = (log_softmax(np.log(x), axis=-1) for x in init)

    def residual(l, m):
        s1 = log_softmax(log_ref + np.einsum("...ij,...j->...i", A, np.exp(m)) / tau_b, axis=-1)
        s2 = log_softmax(log_ref - np.einsum("...ij,...j->...i", At, np.exp(l)) / tau_b, axis=-1)
        return np.concatenate([l - s1, m - s2], axis=-1), np.exp(s1), np.exp(s2)

    eye = np.eye(K)
    for _ in range(max_iter):
        r, p1, p2 = residual(l, m)
        norm = np.abs(r).max(axis=-1)
        if norm.max() <= tol:
            break
        pi, q = np.exp(l), np.exp(m)
        proj1 = eye - p1[..., None, :]  # rows: I − 1 s1ᵀ
        proj2 = eye - p2[..., None, :]
        d1m = -proj1 @ (A / tau_b[..., None]) * q[..., None, :]
        d2l = proj2 @ (At / tau_b[..., None]) * pi[..., None, :]
        eyes = np.broadcast_to(eye, d1m.shape)
        J = np.concatenate(
            [np.concatenate([eyes, d1m], -1), np.concatenate([d2l, eyes], -1)], -2
        )
        step = -np.linalg.solve(J, r[..., None])[..., 0]
        step = np.where(np.isfinite(step), step, -r)
        a = np.ones(norm.shape)
        done = norm <= tol
        new_l, new_m = l.copy(), m.copy()
        for _ in range(30):
            cl = log_softmax(l + a[..., None] * step[..., :K], axis=-1)
            cm = log_softmax(m + a[..., None] * step[..., K:], axis=-1)
            ok = (np.abs(residual(cl, cm)[0]).max(axis=-1) < (1 - 1e-4 * a) * norm) | done
            take = (ok & ~done)[..., None]
            new_l, new_m = np.where(take, cl, new_l), np.where(take, cm, new_m)
            done = done | ok
            if done.all():
                break
            a = np.where(done, a, a / 2)
        stuck = (~done)[..., None]  # damped fixed-point step where Newton found no descent
        new_l = np.where(stuck, log_softmax(l + 0.05 * (np.log(p1) - l), axis=-1), new_l)
        new_m = np.where(stuck, log_softmax(m + 0.05 * (np.log(p2) - m), axis=-1), new_m)
        l, m = new_l, new_m
    return np.exp(l), np.exp(m)
