"""The data contract: load the four tables, validate them, set bad rows aside.

Four tables, ``orders``, ``refunds``, ``reviews`` and ``service`` (optional),
as pandas DataFrames or a folder of Parquet / CSV files (or one partitioned
Parquet folder per table). :func:`validate` checks every rule of the contract
(DESIGN.md section 2) and either raises :class:`~refundguard.errors.SchemaError`
(``mode="strict"``) or returns the clean tables together with a *rejects* table
(``mode="quarantine"``) so that clean + rejected = input for every table.

Validated tables have canonical dtypes: ids and strings ``str`` (NaN for null),
timestamps ``datetime64[ns, UTC]`` (NaT for null), amounts ``float64``, ratings
``int64``, ``escalated`` ``bool`` and ``is_abuse`` nullable ``boolean``. Optional
columns are always present after validation (``ship_by`` filled with
``paid_at + 48h``; ``device_id``/``address_id`` all-null when absent;
``escalated`` False and ``is_abuse`` null when absent), and an absent
``service`` table becomes an empty one. Extra columns are kept untouched.

:func:`canonical_tables` is the one coercion path of every public function that takes
tables: validated tables pass at the cost of a look at their dtypes, others are
validated strictly, so no computation ever runs on uncoerced values.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from refundguard._io import atomic_target
from refundguard._time import _ISO_START, INSTANT_RANGE_TEXT, MAX_INSTANT_NS, MIN_INSTANT_NS, NAT, series_ns
from refundguard.config import REFUND_KINDS
from refundguard.errors import ConfigError, RejectedRowsWarning, SchemaError

__all__ = [
    "TABLES",
    "REQUIRED_TABLES",
    "KINDS",
    "REASONS",
    "OUTCOMES",
    "REJECT_COLUMNS",
    "SCHEMAS",
    "MAX_AMOUNT",
    "load_tables",
    "validate",
    "summarize_rejects",
    "write_table",
    "require_columns",
    "empty_tables",
    "canonical_tables",
    "non_canonical_column",
]

TABLES: tuple[str, ...] = ("orders", "refunds", "reviews", "service")
REQUIRED_TABLES: tuple[str, ...] = ("orders", "refunds", "reviews")
KINDS: tuple[str, ...] = REFUND_KINDS
REASONS: tuple[str, ...] = (
    "not_received",
    "quality",
    "not_as_described",
    "damaged",
    "wrong_item",
    "changed_mind",
    "other",
)
OUTCOMES: tuple[str, ...] = ("refunded", "rejected", "withdrawn")
REJECT_COLUMNS: tuple[str, ...] = ("table", "row_index", "key", "column", "rule", "value", "detail")
KEY_COLUMN: dict[str, str] = {
    "orders": "order_id",
    "refunds": "refund_id",
    "reviews": "order_id",
    "service": "store_id",
}
DEFAULT_SHIP_BY = pd.Timedelta(hours=48)
REFUND_SUM_TOLERANCE = 0.01
#: The largest amount (order or refund, in the currency unit) the contract accepts: larger is a
#: ``range`` reject. 1e12 units are 1e14 cents: every amount is an exact number of cents in float64
#: (< 2**53), and more than 92,000 maximal amounts still sum within int64 cents (9.2e18).
MAX_AMOUNT = 1e12
TS_DTYPE = "datetime64[ns, UTC]"
_FIRST_VALUES = 5

ColumnKind = Literal["id", "str", "ts", "float", "int", "bool", "nullable_bool", "enum"]


@dataclass(frozen=True)
class ColumnSpec:
    """One column of the contract.

    Parameters
    ----------
    name
        Column name.
    kind
        Logical type the column is coerced to.
    required
        Null is a reject (rule ``required``).
    present
        The column must exist in the table (otherwise a missing column is filled
        with its default).
    levels
        Allowed values for ``enum`` columns.
    """

    name: str
    kind: ColumnKind
    required: bool = True
    present: bool = True
    levels: tuple[str, ...] = ()


SCHEMAS: dict[str, tuple[ColumnSpec, ...]] = {
    "orders": (
        ColumnSpec("order_id", "id"),
        ColumnSpec("buyer_id", "id"),
        ColumnSpec("store_id", "id"),
        ColumnSpec("category", "str"),
        ColumnSpec("amount", "float"),
        ColumnSpec("paid_at", "ts"),
        ColumnSpec("ship_by", "ts", required=False, present=False),
        ColumnSpec("shipped_at", "ts", required=False),
        ColumnSpec("delivered_at", "ts", required=False),
        ColumnSpec("device_id", "id", required=False, present=False),
        ColumnSpec("address_id", "id", required=False, present=False),
    ),
    "refunds": (
        ColumnSpec("refund_id", "id"),
        ColumnSpec("order_id", "id"),
        ColumnSpec("requested_at", "ts"),
        ColumnSpec("kind", "enum", levels=KINDS),
        ColumnSpec("reason", "enum", levels=REASONS),
        ColumnSpec("amount", "float"),
        ColumnSpec("resolved_at", "ts", required=False),
        ColumnSpec("outcome", "enum", required=False, levels=OUTCOMES),
        ColumnSpec("escalated", "bool", present=False),
        ColumnSpec("is_abuse", "nullable_bool", required=False, present=False),
        ColumnSpec("escalated_at", "ts", required=False, present=False),
    ),
    "reviews": (
        ColumnSpec("order_id", "id"),
        ColumnSpec("rating", "int"),
        ColumnSpec("created_at", "ts"),
    ),
    "service": (
        ColumnSpec("store_id", "id"),
        ColumnSpec("started_at", "ts"),
        ColumnSpec("first_response_s", "float"),
    ),
}

_TRUE = {"true", "t", "1", "yes", "y", "1.0"}
_FALSE = {"false", "f", "0", "no", "n", "0.0"}


# --------------------------------------------------------------------------- loading
def _read_file(path: Path, table: str) -> pd.DataFrame:
    try:
        if path.is_dir() or path.suffix == ".parquet":
            return pd.read_parquet(path)
        # CSV: every cell as text, only empty cells are null; validate() coerces.
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except (OSError, ValueError, ImportError) as exc:  # pyarrow errors subclass these
        raise SchemaError(
            f"Table {table!r}: cannot read {path}: {type(exc).__name__}: {exc}",
            table=table,
            rule="unreadable",
        ) from exc
    except Exception as exc:  # pyarrow.lib.ArrowInvalid and friends
        raise SchemaError(
            f"Table {table!r}: cannot read {path}: {type(exc).__name__}: {exc}",
            table=table,
            rule="unreadable",
        ) from exc


def _find_table(folder: Path, table: str) -> Path | None:
    candidates = [
        folder / f"{table}.parquet",
        folder / f"{table}.csv",
        folder / f"{table}.csv.gz",
        folder / table,
    ]
    found = [p for p in candidates if p.exists() and (p.is_file() or any(p.glob("**/*.parquet")))]
    if len(found) > 1:
        raise SchemaError(
            f"Table {table!r} is ambiguous in {folder}: found {[p.name for p in found]}; keep one.",
            table=table,
            rule="ambiguous_table",
            values=[p.name for p in found],
        )
    return found[0] if found else None


def load_tables(source: str | Path | Mapping[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Load the contract's tables from a folder or a mapping of DataFrames.

    Parameters
    ----------
    source
        A folder holding ``orders``, ``refunds``, ``reviews`` and optionally
        ``service``, each as ``<name>.parquet``, ``<name>.csv`` (``.csv.gz``) or a
        folder ``<name>/`` of Parquet parts; or a mapping ``{name: DataFrame}``.

    Returns
    -------
    dict of str to pandas.DataFrame
        The raw tables (not validated: pass them to :func:`validate`). A missing
        ``service`` table is absent from the dict.

    Raises
    ------
    SchemaError
        A required table is missing, a table is ambiguous or unreadable, or the
        mapping names an unknown table.
    """
    if isinstance(source, Mapping):
        unknown = sorted(set(source) - set(TABLES))
        if unknown:
            raise SchemaError(
                f"Unknown table name(s) {unknown}; expected some of {list(TABLES)}.",
                rule="unknown_table",
                values=unknown,
            )
        out: dict[str, pd.DataFrame] = {}
        for name in TABLES:
            if name in source:
                df = source[name]
                if not isinstance(df, pd.DataFrame):
                    raise SchemaError(
                        f"Table {name!r} must be a pandas DataFrame. Got {type(df).__name__} instead.",
                        table=name,
                        rule="not_a_frame",
                    )
                out[name] = df
    else:
        folder = Path(source)
        if not folder.is_dir():
            raise SchemaError(f"Data folder {str(folder)!r} does not exist.", rule="missing_folder")
        out = {}
        for name in TABLES:
            path = _find_table(folder, name)
            if path is not None:
                out[name] = _read_file(path, name)
    missing = [t for t in REQUIRED_TABLES if t not in out]
    if missing:
        raise SchemaError(
            f"Missing required table(s) {missing}; an empty table is fine but it must be there.",
            table=missing[0],
            rule="missing_table",
            values=missing,
        )
    return out


