"""Per-key state of the in-memory ProfileStore: one block of int64 per key (private).

Why blocks: a key (buyer, store, device, address) holds a few sorted sequences of
int64. Kept as separate Python objects they would cost ~60 bytes of header each,
plus the objects the garbage collector walks; one block per key, with a header of
section lengths and the sections back to back, costs 8 bytes per value. Sorted
sections are searched with :func:`bisect.bisect_left` within ``lo``/``hi`` bounds
(no copies), so a lookup costs a few binary searches whatever the history length;
windowed sums use exclusive prefix sums kept beside the times.

Where blocks live (see :class:`refundguard.online._tables.KeyBlocks`): the blocks of
a key kind built at once (warm start, snapshot load, expiry) sit back to back in one
shared, read-only int64 buffer, and a lookup reads a ``memoryview`` slice of it; a
key written by an event gets its own ``array('q')`` copy, which the functions here
update in place. The read functions take either (:data:`Block`); the ``*_add_*`` and
``*_trim`` functions take an ``array``; :func:`trim_plan` trims many blocks of a
shared buffer at once.

Layouts (int64 values; times are UTC ns):

buyer
    header ``[code, first_order, n_o, n_r, n_s, n_nr, n_rj, n_ab, n_l]`` then
    ``OT[n_o]`` order times sorted by (time, amount), ``OC[n_o + 1]`` exclusive
    prefix sums of their cents, ``OA[n_o]`` their amounts (float64 bits);
    ``RT[n_r]`` refund request times sorted, ``RK[n_r + 1]`` / ``RM[n_r + 1]``
    exclusive prefix counts / cents of the refund-only ones; ``ST[n_s]`` first
    refund time per store refunded, sorted, with ``SC[n_s]`` the store codes;
    ``NR[n_nr]`` request times of "not received" claims on orders delivered
    before the claim; ``RJ[n_rj]`` / ``AB[n_ab]`` resolution times of rejected /
    abusive refunds; ``LK[n_l]`` link keys (``2 * code + kind``, kind 0 device, 1
    address) with ``LT[n_l]`` the buyer's first order time on each. The buyer's
    first bad time is ``min(RJ[0], AB[0])``.
store
    ``[code, n_o]`` then ``OT[n_o]`` order times and ``RT[...]`` refund request
    times, both sorted.
link (device or address)
    ``[code, n_seen, n_bad]`` then ``SEEN[n_seen]`` each buyer's first order time
    on the key, ``BAD[n_bad]`` for each buyer with a bad outcome ``max(first seen,
    first bad)``, and ``REF[...]`` refund request times, all sorted. "Buyers seen
    before t" and "bad buyers known before t" are then two binary searches, however
    many buyers share the key.
"""

from __future__ import annotations

import struct
from array import array
from bisect import bisect_left, bisect_right
from typing import Any, Union

import numpy as np

from refundguard._time import NEVER, NS_PER_DAY

__all__ = [
    "B_FIRST", "B_HEAD", "S_HEAD", "L_HEAD", "MEDIAN_K",
    "new_buyer", "new_store", "new_link",
    "buyer_sections", "buyer_offsets", "buyer_add_order", "buyer_add_refund", "buyer_add_store", "buyer_add_claim",
    "buyer_add_bad", "buyer_first_bad", "buyer_link", "buyer_cluster", "buyer_trim", "buyer_values",
    "store_add_order", "store_add_refund", "store_values", "store_trim",
    "link_add_seen", "link_move", "link_add_bad", "link_add_refund", "link_values", "link_trim",
    "buyer_cuts", "store_cuts", "link_cuts", "count_below", "trim_plan", "Block",
    "f2i", "i2f",
]

