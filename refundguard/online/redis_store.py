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
of read-only Lua scripts (buyer, store, device, address, each on one hash slot, and
the cluster search below): counts over ranges (``ZLEXCOUNT``), and the buyer's events
of the last 365 days, from which the profile is computed in Python exactly as in memory.

Identity clusters (:mod:`refundguard.clusters`) read the keys above (each buyer's ``l``
links with first times, each device's and address's ``seen`` buyers). On a standalone server
the whole capped search (hub rule, size cap, then the other members' refund counts and first
bad times) is one more read-only Lua script in the lookup's round trip, so a lookup stays one
round trip whatever the cluster. The server runs it alone (scripts are atomic) and its
cost is bounded by the caps: the links of at most ``CLUSTER_MAX_ACCOUNTS + 1`` buyers,
at most ``CLUSTER_HUB_BUYERS`` buyers read per device or address. That
script reads keys it finds during the search, which are not declared in ``KEYS``: a standalone
server allows it, Redis Cluster does not (they may live on other nodes). With a Redis Cluster
client the search runs from Python instead, one pipelined round trip per hop, whose first
step (the requester's links and the request's own device and address) rides in the lookup's
round trip. Keys expire as below: a member whose keys expired leaves the graph, as it leaves
``device_n_buyers``.

Bulk load (:meth:`RedisProfileStore.from_tables`, :meth:`RedisProfileStore.load_tables`): the keys
event replay would write, computed from tables as columns and sent as raw pipelined
``HSET``/``ZADD`` + ``PEXPIRE`` commands encoded with Arrow (tens of thousands of
orders per second on loopback, against about a thousand events per second).

Events: the order record is checked and written under ``WATCH``/``MULTI``/``EXEC``
(the refund-sum rule is atomic); every derived update is one Lua script on one
slot and idempotent (set members, min-merges), so a repeated or retried event never
counts twice and events may arrive in any order. Keys expire ``ttl_days`` after
their last write (default: the longest window, 365 days, plus 30).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

