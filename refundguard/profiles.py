"""Point-in-time buyer, store and link profiles (DESIGN.md section 4).

A profile is a small frozen dataclass of counts, sums and timestamps describing
what was known strictly before a time ``t`` (the request time). Relative features
(hours since, ratios) are derived from them at request time by
:mod:`refundguard.features`.

Known-at rule (DESIGN.md section 2): a value is used for a request at ``t`` only
if its known-at time is strictly before ``t``:

* orders count from ``paid_at`` (with their amount, buyer, store, device and
  address); ``shipped_at`` / ``delivered_at`` only once they are ``< t``;
* refunds count from ``requested_at`` (kind, reason, amount); their outcome and
  label (``is_abuse``) only once ``resolved_at < t``;
* store scores come from the daily history row ``D = floor(t)`` (which covers
  ``[D - window, D)``).

The request itself never counts in its own history (its ``requested_at`` equals
``t``, and events at exactly ``t`` are not before ``t``).

:func:`profiles_as_of` computes every profile for a batch of requests with
sorted keys and ``np.searchsorted`` (no per-request Python loop): event times are
ranked once, each event set is sorted once by ``(group, time rank)``, then each
count or windowed sum is one vectorised binary search per request (requests
searched in ``(group, time)`` order, so the search stays cache friendly). Sums are
kept in integer cents so that any two ways of summing agree exactly.

:class:`refundguard.online.ProfileStore` keeps the same profiles in process for the
online path, updated from events; its profiles equal the batch ones (tested).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from refundguard._time import (
    TimeValueError,
    NAT,
    NEVER,
    NS_PER_DAY,
    column_ns,
    day_start_ns,
    distinct_ranks,
    floor_day_ns,
    label_days,
    parameter_ns,
    utc_series,
)
from refundguard.clusters import ClusterGraph, cluster_columns
from refundguard.config import ScoreConfig
from refundguard.errors import DataError, SchemaError
from refundguard.tables import require_columns

__all__ = [
    "BuyerProfile",
    "StoreProfile",
    "LinkProfile",
    "Profiles",
    "profiles_as_of",
    "requests_from_tables",
    "request_record",
    "ORDER_WINDOWS_DAYS",
    "REFUND_WINDOWS_DAYS",
    "MEDIAN_LAST_ORDERS",
]

#: Windows (days) of the buyer's order counts and spend.
ORDER_WINDOWS_DAYS: tuple[int, ...] = (30, 90, 365)
#: Windows (days) of the buyer's refund and refund-only counts.
REFUND_WINDOWS_DAYS: tuple[int, ...] = (1, 7, 30, 90, 365)
#: The buyer's median order amount is taken over at most this many latest orders.
MEDIAN_LAST_ORDERS: int = 20


_ORDER_COLUMNS = ("order_id", "buyer_id", "store_id", "category", "amount", "paid_at",
                  "shipped_at", "delivered_at", "device_id", "address_id")
_REFUND_COLUMNS = ("refund_id", "order_id", "requested_at", "kind", "reason", "amount",
                   "resolved_at", "outcome", "is_abuse")
_REQUEST_COLUMNS = ("requested_at", "buyer_id", "store_id", "device_id", "address_id")


# --------------------------------------------------------------------------- types


@dataclass(frozen=True, slots=True)
class BuyerProfile:
    """What was known about a buyer strictly before the request time.

    Parameters
    ----------
    first_order_at
        ``paid_at`` of the buyer's first order before ``t`` (UTC, tz-aware), or ``None``.
    n_orders_30d, n_orders_90d, n_orders_365d
        Orders paid in ``[t - w, t)``.
    spend_30d, spend_90d, spend_365d
        Their amounts summed (in whole cents, then divided by 100, so that any two
        ways of summing agree exactly).
    n_refunds_1d, n_refunds_7d, n_refunds_30d, n_refunds_90d, n_refunds_365d
        Refund requests made in ``[t - w, t)`` (any kind). ``n_refunds_1d`` is the
        buyer's 24-hour burst.
    n_refund_only_1d, n_refund_only_7d, n_refund_only_30d, n_refund_only_90d, n_refund_only_365d
        Of these, requests of kind ``refund_only``.
    refund_only_amount_365d
        Amount of the refund-only requests of the last 365 days (cents / 100).
    n_stores_refunded
        Distinct stores the buyer ever asked a refund from before ``t``.
    n_not_received_on_delivered
        Past ``not_received`` claims on an order already delivered before the claim.
    n_rejected
        Past refunds with outcome ``rejected`` and ``resolved_at < t``.
    n_abuse
        Past refunds with ``is_abuse`` true and ``resolved_at < t``.
    median_order_amount
        Median amount of the buyer's latest :data:`MEDIAN_LAST_ORDERS` orders paid
        before ``t`` (ties in ``paid_at`` broken by amount), or ``None``.
    """

    first_order_at: datetime | None = None
    n_orders_30d: int = 0
    n_orders_90d: int = 0
    n_orders_365d: int = 0
    spend_30d: float = 0.0
    spend_90d: float = 0.0
    spend_365d: float = 0.0
    n_refunds_1d: int = 0
    n_refunds_7d: int = 0
    n_refunds_30d: int = 0
    n_refunds_90d: int = 0
    n_refunds_365d: int = 0
    n_refund_only_1d: int = 0
    n_refund_only_7d: int = 0
    n_refund_only_30d: int = 0
    n_refund_only_90d: int = 0
    n_refund_only_365d: int = 0
    refund_only_amount_365d: float = 0.0
    n_stores_refunded: int = 0
    n_not_received_on_delivered: int = 0
    n_rejected: int = 0
    n_abuse: int = 0
    median_order_amount: float | None = None


@dataclass(frozen=True, slots=True)
class StoreProfile:
    """The store of the request as known strictly before the request time.

    Parameters
    ----------
    score
        Published store experience score of the request day (the daily row
        ``D = floor(t)``, which covers ``[D - window, D)``), or ``None``.
    product, logistics, service
        Its dimension scores, or ``None``.
    provisional
        The store had fewer than ``min_orders`` orders in the score window (true
        for a store without a history row when ``min_orders`` > 0).
    score_missing
        No published score for that day (no row, or a null score).
    n_orders_30d, n_refunds_30d
        The store's orders paid and refund requests made in ``[t - 30d, t)``.
    refund_rate_30d
        ``n_refunds_30d / n_orders_30d``, or ``None`` when no order.
    n_refunds_24h
        The store's refund requests in ``[t - 24h, t)`` (burst signal).
    category
        The store's category of the score row (modal order category), or ``None``.
    """

    score: float | None = None
    product: float | None = None
    logistics: float | None = None
    service: float | None = None
    provisional: bool = True
    score_missing: bool = True
    n_orders_30d: int = 0
    n_refunds_30d: int = 0
    refund_rate_30d: float | None = None
    n_refunds_24h: int = 0
    category: str | None = None


@dataclass(frozen=True, slots=True)
class LinkProfile:
    """Ring signals of the request's device and address, strictly before the request time.

    All fields are ``None`` for a request without a device (``device_*``) or
    without an address (``address_*``).

    Parameters
    ----------
    device_n_buyers
        Distinct buyers who paid an order with this device before ``t``.
    device_n_bad_buyers
        How many of them had a refund rejected or labelled abuse, resolved before ``t``.
    device_n_refunds_24h
        Refund requests in ``[t - 24h, t)`` on orders placed with this device.
    address_n_buyers, address_n_bad_buyers, address_n_refunds_24h
        The same for the delivery address.
    cluster_n_accounts
        Buyers in the requester's identity cluster as of ``t`` (buyers linked
        transitively through shared devices and addresses, links known before
        ``t``; :mod:`refundguard.clusters`), the requester included: 1 without
        links, ``CLUSTER_MAX_ACCOUNTS + 1`` for a large cluster.
    cluster_n_refunds_24h, cluster_n_refunds_30d
        Refund requests of the other members in ``[t - 24h, t)`` / ``[t - 30d, t)``.
    cluster_n_bad_others
        Other members with a rejected or abusive refund resolved before ``t``.

    The three member counts are ``None`` for a large cluster.
    """

    device_n_buyers: int | None = None
    device_n_bad_buyers: int | None = None
    device_n_refunds_24h: int | None = None
    address_n_buyers: int | None = None
    address_n_bad_buyers: int | None = None
    address_n_refunds_24h: int | None = None
    cluster_n_accounts: int | None = None
    cluster_n_refunds_24h: int | None = None
    cluster_n_refunds_30d: int | None = None
    cluster_n_bad_others: int | None = None


_BUYER_FIELDS = tuple(f.name for f in fields(BuyerProfile))
_STORE_FIELDS = tuple(f.name for f in fields(StoreProfile))
_LINK_FIELDS = tuple(f.name for f in fields(LinkProfile))
_BUYER_INT = tuple(n for n in _BUYER_FIELDS if n.startswith("n_"))
_BUYER_FLOAT = ("spend_30d", "spend_90d", "spend_365d", "refund_only_amount_365d",
                "median_order_amount")
_STORE_FLOAT = ("score", "product", "logistics", "service", "refund_rate_30d")
_STORE_INT = ("n_orders_30d", "n_refunds_30d", "n_refunds_24h")
_STORE_BOOL = ("provisional", "score_missing")


def _opt_float(v: Any) -> float | None:
    v = float(v)
    return None if math.isnan(v) else v


def _opt_int(v: Any) -> int | None:
    v = float(v)
    return None if math.isnan(v) else int(v)


@dataclass(frozen=True)
class Profiles:
    """Profiles of a batch of requests, columnar, row ``i`` for request ``i``.

    Each frame has a ``RangeIndex`` and exactly the fields of its dataclass as
    columns: ``buyer`` (:class:`BuyerProfile`), ``store`` (:class:`StoreProfile`),
    ``link`` (:class:`LinkProfile`). Optional values are NaN / NaT / NaN-string
    in the frames and ``None`` in the dataclasses.
    """

    buyer: pd.DataFrame
    store: pd.DataFrame
    link: pd.DataFrame

    def __post_init__(self) -> None:
        for name, frame, cols in (("buyer", self.buyer, _BUYER_FIELDS),
                                  ("store", self.store, _STORE_FIELDS),
                                  ("link", self.link, _LINK_FIELDS)):
            if tuple(frame.columns) != cols:
                raise DataError(f"Profiles.{name} must have the columns {list(cols)}; "
                                f"got {list(frame.columns)}.", detail={"frame": name})
        if not len(self.buyer) == len(self.store) == len(self.link):
            raise DataError("Profiles frames must have the same number of rows; got "
                            f"{len(self.buyer)}, {len(self.store)}, {len(self.link)}.")

    def __len__(self) -> int:
        return len(self.buyer)

    def buyer_profile(self, i: int) -> BuyerProfile:
        """Return the :class:`BuyerProfile` of request row ``i``."""
        row = self.buyer.iloc[i]
        kw: dict[str, Any] = {}
        first = row["first_order_at"]
        kw["first_order_at"] = None if pd.isna(first) else pd.Timestamp(first)
        for n in _BUYER_INT:
            kw[n] = int(row[n])
        for n in _BUYER_FLOAT:
            kw[n] = _opt_float(row[n])
        for n in ("spend_30d", "spend_90d", "spend_365d", "refund_only_amount_365d"):
            kw[n] = float(row[n])
        return BuyerProfile(**kw)

    def store_profile(self, i: int) -> StoreProfile:
        """Return the :class:`StoreProfile` of request row ``i``."""
        row = self.store.iloc[i]
        kw: dict[str, Any] = {n: _opt_float(row[n]) for n in _STORE_FLOAT}
        kw.update({n: int(row[n]) for n in _STORE_INT})
        kw.update({n: bool(row[n]) for n in _STORE_BOOL})
        cat = row["category"]
        kw["category"] = None if pd.isna(cat) else str(cat)
        return StoreProfile(**kw)

    def link_profile(self, i: int) -> LinkProfile:
        """Return the :class:`LinkProfile` of request row ``i``."""
        row = self.link.iloc[i]
        return LinkProfile(**{n: _opt_int(row[n]) for n in _LINK_FIELDS})

    def profile(self, i: int) -> tuple[BuyerProfile, StoreProfile, LinkProfile]:
        """Return ``(buyer, store, link)`` profiles of request row ``i``."""
        return self.buyer_profile(i), self.store_profile(i), self.link_profile(i)

    @classmethod
    def from_records(cls, buyers: Sequence[BuyerProfile], stores: Sequence[StoreProfile],
                     links: Sequence[LinkProfile]) -> Profiles:
        """Build the columnar form from per-request dataclasses (tests, online batches)."""
        first = [None if b.first_order_at is None else pd.Timestamp(b.first_order_at)
                 for b in buyers]
        buyer = {"first_order_at": pd.Series(pd.to_datetime(first, utc=True)).dt.as_unit("ns")}
        for n in _BUYER_FIELDS[1:]:
            vals = [getattr(b, n) for b in buyers]
            if n in _BUYER_INT:
                buyer[n] = pd.Series(np.asarray(vals, dtype=np.int64))
            else:
                buyer[n] = pd.Series(np.asarray([np.nan if v is None else v for v in vals],
                                                dtype=np.float64))
        store: dict[str, pd.Series] = {}
        for n in _STORE_FIELDS:
            vals = [getattr(s, n) for s in stores]
            if n in _STORE_FLOAT:
                store[n] = pd.Series(np.asarray([np.nan if v is None else v for v in vals],
                                                dtype=np.float64))
            elif n in _STORE_INT:
                store[n] = pd.Series(np.asarray(vals, dtype=np.int64))
            elif n in _STORE_BOOL:
                store[n] = pd.Series(np.asarray(vals, dtype=bool))
            else:
                store[n] = pd.Series(vals, dtype="str")
        link = {n: pd.Series(np.asarray([np.nan if getattr(x, n) is None else getattr(x, n)
                                         for x in links], dtype=np.float64))
                for n in _LINK_FIELDS}
        return cls(pd.DataFrame(buyer), pd.DataFrame(store), pd.DataFrame(link))


# --------------------------------------------------------------------------- helpers


def _cents(amount: pd.Series | np.ndarray) -> np.ndarray:
    a = np.asarray(amount, dtype=np.float64)
    return np.rint(np.nan_to_num(a) * 100.0).astype(np.int64)


def _codes(*series: pd.Series) -> list[np.ndarray]:
    """Factorize several id columns into one shared code space (null -> -1)."""
    lens = [len(s) for s in series]
    allv = pd.concat([s.reset_index(drop=True).astype("str") for s in series],
                     ignore_index=True)
    codes, _ = pd.factorize(allv)
    out, start = [], 0
    for n in lens:
        out.append(np.asarray(codes[start:start + n], dtype=np.int64))
        start += n
    return out


def _order_positions(order_ids: pd.Series, refs: pd.Series) -> np.ndarray:
    """Row position in ``orders`` of each referenced order id.

    One shared factorization (fast on Arrow strings): with unique order ids the
    orders' codes are their row positions, so a reference's code is its order's row.

    Raises
    ------
    SchemaError
        Duplicated order ids, or references to unknown orders.
    """
    n = len(order_ids)
    o_codes, r_codes = _codes(order_ids, refs)
    if not np.array_equal(o_codes, np.arange(n)):
        dup = order_ids[pd.Series(order_ids).duplicated().to_numpy()].head(5).tolist()
        raise SchemaError(f"orders.order_id must be unique; e.g. {dup} are duplicated (or null).",
                          table="orders", column="order_id", rule="unique", n_bad=len(dup),
                          values=dup)
    bad = (r_codes < 0) | (r_codes >= n)
    if bad.any():
        vals = refs.to_numpy()[bad][:5].tolist()
        raise SchemaError(f"refunds.order_id: {int(bad.sum())} refund(s) reference an unknown "
                          f"order, e.g. {vals}.", table="refunds", column="order_id",
                          rule="exists", n_bad=int(bad.sum()), values=vals)
    return r_codes


class _TimeBase:
    """The distinct event times of one batch, shared by all event sets.

    A time's *rank* is the number of distinct event times before it, so for an
    event time ``e`` and a query time ``q``: ``e < q`` if and only if
    ``rank(e) < qrank(q)``. Ranks are small ints, so ``group * span + rank`` is
    one sortable int64 key per event. :attr:`ranks` holds the ranks of the event
    time arrays given, in order.
    """

    def __init__(self, t_query: np.ndarray, *times: np.ndarray) -> None:
        allt = np.concatenate(times) if times else np.empty(0, np.int64)
        # one sort of all the event times gives the distinct times and every event's rank
        # at once (a search per event into the distinct times costs 3x more: unsorted
        # needles miss the cache). Equal times get one rank, so the order among them does
        # not matter: NumPy's default sort, ~4x faster than the stable one on int64
        order = np.argsort(allt)
        srt = allt[order]
        n_nat = int(np.searchsorted(srt, NAT, side="right"))  # NaT is the smallest int64
        self.utimes, sorted_ranks = distinct_ranks(srt[n_nat:])
        ranks = np.full(len(allt), -1, dtype=np.int64)
        ranks[order[n_nat:]] = sorted_ranks
        self.span = np.int64(len(self.utimes) + 1)
        self.t = t_query
        ends = np.cumsum([len(x) for x in times])
        #: The ranks of each of ``times`` (-1 for NaT), in the order given.
        self.ranks: list[np.ndarray] = np.split(ranks, ends[:-1]) if times else []
        self._q: dict[int, np.ndarray] = {}
        self._orders: dict[int, np.ndarray] = {}

    def order_of(self, qgroup: np.ndarray) -> np.ndarray:
        """Query positions sorted by (group, time), cached per group array."""
        key = id(qgroup)
        if key not in self._orders:
            self._orders[key] = np.lexsort((self.t, qgroup))
        return self._orders[key]

    def qrank(self, offset_ns: int) -> np.ndarray:
        """Ranks of the query times minus ``offset_ns`` (cached)."""
        if offset_ns not in self._q:
            self._q[offset_ns] = np.searchsorted(self.utimes, self.t - np.int64(offset_ns))
        return self._q[offset_ns]


class _Events:
    """Timed events per group, sorted so that "how many before ``t``" is one search.

    Events whose group is < 0 or whose rank is < 0 (time NaT, not known yet) are
    left out. Queries are the batch's requests, one group code each (-1: none,
    every count 0). Weights are int64 (cents) so sums are exact.
    """

    def __init__(self, tb: _TimeBase, group: np.ndarray, rank: np.ndarray, qgroup: np.ndarray,
                 weight: np.ndarray | None = None, tiebreak: np.ndarray | None = None) -> None:
        keep = (group >= 0) & (rank >= 0) & _queried(group, qgroup)
        key = group[keep] * tb.span + rank[keep]
        # any order of equal keys will do: searches and the int64 weight sums stop only between
        # keys, and the one reader of the events' order (a buyer's orders: first paid time,
        # median amount) breaks ties by ``tiebreak``; what is still tied is equal there
        order = np.argsort(key)
        if tiebreak is not None:
            order = _break_ties(order, key, tiebreak[keep])
        self.tb = tb
        self.keys = key[order]
        self.order_kept = np.flatnonzero(keep)[order]
        self.cw = None
        if weight is not None:
            self.cw = np.concatenate(([0], np.cumsum(weight[keep][order], dtype=np.int64)))
        self.qg = np.maximum(qgroup, 0) * tb.span
        self.qmissing = qgroup < 0
        self.qorder = tb.order_of(qgroup)
        self._hi: dict[int, np.ndarray] = {}

    def _search(self, needles: np.ndarray) -> np.ndarray:
        # needles in (group, time) order are ascending: numpy's binary search then reuses
        # the previous position, which keeps the big key array in cache
        o = self.qorder
        pos = np.empty(len(needles), dtype=np.int64)
        pos[o] = np.searchsorted(self.keys, needles[o])
        pos[self.qmissing] = 0
        return pos

    def hi(self, offset_ns: int = 0) -> np.ndarray:
        """Position after the query group's events with time ``< t - offset``."""
        if offset_ns not in self._hi:
            self._hi[offset_ns] = self._search(self.qg + self.tb.qrank(offset_ns))
        return self._hi[offset_ns]

    def lo(self) -> np.ndarray:
        """Position of the query group's first event."""
        return self._search(self.qg)

    def count(self) -> np.ndarray:
        """Events of the query's group with time strictly before ``t``."""
        return self.hi(0) - self.lo()

    def window(self, width_ns: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Count (and weight sum) of the query group's events in ``[t - width, t)``."""
        hi, mid = self.hi(0), self.hi(width_ns)
        s = None if self.cw is None else self.cw[hi] - self.cw[mid]
        return hi - mid, s


def _break_ties(order: np.ndarray, key: np.ndarray, tiebreak: np.ndarray) -> np.ndarray:
    """``np.lexsort((tiebreak, key))`` from ``order = np.argsort(key)`` (up to the order of rows equal
    in both).

    Only the runs of equal keys are re-sorted (few: a buyer's orders at the same
    instant), which costs a fraction of a lexsort over every event.
    """
    ks = key[order]
    tie = ks[1:] == ks[:-1]
    if not tie.any():
        return order
    in_run = np.zeros(len(ks), dtype=bool)
    in_run[1:] |= tie
    in_run[:-1] |= tie
    pos = np.flatnonzero(in_run)
    sub = order[pos]
    order = order.copy()
    order[pos] = sub[np.lexsort((tiebreak[sub], ks[pos]))]
    return order


def _queried(group: np.ndarray, qgroup: np.ndarray) -> np.ndarray:
    """Whether each event's group is one some query asks for (other events cannot count)."""
    if not len(group):
        return np.zeros(0, dtype=bool)
    size = int(max(group.max(), qgroup.max(initial=-1))) + 2
    asked = np.zeros(size, dtype=bool)
    asked[qgroup[qgroup >= 0]] = True
    return asked[group]  # group -1 reads the last slot, never asked


def _first_time_per_pair(a: np.ndarray, b: np.ndarray, t: np.ndarray, queried: np.ndarray | None = None
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each distinct (a, b) pair with a, b >= 0 and a known rank: (a, b, min rank).

    With ``queried`` (query codes of ``a``), only pairs whose ``a`` is queried are kept.
    """
    keep = (a >= 0) & (b >= 0) & (t >= 0)
    if queried is not None:
        keep &= _queried(a, queried)
    if not keep.any():
        e = np.empty(0, dtype=np.int64)
        return e, e, e
    # one int64 key per pair (codes are < 2**31), sorted: each pair's rows form a run.
    # (A pandas groupby on the two columns cost twice the memory: ~75 B per row.)
    a, b, t = a[keep].astype(np.int64, copy=False), b[keep], t[keep]
    width = np.int64(int(b.max()) + 1)
    key = a
    key *= width
    key += b
    del a, b
    order = np.argsort(key)
    key = key[order]
    t = t[order]
    del order
    start = np.flatnonzero(np.concatenate(([True], key[1:] != key[:-1])))
    first = np.minimum.reduceat(t, start).astype(np.int64)
    key = key[start]
    return key // width, key % width, first


def _median_last(amounts_sorted: np.ndarray, hi: np.ndarray, n: np.ndarray,
                 k: int = MEDIAN_LAST_ORDERS, chunk: int = 250_000) -> np.ndarray:
    """Median of ``amounts_sorted[hi - min(n, k):hi]`` for every query (NaN if none)."""
    out = np.full(len(hi), np.nan)
    offs = np.arange(k, dtype=np.int64)
    for s in range(0, len(hi), chunk):
        h, c = hi[s:s + chunk], np.minimum(n[s:s + chunk], k)
        idx = h[:, None] - k + offs[None, :]
        valid = offs[None, :] >= (k - c)[:, None]
        vals = np.where(valid, amounts_sorted[np.clip(idx, 0, None)] if len(amounts_sorted)
                        else np.nan, np.inf)
        vals.sort(axis=1)  # invalid (+inf) last, the c valid values first, ascending
        has = c > 0
        rows = np.flatnonzero(has)
        cc = c[has]
        lo_v = vals[rows, (cc - 1) // 2]
        hi_v = vals[rows, cc // 2]
        out[s + rows] = (lo_v + hi_v) / 2.0
    return out


# --------------------------------------------------------------------------- requests


def requests_from_tables(tables: dict[str, pd.DataFrame], start: Any = None, end: Any = None,
                         *, with_labels: bool = False) -> pd.DataFrame:
    """Refund requests joined to their orders, restricted to ``requested_at`` in ``[start, end)``.

    Parameters
    ----------
    tables
        Canonical tables (``refundguard.tables.validate`` output); ``orders`` and
        ``refunds`` are used.
    start, end
        Half-open bounds on ``requested_at`` (anything ``pd.Timestamp`` accepts;
        naive means UTC). ``None`` means unbounded.
    with_labels
        Also return ``resolved_at``, ``outcome``, ``escalated`` and ``is_abuse``
        (for training; never read by features).

    Returns
    -------
    pandas.DataFrame
        One row per request, sorted by ``(requested_at, refund_id)``, ``RangeIndex``:
        ``refund_id, order_id, requested_at, kind, reason, amount, buyer_id, store_id,
        category, order_amount, paid_at, shipped_at, delivered_at, device_id,
        address_id`` (+ the label columns).

    Raises
    ------
    SchemaError
        A column is missing or a refund references an unknown order.
    """
    orders, refunds = tables["orders"], tables["refunds"]
    require_columns(orders, _ORDER_COLUMNS, "orders")
    require_columns(refunds, _REFUND_COLUMNS if with_labels else _REFUND_COLUMNS[:6], "refunds")
    lo = parameter_ns(start, "start", "requests_from_tables", optional=True)
    hi = parameter_ns(end, "end", "requests_from_tables", optional=True)
    req_ns = column_ns(refunds["requested_at"], "requested_at", "refunds")
    mask = np.ones(len(refunds), dtype=bool)
    if lo is not None:
        mask &= req_ns >= lo
    if hi is not None:
        mask &= req_ns < hi
    r = refunds.loc[mask]
    pos = _order_positions(orders["order_id"], r["order_id"])
    o = orders[list(_ORDER_COLUMNS)].iloc[pos]

    def ts(s: pd.Series, name: str) -> pd.Series:
        table, column = name.split(".")
        return utc_series(column_ns(s, column, table))

    def text(s: pd.Series) -> pd.Series:
        return s.astype("str").reset_index(drop=True)

    out = pd.DataFrame({
        "refund_id": text(r["refund_id"]),
        "order_id": text(r["order_id"]),
        "requested_at": ts(r["requested_at"], "refunds.requested_at"),
        "kind": text(r["kind"]),
        "reason": text(r["reason"]),
        "amount": r["amount"].to_numpy(np.float64),
        "buyer_id": text(o["buyer_id"]),
        "store_id": text(o["store_id"]),
        "category": text(o["category"]),
        "order_amount": o["amount"].to_numpy(np.float64),
        "paid_at": ts(o["paid_at"], "orders.paid_at"),
        "shipped_at": ts(o["shipped_at"], "orders.shipped_at"),
        "delivered_at": ts(o["delivered_at"], "orders.delivered_at"),
        "device_id": text(o["device_id"]),
        "address_id": text(o["address_id"]),
    })
    if with_labels:
        out["resolved_at"] = ts(r["resolved_at"], "refunds.resolved_at")
        out["outcome"] = text(r["outcome"])
        out["escalated"] = (r["escalated"].to_numpy(bool) if "escalated" in r.columns
                            else False)
        out["is_abuse"] = pd.array(r["is_abuse"].to_numpy(), dtype="boolean")
    out = out.sort_values(["requested_at", "refund_id"], kind="stable").reset_index(drop=True)
    return out


def request_record(requests: pd.DataFrame, i: int) -> dict[str, Any]:
    """Row ``i`` of a requests frame as a plain dict (NaN / NaT become ``None``).

    This is the shape :func:`refundguard.features.build_features_one` takes.
    """
    row = requests.iloc[i]
    out: dict[str, Any] = {}
    for k, v in row.items():
        out[str(k)] = None if (not isinstance(v, (list, tuple)) and pd.isna(v)) else v
    return out


# --------------------------------------------------------------------------- store scores


def _score_days(as_of: pd.Series, tz: str) -> np.ndarray:
    """UTC ns of 00:00 (in ``tz``) of each row of a score history's ``as_of`` column."""
    try:
        return day_start_ns(label_days(as_of, tz), tz)
    except TimeValueError as exc:
        raise SchemaError(f"Column 'store_scores.as_of' must hold dates or timestamps: {exc}.",
                          table="store_scores", column="as_of", rule="type") from None


def _store_score_rows(tables: dict[str, pd.DataFrame], requests: pd.DataFrame,
                      t_ns: np.ndarray, score_config: ScoreConfig | None,
                      store_scores: pd.DataFrame | None) -> pd.DataFrame:
    """Score columns of the history row D = floor(t) of each request's store.

    Columns ``score, product, logistics, service`` (NaN when no score),
    ``provisional`` (bool) and ``category`` (str, NaN when no row). A store without
    a row (no event in its window) has 0 orders there, so it is provisional when
    ``min_orders`` > 0, as in :func:`refundguard.scores.store_scores_for_requests`.
    """
    cfg = ScoreConfig() if score_config is None else score_config
    if store_scores is None:
        from refundguard import scores as _scores  # the score history is computed there

        res = _scores.store_scores_for_requests(
            tables, pd.DataFrame({"requested_at": requests["requested_at"].to_numpy(),
                                  "store_id": requests["store_id"].astype("str").to_numpy()}),
            cfg)
        out = pd.DataFrame({c: res[c].astype("float64").to_numpy()
                            for c in ("score", "product", "logistics", "service")})
        out["provisional"] = res["provisional"].astype("boolean").fillna(True).to_numpy(bool)
        out["category"] = res["category"].astype("str").to_numpy()
        out["category"] = out["category"].astype("str")
        return out
    tz = cfg.timezone
    day = floor_day_ns(t_ns, tz)
    require_columns(store_scores, ("store_id", "as_of", "score", "product", "logistics", "service",
                            "provisional"), "store_scores")
    right = pd.DataFrame({
        "store_id": store_scores["store_id"].astype("str").to_numpy(),
        "_day": _score_days(store_scores["as_of"], tz),
        "score": store_scores["score"].astype("float64").to_numpy(),
        "product": store_scores["product"].astype("float64").to_numpy(),
        "logistics": store_scores["logistics"].astype("float64").to_numpy(),
        "service": store_scores["service"].astype("float64").to_numpy(),
        "provisional": store_scores["provisional"].astype("boolean").fillna(True)
        .to_numpy(bool),
        "category": (store_scores["category"].astype("str").to_numpy()
                     if "category" in store_scores.columns
                     else np.full(len(store_scores), np.nan, dtype=object)),
    })
    right["category"] = right["category"].astype("str")
    if right.duplicated(["store_id", "_day"]).any():
        dup = right.loc[right.duplicated(["store_id", "_day"]), "store_id"].head(5).tolist()
        raise DataError(f"store score history has duplicated (store_id, as_of) rows, e.g. "
                        f"stores {dup}.", detail={"stores": dup})
    left = pd.DataFrame({"store_id": requests["store_id"].astype("str").to_numpy(), "_day": day})
    m = left.merge(right, how="left", on=["store_id", "_day"], sort=False, indicator=True)
    found = (m["_merge"] == "both").to_numpy(bool)
    m["provisional"] = np.where(found, m["provisional"].astype("boolean").fillna(True)
                                .to_numpy(bool), cfg.min_orders > 0)
    return m.drop(columns=["_merge"])


# --------------------------------------------------------------------------- batch


@dataclass(frozen=True)
class CodedHistory:
    """Orders and refunds as integer codes, int64 instants and flags: what the profile kernel reads.

    Ids are integer codes shared with the requests (-1 for none); instants are int64
    UTC nanoseconds (``NAT`` for missing). A refund carries the codes of its order.
    Any subset of a history's rows that holds every event a request's profile reads
    gives that request the same profile (the batch engine relies on it to read only
    one slice's window plus its keys' all-time rows).

    Attributes
    ----------
    o_buyer, o_store, o_dev, o_addr
        Order keys.
    o_paid
        ``paid_at``.
    o_cents, o_amount
        Amount in whole cents and as given.
    r_buyer, r_store, r_dev, r_addr
        Keys of each refund's order.
    r_req, r_res
        ``requested_at`` and ``resolved_at``.
    r_cents
        Refund amount in whole cents.
    r_only
        Kind is ``refund_only``.
    r_nr_deliv
        A ``not_received`` claim on an order delivered before the claim.
    r_rej, r_abuse
        Outcome ``rejected`` / label abuse, with a known ``resolved_at``.
    """

    o_buyer: np.ndarray
    o_store: np.ndarray
    o_dev: np.ndarray
    o_addr: np.ndarray
    o_paid: np.ndarray
    o_cents: np.ndarray
    o_amount: np.ndarray
    r_buyer: np.ndarray
    r_store: np.ndarray
    r_dev: np.ndarray
    r_addr: np.ndarray
    r_req: np.ndarray
    r_res: np.ndarray
    r_cents: np.ndarray
    r_only: np.ndarray
    r_nr_deliv: np.ndarray
    r_rej: np.ndarray
    r_abuse: np.ndarray

    @classmethod
    def from_arrays(cls, *, o_buyer: np.ndarray, o_store: np.ndarray, o_dev: np.ndarray,
                    o_addr: np.ndarray, o_paid: np.ndarray, o_delivered: np.ndarray,
                    o_amount: np.ndarray, r_order: np.ndarray, r_req: np.ndarray,
                    r_res: np.ndarray, r_amount: np.ndarray, r_only: np.ndarray,
                    r_not_received: np.ndarray, r_rejected: np.ndarray,
                    r_abuse: np.ndarray) -> CodedHistory:
        """Derive the kernel's arrays from plain columns (``r_order``: row of each refund's order)."""
        known = r_res != NAT
        deliv = o_delivered[r_order]
        return cls(
            o_buyer=o_buyer, o_store=o_store, o_dev=o_dev, o_addr=o_addr, o_paid=o_paid,
            o_cents=_cents(o_amount), o_amount=np.asarray(o_amount, dtype=np.float64),
            r_buyer=o_buyer[r_order], r_store=o_store[r_order], r_dev=o_dev[r_order],
            r_addr=o_addr[r_order], r_req=r_req, r_res=r_res, r_cents=_cents(r_amount),
            r_only=np.asarray(r_only, dtype=bool),
            r_nr_deliv=np.asarray(r_not_received, dtype=bool) & (deliv != NAT) & (deliv < r_req),
            r_rej=np.asarray(r_rejected, dtype=bool) & known,
            r_abuse=np.asarray(r_abuse, dtype=bool) & known,
        )

    def take(self, orders: np.ndarray, refunds: np.ndarray) -> CodedHistory:
        """The history restricted to the given order and refund rows."""
        kw = {}
        for f in fields(self):
            arr = getattr(self, f.name)
            kw[f.name] = arr[orders] if f.name.startswith("o_") else arr[refunds]
        return CodedHistory(**kw)


def profiles_as_of(tables: dict[str, pd.DataFrame], requests: pd.DataFrame, *,
                   score_config: ScoreConfig | None = None, store_scores: pd.DataFrame | None = None
                   ) -> Profiles:
    """Buyer, store and link profiles of every request as of its ``requested_at``.

    Parameters
    ----------
    tables
        Canonical tables (``orders``, ``refunds`` used; reviews and service only
        through the store score history).
    requests
        One row per request with at least ``requested_at, buyer_id, store_id,
        device_id, address_id`` (see :func:`requests_from_tables`). Requests need
        not be in ``tables``.
    score_config
        ``ScoreConfig`` for the store score history (its time zone gives the day
        boundaries); ``None`` for the default.
    store_scores
        A precomputed daily history (``store_id, as_of, category, score, product,
        logistics, service, provisional``); when ``None`` it is computed with
        ``refundguard.scores.store_score_history`` for the (store, day) pairs needed.

    Returns
    -------
    Profiles
        Columnar profiles, row ``i`` for ``requests.iloc[i]``.

    Raises
    ------
    SchemaError
        A required column is missing, a timestamp column does not parse, a refund
        references an unknown order, or a request has no ``requested_at``.

    Notes
    -----
    Ids are factorized into integer codes (:class:`CodedHistory`) and the profiles
    computed by :func:`profiles_from_codes`, the kernel the streamed batch engine
    (:mod:`refundguard.batch`) calls slice by slice.
    """
    orders, refunds = tables["orders"], tables["refunds"]
    require_columns(orders, _ORDER_COLUMNS, "orders")
    require_columns(refunds, _REFUND_COLUMNS, "refunds")
    require_columns(requests, _REQUEST_COLUMNS, "requests")
    t = column_ns(requests["requested_at"], "requested_at", "requests")
    if (t == NAT).any():
        raise SchemaError("requests.requested_at is required; "
                          f"{int((t == NAT).sum())} request(s) have none.", table="requests",
                          column="requested_at", rule="required", n_bad=int((t == NAT).sum()))
    pos = _order_positions(orders["order_id"], refunds["order_id"])
    o_buyer, q_buyer = _codes(orders["buyer_id"], requests["buyer_id"])
    o_store, q_store = _codes(orders["store_id"], requests["store_id"])
    o_dev, q_dev = _codes(orders["device_id"], requests["device_id"])
    o_addr, q_addr = _codes(orders["address_id"], requests["address_id"])
    r_res = column_ns(refunds["resolved_at"], "resolved_at", "refunds")
    history = CodedHistory.from_arrays(
        o_buyer=o_buyer, o_store=o_store, o_dev=o_dev, o_addr=o_addr,
        o_paid=column_ns(orders["paid_at"], "paid_at", "orders"),
        o_delivered=column_ns(orders["delivered_at"], "delivered_at", "orders"),
        o_amount=orders["amount"].to_numpy(np.float64),
        r_order=pos,
        r_req=column_ns(refunds["requested_at"], "requested_at", "refunds"),
        r_res=r_res,
        r_amount=refunds["amount"].to_numpy(np.float64),
        r_only=(refunds["kind"].astype("str") == "refund_only").to_numpy(bool),
        r_not_received=(refunds["reason"].astype("str") == "not_received").to_numpy(bool),
        r_rejected=(refunds["outcome"].astype("str") == "rejected").to_numpy(bool),
        r_abuse=refunds["is_abuse"].astype("boolean").fillna(False).to_numpy(bool),
    )
    store_rows = _store_score_rows(tables, requests, t, score_config, store_scores)
    return profiles_from_codes(history, t, q_buyer, q_store, q_dev, q_addr, store_rows)


def profiles_from_codes(history: CodedHistory, t: np.ndarray, q_buyer: np.ndarray,
                        q_store: np.ndarray, q_dev: np.ndarray, q_addr: np.ndarray,
                        store_rows: pd.DataFrame, *,
                        store_orders_30d: np.ndarray | None = None,
                        clusters: ClusterGraph | None = None) -> Profiles:
    """The profile kernel: profiles of requests at ``t`` from an integer-coded history.

    Sorted keys and ``np.searchsorted`` (no per-request loop): event times are ranked
    once, each event set (only its queried groups) is sorted once by ``(group, time
    rank)``, then each count or windowed sum is one vectorised search per request,
    requests searched in ``(group, time)`` order (a sorted merge).

    Parameters
    ----------
    history
        Orders and refunds with codes shared with the queries.
    t
        Request instants (int64 UTC ns, none missing).
    q_buyer, q_store, q_dev, q_addr
        Codes of each request's buyer, store, device and address (-1 for none).
    store_rows
        The store score of each request's store and day: columns ``score, product,
        logistics, service`` (NaN when none), ``provisional`` (bool) and
        ``category`` (str).
    store_orders_30d
        The store's orders paid in ``[t - 30d, t)``, when the caller counted them
        already (the batch engine keeps every store's order times sorted once); the
        history's orders then need not hold the stores' 30 days.
    clusters
        The identity-cluster graph (:class:`~refundguard.clusters.ClusterGraph`) of a
        history holding every link and refund, when the caller built it (the batch
        engine builds it once from its whole index); ``None`` builds it from
        ``history``, which must then hold every order and refund before the requests.

    Returns
    -------
    Profiles
    """
    h = history
    n = len(t)
    o_paid, r_req, r_res = h.o_paid, h.r_req, h.r_res
    o_buyer, o_store, o_dev, o_addr = h.o_buyer, h.o_store, h.o_dev, h.o_addr
    r_buyer, r_store, r_dev, r_addr = h.r_buyer, h.r_store, h.r_dev, h.r_addr
    o_amount = h.o_amount

    tb = _TimeBase(t, o_paid, r_req, r_res)
    o_rank, r_req_rank, r_res_rank = tb.ranks
    day = NS_PER_DAY

    # --- buyer ----------------------------------------------------------------------------
    b: dict[str, Any] = {}
    nb = int(max(o_buyer.max(initial=-1), q_buyer.max(initial=-1), r_buyer.max(initial=-1))) + 1
    ev_orders = _Events(tb, o_buyer, o_rank, q_buyer, h.o_cents, tiebreak=o_amount)
    # a queried buyer's first order is the first of its events (sorted by time rank; only
    # known times): one search per request instead of a minimum over every order
    lo_orders = ev_orders.lo()
    has = ~ev_orders.qmissing & (lo_orders < len(ev_orders.keys))
    has[has] = ev_orders.keys[lo_orders[has]] // tb.span == q_buyer[has]
    qf = np.full(n, NEVER, dtype=np.int64)
    qf[has] = o_paid[ev_orders.order_kept[lo_orders[has]]]
    qf = np.where(qf < t, qf, NAT)
    b["first_order_at"] = pd.Series(qf.view("datetime64[ns]")).dt.tz_localize("UTC")

    for w in ORDER_WINDOWS_DAYS:
        cnt, cents = ev_orders.window(w * day)
        b[f"n_orders_{w}d"] = cnt
        b[f"spend_{w}d"] = cents / 100.0
    ev_ref = _Events(tb, r_buyer, r_req_rank, q_buyer)
    ev_only = _Events(tb, np.where(h.r_only, r_buyer, -1), r_req_rank, q_buyer, h.r_cents)
    for w in REFUND_WINDOWS_DAYS:
        b[f"n_refunds_{w}d"] = ev_ref.window(w * day)[0]
    for w in REFUND_WINDOWS_DAYS:
        cnt, cents = ev_only.window(w * day)
        b[f"n_refund_only_{w}d"] = cnt
        if w == 365:
            b["refund_only_amount_365d"] = cents / 100.0
    pa_, _, pr = _first_time_per_pair(r_buyer, r_store, r_req_rank, queried=q_buyer)
    b["n_stores_refunded"] = _Events(tb, pa_, pr, q_buyer).count()
    b["n_not_received_on_delivered"] = _Events(tb, np.where(h.r_nr_deliv, r_buyer, -1), r_req_rank,
                                               q_buyer).count()
    b["n_rejected"] = _Events(tb, np.where(h.r_rej, r_buyer, -1), r_res_rank, q_buyer).count()
    b["n_abuse"] = _Events(tb, np.where(h.r_abuse, r_buyer, -1), r_res_rank, q_buyer).count()
    hi = ev_orders.hi(0)
    b["median_order_amount"] = _median_last(o_amount[ev_orders.order_kept], hi, hi - lo_orders)
    del ev_orders, ev_ref, ev_only  # (sorted event sets: ~24 B per event each; the link part needs the room)
    buyer = pd.DataFrame({k: b[k] for k in _BUYER_FIELDS})
    for c in _BUYER_INT:
        buyer[c] = buyer[c].astype(np.int64)

    # --- store ----------------------------------------------------------------------------
    sc = store_rows
    s: dict[str, Any] = {c: sc[c].to_numpy(np.float64) for c in ("score", "product",
                                                                  "logistics", "service")}
    s["provisional"] = sc["provisional"].to_numpy(bool)
    s["score_missing"] = np.isnan(s["score"])
    if store_orders_30d is None:
        s_orders = _Events(tb, o_store, o_rank, q_store).window(30 * day)[0]
    else:
        s_orders = np.asarray(store_orders_30d, dtype=np.int64)
    ev_sref = _Events(tb, r_store, r_req_rank, q_store)
    s_ref = ev_sref.window(30 * day)[0]
    s["n_orders_30d"] = s_orders
    s["n_refunds_30d"] = s_ref
    with np.errstate(divide="ignore", invalid="ignore"):
        s["refund_rate_30d"] = np.where(s_orders > 0, s_ref / np.maximum(s_orders, 1), np.nan)
    s["n_refunds_24h"] = ev_sref.window(day)[0]
    s["category"] = sc["category"].astype("str").to_numpy()
    del ev_sref
    store = pd.DataFrame({k: s[k] for k in _STORE_FIELDS})
    store["category"] = store["category"].astype("str")

    # --- link -----------------------------------------------------------------------------
    bad_b = h.r_rej | h.r_abuse
    first_bad = np.full(max(nb, 1), NEVER, dtype=np.int64)  # rank of the first bad outcome
    if bad_b.any():
        sel = bad_b & (r_buyer >= 0)
        np.minimum.at(first_bad, r_buyer[sel], r_res_rank[sel])
    lk: dict[str, Any] = {}
    for name, o_key, r_key, q_key in (("device", o_dev, r_dev, q_dev),
                                      ("address", o_addr, r_addr, q_addr)):
        ka, kb, kr = _first_time_per_pair(o_key, o_buyer, o_rank, queried=q_key)
        n_buyers = _Events(tb, ka, kr, q_key).count()
        bad_r = np.maximum(kr, first_bad[kb]) if len(kb) else kr
        has_bad = bad_r != NEVER
        n_bad = _Events(tb, ka[has_bad], bad_r[has_bad], q_key).count()
        n24 = _Events(tb, r_key, r_req_rank, q_key).window(day)[0]
        missing = q_key < 0
        lk[f"{name}_n_buyers"] = np.where(missing, np.nan, n_buyers)
        lk[f"{name}_n_bad_buyers"] = np.where(missing, np.nan, n_bad)
        lk[f"{name}_n_refunds_24h"] = np.where(missing, np.nan, n24)
    if clusters is None:
        clusters = ClusterGraph.from_orders(o_buyer, o_dev, o_addr, o_paid, r_buyer, r_req, r_res, bad_b)
    lk.update(cluster_columns(clusters, t, q_buyer))
    link = pd.DataFrame({k: np.asarray(lk[k], dtype=np.float64) for k in _LINK_FIELDS})
    assert len(buyer) == len(store) == len(link) == n
    return Profiles(buyer, store, link)
