"""Warm start: an in-memory ProfileStore's whole state from tables, vectorised (private).

The state is what :meth:`ProfileStore.observe_order` / ``observe_refund`` /
``observe_resolution`` would build from the same rows, laid out directly, in one
pass per key kind and no Python loop over rows or keys:

* ids: order and refund ids go into :class:`~refundguard.online._ids.IdIndex` in
  bulk, and each refund finds its order row by probing that index (no second hash
  table over the orders); key names are dictionary-encoded by Arrow;
* order: rows are sorted by time once (a stable sort of nearly sorted times), then
  by key with a stable LSD radix sort of the key codes (16 bits a pass), so every
  key's events come out grouped and in time order;
* layout: each key kind's blocks are written into ONE int64 buffer with numpy
  scatters at offsets from ``np.cumsum`` of the block sizes (prefix sums per key
  with one ``cumsum``), and the store keeps that buffer plus the offsets
  (:class:`~refundguard.online._tables.KeyBlocks`): no object per key.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from refundguard._time import NAT, NEVER, series_ns
from refundguard.errors import DataError
from refundguard.online._blocks import L_HEAD, S_HEAD, buyer_sections
from refundguard.online._ids import IdIndex, radix_order
from refundguard.online._tables import (
    F_ABUSE,
    F_CLAIM,
    F_LABELLED,
    F_NR,
    F_ONLY,
    F_REJECTED,
    F_RESOLVED,
    OUTCOME_CODES,
)

__all__ = ["fill_from_tables", "group_order"]


def _bits(n: int) -> int:
    return max(1, int(n - 1).bit_length()) if n > 1 else 1


def group_order(group: np.ndarray, n_groups: int, by_time: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rows ordered by ``group`` (codes ``0..n_groups-1``), stable (within a group: the order of ``by_time`` if
    given, else row order), and each group's size."""
    counts = np.bincount(group, minlength=n_groups) if len(group) else np.zeros(n_groups, dtype=np.int64)
    if by_time is None:
        return radix_order(group, _bits(n_groups)), counts
    return by_time[radix_order(group[by_time], _bits(n_groups))], counts


def _time_order(t: np.ndarray) -> np.ndarray:
    if len(t) < 2 or (t[1:] >= t[:-1]).all():
        return np.arange(len(t), dtype=np.int64)
    return np.argsort(t, kind="stable")


def _rank_in_group(counts: np.ndarray) -> np.ndarray:
    """0, 1, ... within each group, for rows laid out group after group."""
    n = int(counts.sum())
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    return np.arange(n, dtype=np.int64) - starts


