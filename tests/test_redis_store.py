"""RedisProfileStore on a real redis-server (started here on a free loopback port): the memory store's profiles."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import numpy as np
import pytest

from refundguard.errors import RequestError
from refundguard.online import ProfileStore, RedisProfileStore
from refundguard.profiles import profiles_as_of, requests_from_tables
from tests.test_online import all_profiles, events, feed, order, query, refund, T0, H
from tests.test_clusters import CHAIN, CHAIN_REFUNDS, CHAIN_WANT, _check, _hub, _long_chain, _tables
from tests.test_profiles import BASE, fake_history, random_tables
from refundguard.clusters import CLUSTER_HUB_BUYERS, CLUSTER_MAX_ACCOUNTS

pytestmark = pytest.mark.extras


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def redis_server() -> Iterator[tuple[str, int]]:
    """A private redis-server on 127.0.0.1 (no persistence), stopped after the module."""
    redis = pytest.importorskip("redis")
    exe = shutil.which("redis-server")
    if exe is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("redis-server is not installed (.ci/run installs it)")
        pytest.skip("redis-server is not installed (apt-get install -y redis-server)")
    port = _free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = redis.Redis(host="127.0.0.1", port=port)
        for _ in range(200):
            try:
                client.ping()
                break
            except redis.exceptions.ConnectionError:
                time.sleep(0.025)
        else:
            pytest.fail("redis-server did not start")
        client.close()
        yield "127.0.0.1", port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def client(redis_server):
    import redis

    c = redis.Redis(host=redis_server[0], port=redis_server[1])
    c.flushall()
    yield c
    c.close()


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
def test_redis_store_equals_memory_store_and_batch(client, seed: int) -> None:
    tables = random_tables(seed)
    hist = fake_history(tables, seed)
    requests = requests_from_tables(tables)
    memory = ProfileStore(store_scores=hist)
    feed(memory, events(tables))
    shared = RedisProfileStore(client, prefix=f"test:{seed}", store_scores=hist)
    stream = events(tables)
    orders = [e for e in stream if e[0] == "order"]
    rest = [e for e in stream if e[0] != "order"]
    rng = np.random.default_rng(seed)
    rng.shuffle(orders)
    rest = rest + rest[: len(rest) // 2]
    rng.shuffle(rest)                                  # duplicates, resolutions before their refunds
    feed(shared, orders + orders[:5] + rest)
    assert shared.stats()["pending_resolutions"] == 0
    batch = profiles_as_of(tables, requests, store_scores=hist)
    got = all_profiles(shared, requests)
    assert got == all_profiles(memory, requests)
    assert got == [batch.profile(i) for i in range(len(requests))]


def test_redis_store_rules_holds_and_prefixes(client) -> None:
    a = RedisProfileStore(client, prefix="mkt-a")
    b = RedisProfileStore(client, prefix="mkt-b")
    a.observe_order(order())
    a.observe_resolution("r1", T0 + 12 * H, "rejected", True)           # before its refund: held
    assert a.stats()["pending_resolutions"] == 1
    a.observe_refund(refund())
    assert a.stats()["pending_resolutions"] == 0
    prof = a.profiles(query())
    assert prof[0].n_rejected == 1 and prof[2].device_n_bad_buyers == 1
    assert b.profiles(query())[0].n_orders_30d == 0                       # another marketplace
    for bad, field in ((refund("r2", amount=1e9), "amount"), (refund("r3", kind="REFUND-ONLY"), "kind"),
                       (refund("r4", order_id="nope"), "order_id"), (order(amount=11.0), "amount")):
        with pytest.raises(RequestError) as err:
            (a.observe_refund if "refund_id" in bad else a.observe_order)(bad)
        assert err.value.field == field
    with pytest.raises(RequestError, match="is_abuse"):
        a.observe_resolution("r1", T0 + 12 * H, "rejected", "False")
    with pytest.raises(RequestError, match="outcome"):
        a.observe_resolution("r1", T0 + 12 * H, "refunded", True)
    assert a.profiles(query()) == prof
    ttl = client.pttl("mkt-a:{b:b}:o")
    assert 364 * 86_400_000 < ttl <= 395 * 86_400_000                     # expiry by the longest window


def test_one_buyers_keys_share_a_cluster_hash_slot(client) -> None:
    from redis.crc import key_slot

    a = RedisProfileStore(client, prefix="mkt")
    a.observe_order(order())
    a.observe_refund(refund())
    keys = [k.decode() for k in client.keys("mkt:{b:b}*")]
    assert len(keys) >= 4
    assert len({key_slot(k.encode()) for k in keys}) == 1


def _count_pipelines(client, monkeypatch) -> list[int]:
    """Each pipeline executed on ``client`` from now on, as its number of commands."""
    calls: list[int] = []
    real = type(client).pipeline

    def counting(self, *args, **kw):
        pipe = real(self, *args, **kw)
        orig = pipe.execute

        def execute(*a2, **k2):
            calls.append(len(pipe.command_stack))
            return orig(*a2, **k2)

        pipe.execute = execute
        return pipe

    monkeypatch.setattr(type(client), "pipeline", counting)
    return calls


def _sent(client) -> dict[str, int]:
    return {k.removeprefix("cmdstat_"): v["calls"] for k, v in client.info("commandstats").items()}


def test_a_lookup_is_one_round_trip(client, monkeypatch) -> None:
    a = RedisProfileStore(client, prefix="rt")
    a.observe_order(order())
    # b2 shares b's device, b3 shares b2's address: b's cluster has three accounts, two hops away
    a.observe_order(order("o2", buyer_id="b2", address_id="a2", paid_at=T0 - 2 * H))
    a.observe_order(order("o3", buyer_id="b3", device_id="d3", address_id="a2", paid_at=T0 - 2 * H))
    calls = _count_pipelines(client, monkeypatch)
    first = a.profiles(query())             # first use: the server lacks the scripts, they are loaded once
    assert first[2].cluster_n_accounts == 3
    for request in (query(), query(buyer_id="b3", device_id="d3", address_id=None),
                    query(buyer_id="nobody", device_id=None, address_id=None)):
        calls.clear()
        client.config_resetstat()
        got = a.profiles(request)
        # buyer, store, device/address scripts, and the whole cluster search: one pipeline, whatever the cluster
        n = 3 + sum(request.get(f) is not None for f in ("device_id", "address_id"))
        assert calls == [n], request
        sent = _sent(client)
        # nothing else went to the server: no SCRIPT EXISTS round trip before the pipeline (redis-py's
        # Script objects add one), only the EVALSHA calls (and what the scripts run inside the server)
        assert sent.get("evalsha") == n and not any(k.startswith("script") for k in sent), sent
        if request == query():
            assert got == first
    assert a.profiles(query(buyer_id="b3", device_id="d3", address_id=None))[2].cluster_n_accounts == 3


def test_a_lookup_in_a_chain_of_many_hops_is_one_round_trip(client, monkeypatch) -> None:
    """A chain c0 - cd1 - c1 - cd2 - ... of CLUSTER_MAX_ACCOUNTS - 2 buyers: c0's search walks every hop in the
    server; the Redis Cluster path (a round trip per hop) gives the same profiles."""
    import refundguard.online.redis_store as rs
    from tests.test_clusters import _queries
    from refundguard.profiles import request_record

    n = CLUSTER_MAX_ACCOUNTS - 2
    tables = _tables(_long_chain(n), [("r0", "x5", 240, 250, "rejected"), ("r1", f"x{n - 1}", 241, None, None),
                                      ("r2", "x0", 241, None, None)])
    memory = ProfileStore.from_tables(tables, validate_tables=False)
    points = [("c0", BASE + (200 + n) * H), ("c0", BASE + 242 * H), ("c0", BASE + 251 * H),
              (f"c{n - 1}", BASE + 251 * H), ("c7", BASE + 207.5 * H), ("c0", BASE + 24 * 40 * H)]
    q = _queries(points)
    requests = [request_record(q, i) for i in range(len(q))]
    want = [memory.profiles(r) for r in requests]
    assert [w[2].cluster_n_accounts for w in want] == [n, n, n, n, 8, n]
    # r0 and r1 (c0's own r2 is not another member's); r0 rejected at 250 h
    assert (want[1][2].cluster_n_refunds_24h, want[1][2].cluster_n_bad_others, want[2][2].cluster_n_bad_others) \
        == (2, 0, 1)
    store = RedisProfileStore.from_tables(tables, client, prefix="hops", validate_tables=False)
    store.profiles(requests[0])                                   # loads the scripts
    calls = _count_pipelines(client, monkeypatch)
    for r, w in zip(requests, want, strict=True):
        calls.clear()
        assert store.profiles(r) == w
        assert calls == [3]                                       # buyer, store, cluster search: one pipeline
    monkeypatch.setattr(rs, "_is_cluster", lambda c: True)        # the path a RedisCluster client takes
    waves = RedisProfileStore(client, prefix="hops")
    calls.clear()
    assert [waves.profiles(r) for r in requests] == want
    assert len(calls) > 2 * len(requests)                         # a round trip per hop: the test can tell


def test_lookups_survive_a_server_that_lost_its_scripts(client) -> None:
    a = RedisProfileStore(client, prefix="flush")
    a.observe_order(order())
    before = a.profiles(query())
    client.script_flush()                   # a restarted server (or SCRIPT FLUSH) holds no scripts
    assert a.profiles(query()) == before


# --------------------------------------------------------------------------- bulk load (issue 9, part 2)
def _dump(client, prefix: str) -> dict:
    """Every key under ``prefix`` (prefix removed): type, content, and whether it expires."""
    out = {}
    for k in client.scan_iter(match=f"{prefix}:*", count=1000):
        kind = client.type(k).decode()
        value = client.hgetall(k) if kind == "hash" else client.zrange(k, 0, -1)
        out[k.decode()[len(prefix):]] = (kind, value, client.pttl(k) > 0)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_bulk_load_writes_the_keys_event_replay_writes(client, seed: int) -> None:
    tables = random_tables(seed, n_orders=90, n_refunds=60)
    hist = fake_history(tables, seed)
    replayed = RedisProfileStore(client, prefix=f"ev{seed}", store_scores=hist)
    replayed.observe_tables(tables)
    loaded = RedisProfileStore.from_tables(tables, client, prefix=f"bulk{seed}", store_scores=hist,
                                           batch_size=7)      # many small round trips
    want = _dump(client, f"ev{seed}")
    assert len(want) > 100
    assert _dump(client, f"bulk{seed}") == want
    requests = requests_from_tables(tables)
    assert all_profiles(loaded, requests) == all_profiles(replayed, requests)
    # the same events again on the bulk-written keys change nothing (idempotent updates)
    feed(loaded, events(tables))
    assert _dump(client, f"bulk{seed}") == want


def test_bulk_load_equals_memory_store_and_batch_on_every_refund_of_a_simulated_marketplace(client) -> None:
    import refundguard as rg

    tables, _ = rg.validate(rg.simulate(n_buyers=300, n_stores=12, days=120, seed=7))
    hist = fake_history(tables, 7)
    requests = requests_from_tables(tables)
    loaded = RedisProfileStore.from_tables(tables, client, prefix="sim", store_scores=hist)
    assert loaded.stats()["pending_resolutions"] == 0
    memory = ProfileStore.from_tables(tables, store_scores=hist)
    batch = profiles_as_of(tables, requests, store_scores=hist)
    got = all_profiles(loaded, requests)
    assert got == all_profiles(memory, requests)
    assert got == [batch.profile(i) for i in range(len(requests))]


def test_bulk_load_as_of_then_later_events_equals_everything(client) -> None:
    from tests.test_online import _rest_after

    tables = random_tables(5, n_orders=100, n_refunds=60)
    requests = requests_from_tables(tables)
    cut = requests["requested_at"].iloc[len(requests) // 2]
    store = RedisProfileStore.from_tables(tables, client, prefix="asof", as_of=cut)
    early = ProfileStore.from_tables(tables, as_of=cut)
    assert all_profiles(store, requests) == all_profiles(early, requests)
    feed(store, _rest_after(tables, cut))
    assert all_profiles(store, requests) == all_profiles(ProfileStore.from_tables(tables), requests)


def test_bulk_load_through_a_cluster_style_pipeline_writes_the_same_keys(client, monkeypatch) -> None:
    import refundguard.online.redis_store as rs

    tables = random_tables(8, n_orders=60, n_refunds=40)
    RedisProfileStore.from_tables(tables, client, prefix="raw")
    monkeypatch.setattr(rs, "_is_cluster", lambda c: True)        # the path a RedisCluster client takes
    counts = RedisProfileStore(client, prefix="piped").load_tables(tables, batch_size=5)
    assert counts["orders"] == 60 and counts["keys"] == len(_dump(client, "piped"))
    assert _dump(client, "piped") == _dump(client, "raw")


def test_bulk_load_refuses_a_used_prefix_and_reports_server_errors(client) -> None:
    from refundguard.errors import ConfigError, DataError

    tables = random_tables(9, n_orders=40, n_refunds=20)
    store = RedisProfileStore.from_tables(tables, client, prefix="used")
    with pytest.raises(DataError, match="already holds keys"):
        store.load_tables(tables)
    with pytest.raises(ConfigError, match="batch_size"):
        RedisProfileStore(client, prefix="x").load_tables(tables, batch_size=0)
    used = client.info("memory")["used_memory"]
    client.config_set("maxmemory", str(used + 4096))
    client.config_set("maxmemory-policy", "noeviction")
    try:
        with pytest.raises(DataError, match="OOM"):
            RedisProfileStore.from_tables(random_tables(10, n_orders=400, n_refunds=100), client, prefix="full")
    finally:
        client.config_set("maxmemory", "0")
    assert client.ping()                                               # the pool still works after the error
    assert RedisProfileStore(client, prefix="used").profiles(query())[0].n_orders_30d >= 0


# --------------------------------------------------------------------------- identity clusters
def test_redis_store_agrees_on_the_hand_built_graphs(client, tmp_path, monkeypatch) -> None:
    tables = _tables(CHAIN + _hub(CLUSTER_HUB_BUYERS + 2, tie=True) + _long_chain(CLUSTER_MAX_ACCOUNTS + 2),
                     CHAIN_REFUNDS)
    k, m = CLUSTER_HUB_BUYERS, CLUSTER_MAX_ACCOUNTS
    points = [p for p, _ in CHAIN_WANT] + [("hb0", BASE + (100 + k - 0.5) * H), ("hb0", BASE + (100 + k + 0.5) * H),
                                           ("c0", BASE + (200 + m - 0.5) * H), ("c0", BASE + (200 + m + 0.5) * H)]
    want = [w for _, w in CHAIN_WANT] + [(k, 0, 0, 0), (1, 0, 0, 0), (m, 0, 0, 0), (m + 1, None, None, None)]
    _check(tables, points, want, tmp_path, redis_client=client)
    # the path a RedisCluster client takes (the search from Python, a round trip per hop) agrees too
    import refundguard.online.redis_store as rs

    client.flushall()
    monkeypatch.setattr(rs, "_is_cluster", lambda c: True)
    (tmp_path / "piped").mkdir()
    _check(tables, points, want, tmp_path / "piped", redis_client=client)
