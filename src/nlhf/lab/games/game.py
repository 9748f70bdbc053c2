"""The exact KL-regularised preference game: per-context preference matrices and a reference."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from nlhf.errors import NLHFInputError
from nlhf.preferences import check_preferences


@dataclass(frozen=True)
class Game:
    """A game with C contexts and K responses.

    P[c, i, j] = P(y_i ≻ y_j | x_c); ref[c] = pi_ref(·|x_c); d0 = context distribution.
    """

    P: np.ndarray
    ref: np.ndarray
    tau: float
    d0: np.ndarray = field(default=None)  # type: ignore[assignment]
    name: str = "custom"

    def __post_init__(self) -> None:
        P = np.asarray(self.P, dtype=np.float64)
        ref = np.asarray(self.ref, dtype=np.float64)
        if P.ndim == 2:
            P = P[None]
        if ref.ndim == 1:
            ref = ref[None]
        d0 = (
            np.full(P.shape[0], 1.0 / P.shape[0])
            if self.d0 is None
            else np.asarray(self.d0, dtype=np.float64)
        )
        object.__setattr__(self, "P", P)
        object.__setattr__(self, "ref", ref)
        object.__setattr__(self, "d0", d0)
        object.__setattr__(self, "tau", float(self.tau))
        validate(P, ref, self.tau, d0)

    @property
    def n_contexts(self) -> int:
        return self.P.shape[0]

    @property
    def n_responses(self) -> int:
        return self.P.shape[1]


def validate(
    P: np.ndarray, ref: np.ndarray, tau: float, d0: np.ndarray, where: str = "game"
) -> None:
    """Raise NLHFInputError with a one-line message naming the broken field and the fix."""
    check_preferences(P, where)
    C, K, _ = P.shape
    if ref.shape != (C, K):
        raise NLHFInputError(
            f"{where}: field 'ref' must have shape ({C}, {K}) to match 'P', got {ref.shape}"
        )
    if not np.all(np.isfinite(ref)):
        raise NLHFInputError(f"{where}: field 'ref' must hold finite numbers")
    if ref.min() <= 0:
        raise NLHFInputError(
            f"{where}: field 'ref' must give every response positive probability (full support)"
        )
    if np.abs(ref.sum(axis=1) - 1.0).max() > 1e-6:
        raise NLHFInputError(f"{where}: field 'ref' rows must sum to 1")
    if not np.isfinite(tau) or tau <= 0:
        raise NLHFInputError(f"{where}: 'tau' must be > 0, got {tau}")
    if d0.shape != (C,) or d0.min() < 0 or abs(d0.sum() - 1.0) > 1e-6:
        raise NLHFInputError(f"{where}: field 'd0' must be a distribution over the {C} contexts")