B_CODE, B_FIRST, B_NO, B_NR, B_NS, B_NNR, B_NRJ, B_NAB, B_NL = range(9)
B_HEAD = 9
S_HEAD = 2
L_HEAD = 3
#: The buyer's median order amount is taken over at most this many latest orders (profiles.MEDIAN_LAST_ORDERS).
MEDIAN_K = 20
_DAY = NS_PER_DAY
_Q = struct.Struct("<q")
_D = struct.Struct("<d")
#: A block as the lookups read it: a key's own ``array('q')`` or a slice (memoryview) of a shared buffer.
Block = Union[array, memoryview]


def f2i(x: float) -> int:
    """The bits of a float64 as an int64."""
    return _Q.unpack(_D.pack(x))[0]


def i2f(i: int) -> float:
    """The float64 whose bits are ``i``."""
    return _D.unpack(_Q.pack(i))[0]


# --------------------------------------------------------------------------- sorted sections
def _insort(a: array, lo: int, hi: int, x: int) -> None:
    a.insert(bisect_right(a, x, lo, hi), x)


def _remove(a: array, lo: int, hi: int, x: int) -> None:
    i = bisect_left(a, x, lo, hi)
    if i >= hi or a[i] != x:  # pragma: no cover - an internal invariant
        raise AssertionError(f"value {x} not in section [{lo}, {hi})")
    del a[i]


def _add_prefix(a: array, start: int, n: int, j: int, v: int) -> None:
    """Insert a value ``v`` at position ``j`` of a section whose exclusive prefix sums start at ``start``
    (``n + 1`` entries before the insert)."""
    a.insert(start + j + 1, a[start + j] + v)
    if v:
        for k in range(start + j + 2, start + n + 2):
            a[k] += v


# --------------------------------------------------------------------------- buyer
def new_buyer(code: int) -> array:
    """An empty buyer block."""
    return array("q", (code, NEVER, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0))


def buyer_sections(start: Any, n_o: Any, n_r: Any, n_s: Any = 0, n_nr: Any = 0, n_rj: Any = 0, n_ab: Any = 0,
                   n_l: Any = 0) -> tuple[Any, ...]:
    """The buyer block's layout: section starts ``(ot, oc, oa, rt, rk, rm, st, sc, nr, rj, ab, lk, lt, end)``
    of a block at ``start`` with these counts. Ints or numpy arrays (one block per element) alike: the one
    definition the scalar updates, the vectorised warm start and expiry all read. The first six starts
    depend on ``n_o`` and ``n_r`` only."""
    ot = start + B_HEAD
    oc = ot + n_o
    oa = oc + n_o + 1
    rt = oa + n_o
    rk = rt + n_r
    rm = rk + n_r + 1
    st = rm + n_r + 1
    sc = st + n_s
    nr = sc + n_s
    rj = nr + n_nr
    ab = rj + n_rj
    lk = ab + n_ab
    lt = lk + n_l
    return (ot, oc, oa, rt, rk, rm, st, sc, nr, rj, ab, lk, lt, lt + n_l)


def buyer_offsets(a: Block) -> tuple[int, ...]:
    """Section starts ``(ot, oc, oa, rt, rk, rm, st, sc, nr, rj, ab, lk, lt, end)`` and counts."""
    n_o, n_r, n_s, n_nr, n_rj, n_ab, n_l = a[2:9]
    return (*buyer_sections(0, n_o, n_r, n_s, n_nr, n_rj, n_ab, n_l), n_o, n_r, n_s, n_nr, n_rj, n_ab, n_l)


def buyer_add_order(a: array, paid: int, amount: float, cents: int) -> None:
    """Add an order (time, amount, whole cents)."""
    ot, oc, oa, *_rest = buyer_offsets(a)
    n_o = a[B_NO]
    j = bisect_left(a, paid, ot, ot + n_o)
    while j < ot + n_o and a[j] == paid and i2f(a[oa + j - ot]) <= amount:  # ties by amount
        j += 1
    j -= ot
    a.insert(oa + j, f2i(amount))
    _add_prefix(a, oc, n_o, j, cents)
    a.insert(ot + j, paid)
    a[B_NO] = n_o + 1
    if paid < a[B_FIRST]:
        a[B_FIRST] = paid


