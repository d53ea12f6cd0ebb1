"""ProfileStore: buyer, store and link profiles kept in process, fed by events (DESIGN.md section 4).

State (see :mod:`refundguard.online._blocks` for the block layouts and
:mod:`refundguard.online._tables` for the containers):

* per key kind (buyer, store, device, address): one block of int64 per key,
  holding sorted event times with prefix sums, all-time first times, and for
  devices and addresses each buyer's first-seen and first-bad time, so every
  profile field is a few binary searches, however long the history or however
  many buyers share a key. Blocks built at once (warm start, snapshot load,
  expiry) sit back to back in ONE int64 buffer with an offsets index; a key an
  event writes gets its own ``array('q')`` copy;
* the order and refund rows (ids in a compact index, a few numeric columns), so
  that events are idempotent, checked against their order, and can be updated
  later (shipping, delivery, resolution);
* for the identity-cluster search (:mod:`refundguard.clusters`), each device's and address's
  buyers with their first time on it, derived from the buyer blocks' link sections (rebuilt,
  vectorised, on warm start and snapshot load; updated by each order). The search reads all-time
  link times filtered by ``< t``, so a late or out-of-order link event is exact at once (nothing is
  folded in time order), and expiry never touches it (link sections and first-bad times are all
  time, refund times are kept 365 days, the search reads 30);
* resolutions whose refund has not arrived yet (held, counted in :meth:`stats`);
* the published store score history (:meth:`set_store_scores`).

Events may come in any order and more than once: the same order or refund counts
once (a second sighting with other values is a ``RequestError``), and a query at
``t`` reads only what is known strictly before ``t``. :meth:`expire` (and
``horizon_days``, on ingest) drops what no request from a given time on can read,
order and refund rows included.
"""

from __future__ import annotations

import threading
import warnings
from array import array
from bisect import bisect_left, insort
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from refundguard._time import NAT, NEVER, NS_PER_DAY, parameter_ns
from refundguard.clusters import CLUSTER_HUB_BUYERS, CLUSTER_MAX_ACCOUNTS, search_one, sorted_members
from refundguard.config import ScoreConfig
from refundguard.errors import ConfigError, RefundGuardWarning, RequestError
import refundguard.online._blocks as B
from refundguard.online._events import (
    OrderEvent,
    RefundEvent,
    Resolution,
    cents,
    check_order_update,
    check_refund,
    check_resolution,
    parse_order,
    parse_refund,
    parse_request_key,
    parse_resolution,
    same_refund,
    same_resolution,
)
from refundguard.online._scores import ScoreTable
from refundguard.online._tables import (
    F_ABUSE,
    F_CLAIM,
    F_LABELLED,
    F_NR,
    F_ONLY,
    F_REJECTED,
    F_RESOLVED,
    ORDER_COLUMNS,
    OUTCOME_CODES,
    REFUND_COLUMNS,
    Columns,
    KeyBlocks,
    finish_rows,
    plan_rows,
    rebuild_buffer,
)
from refundguard.profiles import BuyerProfile, LinkProfile, StoreProfile

__all__ = ["ProfileStore", "first_order_timestamp"]

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_OUTCOMES = {v: k for k, v in OUTCOME_CODES.items()}
_EMPTY_LINK = (0, 0, 0)
_KINDS = ("device", "address")
_SWEEP_PER_EVENT = 8
#: The longest window any profile field reads (buyer windows: 365 days).
LONGEST_WINDOW_NS = 365 * NS_PER_DAY
#: A key kind's shared buffer is rebuilt when live copies make this share of it dead (and at least _MIN_DEAD values).
_DEAD_SHARE = 0.5
_MIN_DEAD = 1 << 16
#: With ``horizon_days``, rows are compacted when the floor has moved this far since the last time, and if
#: at least this share of them goes.
_ROWS_EVERY_NS = NS_PER_DAY
_ROWS_MIN_SHARE = 0.05


