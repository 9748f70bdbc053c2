"""Cutting an ordered list into batches of at most a given size, as even as possible.

Why even: a fixed-size cut leaves a small last batch, and a decoding step of a few rows costs
nearly as much as one of many (every weight is read per step), so 36 rows at size 32 are
better run as 18 + 18 than as 32 + 4.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def even_batches(items: Sequence[T], size: int) -> list[list[T]]:
    """``items`` in order, cut into ceil(n / size) batches whose sizes differ by at most one
    (size <= 0: one batch)."""
    n = len(items)
    if n == 0:
        return []
    count = -(-n // size) if size > 0 else 1
    bounds = [k * n // count for k in range(count + 1)]
    return [list(items[bounds[k]:bounds[k + 1]]) for k in range(count)]
