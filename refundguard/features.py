"""The feature list and its two implementations (DESIGN.md section 4).

One list, :data:`FEATURES`, and two ways to compute it:

* :func:`build_features` (vectorised, for training and batch scoring) from a
  requests frame and columnar :class:`~refundguard.profiles.Profiles`;
* :func:`build_features_one` (plain Python, no pandas on the hot path, for the
  online ``assess``) from one request ``dict`` and its three profile dataclasses.

They are held equal by a hypothesis parity test (floats within 1e-12, NaN equal
NaN). Both only read what the profiles carry plus the request's own fields, and
treat ``shipped_at`` / ``delivered_at`` as unknown unless strictly before
``requested_at`` (known-at rule, DESIGN.md section 2).

Float features are float64 (NaN for missing). Categorical features are returned
as strings (online) or as pandas ``Categorical`` with fixed levels (batch): the
contract enums for ``reason`` and ``kind``, and for ``category`` the level set
learned at fit time (pass it as ``category_levels``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from refundguard.errors import RequestError, SchemaError, UnseenCategoryWarning
from refundguard._time import NAT, NS_PER_DAY, NS_PER_HOUR, column_ns, field_ns
from refundguard.profiles import (
    BuyerProfile,
    LinkProfile,
    Profiles,
    StoreProfile,
)
from refundguard.tables import KINDS, MAX_AMOUNT, REASONS, REFUND_SUM_TOLERANCE, require_columns

__all__ = [
    "Feature",
    "FEATURES",
    "FEATURE_NAMES",
    "CATEGORICAL_FEATURES",
    "KINDS",
    "REASONS",
    "build_features",
    "build_features_one",
    "features_frame",
    "monotone_constraints",
]

# KINDS and REASONS: the contract's levels of ``kind`` and ``reason`` (DESIGN.md section 2),
# in this order, re-exported from refundguard.tables.


@dataclass(frozen=True, slots=True)
class Feature:
    """One model feature.

    Parameters
    ----------
    name
        Column name.
    dtype
        ``"float"`` (float64, NaN for missing) or ``"category"``.
    monotone
        Sign of the monotone constraint: +1 (risk never decreases with the value),
        -1, or 0 when the sign is not known. Always 0 for categoricals.
    levels
        Fixed category levels for categoricals known from the contract; ``None``
        for a float, or for a categorical whose levels are learned at fit time.
    description
        What the value means.
    """

    name: str
    dtype: str
    monotone: int = 0
    levels: tuple[str, ...] | None = None
    description: str = ""


def _f(name: str, description: str, monotone: int = 0) -> Feature:
    return Feature(name, "float", monotone, None, description)


_ORDER_W = (30, 90, 365)
_REFUND_W = (1, 7, 30, 90, 365)

#: The one feature list, in model column order.
FEATURES: tuple[Feature, ...] = (
    # request
    _f("amount", "refund amount requested"),
    _f("order_amount", "amount of the order"),
    _f("amount_to_order_amount", "refund amount / order amount (NaN if the order amount is 0)"),
    _f("amount_to_buyer_median", "refund amount / buyer's median order amount"),
    _f("hours_since_paid", "hours from paid_at to the request"),
    _f("is_shipped", "1 if shipped before the request"),
    _f("hours_since_shipped", "hours since shipped (NaN if not shipped before the request)"),
    _f("is_delivered", "1 if delivered before the request"),
    _f("hours_since_delivered", "hours since delivered (NaN if not delivered before)"),
    _f("not_received_on_delivered", "1 for a 'not received' claim on an order delivered "
       "before the request", +1),
    Feature("reason", "category", 0, REASONS, "claim reason (contract enum)"),
    Feature("kind", "category", 0, KINDS, "refund_only or return_and_refund"),
    Feature("category", "category", 0, None, "order category (levels learned at fit time)"),
    # buyer
    _f("buyer_tenure_days", "days since the buyer's first order (NaN if none)"),
    *(_f(f"buyer_n_orders_{w}d", f"buyer's orders paid in the last {w} days") for w in _ORDER_W),
    *(_f(f"buyer_spend_{w}d", f"buyer's spend in the last {w} days") for w in _ORDER_W),
    *(_f(f"buyer_n_refunds_{w}d", f"buyer's refund requests in the last {w} days "
         "(1d: the 24-hour burst)") for w in _REFUND_W),
    *(_f(f"buyer_n_refund_only_{w}d", f"buyer's refund-only requests in the last {w} days")
      for w in _REFUND_W),
    _f("buyer_refund_only_amount_365d", "amount of the buyer's refund-only requests, 365 days"),
    _f("buyer_refund_rate_90d", "buyer's refund requests / orders, 90 days (NaN if no order)"),
    _f("buyer_refund_only_share_90d", "share of refund-only among the buyer's requests, 90 days"),
    _f("buyer_n_stores_refunded", "distinct stores the buyer asked refunds from"),
    _f("buyer_n_not_received_on_delivered", "buyer's past 'not received' claims on delivered "
       "orders", +1),
    _f("buyer_n_rejected", "buyer's past refunds rejected (resolved before the request)", +1),
    _f("buyer_n_abuse", "buyer's past refunds labelled abuse (resolved before the request)", +1),
    _f("buyer_median_order_amount", "median amount of the buyer's latest orders"),
    # store
    _f("store_score", "published store experience score of the request day"),
    _f("store_product", "store score, product dimension"),
    _f("store_logistics", "store score, logistics dimension"),
    _f("store_service", "store score, service dimension"),
    _f("store_provisional", "1 if the store score is provisional"),
    _f("store_score_missing", "1 if the store has no published score that day"),
    _f("store_refund_rate_30d", "store's refund requests / orders, 30 days"),
    _f("store_n_refunds_24h", "store's refund requests in the last 24 hours (burst)"),
    # link (rings)
    _f("device_n_buyers", "distinct buyers seen on the request's device"),
    _f("device_n_bad_buyers", "of them, buyers with a rejected or abusive refund known", +1),
    _f("device_n_refunds_24h", "refund requests from the device in the last 24 hours"),
    _f("address_n_buyers", "distinct buyers seen at the request's address"),
    _f("address_n_bad_buyers", "of them, buyers with a rejected or abusive refund known", +1),
    _f("address_n_refunds_24h", "refund requests to the address in the last 24 hours"),
    # identity cluster (buyers linked through shared devices and addresses; refundguard.clusters)
    _f("cluster_n_accounts", "buyers in the requester's identity cluster, the requester included"),
    _f("cluster_n_refunds_24h", "refund requests of the other cluster members in the last 24 hours"),
    _f("cluster_n_refunds_30d", "refund requests of the other cluster members in the last 30 days"),
    _f("cluster_n_bad_others", "other cluster members with a rejected or abusive refund known", +1),
)

FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)
CATEGORICAL_FEATURES: tuple[str, ...] = tuple(f.name for f in FEATURES if f.dtype == "category")
_NAN = float("nan")


def monotone_constraints() -> dict[str, int]:
    """The known monotone signs, ``{feature: +1 or -1}`` (the classifier's ``monotone_constraints``)."""
    return {f.name: f.monotone for f in FEATURES if f.monotone and f.dtype != "category"}


# --------------------------------------------------------------------------- online


def _real(value: Any, field: str, low: float, low_open: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise RequestError(f"The request field {field!r} must be a number; got "
                           f"{type(value).__name__} {value!r}.", field=field, value=value)
    v = float(value)
    if not math.isfinite(v) or v < low or (low_open and v == low):
        bound = f"> {low}" if low_open else f">= {low}"
        raise RequestError(f"The request field {field!r} must be a finite number {bound}; "
                           f"got {value!r}.", field=field, value=value)
    return v


def _enum(value: Any, field: str, levels: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in levels:
        raise RequestError(f"The request field {field!r} must be one of {list(levels)}; "
                           f"got {value!r}.", field=field, value=value)
    return value


def _opt(v: float | int | None) -> float:
    return _NAN if v is None else float(v)


def _check_request_rules(amount: float, order_amount: float, paid: int, shipped: int | None,
                         deliv: int | None, request: Mapping[str, Any]) -> None:
    """The contract's rules for one request row, as :func:`refundguard.validate` applies them to tables."""
    for field, value in (("amount", amount), ("order_amount", order_amount)):
        if value > MAX_AMOUNT:
            raise RequestError(f"The request field {field!r} must be at most {MAX_AMOUNT:.0e} (the contract's "
                               f"bound); got {request[field]!r}.", field=field, value=request[field])
    if amount > order_amount + REFUND_SUM_TOLERANCE:
        raise RequestError(f"The request field 'amount' must not exceed the order amount {order_amount!r} "
                           f"(+{REFUND_SUM_TOLERANCE}); got {request['amount']!r}.", field="amount",
                           value=request["amount"])
    if shipped is not None and shipped < paid:
        raise RequestError(f"The request field 'shipped_at' must not be before 'paid_at'; got "
                           f"{request.get('shipped_at')!r}.", field="shipped_at", value=request.get("shipped_at"))
    if deliv is not None and (shipped is None or deliv < shipped):
        raise RequestError("The request field 'delivered_at' must not be before 'shipped_at' (nor given without "
                           f"it); got {request.get('delivered_at')!r}.", field="delivered_at",
                           value=request.get("delivered_at"))


def build_features_one(request: Mapping[str, Any],
                       profiles: tuple[BuyerProfile, StoreProfile, LinkProfile]) -> dict[str, Any]:
    """Features of one request, in plain Python (the online path).

    Parameters
    ----------
    request
        A mapping with ``requested_at`` and ``paid_at`` (tz-aware ``datetime`` or
        ``pd.Timestamp``), ``shipped_at`` / ``delivered_at`` (tz-aware or ``None``,
        optional), ``kind`` and ``reason`` (contract enums), ``amount`` (> 0),
        ``order_amount`` (>= 0) and ``category`` (str or ``None``, optional).
        Other keys are ignored.
    profiles
        ``(BuyerProfile, StoreProfile, LinkProfile)`` as of ``requested_at``.

    Returns
    -------
    dict
        ``{name: value}`` in :data:`FEATURE_NAMES` order: floats (NaN for
        missing) and strings (or ``None``) for the categoricals.

    Raises
    ------
    RequestError
        Naming the field: a missing field, a wrong type, a naive timestamp, a value
        out of range, ``paid_at`` after ``requested_at``, or bad profiles.
    """
    if not isinstance(request, Mapping):
        raise RequestError(f"A request must be a mapping; got {type(request).__name__}.",
                           field=None, value=request)
    try:
        bp, sp, lp = profiles
    except (TypeError, ValueError):
        raise RequestError("profiles must be a (BuyerProfile, StoreProfile, LinkProfile) tuple; "
                           f"got {type(profiles).__name__}.", field="profiles",
                           value=profiles) from None
    if not (type(bp) is BuyerProfile and type(sp) is StoreProfile and type(lp) is LinkProfile):
        raise RequestError("profiles must be a (BuyerProfile, StoreProfile, LinkProfile) tuple; "
                           f"got ({type(bp).__name__}, {type(sp).__name__}, "
                           f"{type(lp).__name__}).", field="profiles", value=profiles)
    get = request.get
    for name in ("requested_at", "paid_at", "kind", "reason", "amount", "order_amount"):
        if name not in request:
            raise RequestError(f"The request lacks the required field {name!r}.", field=name)
    t = field_ns(request["requested_at"], "requested_at", required=True)
    paid = field_ns(request["paid_at"], "paid_at", required=True)
    shipped = field_ns(get("shipped_at"), "shipped_at", required=False)
    deliv = field_ns(get("delivered_at"), "delivered_at", required=False)
    if paid > t:  # type: ignore[operator]
        raise RequestError("The request field 'paid_at' must not be after 'requested_at'; got "
                           f"{request['paid_at']!r} > {request['requested_at']!r}.",
                           field="paid_at", value=request["paid_at"])
    kind = _enum(request["kind"], "kind", KINDS)
    reason = _enum(request["reason"], "reason", REASONS)
    amount = _real(request["amount"], "amount", 0.0, True)
    order_amount = _real(request["order_amount"], "order_amount", 0.0, False)
    _check_request_rules(amount, order_amount, paid, shipped, deliv, request)  # type: ignore[arg-type]
    category = get("category")
    if category is not None and not isinstance(category, str):
        if isinstance(category, float) and math.isnan(category):
            category = None
        else:
            raise RequestError(f"The request field 'category' must be a string or None; got "
                               f"{type(category).__name__} {category!r}.", field="category",
                               value=category)

    try:
        ship_known = shipped is not None and shipped < t  # type: ignore[operator]
        deliv_known = deliv is not None and deliv < t  # type: ignore[operator]
        median = bp.median_order_amount
        first = field_ns(bp.first_order_at, "buyer.first_order_at", required=False)
        n_o90, n_r90 = bp.n_orders_90d, bp.n_refunds_90d
        out: dict[str, Any] = {
            "amount": amount,
            "order_amount": order_amount,
            "amount_to_order_amount": amount / order_amount if order_amount > 0 else _NAN,
            "amount_to_buyer_median": (amount / median if median is not None and median > 0
                                       else _NAN),
            "hours_since_paid": (t - paid) / NS_PER_HOUR,  # type: ignore[operator]
            "is_shipped": 1.0 if ship_known else 0.0,
            "hours_since_shipped": (t - shipped) / NS_PER_HOUR if ship_known else _NAN,  # type: ignore[operator]
            "is_delivered": 1.0 if deliv_known else 0.0,
            "hours_since_delivered": (t - deliv) / NS_PER_HOUR if deliv_known else _NAN,  # type: ignore[operator]
            "not_received_on_delivered": 1.0 if (deliv_known and reason == "not_received") else 0.0,
            "reason": reason,
            "kind": kind,
            "category": category,
            "buyer_tenure_days": (t - first) / NS_PER_DAY if first is not None else _NAN,  # type: ignore[operator]
            "buyer_n_orders_30d": float(bp.n_orders_30d),
            "buyer_n_orders_90d": float(n_o90),
            "buyer_n_orders_365d": float(bp.n_orders_365d),
            "buyer_spend_30d": float(bp.spend_30d),
            "buyer_spend_90d": float(bp.spend_90d),
            "buyer_spend_365d": float(bp.spend_365d),
            "buyer_n_refunds_1d": float(bp.n_refunds_1d),
            "buyer_n_refunds_7d": float(bp.n_refunds_7d),
            "buyer_n_refunds_30d": float(bp.n_refunds_30d),
            "buyer_n_refunds_90d": float(n_r90),
            "buyer_n_refunds_365d": float(bp.n_refunds_365d),
            "buyer_n_refund_only_1d": float(bp.n_refund_only_1d),
            "buyer_n_refund_only_7d": float(bp.n_refund_only_7d),
            "buyer_n_refund_only_30d": float(bp.n_refund_only_30d),
            "buyer_n_refund_only_90d": float(bp.n_refund_only_90d),
            "buyer_n_refund_only_365d": float(bp.n_refund_only_365d),
            "buyer_refund_only_amount_365d": float(bp.refund_only_amount_365d),
            "buyer_refund_rate_90d": n_r90 / n_o90 if n_o90 > 0 else _NAN,
            "buyer_refund_only_share_90d": bp.n_refund_only_90d / n_r90 if n_r90 > 0 else _NAN,
            "buyer_n_stores_refunded": float(bp.n_stores_refunded),
            "buyer_n_not_received_on_delivered": float(bp.n_not_received_on_delivered),
            "buyer_n_rejected": float(bp.n_rejected),
            "buyer_n_abuse": float(bp.n_abuse),
            "buyer_median_order_amount": _opt(median),
            "store_score": _opt(sp.score),
            "store_product": _opt(sp.product),
            "store_logistics": _opt(sp.logistics),
            "store_service": _opt(sp.service),
            "store_provisional": 1.0 if sp.provisional else 0.0,
            "store_score_missing": 1.0 if sp.score_missing else 0.0,
            "store_refund_rate_30d": _opt(sp.refund_rate_30d),
            "store_n_refunds_24h": float(sp.n_refunds_24h),
            "device_n_buyers": _opt(lp.device_n_buyers),
            "device_n_bad_buyers": _opt(lp.device_n_bad_buyers),
            "device_n_refunds_24h": _opt(lp.device_n_refunds_24h),
            "address_n_buyers": _opt(lp.address_n_buyers),
            "address_n_bad_buyers": _opt(lp.address_n_bad_buyers),
            "address_n_refunds_24h": _opt(lp.address_n_refunds_24h),
            "cluster_n_accounts": _opt(lp.cluster_n_accounts),
            "cluster_n_refunds_24h": _opt(lp.cluster_n_refunds_24h),
            "cluster_n_refunds_30d": _opt(lp.cluster_n_refunds_30d),
            "cluster_n_bad_others": _opt(lp.cluster_n_bad_others),
        }
    except (TypeError, ValueError, OverflowError) as exc:
        raise RequestError(f"profiles hold a value of the wrong type: {exc}", field="profiles",
                           value=profiles) from None
    return out


# --------------------------------------------------------------------------- batch


_REQUIRED = ("requested_at", "paid_at", "kind", "reason", "amount", "order_amount")


def _schema(msg: str, column: str, rule: str, bad: np.ndarray, values: np.ndarray) -> SchemaError:
    vals = list(values[bad][:5])
    return SchemaError(f"requests.{column}: {int(bad.sum())} row(s) break the rule {rule!r}, "
                       f"e.g. {vals}. {msg}", table="requests", column=column, rule=rule,
                       n_bad=int(bad.sum()), values=vals)


def _categorical(values: pd.Series, levels: Sequence[str]) -> pd.Categorical:
    codes = pd.Index(list(levels), dtype="str").get_indexer(values.astype("str"))
    return pd.Categorical.from_codes(codes, categories=pd.Index(list(levels), dtype="str"))


def _learned_levels(values: pd.Series) -> list[str]:
    return sorted(values.dropna().astype("str").unique().tolist())


def build_features(requests: pd.DataFrame, profiles: Profiles, *,
                   category_levels: Sequence[str] | None = None) -> pd.DataFrame:
    """Features of a batch of requests (vectorised).

    Parameters
    ----------
    requests
        One row per request (see :func:`refundguard.profiles.requests_from_tables`),
        with ``requested_at, paid_at, kind, reason, amount, order_amount`` and
        optionally ``shipped_at, delivered_at, category``.
    profiles
        Profiles aligned with ``requests`` by position
        (:func:`refundguard.profiles.profiles_as_of`).
    category_levels
        Levels of the ``category`` feature learned at fit time. ``None`` learns
        them from ``requests`` (sorted). Values outside the levels become missing
        and raise an :class:`~refundguard.errors.UnseenCategoryWarning`.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`FEATURE_NAMES` in order, float64 or ``category`` with
        fixed levels, indexed like ``requests``.

    Raises
    ------
    SchemaError
        A required request column is missing or holds a bad value (null
        timestamp, ``paid_at`` after ``requested_at``, bad enum, bad amount), or
        the profiles do not have one row per request.
    """
    require_columns(requests, _REQUIRED, "requests")
    n = len(requests)
    if len(profiles) != n:
        raise SchemaError(f"profiles has {len(profiles)} rows but requests has {n}.",
                          table="requests", rule="aligned")
    nat = NAT
    t = column_ns(requests["requested_at"], "requested_at", "requests")
    paid = column_ns(requests["paid_at"], "paid_at", "requests")
    for col, arr in (("requested_at", t), ("paid_at", paid)):
        if (arr == nat).any():
            raise _schema("It is required.", col, "required", arr == nat,
                          requests[col].to_numpy())
    if (paid > t).any():
        raise _schema("paid_at must be <= requested_at.", "paid_at", "after_paid_at", paid > t, requests["paid_at"].to_numpy())

    def opt_ts(col: str) -> np.ndarray:
        if col not in requests.columns:
            return np.full(n, nat, dtype=np.int64)
        return column_ns(requests[col], col, "requests")

    shipped, deliv = opt_ts("shipped_at"), opt_ts("delivered_at")
    kind = requests["kind"].astype("str")
    reason = requests["reason"].astype("str")
    for col, s, levels in (("kind", kind, KINDS), ("reason", reason, REASONS)):
        bad = ~s.isin(levels).to_numpy(bool)
        if bad.any():
            raise _schema(f"Allowed: {list(levels)}.", col, "enum", bad, s.to_numpy())
    amount = pd.to_numeric(requests["amount"], errors="coerce").to_numpy(np.float64)
    order_amount = pd.to_numeric(requests["order_amount"], errors="coerce").to_numpy(np.float64)
    for col, arr, ok in (("amount", amount, lambda a: np.isfinite(a) & (a > 0)),
                         ("order_amount", order_amount, lambda a: np.isfinite(a) & (a >= 0))):
        bad = ~ok(arr)
        if bad.any():
            raise _schema("It must be finite and " + ("> 0." if col == "amount" else ">= 0."), col, "min",
                          bad, requests[col].to_numpy())
    for col, arr in (("amount", amount), ("order_amount", order_amount)):
        if (arr > MAX_AMOUNT).any():
            raise _schema(f"It must be at most {MAX_AMOUNT:.0e}.", col, "range", arr > MAX_AMOUNT,
                          requests[col].to_numpy())
    over = amount > order_amount + REFUND_SUM_TOLERANCE
    if over.any():
        raise _schema("A refund cannot exceed its order's amount (+0.01).", "amount", "refund_sum", over,
                      requests["amount"].to_numpy())
    for col, bad in (("shipped_at", (shipped != nat) & (shipped < paid)),
                     ("delivered_at", (deliv != nat) & ((shipped == nat) | (deliv < shipped)))):
        if bad.any():
            raise _schema("The order's instants must be in order (paid, shipped, delivered).", col,
                          "after_paid_at" if col == "shipped_at" else "after_shipped_at", bad,
                          requests[col].to_numpy())
    if "category" in requests.columns:
        category = requests["category"].astype("str")
    else:
        category = pd.Series(np.full(n, np.nan, dtype=object), dtype="str")

    b, s, lk = profiles.buyer, profiles.store, profiles.link
    ship_known = (shipped != nat) & (shipped < t)
    deliv_known = (deliv != nat) & (deliv < t)
    nan = np.nan

    def f64(x: Any) -> np.ndarray:
        return np.asarray(x, dtype=np.float64)

    def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        ok = den > 0
        out = np.full(len(num), nan)
        with np.errstate(over="ignore"):
            np.divide(num, den, out=out, where=ok)
        return out

    median = b["median_order_amount"].to_numpy(np.float64)
    first = column_ns(b["first_order_at"], "first_order_at", "profiles.buyer")
    with np.errstate(invalid="ignore"):
        median_ok = np.where(np.isnan(median), 0.0, median)
    cols: dict[str, Any] = {
        "amount": amount,
        "order_amount": order_amount,
        "amount_to_order_amount": ratio(amount, order_amount),
        "amount_to_buyer_median": ratio(amount, median_ok),
        "hours_since_paid": f64(t - paid) / NS_PER_HOUR,
        "is_shipped": ship_known.astype(np.float64),
        "hours_since_shipped": np.where(ship_known, f64(t - np.where(ship_known, shipped, t))
                                        / NS_PER_HOUR, nan),
        "is_delivered": deliv_known.astype(np.float64),
        "hours_since_delivered": np.where(deliv_known, f64(t - np.where(deliv_known, deliv, t))
                                          / NS_PER_HOUR, nan),
        "not_received_on_delivered": (deliv_known & (reason == "not_received").to_numpy(bool)
                                      ).astype(np.float64),
        "reason": _categorical(reason, REASONS),
        "kind": _categorical(kind, KINDS),
    }
    levels = _learned_levels(category) if category_levels is None else list(category_levels)
    cat = _categorical(category, levels)
    unseen = int((category.notna().to_numpy(bool) & (cat.codes < 0)).sum())
    if unseen:
        warnings.warn(f"category: {unseen} request(s) have a level unseen at fit time; "
                      "treated as missing.", UnseenCategoryWarning, stacklevel=2)
    cols["category"] = cat
    has_first = first != nat
    cols["buyer_tenure_days"] = np.where(has_first, f64(t - np.where(has_first, first, t))
                                         / NS_PER_DAY, nan)
    for w in _ORDER_W:
        cols[f"buyer_n_orders_{w}d"] = b[f"n_orders_{w}d"].to_numpy(np.float64)
    for w in _ORDER_W:
        cols[f"buyer_spend_{w}d"] = b[f"spend_{w}d"].to_numpy(np.float64)
    for w in _REFUND_W:
        cols[f"buyer_n_refunds_{w}d"] = b[f"n_refunds_{w}d"].to_numpy(np.float64)
    for w in _REFUND_W:
        cols[f"buyer_n_refund_only_{w}d"] = b[f"n_refund_only_{w}d"].to_numpy(np.float64)
    cols["buyer_refund_only_amount_365d"] = b["refund_only_amount_365d"].to_numpy(np.float64)
    cols["buyer_refund_rate_90d"] = ratio(cols["buyer_n_refunds_90d"], cols["buyer_n_orders_90d"])
    cols["buyer_refund_only_share_90d"] = ratio(cols["buyer_n_refund_only_90d"],
                                                cols["buyer_n_refunds_90d"])
    for name in ("n_stores_refunded", "n_not_received_on_delivered", "n_rejected", "n_abuse"):
        cols[f"buyer_{name}"] = b[name].to_numpy(np.float64)
    cols["buyer_median_order_amount"] = median
    for name in ("score", "product", "logistics", "service"):
        cols[f"store_{name}"] = s[name].to_numpy(np.float64)
    cols["store_provisional"] = s["provisional"].to_numpy(bool).astype(np.float64)
    cols["store_score_missing"] = s["score_missing"].to_numpy(bool).astype(np.float64)
    cols["store_refund_rate_30d"] = s["refund_rate_30d"].to_numpy(np.float64)
    cols["store_n_refunds_24h"] = s["n_refunds_24h"].to_numpy(np.float64)
    for name in lk.columns:  # LinkProfile's fields are named as their features
        cols[name] = lk[name].to_numpy(np.float64)
    return pd.DataFrame({name: cols[name] for name in FEATURE_NAMES}, index=requests.index)


def features_frame(rows: Sequence[Mapping[str, Any]], *,
                   category_levels: Sequence[str] | None = None) -> pd.DataFrame:
    """Stack :func:`build_features_one` outputs into the frame :func:`build_features` returns.

    Parameters
    ----------
    rows
        Feature dicts.
    category_levels
        As in :func:`build_features` (``None``: sorted observed levels).

    Returns
    -------
    pandas.DataFrame
        Columns :data:`FEATURE_NAMES`, same dtypes as :func:`build_features`.
    """
    cols: dict[str, Any] = {}
    for ft in FEATURES:
        vals = [r[ft.name] for r in rows]
        if ft.dtype == "float":
            cols[ft.name] = np.asarray(vals, dtype=np.float64)
        else:
            s = pd.Series(vals, dtype="str")
            levels = ft.levels or (_learned_levels(s) if category_levels is None
                                   else list(category_levels))
            cols[ft.name] = _categorical(s, levels)
    return pd.DataFrame(cols)
