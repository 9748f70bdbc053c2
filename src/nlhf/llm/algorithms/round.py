"""What an algorithm's round can ask for: samples, log-probs, judgements, a fit (:class:`Round`).

An algorithm writes its whole round as one function over these four services, top to bottom
(sample → judge → targets → fit), and never sees the run store. Each service is a resumable
phase: a finished phase is read back from the store (a finished fit loads the adapter it
saved), an unfinished one re-runs from the same weights with the same seed, so a killed and
resumed run ends bit-identical to an uninterrupted one and never asks the judge twice.

:class:`~nlhf.llm.plan.PlanRound` implements the same services without a model, counting
generations, judge calls and training rows: the dry-run plan runs the very round the trainer
runs.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from nlhf.llm.distributed import SINGLE, Dist, sharded_logprobs
from nlhf.llm.fit import LossFn, fit
from nlhf.llm.judges.diagnostics import RoundDiagnostics
from nlhf.llm.samples import (
    ADAPTER_OF,
    RoundData,
    Source,
    attach_logprobs,
    load_round,
    missing_logprobs,
    phase_seed,
    run_generation,
    run_judge,
    run_logprobs,
)

if TYPE_CHECKING:
    from nlhf.llm.config import HParams, TrainConfig
    from nlhf.llm.judges import CachedJudge
    from nlhf.llm.policy.lm import LMPolicy
    from nlhf.llm.rollout.base import Generator
    from nlhf.llm.rundir import RunDir
    from nlhf.llm.store import RunStore


@dataclass(frozen=True)
class Versus:
    """Each sample of ``role`` against the first ``n`` samples of ``against`` of its prompt."""

    role: str
    against: str
    n: int


@dataclass(frozen=True)
class SideBySide:
    """Sample i of ``role`` against sample i of ``opponent`` (the pairwise methods' pairs)."""

    role: str
    opponent: str


Question = Versus | SideBySide


def comparisons(data: RoundData, q: Question) -> list[tuple[str, int, str, int]]:
    """The (role_a, i_a, role_b, i_b) pairs that answer ``q``, in the order of its answer."""
    if isinstance(q, SideBySide):
        return [(q.role, i, q.opponent, i) for i in range(len(data.roles[q.role]))]
    mine, theirs = data.roles[q.role], data.roles[q.against]
    if q.n > theirs.per_prompt:
        raise ValueError(f"{q.against} has {theirs.per_prompt} samples per prompt, not {q.n}")
    return [(q.role, i, q.against, theirs.at(mine.prompt_pos[i], j))
            for i in range(len(mine)) for j in range(q.n)]


def answer_shape(data: RoundData, q: Question) -> tuple[int, ...]:
    """SideBySide: one P(a ≻ b) per pair; Versus: a row of ``n`` per sample of ``role``."""
    n = len(data.roles[q.role])
    return (n,) if isinstance(q, SideBySide) else (n, q.n)


class Round:
    """One iteration of one run: the services of the module docstring, on a real policy."""

    def __init__(self, *, policy: LMPolicy, cfg: TrainConfig, iteration: int, store: RunStore,
                 run: RunDir, judge: CachedJudge, prompts: list[tuple[int, str]],
                 progress: bool = False, checkpoint: Callable[[str], None] = lambda key: None,
                 generator: Generator | None = None, dist: Dist = SINGLE) -> None:
        self.policy, self.cfg, self.iteration = policy, cfg, iteration
        self.store, self.run, self.judge_ = store, run, judge
        self.prompts, self.progress, self.checkpoint = prompts, progress, checkpoint
        self.generator, self.dist = generator, dist
        self.data: RoundData | None = None  # the round's samples, once sampled
        self.timings: dict[str, float] = {}
        #: Position consistency, ties and failures of this round's judge pass (metrics).
        self.judge_diagnostics: dict[str, float] = {}

    # -- bookkeeping --------------------------------------------------------------------------

    def key(self, name: str) -> str:
        return f"it{self.iteration}/{name}"

    def seed(self, name: str) -> int:
        return phase_seed(self.cfg.seed, self.iteration, name)

    def phase(self, name: str, body: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Run ``body`` once per run: its payload (plus ``seconds``) is stored when it ends."""
        key = self.key(name)
        if not self.store.is_done(key):
            start = time.perf_counter()
            payload = body()
            payload["seconds"] = time.perf_counter() - start
            self.store.mark_done(key, payload)
            self.checkpoint(key)
        payload = self.store.step_payload(key) or {}
        self.timings[name] = float(payload.get("seconds", 0.0))
        return payload

    # -- the four services ----------------------------------------------------------------------

    def sample(self, *sources: Source) -> RoundData:
        """Every source's samples for the round's prompts (one ``generate`` call each)."""
        tokens = [self.policy.encode_prompt(text) for _, text in self.prompts]
        self.phase("generate", lambda: run_generation(
            self.policy, self.cfg, self.iteration, self.prompts, tokens, sources, self.store,
            self.progress, self.generator, self.run, self.dist))
        self.data = load_round(self.store, self.iteration, self.prompts, tokens, sources,
                               self.policy.device)
        return self.data

    def logprobs(self, data: RoundData, needs: Sequence[tuple[str, str]]) -> None:
        """Fill ``data.roles[role].logp[model]`` for each (role, model) the round needs (the
        generation cache already holds the sampler's own); the policy's KL metric needs
        (policy, pi_t) and (policy, ref) in every round."""
        needs = [*needs, ("policy", "pi_t"), ("policy", "ref")]
        lp = self.phase("logprobs", lambda: {"values": run_logprobs(
            self.policy, data, missing_logprobs(data, needs), self.cfg.rollout.batch_size,
            self.progress, self.dist)})
        attach_logprobs(data, lp["values"])

    def judge(self, data: RoundData, *questions: Question) -> list[np.ndarray]:
        """P(a ≻ b) for every question, asked in one batched, cached, resumable pass."""
        asked = [comparisons(data, q) for q in questions]
        judge = self.judge_

        def ask() -> dict[str, Any]:
            hits, misses = judge.hits, judge.misses
            diagnostics = RoundDiagnostics(judge, self.store, self.dist, self.key("judge"))

            def chunk_done(k: int) -> None:
                diagnostics.chunk_done(k)
                self.checkpoint(f"{self.key('judge')}/chunk{k}")

            probs = run_judge(judge, data, [c for block in asked for c in block], self.progress,
                              chunk_done)
            return {"probs": probs, "asked": judge.misses - misses, "cached": judge.hits - hits,
                    "diagnostics": diagnostics.metrics()}

        payload = self.phase("judge", ask)
        self.judge_diagnostics = dict(payload.get("diagnostics", {}))
        probs = np.asarray(payload["probs"], dtype=np.float64)
        bounds = np.cumsum([0, *(len(block) for block in asked)])
        return [probs[lo:hi].reshape(answer_shape(data, q))
                for q, lo, hi in zip(questions, bounds[:-1], bounds[1:], strict=True)]

    def score(self, data: RoundData, role: str, idx: Sequence[int], model: str) -> torch.Tensor:
        """No-grad log-probs of samples ``idx`` of ``role`` under ``model`` as it is now
        (e.g. pi_{t+1} after Step A; the stored ``logp`` are those of sampling time)."""
        p_ids, r_ids = data.seqs(role, idx)
        with torch.no_grad():
            return sharded_logprobs(self.policy, self.dist, p_ids, r_ids, ADAPTER_OF[model],
                                    self.cfg.rollout.batch_size).detach()

    def policy_logprobs(self, data: RoundData, groups: Sequence[tuple[str, Sequence[int]]], *,
                        adapter: str) -> torch.Tensor:
        """Differentiable log-probs under ``adapter`` of the samples of each (role, indices)
        group, concatenated in order, in one batched forward (a loss's micro-batch)."""
        p_ids: list[list[int]] = []
        r_ids: list[list[int]] = []
        for role, idx in groups:
            p, r = data.seqs(role, idx)
            p_ids += p
            r_ids += r
        return self.policy.sequence_logprobs(p_ids, r_ids, adapter, grad=True,
                                             batch_size=len(p_ids))

    def fit(self, name: str, adapter: str, loss_fn: LossFn, n_items: int,
            n_extra: int = 0) -> dict[str, Any]:
        """Train ``adapter`` on ``loss_fn`` and save it to ``adapters/iter_t/<adapter>``.

        Already done: load the saved adapter instead of training (same weights, no work).
        """
        target = self.run.adapter(self.iteration, adapter)
        if self.store.is_done(self.key(name)):
            self.policy.load_adapter(adapter, target)
            return self.phase(name, dict)

        def train_and_save() -> dict[str, Any]:
            stats = fit(self.policy, adapter, n_items, loss_fn, self.cfg.train, self.seed(name),
                        n_extra=n_extra, progress=self.progress,
                        desc=f"{name} (iter {self.iteration})",
                        on_step=lambda step: self.checkpoint(f"{self.key(name)}/step{step}"),
                        dist=self.dist)
            if self.dist.is_main:
                self.policy.save_adapter(adapter, target)
            return stats

        return self.phase(name, train_and_save)

    def copy_adapter(self, src: str, dst: str) -> None:
        self.policy.copy_adapter(src, dst)

    def tensor(self, values: Any) -> torch.Tensor:
        """Numbers as float32 on the policy's device (where the losses are computed)."""
        return torch.as_tensor(np.asarray(values), dtype=torch.float32,
                               device=self.policy.device)


class Algorithm(ABC):
    """One algorithm on a language model: a name, its adapters and its round."""

    name: ClassVar[str]
    #: The adapters its round trains and saves each iteration (the policy's comes first).
    adapters: ClassVar[tuple[str, ...]] = ("policy",)

    def __init__(self, h: HParams) -> None:
        self.h = h

    @abstractmethod
    def round(self, r: Round) -> dict[str, float]:
        """Sample, judge, fit; returns the round's own metrics (scores, losses)."""


def phase_metrics(name: str, payload: dict[str, Any]) -> dict[str, float]:
    """Numeric payload entries as ``<phase>_<key>`` metrics; ``seconds_<part>`` as
    ``time_<phase>_<part>`` (the phase's own ``seconds`` is the loop's ``time_<phase>``)."""
    out: dict[str, float] = {}
    for k, v in payload.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or k == "seconds":
            continue
        key = f"time_{name}_{k[8:]}" if k.startswith("seconds_") else f"{name}_{k}"
        out[key] = float(v)
    return out