import refundguard.online._blocks as B
from refundguard._time import NAT, NEVER, NS_PER_DAY, parameter_ns
from refundguard.clusters import CLUSTER_HUB_BUYERS, CLUSTER_MAX_ACCOUNTS
from refundguard.config import ScoreConfig
from refundguard.errors import ConfigError, DataError, RequestError
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
from refundguard.online.memory import large_cluster, make_profiles
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
# identity clusters (refundguard.clusters): KEYS: l, m, r of a buyer; ARGV: t, t - 24h, t - 30d (hex)
_READ_MEMBER = """#!lua flags=no-writes
local t = '(' .. ARGV[1]
return {redis.call('HGETALL', KEYS[1]), redis.call('HGET', KEYS[2], 'fb') or '',
  redis.call('ZLEXCOUNT', KEYS[3], '[' .. ARGV[2], t), redis.call('ZLEXCOUNT', KEYS[3], '[' .. ARGV[3], t)}
"""
# KEYS: seen of a device or address; ARGV: t (hex), hub. Its buyers seen before t, or only their count past the hub.
_READ_KEY = """#!lua flags=no-writes
local t = '(' .. ARGV[1]
local n = redis.call('ZLEXCOUNT', KEYS[1], '-', t)
if n > tonumber(ARGV[2]) then return {n} end
return {n, redis.call('ZRANGEBYLEX', KEYS[1], '-', t)}
"""
# The whole capped cluster search of a buyer, server side (standalone servers only: it reads keys it finds during
# the search, which are not in KEYS). KEYS: the requester's l; ARGV: prefix, buyer, t, t - 24h, t - 30d (hex), hub,
# cap. Returns {size, refunds 24h, refunds 30d, bad others} of the other members, or {size} once size > cap (large).
_READ_CLUSTER = """#!lua flags=no-writes
local p, me, t, d1, d30 = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local hub, cap = tonumber(ARGV[6]), tonumber(ARGV[7])
local lt = '(' .. t
local comp, queue, done = {[me] = true}, {me}, {}
local head = 1
while head <= #queue do
  local b = queue[head]
  local raw
  if head == 1 then raw = redis.call('HGETALL', KEYS[1]) else raw = redis.call('HGETALL', p .. ':{b:' .. b .. '}:l') end
  head = head + 1
  for i = 1, #raw, 2 do
    local field = raw[i]
    if raw[i + 1] < t and not done[field] then
      done[field] = true
      local seen = p .. ':{' .. field .. '}:seen'
      if redis.call('ZLEXCOUNT', seen, '-', lt) <= hub then
        local got = redis.call('ZRANGEBYLEX', seen, '-', lt)
        for j = 1, #got do
          local other = string.sub(got[j], 18)
          if not comp[other] then
            comp[other] = true
            queue[#queue + 1] = other
          end
        end
        if #queue > cap then return {#queue} end
      end
    end
  end
end
local n24, n30, bad = 0, 0, 0
for i = 2, #queue do
  local base = p .. ':{b:' .. queue[i] .. '}:'
  local fb = redis.call('HGET', base .. 'm', 'fb')
  if fb and fb ~= '' and fb < t then bad = bad + 1 end
  n24 = n24 + redis.call('ZLEXCOUNT', base .. 'r', '[' .. d1, lt)
  n30 = n30 + redis.call('ZLEXCOUNT', base .. 'r', '[' .. d30, lt)
end
return {#queue, n24, n30, bad}
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
        # lookups call EVALSHA themselves: a Script object in a pipeline costs one more round trip
        # per call (redis-py asks SCRIPT EXISTS before every execute); scripts are loaded on first use
        self._read_shas = (self._read_buyer.sha, self._read_store.sha, self._read_link.sha)
        self._member_sha, self._key_sha = reg(_READ_MEMBER).sha, reg(_READ_KEY).sha
        self._cluster_sha = reg(_READ_CLUSTER).sha
        # a standalone server runs the whole cluster search in the lookup's round trip; Redis Cluster cannot (the
        # search reads keys found on the way, on any node): there it runs from Python, a round trip per hop
        self._server_search = not _is_cluster(client)
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

    # ------------------------------------------------------------------ bulk load
    @classmethod
    def from_tables(cls, tables: Mapping[str, pd.DataFrame], client: Any, *, prefix: str = "refundguard",
                    as_of: Any = None, store_scores: pd.DataFrame | None = None,
                    score_config: ScoreConfig | None = None, ttl_days: float | None = 395,
                    validate_tables: bool = True, batch_size: int = 20_000) -> RedisProfileStore:
        """A store on ``client`` under ``prefix`` (empty), filled in bulk from ``tables`` (:meth:`load_tables`).

        Parameters are those of the constructor and of :meth:`load_tables`.
        """
        store = cls(client, prefix=prefix, store_scores=store_scores, score_config=score_config, ttl_days=ttl_days)
        store.load_tables(tables, as_of, validate_tables=validate_tables, batch_size=batch_size)
        return store

    def load_tables(self, tables: Mapping[str, pd.DataFrame], as_of: Any = None, *, validate_tables: bool = True,
                    batch_size: int = 20_000) -> dict[str, int]:
        """Write every event of ``tables`` known before ``as_of`` into this store's (empty) prefix, in bulk.

        The keys and values are the ones replaying the same rows as events
        (:meth:`observe_tables`) would leave (tested equal, key by key), so the store
        then takes events as usual. They are computed from the tables as columns and
        encoded as raw RESP with Arrow (one ``HSET`` or ``ZADD`` per key, then its
        ``PEXPIRE``), and sent ``batch_size`` commands per round trip on one
        connection, the next round trip sent before the last one's replies are read.
        A Redis Cluster client gets the same commands through its pipeline (split
        per node; slower).

        Parameters
        ----------
        tables
            The contract's tables (validated in strict mode unless ``validate_tables=False``).
        as_of
            Keep only what is known strictly before this instant, as
            :meth:`ProfileStore.from_tables` does; ``None`` keeps everything.
        validate_tables
            Validate the tables first (:func:`refundguard.pipeline.canonical_tables`).
        batch_size
            Commands per round trip.

        Returns
        -------
        dict
            ``orders`` and ``refunds`` written, ``keys`` written, ``commands`` sent.

        Raises
        ------
        ConfigError
            ``batch_size`` is not a positive integer.
        DataError
            The prefix already holds keys (bulk writes would not merge with them:
            add to a live prefix with :meth:`observe_tables`, which is idempotent).
        """
        from refundguard.pipeline import canonical_tables

        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError.invalid("RedisProfileStore.load_tables", "batch_size", "an int >= 1", batch_size)
        clean = canonical_tables(tables, validate_tables)
        cut = parameter_ns(as_of, "as_of", "RedisProfileStore.load_tables", optional=True)
        taken = next(iter(self.client.scan_iter(match=_glob_escape(self.prefix) + ":*", count=1000)), None)
        if taken is not None:
            raise DataError(f"RedisProfileStore.load_tables: the prefix {self.prefix!r} already holds keys "
                            f"(e.g. {_s(taken)!r}); bulk loading writes into an empty prefix only. Add to a live "
                            "prefix with observe_tables (idempotent events), or use a new prefix.",
                            detail={"prefix": self.prefix})
        ttl = self._ttl if self._ttl_set else ""
        counts = {"orders": 0, "refunds": 0, "keys": 0, "commands": 0}
        specs = _bulk_specs(clean, NEVER if cut is None else cut, self.prefix, counts)
        if _is_cluster(self.client):  # one pipeline, split per node by the client
            pipe = self.client.pipeline(transaction=False)
            for spec in specs:
                for key, kind, values, new_key in _spec_commands(spec):
                    counts["keys"] += new_key
                    if kind == "h":
                        pipe.execute_command("HSET", key, *values)
                    else:
                        pipe.execute_command("ZADD", key, *(x for v in values for x in (0, v)))
                    if ttl:
                        pipe.pexpire(key, int(ttl))
                    if len(pipe) >= batch_size:
                        counts["commands"] += len(pipe)
                        pipe.execute()
            counts["commands"] += len(pipe)
            pipe.execute()
        else:
            _write_raw(self.client, specs, ttl, batch_size, counts)
        return counts

    # ------------------------------------------------------------------ queries
    def profiles(self, request: Mapping[str, Any]) -> tuple[BuyerProfile, StoreProfile, LinkProfile]:
        """Profiles of a request as of its ``requested_at``: one pipelined round trip."""
        key = parse_request_key(request)
        t = key.t
        th = hx(t)
        buyer_sha, store_sha, link_sha = self._read_shas
        calls = [(buyer_sha, self._k("b", key.buyer_id, "m", "o", "r", "s", "nr", "rj", "ab"),
                  (th, hx(t - 365 * _DAY))),
                 (store_sha, self._k("s", key.store_id, "o", "r"), (th, hx(t - 30 * _DAY), hx(t - _DAY)))]
        links = [name is not None for name in (key.device_id, key.address_id)]
        for tag, name in (("d", key.device_id), ("a", key.address_id)):
            if name is not None:
                calls.append((link_sha, self._k(tag, name, "seen", "bad", "r"), (th, hx(t - _DAY))))
        n_fixed = len(calls)
        if self._server_search:  # the whole cluster search, server side, in this round trip
            calls.append((self._cluster_sha, self._k("b", key.buyer_id, "l"),
                          (self.prefix, key.buyer_id, th, hx(t - _DAY), hx(t - 30 * _DAY), str(CLUSTER_HUB_BUYERS),
                           str(CLUSTER_MAX_ACCOUNTS))))
            res = self._read(calls)
            found = [int(x) for x in res[n_fixed]]
            cv = large_cluster() if len(found) == 1 else (found[0], found[1], found[2], found[3])
        else:
            # Redis Cluster: the search's first step rides along (the requester's links, and, most often its only
            # links, the request's device and address), then one round trip per hop
            calls.append(self._member_call(key.buyer_id, t))
            guess = [f"{tag}:{name}" for tag, name in (("d", key.device_id), ("a", key.address_id))
                     if name is not None]
            calls += [self._key_call(field, th) for field in guess]
            res = self._read(calls)
            cv = self._cluster_values(key.buyer_id, t, res[n_fixed],
                                      dict(zip(guess, res[n_fixed + 1:], strict=True)))
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
        return make_profiles(bv, sv, lv[0], lv[1], cv)

    def _member_call(self, buyer: str, t: int) -> tuple[str, list[str], tuple[str, ...]]:
        return (self._member_sha, self._k("b", buyer, "l", "m", "r"), (hx(t), hx(t - _DAY), hx(t - 30 * _DAY)))

    def _key_call(self, field: str, th: str) -> tuple[str, list[str], tuple[str, ...]]:
        tag, _, name = field.partition(":")
        return (self._key_sha, self._k(tag, name, "seen"), (th, str(CLUSTER_HUB_BUYERS)))

    def _cluster_values(self, buyer: str, t: int, mine: list[Any], keys: dict[str, list[Any]]
                        ) -> tuple[int, int | None, int | None, int | None]:
        """The cluster search of :func:`refundguard.clusters.search_one` in waves (Redis Cluster clients; a
        standalone server runs ``_READ_CLUSTER`` in the lookup instead): each pipelined round trip
        reads the keys the last buyers link to AND the buyers the last keys hold (the first wave came with
        the lookup), so a search costs about one round trip per hop."""
        th = hx(t)
        info = {buyer: mine}
        comp, done = {buyer}, set()
        new_b: list[str] = [buyer]
        new_k: list[str] = []
        while True:
            want_k = []
            for b in new_b:  # buyers read -> their keys known before t
                raw = info[b][0]
                for i in range(0, len(raw), 2):
                    field = _s(raw[i])
                    if field not in done and unhx(raw[i + 1]) < t:
                        done.add(field)
                        (new_k if field in keys else want_k).append(field)
            want_b = []
            for field in new_k:  # keys read -> their buyers seen before t (hubs link nobody)
                got = keys[field]
                if int(got[0]) > CLUSTER_HUB_BUYERS:
                    continue
                for m in got[1]:
                    other = _s(m)[17:]
                    if other not in comp:
                        comp.add(other)
                        want_b.append(other)
                if len(comp) > CLUSTER_MAX_ACCOUNTS:
                    return large_cluster()
            if not want_k and not want_b:
                break
            res = self._read([self._key_call(f, th) for f in want_k] + [self._member_call(b, t) for b in want_b])
            keys.update(zip(want_k, res[:len(want_k)], strict=True))
            info.update(zip(want_b, res[len(want_k):], strict=True))
            new_b, new_k = want_b, want_k
        n24 = n30 = bad = 0
        for b in comp:
            if b != buyer:
                _links, fb, c24, c30 = info[b]
                n24 += int(c24)
                n30 += int(c30)
                bad += bool(fb) and unhx(fb) < t
        return len(comp), n24, n30, bad

    def _read(self, calls: list[tuple[str, list[str], tuple[str, ...]]]) -> list[Any]:
        """Run read-only scripts in one pipelined round trip (loading them once if the server lacks them)."""
        from redis.exceptions import NoScriptError

        for attempt in (0, 1):
            pipe = self.client.pipeline(transaction=False)
            for sha, keys, args in calls:
                pipe.evalsha(sha, len(keys), *keys, *args)
            try:
                return pipe.execute()
            except NoScriptError:  # first use, or the server restarted: load and run again (reads only)
                if attempt:
                    raise
                for script in (_READ_BUYER, _READ_STORE, _READ_LINK, _READ_MEMBER, _READ_KEY, _READ_CLUSTER):
                    self.client.script_load(script)
        raise AssertionError("unreachable")  # pragma: no cover

    def stats(self) -> dict[str, int]:
        """Held and dropped resolutions (kept in ``<prefix>:stats``)."""
        raw = self.client.hgetall(f"{self.prefix}:stats")
        got = {_s(k): int(v) for k, v in raw.items()}
        return {"pending_resolutions": got.get("pending", 0), "dropped_resolutions": got.get("dropped_resolutions", 0)}


# --------------------------------------------------------------------------- bulk load
# What event replay would write, computed as columns (_bulk_specs), then encoded as raw RESP with Arrow
# (_resp_chunks: HSET or ZADD per key, PEXPIRE after it) and sent pipelined (_write_raw). A Redis Cluster
# client gets the same commands through its pipeline (_spec_commands), which splits them per node.


def _is_cluster(client: Any) -> bool:
    try:
        from redis.cluster import RedisCluster
    except ImportError:  # pragma: no cover - the redis extra is missing
        return False
    return isinstance(client, RedisCluster)


def _glob_escape(s: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in s)


def _hex_arrow(u: np.ndarray) -> pa.Array:
    """16 hex digits of each uint64, as an Arrow string array (no Python object per value)."""
    n = len(u)
    data = np.ascontiguousarray(u, dtype=np.uint64).astype(">u8").tobytes().hex().encode("ascii")
    return pa.StringArray.from_buffers(n, pa.py_buffer(np.arange(0, 16 * (n + 1), 16, dtype=np.int32)),
                                       pa.py_buffer(data))


def _hx_arrow(ns: np.ndarray) -> pa.Array:
    """:func:`hx` of many instants (``""`` for :data:`NAT`)."""
    ns = np.asarray(ns, dtype=np.int64)
    out = _hex_arrow(ns.view(np.uint64) ^ np.uint64(_OFF))
    nat = ns == NAT
    return pc.if_else(pa.array(nat), "", out) if nat.any() else out


def _text(s: pd.Series) -> pa.Array:
    """A text column as one Arrow string array (nulls kept)."""
    a = pa.array(s, type=pa.string())
    return a.combine_chunks() if isinstance(a, pa.ChunkedArray) else a


def _join(*parts: Any) -> pa.Array:
    """Element-wise concatenation of string arrays and constants."""
    return pc.binary_join_element_wise(*parts, "")


@dataclass
class _Rows:
    """One ``HSET`` per row: ``keys[i]`` gets, per ``(name, values)`` of ``fields``, the hash field ``name``
    with value ``values[i]`` (``name`` None: ``values[i]`` is itself the next argument, a field or a value)."""

    keys: pa.Array
    fields: list[tuple[str | None, pa.Array]]
    new_keys: bool = True


@dataclass
class _Groups:
    """One ``ZADD`` or ``HSET`` per group: ``keys[g]`` gets the ``items`` of rows ``offsets[g]:offsets[g + 1]``:
    sorted set members (``values is None``), or hash fields ``items`` with their ``values``."""

    keys: list[str]
    offsets: np.ndarray
    items: pa.Array
    values: pa.Array | None = None


def _groups(prefix_of: list[str], suffix: str, codes: np.ndarray, items: pa.Array,
            values: pa.Array | None = None) -> _Groups:
    """Group rows by ``codes`` (0..len(prefix_of)-1), keeping row order within a group; empty groups dropped."""
    order = np.argsort(codes, kind="stable")
    counts = np.bincount(codes, minlength=len(prefix_of)) if len(codes) else np.zeros(len(prefix_of), np.int64)
    has = np.flatnonzero(counts)
    offsets = np.zeros(len(has) + 1, dtype=np.int64)
    np.cumsum(counts[has], out=offsets[1:])
    take = pa.array(order)
    return _Groups([prefix_of[g] + suffix for g in has.tolist()], offsets, items.take(take),
                   None if values is None else values.take(take))


def _bulk_specs(clean: dict[str, pd.DataFrame], cut: int, prefix: str,
                counts: dict[str, int]) -> list[_Rows | _Groups]:
    """Every key event replay would write for the rows of ``clean`` known before ``cut``, as columns."""
    from refundguard._time import series_ns

    o, r = clean["orders"], clean["refunds"]
    paid = series_ns(o["paid_at"])
    keep = paid < cut
    if not keep.all():
        o, paid = o.loc[keep], paid[keep]
    shipped, delivered = series_ns(o["shipped_at"]), series_ns(o["delivered_at"])
    shipped = np.where(shipped < cut, shipped, NAT)
    delivered = np.where(delivered < cut, delivered, NAT)
    n = len(o)
    col = {c: pc.fill_null(_text(o[c]), "")
           for c in ("order_id", "buyer_id", "store_id", "device_id", "address_id")}
    oid, buyer, store = col["order_id"], col["buyer_id"], col["store_id"]
    amount = o["amount"].to_numpy(np.float64)
    req = series_ns(r["requested_at"])
    rkeep = req < cut
    if not rkeep.all():
        r, req = r.loc[rkeep], req[rkeep]
    m = len(r)
    rid, roid = _text(r["refund_id"]), _text(r["order_id"])
    orow = pd.Index(oid.to_numpy(zero_copy_only=False)).get_indexer(roid.to_numpy(zero_copy_only=False)) \
        if m else np.zeros(0, dtype=np.int64)
    if m and orow.min() < 0:
        bad = roid.take(pa.array(np.flatnonzero(orow < 0)[:5])).to_pylist()
        raise DataError(f"refunds reference orders that are not in the orders table (or paid after as_of), "
                        f"e.g. {bad}: validate the tables first.", detail={"order_ids": bad})
    counts["orders"], counts["refunds"] = n, m
    resolved = series_ns(r["resolved_at"])
    known = (resolved != NAT) & (resolved < cut)
    resolved = np.where(known, resolved, NAT)
    label = r["is_abuse"].astype("boolean")
    rejected = known & (r["outcome"] == "rejected").fillna(False).to_numpy(bool)
    abuse = known & label.fillna(False).to_numpy(bool)
    only = (r["kind"] == "refund_only").fillna(False).to_numpy(bool)
    nr = (r["reason"] == "not_received").fillna(False).to_numpy(bool)
    r_amount = r["amount"].to_numpy(np.float64)
    r_deliv = delivered[orow] if m else np.zeros(0, dtype=np.int64)
    claim = nr & (r_deliv != NAT) & (r_deliv < req)
    ph, rh, resh = _hx_arrow(paid), _hx_arrow(req), _hx_arrow(resolved)
    rows = pa.array(orow)
    specs: list[_Rows | _Groups] = []

    # order and refund records (an order's refunds as fields r:<refund_id> of its record)
    o_key = _join(f"{prefix}:{{o:", oid, "}")
    specs.append(_Rows(o_key, [
        ("b", buyer), ("s", store), ("d", col["device_id"]), ("a", col["address_id"]), ("p", ph),
        ("amt", pa.array([repr(x) for x in amount.tolist()], type=pa.string())),
        ("sh", _hx_arrow(shipped)), ("de", _hx_arrow(delivered))]))
    if m:
        amt = pa.array([repr(x) for x in r_amount.tolist()], type=pa.string())
        r_val = _join(rh, "|", pa.array(np.where(nr, "1", "0")), "|", amt, "|", pa.array(np.where(only, "1", "0")))
        specs.append(_Rows(o_key.take(rows), [(None, _join("r:", rid)), (None, r_val)], new_keys=False))
        r_key = _join(f"{prefix}:{{r:", rid, "}")
        r_buyer = buyer.take(rows)
        specs.append(_Rows(r_key, [("o", roid), ("b", r_buyer), ("req", rh)]))
        sel = pa.array(np.flatnonzero(known))
        lab = np.where(label.isna().to_numpy(bool), "", np.where(label.fillna(False).to_numpy(bool), "1", "0"))
        specs.append(_Rows(r_key.take(sel), [("res", resh.take(sel)),
                                            ("out", _text(r["outcome"]).take(sel)),
                                            ("ab", pa.array(lab).take(sel))], new_keys=False))

    # buyers
    b_code, b_names = pd.factorize(buyer.to_numpy(zero_copy_only=False))
    s_code, s_names = pd.factorize(store.to_numpy(zero_copy_only=False))
    b_base = [f"{prefix}:{{b:{name}}}:" for name in b_names]
    nb = len(b_names)
    rb = b_code[orow] if m else np.zeros(0, dtype=np.int64)
    rs = s_code[orow] if m else np.zeros(0, dtype=np.int64)
    first = np.full(nb, NEVER, dtype=np.int64)
    np.minimum.at(first, b_code, paid)
    fb = np.full(nb, NEVER, dtype=np.int64)
    bad = rejected | abuse
    if bad.any():
        np.minimum.at(fb, rb[bad], resolved[bad])
    has_fb = fb != NEVER
    codes = np.concatenate([np.arange(nb), np.flatnonzero(has_fb)])
    specs.append(_groups(b_base, "m", codes, pa.array(["first"] * nb + ["fb"] * int(has_fb.sum())),
                         pa.concat_arrays([_hx_arrow(first), _hx_arrow(fb[has_fb])])))
    specs.append(_groups(b_base, "o", b_code, _join(ph, _hex_arrow(amount.view(np.uint64)), "|", oid)))
    link_pairs = []
    for tag, name in (("d", "device_id"), ("a", "address_id")):
        k_code, k_names = pd.factorize(_text(o[name]).to_numpy(zero_copy_only=False), use_na_sentinel=True)
        ok = k_code >= 0
        fs = pd.DataFrame({"b": b_code[ok], "k": k_code[ok], "t": paid[ok]}).groupby(["b", "k"], sort=False)["t"].min()
        link_pairs.append((tag, k_code, list(k_names), fs.index.get_level_values(0).to_numpy(),
                           fs.index.get_level_values(1).to_numpy(), fs.to_numpy(np.int64)))
    specs.append(_groups(b_base, "l", np.concatenate([p[3] for p in link_pairs]),
                         pa.array([f"{tag}:{names[k]}" for tag, _c, names, _b, kk, _t in link_pairs
                                   for k in kk.tolist()], type=pa.string()),
                         _hx_arrow(np.concatenate([p[5] for p in link_pairs]))))
    if m:
        cents = np.rint(r_amount * 100.0).astype(np.int64)
        specs.append(_groups(b_base, "r", rb, _join(rh, pa.array(np.where(only, "1", "0")),
                                                    _hex_arrow(cents.view(np.uint64)), "|", rid)))
        sf = pd.DataFrame({"b": rb, "s": rs, "t": req}).groupby(["b", "s"], sort=False)["t"].min()
        sf_b = sf.index.get_level_values(0).to_numpy()
        sf_store = pa.array([s_names[s] for s in sf.index.get_level_values(1).tolist()], type=pa.string())
        sf_t = _hx_arrow(sf.to_numpy(np.int64))
        specs.append(_groups(b_base, "sf", sf_b, _join("s:", sf_store), sf_t))
        specs.append(_groups(b_base, "s", sf_b, _join(sf_t, "|", sf_store)))
        for part, sel, hexes in (("nr", claim, rh), ("rj", rejected, resh), ("ab", abuse, resh)):
            idx = pa.array(np.flatnonzero(sel))
            specs.append(_groups(b_base, part, rb[sel], _join(hexes.take(idx), "|", rid.take(idx))))

    # stores
    s_base = [f"{prefix}:{{s:{name}}}:" for name in s_names]
    specs.append(_groups(s_base, "o", s_code, _join(ph, "|", oid)))
    ref_member = _join(rh, "|", rid) if m else None
    if m:
        specs.append(_groups(s_base, "r", rs, ref_member))

    # devices and addresses
    for tag, k_code, k_names, pb, pk, pt in link_pairs:
        k_base = [f"{prefix}:{{{tag}:{name}}}:" for name in k_names]
        b_name = pa.array(b_names, type=pa.string()).take(pa.array(pb))
        p_fb = fb[pb]
        fs_h = _hx_arrow(pt)
        specs.append(_groups(k_base, "m", pk, b_name, _join(fs_h, "|", _hx_arrow(np.where(p_fb == NEVER, NAT, p_fb)))))
        specs.append(_groups(k_base, "seen", pk, _join(fs_h, "|", b_name)))
        is_bad = p_fb != NEVER
        idx = pa.array(np.flatnonzero(is_bad))
        specs.append(_groups(k_base, "bad", pk[is_bad],
                             _join(_hx_arrow(np.maximum(pt, p_fb)[is_bad]), "|", b_name.take(idx))))
        if m:
            rk = k_code[orow]
            ok = rk >= 0
            specs.append(_groups(k_base, "r", rk[ok], ref_member.take(pa.array(np.flatnonzero(ok)))))
    return specs


def _frag(a: pa.Array) -> pa.Array:
    """Each value as a RESP bulk string: ``$<bytes>\\r\\n<value>\\r\\n``."""
    return _join("$", pc.cast(pc.binary_length(a), pa.string()), "\r\n", a, "\r\n")


def _bulk(s: str) -> str:
    """A constant as a RESP bulk string (text; constants here are ASCII)."""
    return f"${len(s.encode('utf-8'))}\r\n{s}\r\n"


def _data(a: pa.Array) -> tuple[memoryview, np.ndarray]:
    """A string array's bytes and offsets (int64)."""
    if isinstance(a, pa.ChunkedArray):
        a = a.combine_chunks()
    a = a.cast(pa.large_string()) if not pa.types.is_large_string(a.type) else a
    off = np.frombuffer(a.buffers()[1], dtype=np.int64)[a.offset: a.offset + len(a) + 1]
    data = a.buffers()[2]
    return (memoryview(data) if data is not None else memoryview(b"")), off


