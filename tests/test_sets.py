"""refundguard._sets: the sort-based set operations equal NumPy's."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings, strategies as st

from refundguard._sets import unique_sorted


@settings(max_examples=300, deadline=None)
@given(values=st.lists(st.integers(-2**63, 2**63 - 1), max_size=200), dtype=st.sampled_from([np.int64, np.int32]),
       repeat=st.integers(1, 3))
def test_unique_sorted_equals_np_unique(values, dtype, repeat) -> None:
    info = np.iinfo(dtype)
    a = np.asarray([min(max(v, info.min), info.max) for v in values] * repeat, dtype=dtype)
    got, want = unique_sorted(a), np.unique(a)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


def test_unique_sorted_of_a_large_spread_array() -> None:
    rng = np.random.default_rng(7)
    a = rng.integers(0, 10**12, 300_000)
    a = np.concatenate([a, a[:50_000], rng.integers(-5, 5, 1000)])
    np.testing.assert_array_equal(unique_sorted(a), np.unique(a))