def empty_tables() -> dict[str, pd.DataFrame]:
    """Return the four tables, empty, with the canonical columns and dtypes."""
    tables = {name: pd.DataFrame({c.name: pd.Series(dtype=object) for c in SCHEMAS[name] if c.present}) for name in TABLES}
    clean, _ = validate(tables, mode="strict")
    return clean


def write_table(df: pd.DataFrame, path: str | Path) -> None:
    """Write a table to ``.parquet`` or ``.csv`` (by extension), atomically.

    Parameters
    ----------
    df
        The table.
    path
        Target file; its suffix picks the format.
    """
    path = Path(path)
    suffixes = "".join(path.suffixes[-2:])
    if path.suffix not in (".parquet", ".csv") and suffixes != ".csv.gz":
        raise SchemaError(f"Unsupported output format {path.name!r}: use .parquet or .csv.", rule="format")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_target(path) as tmp:
        if path.suffix == ".parquet":
            df.to_parquet(tmp, index=False)
        else:
            df.to_csv(tmp, index=False, compression="gzip" if suffixes == ".csv.gz" else None)


# --------------------------------------------------------------------------- validation
@dataclass
class _Table:
    """Working state for one table during validation."""

    name: str
    raw: pd.DataFrame
    data: dict[str, pd.Series] = field(default_factory=dict)
    bad: list[pd.DataFrame] = field(default_factory=list)

    def reject(self, mask: np.ndarray | pd.Series, column: str, rule: str, detail: str,
               values: pd.Series | None = None) -> None:
        mask = np.asarray(mask, dtype=bool)
        if not mask.any():
            return
        idx = np.flatnonzero(mask)
        src = values if values is not None else (self.raw[column] if column in self.raw else None)
        if src is None:
            vals = pd.Series([""] * len(idx))
        else:
            vals = pd.Series(src.iloc[idx].to_numpy(dtype=object)).map(_show)
        key_col = self.raw[KEY_COLUMN[self.name]]
        keys = pd.Series(key_col.iloc[idx].to_numpy(dtype=object)).map(
            lambda v: None if _show(v) == "<null>" else str(v)
        ).to_numpy(dtype=object)
        self.bad.append(
            pd.DataFrame(
                {
                    "table": self.name,
                    "row_index": idx.astype(np.int64),
                    "key": keys,
                    "column": column,
                    "rule": rule,
                    "value": vals.to_numpy(dtype=object),
                    "detail": detail,
                }
            )
        )

    def rejected_mask(self) -> np.ndarray:
        mask = np.zeros(len(self.raw), dtype=bool)
        for b in self.bad:
            mask[b["row_index"].to_numpy()] = True
        return mask


