"""The one rule for instants, days and missing times (private; every module uses it).

Representation
    An instant is an ``int`` (or an int64 array) of nanoseconds since the Unix
    epoch, UTC. :data:`NAT` (the int64 minimum) stands for a missing time and
    :data:`NEVER` (the int64 maximum) for "not yet / never", so that ``t < NEVER``
    and ``NAT < t`` hold for every real instant.

Rules (DESIGN.md sections 2 and 3)
    * **Data** (table columns, request fields, profile fields): tz-aware values
      are converted to UTC; naive values mean UTC. Text is read as ISO 8601 only.
    * **Request-time bounds** (``start``/``end`` on ``requested_at``, training
      slice ends, policy dates): the same rule; a bare date means its 00:00 UTC.
    * **Score days** (``as_of`` of a store score, the days of a score history,
      the ``as_of`` labels of a history table): a bare date, or any naive value,
      is wall-clock time in the score configuration's time zone (a date means its
      00:00 there); aware values are instants.

Days in a time zone are numbered from 1970-01-01 in that zone (:func:`day_index`);
:func:`day_start_ns` maps a day number back to the UTC instant of its 00:00.
"""

from __future__ import annotations

import math
import re
from datetime import date, datetime, timezone
from typing import Any

import numpy as np
import pandas as pd

from refundguard.errors import ConfigError, RequestError, SchemaError

__all__ = [
    "NS_PER_SECOND",
    "NS_PER_HOUR",
    "NS_PER_DAY",
    "NAT",
    "NEVER",
    "MIN_INSTANT_NS",
    "MAX_INSTANT_NS",
    "INSTANT_RANGE_TEXT",
    "series_ns",
    "column_ns",
    "instant_ns",
    "field_ns",
    "parameter_ns",
    "score_day_ns",
    "label_days",
    "date_ns",
    "day_index",
    "day_start_ns",
    "floor_day_ns",
    "window_start_ns",
    "utc_series",
    "distinct_ranks",
]

NS_PER_SECOND = 1_000_000_000
NS_PER_HOUR = 3_600 * NS_PER_SECOND
NS_PER_DAY = 24 * NS_PER_HOUR
#: A missing instant.
NAT = int(np.iinfo(np.int64).min)
#: "Not yet" / "never": later than every real instant.
NEVER = int(np.iinfo(np.int64).max)
#: Day number given to a missing instant by :func:`day_index` (after every real day, no overflow in +/- windows).
NO_DAY = NEVER // 4

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_EPOCH_DATE = date(1970, 1, 1)

#: The contract's range for data instants: [1970-01-01, 2200-01-01) UTC. Outside it an instant is a
#: ``range`` reject (and a ``RequestError`` online): no marketplace event is that old or that far
#: ahead, and inside it every difference of two instants fits int64 nanoseconds (292 years).
MIN_INSTANT_NS = 0
MAX_INSTANT_NS = (date(2200, 1, 1) - _EPOCH_DATE).days * NS_PER_DAY
INSTANT_RANGE_TEXT = "[1970-01-01, 2200-01-01) UTC"
_US = 1_000
_UNIT_NS = {"s": NS_PER_SECOND, "ms": 1_000_000, "us": 1_000, "ns": 1}
_ISO_START = re.compile(r"\s*[0-9]{4}")


class TimeValueError(ValueError):
    """A value is not an instant; callers turn it into their own library error."""


# --------------------------------------------------------------------------- columns
def series_ns(s: pd.Series) -> np.ndarray:
    """A column of instants as int64 UTC nanoseconds (NaT -> :data:`NAT`); naive means UTC.

    Timestamp dtypes are converted without parsing. Text (or objects) is parsed as
    ISO 8601 only; anything else raises :class:`TimeValueError` naming the first
    value that is not an instant.
    """
    dtype = s.dtype
    if isinstance(dtype, pd.DatetimeTZDtype):
        if str(dtype.tz) != "UTC":
            s = s.dt.tz_convert("UTC")
        if s.dtype.unit != "ns":
            s = s.dt.as_unit("ns")
        return np.asarray(s.array.asi8, dtype=np.int64)
    if pd.api.types.is_datetime64_dtype(dtype):
        if s.dt.unit != "ns":
            s = s.dt.as_unit("ns")
        return np.asarray(s.to_numpy(dtype="datetime64[ns]").view(np.int64), dtype=np.int64)
    if len(s) == 0:
        return np.empty(0, dtype=np.int64)
    if pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype):
        raise TimeValueError(f"numbers are not instants (dtype {dtype}); got e.g. {s.iloc[0]!r}")
    text = s.astype("str")
    words = text.notna().to_numpy() & ~text.str.match(_ISO_START.pattern).fillna(False).to_numpy(dtype=bool)
    if words.any():
        raise TimeValueError(f"not ISO 8601 instants, e.g. {text[words].iloc[0]!r}")
    try:
        parsed = pd.to_datetime(s, utc=True, format="ISO8601")
    except (ValueError, TypeError, OverflowError) as exc:
        raise TimeValueError(f"not ISO 8601 instants: {exc}") from None
    return series_ns(parsed)


