"""RedisProfileStore: the ProfileStore interface on a Redis server shared by every replica of a service.

Needs the ``redis`` extra (``pip install 'refundguard[redis]'``) and a Redis >= 7
server (or Redis Cluster). Every key starts with ``prefix`` (one per marketplace)
and carries a hash tag, so that the keys of one buyer (store, device, address,
order, refund) share a cluster hash slot:

==========================  ===================================================
``P:{b:<buyer>}:m``         hash: ``first`` order time, ``fb`` first bad time
``P:{b:<buyer>}:l`` / ``:sf``  hash: first time per device/address (``d:``/``a:``
                            + id) / per store refunded (``s:`` + id)
``P:{b:<buyer>}:o``         orders, ``hex(paid) hex(amount bits) | order_id``
``P:{b:<buyer>}:r``         refunds, ``hex(requested) kind hex(cents) | refund_id``
``P:{b:<buyer>}:s/:nr/:rj/:ab``  first refund per store, "not received" claims on
                            delivered orders, rejected, abusive (by resolution)
``P:{s:<store>}:o`` / ``:r``   the store's order / refund times
``P:{d:<device>}:...``      ``m`` hash buyer -> first seen/first bad, ``seen``,
(and ``{a:<address>}``)     ``bad`` (``max(first seen, first bad)``), ``r`` refunds
``P:{o:<order>}``           the order (hash, with its refunds ``r:<refund_id>``)
``P:{r:<refund>}``          the refund, or a resolution held until it arrives
==========================  ===================================================

Sorted sets are lexicographic (score 0): members start with the event time as 16
hex digits of ``t + 2**63``, so every window bound is an exact integer comparison
(a float score would round nanosecond times). A lookup is one pipelined round trip
of four read-only Lua scripts (buyer, store, device, address), each on one hash
slot: counts over ranges (``ZLEXCOUNT``), and the buyer's events of the last 365
days, from which the profile is computed in Python exactly as in memory.

Events: the order record is checked and written under ``WATCH``/``MULTI``/``EXEC``
(the refund-sum rule is atomic); every derived update is one Lua script on one
slot and idempotent (set members, min-merges), so a repeated or retried event never
counts twice and events may arrive in any order. Keys expire ``ttl_days`` after
their last write (default: the longest window, 365 days, plus 30).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Mapping
from typing import Any

import pandas as pd

import refundguard.online._blocks as B
from refundguard._time import NAT, NEVER, NS_PER_DAY
from refundguard.config import ScoreConfig
from refundguard.errors import ConfigError, RequestError
from refundguard.online._events import (
    OrderEvent,
    RefundEvent,
    Resolution,
    cents,
    check_order_update,
    check_refund,
    parse_order,
    parse_refund,
    parse_request_key,
    parse_resolution,
    same_refund,
    same_resolution,
)
from refundguard.online._scores import ScoreTable
from refundguard.online.memory import make_profiles
from refundguard.profiles import BuyerProfile, LinkProfile, StoreProfile

__all__ = ["RedisProfileStore"]

_OFF = 1 << 63
_DAY = NS_PER_DAY


def hx(t: int) -> str:
    """An int64 instant as 16 hex digits that sort like the numbers."""
    return format(t + _OFF, "016x")


def unhx(s: bytes | str) -> int:
    return int(s[:16], 16) - _OFF


_READ_BUYER = """#!lua flags=no-writes
local t, lo = ARGV[1], ARGV[2]
local first = redis.call('HGET', KEYS[1], 'first')
local win = redis.call('ZRANGEBYLEX', KEYS[2], '[' .. lo, '(' .. t)
local last = {}
if #win < 20 then last = redis.call('ZREVRANGEBYLEX', KEYS[2], '(' .. t, '-', 'LIMIT', 0, 20) end
local ref = redis.call('ZRANGEBYLEX', KEYS[3], '[' .. lo, '(' .. t)
return {first or '', win, last, ref,
  redis.call('ZLEXCOUNT', KEYS[4], '-', '(' .. t), redis.call('ZLEXCOUNT', KEYS[5], '-', '(' .. t),
  redis.call('ZLEXCOUNT', KEYS[6], '-', '(' .. t), redis.call('ZLEXCOUNT', KEYS[7], '-', '(' .. t)}