def _show(v: Any) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NaT:
        return "<null>"
    if np.ndim(v) == 0:  # containers (a list in a cell) are shown, never tested for null
        try:
            if pd.isna(v):
                return "<null>"
        except (TypeError, ValueError):
            pass
    return str(v)


def _isnull_raw(s: pd.Series) -> np.ndarray:
    """Null cells; for text, empty or all-blank strings count as null too."""
    null = s.isna().to_numpy()
    if s.dtype == object:
        blank = np.fromiter((isinstance(v, str) and not v.strip() for v in s), dtype=bool, count=len(s))
        null = null | blank
    elif pd.api.types.is_string_dtype(s.dtype):
        blank = s.str.strip().str.len() == 0
        null = null | blank.fillna(False).to_numpy(dtype=bool)
    return null


def _coerce_id(s: pd.Series, null: np.ndarray) -> tuple[pd.Series, np.ndarray]:
    """Ids are strings; integers (and integral floats) are accepted and written as text."""
    bad = np.zeros(len(s), dtype=bool)
    if pd.api.types.is_bool_dtype(s.dtype):
        return pd.Series(np.nan, index=s.index, dtype="str"), ~null
    if pd.api.types.is_integer_dtype(s.dtype):
        out = s.astype("str")
    elif pd.api.types.is_float_dtype(s.dtype):
        f = s.to_numpy(dtype="float64", na_value=np.nan)
        integral = np.isfinite(f) & (np.mod(np.where(np.isfinite(f), f, 0), 1) == 0)
        bad = ~null & ~integral
        out = pd.Series(np.where(integral, f, 0).astype(np.int64), index=s.index).astype("str")
    elif s.dtype == object:
        vals = s.to_numpy(dtype=object)
        text = np.empty(len(vals), dtype=object)
        for i, v in enumerate(vals):  # object columns only: mixed Python values need a look each
            if null[i]:
                text[i] = None
            elif isinstance(v, str):
                text[i] = v
            elif isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)):
                text[i] = str(int(v))
            else:
                bad[i] = True
                text[i] = None
        out = pd.Series(text, index=s.index, dtype="str")
    else:  # pandas string dtypes, categoricals of strings
        out = s.astype("str")
    out = out.where(~null & ~bad)
    return out.astype("str"), bad


def _coerce_ts(s: pd.Series, null: np.ndarray) -> tuple[pd.Series, np.ndarray]:
    if isinstance(s.dtype, pd.DatetimeTZDtype):
        out = s.dt.tz_convert("UTC")
    elif pd.api.types.is_datetime64_dtype(s.dtype):
        out = s.dt.tz_localize("UTC")
    elif pd.api.types.is_numeric_dtype(s.dtype) or pd.api.types.is_bool_dtype(s.dtype):
        # numbers are not timestamps: refuse rather than guess an epoch unit
        bad = ~null
        return pd.Series(pd.NaT, index=s.index, dtype=TS_DTYPE), bad
    else:
        text = s.astype(object).where(~null, None)
        if s.dtype == object:
            # only text and datetime objects are timestamps; numbers are refused, not read as epochs
            # (a date is its 00:00 UTC, the library's rule for data, as its ISO text "2024-06-01" is)
            odd = text.map(lambda v: v is not None and not isinstance(v, (str, date, np.datetime64)))
            odd_mask = odd.to_numpy(dtype=bool)
            if odd_mask.any():
                text = text.where(~odd_mask, None)
                null = null.copy()
        else:
            odd_mask = np.zeros(len(s), dtype=bool)
        # ISO 8601 only (the library's one rule for text instants, refundguard._time): other
        # formats ("01/06/2024 00:11", "now", "today") are type rejects, never guessed
        # (datetime objects print as ISO 8601, so they pass this look at the text)
        iso = text.isna().to_numpy() | text.astype("str").str.match(_ISO_START.pattern).fillna(False).to_numpy(dtype=bool)
        if not iso.all():
            text = text.where(iso, None)
            odd_mask = odd_mask | ~iso
        out = pd.to_datetime(text, utc=True, format="ISO8601", errors="coerce")
    # out of the nanosecond range -> not representable: a type reject
    out = out.astype("datetime64[us, UTC]") if out.dtype != TS_DTYPE else out
    lo, hi = pd.Timestamp.min.tz_localize("UTC"), pd.Timestamp.max.tz_localize("UTC")
    oob = (out.notna() & ((out < lo) | (out > hi))).to_numpy()
    out = out.where(~oob).astype(TS_DTYPE)
    bad = (out.isna().to_numpy() & ~null) | oob
    if not isinstance(s.dtype, pd.DatetimeTZDtype) and not pd.api.types.is_datetime64_dtype(s.dtype):
        bad = bad | odd_mask
    return out, bad


