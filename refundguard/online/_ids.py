"""A compact, exact map from string ids to rows 0..n-1 (private).

A Python ``dict`` costs about 130 bytes per order id (the ``str`` object, the
entry and the ``int``); this costs about 30: the ids' UTF-8 bytes in one arena
(as an Arrow string array keeps them), their offsets, and an open-addressing
table of row numbers (linear probing, no wrap-around, load <= 1/2). An id is
hashed 8 bytes at a time (multiply-xor over little-endian 64-bit words, zero
padded, seeded with the length) and spread by Fibonacci hashing; the same hash is
computed one id at a time (events) or vectorised over the arena (warm start,
snapshot load, compaction), so both build and probe the same table. A hit is
confirmed by comparing the stored bytes, so the map is exact.

Bulk operations are vectorised: :meth:`IdIndex.extend` (hash, then place every id
at once: rows sorted by home slot with a radix sort, slot = running maximum of
``home - rank`` plus the rank), :meth:`IdIndex.find` (probe many ids in rounds)
and :meth:`IdIndex.take` (a new index of some rows, bytes gathered in one pass).
"""

from __future__ import annotations

import struct

import numpy as np
import pyarrow as pa

__all__ = ["IdIndex", "hash_bytes", "radix_order"]

_M64 = (1 << 64) - 1
_SEED = 0xCBF29CE484222325
_PRIME = 0x100000001B3
_GOLDEN = 0x9E3779B97F4A7C15
_TAIL = 64
_WORDS = [struct.Struct(f"<{k}Q") for k in range(64)]


def hash_bytes(b: bytes) -> int:
    """64-bit hash of ``b``: multiply-xor over its little-endian 64-bit words (zero padded)."""
    n = len(b)
    h = _SEED ^ n
    k = (n + 7) >> 3
    if n & 7:
        b += bytes(8 - (n & 7))
    for w in (_WORDS[k] if k < 64 else struct.Struct(f"<{k}Q")).unpack(b):
        h = ((h ^ w) * _PRIME) & _M64
    return h ^ (h >> 29)


def _word_view(data: np.ndarray) -> np.ndarray:
    """Unaligned little-endian uint64 words starting at every byte of ``data`` (8 zero bytes appended)."""
    padded = np.concatenate([data, np.zeros(8, dtype=np.uint8)])
    return np.ndarray(shape=(len(padded) - 7,), dtype="<u8", buffer=padded, strides=(1,))


def _word(words: np.ndarray, start: np.ndarray, length: np.ndarray, j: int) -> np.ndarray:
    """Word ``j`` of each id (bytes past its end zeroed); ids must be longer than ``8 * j``."""
    w = words[start + 8 * j]
    keep = np.minimum(length - 8 * j, 8).astype(np.uint64)  # 1..8 bytes of this word belong to the id
    w &= np.uint64(_M64) >> ((np.uint64(8) - keep) << np.uint64(3))
    return w