"""
_READ_STORE = """#!lua flags=no-writes
local t = '(' .. ARGV[1]
return {redis.call('ZLEXCOUNT', KEYS[1], '[' .. ARGV[2], t), redis.call('ZLEXCOUNT', KEYS[2], '[' .. ARGV[2], t),
  redis.call('ZLEXCOUNT', KEYS[2], '[' .. ARGV[3], t)}
"""
_READ_LINK = """#!lua flags=no-writes
local t = '(' .. ARGV[1]
return {redis.call('ZLEXCOUNT', KEYS[1], '-', t), redis.call('ZLEXCOUNT', KEYS[2], '-', t),
  redis.call('ZLEXCOUNT', KEYS[3], '[' .. ARGV[2], t)}
"""
# KEYS: m, o, l, each key of the buyer; ARGV: ttl_ms, member, paid, then pairs (link field, ...)
_BUYER_ORDER = """
local ttl, paid = ARGV[1], ARGV[3]
redis.call('ZADD', KEYS[2], 0, ARGV[2])
local first = redis.call('HGET', KEYS[1], 'first')
if (not first) or paid < first then redis.call('HSET', KEYS[1], 'first', paid) end
local out = {redis.call('HGET', KEYS[1], 'fb') or ''}
for i = 4, #ARGV do
  local old = redis.call('HGET', KEYS[3], ARGV[i])
  if (not old) or paid < old then redis.call('HSET', KEYS[3], ARGV[i], paid) end
end
for i = 1, #KEYS do redis.call('PEXPIRE', KEYS[i], ttl) end
return out
"""
# KEYS: m, seen, bad; ARGV: ttl_ms, buyer, first seen (hex), first bad (hex or '')
_LINK_MERGE = """
local ttl, buyer, fs, fb = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local old = redis.call('HGET', KEYS[1], buyer)
local ofs, ofb = '', ''
if old then ofs = string.sub(old, 1, 16); ofb = string.sub(old, 18) end
local nfs, nfb = fs, fb
if ofs ~= '' and ofs < nfs then nfs = ofs end
if ofb ~= '' and (nfb == '' or ofb < nfb) then nfb = ofb end
if nfs ~= ofs then
  if ofs ~= '' then redis.call('ZREM', KEYS[2], ofs .. '|' .. buyer) end
  redis.call('ZADD', KEYS[2], 0, nfs .. '|' .. buyer)
end
local function badv(a, b) if b == '' then return '' elseif a < b then return b else return a end end
local ob, nb = badv(ofs, ofb), badv(nfs, nfb)
if ofs == '' then ob = '' end
if nb ~= ob then
  if ob ~= '' then redis.call('ZREM', KEYS[3], ob .. '|' .. buyer) end
  if nb ~= '' then redis.call('ZADD', KEYS[3], 0, nb .. '|' .. buyer) end
end
redis.call('HSET', KEYS[1], buyer, nfs .. '|' .. nfb)
for i = 1, #KEYS do redis.call('PEXPIRE', KEYS[i], ttl) end
return 1
"""
# KEYS: r, sf, s, nr, each key; ARGV: ttl_ms, refund member, store field, requested hex, store, claim member or ''
_BUYER_REFUND = """
local ttl, req, store = ARGV[1], ARGV[4], ARGV[5]
redis.call('ZADD', KEYS[1], 0, ARGV[2])
local old = redis.call('HGET', KEYS[2], ARGV[3])
if (not old) or req < old then
  if old then redis.call('ZREM', KEYS[3], old .. '|' .. store) end
  redis.call('ZADD', KEYS[3], 0, req .. '|' .. store)
  redis.call('HSET', KEYS[2], ARGV[3], req)