def _coerce_float(s: pd.Series, null: np.ndarray) -> tuple[pd.Series, np.ndarray]:
    if pd.api.types.is_bool_dtype(s.dtype):
        return pd.Series(np.nan, index=s.index), ~null
    if pd.api.types.is_numeric_dtype(s.dtype):
        out = s.astype("float64")
    else:
        vals = s.astype(object)
        is_bool = vals.map(lambda v: isinstance(v, (bool, np.bool_))).to_numpy(dtype=bool)
        out = pd.to_numeric(vals.where(~is_bool & ~null, None), errors="coerce").astype("float64")
        out[is_bool] = np.nan
    bad = out.isna().to_numpy() & ~null
    return out, bad


def _coerce_int(s: pd.Series, null: np.ndarray) -> tuple[pd.Series, np.ndarray]:
    f, bad = _coerce_float(s, null)
    v = f.fillna(0).to_numpy()
    frac = f.notna().to_numpy() & ~(np.isfinite(v) & (np.floor(v) == v))  # inf and fractions are not ints
    bad = bad | frac
    return f.where(~frac), bad


def _coerce_bool(s: pd.Series, null: np.ndarray) -> tuple[pd.Series, np.ndarray]:
    if pd.api.types.is_bool_dtype(s.dtype):
        return s.astype("boolean"), np.zeros(len(s), dtype=bool)
    vals = s.to_numpy(dtype=object)
    out = np.full(len(vals), None, dtype=object)
    bad = np.zeros(len(vals), dtype=bool)
    for i, v in enumerate(vals):  # small vocabulary; only reached for text/object input
        if null[i]:
            continue
        if isinstance(v, (bool, np.bool_)):
            out[i] = bool(v)
        elif isinstance(v, (int, np.integer, float, np.floating)) and v in (0, 1):
            out[i] = bool(v)
        elif isinstance(v, str) and v.strip().lower() in _TRUE:
            out[i] = True
        elif isinstance(v, str) and v.strip().lower() in _FALSE:
            out[i] = False
        else:
            bad[i] = True
    return pd.Series(out, index=s.index, dtype="boolean"), bad


def _coerce_enum(s: pd.Series, null: np.ndarray, levels: tuple[str, ...]) -> tuple[pd.Series, np.ndarray, np.ndarray]:
    """Text coerced like an id; returns the values, the type rejects and the unknown levels."""
    out, bad = _coerce_id(s, null)
    unknown = out.notna().to_numpy() & ~out.isin(levels).to_numpy()
    return out.where(~unknown), bad, unknown


def _coerce_column(t: _Table, spec: ColumnSpec) -> None:
    n = len(t.raw)
    if spec.name not in t.raw.columns:
        # optional columns that are absent get their default
        if spec.kind == "ts":
            t.data[spec.name] = pd.Series(pd.NaT, index=range(n), dtype=TS_DTYPE)
        elif spec.kind == "bool":
            t.data[spec.name] = pd.Series(False, index=range(n), dtype="boolean")
        elif spec.kind == "nullable_bool":
            t.data[spec.name] = pd.Series(pd.NA, index=range(n), dtype="boolean")
        else:
            t.data[spec.name] = pd.Series(np.nan, index=range(n), dtype="str")
        return
    raw = t.raw[spec.name].reset_index(drop=True)
    null = _isnull_raw(raw)
    if spec.kind in ("id", "str"):
        out, bad = _coerce_id(raw, null)
    elif spec.kind == "ts":
        out, bad = _coerce_ts(raw, null)
    elif spec.kind == "float":
        out, bad = _coerce_float(raw, null)
    elif spec.kind == "int":
        out, bad = _coerce_int(raw, null)
    elif spec.kind in ("bool", "nullable_bool"):
        out, bad = _coerce_bool(raw, null)
    else:
        out, bad, unknown = _coerce_enum(raw, null, spec.levels)
    if spec.kind == "enum":
        t.reject(unknown, spec.name, "enum", f"{spec.name} must be one of {list(spec.levels)}", raw)
        t.reject(bad, spec.name, "type", f"{spec.name} must be a string", raw)
    else:
        t.reject(bad, spec.name, "type", f"{spec.name} cannot be read as {_KIND_TEXT[spec.kind]}", raw)
    if spec.kind == "ts":
        ns = out.to_numpy(dtype="datetime64[ns]").view(np.int64)
        outside = out.notna().to_numpy() & ((ns < MIN_INSTANT_NS) | (ns >= MAX_INSTANT_NS))
        t.reject(outside, spec.name, "range", f"{spec.name} must be in {INSTANT_RANGE_TEXT}", raw)
    if spec.kind == "id":
        # "o1 " and "o1" would be two different ids: refuse rather than guess which is meant
        padded = (out.notna() & (out.str.strip() != out)).to_numpy(dtype=bool)
        t.reject(padded, spec.name, "id_whitespace", f"{spec.name} must not start or end with whitespace", raw)
    if spec.required:
        t.reject(null, spec.name, "required", f"{spec.name} is required", raw)
    t.data[spec.name] = out.reset_index(drop=True)


