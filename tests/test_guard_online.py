"""RefundGuard.assess with a ProfileStore, and assess_many: the same decisions as assess row by row."""

from __future__ import annotations

from functools import lru_cache

import pytest

import refundguard as rg
from refundguard.errors import RequestError
from refundguard.online import ProfileStore
from refundguard.pipeline import point_in_time_features
from refundguard.profiles import request_record
from refundguard.scores import store_score_history


@lru_cache(maxsize=1)
def _setup():
    guard = rg.RefundGuard.default()
    tables, _ = rg.validate(rg.simulate(n_buyers=800, n_stores=40, days=110, seed=41))
    batch = point_in_time_features(tables, "2024-08-01", "2024-09-15", score_config=guard.score_config)
    hist = store_score_history(tables, "2024-07-31", "2024-09-16", guard.score_config)
    store = ProfileStore.from_tables(tables, store_scores=hist, score_config=guard.score_config,
                                     validate_tables=False)
    reqs = [request_record(batch.requests, i) for i in range(len(batch))]
    return guard, batch, store, reqs


def test_assess_with_a_store_equals_assess_with_batch_profiles() -> None:
    guard, batch, store, reqs = _setup()
    assert len(reqs) > 100
    got = [guard.assess(r, store=store) for r in reqs]
    want = [guard.assess(r, batch.profiles.profile(i)) for i, r in enumerate(reqs)]
    assert got == want
    assert {d.action for d in got} >= {"approve", "review", "intercept"}


@pytest.mark.parametrize("explain", [False, True])
def test_assess_many_equals_assess_row_by_row(explain: bool) -> None:
    guard, batch, store, reqs = _setup()
    many = guard.assess_many(reqs, store=store, explain=explain, always_score=explain)
    one = [guard.assess(r, store=store, explain=explain, always_score=explain) for r in reqs]
    assert many == one                                    # probabilities and reasons included, exactly
    given = [batch.profiles.profile(i) for i in range(7)]
    assert guard.assess_many(reqs[:7], given, explain=explain) == [
        guard.assess(r, given[i], explain=explain) for i, r in enumerate(reqs[:7])]
    assert guard.assess_many([], store=store) == []


def test_assess_errors_are_request_errors() -> None:
    guard, batch, store, reqs = _setup()
    for bad in (None, [1, 2], "r1"):
        with pytest.raises(RequestError):
            guard.assess(bad, store=store)
    with pytest.raises(RequestError, match="profiles"):
        guard.assess(reqs[0])                              # neither profiles nor store
    with pytest.raises(RequestError, match="profiles"):
        guard.assess(reqs[0], batch.profiles.profile(0), store=store)
    with pytest.raises(RequestError, match="request 2") as err:
        guard.assess_many([reqs[0], reqs[1], dict(reqs[2], kind="REFUND-ONLY")], store=store)
    assert err.value.field == "kind"
    with pytest.raises(RequestError):
        guard.assess_many(reqs[0], store=store)
