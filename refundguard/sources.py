"""Batch input: the four tables read once, validated in quarantine mode, as integer codes.

:func:`read_source` takes the tables in memory (a mapping of DataFrames) or a data
folder and returns :class:`SourceTables`: the clean rows as numpy arrays (ids
factorized once into integer codes, instants as int64 UTC nanoseconds, enums as
small codes, a refund or review pointing at its order's row), the rejects table
of the contract (DESIGN.md section 2) and the refunds that were rejected, so
that a batch job accounts for every row.

Validation is the contract's own, :func:`refundguard.tables.validate` in quarantine
mode, always. For a folder of Parquet files with the contract's column types the
work is split so that it does not dominate the run: vectorised screens over the
Arrow columns (nulls, blanks, ranges, time order, duplicated ids, a refund's or
review's order, the refunds' sum per order) find every row that *could* break a
rule, and only those rows (with the orders and sibling refunds their rules read)
go through ``validate``; its rejects are mapped back to the input's row numbers.
Each screen is a superset of its rules (tests hold the two paths equal on
corrupted input), so the rejects are exactly those of ``validate`` on the whole
tables. Other inputs (CSV, unusual column types) are loaded with
:func:`refundguard.tables.load_tables` and validated whole.

Only the columns the features and the store score read are read
(``pyarrow.dataset`` projection), one column at a time, so the peak is one column
of the largest table plus the integer arrays.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from refundguard._time import MAX_INSTANT_NS, MIN_INSTANT_NS, NAT, label_days
from refundguard.config import ScoreConfig
from refundguard.errors import DataError, RejectedRowsWarning, SchemaError
from refundguard.tables import (
    MAX_AMOUNT,
    KINDS,
    OUTCOMES,
    REASONS,
    REJECT_COLUMNS,
    REQUIRED_TABLES,
    SCHEMAS,
    TABLES,
    load_tables,
    require_columns,
    validate,
)

__all__ = ["PublishedScores", "SourceTables", "code_tables", "empty_rejects", "read_published_scores", "read_source",
           "read_store_events"]

#: Columns read per table (the features' and the store score's inputs).
READ_COLUMNS: dict[str, tuple[str, ...]] = {
    "orders": ("order_id", "buyer_id", "store_id", "category", "amount", "paid_at", "ship_by", "shipped_at",
               "delivered_at", "device_id", "address_id"),
    "refunds": ("refund_id", "order_id", "requested_at", "kind", "reason", "amount", "resolved_at", "outcome",
                "escalated", "is_abuse", "escalated_at"),
    "reviews": ("order_id", "rating", "created_at"),
    "service": ("store_id", "started_at", "first_response_s"),
}
_SHIP_BY_DEFAULT_NS = 48 * 3_600 * 1_000_000_000


# --------------------------------------------------------------------------- result
@dataclass
class SourceTables:
    """Clean rows of the four tables as integer-coded numpy arrays, plus what was rejected.

    Attributes
    ----------
    orders
        ``buyer, store, device, address, category`` (codes, -1 for none),
        ``paid_at, ship_by, shipped_at, delivered_at`` (int64 ns), ``amount``.
    refunds
        ``order`` (row in ``orders``), ``requested_at, resolved_at,
        escalation_known`` (ns), ``amount``, ``kind, reason, outcome`` (codes into
        ``KINDS``, ``REASONS``, ``OUTCOMES``; -1 for none), ``escalated`` (bool),
        ``is_abuse`` (int8: -1 null, 0, 1).
    reviews
        ``order`` (row), ``created_at`` (ns), ``rating`` (float).
    service
        ``store`` (code), ``started_at`` (ns), ``first_response_s``.
    refund_ids, buyer_ids, store_ids
        Arrow string arrays: the clean refunds' ids, and the buyer and store dictionaries.
    categories
        Sorted category levels (``category`` codes index them).
    n_devices, n_addresses
        Sizes of the device and address code spaces.
    rejects
        The contract's rejects table (``table, row_index, key, column, rule, value,
        detail``; ``row_index`` is the row's position in its input table).
    rows_in
        Input rows per table.
    rejected_refund_requested
        ``requested_at`` (ns; ``NAT`` when null or unreadable) of every rejected refund row.
    """

    orders: dict[str, np.ndarray]
    refunds: dict[str, np.ndarray]
    reviews: dict[str, np.ndarray]
    service: dict[str, np.ndarray]
    refund_ids: pa.Array
    buyer_ids: pa.Array
    store_ids: pa.Array
    categories: list[str]
    n_devices: int
    n_addresses: int
    rejects: pd.DataFrame
    rows_in: dict[str, int]
    rejected_refund_requested: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)

    def release(self) -> None:
        """Drop the coded arrays (kept: the rejects and the counts)."""
        for table in (self.orders, self.refunds, self.reviews, self.service):
            table.clear()

    def rejected_rows(self, table: str) -> int:
        """Distinct rejected rows of ``table``."""
        r = self.rejects
        return int(r.loc[r["table"] == table, "row_index"].nunique()) if len(r) else 0


# --------------------------------------------------------------------------- column helpers
def _chunked(a: pa.Array | pa.ChunkedArray) -> pa.ChunkedArray:
    return a if isinstance(a, pa.ChunkedArray) else pa.chunked_array([a])


def _ns(a: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """int64 UTC ns of a timestamp column (null -> NAT); naive means UTC."""
    a = _chunked(a)
    if not pa.types.is_timestamp(a.type):
        raise SchemaError(f"expected timestamps, got {a.type}", rule="type")
    if a.type.unit != "ns":
        a = pc.cast(a, pa.timestamp("ns", tz=a.type.tz))
    if len(a) == 0:
        return np.zeros(0, dtype=np.int64)
    # null -> NAT (the int64 minimum, i.e. numpy's NaT)
    return _numpy(a.cast(pa.int64()).fill_null(NAT), np.int64)


def _f64(a: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return _numpy(_chunked(a).cast(pa.float64()).fill_null(np.nan), np.float64)


def _numpy(a: pa.ChunkedArray, dtype: Any) -> np.ndarray:
    """A null-free numeric column as one numpy array: a view of its one chunk, else a copy filled chunk by chunk.

    ``ChunkedArray.to_numpy`` joins the chunks in Arrow's C++ default pool, which the
    batch run's pool (:func:`refundguard.batch.arrow_batch_pool`) does not reach: a
    whole column per call held there, in mimalloc, for the run.
    """
    if a.num_chunks == 1:
        return np.asarray(a.chunk(0).to_numpy(zero_copy_only=True), dtype=dtype)
    out = np.empty(len(a), dtype=dtype)
    at = 0
    for chunk in a.chunks:
        out[at:at + len(chunk)] = chunk.to_numpy(zero_copy_only=True)
        at += len(chunk)
    return out


def _encode(*columns: pa.Array | pa.ChunkedArray, sort: bool = False) -> tuple[list[np.ndarray], pa.Array]:
    """Factorize string columns into one code space (null and blank -> -1).

    Columns read as dictionaries (Parquet keeps them so) are not hashed row by row:
    only their dictionaries are unified. Returns the int32 codes of each column and
    the dictionary (sorted when ``sort``).
    """
    dict_type = pa.dictionary(pa.int32(), pa.large_string())
    lens, chunks = [], []
    for c in columns:
        ca = _chunked(c)
        lens.append(len(ca))
        for ch in ca.chunks:
            if not len(ch):
                continue
            if pa.types.is_dictionary(ch.type):
                if ch.type != dict_type:
                    ch = pa.DictionaryArray.from_arrays(ch.indices.cast(pa.int32()),
                                                        ch.dictionary.cast(pa.large_string()))
            else:
                ch = pc.dictionary_encode(ch.cast(pa.large_string()))
                if ch.type != dict_type:
                    ch = pa.DictionaryArray.from_arrays(ch.indices.cast(pa.int32()), ch.dictionary)
            chunks.append(ch)
    if not chunks:
        return [np.zeros(n, dtype=np.int32) for n in lens], pa.array([], type=pa.large_string())
    enc = pa.chunked_array(chunks, type=dict_type).unify_dictionaries()
    dictionary = enc.chunk(0).dictionary
    indices = pa.chunked_array([ch.indices for ch in enc.chunks], type=pa.int32())
    codes = _numpy(indices.fill_null(-1), np.int32)
    blank = _blank_or_null(pa.chunked_array([dictionary]))
    if blank.any() or sort:
        keep = np.flatnonzero(~blank)
        kept = dictionary.take(pa.array(keep))
        if sort:
            order = np.asarray(pc.sort_indices(kept).to_numpy(), dtype=np.int64)
            keep, kept = keep[order], kept.take(pa.array(order))
        remap = np.full(len(dictionary) + 1, -1, dtype=np.int32)  # last slot: null (-1)
        remap[keep] = np.arange(len(keep), dtype=np.int32)
        codes = remap[codes]
        dictionary = kept
    out, at = [], 0
    for n in lens:
        out.append(codes[at:at + n])
        at += n
    return out, dictionary


def _enum_codes(a: pa.Array | pa.ChunkedArray, levels: tuple[str, ...]) -> np.ndarray:
    """Codes of an enum column into ``levels`` (-1 for null)."""
    pos = pc.index_in(_chunked(a).cast(pa.large_string()), value_set=pa.array(list(levels), type=pa.large_string()))
    return _numpy(pos.fill_null(-1), np.int64)


@dataclass
class _Keys:
    """A unique-id column prepared for joins: a sorted fixed-width view when the ids allow one.

    Ids of one width sorted in file order (auto-increment ids) are joined by binary
    search, on uint64 keys when what follows their common prefix fits 8 bytes;
    other ids through a hash table. When what follows the prefix is decimal digits
    counting up by one from row to row (an auto-increment key with no gap), a
    reference's row is its number minus the first row's: no search at all.
    """

    ids: pa.ChunkedArray
    fixed: np.ndarray | None  # S{w} ids, strictly increasing (None: hash joins)
    packed: np.ndarray | None  # uint64 keys in the same order
    prefix: bytes = b""
    width: int = 0
    first: int | None = None  # the number after the prefix of row 0, when row i holds first + i

    @classmethod
    def of(cls, ids: pa.Array | pa.ChunkedArray) -> _Keys:
        a = _chunked(ids).cast(pa.large_string())
        views = [_fixed_width(c) for c in a.chunks if len(c)]
        widths = {v.dtype.itemsize for v in views if v is not None}
        if any(v is None for v in views) or len(widths) > 1:
            return cls(a, None, None)
        if not views:
            return cls(a, np.zeros(0, dtype="S1"), None)
        w = widths.pop()
        lo, hi = bytes(views[0][0]), bytes(views[-1][-1])
        k = 0
        while k < min(len(lo), len(hi)) and lo[k] == hi[k]:
            k += 1
        prefix = lo[:k]  # if sorted, every id lies between the first and the last, so shares it
        if w - k <= 8:
            # sorted ids <=> all share the prefix and their packed suffixes strictly increase
            # (comparing uint64 keys, not the strings)
            if not all(bool((v.view(np.uint8)[j::w] == prefix[j]).all()) for v in views for j in range(k)):
                return cls(a, None, None)  # (byte by byte: a strided 1-d compare is the fast one)
            packed = np.concatenate([_pack(v, k) for v in views])
            if len(packed) > 1 and not bool((packed[1:] > packed[:-1]).all()):
                return cls(a, None, None)
            first = None
            if w > k and _all_digits(packed, w - k):
                # digit strings of one width sort as their numbers do: strictly increasing numbers whose
                # last is the first plus n - 1 are every number in between, one per row
                lo_n, hi_n = _decimal(views[0][:1], k)[0][0], _decimal(views[-1][-1:], k)[0][0]
                if int(hi_n) - int(lo_n) == len(packed) - 1:
                    first = int(lo_n)
            return cls(a, np.zeros(0, dtype=f"S{w}"), packed, prefix, w, first)
        ordered = all(len(v) < 2 or bool((v[1:] > v[:-1]).all()) for v in views)
        ordered = ordered and all(bytes(x[-1]) < bytes(y[0]) for x, y in zip(views, views[1:]))
        if not ordered:
            return cls(a, None, None)
        return cls(a, np.concatenate(views), None, prefix, w)

    def rows(self, refs: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Row of each reference (-1: not found)."""
        if self.fixed is not None:
            w = self.width
            ref = _fixed_width(refs, width=w) if w else None
            if ref is None and not len(self.ids):
                return np.full(len(refs), -1, dtype=np.int64)
            if ref is not None and self.first is not None:
                num, has = _decimal(ref, len(self.prefix))
                has &= self._has_prefix(ref)
                pos = num - self.first
                has &= (pos >= 0) & (pos < len(self.packed))  # type: ignore[arg-type]
                return np.where(has, pos, -1)
            if ref is not None:
                if self.packed is not None:
                    has = self._has_prefix(ref)
                    hay, needle = self.packed, _pack(ref, len(self.prefix))
                else:
                    has, hay, needle = np.ones(len(ref), dtype=bool), self.fixed, ref
                # a sorted merge: needles in order walk the sorted keys once (random needles miss the cache)
                order = np.argsort(needle)  # (equal needles find the same row: any order of them will do)
                pos = np.empty(len(needle), dtype=np.int64)
                pos[order] = np.searchsorted(hay, needle[order])
                np.minimum(pos, len(hay) - 1, out=pos)
                return np.where(has & (hay[pos] == needle), pos, -1).astype(np.int64)
        idx = pc.index_in(_chunked(refs).cast(pa.large_string()), value_set=self.ids.combine_chunks())
        return np.asarray(idx.fill_null(-1).to_numpy(), dtype=np.int64)

    def _has_prefix(self, ref: np.ndarray) -> np.ndarray:
        """Whether each fixed-width reference starts with the ids' common prefix."""
        if not self.prefix:
            return np.ones(len(ref), dtype=bool)
        head = ref.view(np.uint8).reshape(-1, self.width)[:, :len(self.prefix)]
        return (head == np.frombuffer(self.prefix, dtype=np.uint8)).all(axis=1)

    def duplicated(self) -> np.ndarray:
        """Every copy of a duplicated non-null id."""
        n = len(self.ids)
        if self.fixed is not None or n < 2:
            return np.zeros(n, dtype=bool)  # strictly increasing: unique
        first = np.asarray(pc.index_in(self.ids, value_set=self.ids.combine_chunks()).fill_null(-1).to_numpy(),
                           dtype=np.int64)
        counts = np.bincount(first[first >= 0], minlength=n)
        return (first >= 0) & (counts[np.maximum(first, 0)] > 1)


