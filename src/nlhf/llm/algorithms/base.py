"""What a training round sees (:class:`RoundContext`) and what an algorithm provides.

An algorithm declares its data (which policies sample which roles, which log-probs it
needs, which comparisons the judge makes) and runs its training phases through
:meth:`RoundContext.train_phase`, which makes each phase resumable: a finished phase is
replaced by loading the adapter it saved, an unfinished one re-runs from the same weights
with the same seed, so a killed and resumed run ends bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from nlhf.llm.distributed import SINGLE, Dist
from nlhf.llm.samples import Comparison, RoundData, Source, phase_seed

if TYPE_CHECKING:
    from nlhf.llm.config import TrainConfig
    from nlhf.llm.policy.lm import LMPolicy
    from nlhf.llm.rundir import RunDir
    from nlhf.llm.store import RunStore


@dataclass
class RoundContext:
    """Everything one round's phases need; ``checkpoint(key)`` marks a resumable point.

    Under several processes ``store`` is a :class:`~nlhf.llm.distributed.RankZeroStore` and
    only rank 0 (``dist.is_main``) writes files.
    """

    policy: LMPolicy
    cfg: TrainConfig
    iteration: int
    store: RunStore
    run: RunDir
    progress: bool
    checkpoint: Callable[[str], None]
    dist: Dist = SINGLE

    def key(self, name: str) -> str:
        return f"it{self.iteration}/{name}"

    def seed(self, name: str) -> int:
        return phase_seed(self.cfg.seed, self.iteration, name)

    def on_step(self, name: str) -> Callable[[int], None]:
        """Callback for `fit`: a checkpoint after each optimizer step of phase ``name``."""
        return lambda step: self.checkpoint(f"{self.key(name)}/step{step}")

    def phase(self, name: str, body: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Run ``body`` once per run: its payload (plus ``seconds``) is stored when it ends."""
        key = self.key(name)
        if not self.store.is_done(key):
            start = time.perf_counter()
            payload = body()
            payload["seconds"] = time.perf_counter() - start
            self.store.mark_done(key, payload)
            self.checkpoint(key)
        return self.store.step_payload(key) or {}

    def train_phase(self, name: str, adapter: str, body: Callable[[], dict[str, Any]]
                    ) -> dict[str, Any]:
        """A phase that trains ``adapter`` and saves it to ``adapters/iter_t/<adapter>``.

        Already done: load the saved adapter instead of training (same weights, no work).
        """
        target = self.run.adapter(self.iteration, adapter)
        key = self.key(name)
        if self.store.is_done(key):
            self.policy.load_adapter(adapter, target)
            return self.store.step_payload(key) or {}

        def run_and_save() -> dict[str, Any]:
            payload = body()
            if self.dist.is_main:
                self.policy.save_adapter(adapter, target)
            return payload

        return self.phase(name, run_and_save)


class LLMAlgorithm(ABC):
    """One algorithm's round on a language model (data declaration + training phases)."""

    name: ClassVar[str]
    #: Names of the training phases :meth:`update` runs (store keys ``it{t}/<phase>``).
    train_phases: ClassVar[tuple[str, ...]] = ("train",)

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.h = cfg.hparams

    @abstractmethod
    def sources(self) -> list[Source]:
        """Which policy samples which role, how many per prompt (one generate call each)."""

    def logprob_needs(self) -> list[tuple[str, str]]:
        """(role, model) log-probs the losses use; the generation cache fills what it can."""
        return []

    @abstractmethod
    def comparisons(self, data: RoundData) -> list[Comparison]:
        """Every P(a ≻ b) the round needs, asked in one batched judge pass."""

    @abstractmethod
    def judge_metrics(self, data: RoundData, probs: np.ndarray) -> dict[str, float]:
        """Mean judge scores for metrics.jsonl."""

    @abstractmethod
    def update(self, ctx: RoundContext, data: RoundData, probs: np.ndarray) -> dict[str, float]:
        """Run the training phases; return their metrics (names prefixed by phase)."""


def phase_metrics(name: str, payload: dict[str, Any]) -> dict[str, float]:
    """Numeric payload entries as ``<phase>_<key>`` metrics; ``seconds`` as ``time_<phase>``
    and ``seconds_<part>`` as ``time_<phase>_<part>`` (timings all start with ``time_``)."""
    out: dict[str, float] = {}
    for k, v in payload.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if k.startswith("seconds"):
            out[f"time_{name}{k.removeprefix('seconds')}"] = float(v)
        else:
            out[f"{name}_{k}"] = float(v)
    return out


def oriented(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both orientations of a pair: (winner, loser) rows (a, b) then (b, a)."""
    return torch.cat([a, b]), torch.cat([b, a])


def outcome_weights(p_a_wins: torch.Tensor) -> torch.Tensor:
    """Weights p and 1 − p of the two orientations made by :func:`oriented`.

    With them, a pairwise loss becomes its exact expectation over the oracle's Bernoulli
    outcome (a wins with probability p): no label noise, ties (p = 1/2) pull both ways.
    """
    return torch.cat([p_a_wins, 1.0 - p_a_wins])