def _words_of_length(data: np.ndarray, start: np.ndarray, size: int) -> np.ndarray:
    """The ids of ``size`` bytes starting at ``start``, as rows of little-endian uint64 words (zero padded)."""
    m = len(start)
    buf = np.zeros((m, 8 * ((size + 7) // 8)), dtype=np.uint8)
    if m and size:
        first = int(start[0])
        if start[-1] - first == (m - 1) * size and (np.diff(start) == size).all():  # back to back: no gather
            buf[:, :size] = data[first: first + m * size].reshape(m, size)
        else:
            buf[:, :size] = data[start[:, None] + np.arange(size)]
    return buf.view("<u8")


def _hash_arena(data: np.ndarray, start: np.ndarray, length: np.ndarray) -> np.ndarray:
    """:func:`hash_bytes` of every id of an arena, vectorised over the ids of each length."""
    h = np.uint64(_SEED) ^ length.astype(np.uint64)
    if len(start) == 0:
        return h
    prime = np.uint64(_PRIME)
    sizes = np.flatnonzero(np.bincount(length))
    with np.errstate(over="ignore"):
        for size in sizes.tolist():
            rows = None if len(sizes) == 1 else np.flatnonzero(length == size)
            words = _words_of_length(data, start if rows is None else start[rows], size)
            g = h if rows is None else h[rows]
            for j in range(words.shape[1]):
                g = (g ^ words[:, j]) * prime
            if rows is None:
                h = g
            else:
                h[rows] = g
    return h ^ (h >> np.uint64(29))


def radix_order(keys: np.ndarray, bits: int) -> np.ndarray:
    """Stable order of non-negative integer ``keys`` below ``2**bits`` (LSD radix, 16 bits a pass)."""
    if bits <= 16:
        return np.argsort(keys.astype(np.uint16), kind="stable")
    k = keys.astype(np.uint64, copy=False)
    order = np.argsort((k & np.uint64(0xFFFF)).astype(np.uint16), kind="stable")
    for shift in range(16, bits, 16):
        digit = ((k[order] >> np.uint64(shift)) & np.uint64(0xFFFF)).astype(np.uint16)
        order = order[np.argsort(digit, kind="stable")]
    return order


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
        off = self._off[: n + 1]
        h = _hash_arena(self._data, off[:-1], np.diff(off))
        with np.errstate(over="ignore"):
            home = ((h * np.uint64(_GOLDEN)) >> np.uint64(64 - bits)).astype(np.int64)
        order = radix_order(home, bits)
        sh = home[order]
        # linear probing of sorted homes: slot = running max of (home - rank) + rank
        rank = np.arange(n, dtype=np.int64)
        pos = np.maximum.accumulate(sh - rank) + rank if n else sh
        size = max((1 << bits) + _TAIL, int(pos[-1]) + 1 + _TAIL if n else 0)
        table = np.full(size, -1, dtype=np.int32)
        table[pos] = order.astype(np.int32)
        self._bits, self._table = bits, table
        self._views()

    def _append_arena(self, data: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Append ids given as concatenated bytes and lengths; rebuild the table; return their rows."""
        m = len(lengths)
        rows = np.arange(self._n, self._n + m, dtype=np.int64)
        if m == 0:
            return rows
        base = int(self._off[self._n])
        new_off = np.empty(self._n + m + 1 + max(256, m // 4), dtype=np.int64)
        new_off[: self._n + 1] = self._off[: self._n + 1]
        np.cumsum(lengths, out=new_off[self._n + 1: self._n + m + 1])
        new_off[self._n + 1: self._n + m + 1] += base
        new_off[self._n + m + 1:] = 0
        self._data = np.concatenate([self._data[:base], data, np.zeros(max(1024, len(data) // 4), np.uint8)])
        self._off = new_off
        self._n += m
        self._rebuild(self._bits)
        return rows

    def extend(self, ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Append many ids (all absent, distinct, non-null) at once; return their rows."""
        data, off = _arena(ids)
        return self._append_arena(data[off[0]: off[-1]], np.diff(off))

    def arrow(self) -> pa.Array:
        """All ids as an Arrow ``large_string`` array, row order."""
        n = self._n
        return pa.LargeStringArray.from_buffers(
            n, pa.py_buffer(self._off[: n + 1].copy()), pa.py_buffer(self._data[: int(self._off[n])].copy()))

    def take(self, rows: np.ndarray) -> IdIndex:
        """A new index of the ids at ``rows`` (in that order): bytes gathered in one pass, no re-encoding."""
        rows = np.asarray(rows, dtype=np.int64)
        start = self._off[rows]
        length = self._off[rows + 1] - start
        total = int(length.sum())
        out_start = np.cumsum(length) - length
        gather = np.repeat(start - out_start, length) + np.arange(total, dtype=np.int64)
        out = IdIndex()
        out._append_arena(self._data[gather], length)
        return out

    @classmethod
    def from_arrow(cls, ids: pa.Array | pa.ChunkedArray) -> IdIndex:
        """An index of ``ids`` (distinct, non-null), row ``i`` for ``ids[i]``."""
        out = cls()
        out.extend(ids)
        return out

    def find(self, ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Rows of many ids (-1 for absent or null), probing the table for all of them at once."""
        data, off = _arena(ids)
        valid = _valid(ids)
        start, length = off[:-1], np.diff(off)
        m = len(start)
        rows = np.full(m, -1, dtype=np.int64)
        if m == 0 or self._n == 0:
            return rows
        h = _hash_arena(data, start, length)
        with np.errstate(over="ignore"):
            slot = ((h * np.uint64(_GOLDEN)) >> np.uint64(64 - self._bits)).astype(np.int64)
        active = np.flatnonzero(valid)
        slot = slot[active]
        words_q = _word_view(data)
        words_s = _word_view(self._data[: int(self._off[self._n])])
        s_off = self._off[: self._n + 1]
        while len(active):
            cand = self._table[slot].astype(np.int64)
            hit = cand >= 0
            active, slot, cand = active[hit], slot[hit], cand[hit]
            q_len = length[active]
            s_start = s_off[cand]
            same = (s_off[cand + 1] - s_start) == q_len
            for j in range((int(q_len.max(initial=0)) + 7) // 8):
                part = np.flatnonzero(same & (q_len > 8 * j))
                if not len(part):
                    break
                a = _word(words_q, start[active[part]], q_len[part], j)
                b = _word(words_s, s_start[part], q_len[part], j)
                same[part[a != b]] = False
            rows[active[same]] = cand[same]
            active, slot = active[~same], slot[~same] + 1
        return rows


def _arena(ids: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """An Arrow string array's UTF-8 bytes and int64 offsets (nulls have length 0)."""
    arr = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    if not pa.types.is_large_string(arr.type):
        arr = arr.cast(pa.large_string())
    m = len(arr)
    bufs = arr.buffers()
    off = np.frombuffer(bufs[1], dtype=np.int64)[arr.offset: arr.offset + m + 1] if m else np.zeros(1, np.int64)
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    if off[0]:
        data = data[off[0]:]
        off = off - off[0]
    return data[: int(off[-1])], off


def _valid(ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    arr = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    if arr.null_count == 0:
        return np.ones(len(arr), dtype=bool)
    return arr.is_valid().to_numpy(zero_copy_only=False)
