"""The tabular judge: exact preferences of a finite game, for checking the LLM pipeline.

Why strings of indices: the trainer speaks text, so a tabular game enters it as prompts
"c" and responses "i"; the judge returns P[c, i, j] exactly (no sampling), which lets
tests compare the text pipeline with the exact dynamics of SPEC §3.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from nlhf.errors import NLHFInputError
from nlhf.llm.judges.base import Judge
from nlhf.preferences import check_preferences


class TabularJudge(Judge):
    """P(y_i ≻ y_j | x_c) = P[c, i, j] for prompt "c" and responses "i", "j"."""

    name = "tabular"
    symmetric = True  # P + Pᵀ = 1 is checked below

    def __init__(self, P: Any, batch_size: int = 4096) -> None:
        P = np.asarray(P, dtype=np.float64)
        if P.ndim == 2:
            P = P[None]
        if P.ndim != 3:
            raise NLHFInputError(f"judge.P: must have shape (C, K, K) or (K, K), got {P.shape}")
        check_preferences(P, where="judge")
        self.P = P
        self.batch_size = batch_size

    def settings(self) -> dict[str, Any]:
        digest = hashlib.sha256(np.ascontiguousarray(self.P).tobytes()).hexdigest()[:16]
        return {"shape": list(self.P.shape), "sha256": digest}

    def _index(self, text: str, size: int, what: str) -> int:
        try:
            i = int(str(text).strip())
        except ValueError:
            raise NLHFInputError(
                f"judge tabular: {what} {text!r} is not an integer index"
            ) from None
        if not 0 <= i < size:
            raise NLHFInputError(f"judge tabular: {what} {i} is out of range [0, {size})")
        return i

    def _prob_one_order(self, prompts: list[str], a: list[str], b: list[str]) -> np.ndarray:
        C, K, _ = self.P.shape
        c = [self._index(x, C, "context") for x in prompts]
        i = [self._index(x, K, "response") for x in a]
        j = [self._index(x, K, "response") for x in b]
        return self.P[c, i, j].astype(np.float64)