_ROWS_PER_CHUNK = 1 << 16


def _resp_chunks(specs: list[_Rows | _Groups], ttl: str) -> Iterator[tuple[memoryview, np.ndarray, int]]:
    """The specs as raw RESP commands (``HSET`` or ``ZADD`` per key, then ``PEXPIRE`` if ``ttl``), encoded
    vectorised with Arrow, no Python step per value or per key: ``(bytes, ends, replies per key)`` per chunk of
    whole keys, where the commands of the chunk's key ``i`` end at byte ``ends[i]``."""
    expire = ("*3\r\n$7\r\nPEXPIRE\r\n", _bulk(ttl)) if ttl else None
    per_key = 2 if expire else 1
    for spec in specs:
        if isinstance(spec, _Rows):
            n_rows = len(spec.keys)
            n_args = 2 + sum(2 if name else 1 for name, _ in spec.fields)
            for i in range(0, n_rows, _ROWS_PER_CHUNK):
                j = min(n_rows, i + _ROWS_PER_CHUNK)
                key = _frag(spec.keys.slice(i, j - i))
                parts: list[Any] = [f"*{n_args}\r\n$4\r\nHSET\r\n", key]
                for name, values in spec.fields:
                    if name:
                        parts.append(_bulk(name))
                    parts.append(_frag(values.slice(i, j - i)))
                if expire:
                    parts += [expire[0], key, expire[1]]
                data, off = _data(_join(*parts))
                yield data, off[1:], per_key
            continue
        bounds = spec.offsets
        n_groups = len(spec.keys)
        g0 = 0
        while g0 < n_groups:  # chunks of whole keys, about _ROWS_PER_CHUNK values each
            g1 = int(np.searchsorted(bounds, bounds[g0] + _ROWS_PER_CHUNK, "right")) - 1
            g1 = min(max(g1, g0 + 1), n_groups)
            lo, hi = int(bounds[g0]), int(bounds[g1])
            size = np.diff(bounds[g0:g1 + 1])
            group = pa.array(np.repeat(np.arange(g1 - g0), size))
            keys = _frag(pa.array(spec.keys[g0:g1], type=pa.string()))
            items = _frag(spec.items.slice(lo, hi - lo))
            n_args = pc.cast(pa.array(2 + 2 * size), pa.string())
            if spec.values is None:
                head = _join("*", n_args, "\r\n$4\r\nZADD\r\n", keys)
                item = _join("$1\r\n0\r\n", items)
            else:
                head = _join("*", n_args, "\r\n$4\r\nHSET\r\n", keys)
                item = _join(items, _frag(spec.values.slice(lo, hi - lo)))
            first = np.ones(hi - lo, dtype=bool)
            first[1:] = np.diff(np.repeat(np.arange(g1 - g0), size)) != 0
            last = np.ones(hi - lo, dtype=bool)
            last[:-1] = first[1:]
            parts = [pc.if_else(pa.array(first), head.take(group), ""), item]
            if expire:
                parts.append(pc.if_else(pa.array(last), _join(expire[0], keys, expire[1]).take(group), ""))
            data, off = _data(_join(*parts))
            yield data, off[1:][last], per_key
            g0 = g1