def buyer_add_refund(a: array, requested: int, refund_only: bool, cents: int) -> None:
    """Add a refund request (time, kind, whole cents)."""
    off = buyer_offsets(a)
    rt, rk, rm, n_r = off[3], off[4], off[5], off[15]
    j = bisect_right(a, requested, rt, rt + n_r) - rt
    _add_prefix(a, rm, n_r, j, cents if refund_only else 0)
    _add_prefix(a, rk, n_r, j, 1 if refund_only else 0)
    a.insert(rt + j, requested)
    a[B_NR] = n_r + 1


def buyer_add_store(a: array, store: int, requested: int) -> None:
    """Record a refund from ``store`` at ``requested`` (keeps the first time per store)."""
    off = buyer_offsets(a)
    st, sc, n_s = off[6], off[7], off[16]
    for k in range(n_s):
        if a[sc + k] == store:
            if a[st + k] <= requested:
                return
            del a[sc + k]
            del a[st + k]
            n_s -= 1
            sc -= 1
            break
    p = bisect_right(a, requested, st, st + n_s) - st
    a.insert(sc + p, store)
    a.insert(st + p, requested)
    a[B_NS] = n_s + 1


def buyer_add_claim(a: array, requested: int) -> None:
    """Add a "not received" claim on an order delivered before it."""
    off = buyer_offsets(a)
    _insort(a, off[8], off[8] + off[17], requested)
    a[B_NNR] += 1


def buyer_add_bad(a: array, resolved: int, rejected: bool, abuse: bool) -> None:
    """Add a resolution that was rejected and/or labelled abuse."""
    off = buyer_offsets(a)
    if abuse:
        _insort(a, off[10], off[10] + off[19], resolved)
        a[B_NAB] += 1
    if rejected:
        _insort(a, off[9], off[9] + off[18], resolved)
        a[B_NRJ] += 1


def buyer_first_bad(a: Block) -> int:
    """Resolution time of the buyer's first rejected or abusive refund (``NEVER`` if none)."""
    off = buyer_offsets(a)
    rj = a[off[9]] if off[18] else NEVER
    ab = a[off[10]] if off[19] else NEVER
    return rj if rj < ab else ab


def buyer_link(a: array, kcode: int, paid: int) -> int | None:
    """Note an order on link key ``kcode``; return the key's previous first time for this buyer
    (``NEVER`` when new), or ``None`` when unchanged."""
    off = buyer_offsets(a)
    lk, lt, n_l = off[11], off[12], off[20]
    for k in range(n_l):
        if a[lk + k] == kcode:
            old = a[lt + k]
            if paid >= old:
                return None
            a[lt + k] = paid
            return old
    a.insert(lt + n_l, paid)
    a.insert(lk + n_l, kcode)
    a[B_NL] = n_l + 1
    return NEVER


def buyer_links(a: Block) -> list[tuple[int, int]]:
    """The buyer's ``(kcode, first time)`` pairs."""
    off = buyer_offsets(a)
    lk, lt, n_l = off[11], off[12], off[20]
    return [(a[lk + k], a[lt + k]) for k in range(n_l)]


def buyer_cluster(a: Block, t: int) -> tuple[list[tuple[int, int]], int, int, bool]:
    """For the cluster search: the buyer's ``(kcode, first time)`` links, its refund requests in
    ``[t - 24h, t)`` and ``[t - 30d, t)``, and whether it had a bad outcome before ``t`` (one layout read)."""
    _ot, _oc, _oa, rt, _rk, _rm, _st, _sc, _nr, rj, ab, lk, lt, _end, _n_o, n_r, _n_s, _n_nr, n_rj, n_ab, n_l = \
        buyer_offsets(a)
    hi = bisect_left(a, t, rt, rt + n_r)
    bad = (n_rj and a[rj] < t) or (n_ab and a[ab] < t)
    return ([(a[lk + k], a[lt + k]) for k in range(n_l)], hi - bisect_left(a, t - _DAY, rt, hi),
            hi - bisect_left(a, t - 30 * _DAY, rt, hi), bool(bad))