def _pack(fixed: np.ndarray, skip: int) -> np.ndarray:
    """Big-endian uint64 of the bytes after ``skip`` (at most 8, in its low bytes): same order as the strings."""
    w = fixed.dtype.itemsize
    n = w - skip
    if w >= 8 and len(fixed) and fixed.flags.c_contiguous:
        # the last 8 bytes of each row, read in place as big-endian (one gather-and-swap pass), keeping
        # the low n bytes: the suffix after ``skip``
        tail = np.ndarray((len(fixed),), dtype=">u8", buffer=fixed.view(np.uint8), offset=w - 8, strides=(w,))
        out = tail.astype(np.uint64)
        if n < 8:
            out &= np.uint64((1 << (8 * n)) - 1)
        return out
    raw = fixed.view(np.uint8).reshape(-1, w)[:, skip:]
    buf = np.zeros((len(fixed), 8), dtype=np.uint8)
    buf[:, 8 - n:] = raw  # the low n bytes, as read in place above
    return buf.view(">u8").reshape(-1).astype(np.uint64)


_DIGIT_KEYS_STEP = 1 << 20  # keys per step of _all_digits


def _all_digits(packed: np.ndarray, n: int) -> bool:
    """Whether the low ``n`` bytes (1 to 8) of every packed key are ASCII digits (SWAR: 0x30-0x39)."""
    mask = (1 << (8 * n)) - 1
    hi, lo = np.uint64(0xF0F0F0F0F0F0F0F0 & mask), np.uint64(0x0F0F0F0F0F0F0F0F & mask)
    three, six = np.uint64(0x3030303030303030 & mask), np.uint64(0x0606060606060606 & mask)
    # high nibble 3 in each byte, and low nibble + 6 not carrying into the high nibble (low nibble <= 9);
    # a million keys at a time: the temporaries of 40M keys at once were 640 MB, and the read's peak rose
    for a in range(0, len(packed), _DIGIT_KEYS_STEP):
        part = packed[a:a + _DIGIT_KEYS_STEP]
        if not bool(((part & hi) == three).all()) or bool((((part & lo) + six) & hi).any()):
            return False
    return True


def _decimal(fixed: np.ndarray, skip: int) -> tuple[np.ndarray, np.ndarray]:
    """The number written by the bytes after ``skip`` of each row (at most 18 of them), and whether
    they are all ASCII digits (the number is meaningless where not)."""
    w = fixed.dtype.itemsize
    raw = fixed.view(np.uint8).reshape(-1, w)
    num = np.zeros(len(fixed), dtype=np.int64)
    ok = np.ones(len(fixed), dtype=bool)
    for j in range(skip, w):
        d = raw[:, j] - np.uint8(48)  # (uint8: bytes below "0" wrap past 9)
        ok &= d < 10
        num *= 10
        num += d
    return num, ok


