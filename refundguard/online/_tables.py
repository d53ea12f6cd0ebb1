"""The containers of an in-memory ProfileStore (private): order and refund rows, and each key kind's blocks.

* :class:`Columns`: rows appended by events (ids in an
  :class:`~refundguard.online._ids.IdIndex`, about 30 bytes each, plus numpy
  columns: an order row costs 52 bytes of columns, a refund row 38), rebuilt
  without the rows no later event can need by :func:`plan_rows` (no lock needed)
  and :func:`finish_rows` (under the lock, O(rows written meanwhile));
* :class:`KeyBlocks`: the blocks (:mod:`refundguard.online._blocks`) of one kind of
  key. Built at once (warm start, snapshot load, expiry), they sit back to back in
  ONE int64 buffer with an offsets index (8 bytes per key, no Python object per
  key); a lookup slices the buffer. A key written by an event gets its own
  ``array('q')`` copy (copy on write), and the copies' old places in the buffer are
  dropped by the next :meth:`KeyBlocks.rebuild` (at expiry, or once they are half
  the buffer).
"""

from __future__ import annotations

from array import array
from collections.abc import Callable

import numpy as np

from refundguard._time import NAT
from refundguard.online._blocks import Block, trim_plan
from refundguard.online._ids import IdIndex

__all__ = ["Columns", "KeyBlocks", "RowPlan", "plan_rows", "finish_rows", "expired_rows", "ORDER_COLUMNS", "REFUND_COLUMNS", "F_ONLY",
           "F_NR", "F_CLAIM", "F_RESOLVED", "F_REJECTED", "F_ABUSE", "F_LABELLED", "OUTCOME_CODES"]

#: Order columns: buyer, store, device and address codes (-1: none), times, amount, first refund row.
ORDER_COLUMNS: dict[str, tuple[type, int | float]] = {
    "buyer": (np.int32, -1), "store": (np.int32, -1), "device": (np.int32, -1), "address": (np.int32, -1),
    "paid": (np.int64, NAT), "shipped": (np.int64, NAT), "delivered": (np.int64, NAT),
    "amount": (np.float64, 0.0), "first_refund": (np.int32, -1),
}
#: Refund columns: order row, times, amount, flags, outcome code, next refund row of the same order.
REFUND_COLUMNS: dict[str, tuple[type, int | float]] = {
    "order": (np.int32, -1), "requested": (np.int64, NAT), "resolved": (np.int64, NAT),
    "amount": (np.float64, 0.0), "flags": (np.uint8, 0), "outcome": (np.uint8, 0), "next": (np.int32, -1),
}
F_ONLY, F_NR, F_CLAIM, F_RESOLVED, F_REJECTED, F_ABUSE, F_LABELLED = (1, 2, 4, 8, 16, 32, 64)
#: Outcome codes in the refund rows (0: open).
OUTCOME_CODES = {"refunded": 1, "rejected": 2, "withdrawn": 3}