def buyer_values(a: Block, t: int) -> dict:
    """Every :class:`~refundguard.profiles.BuyerProfile` field at ``t`` except ``first_order_at``'s type."""
    (ot, oc, oa, rt, rk, rm, st, _sc, nr, rj, ab, _lk, _lt, _end,
     n_o, n_r, n_s, n_nr, n_rj, n_ab, _n_l) = buyer_offsets(a)
    hi = bisect_left(a, t, ot, ot + n_o)
    l30 = bisect_left(a, t - 30 * _DAY, ot, hi)
    l90 = bisect_left(a, t - 90 * _DAY, ot, l30)
    l365 = bisect_left(a, t - 365 * _DAY, ot, l90)
    ch = a[oc + hi - ot]
    k = hi - ot if hi - ot < MEDIAN_K else MEDIAN_K
    if k:
        vals = sorted(struct.unpack_from(f"<{k}d", a, 8 * (oa + hi - ot - k)))
        median = (vals[(k - 1) // 2] + vals[k // 2]) / 2.0
    else:
        median = None
    rhi = bisect_left(a, t, rt, rt + n_r)
    r1 = bisect_left(a, t - _DAY, rt, rhi)
    r7 = bisect_left(a, t - 7 * _DAY, rt, r1)
    r30 = bisect_left(a, t - 30 * _DAY, rt, r7)
    r90 = bisect_left(a, t - 90 * _DAY, rt, r30)
    r365 = bisect_left(a, t - 365 * _DAY, rt, r90)
    kh = a[rk + rhi - rt]
    first = a[B_FIRST]
    return {
        "first_order_at": first if first < t else None,
        "n_orders_30d": hi - l30,
        "n_orders_90d": hi - l90,
        "n_orders_365d": hi - l365,
        "spend_30d": (ch - a[oc + l30 - ot]) / 100.0,
        "spend_90d": (ch - a[oc + l90 - ot]) / 100.0,
        "spend_365d": (ch - a[oc + l365 - ot]) / 100.0,
        "n_refunds_1d": rhi - r1,
        "n_refunds_7d": rhi - r7,
        "n_refunds_30d": rhi - r30,
        "n_refunds_90d": rhi - r90,
        "n_refunds_365d": rhi - r365,
        "n_refund_only_1d": kh - a[rk + r1 - rt],
        "n_refund_only_7d": kh - a[rk + r7 - rt],
        "n_refund_only_30d": kh - a[rk + r30 - rt],
        "n_refund_only_90d": kh - a[rk + r90 - rt],
        "n_refund_only_365d": kh - a[rk + r365 - rt],
        "refund_only_amount_365d": (a[rm + rhi - rt] - a[rm + r365 - rt]) / 100.0,
        "n_stores_refunded": bisect_left(a, t, st, st + n_s) - st,
        "n_not_received_on_delivered": bisect_left(a, t, nr, nr + n_nr) - nr,
        "n_rejected": bisect_left(a, t, rj, rj + n_rj) - rj,
        "n_abuse": bisect_left(a, t, ab, ab + n_ab) - ab,
        "median_order_amount": median,
    }


def buyer_cuts(a: Block, floor: int) -> tuple[int, int]:
    """How many of the oldest ``(refunds, orders)`` no request at ``t >= floor`` reads (read only).

    Refunds older than ``floor - 365 days`` go; orders too, except the latest
    :data:`MEDIAN_K` before ``floor`` (the median order amount reads them).
    """
    off = buyer_offsets(a)
    ot, rt, n_o, n_r = off[0], off[3], off[14], off[15]
    r_cut = bisect_left(a, floor - 365 * _DAY, rt, rt + n_r) - rt
    kw = bisect_left(a, floor - 365 * _DAY, ot, ot + n_o) - ot
    m = bisect_left(a, floor, ot, ot + n_o) - ot
    return r_cut, min(kw, max(0, m - MEDIAN_K))


def buyer_trim(a: array, floor: int) -> int:
    """Drop what no request at ``t >= floor`` reads (:func:`buyer_cuts`); return the number of values dropped."""
    r_cut, cut = buyer_cuts(a, floor)
    if not (r_cut or cut):
        return 0
    off = buyer_offsets(a)
    ot, oc, oa, rt, rk, rm, n_o, n_r = off[0], off[1], off[2], off[3], off[4], off[5], off[14], off[15]
    if r_cut:
        del a[rm:rm + r_cut]
        del a[rk:rk + r_cut]
        del a[rt:rt + r_cut]
        a[B_NR] = n_r - r_cut
    if cut:
        del a[oa:oa + cut]
        del a[oc:oc + cut]
        del a[ot:ot + cut]
        a[B_NO] = n_o - cut
    return 3 * (r_cut + cut)


# --------------------------------------------------------------------------- store
def new_store(code: int) -> array:
    """An empty store block."""
    return array("q", (code, 0))


def store_add_order(a: array, paid: int) -> None:
    """Add an order time."""
    n_o = a[1]
    _insort(a, S_HEAD, S_HEAD + n_o, paid)
    a[1] = n_o + 1


def store_add_refund(a: array, requested: int) -> None:
    """Add a refund request time."""
    _insort(a, S_HEAD + a[1], len(a), requested)


def store_values(a: Block, t: int) -> tuple[int, int, int]:
    """``(orders in [t - 30d, t), refunds in [t - 30d, t), refunds in [t - 24h, t))``."""
    e = S_HEAD + a[1]
    hi = bisect_left(a, t, S_HEAD, e)
    n_o = hi - bisect_left(a, t - 30 * _DAY, S_HEAD, hi)
    rhi = bisect_left(a, t, e, len(a))
    r1 = bisect_left(a, t - _DAY, e, rhi)
    return n_o, rhi - bisect_left(a, t - 30 * _DAY, e, r1), rhi - r1


def store_cuts(a: Block, floor: int) -> tuple[int, int]:
    """How many of the oldest ``(orders, refunds)`` no 30-day window from ``floor`` on reaches (read only)."""
    e = S_HEAD + a[1]
    return (bisect_left(a, floor - 30 * _DAY, S_HEAD, e) - S_HEAD,
            bisect_left(a, floor - 30 * _DAY, e, len(a)) - e)


def store_trim(a: array, floor: int) -> int:
    """Drop orders and refunds no 30-day window from ``floor`` on reaches."""
    o_cut, r_cut = store_cuts(a, floor)
    e = S_HEAD + a[1]
    if r_cut:
        del a[e:e + r_cut]
    if o_cut:
        del a[S_HEAD:S_HEAD + o_cut]
        a[1] -= o_cut
    return o_cut + r_cut


# --------------------------------------------------------------------------- link
def new_link(code: int) -> array:
    """An empty device/address block."""
    return array("q", (code, 0, 0))


def link_add_seen(a: array, first: int) -> None:
    """A buyer first seen on the key at ``first``."""
    n = a[1]
    _insort(a, L_HEAD, L_HEAD + n, first)
    a[1] = n + 1


def link_move(a: array, old: int, new: int, bad: bool) -> None:
    """Move one buyer's value from ``old`` to ``new`` in SEEN (``bad=False``) or BAD (``bad=True``);
    ``old == NEVER`` adds, ``new == NEVER`` removes."""
    n_s, n_b = a[1], a[2]
    lo = L_HEAD + (n_s if bad else 0)
    n = n_b if bad else n_s
    if old != NEVER:
        _remove(a, lo, lo + n, old)
        n -= 1
    if new != NEVER:
        _insort(a, lo, lo + n, new)
        n += 1
    a[2 if bad else 1] = n


def link_add_bad(a: array, value: int) -> None:
    """A buyer of the key became bad, known from ``value`` on."""
    link_move(a, NEVER, value, True)


def link_add_refund(a: array, requested: int) -> None:
    """A refund requested on an order of the key."""
    _insort(a, L_HEAD + a[1] + a[2], len(a), requested)


def link_values(a: Block, t: int) -> tuple[int, int, int]:
    """``(buyers seen before t, bad buyers known before t, refunds in [t - 24h, t))``."""
    n_s, n_b = a[1], a[2]
    b0 = L_HEAD + n_s
    r0 = b0 + n_b
    rhi = bisect_left(a, t, r0, len(a))
    return (bisect_left(a, t, L_HEAD, b0) - L_HEAD, bisect_left(a, t, b0, r0) - b0,
            rhi - bisect_left(a, t - _DAY, r0, rhi))


def link_cuts(a: Block, floor: int) -> int:
    """How many of the oldest refund times no 24-hour window from ``floor`` on reaches (read only)."""
    r0 = L_HEAD + a[1] + a[2]
    return bisect_left(a, floor - _DAY, r0, len(a)) - r0


def link_trim(a: array, floor: int) -> int:
    """Drop refund times no 24-hour window from ``floor`` on reaches."""
    cut = link_cuts(a, floor)
    if cut:
        r0 = L_HEAD + a[1] + a[2]
        del a[r0:r0 + cut]
    return cut


# --------------------------------------------------------------------------- many blocks at once
def count_below(buf: np.ndarray, start: np.ndarray, length: np.ndarray, bound: int) -> np.ndarray:
    """For sorted sections ``buf[start[i]:start[i] + length[i]]``: how many values are ``< bound``."""
    total = int(length.sum())
    if total == 0:
        return np.zeros(len(start), dtype=np.int64)
    first = np.cumsum(length) - length
    idx = np.repeat(start - first, length) + np.arange(total, dtype=np.int64)
    below = np.zeros(total + 1, dtype=np.int64)
    np.cumsum(buf[idx] < bound, out=below[1:])
    return below[first + length] - below[first]


def trim_plan(kind: str, buf: np.ndarray, start: np.ndarray, size: np.ndarray,
              floor: int) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[tuple[int, np.ndarray]]]:
    """:func:`buyer_trim` / :func:`store_trim` / :func:`link_trim` of many blocks of one kind, planned at once.

    Parameters
    ----------
    kind
        ``"buyer"``, ``"store"`` or ``"link"``.
    buf, start, size
        The blocks ``buf[start[i]:start[i] + size[i]]`` (non-empty, read only).
    floor
        As for the scalar functions.

    Returns
    -------
    ranges : list of (starts, lengths)
        The values to delete (absolute positions in ``buf``; ranges do not overlap).
    header : list of (field, decrement)
        Subtract ``decrement`` from header field ``field`` of each block.
    """
    if kind == "buyer":
        n_o, n_r = buf[start + B_NO], buf[start + B_NR]
        ot, oc, oa, rt, rk, rm = buyer_sections(start, n_o, n_r)[:6]
        r_cut = count_below(buf, rt, n_r, floor - 365 * _DAY)
        kw = count_below(buf, ot, n_o, floor - 365 * _DAY)
        m = count_below(buf, ot, n_o, floor)
        cut = np.minimum(kw, np.maximum(0, m - MEDIAN_K))
        return ([(ot, cut), (oc, cut), (oa, cut), (rt, r_cut), (rk, r_cut), (rm, r_cut)],
                [(B_NO, cut), (B_NR, r_cut)])
    if kind == "store":
        n_o = buf[start + 1]
        e = start + S_HEAD + n_o
        o_cut = count_below(buf, start + S_HEAD, n_o, floor - 30 * _DAY)
        r_cut = count_below(buf, e, size - S_HEAD - n_o, floor - 30 * _DAY)
        return [(start + S_HEAD, o_cut), (e, r_cut)], [(1, o_cut)]
    r0 = start + L_HEAD + buf[start + 1] + buf[start + 2]
    return [(r0, count_below(buf, r0, start + size - r0, floor - _DAY))], []


__all__ += ["buyer_links"]