def first_order_timestamp(ns: int | None) -> datetime | None:
    """A profile's ``first_order_at``: a tz-aware UTC ``datetime`` (``pd.Timestamp`` below microseconds)."""
    if ns is None:
        return None
    if ns % 1000:
        return pd.Timestamp(ns, tz="UTC")
    return _EPOCH + timedelta(microseconds=ns // 1000)


class ProfileStore:
    """Profiles kept in process and updated from events, for the online path.

    Feed it every order, refund request and resolution as they happen (in any
    order: each event carries its own time, and a query at ``t`` reads only what
    is known strictly before ``t``). :meth:`profiles` then returns the same
    ``(BuyerProfile, StoreProfile, LinkProfile)`` as
    :func:`refundguard.profiles.profiles_as_of` on tables holding the same events
    (tested equal). Start it from tables with :meth:`from_tables` or from a
    snapshot with :meth:`load`; :meth:`save` writes one.

    Parameters
    ----------
    store_scores
        Daily store score history (the frame ``profiles_as_of`` takes as
        ``store_scores``; refresh it with :meth:`set_store_scores`), or ``None``
        (every store then has a missing score).
    score_config
        Gives the time zone of the score days and ``min_orders``; ``None`` for
        the default ``ScoreConfig``.
    horizon_days
        Expire on ingest: keep requests up to this many days older than the newest
        event seen exact, and drop, as events arrive, what no such request can read
        (requests older than that raise ``RequestError``); each time the floor has
        moved a day, the event that moved it also drops the order and refund rows no
        later event can need (as :meth:`expire` does; O(rows), vectorised).
        ``None`` (default) keeps everything until :meth:`expire` is called.

    Notes
    -----
    Thread safe: every event checks and inserts in one lock section, and a lookup
    reads under the same lock; :meth:`expire` rebuilds the shared buffers outside
    it. Memory per order kept is about 170 bytes (``benchmarks/bench_online.py``);
    the state holds no Python object per order and none per key beyond its name
    and code, so the garbage collector has next to nothing to walk. A key written
    by an event is copied out of its kind's shared buffer; once the copies make
    half of a buffer dead, the next event rebuilds it (O(buffer), vectorised).
    """

    def __init__(self, store_scores: pd.DataFrame | None = None, score_config: ScoreConfig | None = None, *,
                 horizon_days: float | None = None) -> None:
        if score_config is not None and not isinstance(score_config, ScoreConfig):
            raise ConfigError.invalid("ProfileStore", "score_config", "a ScoreConfig or None", score_config)
        if horizon_days is not None and (isinstance(horizon_days, bool)
                                         or not isinstance(horizon_days, (int, float))
                                         or not horizon_days >= 1):
            raise ConfigError.invalid("ProfileStore", "horizon_days", "a number >= 1 or None", horizon_days)
        self.score_config = score_config
        self._cfg = ScoreConfig() if score_config is None else score_config
        self._scores = ScoreTable(self._cfg)
        self._horizon = None if horizon_days is None else int(horizon_days * NS_PER_DAY)
        self._lock = threading.Lock()
        self._orders = Columns(ORDER_COLUMNS)
        self._refunds = Columns(REFUND_COLUMNS)
        self._buyers = KeyBlocks("buyer", B.new_buyer)
        self._stores = KeyBlocks("store", B.new_store)
        self._links = (KeyBlocks("link", B.new_link), KeyBlocks("link", B.new_link))
        self._pending: dict[str, Resolution] = {}
        # identity clusters: per device / address code, its buyers' (first time, buyer code), sorted; derived
        # from the buyer blocks' link sections (never saved: rebuilt on warm start and load)
        self._members = (_Members(), _Members())
        self._floor = NAT
        self._newest = NAT
        self._rows_floor = NAT
        self._dropped_resolutions = 0
        self._ignored = 0
        if store_scores is not None:
            self.set_store_scores(store_scores)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_tables(cls, tables: Mapping[str, pd.DataFrame], as_of: Any = None, *,
                    store_scores: pd.DataFrame | None = None, score_config: ScoreConfig | None = None,
                    validate_tables: bool = True, horizon_days: float | None = None) -> ProfileStore:
        """A store holding every event of ``tables`` known before ``as_of``, built vectorised.

        Parameters
        ----------
        tables
            The contract's tables (validated in strict mode unless ``validate_tables=False``).
        as_of
            Keep only what is known strictly before this instant (orders paid,
            shipped and delivered, refunds requested, resolutions), as a service
            started then would have seen; ``None`` keeps everything.
        store_scores, score_config, horizon_days
            As for the constructor.
        validate_tables
            Validate the tables first (:func:`refundguard.pipeline.canonical_tables`).

        Returns
        -------
        ProfileStore
            Equal, event for event, to a store fed the same rows one by one.
        """
        from refundguard.online._warm import fill_from_tables
        from refundguard.pipeline import canonical_tables

        clean = canonical_tables(tables, validate_tables)
        cut = parameter_ns(as_of, "as_of", "ProfileStore.from_tables", optional=True)
        store = cls(store_scores, score_config, horizon_days=horizon_days)
        fill_from_tables(store, clean, NEVER if cut is None else cut)
        return store

    def save(self, path: str | Path) -> Path:
        """Write a snapshot folder (Parquet files + ``MANIFEST`` of sha256 hashes), atomically.

        See :func:`refundguard.online.snapshot.save_snapshot`.
        """
        from refundguard.online.snapshot import save_snapshot

        return save_snapshot(self, path)

    @classmethod
    def load(cls, path: str | Path, *, expected_sha256: str | None = None) -> ProfileStore:
        """Read a snapshot written by :meth:`save`, verified (hashes) before anything is parsed.

        See :func:`refundguard.online.snapshot.load_snapshot`.
        """
        from refundguard.online.snapshot import load_snapshot

        return load_snapshot(cls, path, expected_sha256=expected_sha256)

    def _index_members(self) -> None:
        """Rebuild the device / address -> buyers index of the cluster search from the buyer blocks (vectorised)."""
        with self._lock:
            buf, off = self._buyers.flat()
            n = len(off) - 1
            start = off[:-1]
            head = [np.asarray(buf[start + j], dtype=np.int64) for j in range(2, 9)]
            sec = B.buyer_sections(start, *head)
            lk, lt, n_l = sec[11], sec[12], head[6]
            idx = np.repeat(lk - np.cumsum(n_l) + n_l, n_l) + np.arange(int(n_l.sum()), dtype=np.int64)
            buyer = np.repeat(np.arange(n, dtype=np.int64), n_l)
            key, first = buf[idx], buf[idx + np.repeat(lt - lk, n_l)]
            self._members = tuple(_Members.build(key[key & 1 == kind] >> 1, first[key & 1 == kind],
                                                 buyer[key & 1 == kind], len(self._links[kind]))
                                  for kind in (0, 1))  # type: ignore[assignment]

    # ------------------------------------------------------------------ store scores
    def set_store_scores(self, history: pd.DataFrame) -> None:
        """Replace the store score history (a frame as :func:`~refundguard.profiles.profiles_as_of` takes)."""
        table = ScoreTable(self._cfg)
        table.set_history(history)
        with self._lock:
            self._scores = table

    # ------------------------------------------------------------------ events
    def _old(self) -> int:
        """Events before this instant that the store does not hold are ignored (see :meth:`expire`)."""
        return NAT if self._floor == NAT else self._floor - LONGEST_WINDOW_NS

    def _ignore(self) -> None:
        self._ignored += 1

    def observe_order(self, order: Mapping[str, Any]) -> None:
        """Record an order (``order_id, buyer_id, store_id, category, amount, paid_at`` and optional
        ``ship_by, shipped_at, delivered_at, device_id, address_id``).

        Observing a known ``order_id`` again is a no-op, except that it may add its
        ``shipped_at`` / ``delivered_at`` (which become known later than the order):
        ``{"order_id": ..., "delivered_at": ...}`` is such an update. After
        :meth:`expire`, an order the store does not hold whose times are all before
        the expiry floor minus 365 days is ignored (counted in :meth:`stats`).

        Raises
        ------
        RequestError
            A field breaks a contract rule, or differs from the same order seen before.
        """
        ev = parse_order(order)
        with self._lock:  # check and insert in one section: a concurrent twin is counted once
            row = self._orders.ids.get(ev.order_id)
            if row >= 0:
                self._update_order(row, ev)
                return
            old = self._old()
            if ev.buyer_id is None:
                if max(ev.shipped, ev.delivered) < old:
                    self._ignore()
                    return
                expired = " (or was expired)" if self._floor != NAT else ""
                raise RequestError(f"The field 'order_id': order {ev.order_id!r} was not observed{expired}, so an "
                                   "update needs the whole order ('buyer_id', 'store_id', 'category', 'amount', "
                                   "'paid_at').", field="order_id", value=ev.order_id)
            if ev.paid < old:
                self._ignore()
                return
            self._insert_order(ev)
            self._tick(ev.paid)

    def _stored_order(self, row: int) -> OrderEvent:
        c = self._orders.cols
        dev, addr = int(c["device"][row]), int(c["address"][row])
        return OrderEvent(self._orders.ids.key(row), self._buyers.names[int(c["buyer"][row])],
                          self._stores.names[int(c["store"][row])], float(c["amount"][row]),
                          int(c["paid"][row]), int(c["shipped"][row]), int(c["delivered"][row]),
                          None if dev < 0 else self._links[0].names[dev],
                          None if addr < 0 else self._links[1].names[addr])

    def _update_order(self, row: int, ev: OrderEvent) -> None:
        stored = self._stored_order(row)
        shipped, delivered = check_order_update(ev, stored)
        c = self._orders.cols
        self._orders.touch(row)
        c["shipped"][row] = shipped
        if delivered != stored.delivered:
            c["delivered"][row] = delivered
            self._claims_on_delivery(row, delivered)

    def _claims_on_delivery(self, orow: int, delivered: int) -> None:
        """A delivery learned after some of the order's refunds: their "not received" claims may now count."""
        rc = self._refunds.cols
        r = int(self._orders.cols["first_refund"][orow])
        buyer = None
        while r >= 0:
            flags = int(rc["flags"][r])
            req = int(rc["requested"][r])
            if flags & F_NR and not flags & F_CLAIM and delivered < req:
                if buyer is None:
                    buyer = self._buyers.block(int(self._orders.cols["buyer"][orow]))
                B.buyer_add_claim(buyer, req)
                self._refunds.touch(r)
                rc["flags"][r] = flags | F_CLAIM
            r = int(rc["next"][r])

    def _insert_order(self, ev: OrderEvent) -> None:
        b_code = self._buyers.code(ev.buyer_id)  # type: ignore[arg-type]
        s_code = self._stores.code(ev.store_id)  # type: ignore[arg-type]
        codes = [-1, -1]
        for kind, key in enumerate((ev.device_id, ev.address_id)):
            if key is not None:
                codes[kind] = self._links[kind].code(key)
        self._orders.append(ev.order_id, buyer=b_code, store=s_code, device=codes[0], address=codes[1],
                            paid=ev.paid, shipped=ev.shipped, delivered=ev.delivered, amount=ev.amount)
        b = self._buyers.block(b_code)
        B.buyer_add_order(b, ev.paid, ev.amount, cents(ev.amount))
        B.store_add_order(self._stores.block(s_code), ev.paid)
        fb = NEVER
        for kind, code in enumerate(codes):
            if code < 0:
                continue
            old = B.buyer_link(b, 2 * code + kind, ev.paid)
            if old is None:
                continue
            mem = self._members[kind].writable(code)
            if old != NEVER:
                mem.remove((old, b_code))
            insort(mem, (ev.paid, b_code))
            link = self._links[kind].block(code)
            B.link_move(link, old, ev.paid, False)
            if fb == NEVER:
                fb = B.buyer_first_bad(b)
            if fb != NEVER:
                B.link_move(link, NEVER if old == NEVER else max(old, fb), max(ev.paid, fb), True)
        if self._floor != NAT:
            self._trim_keys(b_code, s_code, codes)

    def observe_refund(self, refund: Mapping[str, Any]) -> None:
        """Record a refund request (``refund_id, order_id, requested_at, kind, reason, amount``; with
        ``resolved_at`` and ``outcome`` (and ``is_abuse``) its resolution too). Its order must have been
        observed.

        After :meth:`expire`, a refund the store does not hold requested before the
        expiry floor minus 365 days is ignored (counted in :meth:`stats`).

        Raises
        ------
        RequestError
            A field breaks a contract rule (e.g. the order's refunds would exceed its
            amount), the order is unknown (or was expired), or the same refund was seen
            with other values.
        """
        ev = parse_refund(refund)
        with self._lock:
            row = self._refunds.ids.get(ev.refund_id)
            if row >= 0:
                same_refund(ev, self._stored_refund(row))
                if ev.resolution is not None:
                    self._resolve(row, ev.resolution)
                return
            if ev.requested < self._old():
                self._pending.pop(ev.refund_id, None)
                self._ignore()
                return
            orow = self._orders.ids.get(ev.order_id)
            if orow < 0:
                expired = (" (or was expired: every event of it is older than the store's floor minus 365 days)"
                           if self._floor != NAT else "")
                raise RequestError(f"The field 'order_id' of refund {ev.refund_id!r} references the order "
                                   f"{ev.order_id!r}, which was not observed{expired}.", field="order_id",
                                   value=ev.order_id)
            oc = self._orders.cols
            check_refund(ev, int(oc["paid"][orow]), float(oc["amount"][orow]), self._refunded(orow))
            held = self._pending.get(ev.refund_id)
            resolution = ev.resolution
            if held is not None:
                if resolution is not None:
                    same_resolution(resolution, held)
                elif held.resolved < ev.requested:
                    self._dropped_resolutions += 1
                    warnings.warn(f"The resolution held for refund {ev.refund_id!r} is before its request; "
                                  "it was dropped.", RefundGuardWarning, stacklevel=2)
                    held = None
                resolution = resolution or held
            self._insert_refund(ev, orow)
            self._pending.pop(ev.refund_id, None)
            if resolution is not None:
                self._resolve(self._refunds.n - 1, resolution)
            self._tick(ev.requested)

    def _refunded(self, orow: int) -> float:
        rc = self._refunds.cols
        total = 0.0
        r = int(self._orders.cols["first_refund"][orow])
        while r >= 0:
            total += float(rc["amount"][r])
            r = int(rc["next"][r])
        return total

    def _stored_refund(self, row: int) -> RefundEvent:
        rc = self._refunds.cols
        flags = int(rc["flags"][row])
        return RefundEvent(self._refunds.ids.key(row), self._orders.ids.key(int(rc["order"][row])),
                           int(rc["requested"][row]), bool(flags & F_ONLY), bool(flags & F_NR),
                           float(rc["amount"][row]), None)

    def _insert_refund(self, ev: RefundEvent, orow: int) -> None:
        oc = self._orders.cols
        delivered = int(oc["delivered"][orow])
        claim = ev.not_received and delivered != NAT and delivered < ev.requested
        flags = (F_ONLY if ev.refund_only else 0) | (F_NR if ev.not_received else 0) | (F_CLAIM if claim else 0)
        row = self._refunds.append(ev.refund_id, order=orow, requested=ev.requested, amount=ev.amount,
                                   flags=flags, next=int(oc["first_refund"][orow]))
        self._orders.touch(orow)
        oc["first_refund"][orow] = row
        b_code = int(oc["buyer"][orow])
        b = self._buyers.block(b_code)
        store_code = int(oc["store"][orow])
        B.buyer_add_refund(b, ev.requested, ev.refund_only, cents(ev.amount))
        B.buyer_add_store(b, store_code, ev.requested)
        if claim:
            B.buyer_add_claim(b, ev.requested)
        B.store_add_refund(self._stores.block(store_code), ev.requested)
        codes = [int(oc["device"][orow]), int(oc["address"][orow])]
        for kind, code in enumerate(codes):
            if code >= 0:
                B.link_add_refund(self._links[kind].block(code), ev.requested)
        if self._floor != NAT:
            self._trim_keys(b_code, store_code, codes)

    def observe_resolution(self, refund_id: str, resolved_at: Any, outcome: str,
                           is_abuse: bool | None = None) -> None:
        """Record the resolution of a refund (its outcome and label).

        A resolution whose refund has not been observed yet is held until the refund
        arrives (see :meth:`stats`); a refund is resolved once (the same resolution
        again is a no-op, another one a ``RequestError``). After :meth:`expire`, the
        resolution of a refund the store does not hold, resolved before the expiry
        floor minus 365 days, is ignored (counted in :meth:`stats`).

        Raises
        ------
        RequestError
            ``outcome`` is not a contract outcome, ``is_abuse`` is not a bool or None,
            ``resolved_at`` is before the request, or the refund was resolved otherwise.
        """
        res = parse_resolution(refund_id, resolved_at, outcome, is_abuse)
        with self._lock:
            row = self._refunds.ids.get(res.refund_id)
            if row < 0:
                if res.resolved < self._old():
                    self._ignore()
                    return
                held = self._pending.get(res.refund_id)
                if held is not None:
                    same_resolution(res, held)
                else:
                    self._pending[res.refund_id] = res
                return
            self._resolve(row, res)
            self._tick(res.resolved)

    def _resolve(self, row: int, res: Resolution) -> None:
        rc = self._refunds.cols
        flags = int(rc["flags"][row])
        req = int(rc["requested"][row])
        if flags & F_RESOLVED:
            old = Resolution(res.refund_id, int(rc["resolved"][row]), _OUTCOMES[int(rc["outcome"][row])],
                             bool(flags & F_ABUSE) if flags & F_LABELLED else None)
            same_resolution(res, old)
            return
        check_resolution(res, req)
        flags |= F_RESOLVED
        if res.rejected:
            flags |= F_REJECTED
        if res.is_abuse is not None:
            flags |= F_LABELLED | (F_ABUSE if res.is_abuse else 0)
        self._refunds.touch(row)
        rc["flags"][row] = flags
        rc["resolved"][row] = res.resolved
        rc["outcome"][row] = OUTCOME_CODES[res.outcome]
        if not res.bad:
            return
        orow = int(rc["order"][row])
        b = self._buyers.block(int(self._orders.cols["buyer"][orow]))
        old_fb = B.buyer_first_bad(b)
        B.buyer_add_bad(b, res.resolved, res.rejected, bool(res.is_abuse))
        new_fb = B.buyer_first_bad(b)
        if new_fb != old_fb:
            for kcode, first in B.buyer_links(b):
                link = self._links[kcode & 1].block(kcode >> 1)
                B.link_move(link, NEVER if old_fb == NEVER else max(first, old_fb), max(first, new_fb), True)

    def observe_tables(self, tables: Mapping[str, pd.DataFrame], *, validate_tables: bool = True) -> None:
        """Replay tables as events, row by row (orders, then refunds with their resolutions).

        :meth:`from_tables` builds the same state vectorised; this adds to an existing store.
        """
        from refundguard.pipeline import canonical_tables

        clean = canonical_tables(tables, validate_tables)
        o = clean["orders"]
        cols = [c for c in ("order_id", "buyer_id", "store_id", "category", "amount", "paid_at", "ship_by",
                            "shipped_at", "delivered_at", "device_id", "address_id") if c in o.columns]
        for rec in o[cols].to_dict("records"):
            self.observe_order({k: v for k, v in rec.items() if not _null(v)})
        r = clean["refunds"]
        cols = [c for c in ("refund_id", "order_id", "requested_at", "kind", "reason", "amount", "resolved_at",
                            "outcome", "is_abuse") if c in r.columns]
        for rec in r[cols].to_dict("records"):
            self.observe_refund({k: v for k, v in rec.items() if not _null(v)})

    # ------------------------------------------------------------------ expiry
    def _keys(self) -> tuple[tuple[KeyBlocks, Any, Any], ...]:
        return ((self._buyers, B.buyer_cuts, B.buyer_trim), (self._stores, B.store_cuts, B.store_trim),
                (self._links[0], B.link_cuts, B.link_trim), (self._links[1], B.link_cuts, B.link_trim))

    @staticmethod
    def _trim_one(keys: KeyBlocks, cuts: Any, trim: Any, code: int, floor: int) -> int:
        """Trim one key (caller holds the lock); a key of the shared buffer is copied only if something goes."""
        a = keys.live.get(code)
        if a is None:
            c = cuts(keys.view_code(code), floor)
            if not (any(c) if isinstance(c, tuple) else c):
                return 0
            a = keys.block(code)
        return trim(a, floor)

    def _tick(self, t: int) -> None:
        """Note an event time; with a horizon, advance the floor, sweep a few keys and, once the floor has
        moved a day, drop the rows no later event can need; rebuild a shared buffer once half of it is
        superseded by copies (caller holds the lock)."""
        if t > self._newest:
            self._newest = t
        if self._horizon is not None:
            target = self._newest - self._horizon
            if target > self._floor:
                self._floor = target
            if self._floor != NAT:
                for keys, cuts, trim in self._keys():
                    n = len(keys)
                    for _ in range(min(_SWEEP_PER_EVENT, n)):
                        keys.cursor = (keys.cursor + 1) % n
                        self._trim_one(keys, cuts, trim, keys.cursor, self._floor)
                if self._floor - self._rows_floor >= _ROWS_EVERY_NS:
                    self._rows_floor = self._floor
                    self._compact_rows()
        for keys in (self._buyers, self._stores, *self._links):
            if keys.dead > _MIN_DEAD and keys.dead > _DEAD_SHARE * len(keys.base_np):
                keys.rebuild(None)

    def _trim_keys(self, b_code: int, s_code: int, codes: list[int]) -> None:
        floor = self._floor
        self._trim_one(self._buyers, B.buyer_cuts, B.buyer_trim, b_code, floor)
        self._trim_one(self._stores, B.store_cuts, B.store_trim, s_code, floor)
        for kind, code in enumerate(codes):
            if code >= 0:
                self._trim_one(self._links[kind], B.link_cuts, B.link_trim, code, floor)

    def _drop_held(self, old: int) -> None:
        """Held resolutions older than ``old`` go: their refund would be ignored (caller holds the lock)."""
        for rid in [rid for rid, res in self._pending.items() if res.resolved < old]:
            del self._pending[rid]
            self._ignore()

    def _compact_rows(self) -> int:
        """Drop the order and refund rows no event from the floor on can need (caller holds the lock)."""
        old = self._old()
        if old == NAT or not self._orders.n:
            return 0
        self._drop_held(old)
        before = self._orders.n + self._refunds.n
        plan = plan_rows(self._orders, self._refunds, self._orders.n, self._refunds.n, old, _ROWS_MIN_SHARE)
        if plan is None:
            return 0
        self._orders, self._refunds = finish_rows(self._orders, self._refunds, plan, old)
        return before - self._orders.n - self._refunds.n

    def expire(self, before: Any) -> int:
        """Drop what no request at ``requested_at >= before`` can read, and the rows no later event can need;
        return how many block values and rows went.

        Blocks: windowed events (orders, refunds, 24-hour bursts) older than their
        longest window before ``before`` go; all-time facts (first order, distinct
        stores, first-seen and first-bad times, "not received" claims, rejected and
        abusive counts) stay, and so do the buyer's latest 20 orders before
        ``before`` (median order amount). The keys of the shared buffers are trimmed
        at once, vectorised, outside the lock; the keys written since it was built,
        in small locked chunks; so lookups keep being served meanwhile.

        Rows: with ``old = before - 365 days`` (the longest window), an order row
        goes when its payment, shipping and delivery are before ``old`` and every
        refund of it was requested and resolved before ``old`` (its refund rows go
        with it); held resolutions resolved before ``old`` go too. From then on, an
        event older than ``old`` that the store does not hold (a replay of a dropped
        row, or data older than the store keeps) is ignored and counted in
        ``stats()["ignored_events"]``, so replays stay idempotent; a new refund or
        delivery for a dropped order raises ``RequestError`` (the order is unknown).

        Afterwards a request before ``before`` raises ``RequestError``; every request
        at or after ``before`` gets the profiles it had before the call.
        """
        floor = parameter_ns(before, "before", "ProfileStore.expire")
        with self._lock:
            if floor > self._floor:  # type: ignore[operator]
                self._floor = floor  # type: ignore[assignment]
            floor = self._floor
        dropped = 0
        for keys, _cuts, trim in self._keys():
            with self._lock:
                buf, off, live = keys.freeze()
            new, new_off, n = rebuild_buffer(keys.kind, buf, off, live, floor)  # read only: no lock
            with self._lock:
                keys.swap(new, new_off)
                codes = list(keys.live)
            dropped += n
            for start in range(0, len(codes), 4096):
                with self._lock:
                    live_now = keys.live
                    for code in codes[start:start + 4096]:
                        a = live_now.get(code)
                        if a is not None:
                            dropped += trim(a, floor)
        # rows: planned without the lock (events meanwhile are marked dirty), finished under it
        with self._lock:
            self._rows_floor = self._floor
            old = self._old()
            self._drop_held(old)
            n, m = self._orders.n, self._refunds.n
            orders, refunds = self._orders, self._refunds
            orders.dirty, refunds.dirty = set(), set()
        plan = None
        try:
            plan = plan_rows(orders, refunds, n, m, old)
        finally:
            with self._lock:
                if plan is not None and orders is self._orders:
                    self._orders, self._refunds = finish_rows(orders, refunds, plan, old)
                    dropped += orders.n + refunds.n - self._orders.n - self._refunds.n
                orders.dirty = refunds.dirty = None
        return dropped

    # ------------------------------------------------------------------ queries
    def profiles(self, request: Mapping[str, Any]) -> tuple[BuyerProfile, StoreProfile, LinkProfile]:
        """Profiles of a request (``requested_at, buyer_id, store_id`` and optional ``device_id,
        address_id``) as of its ``requested_at``.

        Raises
        ------
        RequestError
            A field is missing or bad, or ``requested_at`` is before what the store keeps
            (see :meth:`expire`).
        """
        key = parse_request_key(request)
        t = key.t
        with self._lock:
            if t < self._floor:
                raise RequestError(f"The field 'requested_at' ({t} ns) is before the store's horizon "
                                   f"({self._floor} ns): that history was expired.", field="requested_at",
                                   value=request.get("requested_at"))
            b = self._buyers.view(key.buyer_id)
            bv = None if b is None else B.buyer_values(b, t)
            s = self._stores.view(key.store_id)
            sv = _EMPTY_LINK if s is None else B.store_values(s, t)
            lv = []
            for kind, name in enumerate((key.device_id, key.address_id)):
                if name is None:
                    lv.append(None)
                else:
                    a = self._links[kind].view(name)
                    lv.append(_EMPTY_LINK if a is None else B.link_values(a, t))
            cv = self._cluster_values(self._buyers.index.get(key.buyer_id), t)
            scores = self._scores
        return make_profiles(bv, scores.values(key.store_id, t, *sv), lv[0], lv[1], cv)

    def _cluster_values(self, buyer: int | None, t: int) -> tuple[int, int | None, int | None, int | None]:
        """The cluster fields of a request by ``buyer`` (code) at ``t`` (caller holds the lock)."""
        view, members = self._buyers.view_code, self._members
        got: dict[int, tuple[int, int, bool]] = {}

        def links(b: int) -> list[tuple[int, int]]:
            lks, n24, n30, bad = B.buyer_cluster(view(b), t)
            got[b] = (n24, n30, bad)
            return lks

        others = search_one(buyer, t, links, lambda k, at: members[k & 1].before(k >> 1, at, CLUSTER_HUB_BUYERS))
        if others is None:
            return large_cluster()
        # search_one reads the links of every member it returns, so each one's counts are in ``got``
        n24 = sum(got[m][0] for m in others)
        n30 = sum(got[m][1] for m in others)
        bad = sum(got[m][2] for m in others)
        return 1 + len(others), n24, n30, bad

    def stats(self) -> dict[str, int]:
        """Counts of what the store holds: orders, refunds, keys, held resolutions, events ignored as
        expired, block values, approximate bytes, and the expiry floor (ns, or ``None``)."""
        with self._lock:
            kinds = (self._buyers, self._stores, *self._links)
            return {
                "orders": self._orders.n,
                "refunds": self._refunds.n,
                "buyers": len(self._buyers),
                "stores": len(self._stores),
                "devices": len(self._links[0]),
                "addresses": len(self._links[1]),
                "pending_resolutions": len(self._pending),
                "dropped_resolutions": self._dropped_resolutions,
                "ignored_events": self._ignored,
                "block_values": sum(k.values() for k in kinds),
                "bytes": self._orders.nbytes + self._refunds.nbytes + sum(k.nbytes() for k in kinds),
                "floor": None if self._floor == NAT else self._floor,  # type: ignore[dict-item]
            }


class _Members:
    """The buyers of each device (or address) code with their first time on it, for the cluster search.

    Derived from the buyer blocks' link sections (so never saved: rebuilt, vectorised, by warm start and
    load): a shared base sorted by ``(code, time, buyer)`` (``ptr`` gives each code's run), and for the codes
    an event changed since, their own sorted ``[(time, buyer)]`` list. Link sections are all time (expiry
    never trims them), so this index never needs trimming either.
    """

    __slots__ = ("ptr", "times", "buyers", "live")

    def __init__(self) -> None:
        self.ptr, self.times, self.buyers = array("q", [0]), array("q"), array("q")
        self.live: dict[int, list[tuple[int, int]]] = {}

    @classmethod
    def build(cls, code: np.ndarray, time: np.ndarray, buyer: np.ndarray, n_codes: int) -> _Members:
        order = np.lexsort((buyer, time, code))
        code = code[order]
        out = cls()
        out.ptr = array("q", np.searchsorted(code, np.arange(n_codes + 1, dtype=np.int64)).astype(np.int64).tobytes())
        out.times = array("q", np.ascontiguousarray(time[order], dtype=np.int64).tobytes())
        out.buyers = array("q", np.ascontiguousarray(buyer[order], dtype=np.int64).tobytes())
        return out

    def before(self, code: int, t: int, hub: int) -> list[int] | None:
        """The buyers first seen on ``code`` before ``t``, or ``None`` when more than ``hub`` (a hub)."""
        mine = self.live.get(code)
        if mine is not None:
            return sorted_members(mine, t, hub)
        if code + 1 >= len(self.ptr):
            return []
        lo, hi = self.ptr[code], self.ptr[code + 1]
        n = bisect_left(self.times, t, lo, hi) - lo
        if n > hub:
            return None
        return self.buyers[lo:lo + n].tolist()

    def writable(self, code: int) -> list[tuple[int, int]]:
        """The sorted ``[(time, buyer)]`` list of ``code`` to update (copied from the base on first write)."""
        mine = self.live.get(code)
        if mine is None:
            if code + 1 < len(self.ptr):
                lo, hi = self.ptr[code], self.ptr[code + 1]
                mine = list(zip(self.times[lo:hi], self.buyers[lo:hi], strict=True))
            else:
                mine = []
            self.live[code] = mine
        return mine


def large_cluster() -> tuple[int, None, None, None]:
    """The cluster fields of a large cluster (more than ``CLUSTER_MAX_ACCOUNTS`` accounts)."""
    return CLUSTER_MAX_ACCOUNTS + 1, None, None, None


def make_profiles(bv: dict[str, Any] | None, sv: dict[str, Any], device: tuple[int, int, int] | None,
                  address: tuple[int, int, int] | None,
                  cluster: tuple[int, int | None, int | None, int | None] = (1, 0, 0, 0)
                  ) -> tuple[BuyerProfile, StoreProfile, LinkProfile]:
    """The three profile dataclasses from a backend's values (shared by the backends)."""
    if bv is None:
        bp = BuyerProfile()
    else:
        bv["first_order_at"] = first_order_timestamp(bv["first_order_at"])
        bp = BuyerProfile(**bv)
    lk = LinkProfile(
        device_n_buyers=None if device is None else device[0],
        device_n_bad_buyers=None if device is None else device[1],
        device_n_refunds_24h=None if device is None else device[2],
        address_n_buyers=None if address is None else address[0],
        address_n_bad_buyers=None if address is None else address[1],
        address_n_refunds_24h=None if address is None else address[2],
        cluster_n_accounts=cluster[0],
        cluster_n_refunds_24h=cluster[1],
        cluster_n_refunds_30d=cluster[2],
        cluster_n_bad_others=cluster[3],
    )
    return bp, StoreProfile(**sv), lk


def _null(v: Any) -> bool:
    return v is None or v is pd.NaT or v is pd.NA or (isinstance(v, float) and np.isnan(v))


__all__ += ["make_profiles", "large_cluster"]