class Columns:
    """Append-only rows: an :class:`IdIndex` and numpy columns with room to grow."""

    def __init__(self, spec: dict[str, tuple[type, int | float]]) -> None:
        self.spec = spec
        self.ids = IdIndex()
        self.n = 0
        self.cols = {name: np.full(1024, fill, dtype=dt) for name, (dt, fill) in spec.items()}
        #: Rows written while a compaction is being planned (``None`` otherwise; see :func:`plan_rows`).
        self.dirty: set[int] | None = None

    def touch(self, row: int) -> None:
        """Note that ``row`` is about to be written."""
        if self.dirty is not None:
            self.dirty.add(row)

    def _grow(self, need: int) -> None:
        cap = len(next(iter(self.cols.values())))
        if need <= cap:
            return
        new = max(need, 2 * cap)
        for name, (dt, fill) in self.spec.items():
            col = np.full(new, fill, dtype=dt)
            col[: self.n] = self.cols[name][: self.n]
            self.cols[name] = col

    def append(self, key: str, **values: int | float) -> int:
        """Add a row for id ``key`` (absent) and return it."""
        row = self.ids.add(key)
        assert row == self.n
        self._grow(row + 1)
        cols = self.cols
        for name, v in values.items():
            cols[name][row] = v
        self.n = row + 1
        return row

    def set_all(self, ids: object, values: dict[str, np.ndarray]) -> None:
        """Replace every row at once (ids: an Arrow string array, distinct)."""
        self.ids = IdIndex.from_arrow(ids)  # type: ignore[arg-type]
        n = len(self.ids)
        self.n = n
        cap = max(1024, n + n // 4)
        for name, (dt, fill) in self.spec.items():
            col = np.full(cap, fill, dtype=dt)
            if name in values:
                col[:n] = values[name]
            self.cols[name] = col

    def column(self, name: str) -> np.ndarray:
        """The filled part of a column (a view)."""
        return self.cols[name][: self.n]

    @property
    def nbytes(self) -> int:
        """Bytes held by the ids and the columns (capacity included)."""
        return self.ids.nbytes + sum(int(c.nbytes) for c in self.cols.values())

    def replace(self, ids: IdIndex, values: dict[str, np.ndarray]) -> None:
        """Replace every row with ``values`` (one array per column), ids already indexed."""
        n = len(ids)
        self.ids, self.n = ids, n
        cap = max(1024, n + n // 4)
        for name, (dt, fill) in self.spec.items():
            col = np.full(cap, fill, dtype=dt)
            col[:n] = values[name]
            self.cols[name] = col


def expired_rows(orders: Columns, refunds: Columns, n: int, m: int, old: int) -> np.ndarray:
    """Order rows (of the first ``n``; refunds: the first ``m``) whose every use is past, given that events
    older than ``old`` are no longer taken.

    An order row goes when its payment, shipping and delivery are before ``old``,
    and every refund of it was requested and resolved before ``old`` (a later
    resolution, or a delivery that would make a "not received" claim count, still
    needs the row); its refund rows go with it.

    Returns
    -------
    numpy.ndarray of bool
        Per order row, whether it goes.
    """
    oc, rc = orders.cols, refunds.cols
    paid, shipped, delivered = oc["paid"][:n], oc["shipped"][:n], oc["delivered"][:n]
    go = (paid < old) & (shipped < old) & (delivered < old)  # NAT is the smallest int64
    if m:
        order = rc["order"][:m]
        flags = rc["flags"][:m]
        done = ((flags & F_RESOLVED) != 0) & (rc["resolved"][:m] < old)
        open_claim = ((flags & F_NR) != 0) & ((flags & F_CLAIM) == 0) & (delivered[order] == NAT)
        needed = ~done | open_claim
        if needed.any():
            go &= np.bincount(order[needed], minlength=n)[:n] == 0
    return go


def _order_goes(orders: Columns, refunds: Columns, row: int, old: int) -> bool:
    """:func:`expired_rows` for one order row, on the current values."""
    oc, rc = orders.cols, refunds.cols
    delivered = int(oc["delivered"][row])
    if not (int(oc["paid"][row]) < old and int(oc["shipped"][row]) < old and delivered < old):
        return False
    r = int(oc["first_refund"][row])
    while r >= 0:
        flags = int(rc["flags"][r])
        if not (flags & F_RESOLVED and int(rc["resolved"][r]) < old):
            return False
        if flags & F_NR and not flags & F_CLAIM and delivered == NAT:
            return False
        r = int(rc["next"][r])
    return True


class RowPlan:
    """The order and refund rows without those that go, built from the first ``n`` / ``m`` rows
    (:func:`plan_rows`), to be finished with the rows written since (:func:`finish_rows`)."""

    def __init__(self, n: int, m: int, orders: Columns, refunds: Columns, o_map: np.ndarray,
                 r_map: np.ndarray) -> None:
        self.n, self.m = n, m
        self.orders, self.refunds = orders, refunds
        self.o_map, self.r_map = o_map, r_map  # old row -> new row, -1 for a row that goes


def plan_rows(orders: Columns, refunds: Columns, n: int, m: int, old: int, min_share: float = 0.0) -> RowPlan | None:
    """New rows without those of the first ``n`` orders (``m`` refunds) that go (:func:`expired_rows`).

    Reads only rows that exist and ids that never change, so it runs without the
    store's lock while events go on (their rows are marked in ``dirty`` and carried
    over by :func:`finish_rows`). ``None`` when fewer than ``min_share`` of the rows go.
    """
    drop = expired_rows(orders, refunds, n, m, old)
    if not drop.any() or drop.sum() < min_share * n:
        return None
    oc, rc = orders.cols, refunds.cols
    order = rc["order"][:m].astype(np.int64)
    keep_o = ~drop
    keep_r = keep_o[order] if m else np.zeros(0, dtype=bool)
    o_map = np.where(keep_o, np.cumsum(keep_o) - 1, -1)
    r_map = np.where(keep_r, np.cumsum(keep_r) - 1, -1)
    o_rows, r_rows = np.flatnonzero(keep_o), np.flatnonzero(keep_r)

    def remap(col: np.ndarray, rows: np.ndarray, new: np.ndarray) -> np.ndarray:
        v = col[rows].astype(np.int64)
        return np.where(v >= 0, new[np.maximum(v, 0)] if len(new) else -1, -1)

    o_vals = {name: oc[name][o_rows] for name in orders.spec}
    o_vals["first_refund"] = remap(oc["first_refund"], o_rows, r_map)
    r_vals = {name: rc[name][r_rows] for name in refunds.spec}
    r_vals["order"] = o_map[order[r_rows]]
    r_vals["next"] = remap(rc["next"], r_rows, r_map)
    new_o, new_r = Columns(orders.spec), Columns(refunds.spec)
    new_o.replace(orders.ids.take(o_rows), o_vals)
    new_r.replace(refunds.ids.take(r_rows), r_vals)
    return RowPlan(n, m, new_o, new_r, o_map, r_map)


def finish_rows(orders: Columns, refunds: Columns, plan: RowPlan, old: int) -> tuple[Columns, Columns]:
    """The planned rows brought up to date (caller holds the lock): rows written since the plan are copied
    again, rows added since are appended, and an order the plan dropped that an event needs again is kept.
    Costs O(rows written or added since the plan)."""
    dirty_o, dirty_r = orders.dirty or set(), refunds.dirty or set()
    orders.dirty = refunds.dirty = None
    oc, rc = orders.cols, refunds.cols
    new_o, new_r = plan.orders, plan.refunds
    o_extra: dict[int, int] = {}
    r_extra: dict[int, int] = {}
    back = [row for row in sorted(dirty_o) if row < plan.n and plan.o_map[row] < 0
            and not _order_goes(orders, refunds, row, old)]
    for row in [*back, *range(plan.n, orders.n)]:
        o_extra[row] = new_o.append(orders.ids.key(row))
    again = []
    for row in back:  # a kept-again order keeps all its refunds
        r = int(oc["first_refund"][row])
        while r >= 0:
            if r < plan.m and plan.r_map[r] < 0:
                again.append(r)
            r = int(rc["next"][r])
    for r in [*again, *range(plan.m, refunds.n)]:
        r_extra[r] = new_r.append(refunds.ids.key(r))

    def o_new(row: int) -> int:
        return o_extra[row] if row in o_extra else int(plan.o_map[row])

    def r_new(row: int) -> int:
        if row < 0:
            return -1
        return r_extra[row] if row in r_extra else int(plan.r_map[row])

    for row in [*o_extra, *(x for x in dirty_o if x < plan.n and plan.o_map[x] >= 0)]:
        new = o_new(row)
        for name in orders.spec:
            new_o.cols[name][new] = oc[name][row]
        new_o.cols["first_refund"][new] = r_new(int(oc["first_refund"][row]))
    for row in [*r_extra, *(x for x in dirty_r if x < plan.m and plan.r_map[x] >= 0)]:
        new = r_new(row)
        for name in refunds.spec:
            new_r.cols[name][new] = rc[name][row]
        new_r.cols["order"][new] = o_new(int(rc["order"][row]))
        new_r.cols["next"][new] = r_new(int(rc["next"][row]))
    return new_o, new_r


_EMPTY = np.zeros(0, dtype=np.int64)


def _q(buf: np.ndarray) -> memoryview:
    """A read-only ``memoryview`` of int64 (format ``q``) over ``buf``."""
    return memoryview(np.ascontiguousarray(buf, dtype=np.int64)).cast("B").cast("q")


def _offsets(off: np.ndarray) -> array:
    a = array("q")
    a.frombytes(np.ascontiguousarray(off, dtype=np.int64).tobytes())
    return a


class KeyBlocks:
    """The blocks of one kind of key (buyer, store, device or address), by name and by code.

    Parameters
    ----------
    kind
        ``"buyer"``, ``"store"`` or ``"link"`` (the block layout).
    factory
        ``factory(code)`` makes the empty block of a new key.

    Attributes
    ----------
    index : dict of str to int
        Code of each key name (codes are ``0..n-1`` and never change).
    names : list of str
        Name of each code.
    live : dict of int to array
        Blocks written since the shared buffer was built, by code (every key made
        since is live).
    dead : int
        Values of the shared buffer whose key is live (dropped by the next rebuild).
    """

    __slots__ = ("kind", "factory", "index", "names", "base", "base_np", "off", "live", "dead", "cursor")

    def __init__(self, kind: str, factory: Callable[[int], array]) -> None:
        self.kind = kind
        self.factory = factory
        self.index: dict[str, int] = {}
        self.names: list[str] = []
        self.live: dict[int, array] = {}
        self.cursor = 0
        self.set_base([], _EMPTY, np.zeros(1, dtype=np.int64))

    def set_base(self, names: list[str], buf: np.ndarray, offsets: np.ndarray) -> None:
        """Hold ``names[i]``'s block at ``buf[offsets[i]:offsets[i + 1]]``; forget every live block."""
        self.names = names
        self.index = dict(zip(names, range(len(names))))
        self.base_np = np.ascontiguousarray(buf, dtype=np.int64)
        self.base = _q(self.base_np)
        self.off = _offsets(offsets)
        self.live = {}
        self.dead = 0

    def __len__(self) -> int:
        return len(self.names)

    @property
    def n_base(self) -> int:
        """Keys with a place in the shared buffer (codes ``0..n_base - 1``)."""
        return len(self.off) - 1

    # ------------------------------------------------------------------ access
    def view(self, name: str) -> Block | None:
        """The block of ``name`` to read (a live array, or a slice of the buffer), or ``None``."""
        code = self.index.get(name)
        if code is None:
            return None
        a = self.live.get(code)
        if a is None:
            off = self.off
            return self.base[off[code]:off[code + 1]]
        return a

    def view_code(self, code: int) -> Block:
        """The block of ``code`` to read."""
        a = self.live.get(code)
        if a is None:
            off = self.off
            return self.base[off[code]:off[code + 1]]
        return a

    def code(self, name: str) -> int:
        """Code of ``name``, made (with an empty block) when new."""
        code = self.index.get(name)
        if code is None:
            code = len(self.names)
            self.names.append(name)
            self.index[name] = code
            self.live[code] = self.factory(code)
        return code

    def block(self, code: int) -> array:
        """The block of ``code`` to write: its own array, copied from the buffer on first write."""
        a = self.live.get(code)
        if a is None:
            off = self.off
            lo, hi = off[code], off[code + 1]
            a = array("q")
            a.frombytes(self.base[lo:hi].cast("B"))
            self.live[code] = a
            self.dead += hi - lo
        return a

    # ------------------------------------------------------------------ size
    def values(self) -> int:
        """Values held in blocks (each key counted once)."""
        return len(self.base_np) - self.dead + sum(len(a) for a in self.live.values())

    def nbytes(self) -> int:
        """Approximate bytes: buffer, offsets, live arrays, names and the index."""
        import sys

        total = self.base_np.nbytes + self.off.buffer_info()[1] * 8
        total += sys.getsizeof(self.index) + sys.getsizeof(self.names) + sys.getsizeof(self.live)
        total += sum(sys.getsizeof(name) for name in self.names)
        total += sum(sys.getsizeof(a) for a in self.live.values())
        total += 32 * len(self.live) + 28 * max(0, len(self.names) - 256)  # live dict keys, int codes
        return total

    def flat(self) -> tuple[np.ndarray, np.ndarray]:
        """Every key's block back to back in code order: ``(values, offsets)`` (the buffer itself if no key is live)."""
        n = len(self.names)
        off = np.frombuffer(self.off, dtype=np.int64) if len(self.off) else np.zeros(1, np.int64)
        if not self.live and n == self.n_base:
            return self.base_np, off.copy()
        size = np.zeros(n, dtype=np.int64)
        nb = self.n_base
        size[:nb] = np.diff(off)
        codes = np.fromiter(self.live.keys(), dtype=np.int64, count=len(self.live))
        size[codes] = [len(self.live[c]) for c in codes.tolist()]
        new_off = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(size, out=new_off[1:])
        out = np.empty(int(new_off[-1]), dtype=np.int64)
        in_base = np.ones(n, dtype=bool)
        in_base[codes] = False
        in_base[nb:] = False
        rows = np.flatnonzero(in_base)
        length = size[rows]
        total = int(length.sum())
        if total:
            first = np.cumsum(length) - length
            pos = np.arange(total, dtype=np.int64)
            out[np.repeat(new_off[rows] - first, length) + pos] = self.base_np[np.repeat(off[rows] - first, length) + pos]
        for c in codes.tolist():
            out[new_off[c]:new_off[c + 1]] = np.frombuffer(self.live[c], dtype=np.int64)
        return out, new_off

    # ------------------------------------------------------------------ rebuild
    def freeze(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """What :func:`rebuild_buffer` reads (call under the store's lock): buffer, offsets, live codes."""
        nb = self.n_base
        live = np.fromiter(self.live.keys(), dtype=np.int64, count=len(self.live))
        return self.base_np, np.frombuffer(self.off, dtype=np.int64).copy(), live[live < nb]

    def swap(self, buf: np.ndarray, offsets: np.ndarray) -> None:
        """Install a buffer made by :func:`rebuild_buffer` (under the store's lock)."""
        self.base_np = buf
        self.base = _q(buf)
        self.off = _offsets(offsets)
        nb = len(offsets) - 1
        live = np.fromiter(self.live.keys(), dtype=np.int64, count=len(self.live))
        live = live[live < nb]
        self.dead = int((offsets[live + 1] - offsets[live]).sum()) if len(live) else 0

    def rebuild(self, floor: int | None) -> int:
        """Rebuild the buffer in place (caller holds the lock): trimmed at ``floor``, without live copies."""
        buf, off, live = self.freeze()
        new, new_off, dropped = rebuild_buffer(self.kind, buf, off, live, floor)
        self.swap(new, new_off)
        return dropped


def rebuild_buffer(kind: str, buf: np.ndarray, off: np.ndarray, live: np.ndarray,
                   floor: int | None) -> tuple[np.ndarray, np.ndarray, int]:
    """A new shared buffer: the blocks of ``buf`` trimmed at ``floor`` (none if ``None``), vectorised, and the
    places of the ``live`` codes emptied (their arrays are the truth).

    Returns
    -------
    (buffer, offsets, values trimmed)
    """
    n = len(off) - 1
    size = np.diff(off)
    gone = np.zeros(n, dtype=bool)
    gone[live] = True
    starts: list[np.ndarray] = [off[:-1][gone]]
    lengths: list[np.ndarray] = [size[gone]]
    header: list[tuple[int, np.ndarray]] = []
    trimmed = 0
    keep_rows = np.flatnonzero(~gone & (size > 0))
    cut_per_key = np.zeros(n, dtype=np.int64)
    if floor is not None and len(keep_rows):
        ranges, header = trim_plan(kind, buf, off[keep_rows], size[keep_rows], floor)
        for s, k in ranges:
            starts.append(s)
            lengths.append(k)
            cut_per_key[keep_rows] += k
        trimmed = int(cut_per_key.sum())
    st, ln = np.concatenate(starts), np.concatenate(lengths)
    cut_per_key[gone] = size[gone]
    if not ln.any():
        return buf, off, 0
    # +1 where a deleted range starts, -1 where it ends: a running sum of 0 keeps the value
    mark = np.bincount(st, minlength=len(buf) + 1) - np.bincount(st + ln, minlength=len(buf) + 1)
    new = buf[np.cumsum(mark[:-1]) == 0]
    new_off = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(size - cut_per_key, out=new_off[1:])
    for field, dec in header:
        if dec.any():
            pos = new_off[keep_rows] + field
            new[pos] -= dec
    return new, new_off, trimmed


__all__ += ["rebuild_buffer"]