_KIND_TEXT = {
    "id": "a string id",
    "str": "a string",
    "ts": "a UTC timestamp",
    "float": "a number",
    "int": "an integer",
    "bool": "a boolean",
    "nullable_bool": "a boolean or null",
    "enum": "one of its levels",
}


def require_columns(df: pd.DataFrame, columns: Sequence[str], table: str) -> None:
    """Raise ``SchemaError`` (rule ``missing_column``) naming the columns of ``columns`` absent from ``df``.

    Parameters
    ----------
    df
        The table (or any frame an entry point takes: requests, profiles, histories).
    columns
        The columns it must have.
    table
        Its name in the message.
    """
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise SchemaError(
            f"Table {table!r} is missing required column(s) {missing}. "
            f"Columns in table: {[str(c) for c in df.columns]}",
            table=table,
            column=missing[0],
            rule="missing_column",
            n_bad=len(missing),
            values=missing,
        )


def _check_missing_columns(name: str, df: pd.DataFrame) -> None:
    require_columns(df, [c.name for c in SCHEMAS[name] if c.present], name)
    dup = df.columns[df.columns.duplicated()].tolist()
    if dup:
        raise SchemaError(
            f"Table {name!r} has duplicated column name(s) {dup}.",
            table=name,
            column=str(dup[0]),
            rule="duplicate_column",
            values=dup,
        )


def _unique(t: _Table, col: str) -> None:
    ids = t.data[col]
    dup = (ids.duplicated(keep=False) & ids.notna()).to_numpy()
    t.reject(dup, col, "unique", f"{col} must be unique; every copy of a duplicated id is rejected")


def _order_rules(t: _Table) -> None:
    d = t.data
    _unique(t, "order_id")
    amount = d["amount"]
    neg = (amount.notna() & ~(np.isfinite(amount) & (amount >= 0))).to_numpy()
    t.reject(neg, "amount", "min", "amount must be finite and >= 0")
    _amount_bound(t, amount)
    given_ship_by = d["ship_by"].notna().to_numpy()
    d["ship_by"] = d["ship_by"].fillna(d["paid_at"] + DEFAULT_SHIP_BY)
    t.reject(given_ship_by & (d["ship_by"] < d["paid_at"]).to_numpy(), "ship_by", "after_paid_at",
             "ship_by must be >= paid_at")
    t.reject((d["shipped_at"] < d["paid_at"]).to_numpy(), "shipped_at", "after_paid_at",
             "shipped_at must be >= paid_at")
    t.reject((d["delivered_at"] < d["shipped_at"]).to_numpy(), "delivered_at", "after_shipped_at",
             "delivered_at must be >= shipped_at")
    t.reject((d["delivered_at"].notna() & d["shipped_at"].isna()).to_numpy() & ~_bad_in(t, "shipped_at"),
             "delivered_at", "shipped_first", "delivered_at must be null when shipped_at is null")


def _amount_bound(t: _Table, amount: pd.Series) -> None:
    """Finite amounts above :data:`MAX_AMOUNT` are ``range`` rejects (infinite ones are ``min`` rejects)."""
    huge = (np.isfinite(amount) & (amount > MAX_AMOUNT)).to_numpy(dtype=bool)
    t.reject(huge, "amount", "range", f"amount must be <= {MAX_AMOUNT:.0e} (MAX_AMOUNT)")


def _bad_in(t: _Table, column: str) -> np.ndarray:
    """Rows already rejected because of ``column``'s own value (type errors)."""
    mask = np.zeros(len(t.raw), dtype=bool)
    for b in t.bad:
        sel = b[b["column"] == column]
        mask[sel["row_index"].to_numpy()] = True
    return mask


def _positions(needles: pd.Series, haystack: pd.Series) -> np.ndarray:
    """Position of each needle's first occurrence in haystack; -1 when absent or null."""
    hay = pa.array(haystack, type=pa.string(), from_pandas=True)
    ndl = pa.array(needles, type=pa.string(), from_pandas=True)
    pos = pc.index_in(ndl, value_set=hay, skip_nulls=True)
    return pos.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)


def _parent_rules(t: _Table, orders: _Table, order_clean: np.ndarray, time_col: str) -> np.ndarray:
    """Reject rows whose order is unknown or rejected; check ``time_col >= paid_at``.

    Returns the positions in ``orders`` of each row's parent (-1 when none).
    """
    oid = t.data["order_id"]
    # position of each id among *all* input orders (duplicates: the first; they are rejected anyway)
    pos_i = _positions(oid, orders.data["order_id"])
    known = pos_i >= 0
    has_id = oid.notna().to_numpy()
    t.reject(has_id & ~known, "order_id", "exists", "order_id must exist in orders")
    parent_bad = known & ~order_clean[np.where(known, pos_i, 0)]
    t.reject(parent_bad, "order_id", "parent_rejected", "the order this row references was rejected")
    ok_parent = known & ~parent_bad
    paid = series_ns(orders.data["paid_at"])[np.where(ok_parent, pos_i, 0)]
    when = series_ns(t.data[time_col])
    early = ok_parent & (when != NAT) & (when < paid)
    t.reject(early, time_col, "after_paid_at", f"{time_col} must be >= the order's paid_at")
    return np.where(ok_parent, pos_i, -1)