def _fixed_width(a: pa.Array | pa.ChunkedArray, width: int | None = None) -> np.ndarray | None:
    """A zero-copy ``S{width}`` view of a string column whose values all have ``width`` bytes.

    ``None`` when lengths differ, there are nulls, or (with ``width``) the width is another.
    """
    a = _chunked(a).cast(pa.large_string()).combine_chunks()
    if a.null_count:
        return None
    if len(a) == 0:
        return np.zeros(0, dtype=f"S{width or 1}")
    mm = pc.min_max(pc.binary_length(a)).as_py()
    w = int(mm["min"])
    if w == 0 or mm["max"] != w or (width is not None and w != width):
        return None
    off = np.frombuffer(a.buffers()[1], dtype=np.int64)[a.offset:a.offset + len(a) + 1]
    data = np.frombuffer(a.buffers()[2], dtype=np.uint8)[off[0]:off[-1]]
    return data.view(f"S{w}")


# --------------------------------------------------------------------------- reading
class _Columns:
    """Columns of one table as Arrow arrays (all input rows), read on demand and not kept."""

    def __init__(self, name: str, frame: pd.DataFrame | None = None, dataset: Any = None) -> None:
        self.name = name
        self.frame = frame
        self.dataset = dataset
        if frame is not None:
            self.names = [str(c) for c in frame.columns]
            self.n = len(frame)
        elif dataset is not None:
            self.names = list(dataset.schema.names)
            self.n = dataset.count_rows()
        else:
            self.names, self.n = [], 0

    def has(self, col: str) -> bool:
        return col in self.names

    def type(self, col: str) -> pa.DataType:
        if self.dataset is not None:
            return self.dataset.schema.field(col).type
        return pa.array(self.frame[col].iloc[:0]).type if self.frame is not None else pa.null()

    def get(self, col: str, *, threads: bool = True, dictionary: bool = False,
            where: _TimeFilter | None = None) -> pa.ChunkedArray:
        """One column (``dictionary``: a string column as Parquet's dictionaries, no per-row strings;
        ``where``: the rows of a time window, for a Parquet dataset only)."""
        if self.dataset is not None:
            return self.scan([col], where=where, dictionary=[col] if dictionary else (), threads=threads).column(0)
        if where is not None:
            raise ValueError("a filter needs a Parquet dataset")
        assert self.frame is not None
        return _chunked(pa.array(self.frame[col], from_pandas=True))

    def scan(self, cols: Sequence[str], *, where: _TimeFilter | None = None, dictionary: Sequence[str] = (),
             threads: bool = True) -> pa.Table:
        """Columns of the Parquet dataset in one scan (``where``: only the rows of a time window,
        evaluated once for all columns; ``dictionary``: string columns kept as Parquet's dictionaries)."""
        import pyarrow.dataset as ds

        source = self.dataset
        if dictionary:
            fmt = ds.ParquetFileFormat(read_options=ds.ParquetReadOptions(dictionary_columns=list(dictionary)))
            schema = self.dataset.schema
            for col in dictionary:
                f = schema.field(col)
                if pa.types.is_string(f.type) or pa.types.is_large_string(f.type):
                    # the dataset's schema must say dictionary too, or the scan casts the
                    # dictionaries back to strings (and every row is hashed again)
                    schema = schema.set(schema.get_field_index(col),
                                        pa.field(col, pa.dictionary(pa.int32(), f.type), f.nullable))
            source = ds.dataset(self.dataset.files, format=fmt, schema=schema)
        if where is None:
            return source.to_table(columns=list(cols), use_threads=threads)
        # Row groups whose statistics rule the window out are skipped; in the others the rows are masked
        # in NumPy on the time columns' int64 buffers, not by the scan's expression filter: the same rows,
        # in half the time (0.40 against 0.78 s on 10M orders and three OR'ed ranges).
        expr = where.expression(self.dataset.schema)
        frags = [f.subset(filter=expr) for f in source.get_fragments()]
        kept = [f for f in frags if f.num_row_groups]
        need = list(dict.fromkeys([*cols, *where.columns]))
        scanner = ds.FileSystemDataset(kept, source.schema, source.format, source.filesystem).scanner(
            columns=need, use_threads=threads)
        batches = [b.filter(pa.array(where.mask(b))).select(list(cols)) for b in scanner.to_batches()]
        schema = pa.schema([scanner.projected_schema.field(c) for c in cols])
        return pa.Table.from_batches(batches, schema=schema)


class _Scanned:
    """The columns of one filtered scan of a Parquet table, served like :class:`_Columns` (``n``, ``has``, ``get``)."""

    def __init__(self, c: _Columns, cols: Sequence[str], where: Any, dictionary: Sequence[str], threads: bool) -> None:
        present = [x for x in cols if c.has(x)]
        self.name = c.name
        self.table = c.scan(present, where=where, dictionary=[x for x in dictionary if x in present], threads=threads)
        self.n = self.table.num_rows

    def has(self, col: str) -> bool:
        return col in self.table.column_names

    def get(self, col: str, *, threads: bool = True, dictionary: bool = False) -> pa.ChunkedArray:
        return self.table.column(col)


def _dataset(path: Path) -> Any:
    import pyarrow.dataset as ds

    return ds.dataset(str(path), format="parquet")


def _parquet_tables(folder: Path) -> dict[str, _Columns] | None:
    """The folder's tables as Parquet datasets, or ``None`` when a table is not Parquet."""
    out: dict[str, _Columns] = {}
    for name in TABLES:
        cands = [p for p in (folder / f"{name}.parquet", folder / name) if p.exists()]
        others = [p for p in (folder / f"{name}.csv", folder / f"{name}.csv.gz") if p.exists()]
        if others or len(cands) > 1:
            return None
        if not cands:
            if name in REQUIRED_TABLES:
                return None
            continue
        p = cands[0]
        if p.is_dir() and not any(p.glob("**/*.parquet")):
            return None
        try:
            out[name] = _Columns(name, dataset=_dataset(p))
        except (OSError, ValueError, pa.ArrowInvalid):
            return None
    return out


_ACCEPTED: dict[str, Any] = {
    "id": lambda t: pa.types.is_string(t) or pa.types.is_large_string(t),
    "str": lambda t: pa.types.is_string(t) or pa.types.is_large_string(t),
    "enum": lambda t: pa.types.is_string(t) or pa.types.is_large_string(t),
    "ts": lambda t: pa.types.is_timestamp(t) and t.unit == "ns",
    "float": lambda t: pa.types.is_floating(t),
    "int": lambda t: pa.types.is_integer(t) or pa.types.is_floating(t),
    "bool": lambda t: pa.types.is_boolean(t),
    "nullable_bool": lambda t: pa.types.is_boolean(t),
}


def _fast_path_types(cols: dict[str, _Columns]) -> bool:
    """Whether every present contract column has a type the Arrow screens handle."""
    for name, c in cols.items():
        for spec in SCHEMAS[name]:
            if c.has(spec.name) and not _ACCEPTED[spec.kind](c.type(spec.name)):
                return False
            if not c.has(spec.name) and spec.present:
                return False
    return True


def read_source(folder: str | Path, *, threads: int = 1) -> SourceTables:
    """Read a data folder, validate it (quarantine) and integer-code the clean rows.

    Parquet folders with the contract's column types take the screened path (module
    docstring); anything else is loaded whole and validated by
    :func:`refundguard.tables.validate`.

    Parameters
    ----------
    folder
        A data folder (see :func:`refundguard.tables.load_tables`).
    threads
        Threads for reading and coding columns.

    Raises
    ------
    SchemaError
        A required table or column is missing, or a table cannot be read.
    """
    import time

    t0 = time.perf_counter()
    path = Path(folder)
    if not path.is_dir():
        raise SchemaError(f"Data folder {str(path)!r} does not exist.", rule="missing_folder")
    cols = _parquet_tables(path)
    if cols is not None and _fast_path_types(cols):
        return _read_parquet_screened(cols, threads, t0)
    raw = load_tables(path)
    out = code_tables(raw, validate_tables=True, threads=threads)
    out.timings["read"] = out.timings.get("read", 0.0) + time.perf_counter() - t0 - sum(out.timings.values())
    return out