end
if ARGV[6] ~= '' then redis.call('ZADD', KEYS[4], 0, ARGV[6]) end
for i = 1, #KEYS do redis.call('PEXPIRE', KEYS[i], ttl) end
return 1
"""
# KEYS: m, rj, ab, l; ARGV: ttl_ms, member (hex(resolved)|rid), resolved hex, rejected, abuse
_BUYER_BAD = """
local ttl, res = ARGV[1], ARGV[3]
if ARGV[4] == '1' then redis.call('ZADD', KEYS[2], 0, ARGV[2]) end
if ARGV[5] == '1' then redis.call('ZADD', KEYS[3], 0, ARGV[2]) end
local fb = redis.call('HGET', KEYS[1], 'fb')
if (not fb) or res < fb then fb = res; redis.call('HSET', KEYS[1], 'fb', res) end
for i = 1, #KEYS do redis.call('PEXPIRE', KEYS[i], ttl) end
return {fb, redis.call('HGETALL', KEYS[4])}
"""
# KEYS: refund record; ARGV: fields of the accepted refund (name, value, ...). Returns held resolution or {}.
_REFUND_ACCEPT = """
local held = redis.call('HMGET', KEYS[1], 'pres', 'pout', 'pab')
if not redis.call('HGET', KEYS[1], 'o') then
  redis.call('HSET', KEYS[1], unpack(ARGV, 2))
