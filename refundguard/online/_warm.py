"""Warm start: an in-memory ProfileStore's whole state from tables, vectorised (private).

The state is what :meth:`ProfileStore.observe_order` / ``observe_refund`` /
``observe_resolution`` would build from the same rows, laid out directly: ids are
indexed in bulk, every key's block is assembled in one int64 buffer with numpy
scatters (event times sorted per key by one time sort plus a stable counting sort
per key kind, prefix sums with ``cumsum``), and only the final step, one
``array('q')`` per key, is a Python loop (over keys, not events).
"""

from __future__ import annotations

import gc
from array import array
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from refundguard._time import NAT, NEVER, series_ns
from refundguard.online._blocks import B_HEAD, L_HEAD, S_HEAD
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

__all__ = ["fill_from_tables", "blocks_from_buffer", "group_order"]


def group_order(group: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Stable order of rows by ``group`` (0..n_groups-1; counting sort) and each group's size."""
    counts = np.bincount(group, minlength=n_groups)
    if len(group) == 0:
        return np.empty(0, dtype=np.int64), counts
    start = np.zeros(n_groups, dtype=np.int64)
    np.cumsum(counts[:-1], out=start[1:])
    rank = pd.Series(group).groupby(group, sort=False).cumcount().to_numpy()
    order = np.empty(len(group), dtype=np.int64)
    order[start[group] + rank] = np.arange(len(group), dtype=np.int64)
    return order, counts


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


def _by_group_then_time(group: np.ndarray, t: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows ordered by (group, t), and the group sizes."""
    if len(t) > 1 and not (t[1:] >= t[:-1]).all():
        by_time = np.argsort(t, kind="stable")
        order, counts = group_order(group[by_time], n_groups)
        return by_time[order], counts
    return group_order(group, n_groups)


def blocks_from_buffer(buf: np.ndarray, starts: np.ndarray, names: list[str]) -> dict[str, array]:
    """One ``array('q')`` per key from a buffer of blocks laid back to back (``starts``: n + 1 offsets)."""
    mv = memoryview(np.ascontiguousarray(buf, dtype=np.int64)).cast("B")
    bounds = (np.asarray(starts, dtype=np.int64) * 8).tolist()
    out: dict[str, array] = {}
    was_enabled = gc.isenabled()
    gc.disable()  # only new objects, none of them garbage: a collection per 700 allocations is wasted work
    try:
        for k, name in enumerate(names):
            a = array("q")
            a.frombytes(mv[bounds[k]:bounds[k + 1]])
            out[name] = a
    finally:
        if was_enabled:
            gc.enable()
    return out


def _codes(s: pd.Series) -> tuple[np.ndarray, list[str]]:
    codes, uniques = pd.factorize(s, use_na_sentinel=True)
    return codes.astype(np.int64), [str(u) for u in uniques]


def fill_from_tables(store: Any, clean: dict[str, pd.DataFrame], cut: int) -> None:
    """Fill an empty ProfileStore with every event of canonical tables known before ``cut`` (ns)."""
    o, r = clean["orders"], clean["refunds"]
    paid = series_ns(o["paid_at"])
    keep = paid < cut
    if not keep.all():
        o, paid = o.loc[keep], paid[keep]
    n = len(o)
    shipped = series_ns(o["shipped_at"])
    delivered = series_ns(o["delivered_at"])
    shipped[shipped >= cut] = NAT
    delivered[delivered >= cut] = NAT
    amount = o["amount"].to_numpy(np.float64)
    cents = np.rint(amount * 100.0).astype(np.int64)
    buyer, buyer_names = _codes(o["buyer_id"])
    storec, store_names = _codes(o["store_id"])
    dev, dev_names = _codes(o["device_id"])
    addr, addr_names = _codes(o["address_id"])
    nb, ns = len(buyer_names), len(store_names)

    # --- refunds known before the cut, their order rows and resolutions
    req = series_ns(r["requested_at"])
    rkeep = req < cut
    if not rkeep.all():
        r, req = r.loc[rkeep], req[rkeep]
    m = len(r)
    store._orders.set_all(pa.array(o["order_id"]), {})
    orow = store._orders.ids.find(pa.array(r["order_id"]))
    resolved = series_ns(r["resolved_at"])
    known = (resolved != NAT) & (resolved < cut)
    resolved = np.where(known, resolved, NAT)
    outcome = r["outcome"].astype("str")
    out_code = np.zeros(m, dtype=np.uint8)
    for name, code in OUTCOME_CODES.items():
        out_code[(outcome == name).to_numpy(bool) & known] = code
    label = r["is_abuse"].astype("boolean")
    labelled = label.notna().to_numpy(bool) & known
    abuse = label.fillna(False).to_numpy(bool) & known
    rejected = out_code == OUTCOME_CODES["rejected"]
    only = (r["kind"].astype("str") == "refund_only").to_numpy(bool)
    nr = (r["reason"].astype("str") == "not_received").to_numpy(bool)
    r_amount = r["amount"].to_numpy(np.float64)
    r_cents = np.rint(r_amount * 100.0).astype(np.int64)
    r_deliv = delivered[orow] if m else np.empty(0, np.int64)
    claim = nr & (r_deliv != NAT) & (r_deliv < req)
    flags = (np.where(only, F_ONLY, 0) | np.where(nr, F_NR, 0) | np.where(claim, F_CLAIM, 0)
             | np.where(known, F_RESOLVED, 0) | np.where(rejected, F_REJECTED, 0)
             | np.where(abuse, F_ABUSE, 0) | np.where(labelled, F_LABELLED, 0)).astype(np.uint8)
    # each order's refunds as a linked list (first_refund -> next)
    by_order, _ = group_order(orow, n)
    nxt = np.full(m, -1, dtype=np.int32)
    first_refund = np.full(n, -1, dtype=np.int32)
    if m:
        so = orow[by_order]
        same = so[1:] == so[:-1]
        nxt[by_order[:-1][same]] = by_order[1:][same]
        head = np.ones(m, dtype=bool)
        head[1:] = ~same
        first_refund[so[head]] = by_order[head]
    store._orders.n = n
    for name, col in (("buyer", buyer), ("store", storec), ("device", dev), ("address", addr),
                      ("paid", paid), ("shipped", shipped), ("delivered", delivered), ("amount", amount),
                      ("first_refund", first_refund)):
        store._orders.cols[name][:n] = col
    store._refunds.set_all(pa.array(r["refund_id"]), {
        "order": orow, "requested": req, "resolved": resolved, "amount": r_amount, "flags": flags,
        "outcome": out_code, "next": nxt})
    # held resolutions: none (tables carry them with their refund)

    r_buyer, r_store = buyer[orow], storec[orow]
    r_dev, r_addr = dev[orow], addr[orow]

    # --- buyer blocks
    o_ord, n_o = _by_group_then_time(buyer, paid, nb)
    ob, op, oa, oc = buyer[o_ord], paid[o_ord], amount[o_ord], cents[o_ord]
    ties = np.flatnonzero((ob[1:] == ob[:-1]) & (op[1:] == op[:-1]))
    if len(ties):  # equal (buyer, paid): order by amount, as the batch median does
        pos = np.unique(np.concatenate([ties, ties + 1]))
        sub = np.lexsort((oa[pos], op[pos], ob[pos]))
        o_ord[pos] = o_ord[pos][sub]
        ob, op, oa, oc = buyer[o_ord], paid[o_ord], amount[o_ord], cents[o_ord]
    first = np.full(nb, NEVER, dtype=np.int64)
    starts_o = np.cumsum(n_o) - n_o
    has = n_o > 0
    first[has] = op[starts_o[has]]
    r_ord, n_r = _by_group_then_time(r_buyer, req, nb)
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
    for kind, key in ((0, dev[o_ord]), (1, addr[o_ord])):
        ok = key >= 0
        kc = 2 * key + kind
        dup = pd.Series(np.where(ok, ob * (2 * max(len(dev_names), len(addr_names), 1) + 2) + kc, -1)).duplicated()
        sel = ok & ~dup.to_numpy()
        lk_b.append(ob[sel])
        lk_k.append(kc[sel])
        lk_t.append(op[sel])
    pb, pk, pt = np.concatenate(lk_b), np.concatenate(lk_k), np.concatenate(lk_t)
    p_ord, n_l = group_order(pb, nb)
    pb, pk, pt = pb[p_ord], pk[p_ord], pt[p_ord]

    size = B_HEAD + 3 * n_o + 1 + 3 * n_r + 2 + 2 * n_s + n_nr + n_rj + n_ab + 2 * n_l
    bstart = np.cumsum(size) - size
    buf = np.zeros(int(size.sum()), dtype=np.int64)
    buf[bstart] = np.arange(nb)
    buf[bstart + 1] = first
    for k, cnt in enumerate((n_o, n_r, n_s, n_nr, n_rj, n_ab, n_l)):
        buf[bstart + 2 + k] = cnt
    ot = bstart + B_HEAD
    oc_ = ot + n_o
    oa_ = oc_ + n_o + 1
    rt = oa_ + n_o
    rk = rt + n_r
    rm = rk + n_r + 1
    st = rm + n_r + 1
    sc = st + n_s
    nr_ = sc + n_s
    rj = nr_ + n_nr
    ab = rj + n_rj
    lk = ab + n_ab
    lt = lk + n_l

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
    store._buyers.names = buyer_names
    store._buyers.blocks = blocks_from_buffer(buf, np.append(bstart, len(buf)), buyer_names)

    # --- store blocks: order times, then refund times, sorted
    so_ord, s_no = _by_group_then_time(storec, paid, ns)
    sr_ord, s_nr = _by_group_then_time(r_store, req, ns)
    size = S_HEAD + s_no + s_nr
    sstart = np.cumsum(size) - size
    buf = np.zeros(int(size.sum()), dtype=np.int64)
    buf[sstart] = np.arange(ns)
    buf[sstart + 1] = s_no
    put_s = sstart + S_HEAD
    buf[put_s[storec[so_ord]] + _rank_in_group(s_no)] = paid[so_ord]
    buf[(put_s + s_no)[r_store[sr_ord]] + _rank_in_group(s_nr)] = req[sr_ord]
    store._stores.names = store_names
    store._stores.blocks = blocks_from_buffer(buf, np.append(sstart, len(buf)), store_names)

    # --- link blocks: first seen per buyer, first bad per buyer, refund times
    fb = np.full(nb, NEVER, dtype=np.int64)
    bad = rejected | abuse
    if bad.any():
        fbs = pd.Series(resolved[bad]).groupby(r_buyer[bad]).min()
        fb[fbs.index.to_numpy(np.int64)] = fbs.to_numpy(np.int64)
    for kind, (names, r_key) in enumerate(((dev_names, r_dev), (addr_names, r_addr))):
        nk = len(names)
        mine = (pk & 1) == kind
        kb, kk, kt = pb[mine], pk[mine] >> 1, pt[mine]
        seen_ord, n_seen = _by_group_then_time(kk, kt, nk)
        badv = np.maximum(kt, fb[kb])
        isbad = fb[kb] != NEVER
        bk, bv = kk[isbad], badv[isbad]
        bad_ord, n_bad = _by_group_then_time(bk, bv, nk)
        ok = r_key >= 0
        rk_, rq_ = r_key[ok], req[ok]
        ref_ord, n_ref = _by_group_then_time(rk_, rq_, nk)
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
        keys = store._links[kind]
        keys.names = names
        keys.blocks = blocks_from_buffer(buf, np.append(lstart, len(buf)), names)
    newest = max(int(paid.max(initial=NAT)), int(req.max(initial=NAT)), int(resolved.max(initial=NAT)))
    store._newest = newest