def code_tables(data: Mapping[str, pd.DataFrame], *, validate_tables: bool = True,
                canonical: Any = None, threads: int = 1) -> SourceTables:
    """Validate tables in memory (quarantine) and integer-code the clean rows.

    Parameters
    ----------
    data
        ``{name: DataFrame}``.
    validate_tables
        Validate with :func:`refundguard.tables.validate` in quarantine mode;
        ``False`` only for tables that are ``validate`` output already.
    canonical
        ``canonical(tables, validate_tables)`` applied to the clean tables
        (:func:`refundguard.pipeline.canonical_tables`); ``None`` skips it.
    threads
        Threads for coding columns.
    """
    import time

    t0 = time.perf_counter()
    raw = load_tables(data)  # checks table names and presence
    if validate_tables:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RejectedRowsWarning)
            clean, rejects = validate(raw, mode="quarantine")
        if len(rejects):
            per_table = rejects.groupby("table", sort=False)["row_index"].nunique()
            warnings.warn("validate rejected " + ", ".join(f"{n} {t} rows" for t, n in per_table.items())
                          + "; they are not decided (see the rejects table)", RejectedRowsWarning, stacklevel=3)
    else:
        clean, rejects = raw, empty_rejects()
    if canonical is not None:
        clean = canonical(clean, False)
    rows_in = {name: len(raw[name]) if name in raw else 0 for name in TABLES}
    rejected_req = _rejected_requested(raw.get("refunds"), rejects)
    t1 = time.perf_counter()
    columns = {name: _Columns(name, frame=clean[name]) for name in TABLES if name in clean}
    out = _code(columns, None, threads)
    out.rejects, out.rows_in, out.rejected_refund_requested = rejects, rows_in, rejected_req
    out.timings = {"validate": t1 - t0, "index": time.perf_counter() - t1}
    return out


def empty_rejects() -> pd.DataFrame:
    """An empty rejects table with the contract's columns and dtypes."""
    return pd.DataFrame({c: pd.Series(dtype="int64" if c == "row_index" else "str") for c in REJECT_COLUMNS})


