"""Judge answers cached in the run store, so a resumed run never asks the judge twice.

Why an order-normalised key: P(a≻b) = 1 − P(b≻a) for every (symmetrised) judge, so one
row per unordered pair serves both orders and halves the calls.

Failed pairs (NaN from the judge) are never stored, so a later or resumed run asks them
again; this round they count as a tie (1/2), are counted in ``failed`` and in the judge's
diagnostics, and once more than ``judge.max_failure_rate`` of the asked pairs failed (over
at least :data:`MIN_PAIRS_FOR_RATE` pairs) the run stops with one line.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from nlhf.errors import NLHFInputError
from nlhf.llm.judges.base import Judge
from nlhf.llm.judges.diagnostics import JudgeDiagnostics
from nlhf.llm.store import RunStore

#: The failure rate is judged over at least this many pairs, so two early failures in a
#: batch of four do not stop a run whose judge is fine.
MIN_PAIRS_FOR_RATE = 20


class JudgeFailureError(NLHFInputError):
    """Too many pairs got no usable answer from the judge (``judge.max_failure_rate``)."""


def judge_key(identity: str, prompt: str, a: str, b: str) -> str:
    """A fixed-length key for (judge, prompt, a, b); the parts cannot run into each other."""
    h = hashlib.sha256()
    for part in (identity, prompt, a, b):
        data = part.encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


class CachedJudge(Judge):
    """Wraps a judge: look every pair up in the store, ask the inner judge for misses only."""

    symmetric = True  # answers come back symmetrised from the inner judge or the cache

    def __init__(self, judge: Judge, store: RunStore) -> None:
        self.judge = judge
        self.store = store
        self.name = judge.name
        self.hits = 0
        self.misses = 0
        self.failed = 0

    @property
    def innermost(self) -> Judge:
        """The judge that really answers (through wrappers such as ShardedJudge)."""
        judge = self.judge
        while isinstance(getattr(judge, "judge", None), Judge):
            judge = judge.judge
        return judge

    @property
    def diagnostics(self) -> JudgeDiagnostics:
        """The answering judge's counts (under several processes: this rank's share)."""
        return self.innermost.diagnostics

    def answer_mode(self) -> dict[str, float]:
        return self.innermost.answer_mode()

    def settings(self) -> dict[str, Any]:
        return self.judge.settings()

    def identity(self) -> str:
        return self.judge.identity()

    def _prob_one_order(self, prompts: list[str], a: list[str], b: list[str]) -> np.ndarray:
        return self.prob(prompts, a, b)

    def prob(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        prompts, a, b = list(prompts), list(a), list(b)
        if not len(prompts) == len(a) == len(b):
            raise ValueError(f"judge {self.name}: prompts, a and b differ in length")
        ident = self.identity()
        out = np.full(len(prompts), 0.5)
        # Canonical order: the lexicographically smaller response first; flip marks a swap.
        wanted: dict[str, tuple[str, str, str]] = {}
        rows: list[tuple[int, str, bool]] = []
        for i, (p, x, y) in enumerate(zip(prompts, a, b, strict=True)):
            if x == y:
                continue  # P(y ≻ y) = 1/2 for every judge: no call, no row
            flip = x > y
            lo, hi = (y, x) if flip else (x, y)
            key = judge_key(ident, p, lo, hi)
            wanted.setdefault(key, (p, lo, hi))
            rows.append((i, key, flip))
        known = self.store.judge_get_many(list(wanted))
        missing = [k for k in wanted if k not in known]
        self.hits += len(wanted) - len(missing)
        self.misses += len(missing)
        if missing:
            ps, los, his = zip(*(wanted[k] for k in missing), strict=True)
            fresh = np.asarray(self.judge.prob(list(ps), list(los), list(his)), dtype=float)
            ok = np.isfinite(fresh)
            self.store.judge_put_many(
                {"key": k, "judge": ident, "prompt": wanted[k][0], "a": wanted[k][1],
                 "b": wanted[k][2], "prob": float(v)}
                for k, v, good in zip(missing, fresh, ok, strict=True) if good
            )
            known.update(zip(missing, (float(v) if good else 0.5 for v, good in
                                       zip(fresh, ok, strict=True)), strict=True))
            self.failed += int((~ok).sum())
            self._check_failures()
        for i, key, flip in rows:
            out[i] = 1.0 - known[key] if flip else known[key]
        return out

    def _check_failures(self) -> None:
        limit = float(getattr(self.innermost, "max_failure_rate", Judge.max_failure_rate))
        if self.failed <= limit * max(self.misses, MIN_PAIRS_FOR_RATE):
            return
        reason = str(getattr(self.innermost, "last_failure", "") or "")
        raise JudgeFailureError(
            f"judge {self.name}: {self.failed} of {self.misses} pairs got no usable answer "
            f"({self.failed / self.misses:.0%}, more than judge.max_failure_rate {limit:g})"
            + (f"; last: {reason}" if reason else "")
            + "; check the judge (endpoint, model, template) or raise judge.max_failure_rate")
