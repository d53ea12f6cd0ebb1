"""The store experience score: 0.00 to 5.00 per store, rolling window, daily history.

DESIGN.md section 3 is the definition. Everything here is computed in two steps:

1. per store (and per day for the history), integer **window statistics**: counts,
   and sums of whole seconds (timestamps are truncated to the second for durations);
2. one shared function turns those statistics into raw values, shrunk values,
   points, dimension scores and the published score.

Because step 1 yields the same integers whether it is done with a direct window
filter (:func:`store_scores`) or with daily buckets and rolling sums
(:func:`store_score_history`), and step 2 is the same code, the two agree exactly.
Both ways of step 1 aggregate one table of statistic definitions (``_STAT_DEFS``).

Output columns (contract): ``store_id, as_of, category, score, product, logistics,
service, n_orders, provisional, score_config_hash`` and per indicator
``<name>_raw, <name>_shrunk, <name>_points, <name>_assessed``, plus ``score_raw``
(the unrounded total). ``score`` and the three dimension columns are *published*
values (:func:`publish_score`, 2 decimals); ``score`` is published from the
unrounded total ``score_raw``, not from the rounded dimensions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from refundguard._params import is_finite_real
from refundguard._sets import unique_sorted
from refundguard._time import (
    NAT,
    NEVER,
    NS_PER_DAY,
    NS_PER_SECOND,
    TimeValueError,
    column_ns,
    day_index,
    day_start_ns,
    label_days,
    score_day_ns,
    window_start_ns,
)
from refundguard.config import (
    DEFAULT_GATE,
    DIMENSIONS,
    HIGHER_IS_BETTER,
    INDICATOR_DIMENSION,
    INDICATORS,
    ScoreConfig,
)
from refundguard.errors import ConfigError, DataError, SchemaError
from refundguard.tables import canonical_tables, require_columns

__all__ = [
    "CALIBRATION_QUANTILES",
    "OUTPUT_COLUMNS",
    "StoreExplanation",
    "StoreScoreSummary",
    "CodedStoreEvents",
    "calibrate_bands",
    "excellent_share",
    "ExcellentShare",
    "coded_store_scores",
    "coded_store_scores_as_of",
    "explain_store",
    "publish_score",
    "store_score_history",
    "store_scores",
    "store_scores_for_requests",
    "summarize_store_scores",
]

QUALITY_REASONS = ("quality", "not_as_described", "damaged", "wrong_item")
RESPONSE_LIMIT_S = 180.0
_SUFFIXES = ("raw", "shrunk", "points", "assessed")

#: The output columns of :func:`store_scores` and :func:`store_score_history`, in order.
OUTPUT_COLUMNS: tuple[str, ...] = (
    "store_id",
    "as_of",
    "category",
    "score",
    "product",
    "logistics",
    "service",
    "n_orders",
    "provisional",
    "score_config_hash",
    *(f"{ind}_{suf}" for ind in INDICATORS for suf in _SUFFIXES),
    "score_raw",
)

# The integer window statistics (_STATS) are defined by _STAT_DEFS (section "window statistics").
_ACTIVITY = ("n_orders", "rf_n", "rv_n", "pk_n", "dl_n", "sv_n")
# indicator -> (scale dividing the numerator: 3600 for hours, 1 for rates, needs refund data)
_SCALE = {
    "quality_refund_rate": 1.0,
    "good_review_rate": 1.0,
    "pickup_48h_rate": 1.0,
    "delivery_hours": 3600.0,
    "refund_handling_hours": 3600.0,
    "dispute_rate": 1.0,
    "response_3min_rate": 1.0,
}
_NEEDS_REFUNDS = frozenset({"quality_refund_rate", "refund_handling_hours", "dispute_rate"})


# --------------------------------------------------------------------------- publishing
def publish_score(raw: Any) -> Any:
    """Round a raw score the way it is published.

    First round to 1e-9 (so 4.7949999999 computed for 4.795 becomes 4.795), then
    half up to 2 decimals, then cap at 5.00 (and floor at 0.00). NaN stays NaN.

    Parameters
    ----------
    raw : float, array-like or Series
        Unrounded score(s).

    Returns
    -------
    float, ndarray or Series
        Same shape; ``publish_score(4.795) == 4.80`` and ``publish_score(4.7949) == 4.79``.
    """
    if isinstance(raw, pd.Series):
        return pd.Series(publish_score(raw.to_numpy(dtype="float64", na_value=np.nan)), index=raw.index, name=raw.name)
    arr = np.asarray(raw, dtype="float64")
    nan = np.isnan(arr)
    n9 = np.rint(np.where(nan, 0.0, arr) * 1e9).astype(np.int64)  # integer nano-points
    cents = (n9 + 5_000_000) // 10_000_000  # half up
    cents = np.clip(cents, 0, 500)
    out = np.where(nan, np.nan, cents / 100.0)
    if out.ndim == 0:
        return float(out)
    return out


# --------------------------------------------------------------------------- input helpers
def _require(tables: Mapping[str, pd.DataFrame], table: str, cols: Sequence[str]) -> pd.DataFrame:
    """The table ``table`` of ``tables``, checked to be a DataFrame with the columns ``cols``."""
    if not isinstance(tables, Mapping) or table not in tables:
        raise SchemaError(f"Table {table!r} is missing.", table=table, rule="missing_table")
    df = tables[table]
    if not isinstance(df, pd.DataFrame):
        raise SchemaError(f"Table {table!r} must be a pandas DataFrame. Got {type(df).__name__} instead.",
                          table=table, rule="not_a_frame")
    require_columns(df, cols, table)
    return df


def _ns(df: pd.DataFrame, col: str, table: str) -> np.ndarray:
    """int64 UTC nanoseconds (NaT -> ``NAT``) of a timestamp column."""
    return column_ns(df[col], col, table)


def _sec(ns: np.ndarray) -> np.ndarray:
    """Whole epoch seconds (floor) of nanosecond stamps."""
    return np.floor_divide(ns, NS_PER_SECOND)


def _as_of_ns(as_of: Any, tz: str, name: str = "as_of", owner: str = "store_scores") -> int:
    """A score day: aware values are instants; dates and naive values are wall clock in ``tz``."""
    try:
        return score_day_ns(as_of, tz)
    except TimeValueError:
        raise ConfigError.invalid(owner, name, "a date or timestamp", as_of) from None


def _window_start_ns(hi_ns: int, cfg: ScoreConfig) -> int:
    """``as_of - window_days`` in calendar days of the configured time zone."""
    return window_start_ns(hi_ns, cfg.window_days, cfg.timezone)


def _str_values(s: pd.Series) -> pd.Series:
    return s if s.dtype == "str" else s.astype("str")


def _arrow_str(s: pd.Series) -> pa.Array:
    """A pyarrow string array of a column (zero-copy for pandas' arrow-backed ``str``)."""
    try:
        a = pa.array(s)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
        a = pa.array(_str_values(s))
    if isinstance(a, pa.ChunkedArray):
        a = a.combine_chunks()
    if not (pa.types.is_string(a.type) or pa.types.is_large_string(a.type)):
        a = pa.array(_str_values(s))
        if isinstance(a, pa.ChunkedArray):
            a = a.combine_chunks()
    return a


def _factorize(a: pa.Array, sort: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes (-1 for null) and unique values (object array) of a string array."""
    d = a.dictionary_encode()
    codes = pc.fill_null(d.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    uniques = np.asarray(d.dictionary.to_pylist(), dtype=object)
    if sort and len(uniques):
        order = np.argsort(uniques.astype(str), kind="stable")
        rank = np.empty(len(order), dtype=np.int64)
        rank[order] = np.arange(len(order))
        codes = np.where(codes >= 0, rank[np.maximum(codes, 0)], -1)
        uniques = uniques[order]
    return codes, uniques


def _index_in(values: pa.Array, value_set: pa.Array) -> np.ndarray:
    """Position of each value in ``value_set`` (-1 if absent)."""
    return pc.fill_null(pc.index_in(values, value_set=value_set), -1).to_numpy(zero_copy_only=False).astype(np.int64)


def _order_rows(
    orders: pd.DataFrame, paid: np.ndarray, keys: pa.Array, parts: Sequence[tuple[str, int]], hint_lo: int, hi: int
) -> np.ndarray:
    """Row position in ``orders`` of each order id in ``keys``.

    Probes the orders against the (small) set of wanted ids, first those paid in
    ``[hint_lo, hi)`` (where nearly every refund or review of a window finds its order),
    then, only if some id is still missing, the other orders.
    """
    if len(keys) == 0:
        return np.zeros(0, dtype=np.int64)
    enc = keys.dictionary_encode()  # one hash pass: the distinct ids and each key's position among them
    uniq = enc.dictionary
    row_of_uniq = np.full(len(uniq), -1, dtype=np.int64)
    near = (paid >= hint_lo) & (paid < hi)
    oid = None
    for stage in (near, ~near):
        idx = np.flatnonzero(stage)
        if len(idx) == 0:
            continue
        if oid is None:
            oid = _arrow_str(orders["order_id"])
        pos = _index_in(oid.take(pa.array(idx)), uniq)
        hit = pos >= 0
        row_of_uniq[pos[hit]] = idx[hit]
        if (row_of_uniq >= 0).all():
            break
    k = pc.fill_null(enc.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    out = np.where(k >= 0, row_of_uniq[np.maximum(k, 0)], -1)
    bad = out < 0
    if bad.any():
        # name the table of the first bad key (parts: consecutive (table, length) blocks)
        first = int(np.flatnonzero(bad)[0])
        edge = 0
        for name, length in parts:
            if first < edge + length:
                table, sl = name, slice(edge, edge + length)
                break
            edge += length
        else:  # pragma: no cover - parts always cover keys
            table, sl = parts[-1][0], slice(0, len(keys))
        bad_t = bad[sl]
        vals = pc.unique(keys.slice(sl.start, sl.stop - sl.start).filter(pa.array(bad_t))).to_pylist()[:5]
        raise SchemaError(
            f"{table}.order_id: {int(bad_t.sum())} row(s) reference an order that is not in orders "
            f"(first: {vals}); validate the tables first",
            table=table,
            column="order_id",
            rule="exists",
            n_bad=int(bad_t.sum()),
            values=vals,
        )
    return out


def _store_codes(
    orders: pd.DataFrame, need_rows: np.ndarray, service: pd.DataFrame, m_srv: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Store codes for the needed order rows (as a full-length map) and the service rows."""
    o_store = _arrow_str(orders["store_id"]).take(pa.array(need_rows))
    s_store = _arrow_str(service["store_id"]).filter(pa.array(m_srv))
    both = pa.concat_arrays([o_store.cast(pa.large_string()), s_store.cast(pa.large_string())])
    codes, uniques = _factorize(both)
    if (codes < 0).any():
        tbl = "orders" if (codes[: len(need_rows)] < 0).any() else "service"
        raise SchemaError("store_id is required (null found)", table=tbl, column="store_id", rule="required")
    code_of_row = np.full(len(orders), -1, dtype=np.int64)
    code_of_row[need_rows] = codes[: len(need_rows)]
    return code_of_row, codes[len(need_rows):], uniques


def _mask_rows(n: int, *rows: np.ndarray) -> np.ndarray:
    m = np.zeros(n, dtype=bool)
    for r in rows:
        m[r] = True
    return np.flatnonzero(m)


# --------------------------------------------------------------------------- window statistics
@dataclass
class _Window:
    """Statistics of one window: per-store integer arrays plus store ids and categories."""

    store_ids: np.ndarray  # object array of str
    category: np.ndarray  # object array of str or NaN
    stats: dict[str, np.ndarray]
    refunds_known: bool


def _event_tables(tables: Mapping[str, pd.DataFrame]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The four tables with the columns the score reads (an absent service table is empty)."""
    orders = _require(tables, "orders", ("order_id", "store_id", "category", "paid_at", "ship_by", "shipped_at", "delivered_at"))
    refunds = _require(tables, "refunds", ("order_id", "requested_at", "reason", "resolved_at", "escalated"))
    reviews = _require(tables, "reviews", ("order_id", "rating", "created_at"))
    service = tables.get("service")
    if service is None:
        service = pd.DataFrame({"store_id": pd.Series([], dtype="str"), "started_at": pd.Series([], dtype="datetime64[ns, UTC]"), "first_response_s": pd.Series([], dtype="float64")})
    service = _require({"service": service}, "service", ("store_id", "started_at", "first_response_s"))
    return orders, refunds, reviews, service


#: Derived refunds instant: when an escalation becomes known (``escalated_at``, else ``resolved_at``).
_ESCALATION_KNOWN = "escalation_known"


class _Columns:
    """One input table whose timestamp columns are converted to UTC ns at most once per call."""

    def __init__(self, frame: pd.DataFrame, table: str) -> None:
        self.frame = frame
        self.table = table
        self._ns: dict[str, np.ndarray] = {}

    def ns(self, col: str) -> np.ndarray:
        """int64 UTC ns of a timestamp column or of :data:`_ESCALATION_KNOWN` (NaT -> int64 min)."""
        out = self._ns.get(col)
        if out is None:
            out = _escalation_known_ns(self) if col == _ESCALATION_KNOWN else _ns(self.frame, col, self.table)
            self._ns[col] = out
        return out


def _escalation_known_ns(refunds: _Columns) -> np.ndarray:
    """When an escalation becomes known: ``escalated_at`` if present (else ``resolved_at``)."""
    res = refunds.ns("resolved_at")
    if "escalated_at" in refunds.frame.columns:
        esc_at = refunds.ns("escalated_at")
        return np.where(esc_at != NAT, esc_at, res)
    return res


class _Events:
    """The rows of one event source that an aggregator reads.

    Holds the rows' anchor instants (UTC ns) and store codes; the other inputs of the
    statistic definitions (:meth:`ns`, :meth:`col`) are read for these rows on first
    use and kept, so each is prepared at most once per call.
    """

    def __init__(self, table: _Columns, rows: np.ndarray, anchor: str, store: np.ndarray) -> None:
        self.table = table
        self.rows = rows
        self.store = store
        self.anchor = table.ns(anchor)[rows]
        self._ns: dict[str, np.ndarray] = {anchor: self.anchor}
        self._cols: dict[str, pd.Series] = {}

    def ns(self, col: str) -> np.ndarray:
        """UTC ns of a timestamp column (or :data:`_ESCALATION_KNOWN`) of these rows."""
        out = self._ns.get(col)
        if out is None:
            out = self._ns[col] = self.table.ns(col)[self.rows]
        return out

    def release(self) -> None:
        """Forget the columns read so far (the anchor, rows and stores stay)."""
        anchor = next(iter(self._ns.items()))
        self._ns = dict([anchor])
        self._cols = {}

    def col(self, col: str) -> pd.Series:
        """A column of these rows, as stored."""
        out = self._cols.get(col)
        if out is None:
            out = self._cols[col] = self.table.frame[col].iloc[self.rows]
        return out


#: Event sources: name -> (table, anchor column). An event belongs to the windows
#: ``[lo, hi)`` that hold its anchor instant.
_SOURCES: dict[str, tuple[str, str]] = {
    "paid": ("orders", "paid_at"),
    "ship_by": ("orders", "ship_by"),
    "delivered": ("orders", "delivered_at"),
    "refund": ("refunds", "requested_at"),
    "review": ("reviews", "created_at"),
    "chat": ("service", "started_at"),
}
_ORDER_SOURCES = ("paid", "ship_by", "delivered")


@dataclass(frozen=True)
class _StatDef:
    """The definition of one integer window statistic, read by both aggregators.

    Attributes
    ----------
    name : str
        The statistic (a key of the ``stats`` that :func:`_indicator_num_den` reads).
    source : str
        Event source, a key of :data:`_SOURCES`.
    where : callable, optional
        Row filter: ``where(events)`` is a boolean array over the source's rows.
    value : callable, optional
        ``value(events)``: the integer summed per store; ``None`` counts the rows.
    known_from : str, optional
        A timestamp input of the source (UTC ns): the event counts only in windows
        ending after it (``known_from < as_of``); a null instant never counts.
    """

    name: str
    source: str
    where: Callable[[_Events], np.ndarray] | None = None
    value: Callable[[_Events], np.ndarray] | None = None
    known_from: str | None = None


#: Every integer window statistic, defined once. :func:`_window_stats` (one window) and
#: :func:`_history_stats` (daily buckets) both aggregate exactly this table.
_STAT_DEFS: tuple[_StatDef, ...] = (
    _StatDef("n_orders", "paid"),
    _StatDef("pk_n", "ship_by"),
    _StatDef("pk_ok", "ship_by", where=lambda e: (e.ns("shipped_at") != NAT) & (e.ns("shipped_at") <= e.anchor)),
    _StatDef("dl_n", "delivered"),
    _StatDef("dl_sum_s", "delivered", value=lambda e: _sec(e.anchor) - _sec(e.ns("paid_at"))),
    _StatDef("rf_n", "refund"),
    _StatDef("rf_req_sum_s", "refund", value=lambda e: _sec(e.anchor)),
    _StatDef("rf_closed_n", "refund", known_from="resolved_at"),
    _StatDef("rf_closed_res_sum_s", "refund", value=lambda e: _sec(e.ns("resolved_at")), known_from="resolved_at"),
    _StatDef("qr_n", "refund", where=lambda e: e.col("reason").isin(QUALITY_REASONS).to_numpy(dtype=bool)),
    _StatDef(
        "dp_n", "refund", where=lambda e: e.col("escalated").fillna(False).to_numpy(dtype=bool), known_from=_ESCALATION_KNOWN
    ),
    _StatDef("rv_n", "review"),
    _StatDef("rv_good", "review", where=lambda e: e.col("rating").to_numpy(dtype="float64", na_value=np.nan) >= 4),
    _StatDef("sv_n", "chat"),
    _StatDef(
        "sv_ok", "chat", where=lambda e: e.col("first_response_s").to_numpy(dtype="float64", na_value=np.nan) <= RESPONSE_LIMIT_S
    ),
)
_STATS: tuple[str, ...] = tuple(d.name for d in _STAT_DEFS)
_SUM_STATS = frozenset(d.name for d in _STAT_DEFS if d.value is not None)


def _counted(d: _StatDef, ev: _Events, known_before: int | None) -> np.ndarray | None:
    """Rows of ``ev`` that ``d`` counts (``None``: all of them).

    Applies ``d.where`` and, if ``d.known_from`` is set, drops rows whose instant is
    null or (when ``known_before`` is given) not before ``known_before``.
    """
    m = None
    if d.known_from is not None:
        k = ev.ns(d.known_from)
        m = k != NAT
        if known_before is not None:
            m &= k < known_before
    if d.where is not None:
        w = d.where(ev)
        m = w if m is None else w & m
    return m


@dataclass
class _Sources:
    """Every event source, restricted to the rows one aggregator needs, with store codes."""

    events: dict[str, _Events]
    store_ids: np.ndarray  # object array of str; store code -> store id
    orders: _Columns
    refunds: _Columns
    #: (category code of every order, sorted levels) when the orders come pre-coded
    order_categories: tuple[np.ndarray, np.ndarray] | None = None
    #: first ``requested_at`` of all refunds (``NAT`` when none) when known up front
    first_refund_ns: int | None = None

    def paid_categories(self) -> tuple[np.ndarray, np.ndarray]:
        """Category codes (alphabetical) of the ``paid`` events' orders, and the levels."""
        paid = self.events["paid"]
        if self.order_categories is not None:
            codes, levels = self.order_categories
            return np.asarray(codes[paid.rows], dtype=np.int64), levels
        return _factorize(_arrow_str(self.orders.frame["category"]).take(pa.array(paid.rows)), sort=True)

    def first_refund_day(self, tz: str) -> int | None:
        """Local day of the first refund request (``None`` when there is none)."""
        if self.first_refund_ns is not None:
            first = self.first_refund_ns
        else:
            req = self.refunds.ns("requested_at")
            req = req[req != NAT]
            first = int(req.min()) if len(req) else NAT
        if first == NAT:
            return None
        return int(day_index(np.array([first], dtype=np.int64), tz)[0])


def _event_sources(
    tables: Mapping[str, pd.DataFrame], lo: int, hi: int, lookback_days: int, union_orders: bool
) -> _Sources:
    """Prepare every event source for the events anchored in ``[lo, hi)`` (UTC ns).

    Each source keeps the rows whose anchor lies in the range; with ``union_orders``
    the three order sources all keep every order with any of their anchors in the
    range (the daily aggregation drops out-of-range anchors itself). Refunds and
    reviews are mapped to their order's store; only the needed store ids are factorized.
    """
    o_df, r_df, v_df, s_df = _event_tables(tables)
    cols = {
        "orders": _Columns(o_df, "orders"),
        "refunds": _Columns(r_df, "refunds"),
        "reviews": _Columns(v_df, "reviews"),
        "service": _Columns(s_df, "service"),
    }
    inside: dict[str, np.ndarray] = {}
    for src, (table, anchor) in _SOURCES.items():
        ns = cols[table].ns(anchor)
        inside[src] = (ns >= lo) & (ns < hi)  # NaT is int64 min: never inside
    m_orders = inside["paid"] | inside["ship_by"] | inside["delivered"]
    o_rows = np.flatnonzero(m_orders)
    rows = {src: o_rows if union_orders else np.flatnonzero(inside[src]) for src in _ORDER_SOURCES}
    rf_pos = np.flatnonzero(inside["refund"])
    rv_pos = np.flatnonzero(inside["review"])

    orders = cols["orders"]
    rf_keys = _arrow_str(r_df["order_id"].iloc[rf_pos]).cast(pa.large_string())
    rv_keys = _arrow_str(v_df["order_id"].iloc[rv_pos]).cast(pa.large_string())
    hint_lo = lo - max(lookback_days, 30) * NS_PER_DAY
    found = _order_rows(
        o_df, orders.ns("paid_at"), pa.concat_arrays([rf_keys, rv_keys]), [("refunds", len(rf_pos)), ("reviews", len(rv_pos))], hint_lo, hi
    )
    rf_rows, rv_rows = found[: len(rf_pos)], found[len(rf_pos):]
    need_rows = _mask_rows(len(o_df), o_rows, rf_rows, rv_rows)
    code_of_row, s_codes, uniques = _store_codes(o_df, need_rows, s_df, inside["chat"])

    events = {src: _Events(orders, rows[src], _SOURCES[src][1], code_of_row[rows[src]]) for src in _ORDER_SOURCES}
    events["refund"] = _Events(cols["refunds"], rf_pos, "requested_at", code_of_row[rf_rows])
    events["review"] = _Events(cols["reviews"], rv_pos, "created_at", code_of_row[rv_rows])
    events["chat"] = _Events(cols["service"], np.flatnonzero(inside["chat"]), "started_at", s_codes)
    return _Sources(events=events, store_ids=np.asarray(uniques, dtype=object), orders=orders, refunds=cols["refunds"])


def _window_stats(tables: Mapping[str, pd.DataFrame], lo: int, hi: int, cfg_lookback_days: int = 30) -> _Window:
    """Integer statistics of the window ``[lo, hi)`` (UTC ns) per store, filtering first.

    Every :data:`_STAT_DEFS` entry counts (or sums over) the rows of its source anchored
    in the window that pass its filter and, if it has one, whose known-from instant is
    before ``hi``. Only stores with an activity event (:data:`_ACTIVITY`) are kept.
    """
    return _window_from_sources(_event_sources(tables, lo, hi, cfg_lookback_days, union_orders=False), hi)


def _window_from_sources(src: _Sources, hi: int) -> _Window:
    """:func:`_window_stats` on prepared event sources (tables or integer-coded arrays)."""
    n = len(src.store_ids)
    st: dict[str, np.ndarray] = {}
    for d in _STAT_DEFS:
        ev = src.events[d.source]
        m = _counted(d, ev, known_before=hi)
        c = ev.store if m is None else ev.store[m]
        if d.value is None:
            st[d.name] = np.bincount(c, minlength=n).astype(np.int64)
        else:
            v = d.value(ev)
            out = np.zeros(n, dtype=np.int64)
            np.add.at(out, c, (v if m is None else v[m]).astype(np.int64))
            st[d.name] = out
    if src.first_refund_ns is not None:
        refunds_known = src.first_refund_ns != NAT and src.first_refund_ns < hi
    else:
        req = src.refunds.ns("requested_at")
        refunds_known = bool(len(req)) and bool(((req != NAT) & (req < hi)).any())

    # modal category over orders paid in the window (ties: alphabetical)
    paid = src.events["paid"]
    category = _modal_category(paid.store, *src.paid_categories(), n)

    active = np.zeros(n, dtype=bool)
    for k in _ACTIVITY:
        active |= st[k] > 0
    keep = np.flatnonzero(active)
    return _Window(
        store_ids=src.store_ids[keep],
        category=category[keep],
        stats={k: st[k][keep] for k in _STATS},
        refunds_known=refunds_known,
    )


def _modal_category(store_codes: np.ndarray, cat_codes: np.ndarray, cat_uniques: np.ndarray, n: int) -> np.ndarray:
    """Modal category per store code (ties: alphabetical; codes are alphabetical)."""
    out = np.full(n, np.nan, dtype=object)
    if len(store_codes) == 0:
        return out
    if (cat_codes < 0).any():
        raise SchemaError("category is required (null found)", table="orders", column="category", rule="required")
    ncat = len(cat_uniques)
    key = store_codes.astype(np.int64) * ncat + cat_codes
    if n * ncat <= 4 * len(key) + 1_000_000:
        full = np.bincount(key, minlength=n * ncat)
        ukey = np.flatnonzero(full)
        counts = full[ukey]
    else:
        ukey, counts = np.unique(key, return_counts=True)
    st = ukey // ncat
    ct = ukey % ncat
    order = np.lexsort((ct, -counts, st))  # by store, count desc, category asc
    st_o = st[order]
    first = np.ones(len(st_o), dtype=bool)
    first[1:] = st_o[1:] != st_o[:-1]
    out[st_o[first]] = np.asarray(cat_uniques, dtype=object)[ct[order][first]]
    return out


# --------------------------------------------------------------------------- statistics -> scores
def _indicator_num_den(stats: Mapping[str, np.ndarray], asof_s: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Integer numerator and denominator of every indicator (numerator in seconds for hours)."""
    open_n = stats["rf_n"] - stats["rf_closed_n"]
    rf_num = stats["rf_closed_res_sum_s"] + open_n * asof_s - stats["rf_req_sum_s"]
    return {
        "quality_refund_rate": (stats["qr_n"], stats["n_orders"]),
        "good_review_rate": (stats["rv_good"], stats["rv_n"]),
        "pickup_48h_rate": (stats["pk_ok"], stats["pk_n"]),
        "delivery_hours": (stats["dl_sum_s"], stats["dl_n"]),
        "refund_handling_hours": (rf_num, stats["rf_n"]),
        "dispute_rate": (stats["dp_n"], stats["n_orders"]),
        "response_3min_rate": (stats["sv_ok"], stats["sv_n"]),
    }


def _group_sum(values: np.ndarray, group: np.ndarray, n_groups: int) -> np.ndarray:
    out = np.zeros(n_groups, dtype=np.int64)
    np.add.at(out, group, values.astype(np.int64))
    return out


def _points(values: np.ndarray, anchors: Sequence[float], higher: bool) -> np.ndarray:
    a = np.asarray(anchors, dtype="float64")
    pts = np.arange(6, dtype="float64")
    if higher:
        return np.interp(values, a, pts)
    return np.interp(-values, -a, pts)


def _score_frame(
    store_ids: np.ndarray,
    as_of_ns: np.ndarray,
    day_key: np.ndarray,
    category: np.ndarray,
    stats: Mapping[str, np.ndarray],
    refunds_known: np.ndarray,
    cfg: ScoreConfig,
    keep: np.ndarray | None = None,
    details: bool = False,
    lean: bool = False,
) -> Any:
    """Turn window statistics into the output rows (shared by every entry point).

    Category means are pooled over all rows sharing ``day_key`` and category; ``keep``
    then selects the rows to return. ``lean`` returns only ``score``, the three
    dimensions, ``n_orders`` and ``category`` (codes into the levels of a
    ``pd.Categorical`` ``category``, -1 for none) as a dict of arrays: no string is made.
    """
    n = len(store_ids)
    asof_s = np.floor_divide(as_of_ns, NS_PER_SECOND)
    nd = _indicator_num_den(stats, asof_s)
    if isinstance(category, pd.Categorical):  # codes already (the daily history): no string per row
        cat_codes = np.asarray(category.codes, dtype=np.int64)
        levels = np.asarray([str(x) for x in category.categories] + [None], dtype=object)  # code -1: the last
    else:
        cat_codes, uniques = pd.factorize(pd.Series(category, dtype="str"), sort=True)
        cat_codes = np.asarray(cat_codes, dtype=np.int64)
        levels = np.asarray([str(x) for x in uniques] + [None], dtype=object)
    ncat = len(levels)  # last slot: unknown category (uses the all-store mean)
    cat_codes = np.where(cat_codes < 0, ncat - 1, cat_codes)
    day_codes, day_uniques = pd.factorize(day_key, sort=True)
    day_codes = np.asarray(day_codes, dtype=np.int64)
    ndays = len(day_uniques)
    grp = day_codes * ncat + cat_codes
    unknown_cat = cat_codes == ncat - 1

    sel = np.arange(n) if keep is None else np.flatnonzero(keep)
    codes_sel = cat_codes[sel]
    level_code = {str(x): j for j, x in enumerate(levels[:-1])}
    out: dict[str, Any] = {}
    points: dict[str, np.ndarray] = {}
    assessed: dict[str, np.ndarray] = {}
    for ind in INDICATORS:
        num, den = nd[ind]
        avail = refunds_known if ind in _NEEDS_REFUNDS else np.ones(n, dtype=bool)
        num_a = np.where(avail, num, 0)
        den_a = np.where(avail, den, 0)
        g_num = _group_sum(num_a, grp, ndays * ncat)
        g_den = _group_sum(den_a, grp, ndays * ncat)
        d_num = _group_sum(num_a, day_codes, ndays)
        d_den = _group_sum(den_a, day_codes, ndays)
        with np.errstate(invalid="ignore", divide="ignore"):
            prior = np.where(unknown_cat, d_num[day_codes] / d_den[day_codes], g_num[grp] / g_den[grp])
        num_s, den_s, prior_s, avail_s = num[sel], den[sel], prior[sel], avail[sel]
        scale = _SCALE[ind]
        k = cfg.pseudo_counts[ind]
        has = avail_s & (den_s > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            raw = np.where(has, num_s / (den_s * scale), np.nan)
            shrunk = np.where(has, (num_s + k * prior_s) / ((den_s + k) * scale), np.nan)
        ok = has & (den_s >= cfg.min_counts[ind])
        pts = np.full(len(sel), np.nan)
        per_cat = cfg.bands[ind]
        special = [c for c in per_cat if c != "*"]
        use_star = ok.copy()
        for c in special:
            if c not in level_code:
                continue
            m = ok & (codes_sel == level_code[c])
            if m.any():
                pts[m] = _points(shrunk[m], per_cat[c], HIGHER_IS_BETTER[ind])
                use_star &= ~m
        if use_star.any():
            pts[use_star] = _points(shrunk[use_star], per_cat["*"], HIGHER_IS_BETTER[ind])
        out[f"{ind}_raw"] = raw
        out[f"{ind}_shrunk"] = shrunk
        out[f"{ind}_points"] = pts
        out[f"{ind}_assessed"] = ok
        points[ind] = pts
        assessed[ind] = ok
        if details:
            out[f"{ind}_n"] = np.where(avail_s, den_s, 0)
            out[f"{ind}_prior"] = prior_s / scale
            out[f"{ind}_available"] = avail_s

    dims: dict[str, np.ndarray] = {}
    for dim in DIMENSIONS:
        wsum = np.zeros(len(sel))
        acc = np.zeros(len(sel))
        for ind in INDICATORS:
            if INDICATOR_DIMENSION[ind] != dim:
                continue
            w = cfg.indicator_weights[ind] * assessed[ind]
            wsum = wsum + w
            acc = acc + np.where(assessed[ind], cfg.indicator_weights[ind] * points[ind], 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            dims[dim] = np.where(wsum > 0, acc / wsum, np.nan)
    wsum = np.zeros(len(sel))
    acc = np.zeros(len(sel))
    for dim in DIMENSIONS:
        has = ~np.isnan(dims[dim])
        wsum = wsum + cfg.dimension_weights[dim] * has
        acc = acc + np.where(has, cfg.dimension_weights[dim] * np.where(has, dims[dim], 0.0), 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        total = np.where(wsum > 0, acc / wsum, np.nan)

    n_orders = stats["n_orders"][sel]
    if lean:
        return {
            "score": publish_score(total), "product": publish_score(dims["product"]),
            "logistics": publish_score(dims["logistics"]), "service": publish_score(dims["service"]),
            "n_orders": n_orders.astype(np.int32),
            "category": np.where(codes_sel == ncat - 1, -1, codes_sel).astype(np.int32),
        }
    frame: dict[str, Any] = {
        "store_id": pd.array(np.asarray(store_ids, dtype=object)[sel], dtype="str"),
        "as_of": pd.DatetimeIndex(np.asarray(as_of_ns, dtype=np.int64)[sel].astype("datetime64[ns]"), tz="UTC"),
        "category": pd.array(levels[codes_sel], dtype="str"),
        "score": publish_score(total),
        "product": publish_score(dims["product"]),
        "logistics": publish_score(dims["logistics"]),
        "service": publish_score(dims["service"]),
        "n_orders": n_orders.astype(np.int32),
        "provisional": n_orders < cfg.min_orders,
        "score_config_hash": pd.Categorical([cfg.config_hash()] * len(sel)),
    }
    frame.update(out)
    frame["score_raw"] = total
    df = pd.DataFrame(frame)
    for ind in INDICATORS:
        for suf in ("raw", "shrunk", "points"):
            df[f"{ind}_{suf}"] = df[f"{ind}_{suf}"].astype("float64")
    return df


# --------------------------------------------------------------------------- public: one as_of
def store_scores(tables: Mapping[str, pd.DataFrame], as_of: Any, config: ScoreConfig | None = None, *,
                 validate_tables: bool = True) -> pd.DataFrame:
    """Store experience scores of every store with an event in the window.

    Parameters
    ----------
    tables : dict of DataFrame
        Validated tables ``orders``, ``refunds``, ``reviews`` and optionally ``service``.
    as_of : date, str or Timestamp
        End of the window (excluded). A date or naive timestamp is wall-clock time in
        ``config.timezone``.
    config : ScoreConfig, optional
        Defaults to ``ScoreConfig()``.
    validate_tables : bool, default True
        Tables that are not :func:`refundguard.validate` output are validated (strict)
        first; ``False`` means "validated already" (dtypes still checked:
        :func:`refundguard.tables.canonical_tables`).

    Returns
    -------
    DataFrame
        One row per store, sorted by ``store_id``, with :data:`OUTPUT_COLUMNS`.

    Notes
    -----
    An indicator built on refunds (``quality_refund_rate``, ``refund_handling_hours``,
    ``dispute_rate``) is not assessed, and its raw value is null, while no refund at
    all is known before ``as_of`` (e.g. a data set without refunds): a missing source
    is never read as "zero refunds".
    """
    tables = canonical_tables(tables, validate_tables)
    cfg = _check_config(config, "store_scores")
    hi = _as_of_ns(as_of, cfg.timezone)
    lo = _window_start_ns(hi, cfg)
    return _scores_for_window(tables, lo, hi, cfg)


def _scores_for_window(tables: Mapping[str, pd.DataFrame], lo: int, hi: int, cfg: ScoreConfig, details: bool = False) -> pd.DataFrame:
    w = _window_stats(tables, lo, hi, cfg.window_days)
    order = np.argsort(np.asarray(w.store_ids, dtype=str), kind="stable")
    n = len(order)
    return _score_frame(
        w.store_ids[order],
        np.full(n, hi, dtype=np.int64),
        np.zeros(n, dtype=np.int64),
        w.category[order],
        {k: v[order] for k, v in w.stats.items()},
        np.full(n, w.refunds_known, dtype=bool),
        cfg,
        details=details,
    )


def _check_config(config: ScoreConfig | None, owner: str) -> ScoreConfig:
    if config is None:
        return ScoreConfig()
    if not isinstance(config, ScoreConfig):
        raise ConfigError.invalid(owner, "config", "None or a ScoreConfig", config)
    return config


# --------------------------------------------------------------------------- public: daily history
def _day_of(value: Any, tz: str, name: str) -> int:
    ns = _as_of_ns(value, tz, name, "store_score_history")
    return int(day_index(np.array([ns], dtype=np.int64), tz)[0])


def store_score_history(
    tables: Mapping[str, pd.DataFrame],
    start: Any,
    end: Any,
    config: ScoreConfig | None = None,
    pairs: pd.DataFrame | None = None,
    *,
    validate_tables: bool = True,
) -> pd.DataFrame:
    """Daily store scores for every day D in ``[start, end]`` (both included).

    The row dated D covers ``[D - window_days, D)`` in ``config.timezone`` and equals
    ``store_scores(tables, as_of=D)`` for that store (same integers, same code). It is
    computed from daily buckets and rolling sums (difference arrays), not by calling
    :func:`store_scores` once per day.

    Parameters
    ----------
    tables : dict of DataFrame
        Validated tables.
    start, end : date-like
        First and last day (local dates in the configured time zone).
    config : ScoreConfig, optional
    pairs : DataFrame, optional
        Columns ``store_id`` and ``day`` (date-like, local): return only those rows
        (pairs without any event in their window are absent from the result).
    validate_tables : bool, default True
        Tables that are not :func:`refundguard.validate` output are validated (strict)
        first; ``False`` means "validated already" (dtypes still checked:
        :func:`refundguard.tables.canonical_tables`).

    Returns
    -------
    DataFrame
        :data:`OUTPUT_COLUMNS`, sorted by (``as_of``, ``store_id``); ``as_of`` is the
        UTC instant of D 00:00 local time.
    """
    tables = canonical_tables(tables, validate_tables)
    cfg = _check_config(config, "store_score_history")
    tz = cfg.timezone
    d0 = _day_of(start, tz, "start")
    d1 = _day_of(end, tz, "end")
    if d1 < d0:
        raise ConfigError.invalid("store_score_history", "end", f"a day on or after start ({start!r})", end)
    h = _history_stats(tables, d0, d1, cfg)
    keep = None
    if pairs is not None:
        keep = _pairs_mask(pairs, h.store_ids, h.st_idx, h.day_idx, d0, tz)
    return _history_frame(h, cfg, d0, keep)


def _history_frame(h: _History, cfg: ScoreConfig, d0: int, keep: np.ndarray | None = None) -> pd.DataFrame:
    """The output rows of daily statistics ``h`` (first day ``d0``) scored with ``cfg``, sorted."""
    n_days = int(h.day_idx.max()) + 1 if len(h.day_idx) else 0
    day_start = day_start_ns(np.arange(d0, d0 + n_days, dtype=np.int64), cfg.timezone)
    df = _score_frame(
        h.store_ids[h.st_idx],
        day_start[h.day_idx],
        h.day_idx,
        h.category,
        h.stats,
        h.refunds_known[h.day_idx],
        cfg,
        keep=keep,
    )
    return df.sort_values(["as_of", "store_id"], kind="stable").reset_index(drop=True)


@dataclass
class _History:
    """Daily statistics: one row per (store, day) whose window holds an activity event."""

    store_ids: np.ndarray  # object array of str: store code -> store id
    st_idx: np.ndarray  # store code of each row
    day_idx: np.ndarray  # day of each row, counted from the first day
    category: pd.Categorical  # modal category of each row (codes into the orders' categories; NaN: none)
    stats: dict[str, np.ndarray]  # every statistic of _STATS, per row
    refunds_known: np.ndarray  # per day: some refund was requested on an earlier day


def _history_stats(tables: Mapping[str, pd.DataFrame], d0: int, d1: int, cfg: ScoreConfig) -> _History:
    """Integer statistics of the windows ending at the local days ``d0 .. d1``, from daily buckets.

    An event anchored on local day ``a`` lies in the windows of days ``a + 1 .. a +
    window_days``; with a known-from instant on day ``k`` it counts from day
    ``max(a, k) + 1`` on. Rolling sums (:class:`_Rolling`) add each event once.
    """
    lo_ns, hi_ns = _history_range(d0, d1, cfg)
    src = _event_sources(tables, lo_ns, hi_ns, cfg.window_days, union_orders=True)
    return _history_from_sources(src, d0, d1, cfg)


def _history_range(d0: int, d1: int, cfg: ScoreConfig) -> tuple[int, int]:
    """UTC ns range ``[lo, hi)`` of the anchors whose windows can touch the days ``d0 .. d1``.

    Only events anchored on a day in ``[d0 - window_days, d1 - 1]`` matter (one day of margin).
    """
    tz = cfg.timezone
    lo_ns = int(day_start_ns(np.array([d0 - cfg.window_days - 1]), tz)[0])
    hi_ns = int(day_start_ns(np.array([d1 + 1]), tz)[0])
    return lo_ns, hi_ns


def _history_from_sources(src: _Sources, d0: int, d1: int, cfg: ScoreConfig, carry: _Carry | None = None
                          ) -> _History:
    """:func:`_history_stats` on prepared event sources (tables or integer-coded arrays).

    With ``carry`` (:class:`StoreScoreSweep`), ``src`` holds only the events anchored
    from ``carry.next_day`` (which must be ``d0``) to ``d1``, each order source its own
    anchors; the earlier events come from ``carry``, which is updated for ``d1 + 1``.
    """
    tz = cfg.timezone
    ndays = d1 - d0 + 1
    wd = cfg.window_days
    nst = len(src.store_ids)
    ahead = 0 if carry is None else wd + 1  # an event anchored by d1 stops by d1 + wd + 1

    days_of: dict[tuple[str, str], np.ndarray] = {}

    def day_of(source: str, col: str) -> np.ndarray:
        """Local day numbers of a timestamp input of a source (computed once)."""
        out = days_of.get((source, col))
        if out is None:
            out = days_of[(source, col)] = day_index(src.events[source].ns(col), tz)
        return out

    acc = _Rolling(nst, d0, ndays, ahead, heads=None if carry is None else carry.heads)
    # the day interval of each event is shared by the statistics of one (source, known_from);
    # _STAT_DEFS lists each source's statistics together, so a source's spans go when it is done
    spans: dict[tuple[str, str | None], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for d in _STAT_DEFS:
        ev = src.events[d.source]
        if spans and next(iter(spans))[0] != d.source:
            done = next(iter(spans))[0]
            spans.clear()
            days_of.clear()
            src.events[done].release()  # its other columns were gathered for its statistics only
        key = (d.source, d.known_from)
        if key not in spans:
            anchor_day = day_of(d.source, _SOURCES[d.source][1])
            first = anchor_day if d.known_from is None else np.maximum(anchor_day, day_of(d.source, d.known_from))
            ok = np.ones(len(ev.store), dtype=bool) if d.known_from is None else ev.ns(d.known_from) != NAT
            spans[key] = acc.spans(ev.store, first + 1, anchor_day + wd, ok)
        start, stop, ok = spans[key]
        m = ok if d.where is None else ok & d.where(ev)
        value = None if d.value is None else np.asarray(d.value(ev), dtype=np.int64)[m]
        acc.add_spans(d.name, start[m], stop[m], value)
        acc.settle(d.name)  # (its int64 difference array goes before the next statistic's)
    # below, only the paid events are read: the others' rows go now (they would add to the peak below)
    spans.clear()
    days_of.clear()
    for name in [k for k in src.events if k != "paid"]:
        del src.events[name]

    # refunds known before D: any refund requested on a day before D
    days = np.arange(d0, d1 + 1, dtype=np.int64)
    first_req_day = src.first_refund_day(tz)
    if first_req_day is not None:
        known_by_day = days >= first_req_day + 1
    else:
        known_by_day = np.zeros(ndays, dtype=bool)

    # modal category per (store, day): rolling counts per (store, category)
    paid = src.events["paid"]
    p_day = day_index(paid.anchor, tz)
    cat_codes, cat_uniques = src.paid_categories()
    if (cat_codes < 0).any():
        raise SchemaError("category is required (null found)", table="orders", column="category", rule="required")
    ncat = max(len(cat_uniques), 1)
    pair_key = paid.store.astype(np.int64) * ncat + cat_codes
    carried = np.empty(0, dtype=np.int64) if carry is None else carry.pair_keys
    if nst * ncat <= 4 * len(pair_key) + 1_000_000:  # dense: no sort
        present = np.zeros(nst * ncat, dtype=bool)
        present[pair_key] = True
        present[carried] = True
        upair = np.flatnonzero(present)
        rank = np.cumsum(present, dtype=np.int64) - 1
        pair_idx = rank[pair_key]
        carried_idx = rank[carried]
        del present, rank
    else:
        upair, inverse = np.unique(np.concatenate([pair_key, carried]), return_inverse=True)
        pair_idx, carried_idx = inverse[: len(pair_key)], inverse[len(pair_key):]
        del inverse
    del pair_key
    pair_heads = None
    if carry is not None:
        head = np.zeros((len(upair), ahead + 1), dtype=np.int64)
        head[carried_idx] = carry.pair_head
        pair_heads = {"n": head}
    pacc = _Rolling(len(upair), d0, ndays, ahead, heads=pair_heads)
    first = p_day + 1
    p_day += wd  # (in place: the last day; a batch store block peaked here)
    pacc.add("n", pair_idx, first, p_day, None)
    del first, p_day, pair_idx, pair_heads
    pcounts = pacc.result("n")  # (n_pairs, ndays); pairs sorted by store then category (alphabetical)
    if carry is not None:  # the pairs that still count some order after d1
        tail = pacc.tails.pop("n")
        live = tail.any(axis=1)
        carry.pair_keys, carry.pair_head = upair[live], tail[live]
    pair_store = upair // ncat
    pair_cat = upair % ncat

    act = {k: acc.result(k) for k in _ACTIVITY}
    active = np.zeros((nst, ndays), dtype=bool)
    for k in _ACTIVITY:
        active |= act[k] > 0
    st_idx, day_idx = np.nonzero(active)  # row-major: by store then day
    del active
    row_stats = {k: act.pop(k)[st_idx, day_idx] for k in _ACTIVITY}
    for k in _STATS:
        if k not in row_stats:
            row_stats[k] = acc.result(k)[st_idx, day_idx]

    cat_of = np.full(len(st_idx), -1, dtype=np.int64)  # (codes: a string per row cost 0.3 s a block at 10M orders)
    if len(upair):
        starts = np.flatnonzero(np.r_[True, pair_store[1:] != pair_store[:-1]])
        gstore = pair_store[starts]
        gmax = np.maximum.reduceat(pcounts, starts, axis=0)
        grp_of_pair = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(upair)]))
        is_max = (pcounts == gmax[grp_of_pair]) & (pcounts > 0)
        big = NEVER
        cand = np.where(is_max, np.arange(len(upair), dtype=np.int64)[:, None], big)
        best = np.minimum.reduceat(cand, starts, axis=0)  # (n_groups, ndays)
        del cand, is_max
        grp_of_store = np.full(nst, -1, dtype=np.int64)
        grp_of_store[gstore] = np.arange(len(starts))
        g = grp_of_store[st_idx]
        hasg = g >= 0
        b = np.full(len(st_idx), big, dtype=np.int64)
        b[hasg] = best[g[hasg], day_idx[hasg]]
        found = b != big
        cat_of[found] = pair_cat[b[found]]

    category = pd.Categorical.from_codes(cat_of, categories=pd.Index(list(cat_uniques), dtype=object))
    if carry is not None:  # every statistic's result() has run: its tail is kept
        carry.heads = acc.tails
        carry.next_day = d1 + 1
    return _History(
        store_ids=src.store_ids, st_idx=st_idx, day_idx=day_idx, category=category, stats=row_stats,
        refunds_known=known_by_day
    )


def _pairs_mask(pairs: pd.DataFrame, uniques: np.ndarray, st_idx: np.ndarray, day_idx: np.ndarray, d0: int, tz: str) -> np.ndarray:
    if not isinstance(pairs, pd.DataFrame) or not {"store_id", "day"} <= set(pairs.columns):
        raise ConfigError.invalid("store_score_history", "pairs", "None or a DataFrame with columns 'store_id' and 'day'",
                                  type(pairs).__name__)
    pday = _pair_days(pairs["day"], tz)
    scode = pd.Index(pd.Series(uniques, dtype="str")).get_indexer(_str_values(pairs["store_id"]))
    ok = scode >= 0
    wanted = unique_sorted(scode[ok].astype(np.int64) * (1 << 32) + (pday[ok] - d0 + (1 << 31)))
    have = st_idx.astype(np.int64) * (1 << 32) + (day_idx + (1 << 31))
    return np.isin(have, wanted)


def _pair_days(values: pd.Series, tz: str) -> np.ndarray:
    """Local day numbers of the ``pairs`` argument's ``day`` column."""
    try:
        return label_days(values, tz)
    except TimeValueError:
        raise ConfigError.invalid("store_score_history", "pairs", "a DataFrame whose 'day' column holds dates",
                                  values.head(3).tolist()) from None


class _Rolling:
    """Per-(row, day) sums of events active on the day interval ``[s, e]``, via difference arrays.

    Events are only recorded by :meth:`add`; each statistic is materialised (one dense
    ``rows x days`` array) by :meth:`result`, one at a time, to keep memory low.

    With ``ahead > 0`` the difference arrays also cover the ``ahead`` days after the
    last one, and :meth:`result` keeps each statistic's :attr:`tails`: its value on the
    last day and the differences of the days after it, the ``heads`` of the next days'
    :class:`_Rolling` (:class:`_Carry`). An event's interval must then end within
    ``ahead`` days of the last day (its stop is never dropped).
    """

    def __init__(self, nrows: int, d0: int, ndays: int, ahead: int = 0,
                 heads: Mapping[str, np.ndarray] | None = None) -> None:
        self.nrows, self.d0, self.ndays, self.ahead = nrows, d0, ndays, ahead
        self.width = ndays + ahead + 1  # difference columns: the days kept, the days ahead, the stops after them
        self.events: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray | None]]] = {}
        self.diffs: dict[str, np.ndarray] = {}
        self.heads: dict[str, np.ndarray] = dict(heads or {})
        self.tails: dict[str, np.ndarray] = {}
        self.settled: dict[str, np.ndarray] = {}

    def add(self, name: str, rows: np.ndarray, s: np.ndarray, e: np.ndarray, value: np.ndarray | None) -> None:
        """Record events of ``rows`` active on days ``[s, e]`` (:meth:`spans`, then :meth:`add_spans`).

        ``s`` and ``e`` are int64 arrays of the caller's that this overwrites.
        """
        start, stop, ok = self.spans(rows, s, e, np.ones(len(s), dtype=bool))
        v = None if value is None else np.asarray(value, dtype=np.int64)
        if not ok.all():
            start, stop, v = start[ok], stop[ok], None if v is None else v[ok]
        self.add_spans(name, start, stop, v)

    def spans(self, rows: np.ndarray, s: np.ndarray, e: np.ndarray, ok: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Flat start and stop positions of events active on days ``[s, e]`` (for :meth:`add_spans`).

        ``s`` and ``e`` are int64 arrays of the caller's that this overwrites.

        Returns ``(start, stop, ok)``: ``ok`` is false for events outside the days kept.
        """
        s -= self.d0  # (in place: no temporaries of their size, the batch store blocks peak here)
        np.maximum(s, 0, out=s)
        e -= self.d0
        np.minimum(e, self.ndays + self.ahead - 1, out=e)
        ok = ok & (s <= e)
        small = self.nrows * self.width < 2**31
        base = rows.astype(np.int32 if small else np.int64)  # (small: every position fits int32)
        base *= self.width
        s += base
        e += base
        e += 1
        del base
        if small:
            return s.astype(np.int32), e.astype(np.int32), ok
        return s, e, ok

    def add_spans(self, name: str, start: np.ndarray, stop: np.ndarray, value: np.ndarray | None) -> None:
        """Record events by their :meth:`spans` positions (already restricted to the kept ones).

        When the difference array is small next to the events (few days, e.g. one batch
        slice) the events are added to it at once; otherwise they are kept until
        :meth:`result` (a long history: one dense array at a time).
        """
        size = self.nrows * self.width
        if size <= 4 * len(start) + 1_000_000:
            diff = self.diffs.get(name)
            if diff is None:
                diff = self.diffs[name] = np.zeros(size, dtype=np.int64)
            self._accumulate(diff, start, stop, value)
        else:
            self.events.setdefault(name, []).append((start, stop, value))

    @staticmethod
    def _accumulate(diff: np.ndarray, start: np.ndarray, stop: np.ndarray, v: np.ndarray | None) -> None:
        size = len(diff)
        if v is None:
            diff += np.bincount(start, minlength=size)  # (int64 already: no copy)
            diff -= np.bincount(stop, minlength=size)
        else:
            np.add.at(diff, start, v)
            np.add.at(diff, stop, -v)

    def settle(self, name: str) -> None:
        """Materialise a statistic now if its events are already in its difference array.

        Its result is smaller than the difference array (int32 counts, no days ahead),
        so a caller done adding a statistic's events settles it before the next one's.
        """
        if name in self.diffs:
            self.settled[name] = self._result(name)

    def result(self, name: str) -> np.ndarray:
        """The ``rows x days`` sums of a statistic (int32 for counts that fit); keeps its tail."""
        out = self.settled.pop(name, None)
        return self._result(name) if out is None else out

    def _result(self, name: str) -> np.ndarray:
        size = self.nrows * self.width
        diff = self.diffs.pop(name, None)
        if diff is None:
            diff = np.zeros(size, dtype=np.int64)
        for start, stop, v in self.events.pop(name, []):
            self._accumulate(diff, start, stop, v)
        diff2 = diff.reshape(self.nrows, self.width)
        head = self.heads.pop(name, None)
        if head is not None:
            diff2[:, : head.shape[1]] += head
        arr = np.cumsum(diff2[:, : self.ndays], axis=1)
        if self.ahead:
            tail = diff2[:, self.ndays:].copy()  # the value before the next day, then its differences
            if self.ndays:
                tail[:, 0] += arr[:, -1]
            if name not in _SUM_STATS and (tail.size == 0 or max(tail.max(), -tail.min()) < 2**31):
                tail = tail.astype(np.int32)  # (counts: half the carried memory)
            self.tails[name] = tail
        del diff, diff2
        if name not in _SUM_STATS and (arr.size == 0 or arr.max() < 2**31):
            return arr.astype(np.int32)
        return arr


@dataclass
class _Carry:
    """What :class:`StoreScoreSweep` carries from one day range to the next: the events read so far.

    ``heads`` holds, per statistic, one row per store: the value on the day before
    ``next_day`` and the differences of the next ``window_days + 1`` days (the stops of
    the events read). ``pair_keys`` and ``pair_head`` hold the same for the rolling
    order counts of the (store, category) pairs that still have some (sorted keys
    ``store * n_categories + category``).
    """

    next_day: int
    heads: dict[str, np.ndarray]
    pair_keys: np.ndarray
    pair_head: np.ndarray


# --------------------------------------------------------------------------- public: per request
def store_scores_for_requests(
    tables: Mapping[str, pd.DataFrame],
    requests: pd.DataFrame,
    config: ScoreConfig | None = None,
    *,
    validate_tables: bool = True,
) -> pd.DataFrame:
    """The published store score of each request's store on the request day.

    A request at time t reads the history row D = floor(t) in the configured time zone
    (what was known before D 00:00; its own day's earlier events do not count).

    Parameters
    ----------
    tables : dict of DataFrame
        Validated tables.
    requests : DataFrame
        ``requested_at`` and either ``store_id`` or ``order_id`` (mapped through orders).
    config : ScoreConfig, optional
    validate_tables : bool, default True
        Tables that are not :func:`refundguard.validate` output are validated (strict)
        first; ``False`` means "validated already" (dtypes still checked:
        :func:`refundguard.tables.canonical_tables`).

    Returns
    -------
    DataFrame
        Aligned with ``requests`` (same index), columns ``score_day`` (UTC instant of the
        day's 00:00), ``score``, ``product``, ``logistics``, ``service``, ``category``,
        ``n_orders``, ``provisional`` and ``score_missing`` (no score: no event in the
        window or nothing assessed). A store without any event in the window has
        ``n_orders`` 0 and ``provisional`` true when ``min_orders`` > 0.
    """
    tables = canonical_tables(tables, validate_tables)
    cfg = _check_config(config, "store_scores_for_requests")
    if not isinstance(requests, pd.DataFrame) or "requested_at" not in requests.columns:
        raise SchemaError("requests need a 'requested_at' column", table="requests", column="requested_at", rule="required")
    if "store_id" in requests.columns:
        store = _str_values(requests["store_id"])
    elif "order_id" in requests.columns:
        orders = _require(tables, "orders", ("order_id", "store_id"))
        paid = _ns(orders, "paid_at", "orders") if "paid_at" in orders.columns else np.zeros(len(orders), dtype=np.int64)
        rows = _order_rows(orders, paid, _arrow_str(requests["order_id"]), [("requests", len(requests))], NAT, NEVER)
        store = pd.Series(_arrow_str(orders["store_id"]).take(pa.array(rows)).to_pylist(), index=requests.index, dtype="str")
    else:
        raise SchemaError("requests need 'store_id' or 'order_id'", table="requests", column="store_id", rule="required")
    t = _ns(requests, "requested_at", "requests")
    if (t == NAT).any():
        raise SchemaError("requests.requested_at has nulls", table="requests", column="requested_at", rule="required", n_bad=int((t == NAT).sum()))
    tz = cfg.timezone
    day = day_index(t, tz)
    cols = ["score", "product", "logistics", "service", "category", "n_orders", "provisional"]
    out = pd.DataFrame(index=requests.index)
    out["score_day"] = pd.DatetimeIndex(day_start_ns(day, tz).astype("datetime64[ns]"), tz="UTC")
    if len(requests) == 0:
        for c in cols:
            out[c] = pd.Series([], dtype="float64")
        out["score_missing"] = pd.Series([], dtype=bool)
        return out
    day_naive = pd.Series((day * NS_PER_DAY).astype("datetime64[ns]"))
    pairs = pd.DataFrame({"store_id": store.to_numpy(), "day": day_naive.to_numpy()})
    hist = store_score_history(tables, day_naive.min(), day_naive.max(), cfg, pairs=pairs.drop_duplicates())
    hist_day = day_index(np.asarray(hist["as_of"].dt.as_unit("ns").array.asi8, dtype=np.int64), tz)
    key_h = pd.MultiIndex.from_arrays([hist["store_id"].to_numpy(), hist_day])
    key_r = pd.MultiIndex.from_arrays([store.to_numpy(), day])
    pos = key_h.get_indexer(key_r)
    found = pos >= 0
    safe = np.where(found, pos, 0)
    for c in ("score", "product", "logistics", "service"):
        v = hist[c].to_numpy(dtype="float64")[safe] if len(hist) else np.zeros(len(pos))
        out[c] = np.where(found, v, np.nan)
    cat = hist["category"].to_numpy(dtype=object)[safe] if len(hist) else np.zeros(len(pos), dtype=object)
    out["category"] = pd.array(np.where(found, cat, None), dtype="str")
    n_o = hist["n_orders"].to_numpy()[safe] if len(hist) else np.zeros(len(pos), dtype=np.int32)
    out["n_orders"] = np.where(found, n_o, 0).astype(np.int32)
    out["provisional"] = out["n_orders"].to_numpy() < cfg.min_orders
    out["score_missing"] = out["score"].isna().to_numpy()
    return out


# --------------------------------------------------------------------------- integer-coded events
@dataclass(frozen=True)
class CodedStoreEvents:
    """The store score's inputs as integer codes and int64 instants (the batch engine's form).

    Only the columns the seven indicators read are kept; stores are codes into
    ``store_ids`` (refunds and reviews carry their order's store), categories are
    codes into the alphabetical ``categories``. Instants are int64 UTC ns (``NAT``
    for missing). :func:`coded_store_scores` reads these arrays directly, so a batch
    job joins nothing by string.

    Attributes
    ----------
    store_ids, categories
        Object arrays of the store ids and the sorted category levels.
    o_store, o_category, o_paid, o_ship_by, o_shipped, o_delivered
        Orders.
    r_store, r_requested, r_resolved, r_escalation_known, r_reason, r_escalated
        Refunds (``r_reason``: codes into :data:`refundguard.tables.REASONS`;
        ``r_escalation_known``: ``escalated_at`` if given, else ``resolved_at``).
    v_store, v_created, v_rating
        Reviews.
    s_store, s_started, s_first_response
        Service chats.
    first_refund_ns
        The first ``requested_at`` of all refunds (``NAT`` when none).
    """

    store_ids: np.ndarray
    categories: np.ndarray
    o_store: np.ndarray
    o_category: np.ndarray
    o_paid: np.ndarray
    o_ship_by: np.ndarray
    o_shipped: np.ndarray
    o_delivered: np.ndarray
    r_store: np.ndarray
    r_requested: np.ndarray
    r_resolved: np.ndarray
    r_escalation_known: np.ndarray
    r_reason: np.ndarray
    r_escalated: np.ndarray
    v_store: np.ndarray
    v_created: np.ndarray
    v_rating: np.ndarray
    s_store: np.ndarray
    s_started: np.ndarray
    s_first_response: np.ndarray
    first_refund_ns: int


def _coded_columns(table: str, ns: Mapping[str, np.ndarray], cols: Mapping[str, Any]) -> _Columns:
    """A :class:`_Columns` over arrays: instants given, other columns as Series built on first use."""
    out = _Columns(_LazyFrame(cols), table)
    out._ns.update(ns)
    return out


class _LazyFrame(dict):
    """``frame[col]`` for :class:`_Events.col`: a Series made from an array factory on first use."""

    def __getitem__(self, col: str) -> pd.Series:
        value = super().__getitem__(col)
        if callable(value):
            value = value()
            self[col] = value
        return value


def _rows(mask: np.ndarray) -> np.ndarray:
    """The rows where ``mask`` holds, as int32 when the table is that small."""
    rows = np.flatnonzero(mask)
    return rows.astype(np.int32) if len(mask) < 2**31 else rows


def _store_codes_of(codes: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``codes[rows]`` as int32 or int64 (store codes are non-negative integers)."""
    out = np.asarray(codes)[rows]
    return out if out.dtype in (np.int32, np.int64) else out.astype(np.int64)


def _coded_sources(ev: CodedStoreEvents, lo: int, hi: int, union_orders: bool = True) -> _Sources:
    """Every event source for anchors in ``[lo, hi)``, from codes (see :func:`_event_sources`)."""
    from refundguard.tables import REASONS

    def inside(ns: np.ndarray) -> np.ndarray:
        return (ns >= lo) & (ns < hi)  # NaT is int64 min: never inside

    orders = _coded_columns(
        "orders",
        {"paid_at": ev.o_paid, "ship_by": ev.o_ship_by, "shipped_at": ev.o_shipped, "delivered_at": ev.o_delivered},
        {},
    )
    refunds = _coded_columns(
        "refunds",
        {"requested_at": ev.r_requested, "resolved_at": ev.r_resolved, _ESCALATION_KNOWN: ev.r_escalation_known},
        {
            "reason": lambda: pd.Series(pd.Categorical.from_codes(np.asarray(ev.r_reason, dtype=np.int64), REASONS)),
            "escalated": lambda: pd.Series(np.asarray(ev.r_escalated, dtype=bool)),
        },
    )
    reviews = _coded_columns("reviews", {"created_at": ev.v_created},
                             {"rating": lambda: pd.Series(np.asarray(ev.v_rating, dtype=np.float64))})
    service = _coded_columns("service", {"started_at": ev.s_started},
                             {"first_response_s": lambda: pd.Series(np.asarray(ev.s_first_response, dtype=np.float64))})
    anchors = {src: inside(getattr(ev, {"paid": "o_paid", "ship_by": "o_ship_by", "delivered": "o_delivered"}[src]))
               for src in _ORDER_SOURCES}
    # rows and store codes stay 32-bit where they fit (a batch store block holds them while it computes)
    if union_orders:
        o_rows = _rows(anchors["paid"] | anchors["ship_by"] | anchors["delivered"])
        del anchors
        o_store = _store_codes_of(ev.o_store, o_rows)
        events = {src: _Events(orders, o_rows, _SOURCES[src][1], o_store) for src in _ORDER_SOURCES}
    else:
        events = {}
        for src in _ORDER_SOURCES:
            rows = _rows(anchors[src])
            events[src] = _Events(orders, rows, _SOURCES[src][1], _store_codes_of(ev.o_store, rows))
    rf = _rows(inside(ev.r_requested))
    events["refund"] = _Events(refunds, rf, "requested_at", _store_codes_of(ev.r_store, rf))
    rv = _rows(inside(ev.v_created))
    events["review"] = _Events(reviews, rv, "created_at", _store_codes_of(ev.v_store, rv))
    sv = _rows(inside(ev.s_started))
    events["chat"] = _Events(service, sv, "started_at", _store_codes_of(ev.s_store, sv))
    return _Sources(
        events=events,
        store_ids=np.asarray(ev.store_ids, dtype=object),
        orders=orders,
        refunds=refunds,
        order_categories=(np.asarray(ev.o_category), np.asarray(ev.categories, dtype=object)),
        first_refund_ns=int(ev.first_refund_ns),
    )


def coded_store_scores_as_of(events: CodedStoreEvents, as_of: Any, config: ScoreConfig | None = None) -> pd.DataFrame:
    """:func:`store_scores` for integer-coded events: the same rows, no string join.

    Parameters
    ----------
    events
        The integer-coded inputs (e.g. :func:`refundguard.sources.read_store_events`).
    as_of, config
        As in :func:`store_scores`.
    """
    cfg = _check_config(config, "coded_store_scores_as_of")
    hi = _as_of_ns(as_of, cfg.timezone, owner="coded_store_scores_as_of")
    lo = _window_start_ns(hi, cfg)
    w = _window_from_sources(_coded_sources(events, lo, hi, union_orders=False), hi)
    order = np.argsort(np.asarray(w.store_ids, dtype=str), kind="stable")
    n = len(order)
    return _score_frame(
        w.store_ids[order], np.full(n, hi, dtype=np.int64), np.zeros(n, dtype=np.int64), w.category[order],
        {k: v[order] for k, v in w.stats.items()}, np.full(n, w.refunds_known, dtype=bool), cfg,
    )


def coded_store_scores(
    events: CodedStoreEvents, store: np.ndarray, t: np.ndarray, config: ScoreConfig | None = None
) -> pd.DataFrame:
    """:func:`store_scores_for_requests` for requests and events given as integer codes.

    Parameters
    ----------
    events
        The integer-coded inputs.
    store
        Store code of each request (into ``events.store_ids``; -1 for a store
        without any event, which has no score).
    t
        ``requested_at`` of each request, int64 UTC ns.
    config : ScoreConfig, optional

    Returns
    -------
    DataFrame
        The columns of :func:`store_scores_for_requests` except ``score_day``:
        ``score, product, logistics, service, category, n_orders, provisional,
        score_missing``, one row per request (``RangeIndex``).
    """
    cfg = _check_config(config, "coded_store_scores")
    t = np.asarray(t, dtype=np.int64)
    if not len(t):
        return _request_rows(events, None, np.asarray(store, dtype=np.int64), t, 0, 0, cfg)
    day = day_index(t, cfg.timezone)
    d0, d1 = int(day.min()), int(day.max())
    lo, hi = _history_range(d0, d1, cfg)
    h = _history_from_sources(_coded_sources(events, lo, hi), d0, d1, cfg)
    return _request_rows(events, h, np.asarray(store, dtype=np.int64), day, d0, d1, cfg)


def _request_rows(events: CodedStoreEvents, h: _History | None, store: np.ndarray, day: np.ndarray, d0: int, d1: int,
                  cfg: ScoreConfig) -> pd.DataFrame:
    """The rows of :func:`coded_store_scores`: each request's (store, day) row of the history ``h`` of
    the days ``d0 .. d1`` (``None``: no request)."""
    cols = _request_columns(events, h, store, day, d0, d1, cfg)
    out = pd.DataFrame({c: cols[c] for c in ("score", "product", "logistics", "service")})
    levels = np.asarray([*(str(x) for x in events.categories), None], dtype=object)
    code = cols["category"]
    out["category"] = pd.array(levels[np.where(code >= 0, code, len(levels) - 1)], dtype="str")
    out["n_orders"] = cols["n_orders"]
    out["provisional"] = cols["provisional"]
    out["score_missing"] = out["score"].isna().to_numpy()
    return out


def _request_columns(events: CodedStoreEvents, h: _History | None, store: np.ndarray, day: np.ndarray, d0: int,
                     d1: int, cfg: ScoreConfig) -> dict[str, np.ndarray]:
    """:func:`_request_rows` as arrays: ``category`` as codes into ``events.categories`` (-1: none)."""
    n = len(day)
    out: dict[str, np.ndarray] = {c: np.full(n, np.nan) for c in ("score", "product", "logistics", "service")}
    out["category"] = np.full(n, -1, dtype=np.int32)
    out["n_orders"] = np.zeros(n, dtype=np.int32)
    if h is not None and n:
        ndays = d1 - d0 + 1
        nst = len(events.store_ids)
        wanted = np.zeros(nst * ndays + 1, dtype=bool)  # last slot: requests without a store code
        req_key = np.where(store >= 0, store * ndays + (day - d0), nst * ndays)
        wanted[req_key] = True
        keep = wanted[h.st_idx.astype(np.int64) * ndays + h.day_idx]
        day_start = day_start_ns(np.arange(d0, d1 + 1, dtype=np.int64), cfg.timezone)
        rows = _score_frame(
            h.st_idx, day_start[h.day_idx], h.day_idx, h.category, h.stats, h.refunds_known[h.day_idx], cfg,
            keep=keep, lean=True,
        )
        sel = np.flatnonzero(keep)
        row_of = np.full(nst * ndays + 1, -1, dtype=np.int64)
        row_of[h.st_idx[sel].astype(np.int64) * ndays + h.day_idx[sel]] = np.arange(len(sel))
        pos = row_of[req_key]
        found = pos >= 0
        safe = np.where(found, pos, 0)
        if len(sel):
            for c in ("score", "product", "logistics", "service"):
                out[c] = np.where(found, rows[c][safe], np.nan)
            out["category"] = np.where(found, rows["category"][safe], -1).astype(np.int32)
            out["n_orders"] = np.where(found, rows["n_orders"][safe], 0).astype(np.int32)
    out["provisional"] = out["n_orders"] < cfg.min_orders
    return out


class StoreScoreSweep:
    """:func:`coded_store_scores` for requests given in time order, reading each event once.

    Each call scores requests no earlier than the days of the previous call. It reads
    only the events anchored since the previous call's last day and carries the rest
    (:class:`_Carry`: per store, the statistics on that day and the stops of the events
    that still count; per (store, category) pair, the same for the order counts). A
    single :func:`coded_store_scores` call per day range instead reads the window's
    ``window_days`` before the range again for every range. The rows are the same
    bytes either way (integer sums).

    Parameters
    ----------
    events
        The integer-coded inputs.
    config : ScoreConfig, optional

    Notes
    -----
    The carried state is one integer per statistic, store and day of the window ahead
    (``len(events.store_ids) * (window_days + 2)`` per statistic: int32 for counts,
    int64 for sums), whatever the number of events. Not thread-safe: one sweep per
    thread.
    """

    def __init__(self, events: CodedStoreEvents, config: ScoreConfig | None = None) -> None:
        self.events = events
        self.config = _check_config(config, "StoreScoreSweep")
        self._carry: _Carry | None = None

    def scores(self, store: np.ndarray, t: np.ndarray) -> pd.DataFrame:
        """The rows of :func:`coded_store_scores` for these requests.

        Parameters
        ----------
        store, t
            As in :func:`coded_store_scores`; no request before the local day after
            the previous call's last request (the days between two calls are
            computed by the second, or skipped when the window cannot span them).

        Raises
        ------
        ConfigError
            A request is on a day before the end of the previous call's days.
        """
        return _request_rows(self.events, *self._advance(store, t), self.config)

    def columns(self, store: np.ndarray, t: np.ndarray) -> dict[str, np.ndarray]:
        """:meth:`scores` as arrays, no string made: ``score``, ``product``, ``logistics``,
        ``service``, ``n_orders``, ``provisional`` and ``category`` (codes into
        ``events.categories``, -1 for none)."""
        return _request_columns(self.events, *self._advance(store, t), self.config)

    def _advance(self, store: np.ndarray, t: np.ndarray
                 ) -> tuple[_History | None, np.ndarray, np.ndarray, int, int]:
        """The history of the requests' days (read and carried), with the requests' stores and days."""
        cfg = self.config
        t = np.asarray(t, dtype=np.int64)
        store = np.asarray(store, dtype=np.int64)
        if not len(t):
            return None, store, t, 0, 0
        day = day_index(t, cfg.timezone)
        d0, d1 = int(day.min()), int(day.max())
        carry, wd = self._carry, cfg.window_days
        if carry is not None and d0 < carry.next_day:
            raise ConfigError.invalid("StoreScoreSweep.scores", "t", f"requests on local day {carry.next_day} or later "
                                      "(the sweep's days so far)", f"a request on day {d0}")
        if carry is None or d0 - carry.next_day > wd + 1:  # start (again): read the window before d0
            carry = _Carry(next_day=d0, heads={}, pair_keys=np.empty(0, dtype=np.int64),
                           pair_head=np.zeros((0, wd + 2), dtype=np.int64))
            lo, hi = _history_range(d0, d1, cfg)
        else:  # the days between (if any) are computed too: their events must be carried
            d0 = carry.next_day
            lo = int(day_start_ns(np.array([d0]), cfg.timezone)[0])
            hi = _history_range(d0, d1, cfg)[1]
        self._carry = None  # (a failure below leaves no half-updated state behind)
        h = _history_from_sources(_coded_sources(self.events, lo, hi, union_orders=False), d0, d1, cfg, carry)
        self._carry = carry
        return h, store, day, d0, d1


# --------------------------------------------------------------------------- calibration
#: Share of peers a value must beat to earn 0, 1, 2, 3, 4 and 5 points in calibrated bands.
CALIBRATION_QUANTILES: tuple[float, ...] = (0.02, 0.05, 0.10, 0.25, 0.50, 0.85)


def calibrate_bands(
    tables: Mapping[str, pd.DataFrame],
    start: Any,
    end: Any,
    config: ScoreConfig | None = None,
    *,
    quantiles: Sequence[float] = CALIBRATION_QUANTILES,
    min_stores: int = 30,
    target_excellent: float | None = None,
    gate: float = DEFAULT_GATE,
    validate_tables: bool = True,
) -> ScoreConfig:
    """Derive band anchors from a reference period's percentiles.

    Scores are computed at the window ends ``start + k * window_days`` within
    ``[start, end]``; the shrunk values of the assessed stores are pooled per
    indicator, and the anchor for N points is the value that beats
    ``quantiles[N]`` of them (per category with at least ``min_stores`` values, and
    over all stores for ``"*"``). Anchors are then made strictly monotone from the
    best end down. An indicator with no assessed value keeps its current bands.

    With ``target_excellent``, the quantiles are tightened or loosened together
    (``q -> 1 - (1 - q) ** alpha``, one strictness ``alpha`` found by bisection) so
    that the share of established stores scoring at or above ``gate`` over the
    reference period (:func:`excellent_share`) comes as close to the target as the
    data allows; read the share reached with :func:`excellent_share`.

    Parameters
    ----------
    tables : dict of DataFrame
    start, end : date-like
        The reference period (at least one window long).
    config : ScoreConfig, optional
        Everything except ``bands`` is kept from it.
    quantiles : six increasing floats in [0, 1]
    min_stores : int
        Minimum number of values for a category to get its own bands.
    target_excellent : float in (0, 1), optional
        Share of established store-days that should score at or above ``gate``.
    gate : float
        The excellent score (default :data:`~refundguard.config.DEFAULT_GATE`).
    validate_tables : bool, default True
        Tables that are not :func:`refundguard.validate` output are validated (strict)
        first; ``False`` means "validated already" (dtypes still checked:
        :func:`refundguard.tables.canonical_tables`).

    Returns
    -------
    ScoreConfig
    """
    tables = canonical_tables(tables, validate_tables)
    owner = "calibrate_bands"
    cfg = _check_config(config, owner)
    q = [float(x) for x in quantiles]
    if len(q) != 6 or any(not 0 <= x <= 1 for x in q) or any(q[i + 1] <= q[i] for i in range(5)):
        raise ConfigError.invalid(owner, "quantiles", "six strictly increasing floats in [0, 1]", quantiles)
    if isinstance(min_stores, bool) or not isinstance(min_stores, int) or min_stores < 1:
        raise ConfigError.invalid(owner, "min_stores", "an int >= 1", min_stores)
    if target_excellent is not None and not (is_finite_real(target_excellent) and 0 < target_excellent < 1):
        raise ConfigError.invalid(owner, "target_excellent", "None or a float in (0, 1)", target_excellent)
    period = _ReferencePeriod.of(start, end, cfg, owner)
    snap = pd.concat([store_scores(tables, pd.Timestamp(int(h), tz="UTC"), cfg) for h in period.window_ends],
                     ignore_index=True)

    def config_for(qs: Sequence[float]) -> ScoreConfig:
        return cfg.replace(bands=_bands_from(snap, qs, min_stores, cfg))

    if target_excellent is None:
        return config_for(q)
    history = _history_stats(tables, period.first_day, period.last_day, cfg)

    def reached(log_alpha: float) -> tuple[float, ScoreConfig]:
        alpha = math.exp(log_alpha)
        c = config_for([1.0 - (1.0 - x) ** alpha for x in q])
        return _established_share(_history_frame(history, c, period.first_day), gate).share, c

    lo, hi = math.log(1 / 256), math.log(256)  # loosest (nearly everyone excellent) .. strictest
    best: tuple[float, ScoreConfig] | None = None
    for _ in range(40):
        mid = (lo + hi) / 2
        share, c = reached(mid)
        if best is None or abs(share - target_excellent) < abs(best[0] - target_excellent):
            best = (share, c)
        if share > target_excellent:
            lo = mid  # too many excellent stores: stricter
        else:
            hi = mid
    assert best is not None
    return best[1]


@dataclass(frozen=True)
class _ReferencePeriod:
    """The window ends and the full-window days of a reference period ``[start, end]``."""

    window_ends: np.ndarray
    first_day: int
    last_day: int

    @classmethod
    def of(cls, start: Any, end: Any, cfg: ScoreConfig, owner: str) -> _ReferencePeriod:
        s_ns = _as_of_ns(start, cfg.timezone, "start", owner)
        e_ns = _as_of_ns(end, cfg.timezone, "end", owner)
        first_end = s_ns + cfg.window_days * NS_PER_DAY
        if first_end > e_ns:
            raise ConfigError.invalid(owner, "end", f"at least window_days={cfg.window_days} days after start ({start!r})",
                                      end)
        ends = np.arange(first_end, e_ns + 1, cfg.window_days * NS_PER_DAY, dtype=np.int64)
        days = day_index(np.array([s_ns, e_ns], dtype=np.int64), cfg.timezone)
        return cls(ends, int(days[0]) + cfg.window_days, int(days[1]))


def _bands_from(snap: pd.DataFrame, q: Sequence[float], min_stores: int, cfg: ScoreConfig) -> dict[str, Any]:
    """Band anchors from pooled shrunk values (``snap``: score rows) at the goodness quantiles ``q``."""
    new_bands: dict[str, dict[str, list[float]]] = {}
    for ind in INDICATORS:
        m = snap[f"{ind}_assessed"].to_numpy(dtype=bool)
        vals = snap.loc[m, f"{ind}_shrunk"].to_numpy(dtype="float64")
        cats = snap.loc[m, "category"]
        if len(vals) == 0:
            new_bands[ind] = {c: list(a) for c, a in cfg.bands[ind].items()}
            continue
        up = HIGHER_IS_BETTER[ind]
        per = {"*": list(_anchors_from(vals, q, up, ind))}
        for c, grp in pd.Series(vals).groupby(cats.to_numpy(), sort=True):
            if isinstance(c, str) and c != "*" and len(grp) >= min_stores:
                per[c] = list(_anchors_from(grp.to_numpy(), q, up, ind))
        new_bands[ind] = per
    return new_bands


@dataclass(frozen=True)
class ExcellentShare:
    """How many established store-days score at or above the gate.

    Attributes
    ----------
    share
        ``excellent / established`` (0.0 when no store-day is established).
    excellent, established
        Store-days scoring at or above the gate; store-days with a published,
        non-provisional score (the stores the store gate can apply to).
    gate
        The gate counted.
    """

    share: float
    excellent: int
    established: int
    gate: float


def _established_share(scores: pd.DataFrame, gate: float) -> ExcellentShare:
    established = scores["score"].notna().to_numpy() & ~scores["provisional"].to_numpy(dtype=bool)
    excellent = established & (scores["score"].to_numpy(dtype="float64", na_value=np.nan) >= gate)
    n_est, n_exc = int(established.sum()), int(excellent.sum())
    return ExcellentShare(n_exc / n_est if n_est else 0.0, n_exc, n_est, float(gate))


def excellent_share(
    tables: Mapping[str, pd.DataFrame],
    start: Any,
    end: Any,
    config: ScoreConfig | None = None,
    *,
    gate: float = DEFAULT_GATE,
) -> ExcellentShare:
    """Share of established store-days scoring at or above ``gate`` over a reference period.

    The store-days are the daily history rows (:func:`store_score_history`) of every
    day whose whole window lies in ``[start, end]``: days ``start + window_days`` to
    ``end``. Established means a published, non-provisional score (what the store
    gate applies to). This is the share :func:`calibrate_bands` aims at with
    ``target_excellent``.

    Returns
    -------
    ExcellentShare
    """
    cfg = _check_config(config, "excellent_share")
    period = _ReferencePeriod.of(start, end, cfg, "excellent_share")
    history = _history_stats(tables, period.first_day, period.last_day, cfg)
    return _established_share(_history_frame(history, cfg, period.first_day), gate)


def _anchors_from(vals: np.ndarray, q: Sequence[float], higher: bool, ind: str) -> tuple[float, ...]:
    """Six strictly monotone anchors at the goodness quantiles ``q``, within the indicator's range."""
    probs = np.asarray(q) if higher else 1.0 - np.asarray(q)
    upper = 1.0 if _SCALE[ind] == 1.0 else np.inf
    a = np.clip(np.quantile(vals, probs), 0.0, upper)
    span = max(float(np.max(vals) - np.min(vals)), abs(float(np.median(vals))), 1e-6)
    eps = span * 1e-6
    g = a.copy() if higher else -a  # "goodness": must increase strictly with points
    g_lo = 0.0 if higher else -upper
    for k in range(4, -1, -1):  # from the 5-point anchor down
        g[k] = min(g[k], g[k + 1] - eps)
    if g[0] < g_lo:  # no room below: push up from the bottom instead
        g[0] = g_lo
        for k in range(1, 6):
            g[k] = max(g[k], g[k - 1] + eps)
    out = g if higher else -g
    return tuple(float(x) for x in out)


# --------------------------------------------------------------------------- merchant view
@dataclass(frozen=True)
class StoreExplanation:
    """The merchant view of one store's score.

    Attributes
    ----------
    store_id, as_of, category
        The store, the end of the window, and the category whose bands apply.
    score, score_raw, product, logistics, service
        Published values (and the unrounded total ``score_raw``).
    n_orders, provisional
        Orders in the window and whether the score is provisional.
    indicators : DataFrame
        One row per indicator: ``indicator, dimension, better, count, min_count,
        assessed, reason, raw, shrunk, category_mean, points, weight,
        effective_weight`` and ``needed_0`` .. ``needed_5``: the (shrunk) value that
        earns 0..5 points, and ``raw_needed_0..5``: the raw value that would earn
        them with the current count (NaN when unreachable).
    """

    store_id: str
    as_of: pd.Timestamp
    category: str | None
    score: float
    score_raw: float
    product: float
    logistics: float
    service: float
    n_orders: int
    provisional: bool
    window_days: int
    indicators: pd.DataFrame

    def to_text(self) -> str:
        """A plain-text rendering for the command line."""
        lines = [
            f"store {self.store_id}  as of {self.as_of}  window {self.window_days} days  category {self.category or '*'}",
            f"score {_fmt(self.score)} (unrounded {self.score_raw:.6f})  product {_fmt(self.product)}  "
            f"logistics {_fmt(self.logistics)}  service {_fmt(self.service)}  orders {self.n_orders}"
            + ("  PROVISIONAL" if self.provisional else ""),
            "",
            f"{'indicator':24s}{'value':>11s}{'shrunk':>11s}{'points':>8s}{'weight':>8s}{'eff.w':>8s}   value needed for 1/2/3/4/5 points",
        ]
        for r in self.indicators.itertuples(index=False):
            unit = "h" if r.indicator.endswith("hours") else ""
            fmtv = (lambda v: "-" if pd.isna(v) else (f"{v:.2f}{unit}" if unit else f"{v:.2%}"))
            needed = "/".join(fmtv(getattr(r, f"needed_{k}")) for k in range(1, 6))
            if r.assessed:
                lines.append(
                    f"{r.indicator:24s}{fmtv(r.raw):>11s}{fmtv(r.shrunk):>11s}{r.points:8.2f}{r.weight:8.2f}{r.effective_weight:8.3f}   {needed}"
                )
            else:
                lines.append(f"{r.indicator:24s}{fmtv(r.raw):>11s}{'':>11s}{'-':>8s}{r.weight:8.2f}{0.0:8.3f}   not assessed: {r.reason}")
        return "\n".join(lines)


def _fmt(v: float) -> str:
    return "null" if v is None or pd.isna(v) else f"{v:.2f}"


def explain_store(
    tables: Mapping[str, pd.DataFrame], store_id: str, as_of: Any, config: ScoreConfig | None = None, *,
    validate_tables: bool = True,
) -> StoreExplanation:
    """Explain one store's score: values, points, weights, values needed, what is not assessed.

    Parameters
    ----------
    tables : dict of DataFrame
    store_id : str
    as_of : date-like
    config : ScoreConfig, optional
    validate_tables : bool, default True
        Tables that are not :func:`refundguard.validate` output are validated (strict)
        first; ``False`` means "validated already" (dtypes still checked:
        :func:`refundguard.tables.canonical_tables`).

    Returns
    -------
    StoreExplanation
        ``.to_text()`` renders it for the CLI.

    Raises
    ------
    DataError
        When the store has no event in the window.
    """
    tables = canonical_tables(tables, validate_tables)
    cfg = _check_config(config, "explain_store")
    hi = _as_of_ns(as_of, cfg.timezone, "as_of", "explain_store")
    lo = _window_start_ns(hi, cfg)
    df = _scores_for_window(tables, lo, hi, cfg, details=True)
    row = df.loc[df["store_id"] == str(store_id)]
    if row.empty:
        raise DataError(
            f"store {store_id!r} has no order, refund, review or chat in the window "
            f"[{pd.Timestamp(lo, tz='UTC')}, {pd.Timestamp(hi, tz='UTC')})",
            detail={"store_id": store_id, "as_of": str(pd.Timestamp(hi, tz="UTC"))},
        )
    r = row.iloc[0]
    cat = None if pd.isna(r["category"]) else str(r["category"])
    # effective weights
    dim_w = {}
    for dim in DIMENSIONS:
        inds = [i for i in INDICATORS if INDICATOR_DIMENSION[i] == dim]
        dim_w[dim] = sum(cfg.indicator_weights[i] for i in inds if bool(r[f"{i}_assessed"]))
    dims_on = [d for d in DIMENSIONS if dim_w[d] > 0]
    tot_w = sum(cfg.dimension_weights[d] for d in dims_on)
    recs = []
    for ind in INDICATORS:
        dim = INDICATOR_DIMENSION[ind]
        assessed = bool(r[f"{ind}_assessed"])
        count = int(r[f"{ind}_n"])
        if not bool(r[f"{ind}_available"]):
            reason = "no refund data known before as_of (refunds table has no earlier request)"
        elif count < cfg.min_counts[ind]:
            what = {
                "quality_refund_rate": "orders",
                "good_review_rate": "reviews",
                "pickup_48h_rate": "orders due for pickup",
                "delivery_hours": "deliveries",
                "refund_handling_hours": "refunds",
                "dispute_rate": "orders",
                "response_3min_rate": "chats",
            }[ind]
            reason = f"{count} {what} in window < minimum {cfg.min_counts[ind]}"
        else:
            reason = ""
        eff = 0.0
        if assessed and tot_w > 0:
            eff = cfg.dimension_weights[dim] / tot_w * cfg.indicator_weights[ind] / dim_w[dim]
        anchors = cfg.anchors(ind, cat)
        k = cfg.pseudo_counts[ind]
        prior = float(r[f"{ind}_prior"])
        rec: dict[str, Any] = {
            "indicator": ind,
            "dimension": dim,
            "better": "higher" if HIGHER_IS_BETTER[ind] else "lower",
            "count": count,
            "min_count": cfg.min_counts[ind],
            "assessed": assessed,
            "reason": reason,
            "raw": float(r[f"{ind}_raw"]),
            "shrunk": float(r[f"{ind}_shrunk"]),
            "category_mean": prior,
            "points": float(r[f"{ind}_points"]),
            "weight": cfg.indicator_weights[ind],
            "effective_weight": eff,
        }
        upper = 1.0 if _SCALE[ind] == 1.0 else np.inf
        for p, a in enumerate(anchors):
            rec[f"needed_{p}"] = float(a)
            rn = np.nan
            if count > 0 and np.isfinite(prior):
                rn = (a * (count + k) - k * prior) / count
                if not (0.0 <= rn <= upper):
                    rn = np.nan
            rec[f"raw_needed_{p}"] = rn
        recs.append(rec)
    return StoreExplanation(
        store_id=str(store_id),
        as_of=pd.Timestamp(hi, tz="UTC"),
        category=cat,
        score=float(r["score"]),
        score_raw=float(r["score_raw"]),
        product=float(r["product"]),
        logistics=float(r["logistics"]),
        service=float(r["service"]),
        n_orders=int(r["n_orders"]),
        provisional=bool(r["provisional"]),
        window_days=cfg.window_days,
        indicators=pd.DataFrame(recs),
    )


# --------------------------------------------------------------------------- summary
@dataclass(frozen=True)
class StoreScoreSummary:
    """Headline figures of a store-score frame, for one day (the last ``as_of`` of a history).

    Attributes
    ----------
    rows, stores_total, days
        Rows of the whole frame (store-days for a history), distinct stores and
        distinct ``as_of`` days in it.
    history
        Whether the frame is a daily history (the other figures describe its last day).
    stores, scored, gated, provisional
        Stores on the summarised day; those with a published score; those scored at
        or above ``gate``; those whose score is provisional.
    gate
        The store gate the ``gated`` count uses.
    median_score
        Median published score of the day (NaN when no store is scored).
    window_days
        Length of the score window in days.
    not_assessed
        Per indicator (in :data:`~refundguard.config.INDICATORS` order), the share of
        the day's stores for which that indicator is not assessed.
    excellent
        For a history: established store-days (published, non-provisional score) at or
        above the gate over every day of the frame (:class:`ExcellentShare`); ``None``
        for one day.
    """

    rows: int
    stores_total: int
    days: int
    history: bool
    stores: int
    scored: int
    gated: int
    provisional: int
    gate: float
    median_score: float
    window_days: int
    not_assessed: Mapping[str, float]
    excellent: ExcellentShare | None = None

    @property
    def gated_share(self) -> float:
        """Share of the scored stores at or above the gate (0.0 when none is scored)."""
        return self.gated / self.scored if self.scored else 0.0

    def to_text(self) -> str:
        """The summary as printed by ``refundguard store-scores``."""
        lines = []
        if self.history:
            lines.append(f"{self.rows:,d} store-days, {self.stores_total:,d} stores, {self.days:,d} days")
            if self.excellent is not None:
                e = self.excellent
                lines.append(f"established store-days at {e.gate:.2f} or more over the period: {e.share:.1%} "
                             f"({e.excellent:,d} of {e.established:,d})")
        when = " (last day)" if self.history else ""
        lines.append(
            f"stores{when}: {self.stores:,d}  scored: {self.scored:,d}  "
            f"share >= {self.gate:.2f}: {self.gated_share:.1%}  "
            f"provisional: {self.provisional:,d}  window: {self.window_days} days"
        )
        if self.stores:
            lines.append("not assessed: " + ", ".join(f"{ind} {share:.0%}" for ind, share in self.not_assessed.items()))
        return "\n".join(lines)


def summarize_store_scores(
    scores: pd.DataFrame,
    config: ScoreConfig | None = None,
    *,
    gate: float = DEFAULT_GATE,
    history: bool = False,
) -> StoreScoreSummary:
    """Summarise the output of :func:`store_scores` or :func:`store_score_history`.

    Parameters
    ----------
    scores
        Rows with the :data:`OUTPUT_COLUMNS` (at least ``store_id``, ``as_of``,
        ``score``, ``provisional`` and ``<indicator>_assessed``).
    config
        The configuration the scores were computed with (for the window length);
        default :class:`~refundguard.config.ScoreConfig`.
    gate
        Store gate counted in :attr:`StoreScoreSummary.gated` (default
        :data:`~refundguard.config.DEFAULT_GATE`).
    history
        ``scores`` is a daily history: the store figures describe its last day.

    Returns
    -------
    StoreScoreSummary
    """
    cfg = config if config is not None else ScoreConfig()
    day = scores[scores["as_of"] == scores["as_of"].max()] if history and len(scores) else scores
    score = day["score"]
    scored = score.notna()
    n = len(day)
    return StoreScoreSummary(
        rows=len(scores),
        stores_total=int(scores["store_id"].nunique()),
        days=int(scores["as_of"].nunique()),
        history=history,
        stores=n,
        scored=int(scored.sum()),
        gated=int((score[scored] >= gate).sum()),
        provisional=int(day["provisional"].sum()),
        gate=float(gate),
        median_score=float(score.median()) if scored.any() else float("nan"),
        window_days=cfg.window_days,
        not_assessed={ind: (1.0 - float(day[f"{ind}_assessed"].mean())) if n else 0.0 for ind in INDICATORS},
        excellent=_established_share(scores, gate) if history else None,
    )
