"""The feature list, build_features (batch) and build_features_one (online): values and errors."""

from __future__ import annotations

import math
import warnings
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest

from refundguard.errors import RequestError, SchemaError, UnseenCategoryWarning
from refundguard.features import (
    CATEGORICAL_FEATURES,
    FEATURE_NAMES,
    FEATURES,
    KINDS,
    REASONS,
    build_features,
    build_features_one,
    features_frame,
    monotone_constraints,
)
from refundguard.profiles import BuyerProfile, LinkProfile, Profiles, StoreProfile

T = pd.Timestamp("2024-09-10 12:00", tz="UTC")


def request(**kw):
    base = {"refund_id": "r1", "requested_at": T, "paid_at": T - pd.Timedelta(hours=50),
            "shipped_at": T - pd.Timedelta(hours=40), "delivered_at": T - pd.Timedelta(hours=4),
            "kind": "refund_only", "reason": "not_received", "amount": 30.0,
            "order_amount": 60.0, "category": "shoes"}
    base.update(kw)
    return base


PROFILES = (
    BuyerProfile(first_order_at=T - pd.Timedelta(days=10), n_orders_90d=4, n_refunds_90d=2,
                 n_refund_only_90d=1, n_abuse=1, median_order_amount=20.0),
    StoreProfile(score=4.85, product=4.9, logistics=4.7, service=4.9, provisional=False,
                 score_missing=False, n_orders_30d=10, n_refunds_30d=1, refund_rate_30d=0.1,
                 n_refunds_24h=3, category="shoes"),
    LinkProfile(device_n_buyers=3, device_n_bad_buyers=2, device_n_refunds_24h=5),
)


def frame(reqs):
    df = pd.DataFrame(reqs)
    for c in ("requested_at", "paid_at", "shipped_at", "delivered_at"):
        df[c] = pd.to_datetime(df[c], utc=True)
    for c in ("kind", "reason", "category"):
        df[c] = df[c].astype("str")
    return df


# --------------------------------------------------------------------------- the list


def test_feature_list_is_consistent() -> None:
    assert len(set(FEATURE_NAMES)) == len(FEATURES)
    assert all(f.dtype in ("float", "category") for f in FEATURES)
    assert all(f.monotone in (-1, 0, 1) for f in FEATURES)
    assert all(f.monotone == 0 for f in FEATURES if f.dtype == "category")
    assert CATEGORICAL_FEATURES == ("reason", "kind", "category")
    by = {f.name: f for f in FEATURES}
    assert by["reason"].levels == REASONS and by["kind"].levels == KINDS
    assert by["category"].levels is None
    mono = monotone_constraints()
    assert mono == {f.name: f.monotone for f in FEATURES if f.monotone}
    for name in ("buyer_n_abuse", "buyer_n_rejected", "buyer_n_not_received_on_delivered",
                 "device_n_bad_buyers", "address_n_bad_buyers", "not_received_on_delivered"):
        assert mono[name] == 1
    for ring in ("device_n_buyers", "address_n_buyers", "device_n_refunds_24h",
                 "address_n_refunds_24h", "store_n_refunds_24h", "buyer_n_refunds_1d"):
        assert ring in FEATURE_NAMES


# --------------------------------------------------------------------------- values


def test_values_of_one_request() -> None:
    f = build_features_one(request(), PROFILES)
    assert list(f) == list(FEATURE_NAMES)
    assert f["amount_to_order_amount"] == 0.5
    assert f["amount_to_buyer_median"] == 1.5
    assert f["hours_since_paid"] == 50.0 and f["hours_since_shipped"] == 40.0
    assert f["is_delivered"] == 1.0 and f["hours_since_delivered"] == 4.0
    assert f["not_received_on_delivered"] == 1.0
    assert f["buyer_tenure_days"] == 10.0
    assert f["buyer_refund_rate_90d"] == 0.5 and f["buyer_refund_only_share_90d"] == 0.5
    assert f["store_score"] == 4.85 and f["store_provisional"] == 0.0
    assert f["store_n_refunds_24h"] == 3.0 and f["device_n_bad_buyers"] == 2.0
    assert math.isnan(f["address_n_buyers"])
    assert (f["reason"], f["kind"], f["category"]) == ("not_received", "refund_only", "shoes")