def column_ns(s: pd.Series, column: str, table: str | None = None) -> np.ndarray:
    """:func:`series_ns` for a table column; a value that is not an instant is a ``SchemaError`` (rule ``type``)."""
    try:
        return series_ns(s)
    except TimeValueError as exc:
        where = f"{table}.{column}" if table else column
        raise SchemaError(f"Column {where!r} must hold timestamps (UTC, tz-aware or naive meaning UTC): {exc}.",
                          table=table, column=column, rule="type") from None


def utc_series(ns: np.ndarray, index: Any = None) -> pd.Series:
    """int64 UTC nanoseconds (``NAT`` for missing) as a ``datetime64[ns, UTC]`` Series."""
    arr = np.asarray(ns, dtype=np.int64)
    return pd.Series(pd.DatetimeIndex(arr.view("datetime64[ns]")).tz_localize("UTC"), index=index)


# --------------------------------------------------------------------------- scalars
def instant_ns(value: Any) -> int | None:
    """One instant as int UTC nanoseconds; ``None``, NaN and NaT give ``None``; naive means UTC.

    Plain Python for the online path (``datetime`` arithmetic, no pandas parsing for
    ``datetime`` and ``pandas.Timestamp``). Text is read as ISO 8601. Raises
    :class:`TimeValueError` for anything else (numbers, dates without a time are
    accepted as 00:00 UTC).
    """
    if value is None or value is pd.NaT:
        return None
    if isinstance(value, pd.Timestamp):
        try:
            return int(value.value)  # ns since the epoch; a naive wall clock reads as UTC
        except OverflowError:  # outside the ns range (pandas 3 keeps it in s/ms/us): exact, as a Python int
            return int(value.asm8.view("i8")) * _UNIT_NS[value.unit]
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            value = value.replace(tzinfo=timezone.utc)
        d = value - _EPOCH
        return (d.days * 86_400 + d.seconds) * NS_PER_SECOND + d.microseconds * _US
    if isinstance(value, date):
        return date_ns(value)
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, np.datetime64):
        if np.isnat(value):
            return None
        return int(value.astype("datetime64[ns]").astype(np.int64))
    if isinstance(value, str):
        return instant_ns(_parse_iso(value))
    raise TimeValueError(f"not an instant: {type(value).__name__} {value!r}")


def _parse_iso(text: str) -> pd.Timestamp:
    """ISO 8601 text as a Timestamp (aware when it carries an offset); nothing else is guessed.

    pandas reads the words "now" and "today" even under ``format="ISO8601"``; an ISO 8601
    date starts with its four-digit year, so anything else is refused first.
    """
    if not _ISO_START.match(text):
        raise TimeValueError(f"not an ISO 8601 date or instant: {text!r}")
    try:
        ts = pd.to_datetime(text, format="ISO8601")
    except (ValueError, TypeError, OverflowError):
        raise TimeValueError(f"not an ISO 8601 date or instant: {text!r}") from None
    if ts is pd.NaT:
        raise TimeValueError(f"not an ISO 8601 date or instant: {text!r}")
    return ts


def field_ns(value: Any, field: str, *, required: bool) -> int | None:
    """:func:`instant_ns` for one request or event field; a bad value is a ``RequestError`` naming it."""
    if isinstance(value, str) and not value.strip():
        ns = None  # blank text is a missing value, as in validate
    else:
        try:
            ns = instant_ns(value)
        except TimeValueError as exc:
            raise RequestError(f"The field {field!r} must be a timestamp (tz-aware, or naive meaning UTC); {exc}.",
                               field=field, value=value) from None
    if ns is None:
        if required:
            raise RequestError(f"The field {field!r} is required; got {value!r}.", field=field, value=value)
        return None
    if not MIN_INSTANT_NS <= ns < MAX_INSTANT_NS:
        raise RequestError(f"The field {field!r} must be in {INSTANT_RANGE_TEXT}; got {value!r}.",
                           field=field, value=value)
    return ns


