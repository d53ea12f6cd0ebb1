"""No leak: what is known at or after a request never changes that request's features.

Two families of checks, on small random tables (own generator below) and on
simulated data, with the real store score history (``refundguard.scores``):

* appending events after a cut time ``c`` (orders, refunds, reviews, service
  chats) and changing any field whose known-at time is ``>= c`` (a later
  resolution, outcome, label, escalation, shipping or delivery time) leaves the
  features of every request with ``requested_at <= c`` unchanged;
* cutting the future off (dropping events known at or after ``c`` and nulling
  later fields) gives the same features for those requests.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

from refundguard.features import build_features
from refundguard.profiles import profiles_as_of, requests_from_tables
from refundguard.simulate import simulate

BASE = pd.Timestamp("2024-06-01", tz="UTC")
REASONS = ("not_received", "quality", "not_as_described", "damaged", "wrong_item",
           "changed_mind", "other")
TS = "datetime64[ns, UTC]"


# --------------------------------------------------------------------------- generator


def small_tables(rng: np.random.Generator, n_orders: int = 40) -> dict[str, pd.DataFrame]:
    """Canonical tables over ~70 days on a 6-hour grid (many ties), few ids (collisions)."""
    def hours(n: int) -> pd.TimedeltaIndex:
        return pd.to_timedelta(rng.integers(0, 70 * 4, n) * 6, unit="h")

    def ids(prefix: str, k: int, n: int, p_null: float = 0.0) -> pd.Series:
        v = pd.Series([f"{prefix}{i}" for i in rng.integers(0, k, n)], dtype="str")
        return v.where(rng.random(n) >= p_null)

    paid = BASE + hours(n_orders)
    shipped = paid + pd.to_timedelta(rng.choice([6, 24, 48, 96], n_orders), unit="h")
    has_ship = rng.random(n_orders) < 0.85
    deliv = shipped + pd.to_timedelta(rng.choice([6, 24, 72], n_orders), unit="h")
    has_deliv = has_ship & (rng.random(n_orders) < 0.8)
    amount = rng.choice([5.0, 10.5, 20.0, 33.33, 99.99], n_orders)
    orders = pd.DataFrame({
        "order_id": pd.Series([f"o{i}" for i in range(n_orders)], dtype="str"),
        "buyer_id": ids("b", 6, n_orders), "store_id": ids("s", 3, n_orders),
        "category": ids("c", 2, n_orders), "amount": amount,
        "paid_at": pd.Series(paid).astype(TS),
        "ship_by": pd.Series(paid + pd.Timedelta(hours=48)).astype(TS),
        "shipped_at": pd.Series(shipped).where(has_ship).astype(TS),
        "delivered_at": pd.Series(deliv).where(has_deliv).astype(TS),
        "device_id": ids("d", 3, n_orders, 0.2), "address_id": ids("a", 3, n_orders, 0.2),
    })
    m = n_orders // 2
    pick = rng.choice(n_orders, m, replace=False)
    req = paid[pick] + pd.to_timedelta(rng.choice([0, 6, 24, 72, 144], m), unit="h")
    res = req + pd.to_timedelta(rng.choice([6, 24, 96, 300], m), unit="h")
    resolved = rng.random(m) < 0.8
    refunds = pd.DataFrame({
        "refund_id": pd.Series([f"r{i}" for i in range(m)], dtype="str"),
        "order_id": orders["order_id"].iloc[pick].reset_index(drop=True),
        "requested_at": pd.Series(req).astype(TS),
        "kind": pd.Series(rng.choice(["refund_only", "return_and_refund"], m), dtype="str"),
        "reason": pd.Series(rng.choice(REASONS, m), dtype="str"),
        "amount": np.round(amount[pick] * rng.choice([0.5, 1.0], m), 2),
        "resolved_at": pd.Series(res).where(resolved).astype(TS),
        "outcome": pd.Series(rng.choice(["refunded", "rejected", "withdrawn"], m),
                             dtype="str").where(resolved),
        "escalated": rng.random(m) < 0.3,
        "is_abuse": pd.array(np.where(resolved, rng.random(m) < 0.3, False), dtype="boolean"),
    })
    refunds.loc[~resolved, "is_abuse"] = pd.NA
    k = n_orders
    ro = rng.choice(n_orders, k)
    reviews = pd.DataFrame({
        "order_id": orders["order_id"].iloc[ro].reset_index(drop=True),
        "rating": rng.integers(1, 6, k).astype(np.int64),
        "created_at": pd.Series(paid[ro] + hours(k) / 4).astype(TS)})
    service = pd.DataFrame({
        "store_id": ids("s", 3, k), "started_at": pd.Series(BASE + hours(k)).astype(TS),
        "first_response_s": rng.choice([10.0, 100.0, 200.0, 5000.0], k)})
    return {"orders": orders, "refunds": refunds, "reviews": reviews, "service": service}


# --------------------------------------------------------------------------- helpers


def features_before(tables: dict[str, pd.DataFrame], cut: pd.Timestamp,
                    refund_ids: pd.Series | None = None) -> pd.DataFrame:
    """Features (indexed by refund_id) of the requests with requested_at <= cut."""
    req = requests_from_tables(tables, end=cut + pd.Timedelta(1, "ns"))
    if refund_ids is not None:
        req = req[req["refund_id"].isin(refund_ids)].reset_index(drop=True)
    X = build_features(req, profiles_as_of(tables, req),
                       category_levels=["c0", "c1", "c2", "x"])
    X.index = req["refund_id"].to_numpy()
    return X.sort_index()


def assert_same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    assert list(a.index) == list(b.index)
    pd.testing.assert_frame_equal(a, b, check_exact=True)


def later(rng: np.random.Generator, cut: pd.Timestamp, n: int) -> pd.Series:
    """Times at or after the cut (the cut itself included: ties must not leak)."""
    h = rng.choice([0, 0, 1, 6, 24, 200], n)
    return pd.Series(cut + pd.to_timedelta(h, unit="h")).astype(TS)


def cut_time(rng: np.random.Generator, tables: dict[str, pd.DataFrame]) -> pd.Timestamp:
    req = tables["refunds"]["requested_at"].sort_values().reset_index(drop=True)
    return req.iloc[int(rng.integers(len(req) // 3, len(req)))]


# --------------------------------------------------------------------------- mutations


def append_orders(rng, tables, cut):
    o = tables["orders"]
    n = 8
    src = o.sample(n, replace=True, random_state=rng)  # same buyers, stores, devices, addresses
    paid = later(rng, cut, n)
    new = src.reset_index(drop=True).assign(
        order_id=pd.Series([f"new{i}" for i in range(n)], dtype="str"), paid_at=paid,
        ship_by=paid + pd.Timedelta(hours=48), shipped_at=paid + pd.Timedelta(hours=1),
        delivered_at=paid + pd.Timedelta(hours=2))
    out = dict(tables)
    out["orders"] = pd.concat([o, new], ignore_index=True)
    # and refunds on them, reviews of them
    out["refunds"] = pd.concat([tables["refunds"], pd.DataFrame({
        "refund_id": pd.Series([f"nr{i}" for i in range(n)], dtype="str"),
        "order_id": new["order_id"], "requested_at": paid + pd.Timedelta(hours=3),
        "kind": pd.Series(["refund_only"] * n, dtype="str"),
        "reason": pd.Series(["not_received"] * n, dtype="str"), "amount": new["amount"],
        "resolved_at": paid + pd.Timedelta(hours=4),
        "outcome": pd.Series(["rejected"] * n, dtype="str"), "escalated": True,
        "is_abuse": pd.array([True] * n, dtype="boolean")})], ignore_index=True)
    return out


def append_refunds(rng, tables, cut):
    o = tables["orders"]
    n = 10
    src = o[o["paid_at"] <= cut].sample(n, replace=True, random_state=rng)
    req = later(rng, cut, n)
    new = pd.DataFrame({
        "refund_id": pd.Series([f"nr{i}" for i in range(n)], dtype="str"),
        "order_id": src["order_id"].reset_index(drop=True), "requested_at": req,
        "kind": pd.Series(rng.choice(["refund_only", "return_and_refund"], n), dtype="str"),
        "reason": pd.Series(rng.choice(REASONS, n), dtype="str"),
        "amount": src["amount"].to_numpy(),
        "resolved_at": req + pd.Timedelta(hours=1),
        "outcome": pd.Series(["rejected"] * n, dtype="str"), "escalated": True,
        "is_abuse": pd.array([True] * n, dtype="boolean")})
    out = dict(tables)
    out["refunds"] = pd.concat([tables["refunds"], new], ignore_index=True)
    return out


def append_reviews_and_service(rng, tables, cut):
    o = tables["orders"]
    n = 10
    src = o[o["paid_at"] <= cut].sample(n, replace=True, random_state=rng)
    out = dict(tables)
    out["reviews"] = pd.concat([tables["reviews"], pd.DataFrame({
        "order_id": src["order_id"].reset_index(drop=True),
        "rating": rng.integers(1, 6, n).astype(np.int64),
        "created_at": later(rng, cut, n)})], ignore_index=True)
    out["service"] = pd.concat([tables["service"], pd.DataFrame({
        "store_id": src["store_id"].reset_index(drop=True),
        "started_at": later(rng, cut, n),
        "first_response_s": rng.choice([1.0, 9999.0], n)})], ignore_index=True)
    return out


def change_late_resolutions(rng, tables, cut):
    r = tables["refunds"].copy()
    late = np.array((r["resolved_at"].isna() | (r["resolved_at"] >= cut)).to_numpy(bool))
    late &= (r["requested_at"] <= cut).to_numpy(bool) | (rng.random(len(r)) < 0.5)
    n = int(late.sum())
    resolve = rng.random(n) < 0.7
    new_res = later(rng, cut, n).where(resolve)
    r.loc[late, "resolved_at"] = new_res.to_numpy()
    r.loc[late, "outcome"] = pd.Series(rng.choice(["refunded", "rejected", "withdrawn"], n),
                                       dtype="str").where(resolve).to_numpy()
    r.loc[late, "is_abuse"] = pd.array(rng.random(n) < 0.5, dtype="boolean")
    r.loc[late, "escalated"] = rng.random(n) < 0.5
    r["outcome"] = r["outcome"].astype("str")
    r["is_abuse"] = r["is_abuse"].astype("boolean")
    r.loc[r["resolved_at"].isna(), ["outcome", "is_abuse"]] = pd.NA
    out = dict(tables)
    out["refunds"] = r
    return out


def change_late_shipping(rng, tables, cut):
    """Shipping and delivery not known before the cut are redrawn (still in contract order)."""
    o = tables["orders"].copy()
    paid_before = (o["paid_at"] < cut).to_numpy(bool)
    late_ship = (o["shipped_at"].isna() | (o["shipped_at"] >= cut)).to_numpy(bool) & paid_before
    n = int(late_ship.sum())
    o.loc[late_ship, "shipped_at"] = later(rng, cut, n).where(rng.random(n) < 0.7).to_numpy()
    late_deliv = (o["delivered_at"].isna() | (o["delivered_at"] >= cut)).to_numpy(bool) & paid_before
    n = int(late_deliv.sum())
    gap = pd.to_timedelta(rng.uniform(0, 5 * 86400, n), unit="s")
    new = (o.loc[late_deliv, "shipped_at"] + gap).where(rng.random(n) < 0.7)
    o.loc[late_deliv, "delivered_at"] = new.where(new >= cut).to_numpy()  # delivery after the cut, or none
    out = dict(tables)
    out["orders"] = o
    return out


MUTATIONS = {
    "append_orders": append_orders,
    "append_refunds": append_refunds,
    "append_reviews_and_service": append_reviews_and_service,
    "change_late_resolutions": change_late_resolutions,
    "change_late_shipping": change_late_shipping,
}


def truncate_future(tables: dict[str, pd.DataFrame], cut: pd.Timestamp) -> dict[str, pd.DataFrame]:
    """Keep only what was known strictly before the cut."""
    o = tables["orders"]
    o = o[o["paid_at"] < cut].copy()
    for col in ("shipped_at", "delivered_at"):
        o.loc[o[col] >= cut, col] = pd.NaT
    r = tables["refunds"]
    r = r[(r["requested_at"] < cut) & r["order_id"].isin(o["order_id"])].copy()
    open_ = ~(r["resolved_at"] < cut)
    r.loc[open_, "resolved_at"] = pd.NaT
    r.loc[open_, ["outcome", "is_abuse"]] = pd.NA
    esc_at = r["escalated_at"] if "escalated_at" in r.columns else r["resolved_at"]
    r.loc[~(esc_at < cut), "escalated"] = False
    if "escalated_at" in r.columns:
        r.loc[~(esc_at < cut), "escalated_at"] = pd.NaT
    rv = tables["reviews"]
    sv = tables["service"]
    return {"orders": o, "refunds": r, "reviews": rv[rv["created_at"] < cut],
            "service": sv[sv["started_at"] < cut]}


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("mutation", list(MUTATIONS))
@given(seed=st.integers(0, 2**32 - 1))
@settings(max_examples=8)
def test_late_events_and_fields_never_change_features(mutation: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    tables = small_tables(rng)
    cut = cut_time(rng, tables)
    before = features_before(tables, cut)
    assert len(before) > 0
    mutated = MUTATIONS[mutation](rng, tables, cut)
    assert_same(before, features_before(mutated, cut, refund_ids=pd.Series(before.index)))


@given(seed=st.integers(0, 2**32 - 1))
@settings(max_examples=15)
def test_all_mutations_at_once(seed: int) -> None:
    rng = np.random.default_rng(seed)
    tables = small_tables(rng)
    cut = cut_time(rng, tables)
    before = features_before(tables, cut)
    mutated = tables
    for fn in MUTATIONS.values():
        mutated = fn(rng, mutated, cut)
    assert_same(before, features_before(mutated, cut, refund_ids=pd.Series(before.index)))


def test_mutations_can_be_detected() -> None:
    """Guard against a vacuous test: a change known before the cut does change features."""
    rng = np.random.default_rng(0)
    tables = small_tables(rng)
    cut = cut_time(rng, tables)
    before = features_before(tables, cut)
    r = tables["refunds"].copy()
    early = (r["requested_at"] < cut - pd.Timedelta(hours=1)).to_numpy(bool)
    r.loc[early, "resolved_at"] = r.loc[early, "requested_at"] + pd.Timedelta(minutes=1)
    r.loc[early, "outcome"] = "rejected"
    changed = dict(tables, refunds=r)
    after = features_before(changed, cut, refund_ids=pd.Series(before.index))
    assert not after["buyer_n_rejected"].equals(before["buyer_n_rejected"])


@lru_cache(maxsize=1)
def _sim() -> dict[str, pd.DataFrame]:
    return simulate(n_buyers=400, n_stores=15, days=60, seed=11)


@given(frac=st.floats(0.3, 0.95))
@settings(max_examples=6)
def test_simulated_future_cut_off_gives_same_features(frac: float) -> None:
    tables = _sim()
    times = tables["refunds"]["requested_at"].sort_values().reset_index(drop=True)
    cut = times.iloc[int(frac * (len(times) - 1))]
    req = requests_from_tables(tables, end=cut + pd.Timedelta(1, "ns"))
    full = build_features(req, profiles_as_of(tables, req))
    past = build_features(req, profiles_as_of(truncate_future(tables, cut), req),
                          category_levels=list(full["category"].cat.categories))
    last = req["requested_at"] == cut
    assert last.any()
    pd.testing.assert_frame_equal(full, past, check_exact=True)