def _rejected_requested(refunds: pd.DataFrame | None, rejects: pd.DataFrame) -> np.ndarray:
    """``requested_at`` (ns, ``NAT`` when unreadable) of the rejected refund rows of the input."""
    rows = np.unique(rejects.loc[rejects["table"] == "refunds", "row_index"].to_numpy(dtype=np.int64)) \
        if len(rejects) else np.zeros(0, dtype=np.int64)
    if refunds is None or not len(rows) or "requested_at" not in refunds.columns:
        return np.full(len(rows), NAT, dtype=np.int64)
    raw = refunds["requested_at"].iloc[rows]
    if isinstance(raw.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(raw.dtype):
        ts = pd.to_datetime(raw, utc=True)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ts = pd.to_datetime(raw.astype(object).where(raw.map(lambda v: isinstance(v, str)), None),
                                utc=True, errors="coerce", format="ISO8601")
    return np.asarray(ts.dt.as_unit("ns").array.asi8, dtype=np.int64)


# --------------------------------------------------------------------------- coding
def _code(cols: dict[str, _Columns], keep: dict[str, np.ndarray] | None, threads: int) -> SourceTables:
    """Integer-code the clean rows (``keep``: clean-row masks per table; ``None``: all rows)."""

    def get(table: str, col: str) -> pa.ChunkedArray:
        a = cols[table].get(col, threads=threads > 1)
        k = None if keep is None else keep.get(table)
        return a.filter(pa.array(k)) if k is not None and not k.all() else a

    def n_rows(table: str) -> int:
        if table not in cols:
            return 0
        k = None if keep is None else keep.get(table)
        return int(k.sum()) if k is not None else cols[table].n

    def has(table: str, col: str) -> bool:
        return table in cols and cols[table].has(col)

    n_o, n_r = n_rows("orders"), n_rows("refunds")
    n_v, n_s = n_rows("reviews"), n_rows("service")
    orders: dict[str, np.ndarray] = {}
    refunds: dict[str, np.ndarray] = {}
    reviews: dict[str, np.ndarray] = {}
    service: dict[str, np.ndarray] = {}
    extra: dict[str, Any] = {}

    def ts_or_nat(table: str, col: str, n: int) -> np.ndarray:
        return _ns(get(table, col)) if has(table, col) else np.full(n, NAT, dtype=np.int64)

    def job_order_ids() -> None:
        keys = _Keys.of(get("orders", "order_id"))
        refunds["order"] = keys.rows(get("refunds", "order_id"))
        reviews["order"] = keys.rows(get("reviews", "order_id")) if n_v else np.zeros(0, dtype=np.int64)

    def job_buyer() -> None:
        (codes,), extra["buyer_ids"] = _encode(get("orders", "buyer_id"))
        orders["buyer"] = codes

    def job_store() -> None:
        srv = get("service", "store_id") if n_s else pa.chunked_array([], type=pa.large_string())
        (o_codes, s_codes), extra["store_ids"] = _encode(get("orders", "store_id"), srv)
        orders["store"], service["store"] = o_codes, s_codes

    def job_link(col: str, key: str) -> None:
        if has("orders", col):
            (codes,), d = _encode(get("orders", col))
        else:
            codes, d = np.full(n_o, -1, dtype=np.int64), pa.array([], type=pa.large_string())
        orders[key] = codes
        extra[key] = len(d)

    def job_category() -> None:
        (codes,), d = _encode(get("orders", "category"), sort=True)
        orders["category"] = codes.astype(np.int16 if len(d) < 2**15 else np.int32)
        extra["categories"] = d.to_pylist()

    def job_order_times() -> None:
        orders["paid_at"] = ts_or_nat("orders", "paid_at", n_o)
        ship_by = ts_or_nat("orders", "ship_by", n_o)
        orders["ship_by"] = np.where(ship_by == NAT, orders["paid_at"] + _SHIP_BY_DEFAULT_NS, ship_by)
        orders["shipped_at"] = ts_or_nat("orders", "shipped_at", n_o)
        orders["delivered_at"] = ts_or_nat("orders", "delivered_at", n_o)
        orders["amount"] = _f64(get("orders", "amount"))

    def job_refunds() -> None:
        refunds["requested_at"] = _ns(get("refunds", "requested_at"))
        refunds["resolved_at"] = ts_or_nat("refunds", "resolved_at", n_r)
        esc_at = ts_or_nat("refunds", "escalated_at", n_r)
        refunds["escalation_known"] = np.where(esc_at != NAT, esc_at, refunds["resolved_at"])
        refunds["amount"] = _f64(get("refunds", "amount"))
        refunds["kind"] = _enum_codes(get("refunds", "kind"), KINDS).astype(np.int8)
        refunds["reason"] = _enum_codes(get("refunds", "reason"), REASONS).astype(np.int8)
        refunds["outcome"] = _enum_codes(get("refunds", "outcome"), OUTCOMES).astype(np.int8)
        if has("refunds", "escalated"):
            refunds["escalated"] = np.asarray(get("refunds", "escalated").fill_null(False).to_numpy(), dtype=bool)
        else:
            refunds["escalated"] = np.zeros(n_r, dtype=bool)
        if has("refunds", "is_abuse"):
            ab = get("refunds", "is_abuse").cast(pa.int8()).fill_null(-1).to_numpy()
            refunds["is_abuse"] = np.asarray(ab, dtype=np.int8)
        else:
            refunds["is_abuse"] = np.full(n_r, -1, dtype=np.int8)
        extra["refund_ids"] = get("refunds", "refund_id").cast(pa.large_string()).combine_chunks()

    def job_reviews_service() -> None:
        reviews["created_at"] = ts_or_nat("reviews", "created_at", n_v)
        reviews["rating"] = _f64(get("reviews", "rating")) if n_v else np.zeros(0)
        service["started_at"] = ts_or_nat("service", "started_at", n_s)
        service["first_response_s"] = _f64(get("service", "first_response_s")) if n_s else np.zeros(0)

    jobs = [job_order_ids, job_buyer, job_store, lambda: job_link("device_id", "device"),
            lambda: job_link("address_id", "address"), job_category, job_order_times, job_refunds,
            job_reviews_service]
    if threads > 1:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            for f in [pool.submit(j) for j in jobs]:
                f.result()
    else:
        for j in jobs:
            j()
    if not n_s:
        service["store"] = np.zeros(0, dtype=np.int64)
    return SourceTables(
        orders=orders, refunds=refunds, reviews=reviews, service=service,
        refund_ids=extra["refund_ids"], buyer_ids=extra["buyer_ids"], store_ids=extra["store_ids"],
        categories=list(extra["categories"]), n_devices=int(extra["device"]), n_addresses=int(extra["address"]),
        rejects=pd.DataFrame(), rows_in={}, rejected_refund_requested=np.zeros(0, dtype=np.int64),
    )


def _read_parquet_screened(cols: dict[str, _Columns], threads: int, t0: float) -> SourceTables:
    """Parquet fast path: read each column once, screen and code every row, validate the suspects.

    Every column is coded for all input rows while its screens run; the rows that
    may break a rule (with the orders and sibling refunds their rules read) are then
    read back whole and validated by :func:`refundguard.tables.validate`, and the
    coded arrays keep the rows it does not reject.
    """
    import time

    if "service" not in cols:
        cols["service"] = _Columns("service")
    n = {name: cols[name].n for name in TABLES}
    use_threads = threads > 1

    def get(table: str, col: str, dictionary: bool = False) -> pa.ChunkedArray:
        return cols[table].get(col, threads=use_threads, dictionary=dictionary)

    def has(table: str, col: str) -> bool:
        return cols[table].has(col)

    def ts_or_nat(table: str, col: str) -> tuple[np.ndarray, np.ndarray]:
        """(ns, null mask) of a timestamp column (absent: all null)."""
        if not has(table, col):
            return np.full(n[table], NAT, dtype=np.int64), np.ones(n[table], dtype=bool)
        v = _ns(get(table, col))
        null = v == NAT
        # outside the contract's range: a suspect (validate names the rule, "range")
        flag(table, ~null & ((v < MIN_INSTANT_NS) | (v >= MAX_INSTANT_NS)))
        return v, null

    susp = {name: np.zeros(n[name], dtype=bool) for name in TABLES}
    orders: dict[str, np.ndarray] = {}
    refunds: dict[str, np.ndarray] = {}
    reviews: dict[str, np.ndarray] = {}
    service: dict[str, np.ndarray] = {}
    extra: dict[str, Any] = {}
    lock = __import__("threading").Lock()

    def flag(table: str, mask: np.ndarray) -> None:
        with lock:
            susp[table] |= mask

    def ids_screen(table: str, col: str) -> _Keys:
        """Flag null, blank and duplicated ids of a unique id column; return its join keys."""
        keys = _Keys.of(get(table, col))
        flag(table, _blank_null_or_padded(keys.ids))
        flag(table, keys.duplicated())
        return keys

    def job_orders_ids() -> None:
        keys = ids_screen("orders", "order_id")
        r_oid = get("refunds", "order_id")
        v_oid = get("reviews", "order_id") if n["reviews"] else pa.chunked_array([], type=pa.large_string())
        flag("refunds", _blank_null_or_padded(r_oid))
        flag("reviews", _blank_null_or_padded(v_oid))
        refunds["order"] = keys.rows(r_oid) if n["refunds"] else np.zeros(0, dtype=np.int64)
        reviews["order"] = keys.rows(v_oid) if n["reviews"] else np.zeros(0, dtype=np.int64)
        flag("refunds", refunds["order"] < 0)
        flag("reviews", reviews["order"] < 0)

    def job_refund_ids() -> None:
        extra["refund_ids"] = ids_screen("refunds", "refund_id").ids.combine_chunks()

    def coded(table: str, col: str, required: bool, *more: pa.ChunkedArray, sort: bool = False
              ) -> tuple[list[np.ndarray], pa.Array]:
        codes, d = _encode(get(table, col, dictionary=True), *more, sort=sort)
        if required:
            flag(table, codes[0] < 0)  # null or blank
        padded = np.flatnonzero(_padded(d))
        if len(padded):  # "s1 " and "s1" would be two keys: validate names the rule (id_whitespace)
            flag(table, np.isin(codes[0], padded))
            if more and table == "orders" and col == "store_id":
                flag("service", np.isin(codes[1], padded))
        return codes, d

    def job_buyer() -> None:
        (orders["buyer"],), extra["buyer_ids"] = coded("orders", "buyer_id", True)

    def job_store() -> None:
        srv = get("service", "store_id", True) if n["service"] else pa.chunked_array([], type=pa.large_string())
        (o_codes, s_codes), extra["store_ids"] = coded("orders", "store_id", True, srv)
        orders["store"], service["store"] = o_codes, s_codes
        flag("service", s_codes < 0)

    def job_link(col: str, key: str) -> None:
        if has("orders", col):
            (codes,), d = coded("orders", col, False)
        else:
            codes, d = np.full(n["orders"], -1, dtype=np.int64), pa.array([], type=pa.large_string())
        orders[key] = codes
        extra[key] = len(d)

    def job_category() -> None:
        (codes,), d = coded("orders", "category", True, sort=True)
        orders["category"] = codes.astype(np.int16 if len(d) < 2**15 else np.int32)
        extra["categories"] = d.to_pylist()

    def job_order_values() -> None:
        paid, paid_null = ts_or_nat("orders", "paid_at")
        ship_by, ship_by_null = ts_or_nat("orders", "ship_by")
        shipped, shipped_null = ts_or_nat("orders", "shipped_at")
        deliv, deliv_null = ts_or_nat("orders", "delivered_at")
        amount = _f64(get("orders", "amount"))
        with np.errstate(invalid="ignore"):
            bad_amount = ~(np.isfinite(amount) & (amount >= 0) & (amount <= MAX_AMOUNT))
        flag("orders", paid_null | bad_amount
             | (~ship_by_null & ~paid_null & (ship_by < paid))
             | (~shipped_null & ~paid_null & (shipped < paid))
             | (~deliv_null & ~shipped_null & (deliv < shipped))
             | (~deliv_null & shipped_null))
        orders["paid_at"] = paid
        orders["ship_by"] = np.where(ship_by_null, paid + _SHIP_BY_DEFAULT_NS, ship_by)
        orders["shipped_at"], orders["delivered_at"], orders["amount"] = shipped, deliv, amount

    def job_refund_values() -> None:
        req, req_null = ts_or_nat("refunds", "requested_at")
        res, res_null = ts_or_nat("refunds", "resolved_at")
        esc_at, esc_null = ts_or_nat("refunds", "escalated_at")
        amount = _f64(get("refunds", "amount"))
        kind_raw, reason_raw = get("refunds", "kind"), get("refunds", "reason")
        out_raw = get("refunds", "outcome")
        kind = _enum_codes(kind_raw, KINDS)
        reason = _enum_codes(reason_raw, REASONS)
        outcome = _enum_codes(out_raw, OUTCOMES)
        outcome_null = _blank_or_null(out_raw)
        with np.errstate(invalid="ignore"):
            bad_amount = ~(np.isfinite(amount) & (amount > 0) & (amount <= MAX_AMOUNT))
        bad = req_null | bad_amount | (kind < 0) | (reason < 0) | ((outcome < 0) & ~outcome_null)
        bad |= ~res_null & ~req_null & (res < req)
        bad |= ~esc_null & ~req_null & (esc_at < req)
        bad |= res_null != outcome_null
        if has("refunds", "escalated"):
            esc = get("refunds", "escalated")
            bad |= np.asarray(esc.is_null().to_numpy(), dtype=bool)
            refunds["escalated"] = np.asarray(esc.fill_null(False).to_numpy(), dtype=bool)
        else:
            refunds["escalated"] = np.zeros(n["refunds"], dtype=bool)
        if has("refunds", "is_abuse"):
            refunds["is_abuse"] = np.asarray(get("refunds", "is_abuse").cast(pa.int8()).fill_null(-1).to_numpy(),
                                             dtype=np.int8)
        else:
            refunds["is_abuse"] = np.full(n["refunds"], -1, dtype=np.int8)
        flag("refunds", bad)
        refunds["requested_at"], refunds["resolved_at"] = req, res
        refunds["escalation_known"] = np.where(esc_null, res, esc_at)
        refunds["amount"] = amount
        refunds["kind"], refunds["reason"] = kind.astype(np.int8), reason.astype(np.int8)
        refunds["outcome"] = outcome.astype(np.int8)

    def job_reviews_service() -> None:
        created, created_null = ts_or_nat("reviews", "created_at")
        rating = _f64(get("reviews", "rating")) if n["reviews"] else np.zeros(0)
        with np.errstate(invalid="ignore"):
            flag("reviews", created_null | ~np.isfinite(rating) | (rating != np.floor(rating)) | (rating < 1)
                 | (rating > 5))
        reviews["created_at"], reviews["rating"] = created, rating
        started, started_null = ts_or_nat("service", "started_at")
        resp = _f64(get("service", "first_response_s")) if n["service"] else np.zeros(0)
        with np.errstate(invalid="ignore"):
            flag("service", started_null | ~(np.isfinite(resp) & (resp >= 0)))
        service["started_at"], service["first_response_s"] = started, resp

    # longest first, so that the threads end together (at 10M orders, one thread: order values 2.2 s, order
    # ids 1.8 s, stores 0.65 s, refund values 0.5 s, buyers, devices, addresses 0.35-0.4 s, the rest less);
    # each job writes its own columns and ORs its flags, so the order changes nothing else
    jobs = [job_order_values, job_orders_ids, job_store, job_refund_values, lambda: job_link("device_id", "device"),
            job_buyer, lambda: job_link("address_id", "address"), job_category, job_reviews_service,
            job_refund_ids]
    if use_threads:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            for f in [pool.submit(j) for j in jobs]:
                f.result()
    else:
        for j in jobs:
            j()
    if not n["service"]:
        service["store"] = np.zeros(0, dtype=np.int64)
    t1 = time.perf_counter()

    # rules across rows: a refund's or review's order, its time, the refunds' sum per order
    r_order, v_order = refunds["order"], reviews["order"]
    paid = orders["paid_at"]
    r_ok = r_order >= 0
    susp["refunds"] |= r_ok & susp["orders"][np.maximum(r_order, 0)]
    susp["refunds"] |= r_ok & (refunds["requested_at"] < paid[np.maximum(r_order, 0)])
    v_ok = v_order >= 0
    susp["reviews"] |= v_ok & susp["orders"][np.maximum(v_order, 0)]
    susp["reviews"] |= v_ok & (reviews["created_at"] < paid[np.maximum(v_order, 0)])
    if n["refunds"]:
        # summed over the refunded orders only (not an order-sized array: that took 0.7 s at 10M orders);
        # each order's sum adds its refunds in row order, as a bincount over all orders would
        amount = refunds["amount"]
        counted = r_ok & np.isfinite(amount) & (amount > 0)
        refunded, inv = np.unique(np.maximum(r_order, 0), return_inverse=True)
        total = np.bincount(inv[counted], weights=amount[counted], minlength=len(refunded))
        over = total > orders["amount"][refunded] + 0.01 - 1e-6 * np.maximum(1.0, np.abs(total))
        susp["refunds"] |= r_ok & over[inv]

    rejects = _validate_suspects(cols, susp, r_order, v_order)
    rejected = {name: np.zeros(n[name], dtype=bool) for name in TABLES}
    for name in TABLES:
        rows = rejects.loc[rejects["table"] == name, "row_index"].to_numpy(dtype=np.int64) if len(rejects) else []
        rejected[name][rows] = True
    rejected_req = refunds["requested_at"][rejected["refunds"]] if n["refunds"] else np.zeros(0, dtype=np.int64)
    t2 = time.perf_counter()

    # keep the clean rows; a refund's or review's order row is renumbered among clean orders
    keep = {name: ~rejected[name] for name in TABLES}
    for name, table in (("orders", orders), ("refunds", refunds), ("reviews", reviews), ("service", service)):
        if not keep[name].all():
            for k in list(table):
                table[k] = table[k][keep[name]]
    if not keep["orders"].all():  # (nothing to renumber when every order is clean)
        new_row = np.cumsum(keep["orders"]) - 1
        refunds["order"] = new_row[refunds["order"]] if len(refunds["order"]) else refunds["order"]
        reviews["order"] = new_row[reviews["order"]] if len(reviews["order"]) else reviews["order"]
    refund_ids = extra["refund_ids"]
    if not keep["refunds"].all():
        refund_ids = refund_ids.filter(pa.array(keep["refunds"]))
    out = SourceTables(
        orders=orders, refunds=refunds, reviews=reviews, service=service,
        refund_ids=refund_ids, buyer_ids=extra["buyer_ids"], store_ids=extra["store_ids"],
        categories=list(extra["categories"]), n_devices=int(extra["device"]), n_addresses=int(extra["address"]),
        rejects=rejects, rows_in=dict(n), rejected_refund_requested=rejected_req,
    )
    # reading and coding are one pass: both are timed as "read"; validation = the screens' follow-up
    out.timings = {"read": t1 - t0, "validate": t2 - t1, "index": time.perf_counter() - t2}
    return out


#: Every character Python's ``str.strip()`` removes (``str.isspace``).
_WHITESPACE = "".join(c for c in map(chr, range(0x110000)) if c.isspace())


def _string_screens(a: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(null, empty or whitespace-only; leading or trailing whitespace) for each string, by Python's
    ``str.strip`` rule exactly, from one alphanumeric screen of the strings (a third of the cost of
    checking 10M order ids)."""
    a = _chunked(a).cast(pa.large_string())
    blank = np.asarray(a.is_null().to_numpy(), dtype=bool)
    padded = np.zeros(len(a), dtype=bool)
    if not len(a):
        return blank, padded
    # plain ASCII letters and digits are neither blank nor padded ("" is not alphanumeric): trim the others
    odd = np.flatnonzero(~np.asarray(pc.ascii_is_alnum(a).fill_null(True).to_numpy(), dtype=bool))
    if len(odd):
        sub = a.take(pa.array(odd))
        kept = pc.binary_length(pc.utf8_trim(sub, characters=_WHITESPACE))
        blank[odd[np.asarray(pc.equal(kept, 0).to_numpy(), dtype=bool)]] = True
        padded[odd[np.asarray(pc.not_equal(kept, pc.binary_length(sub)).to_numpy(), dtype=bool)]] = True
    return blank, padded


def _padded(a: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Strings with leading or trailing whitespace (``validate``'s ``id_whitespace`` rule); null -> False."""
    return _string_screens(a)[1]


def _blank_or_null(a: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Null, empty or whitespace-only strings (Python's ``str.strip`` rule, exactly)."""
    return _string_screens(a)[0]


def _blank_null_or_padded(a: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """``_blank_or_null(a) | _padded(a)`` from one screen (an id column's checks)."""
    blank, padded = _string_screens(a)
    return blank | padded


def _validate_suspects(cols: dict[str, _Columns], susp: dict[str, np.ndarray], r_order: np.ndarray,
                       v_order: np.ndarray) -> pd.DataFrame:
    """Validate the suspect rows (and the orders their rules read) with the contract's validator.

    Returns its rejects with ``row_index`` mapped back to the input rows.
    """
    r_rows = np.flatnonzero(susp["refunds"])
    v_rows = np.flatnonzero(susp["reviews"])
    o_mask = susp["orders"].copy()
    for parents in (r_order[r_rows], v_order[v_rows]):
        o_mask[parents[parents >= 0]] = True
    rows = {"orders": np.flatnonzero(o_mask), "refunds": r_rows, "reviews": v_rows,
            "service": np.flatnonzero(susp["service"])}
    if not any(len(v) for v in rows.values()):
        return empty_rejects()
    mini: dict[str, pd.DataFrame] = {}
    for name in TABLES:
        c = cols[name]
        if c.dataset is None:
            continue
        present = [spec.name for spec in SCHEMAS[name] if c.has(spec.name)]
        mini[name] = c.dataset.take(pa.array(rows[name], type=pa.int64()), columns=present).to_pandas()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RejectedRowsWarning)
        _, rejects = validate(mini, mode="quarantine")
    if len(rejects):
        mapped = rejects["row_index"].to_numpy(dtype=np.int64).copy()
        for name in TABLES:
            at = (rejects["table"] == name).to_numpy()
            if at.any():
                mapped[at] = rows[name][mapped[at]]
        rejects = rejects.assign(row_index=mapped)
    return rejects


# --------------------------------------------------------------------------- published scores
@dataclass
class PublishedScores:
    """A published daily store-score history, keyed by (store code, local day) for lookups.

    A (store, day) absent from the history is a missing score; see :meth:`lookup`.
    """

    key: np.ndarray  # sorted int64: store code * 2**32 + (day + 2**31)
    score: np.ndarray
    product: np.ndarray
    logistics: np.ndarray
    service: np.ndarray
    provisional: np.ndarray
    category: np.ndarray  # int32 codes into categories, -1 none
    categories: list[str]

    def lookup(self, store: np.ndarray, day: np.ndarray, cfg: ScoreConfig) -> pd.DataFrame:
        """The row of each (store code, day) (columns as :func:`refundguard.scores.coded_store_scores`)."""
        key = _pub_key(np.asarray(store, dtype=np.int64), np.asarray(day, dtype=np.int64))
        pos = np.searchsorted(self.key, key)
        pos = np.minimum(pos, max(len(self.key) - 1, 0))
        found = (self.key[pos] == key) & (store >= 0) if len(self.key) else np.zeros(len(key), dtype=bool)
        out = pd.DataFrame(index=pd.RangeIndex(len(key)))
        for c in ("score", "product", "logistics", "service"):
            vals = getattr(self, c)
            out[c] = np.where(found, vals[pos] if len(vals) else np.nan, np.nan)
        cats = np.asarray(self.categories + [None], dtype=object)
        cat = np.where(found, self.category[pos] if len(self.category) else -1, -1)
        out["category"] = pd.array(cats[np.where(cat >= 0, cat, len(self.categories))], dtype="str")
        out["provisional"] = np.where(found, self.provisional[pos] if len(self.provisional) else True,
                                      cfg.min_orders > 0)
        out["score_missing"] = np.isnan(out["score"].to_numpy())
        return out

    def save(self, folder: Path) -> None:
        """Write the arrays (``.npy``) and the category levels (JSON) to ``folder``."""
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("key", "score", "product", "logistics", "service", "provisional", "category"):
            np.save(folder / f"{name}.npy", getattr(self, name), allow_pickle=False)
        (folder / "categories.json").write_text(json.dumps(self.categories))

    @classmethod
    def load(cls, folder: Path) -> PublishedScores:
        """The history saved by :meth:`save`, memory-mapped."""
        kw: dict[str, Any] = {name: np.load(folder / f"{name}.npy", mmap_mode="r", allow_pickle=False)
                              for name in ("key", "score", "product", "logistics", "service", "provisional",
                                           "category")}
        kw["categories"] = json.loads((folder / "categories.json").read_text())
        return cls(**kw)


def _pub_key(store: np.ndarray, day: np.ndarray) -> np.ndarray:
    return np.asarray(store, dtype=np.int64) * (1 << 32) + (np.asarray(day, dtype=np.int64) + (1 << 31))


def read_published_scores(source: pd.DataFrame | str | Path, store_ids: pa.Array, cfg: ScoreConfig,
                          first_day: int | None = None, last_day: int | None = None) -> PublishedScores:
    """Read a published daily store-score history for lookups by store code and day.

    Parameters
    ----------
    source
        A frame or a ``.parquet`` / ``.csv`` file with the columns ``store-scores
        --history`` writes (``store_id, as_of, score, product, logistics, service,
        provisional`` and optionally ``category``); only those are read.
    store_ids
        The store dictionary the lookups use (stores outside it cannot be asked for).
    cfg
        Gives the time zone of the days.
    first_day, last_day
        Local day numbers outside which rows are not kept (``None``: keep all).

    Raises
    ------
    SchemaError
        A required column is missing or ``as_of`` does not hold dates.
    DataError
        A (store_id, as_of) pair appears twice.
    """
    need = ("store_id", "as_of", "score", "product", "logistics", "service", "provisional")
    if isinstance(source, pd.DataFrame):
        frame = source
    else:
        path = Path(source)
        if not path.exists():
            raise SchemaError(f"Store score file {str(path)!r} does not exist.", table="store_scores",
                              rule="missing_table")
        if path.suffix == ".csv" or path.name.endswith(".csv.gz"):
            frame = pd.read_csv(path)
            if "as_of" in frame.columns:
                frame["as_of"] = pd.to_datetime(frame["as_of"], format="ISO8601")
        else:
            import pyarrow.parquet as pq

            names = pq.read_schema(path).names
            frame = pq.read_table(path, columns=[c for c in (*need, "category") if c in names]).to_pandas()
    require_columns(frame, need, "store_scores")
    try:
        day = label_days(frame["as_of"], cfg.timezone)
    except Exception as exc:  # TimeValueError: not dates
        raise SchemaError(f"Column 'store_scores.as_of' must hold dates or timestamps: {exc}.",
                          table="store_scores", column="as_of", rule="type") from None
    sid = pa.array(frame["store_id"].astype("str"), type=pa.large_string(), from_pandas=True)
    (file_codes,), _ = _encode(sid)
    dup_key = _pub_key(file_codes, day)
    if len(dup_key) != len(np.unique(dup_key)):
        s = pd.Series(dup_key)
        dup = frame["store_id"][s.duplicated().to_numpy()].astype("str").head(5).tolist()
        raise DataError(f"store score history has duplicated (store_id, as_of) rows, e.g. stores {dup}.",
                        detail={"stores": dup})
    code = pc.index_in(sid, value_set=store_ids.cast(pa.large_string())).fill_null(-1).to_numpy()
    code = np.asarray(code, dtype=np.int64)
    keep = code >= 0
    if first_day is not None:
        keep &= day >= first_day
    if last_day is not None:
        keep &= day <= last_day
    key = _pub_key(code[keep], day[keep])
    order = np.argsort(key, kind="stable")
    idx = np.flatnonzero(keep)[order]
    if "category" in frame.columns:
        cat_arr = pa.array(frame["category"].astype("str").iloc[idx], type=pa.large_string(), from_pandas=True)
        (cat_codes,), cat_dict = _encode(cat_arr)
        categories = cat_dict.to_pylist()
    else:
        cat_codes, categories = np.full(len(idx), -1, dtype=np.int64), []
    prov = frame["provisional"].astype("boolean").fillna(True).to_numpy(dtype=bool)[idx]
    return PublishedScores(
        key=key[order],
        **{c: frame[c].astype("float64").to_numpy()[idx] for c in ("score", "product", "logistics", "service")},
        provisional=prov,
        category=np.asarray(cat_codes, dtype=np.int32),
        categories=categories,
    )


# --------------------------------------------------------------------------- store score inputs only
@dataclass(frozen=True)
class _TimeFilter:
    """The rows with ``lo <= col < hi`` for any of ``ranges`` (``(col, lo, hi)``, UTC ns; a null time is
    inside no range), on ``timestamp[ns]`` columns (naive means UTC: the same int64 instants).

    A scan uses it twice: as an expression, to skip the row groups whose statistics rule every
    range out, and as a NumPy mask over each batch's int64 buffers.
    """

    ranges: tuple[tuple[str, int, int], ...]

    def __or__(self, other: _TimeFilter) -> _TimeFilter:
        return _TimeFilter(self.ranges + other.ranges)

    @property
    def columns(self) -> list[str]:
        return list(dict.fromkeys(col for col, _, _ in self.ranges))

    def expression(self, schema: pa.Schema) -> Any:
        import pyarrow.dataset as ds

        out = None
        for col, lo, hi in self.ranges:
            t = schema.field(col).type
            term = (ds.field(col) >= pa.scalar(lo, type=t)) & (ds.field(col) < pa.scalar(hi, type=t))
            out = term if out is None else out | term
        return out

    def mask(self, batch: pa.RecordBatch) -> np.ndarray:
        keep = np.zeros(batch.num_rows, dtype=bool)
        for col, lo, hi in self.ranges:
            a = batch.column(col)
            ns = np.frombuffer(a.buffers()[1], dtype=np.int64, count=len(a) + a.offset)[a.offset:]
            inside = (ns >= lo) & (ns < hi)
            if a.null_count:  # (a null's slot holds any value)
                inside &= np.asarray(a.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
            keep |= inside
        return keep


def _window_filter(c: _Columns, col: str, window: tuple[int, int] | None) -> _TimeFilter | None:
    """The rows with ``lo <= col < hi`` (nulls dropped), or ``None`` (no window, not a Parquet dataset,
    or a time column that is not nanoseconds: then rows are masked after reading)."""
    if window is None or c.dataset is None or not c.has(col):
        return None
    t = c.type(col)
    if not (pa.types.is_timestamp(t) and t.unit == "ns"):
        return None
    return _TimeFilter(((col, int(window[0]), int(window[1])),))


def _orders_window_filter(o: _Columns, window: tuple[int, int] | None) -> _TimeFilter | None:
    """Every order that may be anchored in ``[lo, hi)``: paid, ship-by (``paid_at + 48 h`` when null)
    or delivered inside. ``None`` when the columns are not ns instants."""
    if window is None or o.dataset is None:
        return None
    names = ["paid_at", "delivered_at"] + (["ship_by"] if o.has("ship_by") else [])
    if not all(o.has(c) and pa.types.is_timestamp(o.type(c)) and o.type(c).unit == "ns" for c in names):
        return None
    lo, hi = int(window[0]), int(window[1])
    where = _TimeFilter((("paid_at", lo - _SHIP_BY_DEFAULT_NS, hi),  # paid or the default ship-by inside
                         ("delivered_at", lo, hi)))
    if o.has("ship_by"):
        where = where | _TimeFilter((("ship_by", lo, hi),))
    return where


def read_store_events(folder: str | Path, *, threads: int = 1, window: tuple[int, int] | None = None) -> Any:
    """Read only the store score's columns of a validated Parquet data folder, as integer codes.

    ``orders``: ``order_id, store_id, category, paid_at, ship_by, shipped_at,
    delivered_at``; ``refunds``: ``order_id, requested_at, reason, resolved_at,
    escalated`` (and ``escalated_at``); ``reviews``: ``order_id, rating, created_at``;
    ``service``: ``store_id, started_at, first_response_s``. Refunds and reviews are
    joined to their order's store by integer row, once. The data must be valid (as
    for :func:`refundguard.scores.store_scores`): rows are not validated here.

    With ``window=(lo, hi)`` (UTC ns; e.g. one ``as_of``'s 30 days) only the refunds,
    reviews and chats anchored in it are kept and joined (the others cannot count),
    and the ``o_*`` arrays hold only the orders that may be anchored in it (paid,
    ship-by or delivered inside; a superset, read through a scan filter). Every
    order's id and store are still read: refunds and reviews of the window take
    their order's store from them.

    Returns
    -------
    refundguard.scores.CodedStoreEvents
        For :func:`refundguard.scores.coded_store_scores_as_of` and
        :func:`refundguard.scores.coded_store_scores`.

    Raises
    ------
    SchemaError
        A table is missing, not Parquet, or lacks a column.
    """
    path = Path(folder)
    cols = _parquet_tables(path) if path.is_dir() else None
    if cols is None:
        raise SchemaError(f"{str(path)!r} is not a folder of Parquet tables.", rule="unreadable")
    need = {"orders": ("order_id", "store_id", "category", "paid_at", "shipped_at", "delivered_at"),
            "refunds": ("order_id", "requested_at", "reason", "resolved_at"),
            "reviews": ("order_id", "rating", "created_at")}
    for name, columns in need.items():
        missing = [c for c in columns if not cols[name].has(c)]
        if missing:
            raise SchemaError(f"Table {name!r} is missing required column(s) {missing}.", table=name,
                              column=missing[0], rule="missing_column", values=missing)
    use = threads > 1
    o, r, v = cols["orders"], cols["refunds"], cols["reviews"]
    s = cols.get("service") or _Columns("service")
    pool = ThreadPoolExecutor(max_workers=threads) if use else None
    try:
        return _read_store_events(o, r, v, s, use, window, pool)
    finally:
        if pool is not None:
            pool.shutdown()


def _read_store_events(o: _Columns, r: _Columns, v: _Columns, s: _Columns, use: bool,
                       window: tuple[int, int] | None, pool: ThreadPoolExecutor | None) -> Any:
    from refundguard.scores import CodedStoreEvents

    out: dict[str, Any] = {}

    def order_keys() -> _Keys:
        return _Keys.of(o.get("order_id", threads=use))

    # With a window, the reviews, chats and orders that may count are read by one filtered scan per
    # table (the filter on their time evaluated once; row-group statistics can skip). Refunds are read
    # whole (the first request of all gates the refund indicators), and so are every order's id and
    # store (the window's refunds and reviews take their order's store from them). Every order's id,
    # the longest job, starts first, while the window's scans run.
    keys_f = pool.submit(order_keys) if pool is not None else None
    v_where, s_where = _window_filter(v, "created_at", window), _window_filter(s, "started_at", window)
    o_where = _orders_window_filter(o, window)
    vw: Any = v if v_where is None else _Scanned(v, ("order_id", "rating", "created_at"), v_where, (), use)
    sw: Any = s if s_where is None else _Scanned(s, ("store_id", "started_at", "first_response_s"), s_where,
                                                 ("store_id",), use)
    ow: Any = o if o_where is None else _Scanned(
        o, ("store_id", "category", "paid_at", "ship_by", "shipped_at", "delivered_at"), o_where,
        ("store_id", "category"), use)

    def ts(c: Any, col: str) -> np.ndarray:
        return _ns(c.get(col, threads=use)) if c.has(col) else np.full(c.n, NAT, dtype=np.int64)

    def inside(ns: np.ndarray) -> np.ndarray | None:
        return None if window is None else (ns >= window[0]) & (ns < window[1])

    def rows_of(c: Any, mask: np.ndarray | None) -> pa.ChunkedArray:
        ids = c.get("order_id", threads=use)
        return ids if mask is None else ids.filter(pa.array(mask))

    def job_keys() -> None:
        out["r_requested"] = ts(r, "requested_at")
        out["v_created"] = ts(vw, "created_at")
        out["r_in"] = inside(out["r_requested"])
        out["v_in"] = inside(out["v_created"]) if vw is v else None  # None: already the window's rows
        keys = keys_f.result() if keys_f is not None else order_keys()
        out["r_order"] = keys.rows(rows_of(r, out["r_in"]))
        out["v_order"] = keys.rows(rows_of(vw, out["v_in"])) if vw.n else np.zeros(0, dtype=np.int64)

    def job_store() -> None:
        srv = sw.get("store_id", threads=use, dictionary=True) if sw.n else pa.chunked_array([], type=pa.large_string())
        every = o.get("store_id", threads=use, dictionary=True)
        if ow is o:
            (out["o_store"], out["s_store"]), d = _encode(every, srv)
            out["ref_store"] = out["o_store"]
        else:  # one code space: every order's store (for the joins), the chats, the window's orders
            (out["ref_store"], out["s_store"], out["o_store"]), d = _encode(every, srv, ow.get("store_id"))
        out["store_ids"] = np.asarray(d.to_pylist(), dtype=object)

    def job_category() -> None:
        (codes,), d = _encode(ow.get("category", threads=use, dictionary=True), sort=True)
        out["o_category"], out["categories"] = codes, np.asarray(d.to_pylist(), dtype=object)

    def job_order_times() -> None:
        out["o_paid"] = ts(ow, "paid_at")
        ship_by = ts(ow, "ship_by")
        out["o_ship_by"] = np.where(ship_by == NAT, out["o_paid"] + _SHIP_BY_DEFAULT_NS, ship_by)
        out["o_shipped"] = ts(ow, "shipped_at")
        out["o_delivered"] = ts(ow, "delivered_at")

    def job_rest() -> None:
        out["r_resolved"] = ts(r, "resolved_at")
        esc_at = ts(r, "escalated_at")
        out["r_escalation_known"] = np.where(esc_at != NAT, esc_at, out["r_resolved"])
        out["r_reason"] = _enum_codes(r.get("reason", threads=use), REASONS).astype(np.int8)
        out["r_escalated"] = (np.asarray(r.get("escalated", threads=use).fill_null(False).to_numpy(), dtype=bool)
                              if r.has("escalated") else np.zeros(r.n, dtype=bool))
        out["v_rating"] = _f64(vw.get("rating", threads=use)) if vw.n else np.zeros(0)
        out["s_started"] = ts(sw, "started_at") if sw.n else np.zeros(0, dtype=np.int64)
        out["s_first_response"] = _f64(sw.get("first_response_s", threads=use)) if sw.n else np.zeros(0)

    jobs = [job_keys, job_store, job_category, job_order_times, job_rest]
    if pool is not None:
        for f in [pool.submit(j) for j in jobs]:
            f.result()
    else:
        for j in jobs:
            j()
    for name in ("r_order", "v_order"):
        if (out[name] < 0).any():
            table = "refunds" if name == "r_order" else "reviews"
            raise SchemaError(f"{table}.order_id: {int((out[name] < 0).sum())} row(s) reference an order that is "
                              "not in orders; validate the tables first", table=table, column="order_id",
                              rule="exists", n_bad=int((out[name] < 0).sum()))
    req = out["r_requested"]
    first = int(req[req != NAT].min()) if (req != NAT).any() else NAT
    if window is not None:  # keep the refunds, reviews and chats of the window
        for key, mask in (("r", out["r_in"]), ("v", out["v_in"]), ("s", None if sw is not s else
                                                                    inside(out["s_started"]))):
            if mask is None:  # read through the window's scan filter
                continue
            for name in [k for k in out if k.startswith(key + "_") and k not in (f"{key}_order", f"{key}_in")]:
                out[name] = out[name][mask]
        req = out["r_requested"]
    return CodedStoreEvents(
        store_ids=out["store_ids"], categories=out["categories"], o_store=out["o_store"],
        o_category=out["o_category"], o_paid=out["o_paid"], o_ship_by=out["o_ship_by"], o_shipped=out["o_shipped"],
        o_delivered=out["o_delivered"], r_store=out["ref_store"][out["r_order"]], r_requested=out["r_requested"],
        r_resolved=out["r_resolved"], r_escalation_known=out["r_escalation_known"], r_reason=out["r_reason"],
        r_escalated=out["r_escalated"], v_store=out["ref_store"][out["v_order"]], v_created=out["v_created"],
        v_rating=out["v_rating"], s_store=out["s_store"], s_started=out["s_started"],
        s_first_response=out["s_first_response"], first_refund_ns=first,
    )
