"""A growing per-seed buffer of (context, y, y') pairs: ENPO trains on all rounds' data."""

from __future__ import annotations

import numpy as np


class PairBuffer:
    """Append-only (B, N, 3) integer storage with amortised doubling."""

    def __init__(self, n_seeds: int, capacity: int = 1024) -> None:
        self._data = np.zeros((n_seeds, capacity, 3), dtype=np.int64)
        self.size = 0

    def append(self, ctx: np.ndarray, y: np.ndarray, y2: np.ndarray) -> None:
        n = ctx.shape[1]
        if self.size + n > self._data.shape[1]:
            grown = np.zeros((self._data.shape[0], 2 * (self.size + n), 3), dtype=np.int64)
            grown[:, : self.size] = self._data[:, : self.size]
            self._data = grown
        self._data[:, self.size : self.size + n] = np.stack([ctx, y, y2], axis=-1)
        self.size += n

    def draw(self, rng: np.random.Generator, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """m pairs per seed, uniformly with replacement from everything collected so far."""
        idx = rng.integers(0, self.size, size=(self._data.shape[0], m))
        rows = np.take_along_axis(self._data, idx[..., None], axis=1)
        return rows[..., 0], rows[..., 1], rows[..., 2]
