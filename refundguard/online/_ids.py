"""A compact, exact map from string ids to rows 0..n-1 (private).

A Python ``dict`` costs about 130 bytes per order id (the ``str`` object, the
entry and the ``int``); this costs about 30: the ids' UTF-8 bytes in one arena
(as an Arrow string array keeps them), their offsets, and an open-addressing
table of row numbers (linear probing, no wrap-around, load <= 1/2). Keys are
hashed with 64-bit FNV-1a and spread by Fibonacci hashing; the same hash is
computed one id at a time (ingest) or vectorised over Arrow buffers (warm start,
snapshot load), so both build the same table. A hit is confirmed by comparing
the stored bytes, so the map is exact.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

__all__ = ["IdIndex", "hash_bytes"]

_M64 = (1 << 64) - 1
_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_GOLDEN = 0x9E3779B97F4A7C15
_TAIL = 64


def hash_bytes(b: bytes) -> int:
    """64-bit FNV-1a of ``b``."""
    h = _FNV_OFFSET
    for c in b:
        h = ((h ^ c) * _FNV_PRIME) & _M64
    return h


def _hash_arena(data: np.ndarray, off: np.ndarray) -> np.ndarray:
    """FNV-1a of every id of an arena, vectorised over byte positions."""
    n = len(off) - 1
    h = np.full(n, _FNV_OFFSET, dtype=np.uint64)
    if n == 0:
        return h
    start = off[:-1]
    length = np.diff(off)
    prime = np.uint64(_FNV_PRIME)
    for k in range(int(length.max(initial=0))):
        live = length > k
        if live.all():
            h = (h ^ data[start + k].astype(np.uint64)) * prime
        else:
            idx = np.flatnonzero(live)
            h[idx] = (h[idx] ^ data[start[idx] + k].astype(np.uint64)) * prime
    return h


class IdIndex:
    """Exact, append-only map from ids (``str``) to rows ``0..n-1``."""

    def __init__(self) -> None:
        self._data = np.zeros(1 << 12, dtype=np.uint8)
        self._off = np.zeros(1 << 8, dtype=np.int64)
        self._n = 0
        self._bits = 8
        self._table = np.full((1 << self._bits) + _TAIL, -1, dtype=np.int32)
        self._views()

    def _views(self) -> None:
        self._tv = memoryview(self._table)
        self._ov = memoryview(self._off)
        self._dv = memoryview(self._data)

    def __len__(self) -> int:
        return self._n

    @property
    def nbytes(self) -> int:
        """Bytes held by the arrays (what the index costs)."""
        return int(self._data.nbytes + self._off.nbytes + self._table.nbytes)

    # ------------------------------------------------------------------ lookups
    def _home(self, h: int) -> int:
        return ((h * _GOLDEN) & _M64) >> (64 - self._bits)

    def get(self, key: str) -> int:
        """Row of ``key``, or -1."""
        b = key.encode("utf-8")
        i = self._home(hash_bytes(b))
        tv, ov, dv = self._tv, self._ov, self._dv
        while True:
            row = tv[i]
            if row < 0:
                return -1
            if dv[ov[row]:ov[row + 1]] == b:
                return row
            i += 1

    def add(self, key: str) -> int:
        """Append ``key`` (which must be absent) and return its row."""
        b = key.encode("utf-8")
        n = self._n
        if n + 2 > len(self._off):
            self._off = np.concatenate([self._off, np.zeros(len(self._off), dtype=np.int64)])
            self._views()
        start = int(self._off[n])
        end = start + len(b)
        if end > len(self._data):
            self._data = np.concatenate([self._data, np.zeros(max(len(self._data), len(b)), dtype=np.uint8)])
            self._views()
        self._dv[start:end] = b
        self._ov[n + 1] = end
        self._n = n + 1
        if 2 * self._n > (1 << self._bits):
            self._rebuild(self._bits + 1)
            return n
        i = self._home(hash_bytes(b))
        tv = self._tv
        while tv[i] >= 0:
            i += 1
            if i == len(self._table):
                self._rebuild(self._bits + 1)
                return n
        tv[i] = n
        return n

    def key(self, row: int) -> str:
        """The id of ``row``."""
        return bytes(self._dv[self._ov[row]:self._ov[row + 1]]).decode("utf-8")

    # ------------------------------------------------------------------ bulk
    def _rebuild(self, bits: int) -> None:
        n = self._n
        while (1 << bits) < 2 * n:
            bits += 1
        h = _hash_arena(self._data, self._off[: n + 1])
        home = ((h * np.uint64(_GOLDEN)) >> np.uint64(64 - bits)).astype(np.int64)
        order = np.argsort(home, kind="stable")
        sh = home[order]
        # linear probing of sorted homes: position = running max of (home - i) + i
        pos = np.maximum.accumulate(sh - np.arange(n, dtype=np.int64)) + np.arange(n, dtype=np.int64) \
            if n else sh
        size = max((1 << bits) + _TAIL, int(pos[-1]) + 1 + _TAIL if n else 0)
        table = np.full(size, -1, dtype=np.int32)
        table[pos] = order.astype(np.int32)
        self._bits, self._table = bits, table
        self._views()

    def extend(self, ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Append many ids (all absent, distinct, non-null) at once; return their rows."""
        arr = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
        arr = arr.cast(pa.large_string())
        m = len(arr)
        rows = np.arange(self._n, self._n + m, dtype=np.int64)
        if m == 0:
            return rows
        bufs = arr.buffers()
        off = np.frombuffer(bufs[1], dtype=np.int64)[arr.offset: arr.offset + m + 1]
        data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
        data = data[off[0]: off[-1]]
        base = int(self._off[self._n])
        new_off = np.concatenate([self._off[: self._n + 1], base + (off[1:] - off[0])])
        self._data = np.concatenate([self._data[:base], data, np.zeros(max(1024, len(data) // 4), np.uint8)])
        self._off = np.concatenate([new_off, np.zeros(max(256, m // 4), np.int64)])
        self._n += m
        self._rebuild(self._bits)
        return rows

    def arrow(self) -> pa.Array:
        """All ids as an Arrow ``large_string`` array, row order."""
        n = self._n
        return pa.LargeStringArray.from_buffers(
            n, pa.py_buffer(self._off[: n + 1].copy()), pa.py_buffer(self._data[: int(self._off[n])].copy()))

    def take(self, rows: np.ndarray) -> IdIndex:
        """A new index of the ids at ``rows`` (in that order)."""
        out = IdIndex()
        out.extend(self.arrow().take(pa.array(np.asarray(rows, dtype=np.int64))))
        return out

    @classmethod
    def from_arrow(cls, ids: pa.Array | pa.ChunkedArray) -> IdIndex:
        """An index of ``ids`` (distinct, non-null), row ``i`` for ``ids[i]``."""
        out = cls()
        out.extend(ids)
        return out

    def find(self, ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Rows of many ids (-1 for absent or null), through Arrow's hash join."""
        import pyarrow.compute as pc

        arr = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
        pos = pc.index_in(arr.cast(pa.large_string()), value_set=self.arrow())
        return pos.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
