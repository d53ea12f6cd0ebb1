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
from tests.test_profiles import fake_history, random_tables

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


def test_a_lookup_is_one_round_trip(client, monkeypatch) -> None:
    a = RedisProfileStore(client, prefix="rt")
    a.observe_order(order())
    calls = []
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
    a.profiles(query())
    assert calls == [3]                     # buyer, store, device scripts in one pipeline
