"""Is the judge's label worth training on? Counts from the answers it already gives.

A position-biased judge asked both orders (a first, then b first) should name the same
winner twice. When it names whichever response it read first (or second) both times, or
calls everything even, its labels are noise and the run learns nothing: these counts say so
per round, at no extra judge call.

Per pair, with f = P(first shown wins | a first) and g = P(first shown wins | b first):

- *consistent*: both orders decided (≠ 1/2) and the same response wins (f > ½ ⇔ g < ½);
- *follows position*: both orders decided and the same *position* wins (f > ½ ⇔ g > ½);
- *tie*: the symmetrised P(a ≻ b) = ½ + (f − g)/2 is ½ (within :data:`TIE_TOLERANCE`);
- *failure*: no usable answer in some order (NaN): never a label, never cached.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass, fields
from typing import Any, Protocol

import numpy as np

TIE_TOLERANCE = 1e-6
#: Above these shares a round's labels are mostly noise: one warning line per round.
WARN_FOLLOWS_POSITION = 0.5
WARN_TIES = 0.5


@dataclass
class JudgeDiagnostics:
    """Running counts over the pairs a judge was asked (a ≠ b); subtract two for a round."""

    pairs: int = 0
    failures: int = 0
    ties: int = 0
    both_orders: int = 0  # answered in both orders (judges that are not symmetric)
    consistent: int = 0
    follows_position: int = 0

    def add_orders(self, f: np.ndarray, g: np.ndarray) -> None:
        """Record pairs asked in both orders (f: a shown first, g: b shown first)."""
        f, g = np.asarray(f, dtype=float), np.asarray(g, dtype=float)
        ok = np.isfinite(f) & np.isfinite(g)
        self._add_outcomes(0.5 + 0.5 * (f - g), ok)
        fd, gd = np.sign(f[ok] - 0.5), np.sign(g[ok] - 0.5)
        decided = (fd != 0) & (gd != 0)
        self.both_orders += int(ok.sum())
        self.consistent += int((decided & (fd == -gd)).sum())
        self.follows_position += int((decided & (fd == gd)).sum())

    def add_symmetric(self, p: np.ndarray) -> None:
        """Record pairs of a judge asked in one order (no position bias by construction)."""
        p = np.asarray(p, dtype=float)
        self._add_outcomes(p, np.isfinite(p))

    def _add_outcomes(self, p: np.ndarray, ok: np.ndarray) -> None:
        self.pairs += int(ok.size)
        self.failures += int((~ok).sum())
        self.ties += int((np.abs(p[ok] - 0.5) <= TIE_TOLERANCE).sum())

    def since(self, earlier: JudgeDiagnostics) -> JudgeDiagnostics:
        """The counts added after ``earlier`` (a snapshot taken with :meth:`copy`)."""
        return JudgeDiagnostics(**{f.name: getattr(self, f.name) - getattr(earlier, f.name)
                                   for f in fields(self)})

    def copy(self) -> JudgeDiagnostics:
        return JudgeDiagnostics(*astuple(self))

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def metrics(self) -> dict[str, float]:
        """Rates for metrics.jsonl (``judge_`` prefix); a rate with no pairs is left out."""
        out = {"judge_pairs": float(self.pairs), "judge_failures": float(self.failures)}
        if self.pairs:
            out["judge_failure_rate"] = self.failures / self.pairs
        answered = self.pairs - self.failures
        if answered:
            out["judge_tie_rate"] = self.ties / answered
        if self.both_orders:
            out["judge_position_consistency"] = self.consistent / self.both_orders
            out["judge_follows_position"] = self.follows_position / self.both_orders
        return out


class _Store(Protocol):
    def is_done(self, key: str) -> bool: ...
    def mark_done(self, key: str, payload: dict[str, Any] | None = None) -> None: ...
    def step_payload(self, key: str) -> dict[str, Any] | None: ...


class _Dist(Protocol):
    def gather(self, items: list[int]) -> list[int]: ...


class RoundDiagnostics:
    """One round's diagnostics, saved chunk by chunk in the run store, so that a round
    resumed after a kill mid-judging, or judged by several processes, reports exactly what
    an uninterrupted single-process round reports (answers found in the cache carry no
    both-orders information; their chunk's counts were saved when they were asked)."""

    def __init__(self, judge: Any, store: _Store, dist: _Dist, key: str) -> None:
        self.judge, self.store, self.dist, self.key = judge, store, dist, key
        self._last = judge.diagnostics.copy()

    def chunk_done(self, k: int) -> None:
        """After judge chunk ``k``: its counts, summed over processes, stored once."""
        now = self.judge.diagnostics
        delta, self._last = now.since(self._last), now.copy()
        width = len(fields(delta))
        gathered = self.dist.gather(list(astuple(delta)))
        total = JudgeDiagnostics(*(sum(gathered[i::width]) for i in range(width)))
        key = f"{self.key}/diagnostics{k}"
        if not self.store.is_done(key):
            mode = self.judge.answer_mode() if total.pairs else {}
            self.store.mark_done(key, {**total.as_dict(), **mode})

    def metrics(self) -> dict[str, float]:
        """The round's rates and answer mode, from every chunk saved so far."""
        counts = dict.fromkeys((f.name for f in fields(JudgeDiagnostics)), 0)
        mode: dict[str, float] = {}
        k = 0
        while (payload := self.store.step_payload(f"{self.key}/diagnostics{k}")) is not None:
            for name in counts:
                counts[name] += int(payload[name])
            mode |= {n: float(v) for n, v in payload.items() if n not in counts}
            k += 1
        return JudgeDiagnostics(**counts).metrics() | mode


def noise_warning(judge: str, metrics: dict[str, float]) -> str | None:
    """One line when a round's labels are mostly position or ties, else None."""
    follows = metrics.get("judge_follows_position", 0.0)
    ties = metrics.get("judge_tie_rate", 0.0)
    if follows > WARN_FOLLOWS_POSITION:
        return (f"judge {judge}: {follows:.0%} of pairs were won by the response shown in the "
                "same position in both orders (it follows position, not content): its labels "
                "are noise; use a stronger judge or another template")
    if ties > WARN_TIES:
        return (f"judge {judge}: {ties:.0%} of pairs came out even (P = 1/2): its labels are "
                "mostly noise; use a stronger judge or another template")
    return None
