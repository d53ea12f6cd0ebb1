"""build_features (vectorised) and build_features_one (plain Python) agree.

Floats within 1e-12 (relative), NaN equal NaN; categoricals equal as strings.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from functools import lru_cache

import numpy as np
import pandas as pd
from hypothesis import given, settings, strategies as st

from refundguard import scores
from refundguard.features import (
    FEATURE_NAMES,
    FEATURES,
    KINDS,
    REASONS,
    build_features,
    build_features_one,
    features_frame,
)
from refundguard.profiles import (
    BuyerProfile,
    LinkProfile,
    Profiles,
    StoreProfile,
    profiles_as_of,
    request_record,
    requests_from_tables,
)
from refundguard.online import ProfileStore
from refundguard.simulate import simulate

BASE = datetime(2024, 6, 1, tzinfo=timezone.utc)
ZONES = [timezone.utc, timezone(timedelta(hours=8)), timezone(timedelta(hours=-5, minutes=-30))]


def assert_rows_equal(batch: pd.DataFrame, one: list[dict]) -> None:
    assert len(batch) == len(one)
    for ft in FEATURES:
        col = batch[ft.name]
        for i, d in enumerate(one):
            got, want = d[ft.name], col.iloc[i]
            if ft.dtype == "float":
                assert isinstance(got, float), (ft.name, got)
                if math.isnan(want):
                    assert math.isnan(got), (i, ft.name, got, want)
                else:
                    assert math.isclose(got, want, rel_tol=1e-12, abs_tol=1e-12), (
                        i, ft.name, got, want)
            else:
                assert (got is None and pd.isna(want)) or got == want, (i, ft.name, got, want)


# --------------------------------------------------------------------------- strategies


@st.composite
def instants(draw, lo_days: float = 0, hi_days: float = 900):
    """Aware timestamps: datetimes in several zones (us) or pd.Timestamps (ns)."""
    ns = draw(st.integers(int(lo_days * 86400e9), int(hi_days * 86400e9)))
    if draw(st.booleans()):
        dt = BASE + timedelta(microseconds=ns // 1000)
        return dt.astimezone(draw(st.sampled_from(ZONES)))
    return pd.Timestamp(BASE) + pd.Timedelta(ns, unit="ns")


def opt(strategy):
    return st.one_of(st.none(), strategy)


counts = st.integers(0, 10_000)
money = st.floats(0, 1e6, allow_nan=False)
score = st.floats(0, 5, allow_nan=False)


@st.composite
def cases(draw):
    t = draw(instants(400, 800))
    t_ns = pd.Timestamp(t).value
    paid = draw(instants(0, 800).filter(lambda x: pd.Timestamp(x).value <= t_ns))
    paid_ns = pd.Timestamp(paid).value
    # the contract: shipped >= paid, delivered >= shipped (and only when shipped), refund <= order + 0.01;
    # shipping and delivery may lie after the request (not known yet at t)
    shipped = draw(opt(instants().filter(lambda x: pd.Timestamp(x).value >= paid_ns)))
    delivered = None if shipped is None else draw(
        opt(instants().filter(lambda x: pd.Timestamp(x).value >= pd.Timestamp(shipped).value)))
    order_amount = draw(st.sampled_from([0.0, 1.0]) | money)
    req = {
        "refund_id": "r", "requested_at": t, "paid_at": paid,
        "shipped_at": shipped, "delivered_at": delivered,
        "kind": draw(st.sampled_from(KINDS)), "reason": draw(st.sampled_from(REASONS)),
        "amount": draw(st.floats(0.01, order_amount + 0.01)), "order_amount": order_amount,
        "category": draw(opt(st.sampled_from(["a", "b", "c"]))),
    }
    kw = {f: draw(counts) for f in BuyerProfile.__slots__ if f.startswith("n_")}
    kw.update({f: draw(money) for f in ("spend_30d", "spend_90d", "spend_365d",
                                        "refund_only_amount_365d")})
    bp = BuyerProfile(first_order_at=draw(opt(instants(0, 800))),
                      median_order_amount=draw(opt(st.sampled_from([0.0]) | money)), **kw)
    sp = StoreProfile(score=draw(opt(score)), product=draw(opt(score)),
                      logistics=draw(opt(score)), service=draw(opt(score)),
                      provisional=draw(st.booleans()), score_missing=draw(st.booleans()),
                      n_orders_30d=draw(counts), n_refunds_30d=draw(counts),
                      refund_rate_30d=draw(opt(st.floats(0, 10))), n_refunds_24h=draw(counts),
                      category=draw(opt(st.sampled_from(["a", "b"]))))
    lp = LinkProfile(**{f: draw(opt(counts)) for f in LinkProfile.__slots__})
    return req, (bp, sp, lp)


def requests_frame(reqs: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(reqs)
    for c in ("requested_at", "paid_at", "shipped_at", "delivered_at"):
        df[c] = pd.to_datetime(pd.Series([pd.Timestamp(v) if v is not None else pd.NaT
                                          for v in df[c]], dtype=object), utc=True)
    for c in ("refund_id", "kind", "reason", "category"):
        df[c] = df[c].astype("str")
    df["amount"] = df["amount"].astype("float64")
    df["order_amount"] = df["order_amount"].astype("float64")
    return df


# --------------------------------------------------------------------------- tests


@given(st.lists(cases(), min_size=1, max_size=6))
@settings(max_examples=60)
def test_parity_on_random_requests_and_profiles(items) -> None:
    reqs = [r for r, _ in items]
    profs = [p for _, p in items]
    prof = Profiles.from_records(*zip(*profs, strict=True))
    batch = build_features(requests_frame(reqs), prof)
    one = [build_features_one(r, p) for r, p in items]
    assert_rows_equal(batch, one)
    # the columnar profiles give back the same dataclasses
    assert [prof.profile(i) for i in range(len(prof))] == [
        (b, s, lk) if b.first_order_at is None else
        (BuyerProfile(**{**{f: getattr(b, f) for f in BuyerProfile.__slots__},
                         "first_order_at": pd.Timestamp(b.first_order_at)}), s, lk)
        for b, s, lk in profs]


@lru_cache(maxsize=1)
def _simulated():
    tables = simulate(n_buyers=600, n_stores=30, days=90, seed=5)
    req = requests_from_tables(tables)
    return tables, req, profiles_as_of(tables, req)


def test_parity_on_simulated_data() -> None:
    tables, req, prof = _simulated()
    assert len(req) > 300
    batch = build_features(req, prof)
    one = [build_features_one(request_record(req, i), prof.profile(i)) for i in range(len(req))]
    assert_rows_equal(batch, one)
    assert features_frame(one).equals(batch)
    # the ring, burst and history signals are exercised, not all zero
    for name in ("device_n_bad_buyers", "address_n_refunds_24h", "buyer_n_abuse",
                 "buyer_n_refunds_1d", "store_n_refunds_24h", "not_received_on_delivered",
                 "cluster_n_refunds_30d", "cluster_n_bad_others"):
        assert np.nanmax(batch[name].to_numpy()) > 0, name
    assert batch["store_score"].notna().mean() > 0.5
    assert (batch["cluster_n_accounts"] > 2).any()  # clusters beyond one shared key


def test_profile_store_parity_on_simulated_data() -> None:
    tables, req, prof = _simulated()
    store = ProfileStore()
    store.set_store_scores(_history_for(tables, req))
    store.observe_tables(tables)
    rows = range(0, len(req), 3)
    for i in rows:
        r = request_record(req, i)
        assert store.profiles(r) == prof.profile(i), i
        assert list(build_features_one(r, store.profiles(r))) == list(FEATURE_NAMES)


def _history_for(tables, req):
    """The daily score rows the batch used, as a history frame for the online store."""
    res = scores.store_scores_for_requests(tables, req[["requested_at", "store_id"]])
    hist = pd.DataFrame({"store_id": req["store_id"].to_numpy(),
                         "as_of": res["score_day"].to_numpy(),
                         **{c: res[c].to_numpy() for c in ("score", "product", "logistics",
                                                           "service", "category",
                                                           "provisional")}})
    return hist.drop_duplicates(["store_id", "as_of"]).reset_index(drop=True)
