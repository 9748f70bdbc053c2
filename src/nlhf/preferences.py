"""What makes a preference tensor valid, shared by the lab's games and the LLM's tabular judge.

Why here: the exact games (lab) and the tabular judge (llm) both take a matrix
P[c, i, j] = P(y_i ≻ y_j | x_c); one check keeps their error messages and tolerances equal
without the LLM half importing the lab.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from nlhf.errors import NLHFInputError

ATOL = 1e-8


def check_preferences(P: np.ndarray, where: str = "game") -> None:
    """Raise NLHFInputError naming the field when P is not a (C, K, K) preference tensor."""
    if P.ndim != 3 or P.shape[1] != P.shape[2]:
        raise NLHFInputError(
            f"{where}: field 'P' must have shape (C, K, K) or (K, K), got {P.shape}"
        )
    if P.shape[0] < 1 or P.shape[1] < 2:
        raise NLHFInputError(f"{where}: field 'P' needs at least 2 responses, got shape {P.shape}")
    if not np.all(np.isfinite(P)):
        raise NLHFInputError(f"{where}: field 'P' must hold finite numbers")
    if P.min() < -ATOL or P.max() > 1 + ATOL:
        raise NLHFInputError(f"{where}: field 'P' must have entries in [0, 1]")
    diag = np.diagonal(P, axis1=1, axis2=2)
    if np.abs(diag - 0.5).max() > 1e-6:
        raise NLHFInputError(f"{where}: field 'P' must have diagonal 1/2 (P(y ≻ y) = 1/2)")
    skew = np.abs(P + np.swapaxes(P, 1, 2) - 1.0).max()
    if skew > 1e-6:
        raise NLHFInputError(
            f"{where}: field 'P' must satisfy P + Pᵀ = 1 (max violation {skew:.3g})"
        )


def read_game_file(path: Path) -> dict[str, Any]:
    """The raw fields of a game file: JSON ``{"P": ..., "ref": ..., ...}`` or .npz."""
    if not path.is_file():
        raise NLHFInputError(f"{path}: game file not found")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                fields = {k: data[k] for k in data.files}
        elif path.suffix == ".json":
            fields = json.loads(path.read_text())
            if not isinstance(fields, dict):
                raise NLHFInputError(f"{path}: expected a JSON object with keys 'P' and 'ref'")
        else:
            raise NLHFInputError(f"{path}: game files must end in .json or .npz")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise NLHFInputError(f"{path}: not valid JSON ({exc})") from None
    except (OSError, ValueError) as exc:
        if isinstance(exc, NLHFInputError):
            raise
        raise NLHFInputError(f"{path}: cannot read game file ({exc})") from None
    return fields


def read_number(value: Any, where: str) -> float:
    """A finite number from a game file field (JSON number or 0-d array), else one line."""
    arr = np.asarray(value) if not isinstance(value, (str, bytes)) else None
    if (arr is None or arr.ndim != 0 or arr.dtype.kind not in "iuf"
            or isinstance(value, bool) or not np.isfinite(arr)):
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        raise NLHFInputError(f"{where} must be a finite number, got {shown}")
    return float(arr)