def _refund_rules(t: _Table, orders: _Table, order_clean: np.ndarray) -> None:
    d = t.data
    _unique(t, "refund_id")
    amount = d["amount"]
    t.reject((amount.notna() & ~(np.isfinite(amount) & (amount > 0))).to_numpy(), "amount", "min",
             "amount must be finite and > 0")
    _amount_bound(t, amount)
    pos = _parent_rules(t, orders, order_clean, "requested_at")
    t.reject((d["resolved_at"] < d["requested_at"]).to_numpy(), "resolved_at", "after_requested_at",
             "resolved_at must be >= requested_at")
    if "escalated_at" in t.raw.columns:
        t.reject(((d["escalated_at"] < d["requested_at"])).to_numpy(), "escalated_at", "after_requested_at",
                 "escalated_at must be >= requested_at")
    res_null = d["resolved_at"].isna().to_numpy() & ~_bad_in(t, "resolved_at")
    out_null = d["outcome"].isna().to_numpy() & ~_bad_in(t, "outcome")
    t.reject(res_null != out_null, "outcome", "outcome_iff_resolved",
             "outcome must be null exactly when resolved_at is null")
    # an order's refunds must sum to <= its amount (+0.01): the refund that pushes the
    # running total (by requested_at, refund_id) over the order amount is rejected
    usable = (pos >= 0) & ~t.rejected_mask()
    if usable.any():
        frame = pd.DataFrame(
            {
                "pos": pos[usable],
                "at": series_ns(d["requested_at"])[usable],
                "rid": d["refund_id"].to_numpy(dtype=object)[usable],
                "amount": amount.to_numpy()[usable],
                "row": np.flatnonzero(usable),
            }
        ).sort_values(["pos", "at", "rid"], kind="mergesort")
        running = frame.groupby("pos", sort=False)["amount"].cumsum().to_numpy()
        limit = orders.data["amount"].to_numpy()[frame["pos"].to_numpy()] + REFUND_SUM_TOLERANCE
        over = np.zeros(len(t.raw), dtype=bool)
        over[frame["row"].to_numpy()[running > limit]] = True
        t.reject(over, "amount", "refund_sum", "the order's refunds sum to more than the order amount (+0.01)")


def _review_rules(t: _Table, orders: _Table, order_clean: np.ndarray) -> None:
    r = t.data["rating"]
    t.reject((r.notna() & ((r < 1) | (r > 5))).to_numpy(), "rating", "range", "rating must be an integer in 1..5")
    _parent_rules(t, orders, order_clean, "created_at")


def _service_rules(t: _Table) -> None:
    s = t.data["first_response_s"]
    t.reject((s.notna() & ~(np.isfinite(s) & (s >= 0))).to_numpy(), "first_response_s", "min",
             "first_response_s must be finite and >= 0")


def _finish(t: _Table) -> tuple[pd.DataFrame, np.ndarray]:
    """Assemble the clean table: canonical columns, then extra columns untouched."""
    rejected = t.rejected_mask()
    keep = ~rejected
    cols: dict[str, Any] = {}
    for spec in SCHEMAS[t.name]:
        if spec.name == "escalated_at" and spec.name not in t.raw.columns:
            continue
        s = t.data[spec.name][keep].reset_index(drop=True)
        if spec.kind == "int":
            s = s.astype("int64")
        elif spec.kind == "bool":
            s = s.astype(bool)
        cols[spec.name] = s
    known = {c.name for c in SCHEMAS[t.name]}
    for c in t.raw.columns:
        if c not in known:
            cols[c] = t.raw[c].iloc[np.flatnonzero(keep)].reset_index(drop=True)
    return pd.DataFrame(cols), rejected


def validate(
    tables: Mapping[str, pd.DataFrame],
    mode: Literal["strict", "quarantine"] = "strict",
) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    """Check tables against the data contract.

    Parameters
    ----------
    tables
        ``{"orders": ..., "refunds": ..., "reviews": ..., ["service": ...]}`` as
        given by :func:`load_tables` (or built by hand).
    mode
        ``"strict"`` raises on the first broken rule; ``"quarantine"`` sets bad
        rows aside and reports them.

    Returns
    -------
    clean : dict of str to pandas.DataFrame
        The four tables with canonical dtypes (``service`` empty when absent).
    rejects : pandas.DataFrame
        Columns ``table, row_index, key, column, rule, value, detail``: one row
        per broken rule per input row (``row_index`` is the row's position in
        its input table). Empty in strict mode.

    Raises
    ------
    SchemaError
        A required table or column is missing (both modes), or, in strict mode,
        any rule is broken; the error names table, column, rule, the number of
        bad rows and the first few bad values.

    Notes
    -----
    Every copy of a duplicated id is rejected. Refunds and reviews whose order
    was rejected are rejected with rule ``parent_rejected``. For every table,
    ``len(clean) + rejects.row_index.nunique() == len(input)``.
    """
    if mode not in ("strict", "quarantine"):
        raise ConfigError.invalid("validate", "mode", "'strict' or 'quarantine'", mode)
    tables = load_tables(tables)  # checks names and presence of the required tables
    for name, df in tables.items():
        _check_missing_columns(name, df)
    raw = dict(tables)
    if "service" not in raw:
        raw["service"] = pd.DataFrame({c.name: pd.Series(dtype=object) for c in SCHEMAS["service"]})

    work: dict[str, _Table] = {}
    for name in TABLES:
        t = _Table(name, raw[name].reset_index(drop=True))
        for spec in SCHEMAS[name]:
            _coerce_column(t, spec)
        work[name] = t

    _order_rules(work["orders"])
    order_clean = ~work["orders"].rejected_mask()
    _refund_rules(work["refunds"], work["orders"], order_clean)
    _review_rules(work["reviews"], work["orders"], order_clean)
    _service_rules(work["service"])

    clean: dict[str, pd.DataFrame] = {}
    parts: list[pd.DataFrame] = []
    for name in TABLES:
        clean[name], _ = _finish(work[name])
        parts.extend(work[name].bad)
    rejects = _rejects_frame(parts)

    if len(rejects):
        if mode == "strict":
            raise _strict_error(rejects)
        per_table = rejects.groupby("table", sort=False)["row_index"].nunique()
        warnings.warn(
            "validate rejected "
            + ", ".join(f"{n} {tbl} rows" for tbl, n in per_table.items())
            + "; see the rejects table",
            RejectedRowsWarning,
            stacklevel=2,
        )
    return clean, rejects


