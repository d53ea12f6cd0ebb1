"""Set operations on integer arrays that keep to NumPy's sort (no hash table, no GIL held)."""

from __future__ import annotations

import numpy as np

__all__ = ["unique_sorted"]


def unique_sorted(a: np.ndarray) -> np.ndarray:
    """The sorted distinct values of an integer array: ``np.unique(a)`` by a sort.

    NumPy 2.3 and later answer ``np.unique`` of integers from a hash table, built
    while holding the GIL: on 500,000 int64 codes spread over a wide range it took
    0.4 s against 0.012 s for a sort and a comparison of neighbours, and two batch
    threads calling it took turns. The values are the same.
    """
    s = np.sort(np.asarray(a).reshape(-1))
    if len(s) < 2:
        return s
    keep = np.empty(len(s), dtype=bool)
    keep[0] = True
    np.not_equal(s[1:], s[:-1], out=keep[1:])
    return s[keep]