def test_shipping_and_delivery_count_only_when_known_before_the_request() -> None:
    for ts in (T, T + pd.Timedelta(hours=1), None):
        f = build_features_one(request(delivered_at=ts), PROFILES)
        assert f["is_delivered"] == 0.0 and math.isnan(f["hours_since_delivered"])
        assert f["not_received_on_delivered"] == 0.0
    f = build_features_one(request(shipped_at=T, delivered_at=None), PROFILES)
    assert f["is_shipped"] == 0.0 and math.isnan(f["hours_since_shipped"])


def test_missing_profile_values_give_nan() -> None:
    f = build_features_one(request(amount=0.01, order_amount=0.0, category=None),  # within the +0.01 tolerance
                           (BuyerProfile(), StoreProfile(), LinkProfile()))
    for name in ("amount_to_order_amount", "amount_to_buyer_median", "buyer_tenure_days",
                 "buyer_refund_rate_90d", "store_score", "store_refund_rate_30d",
                 "device_n_buyers", "buyer_median_order_amount"):
        assert math.isnan(f[name]), name
    assert f["store_score_missing"] == 1.0 and f["category"] is None


def test_batch_dtypes_and_fixed_levels() -> None:
    reqs = [request(), request(reason="quality", kind="return_and_refund", category="bags")]
    prof = Profiles.from_records([PROFILES[0]] * 2, [PROFILES[1]] * 2, [PROFILES[2]] * 2)
    X = build_features(frame(reqs), prof)
    assert tuple(X.columns) == FEATURE_NAMES
    for ft in FEATURES:
        if ft.dtype == "float":
            assert X[ft.name].dtype == np.float64, ft.name
        else:
            assert isinstance(X[ft.name].dtype, pd.CategoricalDtype), ft.name
    assert list(X["reason"].cat.categories) == list(REASONS)       # all levels, not observed
    assert list(X["kind"].cat.categories) == list(KINDS)
    assert list(X["category"].cat.categories) == ["bags", "shoes"]  # learned, sorted
    with pytest.warns(UnseenCategoryWarning):
        X2 = build_features(frame(reqs), prof, category_levels=["shoes", "toys"])
    assert list(X2["category"].cat.categories) == ["shoes", "toys"]
    with pytest.warns(UnseenCategoryWarning, match="1 request"):
        X3 = build_features(frame(reqs), prof, category_levels=["shoes"])
    assert X3["category"].isna().tolist() == [False, True]
    assert features_frame([build_features_one(r, PROFILES) for r in reqs]).equals(X)