# --------------------------------------------------------------------------- canonical tables
def _canonical_dtype(kind: ColumnKind, dtype: Any) -> bool:
    """Whether ``dtype`` is the dtype :func:`validate` gives a column of this kind."""
    if kind in ("id", "str", "enum"):
        # pandas' default "str" dtype (NaN for null), whatever its storage; not the pd.NA "string" dtype
        return isinstance(dtype, pd.StringDtype) and dtype.na_value is not pd.NA
    if kind == "ts":
        return isinstance(dtype, pd.DatetimeTZDtype) and str(dtype) == TS_DTYPE
    if kind == "float":
        return dtype == np.float64
    if kind == "int":
        return dtype == np.int64
    if kind == "bool":
        return dtype == np.bool_
    return isinstance(dtype, pd.BooleanDtype)  # nullable_bool


_CANONICAL_TEXT = {
    "id": "str",
    "str": "str",
    "enum": "str",
    "ts": TS_DTYPE,
    "float": "float64",
    "int": "int64",
    "bool": "bool",
    "nullable_bool": "boolean",
}


def non_canonical_column(name: str, df: pd.DataFrame) -> tuple[str, str, str] | None:
    """The first contract column of ``df`` that is not as :func:`validate` leaves it, or ``None``.

    Looks at column names and dtypes only (no values), so it costs nothing next to the
    work that follows it. Every column :func:`validate` produces must be present
    (``escalated_at`` only when given) with its canonical dtype; extra columns are ignored.

    Parameters
    ----------
    name
        The table (``orders``, ``refunds``, ``reviews`` or ``service``).
    df
        The table.

    Returns
    -------
    tuple of (column, dtype found, dtype expected) or None
        ``dtype found`` is ``"<missing>"`` for an absent column and
        ``"<duplicated>"`` for a column name that appears twice.
    """
    columns = df.columns
    if not columns.is_unique:
        return str(columns[columns.duplicated()][0]), "<duplicated>", "one column"
    dtypes = df.dtypes
    for spec in SCHEMAS[name]:
        if spec.name not in columns:
            if spec.name == "escalated_at":
                continue
            return spec.name, "<missing>", _CANONICAL_TEXT[spec.kind]
        dtype = dtypes[spec.name]
        if not _canonical_dtype(spec.kind, dtype):
            return spec.name, str(dtype), _CANONICAL_TEXT[spec.kind]
    return None


def _bad_cell_rule(name: str, df: pd.DataFrame) -> tuple[str, str] | None:
    """The first per-cell rule a canonical-dtype table breaks, as ``(column, rule)``, or ``None``.

    The cheap half of :func:`validate` for tables that already have canonical dtypes:
    required values present, enums within their levels, amounts, instants, ratings and response
    times within range. It reads each column once, vectorised (tens of milliseconds per
    million rows); rules across rows (unique ids, references, the order of instants,
    refund sums) are :func:`validate`'s alone.
    """
    for spec in SCHEMAS[name]:
        if spec.name not in df.columns:
            continue
        s = df[spec.name]
        if spec.required and spec.kind != "bool" and bool(s.isna().any()):
            return spec.name, "required"
        if spec.kind == "enum" and not bool((s.isin(spec.levels) | s.isna()).all()):
            return spec.name, "enum"
        if spec.kind == "ts" and len(s):
            ns = s.to_numpy(dtype="datetime64[ns]").view(np.int64)
            if bool((s.notna().to_numpy() & ((ns < MIN_INSTANT_NS) | (ns >= MAX_INSTANT_NS))).any()):
                return spec.name, "range"
    low = {"orders": ("amount", 0.0, True), "refunds": ("amount", 0.0, False), "service": ("first_response_s", 0.0, True)}
    if name in low:
        column, floor, closed = low[name]
        v = df[column].to_numpy(dtype=np.float64, na_value=np.nan)
        ok = np.isfinite(v) & ((v >= floor) if closed else (v > floor))
        if not ok.all():
            return column, "min"
        if column == "amount" and (v > MAX_AMOUNT).any():
            return column, "range"
    if name == "reviews":
        r = df["rating"].to_numpy()
        if ((r < 1) | (r > 5)).any():
            return "rating", "range"
    return None


def _empty_service() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "store_id": pd.Series(dtype="str"),
            "started_at": pd.Series(dtype=TS_DTYPE),
            "first_response_s": pd.Series(dtype="float64"),
        }
    )