def _cum_in_groups(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Inclusive cumulative sums restarting at each group (rows laid out group after group), exact int64."""
    cum = np.cumsum(values, dtype=np.int64)
    ends = np.cumsum(counts)
    before = np.zeros(len(counts), dtype=np.int64)
    inner = (counts > 0) & (ends - counts > 0)
    before[inner] = cum[(ends - counts)[inner] - 1]
    return cum - np.repeat(before, counts)


def _arrow(s: pd.Series) -> pa.Array:
    a = pa.array(s)
    return a.combine_chunks() if isinstance(a, pa.ChunkedArray) else a


def _encode(a: pa.Array) -> tuple[np.ndarray, list[str]]:
    """Codes (first appearance order, -1 for null) and names of a string column."""
    d = pc.dictionary_encode(a)
    codes = pc.fill_null(d.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    return codes, d.dictionary.to_pylist()


def _text_is(s: pd.Series, value: str) -> np.ndarray:
    return (s == value).fillna(False).to_numpy(dtype=bool)


def fill_from_tables(store: Any, clean: dict[str, pd.DataFrame], cut: int) -> None:
    """Fill an empty ProfileStore with every event of canonical tables known before ``cut`` (ns)."""
    o, r = clean["orders"], clean["refunds"]
    paid = series_ns(o["paid_at"])
    o_ids, o_buyer, o_store = _arrow(o["order_id"]), _arrow(o["buyer_id"]), _arrow(o["store_id"])
    o_dev, o_addr = _arrow(o["device_id"]), _arrow(o["address_id"])
    shipped, delivered = series_ns(o["shipped_at"]), series_ns(o["delivered_at"])
    amount = o["amount"].to_numpy(np.float64)
    keep = paid < cut
    if not keep.all():
        mask = pa.array(keep)
        o_ids, o_buyer, o_store, o_dev, o_addr = (x.filter(mask) for x in (o_ids, o_buyer, o_store, o_dev, o_addr))
        paid, shipped, delivered, amount = paid[keep], shipped[keep], delivered[keep], amount[keep]
    shipped = np.where(shipped < cut, shipped, NAT)  # copies: the caller's frame is never written
    delivered = np.where(delivered < cut, delivered, NAT)
    n = len(paid)
    cents = np.rint(amount * 100.0).astype(np.int64)
    buyer, buyer_names = _encode(o_buyer)
    storec, store_names = _encode(o_store)
    dev, dev_names = _encode(o_dev)
    addr, addr_names = _encode(o_addr)
    nb, ns = len(buyer_names), len(store_names)
    order_ids = IdIndex.from_arrow(o_ids)

    # --- refunds known before the cut, their order rows and resolutions
    req = series_ns(r["requested_at"])
    rkeep = req < cut
    r_ids, r_order = _arrow(r["refund_id"]), _arrow(r["order_id"])
    resolved = series_ns(r["resolved_at"])
    outcome, kind, reason = r["outcome"], r["kind"], r["reason"]
    label = r["is_abuse"].astype("boolean")
    r_amount = r["amount"].to_numpy(np.float64)
    if not rkeep.all():
        mask = pa.array(rkeep)
        r_ids, r_order = r_ids.filter(mask), r_order.filter(mask)
        req, resolved, r_amount = req[rkeep], resolved[rkeep], r_amount[rkeep]
        outcome, kind, reason, label = outcome[rkeep], kind[rkeep], reason[rkeep], label[rkeep]
    m = len(req)
    orow = order_ids.find(r_order)
    if m and orow.min() < 0:
        bad = r_order.take(pa.array(np.flatnonzero(orow < 0)[:5])).to_pylist()
        raise DataError(f"refunds reference orders that are not in the orders table (or paid after as_of), "
                        f"e.g. {bad}: validate the tables first.", detail={"order_ids": bad})
    known = (resolved != NAT) & (resolved < cut)
    resolved = np.where(known, resolved, NAT)
    out_code = np.zeros(m, dtype=np.uint8)
    for name, code in OUTCOME_CODES.items():
        out_code[_text_is(outcome, name) & known] = code
    labelled = label.notna().to_numpy(bool) & known
    abuse = label.fillna(False).to_numpy(bool) & known
    rejected = out_code == OUTCOME_CODES["rejected"]
    only = _text_is(kind, "refund_only")
    nr = _text_is(reason, "not_received")
    r_cents = np.rint(r_amount * 100.0).astype(np.int64)
    r_deliv = delivered[orow] if m else np.empty(0, np.int64)
    claim = nr & (r_deliv != NAT) & (r_deliv < req)
    flags = (np.where(only, F_ONLY, 0) | np.where(nr, F_NR, 0) | np.where(claim, F_CLAIM, 0)
             | np.where(known, F_RESOLVED, 0) | np.where(rejected, F_REJECTED, 0)
             | np.where(abuse, F_ABUSE, 0) | np.where(labelled, F_LABELLED, 0)).astype(np.uint8)
    # each order's refunds as a linked list (first_refund -> next)
    by_order = np.argsort(orow, kind="stable")
    nxt = np.full(m, -1, dtype=np.int32)
    first_refund = np.full(n, -1, dtype=np.int32)
    if m:
        so = orow[by_order]
        same = so[1:] == so[:-1]
        nxt[by_order[:-1][same]] = by_order[1:][same]
        head = np.ones(m, dtype=bool)
        head[1:] = ~same
        first_refund[so[head]] = by_order[head]
    store._orders.replace(order_ids, {
        "buyer": buyer, "store": storec, "device": dev, "address": addr, "paid": paid, "shipped": shipped,
        "delivered": delivered, "amount": amount, "first_refund": first_refund})
    store._refunds.replace(IdIndex.from_arrow(r_ids), {
        "order": orow, "requested": req, "resolved": resolved, "amount": r_amount, "flags": flags,
        "outcome": out_code, "next": nxt})
    # held resolutions: none (tables carry them with their refund)

    r_buyer, r_store = buyer[orow], storec[orow]
    r_dev, r_addr = dev[orow], addr[orow]
    by_time = _time_order(paid)

    # --- buyer blocks
    o_ord, n_o = group_order(buyer, nb, by_time)
    ob, op, oa = buyer[o_ord], paid[o_ord], amount[o_ord]
    ties = np.flatnonzero((ob[1:] == ob[:-1]) & (op[1:] == op[:-1]))
    if len(ties):  # equal (buyer, paid): order by amount, as the batch median does
        pos = np.unique(np.concatenate([ties, ties + 1]))
        sub = np.lexsort((oa[pos], op[pos], ob[pos]))
        o_ord[pos] = o_ord[pos][sub]
        ob, op, oa = buyer[o_ord], paid[o_ord], amount[o_ord]
    oc = cents[o_ord]
    first = np.full(nb, NEVER, dtype=np.int64)
    starts_o = np.cumsum(n_o) - n_o
    has = n_o > 0
    first[has] = op[starts_o[has]]
    r_ord = np.lexsort((req, r_buyer))
    n_r = np.bincount(r_buyer, minlength=nb)
    # distinct stores refunded: first request per (buyer, store)
    pair = pd.Series(r_buyer[r_ord] * max(ns, 1) + r_store[r_ord])
    firsts = r_ord[~pair.duplicated().to_numpy()]
    s_ord = firsts[np.lexsort((req[firsts], r_buyer[firsts]))]
    n_s = np.bincount(r_buyer[s_ord], minlength=nb)
    c_ord = np.flatnonzero(claim)
    c_ord = c_ord[np.lexsort((req[c_ord], r_buyer[c_ord]))]
    n_nr = np.bincount(r_buyer[c_ord], minlength=nb)
    j_ord = np.flatnonzero(rejected)
    j_ord = j_ord[np.lexsort((resolved[j_ord], r_buyer[j_ord]))]
    n_rj = np.bincount(r_buyer[j_ord], minlength=nb)
    a_ord = np.flatnonzero(abuse)
    a_ord = a_ord[np.lexsort((resolved[a_ord], r_buyer[a_ord]))]
    n_ab = np.bincount(r_buyer[a_ord], minlength=nb)
    # link pairs: each buyer's first order on each device (kind 0) and address (kind 1)
    lk_b, lk_k, lk_t = [], [], []
    for kind_code, key in ((0, dev[o_ord]), (1, addr[o_ord])):
        # a buyer's first order on a key: rows repeating the previous row's (buyer, key) are never first,
        # which leaves few candidates (buyers seldom switch devices) for the hash-based dedup
        cand = key >= 0
        cand[1:] &= (key[1:] != key[:-1]) | (ob[1:] != ob[:-1])
        kb, kk, kt = ob[cand], key[cand], op[cand]
        firsts = ~pd.Series(kb * max(len(dev_names), len(addr_names), 1) + kk).duplicated().to_numpy()
        lk_b.append(kb[firsts])
        lk_k.append(2 * kk[firsts] + kind_code)
        lk_t.append(kt[firsts])
    pb, pk, pt = np.concatenate(lk_b), np.concatenate(lk_k), np.concatenate(lk_t)
    p_ord = np.argsort(pb, kind="stable")
    n_l = np.bincount(pb, minlength=nb)
    pb, pk, pt = pb[p_ord], pk[p_ord], pt[p_ord]

    size = buyer_sections(0, n_o, n_r, n_s, n_nr, n_rj, n_ab, n_l)[-1]
    bstart = np.cumsum(size) - size
    buf = np.zeros(int(size.sum()), dtype=np.int64)
    buf[bstart] = np.arange(nb)
    buf[bstart + 1] = first
    for k, cnt in enumerate((n_o, n_r, n_s, n_nr, n_rj, n_ab, n_l)):
        buf[bstart + 2 + k] = cnt
    ot, oc_, oa_, rt, rk, rm, st, sc, nr_, rj, ab, lk, lt, _end = buyer_sections(
        bstart, n_o, n_r, n_s, n_nr, n_rj, n_ab, n_l)

    def put(section: np.ndarray, groups: np.ndarray, values: np.ndarray, counts: np.ndarray) -> None:
        buf[section[groups] + _rank_in_group(counts)] = values

    j = _rank_in_group(n_o)
    buf[ot[ob] + j] = op
    buf[oa_[ob] + j] = oa.view(np.int64)
    buf[oc_[ob] + j + 1] = _cum_in_groups(oc, n_o)
    rb, rq = r_buyer[r_ord], req[r_ord]
    jr = _rank_in_group(n_r)
    buf[rt[rb] + jr] = rq
    buf[rk[rb] + jr + 1] = _cum_in_groups(only[r_ord].astype(np.int64), n_r)
    buf[rm[rb] + jr + 1] = _cum_in_groups(np.where(only, r_cents, 0)[r_ord], n_r)
    put(st, r_buyer[s_ord], req[s_ord], n_s)
    put(sc, r_buyer[s_ord], r_store[s_ord], n_s)
    put(nr_, r_buyer[c_ord], req[c_ord], n_nr)
    put(rj, r_buyer[j_ord], resolved[j_ord], n_rj)
    put(ab, r_buyer[a_ord], resolved[a_ord], n_ab)
    put(lk, pb, pk, n_l)
    put(lt, pb, pt, n_l)
    store._buyers.set_base(buyer_names, buf, np.append(bstart, len(buf)))

    # --- store blocks: order times, then refund times, sorted
    so_ord, s_no = group_order(storec, ns, by_time)
    sr_ord = np.lexsort((req, r_store))
    s_nr = np.bincount(r_store, minlength=ns)
    size = S_HEAD + s_no + s_nr
    sstart = np.cumsum(size) - size
    buf = np.zeros(int(size.sum()), dtype=np.int64)
    buf[sstart] = np.arange(ns)
    buf[sstart + 1] = s_no
    put_s = sstart + S_HEAD
    buf[put_s[storec[so_ord]] + _rank_in_group(s_no)] = paid[so_ord]
    buf[(put_s + s_no)[r_store[sr_ord]] + _rank_in_group(s_nr)] = req[sr_ord]
    store._stores.set_base(store_names, buf, np.append(sstart, len(buf)))

    # --- link blocks: first seen per buyer, first bad per buyer, refund times
    fb = np.full(nb, NEVER, dtype=np.int64)
    bad = rejected | abuse
    if bad.any():
        np.minimum.at(fb, r_buyer[bad], resolved[bad])
    for kind_code, (names, r_key) in enumerate(((dev_names, r_dev), (addr_names, r_addr))):
        nk = len(names)
        mine = (pk & 1) == kind_code
        kb, kk, kt = pb[mine], pk[mine] >> 1, pt[mine]
        seen_ord = np.lexsort((kt, kk))
        n_seen = np.bincount(kk, minlength=nk)
        isbad = fb[kb] != NEVER
        bk, bv = kk[isbad], np.maximum(kt, fb[kb])[isbad]
        bad_ord = np.lexsort((bv, bk))
        n_bad = np.bincount(bk, minlength=nk)
        ok = r_key >= 0
        rk_, rq_ = r_key[ok], req[ok]
        ref_ord = np.lexsort((rq_, rk_))
        n_ref = np.bincount(rk_, minlength=nk)
        size = L_HEAD + n_seen + n_bad + n_ref
        lstart = np.cumsum(size) - size
        buf = np.zeros(int(size.sum()), dtype=np.int64)
        buf[lstart] = np.arange(nk)
        buf[lstart + 1] = n_seen
        buf[lstart + 2] = n_bad
        s0 = lstart + L_HEAD
        buf[s0[kk[seen_ord]] + _rank_in_group(n_seen)] = kt[seen_ord]
        buf[(s0 + n_seen)[bk[bad_ord]] + _rank_in_group(n_bad)] = bv[bad_ord]
        buf[(s0 + n_seen + n_bad)[rk_[ref_ord]] + _rank_in_group(n_ref)] = rq_[ref_ord]
        store._links[kind_code].set_base(names, buf, np.append(lstart, len(buf)))
    store._index_members()  # the cluster search's key -> buyers index is derived from the buyer blocks
    newest = max(int(paid.max(initial=NAT)), int(req.max(initial=NAT)), int(resolved.max(initial=NAT)))
    store._newest = newest