def _spec_commands(spec: _Rows | _Groups) -> Iterator[tuple[str, str, list[str], bool]]:
    """The keys of :func:`_resp_chunks` as ``(key, "h" or "z", values, new key)`` (for cluster clients)."""
    if isinstance(spec, _Rows):
        cols = [(name, values.to_pylist()) for name, values in spec.fields]
        for i, key in enumerate(spec.keys.to_pylist()):
            vals: list[str] = []
            for name, values in cols:
                if name:
                    vals.append(name)
                vals.append(values[i])
            yield key, "h", vals, spec.new_keys
        return
    items = spec.items.to_pylist()
    values = None if spec.values is None else spec.values.to_pylist()
    bounds = spec.offsets.tolist()
    for g, key in enumerate(spec.keys):
        lo, hi = bounds[g], bounds[g + 1]
        if values is None:
            yield key, "z", items[lo:hi], True
        else:
            yield key, "h", [x for pair in zip(items[lo:hi], values[lo:hi], strict=True) for x in pair], True


class _Replies:
    """Reads the replies of the bulk commands: all integer replies (``:<n>\r\n``); an error reply raises.

    Counting line ends in what the socket returns costs nothing next to parsing each
    reply in Python; a client without a plain socket falls back to ``read_response``.
    """

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.tail = b""
        self.ahead = 0  # replies read beyond those asked for (of commands sent since)

    def read(self, n: int) -> None:
        """Read (at least) ``n`` replies."""
        n -= self.ahead
        self.ahead = 0
        sock = getattr(self.conn, "_sock", None)
        if sock is None or not hasattr(sock, "recv"):  # pragma: no cover - another connection class
            for _ in range(n):
                self.conn.read_response()  # an error reply raises redis.ResponseError
            return
        while n > 0:
            chunk = self.tail + sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("the Redis server closed the connection during a bulk load")
            end = chunk.rfind(b"\r\n") + 2
            done, self.tail = chunk[:end], chunk[end:]
            if done[:1] != b":" or b"\n-" in done or b"\n_" in done:
                line = next(x for x in done.split(b"\r\n") if x[:1] != b":")
                raise DataError(f"Redis refused a bulk write: {line.decode('utf-8', 'replace')}",
                                detail={"reply": line.decode("utf-8", "replace")})
            n -= done.count(b"\r\n")
        self.ahead = -n if n < 0 else 0