end
redis.call('HDEL', KEYS[1], 'pres', 'pout', 'pab')
redis.call('PEXPIRE', KEYS[1], ARGV[1])
if held[1] then return {held[1], held[2], held[3]} end
return {}
"""
# KEYS: refund record; ARGV: ttl_ms, resolved hex, outcome, abuse ('1', '0' or '')
_RESOLVE = """
local rec = redis.call('HMGET', KEYS[1], 'o', 'req', 'res', 'out', 'ab', 'pres', 'pout', 'pab')
if not rec[1] then
  if rec[6] then return {'held', rec[6], rec[7], rec[8]} end
  redis.call('HSET', KEYS[1], 'pres', ARGV[2], 'pout', ARGV[3], 'pab', ARGV[4])
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  return {'held_new'}
end
if rec[3] then return {'resolved', rec[3], rec[4], rec[5]} end
if ARGV[2] < rec[2] then return {'early', rec[2]} end
redis.call('HSET', KEYS[1], 'res', ARGV[2], 'out', ARGV[3], 'ab', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return {'applied'}
"""


def _s(v: bytes | str | None) -> str | None:
    if v is None:
        return None
    return v.decode() if isinstance(v, bytes) else v


def _label_code(v: bool | None) -> str:
    return "" if v is None else ("1" if v else "0")


def _label_of(code: str) -> bool | None:
    return None if code == "" else code == "1"


class RedisProfileStore:
    """The :class:`~refundguard.online.ProfileStore` interface on a Redis server (or Redis Cluster).

    Parameters
    ----------
    client
        A ``redis.Redis`` (or ``redis.RedisCluster``) client; responses as bytes
        (``decode_responses=False``, the default).
    prefix
        Start of every key; one per marketplace (e.g. ``"refundguard:mkt-br"``).
    store_scores, score_config
        As for :class:`~refundguard.online.ProfileStore` (the score history is kept
        in process: it is one small table per day, the same for every replica).
    ttl_days
        Keys expire this many days after their last write (default 395: the longest
        window, 365 days, plus 30). ``None`` never expires them.

    Notes
    -----
    Thread safe (redis-py clients are). Requests are exact for any ``t`` whose
    history has not expired.
    """

    def __init__(self, client: Any, *, prefix: str = "refundguard", store_scores: pd.DataFrame | None = None,
                 score_config: ScoreConfig | None = None, ttl_days: float | None = 395) -> None:
        if client is None or not hasattr(client, "pipeline"):
            raise ConfigError.invalid("RedisProfileStore", "client", "a redis.Redis or redis.RedisCluster client",
                                      client)
        if not isinstance(prefix, str) or not prefix or "{" in prefix or "}" in prefix:
            raise ConfigError.invalid("RedisProfileStore", "prefix", "a non-empty string without braces", prefix)
        if ttl_days is not None and (isinstance(ttl_days, bool) or not isinstance(ttl_days, (int, float))
                                     or not ttl_days >= 366):
            raise ConfigError.invalid("RedisProfileStore", "ttl_days", "a number >= 366 or None", ttl_days)
        self.client = client
        self.prefix = prefix
        self.score_config = score_config
        self._cfg = ScoreConfig() if score_config is None else score_config
        self._scores = ScoreTable(self._cfg)
        self._ttl = str(int(ttl_days * 86_400_000)) if ttl_days is not None else str(1 << 62)
        self._ttl_set = ttl_days is not None
        reg = client.register_script
        self._read_buyer, self._read_store, self._read_link = reg(_READ_BUYER), reg(_READ_STORE), reg(_READ_LINK)
        self._buyer_order, self._link_merge = reg(_BUYER_ORDER), reg(_LINK_MERGE)
        self._buyer_refund, self._buyer_bad = reg(_BUYER_REFUND), reg(_BUYER_BAD)
        self._refund_accept, self._resolve_script = reg(_REFUND_ACCEPT), reg(_RESOLVE)
        if store_scores is not None:
            self.set_store_scores(store_scores)

    # ------------------------------------------------------------------ keys
    def _k(self, tag: str, name: str, *parts: str) -> list[str]:
        base = f"{self.prefix}:{{{tag}:{name}}}"
        return [f"{base}:{p}" for p in parts]

    def _order_key(self, oid: str) -> str:
        return f"{self.prefix}:{{o:{oid}}}"

    def _refund_key(self, rid: str) -> str:
        return f"{self.prefix}:{{r:{rid}}}"

    def set_store_scores(self, history: pd.DataFrame) -> None:
        """Replace the store score history (kept in process, as in :class:`ProfileStore`)."""
        table = ScoreTable(self._cfg)
        table.set_history(history)
        self._scores = table

    # ------------------------------------------------------------------ events
    def _transact(self, key: str, fn: Any) -> Any:
        """Run ``fn(pipe, record)`` under WATCH on one key, retried until EXEC succeeds."""
        from redis.exceptions import WatchError

        with self.client.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    rec = {_s(k): _s(v) for k, v in pipe.hgetall(key).items()}
                    out = fn(pipe, rec)
                    return out
                except WatchError:
                    continue

    def observe_order(self, order: Mapping[str, Any]) -> None:
        """Record an order, or an update of a known order's ``shipped_at`` / ``delivered_at``
        (as :meth:`ProfileStore.observe_order`)."""
        ev = parse_order(order)
        key = self._order_key(ev.order_id)

        def step(pipe: Any, rec: dict[str, str]) -> tuple[OrderEvent, list[tuple[str, int, bool]]]:
            if rec:
                stored = self._decode_order(ev.order_id, rec)
                shipped, delivered = check_order_update(ev, stored)
                newly = delivered != stored.delivered
                fields = {"sh": "" if shipped == NAT else hx(shipped), "de": "" if delivered == NAT else hx(delivered)}
            else:
                if ev.buyer_id is None:
                    raise RequestError(f"The field 'order_id': order {ev.order_id!r} was not observed, so an "
                                       "update needs the whole order.", field="order_id", value=ev.order_id)
                stored, newly, delivered = ev, False, ev.delivered
                fields = {"b": ev.buyer_id, "s": ev.store_id, "d": ev.device_id or "", "a": ev.address_id or "",
                          "p": hx(ev.paid), "amt": repr(ev.amount),
                          "sh": "" if ev.shipped == NAT else hx(ev.shipped),
                          "de": "" if ev.delivered == NAT else hx(ev.delivered)}
            pipe.multi()
            pipe.hset(key, mapping=fields)
            if self._ttl_set:
                pipe.pexpire(key, int(self._ttl))
            pipe.execute()
            claims = []
            if newly:
                for f, v in rec.items():
                    if f.startswith("r:"):
                        req_h, nr, _amt, _only = v.split("|")
                        claims.append((f[2:], unhx(req_h), nr == "1"))
            return stored, [(rid, req, nr and delivered < req) for rid, req, nr in claims]

        stored, claims = self._transact(key, step)
        if ev.buyer_id is not None:
            self._derive_order(stored)
        for rid, req, claim in claims:
            if claim:
                (nr,) = self._k("b", stored.buyer_id, "nr")  # type: ignore[arg-type]
                self.client.zadd(nr, {f"{hx(req)}|{rid}": 0})

    def _decode_order(self, oid: str, rec: dict[str, str]) -> OrderEvent:
        return OrderEvent(oid, rec["b"], rec["s"], float(rec["amt"]), unhx(rec["p"]),
                          unhx(rec["sh"]) if rec.get("sh") else NAT, unhx(rec["de"]) if rec.get("de") else NAT,
                          rec["d"] or None, rec["a"] or None)

    def _derive_order(self, o: OrderEvent) -> None:
        """The order's idempotent updates of its buyer, store, device and address."""
        paid = hx(o.paid)
        m, oz, lk = self._k("b", o.buyer_id, "m", "o", "l")  # type: ignore[arg-type]
        links = [(kind, name) for kind, name in (("d", o.device_id), ("a", o.address_id)) if name is not None]
        member = f"{paid}{B.f2i(o.amount):016x}|{o.order_id}"
        (fb,) = self._buyer_order(keys=[m, oz, lk], args=[self._ttl, member, paid,
                                                           *(f"{k}:{n}" for k, n in links)])
        fb = _s(fb) or ""
        pipe = self.client.pipeline(transaction=False)
        (so,) = self._k("s", o.store_id, "o")  # type: ignore[arg-type]
        pipe.zadd(so, {f"{paid}|{o.order_id}": 0})
        if self._ttl_set:
            pipe.pexpire(so, int(self._ttl))
        for kind, name in links:
            self._link_merge(keys=self._k(kind, name, "m", "seen", "bad"), args=[self._ttl, o.buyer_id, paid, fb],
                             client=pipe)
        pipe.execute()

    def observe_refund(self, refund: Mapping[str, Any]) -> None:
        """Record a refund request, with its resolution when given (as :meth:`ProfileStore.observe_refund`)."""
        ev = parse_refund(refund)
        okey = self._order_key(ev.order_id)

        def step(pipe: Any, rec: dict[str, str]) -> OrderEvent:
            if not rec:
                raise RequestError(f"The field 'order_id' of refund {ev.refund_id!r} references the order "
                                   f"{ev.order_id!r}, which was not observed.", field="order_id", value=ev.order_id)
            o = self._decode_order(ev.order_id, rec)
            mine = rec.get(f"r:{ev.refund_id}")
            if mine is not None:
                req_h, nr, amt, only = mine.split("|")
                same_refund(ev, RefundEvent(ev.refund_id, ev.order_id, unhx(req_h), only == "1", nr == "1",
                                            float(amt), None))
                pipe.reset()
                return o
            refunded = sum(float(v.split("|")[2]) for f, v in rec.items() if f.startswith("r:"))
            check_refund(ev, o.paid, o.amount, refunded)
            pipe.multi()
            pipe.hset(okey, f"r:{ev.refund_id}",
                      f"{hx(ev.requested)}|{int(ev.not_received)}|{ev.amount!r}|{int(ev.refund_only)}")
            pipe.execute()
            return o

        o = self._transact(okey, step)
        claim = ev.not_received and o.delivered != NAT and o.delivered < ev.requested
        rkey = self._refund_key(ev.refund_id)
        held = self._refund_accept(keys=[rkey], args=[
            self._ttl, "o", ev.order_id, "b", o.buyer_id, "req", hx(ev.requested)])
        held_res = None
        if held:
            pres, pout, pab = (_s(x) for x in held)
            held_res = Resolution(ev.refund_id, unhx(pres), pout, _label_of(pab or ""))  # type: ignore[arg-type]
            self.client.hincrby(f"{self.prefix}:stats", "pending", -1)
        req = hx(ev.requested)
        r, sf, s, nr = self._k("b", o.buyer_id, "r", "sf", "s", "nr")  # type: ignore[arg-type]
        member = f"{req}{int(ev.refund_only)}{cents(ev.amount):016x}|{ev.refund_id}"
        pipe = self.client.pipeline(transaction=False)
        self._buyer_refund(keys=[r, sf, s, nr], args=[self._ttl, member, f"s:{o.store_id}", req, o.store_id,
                                                       f"{req}|{ev.refund_id}" if claim else ""], client=pipe)
        for tag, name in (("s", o.store_id), ("d", o.device_id), ("a", o.address_id)):
            if name is not None:
                (key,) = self._k(tag, name, "r")
                pipe.zadd(key, {f"{req}|{ev.refund_id}": 0})
                if self._ttl_set:
                    pipe.pexpire(key, int(self._ttl))
        pipe.execute()
        resolution = ev.resolution
        if held_res is not None:
            if resolution is not None:
                same_resolution(resolution, held_res)
            elif held_res.resolved < ev.requested:
                import warnings

                from refundguard.errors import RefundGuardWarning

                self.client.hincrby(f"{self.prefix}:stats", "dropped_resolutions", 1)
                warnings.warn(f"The resolution held for refund {ev.refund_id!r} is before its request; it was "
                              "dropped.", RefundGuardWarning, stacklevel=2)
                held_res = None
            resolution = resolution or held_res
        if resolution is not None:
            self._apply_resolution(resolution)

    def observe_resolution(self, refund_id: str, resolved_at: Any, outcome: str, is_abuse: bool | None = None) -> None:
        """Record a refund's resolution; held until the refund arrives (as :meth:`ProfileStore.observe_resolution`)."""
        self._apply_resolution(parse_resolution(refund_id, resolved_at, outcome, is_abuse))

    def _apply_resolution(self, res: Resolution) -> None:
        rkey = self._refund_key(res.refund_id)
        out = [_s(x) for x in self._resolve_script(keys=[rkey], args=[
            self._ttl, hx(res.resolved), res.outcome, _label_code(res.is_abuse)])]
        status = out[0]
        if status == "held_new":
            self.client.hincrby(f"{self.prefix}:stats", "pending", 1)
            return
        if status == "held":
            same_resolution(res, Resolution(res.refund_id, unhx(out[1]), out[2], _label_of(out[3] or "")))
            return
        if status == "early":
            raise RequestError(f"The field 'resolved_at' of refund {res.refund_id!r} is before its request "
                               f"({unhx(out[1])} ns); got {res.resolved} ns.", field="resolved_at", value=res.resolved)
        if status == "resolved":
            same_resolution(res, Resolution(res.refund_id, unhx(out[1]), out[2], _label_of(out[3] or "")))
        if not res.bad:
            return
        buyer = _s(self.client.hget(rkey, "b"))
        m, rj, ab, lk = self._k("b", buyer, "m", "rj", "ab", "l")  # type: ignore[arg-type]
        fb, links = self._buyer_bad(keys=[m, rj, ab, lk], args=[
            self._ttl, f"{hx(res.resolved)}|{res.refund_id}", hx(res.resolved), int(res.rejected),
            int(bool(res.is_abuse))])
        fb = _s(fb)
        links = [_s(x) for x in links]
        pipe = self.client.pipeline(transaction=False)
        for field, first in zip(links[::2], links[1::2], strict=True):
            kind, name = field.split(":", 1)  # type: ignore[union-attr]
            self._link_merge(keys=self._k(kind, name, "m", "seen", "bad"), args=[self._ttl, buyer, first, fb],
                             client=pipe)
        pipe.execute()

    def observe_tables(self, tables: Mapping[str, pd.DataFrame], *, validate_tables: bool = True) -> None:
        """Replay tables as events, row by row (see :meth:`ProfileStore.observe_tables`)."""
        from refundguard.online.memory import ProfileStore

        ProfileStore.observe_tables(self, tables, validate_tables=validate_tables)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ queries
    def profiles(self, request: Mapping[str, Any]) -> tuple[BuyerProfile, StoreProfile, LinkProfile]:
        """Profiles of a request as of its ``requested_at``: one pipelined round trip."""
        key = parse_request_key(request)
        t = key.t
        th = hx(t)
        pipe = self.client.pipeline(transaction=False)
        self._read_buyer(keys=self._k("b", key.buyer_id, "m", "o", "r", "s", "nr", "rj", "ab"),
                         args=[th, hx(t - 365 * _DAY)], client=pipe)
        self._read_store(keys=self._k("s", key.store_id, "o", "r"), args=[th, hx(t - 30 * _DAY), hx(t - _DAY)],
                         client=pipe)
        links = [name is not None for name in (key.device_id, key.address_id)]
        for tag, name in (("d", key.device_id), ("a", key.address_id)):
            if name is not None:
                self._read_link(keys=self._k(tag, name, "seen", "bad", "r"), args=[th, hx(t - _DAY)], client=pipe)
        res = pipe.execute()
        bv = _buyer_values(res[0], t)
        sv = self._scores.values(key.store_id, t, *(int(x) for x in res[1]))
        lv: list[tuple[int, int, int] | None] = []
        k = 2
        for present in links:
            if present:
                lv.append(tuple(int(x) for x in res[k]))  # type: ignore[arg-type]
                k += 1
            else:
                lv.append(None)
        return make_profiles(bv, sv, lv[0], lv[1])

    def stats(self) -> dict[str, int]:
        """Held and dropped resolutions (kept in ``<prefix>:stats``)."""
        raw = self.client.hgetall(f"{self.prefix}:stats")
        got = {_s(k): int(v) for k, v in raw.items()}
        return {"pending_resolutions": got.get("pending", 0), "dropped_resolutions": got.get("dropped_resolutions", 0)}


def _buyer_values(res: list[Any], t: int) -> dict[str, Any] | None:
    first, win, last, ref, n_s, n_nr, n_rj, n_ab = res
    if not first and not win and not last:
        return None
    first_t = unhx(first) if first else NEVER
    times = [unhx(m) for m in win]
    amounts = [B.i2f(int(m[16:32], 16)) for m in win]
    cs = [cents(a) for a in amounts]
    hi = len(times)
    out: dict[str, Any] = {"first_order_at": first_t if first_t < t else None}
    for w in (30, 90, 365):
        lo = bisect_left(times, t - w * _DAY)
        out[f"n_orders_{w}d"] = hi - lo
        out[f"spend_{w}d"] = sum(cs[lo:]) / 100.0
    tail = amounts[-B.MEDIAN_K:] if len(amounts) >= B.MEDIAN_K else [B.i2f(int(m[16:32], 16)) for m in last]
    if tail:
        vals = sorted(tail)
        k = len(vals)
        out["median_order_amount"] = (vals[(k - 1) // 2] + vals[k // 2]) / 2.0
    else:
        out["median_order_amount"] = None
    rt = [unhx(m) for m in ref]
    only = [m[16:17] == b"1" for m in ref]
    rc = [int(m[17:33], 16) for m in ref]
    for w in (1, 7, 30, 90, 365):
        lo = bisect_left(rt, t - w * _DAY)
        out[f"n_refunds_{w}d"] = len(rt) - lo
        out[f"n_refund_only_{w}d"] = sum(only[lo:])
        if w == 365:
            out["refund_only_amount_365d"] = sum(c for c, o in zip(rc[lo:], only[lo:], strict=True) if o) / 100.0
    out["n_stores_refunded"] = int(n_s)
    out["n_not_received_on_delivered"] = int(n_nr)
    out["n_rejected"] = int(n_rj)
    out["n_abuse"] = int(n_ab)
    return {f: out[f] for f in _BUYER_FIELDS}


_BUYER_FIELDS = tuple(BuyerProfile.__dataclass_fields__)