def parameter_ns(value: Any, name: str, owner: str, *, optional: bool = False) -> int | None:
    """A request-time bound given as a parameter (``start``, ``end``, slice ends): a ``ConfigError`` when bad.

    ``None`` is allowed with ``optional=True``; dates mean 00:00 UTC and naive values mean UTC.
    """
    if value is None and optional:
        return None
    try:
        ns = instant_ns(value)
    except TimeValueError:
        ns = None
    if ns is None:
        what = "a date or timestamp" + (" or None" if optional else "")
        raise ConfigError.invalid(owner, name, what, value)
    # data instants lie in [MIN_INSTANT_NS, MAX_INSTANT_NS): a bound beyond them selects exactly what the
    # range's end does, and clamping keeps it an int64 ("--to 9999-12-31" means "everything")
    return min(max(ns, MIN_INSTANT_NS), MAX_INSTANT_NS)


def date_ns(d: date) -> int:
    """00:00 UTC of a calendar date, in ns."""
    return (d - _EPOCH_DATE).days * NS_PER_DAY


def _localize(ts: pd.Timestamp, tz: str) -> pd.Timestamp:
    return ts.tz_localize(tz, nonexistent="shift_forward", ambiguous=False)


def score_day_ns(value: Any, tz: str) -> int:
    """A score ``as_of``: aware values are instants; dates and naive values are wall-clock time in ``tz``."""
    if isinstance(value, str):
        ts = _parse_iso(value)
    elif isinstance(value, (pd.Timestamp, datetime, date, np.datetime64)):
        ts = pd.Timestamp(value)
    else:
        raise TimeValueError(f"not a date or timestamp: {value!r}")
    if ts is pd.NaT:
        raise TimeValueError(f"not a date or timestamp: {value!r}")
    if ts.tzinfo is None:
        ts = _localize(ts, tz)
    return int(ts.tz_convert("UTC").as_unit("ns").value)


def label_days(values: pd.Series, tz: str) -> np.ndarray:
    """Day numbers in ``tz`` of score-day labels (aware: converted; naive or dates: wall clock in ``tz``)."""
    s = pd.Series(values)
    if not pd.api.types.is_datetime64_any_dtype(s.dtype):
        try:
            s = pd.to_datetime(s, format="ISO8601")
        except (ValueError, TypeError, OverflowError) as exc:
            raise TimeValueError(f"not dates: {exc}") from None
    if isinstance(s.dtype, pd.DatetimeTZDtype):
        return day_index(series_ns(s), tz)
    return np.floor_divide(series_ns(s), NS_PER_DAY)


# --------------------------------------------------------------------------- days
def day_index(ns: np.ndarray, tz: str) -> np.ndarray:
    """Local calendar day number (days since 1970-01-01 in ``tz``); NaT -> :data:`NO_DAY`."""
    ns = np.asarray(ns, dtype=np.int64)
    nat = ns == NAT
    if tz == "UTC":
        local = ns
    else:
        idx = pd.DatetimeIndex(np.where(nat, 0, ns).astype("datetime64[ns]"), tz="UTC")
        local = np.asarray(idx.tz_convert(tz).tz_localize(None).asi8, dtype=np.int64)
    out = np.floor_divide(local, NS_PER_DAY)
    out[nat] = NO_DAY
    return out


def day_start_ns(days: np.ndarray, tz: str) -> np.ndarray:
    """UTC ns of 00:00 local time of each day number."""
    days = np.asarray(days, dtype=np.int64)
    if tz == "UTC":
        return days * NS_PER_DAY
    naive = pd.DatetimeIndex((days * NS_PER_DAY).astype("datetime64[ns]"))
    loc = naive.tz_localize(tz, nonexistent="shift_forward", ambiguous=False)
    return np.asarray(loc.tz_convert("UTC").asi8, dtype=np.int64)


def floor_day_ns(ns: np.ndarray, tz: str) -> np.ndarray:
    """UTC ns of 00:00 (in ``tz``) of the day of each instant."""
    ns = np.asarray(ns, dtype=np.int64)
    if tz == "UTC":
        return ns - np.mod(ns, NS_PER_DAY)
    return day_start_ns(day_index(ns, tz), tz)


def window_start_ns(hi_ns: int, days: int, tz: str) -> int:
    """``hi - days`` in calendar days of ``tz`` (wall clock kept across DST changes)."""
    if tz == "UTC":
        return hi_ns - days * NS_PER_DAY
    local = pd.Timestamp(hi_ns, tz="UTC").tz_convert(tz).tz_localize(None)
    lo = _localize(local - pd.Timedelta(days=days), tz)
    return int(lo.tz_convert("UTC").as_unit("ns").value)


def distinct_ranks(sorted_ns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct values of an ascending int64 array and each element's rank among them.

    Ranks are int64: element ``i`` equals ``distinct[rank[i]]``. One pass over a sorted
    array, instead of ``np.unique`` and a search of every element.
    """
    new = np.ones(len(sorted_ns), dtype=bool)
    new[1:] = sorted_ns[1:] != sorted_ns[:-1]
    return sorted_ns[new], np.cumsum(new, dtype=np.int64) - 1