def canonical_tables(tables: Mapping[str, pd.DataFrame], validate_tables: bool = True) -> dict[str, pd.DataFrame]:
    """The contract's tables with canonical dtypes: the one coercion path of every entry point.

    Tables that already have the columns and dtypes :func:`validate` produces (its
    output, slices or concatenations of it, or a Parquet round trip of it) pass
    through at the cost of a look at their dtypes. Any other table set is validated
    strictly, so that no computation ever runs on uncoerced values (a CSV's text
    ``"False"`` counted as true, numbers read as text).

    Parameters
    ----------
    tables
        The contract's tables (``service`` optional).
    validate_tables
        ``True`` (default): coerce tables that are not canonical through
        :func:`validate` (``mode="strict"``). ``False`` means "I validated already":
        the dtypes are still checked, and a table that is not canonical raises.

    Returns
    -------
    dict of str to pandas.DataFrame
        The four tables (an absent ``service`` table becomes an empty one). Canonical
        input tables are returned as they are, not copied.

    Raises
    ------
    SchemaError
        ``validate_tables=True``: any rule of the contract is broken (as in
        :func:`validate`). ``validate_tables=False``: a table misses a column
        :func:`validate` produces (rule ``missing_column``) or a column does not
        have its canonical dtype (rule ``dtype``; the error names the table, the
        column, the dtype found and the dtype expected).

    Notes
    -----
    For tables with canonical dtypes the per-cell rules are still checked, vectorised
    and cheap (required values, enum levels, amount, rating and response-time ranges):
    a validated frame edited afterwards (``kind="REFUND-ONLY"``) is validated strictly
    and refused. Rules across rows (unique ids, references, the order of instants,
    refund sums) are checked by :func:`validate` only: a table built by hand with the
    canonical dtypes that breaks one of those is taken as validated.
    """
    tables = load_tables(tables)  # names, DataFrames, the required tables present
    problems = {name: non_canonical_column(name, df) for name, df in tables.items()}
    if all(p is None for p in problems.values()):
        bad = next(((n, r) for n, df in tables.items() if (r := _bad_cell_rule(n, df)) is not None), None)
        if bad is None:
            out = dict(tables)
            out.setdefault("service", _empty_service())
            return out
        # canonical dtypes, but a cell breaks a rule (a frame edited after validate): validate strictly,
        # which raises naming the rows
        clean, _ = validate(tables, mode="strict")
        return clean  # pragma: no cover - validate raises on the broken rule
    if validate_tables:
        clean, _ = validate(tables, mode="strict")
        return clean
    name, (column, found, expected) = next((n, p) for n, p in problems.items() if p is not None)
    if found == "<missing>":
        rule, what = "missing_column", "is missing"
    elif found == "<duplicated>":
        rule, what = "duplicate_column", "appears more than once"
    else:
        rule, what = "dtype", f"has dtype {found}, not the canonical {expected}"
    raise SchemaError(
        f"Table {name!r}, column {column!r} {what}: these tables were given as validated "
        f"(validate_tables=False) but are not refundguard.validate output. Validate them "
        f"(validate_tables=True, the default) or pass validate's output.",
        table=name,
        column=column,
        rule=rule,
        n_bad=1,
        values=[found],
    )


def _rejects_frame(parts: list[pd.DataFrame]) -> pd.DataFrame:
    if not parts:
        return pd.DataFrame(
            {
                "table": pd.Series(dtype="str"),
                "row_index": pd.Series(dtype="int64"),
                "key": pd.Series(dtype="str"),
                "column": pd.Series(dtype="str"),
                "rule": pd.Series(dtype="str"),
                "value": pd.Series(dtype="str"),
                "detail": pd.Series(dtype="str"),
            }
        )
    out = pd.concat(parts, ignore_index=True)
    order = {t: i for i, t in enumerate(TABLES)}
    out["_t"] = out["table"].map(order)
    out = out.sort_values(["_t", "row_index"], kind="mergesort").drop(columns="_t").reset_index(drop=True)
    for c in ("table", "key", "column", "rule", "value", "detail"):
        out[c] = out[c].astype("str")
    return out[list(REJECT_COLUMNS)]


def _strict_error(rejects: pd.DataFrame) -> SchemaError:
    first = rejects.iloc[0]
    same = rejects[
        (rejects["table"] == first["table"])
        & (rejects["column"] == first["column"])
        & (rejects["rule"] == first["rule"])
    ]
    n_bad = same["row_index"].nunique()
    values = same["value"].head(_FIRST_VALUES).tolist()
    others = len(rejects.groupby(["table", "column", "rule"])) - 1
    more = f" ({others} other rule(s) also broken; use mode='quarantine' to see all)" if others else ""
    return SchemaError(
        f"Table {first['table']!r}, column {first['column']!r}: rule {first['rule']!r} "
        f"({first['detail']}) fails for {n_bad} row(s); first values: {values}{more}",
        table=str(first["table"]),
        column=str(first["column"]),
        rule=str(first["rule"]),
        n_bad=int(n_bad),
        values=values,
    )


def summarize_rejects(rejects: pd.DataFrame) -> pd.DataFrame:
    """Count rejected rows per table, column and rule.

    Parameters
    ----------
    rejects
        The rejects table from :func:`validate`.

    Returns
    -------
    pandas.DataFrame
        Columns ``table, column, rule, rows``.
    """
    if rejects.empty:
        return pd.DataFrame({"table": [], "column": [], "rule": [], "rows": []})
    return (
        rejects.groupby(["table", "column", "rule"], sort=False)["row_index"]
        .nunique()
        .rename("rows")
        .reset_index()
    )

