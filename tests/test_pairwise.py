"""The pairwise round's estimators on an exact game (no language model: log-probs come from
tables), through the real round code of :mod:`nlhf.llm.algorithms.pairwise`."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from scipy.special import log_softmax

from nlhf.llm.algorithms.pairwise import Pairwise, nash_md_weights
from nlhf.llm.config import HParams
from nlhf.llm.fit import Micro
from nlhf.llm.samples import RoleSamples, RoundData

K, ETA, TAU = 4, 0.5, 0.3


class TableRound:
    """Round services over a tabular game: response k of every prompt is the token [k];
    ``fit`` evaluates the round's loss on consecutive minibatches of ``batch`` pairs and
    returns their mean (the estimate the optimiser follows)."""

    def __init__(self, data: RoundData, p_win: np.ndarray, theta: np.ndarray, batch: int):
        self.data, self.p_win, self.batch = data, p_win, batch
        self.lp = torch.as_tensor(theta, dtype=torch.float64)
        self.estimate = float("nan")
        self.timings: dict[str, float] = {}

    def sample(self, *sources: Any) -> RoundData:
        return self.data

    def logprobs(self, data: RoundData, needs: Any) -> None:
        return None

    def judge(self, data: RoundData, *questions: Any) -> list[np.ndarray]:
        return [self.p_win]

    def policy_logprobs(self, data: RoundData, groups: Any, *, adapter: str) -> torch.Tensor:
        ids = [data.roles[role].response_ids[i][0] for role, idx in groups for i in idx]
        return self.lp[ids]

    def fit(self, name: str, adapter: str, loss_fn: Any, n_items: int,
            n_extra: int = 0) -> dict[str, Any]:
        items = list(range(n_items))
        parts = [items[s:s + self.batch] for s in range(0, n_items, self.batch)]
        self.estimate = float(np.mean([float(loss_fn(Micro(b, [], b, []))) for b in parts]))
        return {}

    def tensor(self, values: Any) -> torch.Tensor:
        return torch.as_tensor(np.asarray(values), dtype=torch.float64)


def _game(seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    upper = rng.uniform(size=(K, K))
    P = np.triu(upper, 1) + np.tril(1 - upper.T, -1) + 0.5 * np.eye(K)
    ref = log_softmax(rng.normal(size=K))
    old = log_softmax(ref + 1.5 * rng.normal(size=K))  # pi_t far from pi_ref
    theta = log_softmax(old + rng.normal(size=K))  # the policy being fitted
    return P, ref, old, theta


def _round_data(y: np.ndarray, y2: np.ndarray, ref: np.ndarray, old: np.ndarray) -> RoundData:
    n = len(y)

    def role(name: str, picks: np.ndarray) -> RoleSamples:
        rs = RoleSamples(name, "pi_t", 1, list(range(n)), [[int(k)] for k in picks],
                         [str(k) for k in picks])
        rs.logp = {"ref": ref[picks], "pi_t": old[picks]}
        return rs

    return RoundData(1, list(range(n)), [""] * n, [[0]] * n,
                     {"policy": role("policy", y), "opponent": role("opponent", y2)})


def _exact_nash_md_objective(P, ref, old, theta) -> float:
    """E over y, y' ~ mu_t of p·l(y, y') + (1 − p)·l(y', y), mu_t ∝ pi_t^{1−τ/η}·pi_ref^{τ/η}."""
    mu = np.exp(log_softmax((1 - TAU / ETA) * old + (TAU / ETA) * ref))
    h = (theta[:, None] - theta[None, :]) - (TAU / ETA) * (ref[:, None] - ref[None, :]) \
        - (1 - TAU / ETA) * (old[:, None] - old[None, :])
    loss = (h - 1 / (2 * ETA)) ** 2
    return float(np.sum(mu[:, None] * mu[None, :] * (P * loss + (1 - P) * loss.T)))


@pytest.mark.parametrize("batch", [1, 8])
def test_nash_md_estimates_the_mixture_objective_at_any_batch_size(batch: int) -> None:
    """Round-level self-normalised importance weights: the minibatch losses average to the
    exact objective under the mixture mu_t at batch 1 and 8 alike. Dividing each minibatch
    by its own weights' sum instead would give the pi_t objective at batch 1 (plain INPO)."""
    P, ref, old, theta = _game()
    rng = np.random.default_rng(1)
    n = 8_000
    pi_t = np.exp(old)
    y, y2 = rng.choice(K, size=n, p=pi_t), rng.choice(K, size=n, p=pi_t)
    r = TableRound(_round_data(y, y2, ref, old), P[y, y2], theta, batch)
    Pairwise(HParams(eta=ETA, tau=TAU), "nash-md").round(r)  # type: ignore[arg-type]
    exact = _exact_nash_md_objective(P, ref, old, theta)
    assert r.estimate == pytest.approx(exact, rel=0.05)
    # The per-minibatch normalisation at batch 1 targets the pi_t objective, far from it:
    # this is what the test would catch.
    inpo_r = TableRound(_round_data(y, y2, ref, old), P[y, y2], theta, batch)
    Pairwise(HParams(eta=ETA, tau=TAU), "inpo").round(inpo_r)  # type: ignore[arg-type]
    assert abs(inpo_r.estimate - exact) > 0.2 * exact


def test_nash_md_weights_have_mean_one_and_the_mixture_ratio() -> None:
    ref, old = np.array([-1.0, -2.0, -0.5]), np.array([-0.2, -3.0, -1.0])
    w = nash_md_weights(ref, old, ETA, TAU)
    assert w.mean() == pytest.approx(1.0)
    ratio = np.exp((TAU / ETA) * (ref - old))
    assert np.allclose(w / w[0], ratio / ratio[0])