def test_batch_keeps_the_requests_index() -> None:
    df = frame([request(), request()])
    df.index = [10, 3]
    prof = Profiles.from_records([PROFILES[0]] * 2, [PROFILES[1]] * 2, [PROFILES[2]] * 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert list(build_features(df, prof).index) == [10, 3]


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("field", ["requested_at", "paid_at", "kind", "reason", "amount",
                                   "order_amount"])
def test_missing_field_is_named(field: str) -> None:
    r = request()
    del r[field]
    with pytest.raises(RequestError, match=field) as exc:
        build_features_one(r, PROFILES)
    assert exc.value.field == field


NAIVE = datetime(2024, 9, 10, 12)


@pytest.mark.parametrize(("field", "value"), [
    ("requested_at", None), ("requested_at", "10/09/2024 12:00"), ("requested_at", 1.7e18),
    ("requested_at", pd.NaT), ("paid_at", T + pd.Timedelta(seconds=1)), ("paid_at", "yesterday"),
    ("shipped_at", 17), ("delivered_at", b"2024-09-10"),
    ("kind", "refund"), ("kind", None), ("reason", "fraud"), ("reason", 3),
    ("amount", "30"), ("amount", True), ("amount", 0.0), ("amount", -1.0),
    ("amount", float("nan")), ("amount", float("inf")), ("amount", None),
    ("order_amount", -0.01), ("order_amount", "60"), ("category", 5), ("category", b"x"),
])
def test_bad_value_is_named(field: str, value) -> None:
    with pytest.raises(RequestError) as exc:
        build_features_one(request(**{field: value}), PROFILES)
    assert exc.value.field == field
    assert repr(field) in str(exc.value)


@pytest.mark.parametrize("value", [NAIVE, pd.Timestamp(NAIVE), np.datetime64(NAIVE), "2024-09-10T12:00:00",
                                   "2024-09-10T12:00Z", "2024-09-10 20:00+08:00"])
def test_naive_timestamps_and_iso_text_mean_utc(value) -> None:
    """The contract's rule: naive means UTC (and ISO 8601 text is read as such)."""
    assert pd.Timestamp(NAIVE, tz="UTC") == T  # the request's time, aware
    assert build_features_one(request(requested_at=value), PROFILES) == build_features_one(request(), PROFILES)


def test_aware_timestamps_in_any_zone_are_accepted() -> None:
    cst = timezone(timedelta(hours=8))
    r = request(requested_at=T.to_pydatetime().astimezone(cst),
                paid_at=(T - pd.Timedelta(hours=50)).tz_convert("America/New_York"))
    assert build_features_one(r, PROFILES) == build_features_one(request(), PROFILES)


def test_bad_profiles_and_request_types() -> None:
    with pytest.raises(RequestError) as exc:
        build_features_one(request(), PROFILES[:2])
    assert exc.value.field == "profiles"
    with pytest.raises(RequestError, match="profiles"):
        build_features_one(request(), (PROFILES[1], PROFILES[0], PROFILES[2]))
    with pytest.raises(RequestError, match="mapping"):
        build_features_one([("amount", 1.0)], PROFILES)  # type: ignore[arg-type]
    bad_first = (BuyerProfile(first_order_at=17), PROFILES[1], PROFILES[2])  # type: ignore[arg-type]
    with pytest.raises(RequestError, match="first_order_at"):
        build_features_one(request(), bad_first)


def test_batch_errors_name_the_column() -> None:
    prof = Profiles.from_records([PROFILES[0]], [PROFILES[1]], [PROFILES[2]])
    good = frame([request()])
    cases = {
        "reason": (good.assign(reason="fraud"), "enum"),
        "kind": (good.assign(kind=None), "enum"),
        "amount": (good.assign(amount=np.nan), "min"),
        "order_amount": (good.assign(order_amount=-1.0), "min"),
        "paid_at": (good.assign(paid_at=T + pd.Timedelta(hours=1)), "after_paid_at"),
        "requested_at": (good.assign(requested_at=pd.NaT), "required"),
    }
    for col, (df, rule) in cases.items():
        with pytest.raises(SchemaError) as exc:
            build_features(df, prof)
        assert (exc.value.column, exc.value.rule) == (col, rule), col
    with pytest.raises(SchemaError, match="order_amount") as exc:
        build_features(good.drop(columns=["order_amount"]), prof)
    assert exc.value.rule == "missing_column"
    with pytest.raises(SchemaError, match="rows") as exc:
        build_features(frame([request(), request()]), prof)
    assert exc.value.rule == "aligned"


def test_profiles_with_wrong_value_types_raise_request_error() -> None:
    for bad in (BuyerProfile(n_orders_30d=None),  # type: ignore[arg-type]
                BuyerProfile(median_order_amount="x")):  # type: ignore[arg-type]
        with pytest.raises(RequestError) as exc:
            build_features_one(request(), (bad, PROFILES[1], PROFILES[2]))
        assert exc.value.field == "profiles"
    with pytest.raises(RequestError, match="profiles"):
        build_features_one(request(), (PROFILES[0], StoreProfile(score="high"), PROFILES[2]))  # type: ignore[arg-type]


@pytest.mark.parametrize(("field", "value", "rule"), [
    ("amount", 1e12, "refund_sum"),  # issue 12 case 2: a refund far above its order of 60.0
    ("amount", 60.02, "refund_sum"),
    ("order_amount", 2e12, "range"),
    ("shipped_at", T - pd.Timedelta(hours=60), "after_paid_at"),
    ("delivered_at", T - pd.Timedelta(hours=45), "after_shipped_at"),
])
def test_the_contract_rules_hold_for_one_request_online_and_in_batch(field, value, rule) -> None:
    """assess checks a request as validate checks a row (refund <= order amount + 0.01, instants in order)."""
    bad = request(**{field: value})
    with pytest.raises(RequestError) as exc:
        build_features_one(bad, PROFILES)
    assert exc.value.field == field
    prof = Profiles.from_records([PROFILES[0]], [PROFILES[1]], [PROFILES[2]])
    with pytest.raises(SchemaError) as batch_exc:
        build_features(frame([bad]), prof)
    assert (batch_exc.value.column, batch_exc.value.rule) == (field, rule)
    assert build_features_one(request(amount=60.01), PROFILES)["amount"] == 60.01  # the +0.01 tolerance
    no_ship = request(shipped_at=None, delivered_at=None)
    assert build_features_one(no_ship, PROFILES)["is_shipped"] == 0.0
    with pytest.raises(RequestError, match="delivered_at"):
        build_features_one(request(shipped_at=None), PROFILES)  # delivered without shipped