def _write_raw(client: Any, specs: list[_Rows | _Groups], ttl: str, batch: int, counts: dict[str, int]) -> None:
    """Send the commands as raw RESP on one connection of ``client``'s pool, about ``batch`` commands per round
    trip, reading a round trip's replies after sending the next one (the server works while Python encodes)."""
    pool = client.connection_pool
    try:
        conn = pool.get_connection()
    except TypeError:  # pragma: no cover - redis-py < 5.3 wants a command name
        conn = pool.get_connection("HSET")
    replies = _Replies(conn)
    try:
        in_flight = 0
        for data, ends, per_key in _resp_chunks(specs, ttl):
            step = max(1, batch // per_key)
            start = 0
            for k in range(0, len(ends), step):
                stop = int(ends[min(len(ends), k + step) - 1])
                conn.send_packed_command([data[start:stop]], check_health=False)
                replies.read(in_flight)
                in_flight = per_key * (min(len(ends), k + step) - k)
                counts["commands"] += in_flight
                start = stop
        replies.read(in_flight)
        if replies.ahead or replies.tail:  # pragma: no cover - more replies than commands: not our stream
            raise ConnectionError("unexpected replies during a Redis bulk load")
    except BaseException:
        conn.disconnect()  # replies may be left unread: this connection is not reused as it is
        raise
    finally:
        pool.release(conn)
    counts["keys"] += sum(len(s.keys) for s in specs if not isinstance(s, _Rows) or s.new_keys)


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
