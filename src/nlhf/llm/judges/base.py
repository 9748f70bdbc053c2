"""The judge interface: P(a ≻ b | prompt) for batches, symmetrised over both orders.

Why both orders: LLM judges prefer whichever answer they read first (position bias).
Averaging P(a≻b) with 1 − P(b≻a) cancels it and makes every judge satisfy
prob(a, b) + prob(b, a) = 1 and prob(a, a) = 1/2, as the game (SPEC §1) requires.

A pair the judge could not answer (an unusable reply, after its retries) comes back as NaN,
never as a made-up 1/2: :class:`~nlhf.llm.judges.cached.CachedJudge` counts it, keeps it out
of the cache and stops the run when too many fail (``judge.max_failure_rate``).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from typing import Any, Generic, TypeVar

import numpy as np

from nlhf.llm.judges.diagnostics import JudgeDiagnostics

V = TypeVar("V")


class Judge(ABC):
    """A preference oracle. Subclasses implement `_prob_one_order`; callers use `prob`."""

    name: str = "judge"
    #: True when P(a≻b) = 1 − P(b≻a) holds by construction (no position bias), so `prob`
    #: asks one order only; the symmetrised answer would be identical.
    symmetric: bool = False
    #: How many pairs `_prob_one_order` sees at once.
    batch_size: int = 64
    #: Share of asked pairs that may fail (no usable answer) before the run stops; set from
    #: the ``judge.max_failure_rate`` field. Not part of the identity: it never changes an
    #: answer.
    max_failure_rate: float = 0.1

    @property
    def diagnostics(self) -> JudgeDiagnostics:
        """Counts over every pair this judge was asked (see :mod:`.diagnostics`)."""
        found = self.__dict__.get("_diagnostics")
        if found is None:
            found = self.__dict__["_diagnostics"] = JudgeDiagnostics()
        return found

    def answer_mode(self) -> dict[str, float]:
        """How the answers were actually obtained, as metrics (e.g. log-probs or text), when
        that is found out at run time rather than configured. Never part of the identity."""
        return {}

    def preflight_check(self) -> None:
        """A cheap check before a run starts (no model load, no network); raises
        NLHFInputError. Judges that run user code override it."""
        return None

    def settings(self) -> dict[str, Any]:
        """The settings that change the judge's answers (never secrets)."""
        return {}

    def identity(self) -> str:
        """A stable string naming the judge and its settings, used in cache keys."""
        return f"{self.name}:{json.dumps(self.settings(), sort_keys=True, default=str)}"

    @abstractmethod
    def _prob_one_order(
        self, prompts: list[str], a: list[str], b: list[str]
    ) -> np.ndarray:
        """P(a_i ≻ b_i | prompt_i) in [0, 1] with a shown first; may be position-biased;
        NaN where the judge gave no usable answer."""

    def prob(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        """Symmetrised P(a_i ≻ b_i | prompt_i): the mean of P(a≻b) and 1 − P(b≻a); NaN for a
        pair that failed in either order."""
        prompts, a, b = list(prompts), list(a), list(b)
        if not len(prompts) == len(a) == len(b):
            raise ValueError(
                f"judge {self.name}: prompts, a and b differ in length "
                f"({len(prompts)}, {len(a)}, {len(b)})"
            )
        out = np.full(len(prompts), 0.5)  # P(y ≻ y) = 1/2 exactly, without asking
        todo = [i for i in range(len(prompts)) if a[i] != b[i]]
        if not todo:
            return out
        prompts = [prompts[i] for i in todo]
        a, b = [a[i] for i in todo], [b[i] for i in todo]
        if self.symmetric:
            p = self._batched(prompts, a, b)
            self.diagnostics.add_symmetric(p)
        else:
            # Both orders in the same batches, so a GPU judge fills its batch once.
            n = len(todo)
            both = self._batched(prompts + prompts, a + b, b + a)
            # 0.5 + (f − g)/2 with g = P(b≻a): swapping a and b negates the difference
            # exactly, so prob(a, b) + prob(b, a) = 1 up to one rounding.
            p = 0.5 + 0.5 * (both[:n] - both[n:])
            self.diagnostics.add_orders(both[:n], both[n:])
        out[todo] = np.clip(p, 0.0, 1.0)
        return out

    def _batched(self, prompts: list[str], a: list[str], b: list[str]) -> np.ndarray:
        out = []
        for s in range(0, len(prompts), max(1, int(self.batch_size))):
            e = s + max(1, int(self.batch_size))
            part = np.asarray(self._prob_one_order(prompts[s:e], a[s:e], b[s:e]), dtype=float)
            if part.shape != (len(prompts[s:e]),):
                raise RuntimeError(f"judge {self.name}: returned shape {part.shape}")
            out.append(part)
        return np.concatenate(out)


class LRU(Generic[V]):
    """A bounded in-memory map, so per-text caches (embeddings, scores) cannot eat the RAM.

    Hand-written (20 lines): the judges look a batch up key by key and compute the missing
    ones in one batched call, which ``functools.lru_cache`` cannot; see docs/trainer.md.
    """

    def __init__(self, maxsize: int = 100_000) -> None:
        self.maxsize = maxsize
        self._data: OrderedDict[Hashable, V] = OrderedDict()

    def get(self, key: Hashable) -> V | None:
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
        return value

    def put(self, key: Hashable, value: V) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.maxsize:
            self._data.popitem(last=False)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)
