"""The one rule for time (refundguard._time): naive data means UTC, at every public entry point."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

import refundguard as rg
from refundguard import _time
from refundguard.pipeline import point_in_time_features
from refundguard.online import ProfileStore
from refundguard.profiles import profiles_as_of, request_record, requests_from_tables

START, END = "2024-07-20", "2024-08-20"


@pytest.fixture(scope="module")
def aware() -> dict[str, pd.DataFrame]:
    return rg.simulate(n_buyers=1_500, n_stores=40, days=80, seed=11)


def _naive(tables: dict[str, pd.DataFrame], zone: str | None = None) -> dict[str, pd.DataFrame]:
    """The same tables with every timestamp naive (UTC wall clock), or converted to ``zone``."""
    out = {}
    for name, df in tables.items():
        df = df.copy()
        for col in df.columns:
            if isinstance(df[col].dtype, pd.DatetimeTZDtype):
                df[col] = df[col].dt.tz_localize(None) if zone is None else df[col].dt.tz_convert(zone)
        out[name] = df
    return out


@pytest.fixture(scope="module")
def naive(aware) -> dict[str, pd.DataFrame]:
    return _naive(aware)


def test_the_copies_really_differ_in_type(aware, naive) -> None:
    assert isinstance(aware["orders"]["paid_at"].dtype, pd.DatetimeTZDtype)
    assert not isinstance(naive["orders"]["paid_at"].dtype, pd.DatetimeTZDtype)
    assert pd.api.types.is_datetime64_dtype(naive["refunds"]["requested_at"].dtype)


def test_validate(aware, naive) -> None:
    a, ra = rg.validate(aware)
    n, rn = rg.validate(naive)
    other, _ = rg.validate(_naive(aware, "Asia/Shanghai"))
    for name in a:
        pd.testing.assert_frame_equal(a[name], n[name])
        pd.testing.assert_frame_equal(a[name], other[name])
    assert len(ra) == len(rn) == 0


def test_store_scores_and_history(aware, naive) -> None:
    pd.testing.assert_frame_equal(rg.store_scores(aware, END), rg.store_scores(naive, END))
    pd.testing.assert_frame_equal(rg.store_score_history(aware, START, END), rg.store_score_history(naive, START, END))


def test_profiles_as_of(aware, naive) -> None:
    req_a = requests_from_tables(aware, START, END)
    req_n = requests_from_tables(naive, START, END)
    pd.testing.assert_frame_equal(req_a, req_n)
    pa_, pn = profiles_as_of(aware, req_a), profiles_as_of(naive, req_a)
    for part in ("buyer", "store", "link"):
        pd.testing.assert_frame_equal(getattr(pa_, part), getattr(pn, part))
    naive_requests = _naive({"requests": req_a})["requests"]
    pn2 = profiles_as_of(naive, naive_requests)
    for part in ("buyer", "store", "link"):
        pd.testing.assert_frame_equal(getattr(pa_, part), getattr(pn2, part))


def test_profile_store_fed_from_naive_tables(aware, naive) -> None:
    """load_tables(dir) straight into ProfileStore.observe_tables used to fail on naive timestamps."""
    clean, _ = rg.validate(aware)
    hist = rg.store_score_history(clean, START, END)
    req = requests_from_tables(clean, START, END).head(150)
    batch = profiles_as_of(clean, req, store_scores=hist)
    online = ProfileStore(store_scores=hist)
    online.observe_tables(naive)
    for i in range(len(req)):
        rec = request_record(req, i)
        naive_rec = {k: (v.tz_localize(None) if isinstance(v, pd.Timestamp) and v.tzinfo else v)
                     for k, v in rec.items()}
        assert online.profiles(naive_rec) == batch.profile(i)


def test_score_history_and_assess(aware, naive) -> None:
    guard = rg.RefundGuard.default()
    sa = guard.score_history(aware, START, END)
    sn = guard.score_history(naive, START, END)
    pd.testing.assert_frame_equal(sa, sn)
    batch = point_in_time_features(rg.validate(aware)[0], START, END, score_config=guard.score_config)
    for i in range(0, len(batch), max(1, len(batch) // 40)):
        rec = request_record(batch.requests, i)
        naive_rec = {k: (v.tz_localize(None) if isinstance(v, pd.Timestamp) and v.tzinfo else v)
                     for k, v in rec.items()}
        prof = batch.profiles.profile(i)
        assert guard.assess(naive_rec, prof) == guard.assess(rec, prof)


# --------------------------------------------------------------------------- the module itself
def test_scalars() -> None:
    ns = 1_704_067_200 * 10**9  # 2024-01-01 00:00 UTC
    for v in (pd.Timestamp("2024-01-01", tz="UTC"), pd.Timestamp("2024-01-01"), datetime(2024, 1, 1),
              datetime(2024, 1, 1, 8, tzinfo=timezone(timedelta(hours=8))), date(2024, 1, 1),
              np.datetime64("2024-01-01T00:00"), "2024-01-01", "2024-01-01T00:00:00Z",
              "2024-01-01T08:00:00+08:00"):
        assert _time.instant_ns(v) == ns, v
    for v in (None, pd.NaT, float("nan"), np.datetime64("NaT")):
        assert _time.instant_ns(v) is None
    for v in ("01/06/2024 00:11", "today", 17, 1.5, b"2024-01-01", True):
        with pytest.raises(_time.TimeValueError):
            _time.instant_ns(v)
    with pytest.raises(rg.RequestError, match="'paid_at' is required"):
        _time.field_ns(None, "paid_at", required=True)
    with pytest.raises(rg.ConfigError, match="The 'start' parameter of f must be a date or timestamp or None"):
        _time.parameter_ns("soon", "start", "f", optional=True)


def test_score_day_rule() -> None:
    """A bare date (or a naive value) given as as_of is wall clock in the score time zone."""
    sh = "Asia/Shanghai"
    assert _time.score_day_ns("2024-01-01", sh) == pd.Timestamp("2024-01-01", tz=sh).value
    assert _time.score_day_ns(date(2024, 1, 1), sh) == pd.Timestamp("2024-01-01", tz=sh).value
    assert _time.score_day_ns(pd.Timestamp("2024-01-01", tz="UTC"), sh) == pd.Timestamp("2024-01-01", tz="UTC").value
    assert _time.score_day_ns("2024-01-01", "UTC") == _time.instant_ns("2024-01-01")


def test_columns() -> None:
    naive = pd.Series(pd.to_datetime(["2024-01-01 10:00", None]))
    aware = naive.dt.tz_localize("UTC").dt.tz_convert("Europe/Paris").dt.as_unit("s")
    text = pd.Series(["2024-01-01T10:00:00Z", None], dtype="str")
    for s in (naive, aware, text):
        out = _time.series_ns(s)
        assert out[0] == pd.Timestamp("2024-01-01 10:00", tz="UTC").value and out[1] == _time.NAT
    with pytest.raises(rg.SchemaError) as e:
        _time.column_ns(pd.Series(["01/02/2024"]), "paid_at", "orders")
    assert (e.value.table, e.value.column, e.value.rule) == ("orders", "paid_at", "type")
    with pytest.raises(rg.SchemaError):
        _time.column_ns(pd.Series([1.0, 2.0]), "paid_at", "orders")


@given(st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2060, 1, 1)),
       st.sampled_from(["UTC", "Asia/Shanghai", "America/New_York", "Europe/London", "Australia/Lord_Howe"]))
def test_days_round_trip(moment: datetime, tz: str) -> None:
    ns = np.array([_time.instant_ns(moment)], dtype=np.int64)
    day = _time.day_index(ns, tz)
    start = _time.day_start_ns(day, tz)
    assert start[0] <= ns[0] < _time.day_start_ns(day + 1, tz)[0]
    assert _time.floor_day_ns(ns, tz)[0] == start[0]
    local = pd.Timestamp(ns[0], tz="UTC").tz_convert(tz)
    assert day[0] == (local.date() - date(1970, 1, 1)).days
    assert _time.day_index(np.array([_time.NAT]), tz)[0] > day[0] + 10**6


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-(2**62), 2**62), max_size=50))
def test_distinct_ranks_are_unique_and_its_inverse(values):
    """``distinct_ranks`` of a sorted array gives ``np.unique`` and every element's position in it."""
    from refundguard._time import distinct_ranks

    srt = np.sort(np.array(values, dtype=np.int64))
    distinct, rank = distinct_ranks(srt)
    np.testing.assert_array_equal(distinct, np.unique(srt))
    np.testing.assert_array_equal(rank, np.searchsorted(distinct, srt))
    np.testing.assert_array_equal(distinct[rank], srt)
    assert rank.dtype == np.int64 and distinct.dtype == np.int64
