"""The in-memory ProfileStore: equal to the batch profiles, idempotent, any event order, every contract rule."""

from __future__ import annotations

import math
import sys
import threading

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

from refundguard.errors import RefundGuardWarning, RequestError
from refundguard.online import ProfileStore
from refundguard.profiles import profiles_as_of, request_record, requests_from_tables
from tests.test_profiles import BASE, H, fake_history, random_tables

T0 = BASE


def order(oid: str = "o1", **kw) -> dict:
    base = {"order_id": oid, "buyer_id": "b", "store_id": "s", "category": "c", "amount": 10.0,
            "paid_at": T0, "device_id": "d"}
    base.update(kw)
    return base


def refund(rid: str = "r1", **kw) -> dict:
    base = {"refund_id": rid, "order_id": "o1", "requested_at": T0 + 10 * H, "kind": "refund_only",
            "reason": "not_received", "amount": 10.0}
    base.update(kw)
    return base


def query(**kw) -> dict:
    base = {"requested_at": T0 + 20 * H, "buyer_id": "b", "store_id": "s", "device_id": "d"}
    base.update(kw)
    return base


def events(tables: dict[str, pd.DataFrame]) -> list[tuple[str, dict]]:
    """The tables as a stream of events: orders, refunds (requests only), then resolutions."""
    out = []
    for rec in tables["orders"].to_dict("records"):
        out.append(("order", {k: v for k, v in rec.items() if not _null(v)}))
    for rec in tables["refunds"].to_dict("records"):
        r = {k: rec[k] for k in ("refund_id", "order_id", "requested_at", "kind", "reason", "amount")}
        out.append(("refund", r))
        if not _null(rec["resolved_at"]):
            out.append(("resolution", (rec["refund_id"], rec["resolved_at"], rec["outcome"],
                                       None if _null(rec["is_abuse"]) else bool(rec["is_abuse"]))))
    return out


def _null(v) -> bool:
    return v is None or (not isinstance(v, str) and pd.isna(v))


def feed(store: ProfileStore, stream) -> None:
    for kind, ev in stream:
        if kind == "order":
            store.observe_order(ev)
        elif kind == "refund":
            store.observe_refund(ev)
        else:
            store.observe_resolution(*ev)


def all_profiles(store: ProfileStore, requests: pd.DataFrame) -> list:
    return [store.profiles(request_record(requests, i)) for i in range(len(requests))]


# --------------------------------------------------------------------------- parity
@given(seed=st.integers(0, 2**32 - 1))
@settings(max_examples=20)
def test_profile_store_equals_batch(seed: int) -> None:
    tables = random_tables(seed)
    hist = fake_history(tables, seed)
    requests = requests_from_tables(tables)
    batch = profiles_as_of(tables, requests, store_scores=hist)
    rng = np.random.default_rng(seed)
    shuffled = {"orders": tables["orders"].sample(frac=1.0, random_state=rng),
                "refunds": tables["refunds"].sample(frac=1.0, random_state=rng),
                "reviews": tables["reviews"]}
    store = ProfileStore(store_scores=hist)
    store.observe_tables(shuffled)               # events in any order
    for i in range(len(requests)):
        assert store.profiles(request_record(requests, i)) == batch.profile(i), i


@given(seed=st.integers(0, 2**32 - 1))
@settings(max_examples=20)
def test_duplicated_and_out_of_order_streams_give_the_clean_profiles(seed: int) -> None:
    """Resolutions before their refunds, every event twice, orders in any order: the clean stream's profiles."""
    tables = random_tables(seed)
    hist = fake_history(tables, seed)
    requests = requests_from_tables(tables)
    clean = ProfileStore(store_scores=hist)
    stream = events(tables)
    feed(clean, stream)
    rng = np.random.default_rng(seed)
    orders = [e for e in stream if e[0] == "order"]
    rest = [e for e in stream if e[0] != "order"]
    messy = orders + orders[: len(orders) // 2]
    rng.shuffle(messy)
    later = rest + rest
    rng.shuffle(later)                            # resolutions before their refund, duplicates
    store = ProfileStore(store_scores=hist)
    with np.errstate(all="ignore"):
        feed(store, messy + later)
    assert store.stats()["pending_resolutions"] == 0
    assert store.stats()["orders"] == clean.stats()["orders"]
    assert all_profiles(store, requests) == all_profiles(clean, requests)
    batch = profiles_as_of(tables, requests, store_scores=hist)
    assert all_profiles(store, requests) == [batch.profile(i) for i in range(len(requests))]


# --------------------------------------------------------------------------- events
def test_profile_store_updates_and_errors() -> None:
    store = ProfileStore()
    store.observe_order(order())
    store.observe_refund(refund())
    b, s, lk = store.profiles(query())
    assert b.n_refunds_1d == 1 and b.n_not_received_on_delivered == 0
    assert s.score_missing and s.provisional and lk.device_n_refunds_24h == 1
    # shipping and delivery learned later, both before the claim: the claim now counts
    store.observe_order({"order_id": "o1", "shipped_at": T0 + 2 * H})
    store.observe_order({"order_id": "o1", "delivered_at": T0 + 5 * H})
    store.observe_resolution("r1", T0 + 15 * H, "rejected", is_abuse=True)
    b, _, lk = store.profiles(query())
    assert b.n_not_received_on_delivered == 1 and b.n_rejected == 1 and b.n_abuse == 1
    assert lk.device_n_bad_buyers == 1
    b_early, _, lk_early = store.profiles(query(requested_at=T0 + 15 * H))  # resolution not before t
    assert b_early.n_rejected == 0 and lk_early.device_n_bad_buyers == 0
    with pytest.raises(RequestError, match="order_id"):
        store.observe_refund(refund("r2", order_id="nope"))
    with pytest.raises(RequestError, match="outcome"):
        store.observe_resolution("r1", T0 + 15 * H, "maybe")
    with pytest.raises(RequestError, match="paid_at"):
        store.observe_order(order("o9", paid_at="01/06/2024"))
    with pytest.raises(RequestError, match="buyer_id"):
        store.profiles({"requested_at": T0, "store_id": "s"})


def test_the_same_event_twice_counts_once() -> None:
    store = ProfileStore()
    for _ in range(3):
        store.observe_order(order())
        store.observe_order(order("o2", paid_at=T0 + H, amount=5.0))
        store.observe_refund(refund(amount=4.0))
        store.observe_resolution("r1", T0 + 12 * H, "rejected", False)
    b, s, lk = store.profiles(query())
    assert (b.n_orders_30d, b.spend_30d, b.n_refunds_30d, b.n_rejected) == (2, 15.0, 1, 1)
    assert (s.n_orders_30d, s.n_refunds_30d, lk.device_n_buyers, lk.device_n_bad_buyers) == (2, 1, 1, 1)
    assert store.stats()["orders"] == 2 and store.stats()["refunds"] == 1
    # a second sighting with other values is an error, never silently ignored
    with pytest.raises(RequestError, match="amount") as e:
        store.observe_order(order(amount=11.0))
    assert e.value.field == "amount"
    with pytest.raises(RequestError, match="requested_at"):
        store.observe_refund(refund(amount=4.0, requested_at=T0 + 11 * H))
    with pytest.raises(RequestError, match="outcome"):
        store.observe_resolution("r1", T0 + 12 * H, "refunded", False)
    with pytest.raises(RequestError, match="delivered_at"):
        store.observe_order({"order_id": "o1", "shipped_at": T0 + H, "delivered_at": T0 + 2 * H})
        store.observe_order({"order_id": "o1", "delivered_at": T0 + 3 * H})


def test_a_resolution_before_its_refund_is_held_and_counted() -> None:
    store = ProfileStore()
    store.observe_order(order())
    store.observe_resolution("r1", T0 + 12 * H, "rejected", True)
    store.observe_resolution("r1", T0 + 12 * H, "rejected", True)        # held once
    assert store.stats()["pending_resolutions"] == 1
    assert store.profiles(query())[0].n_rejected == 0
    store.observe_refund(refund())
    assert store.stats()["pending_resolutions"] == 0
    b, _, lk = store.profiles(query())
    assert b.n_rejected == 1 and b.n_abuse == 1 and lk.device_n_bad_buyers == 1
    # a held resolution that turns out to be before its request is dropped, with a warning
    store.observe_order(order("o2", buyer_id="b2"))
    store.observe_resolution("r2", T0 + H, "rejected", None)
    with pytest.warns(RefundGuardWarning, match="dropped"):
        store.observe_refund(refund("r2", order_id="o2", requested_at=T0 + 5 * H))
    assert store.stats()["dropped_resolutions"] == 1
    assert store.profiles(query(buyer_id="b2"))[0].n_rejected == 0


@pytest.mark.parametrize(("method", "event", "field"), [
    ("order", order(category=None), "category"),
    ("order", order(amount=-1.0), "amount"),
    ("order", order(amount=float("nan")), "amount"),
    ("order", order(amount=float("inf")), "amount"),
    ("order", order(amount=True), "amount"),
    ("order", order(amount="10.0"), "amount"),
    ("order", order(amount=1e307), "amount"),
    ("order", order(order_id=" o1"), "order_id"),
    ("order", order(order_id=""), "order_id"),
    ("order", order(buyer_id=7), "buyer_id"),
    ("order", order(shipped_at=T0 - H), "shipped_at"),
    ("order", order(ship_by=T0 - H), "ship_by"),
    ("order", order(shipped_at=T0 + 5 * H, delivered_at=T0 + 4 * H), "delivered_at"),
    ("order", order(delivered_at=T0 + 4 * H), "delivered_at"),
    ("order", order(paid_at="now"), "paid_at"),
    ("order", None, None),
    ("order", [1, 2], None),
    ("refund", refund(kind="REFUND-ONLY"), "kind"),
    ("refund", refund(reason="fraud"), "reason"),
    ("refund", refund(requested_at=T0 - H), "requested_at"),
    ("refund", refund(amount=1e9), "amount"),
    ("refund", refund(amount=10.02), "amount"),
    ("refund", refund(amount=0.0), "amount"),
    ("refund", refund(resolved_at=T0 + 9 * H, outcome="refunded"), "resolved_at"),
    ("refund", refund(resolved_at=T0 + 19 * H), "outcome"),
    ("refund", refund(outcome="refunded"), "outcome"),
    ("refund", refund(resolved_at=T0 + 19 * H, outcome="rejected", is_abuse="False"), "is_abuse"),
    ("refund", "r1", None),
    ("resolution", ("r0", T0 + 9 * H, "rejected", None), "resolved_at"),
    ("resolution", ("r0", T0 + 19 * H, "rejected", "False"), "is_abuse"),
    ("resolution", ("r0", T0 + 19 * H, "rejected", 0), "is_abuse"),
    ("resolution", ("r0", T0 + 19 * H, "fraud", None), "outcome"),
    ("resolution", ("r0", None, "rejected", None), "resolved_at"),
    ("resolution", (None, T0 + 19 * H, "rejected", None), "refund_id"),
])
def test_every_contract_rule_is_checked_on_events(method: str, event, field) -> None:
    """Issue 12, case 3: odd events are refused with a RequestError naming the field, and change nothing."""
    store = ProfileStore()
    store.observe_order(order("o0", amount=50.0))
    store.observe_refund(refund("r0", order_id="o0", amount=1.0))
    store.observe_order(order())
    before = store.profiles(query())
    with pytest.raises(RequestError) as err:
        if method == "order":
            store.observe_order(event)
        elif method == "refund":
            store.observe_refund(event)
        else:
            store.observe_resolution(*event)
    assert err.value.field == field, err.value
    if field is not None:
        assert field in str(err.value)
    assert store.profiles(query()) == before
    assert store.stats()["refunds"] == 1


def test_refund_sum_counts_every_refund_of_the_order() -> None:
    store = ProfileStore()
    store.observe_order(order(amount=50.0))
    store.observe_refund(refund("r1", amount=30.0))
    store.observe_refund(refund("r2", amount=20.005))                   # 50.005 <= 50.01
    with pytest.raises(RequestError, match="amount"):
        store.observe_refund(refund("r3", amount=0.01))
    assert store.stats()["refunds"] == 2


def test_is_abuse_false_text_never_counts_as_abuse() -> None:
    store = ProfileStore()
    store.observe_order(order())
    store.observe_refund(refund())
    with pytest.raises(RequestError, match="is_abuse"):
        store.observe_resolution("r1", T0 + 12 * H, "refunded", is_abuse="False")
    store.observe_resolution("r1", T0 + 12 * H, "refunded", is_abuse=np.bool_(False))
    assert store.profiles(query())[0].n_abuse == 0


# --------------------------------------------------------------------------- threads
def test_the_same_new_order_observed_by_threads_at_once_counts_once() -> None:
    """observe_order checks and inserts in one lock section (two threads once counted it twice)."""
    store = ProfileStore()
    n_orders, n_threads = 300, 8
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: the race shows at once
    try:
        for k in range(n_orders):
            ev = order(f"o{k}", buyer_id="b1", store_id="s1", paid_at=T0 + pd.Timedelta(minutes=k),
                       device_id="d1")
            barrier = threading.Barrier(n_threads)

            def observe(ev=ev, barrier=barrier) -> None:
                barrier.wait()
                store.observe_order(ev)

            threads = [threading.Thread(target=observe) for _ in range(n_threads)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
    finally:
        sys.setswitchinterval(old)
    b, s, lk = store.profiles({"requested_at": T0 + pd.Timedelta(days=1), "buyer_id": "b1",
                               "store_id": "s1", "device_id": "d1"})
    assert b.n_orders_30d == n_orders
    assert b.spend_30d == 10.0 * n_orders
    assert s.n_orders_30d == n_orders
    assert lk.device_n_buyers == 1


def test_lookups_and_events_from_threads_agree_with_one_thread() -> None:
    tables = random_tables(3, n_orders=200, n_refunds=80)
    requests = requests_from_tables(tables)
    one = ProfileStore()
    feed(one, events(tables))
    shared = ProfileStore()
    stream = events(tables)
    chunks = [stream[i::4] for i in range(4)]
    orders = [e for e in stream if e[0] == "order"]
    feed(shared, orders)
    errors: list[BaseException] = []

    def work(chunk) -> None:
        try:
            feed(shared, [e for e in chunk if e[0] != "order"])
            for i in range(len(requests)):
                shared.profiles(request_record(requests, i))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(c,)) for c in chunks]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert all_profiles(shared, requests) == all_profiles(one, requests)
    assert not math.isnan(len(requests))


# --------------------------------------------------------------------------- warm start, snapshots, expiry
@given(seed=st.integers(0, 2**32 - 1))
@settings(max_examples=20)
def test_from_tables_equals_the_same_events_fed_one_by_one(seed: int) -> None:
    tables = random_tables(seed)
    hist = fake_history(tables, seed)
    requests = requests_from_tables(tables)
    fed = ProfileStore(store_scores=hist)
    feed(fed, events(tables))
    warm = ProfileStore.from_tables(tables, store_scores=hist, validate_tables=False)
    assert all_profiles(warm, requests) == all_profiles(fed, requests)
    a, b = fed.stats(), warm.stats()
    a.pop("bytes"), b.pop("bytes")
    assert a == b


def _rest_after(tables: dict[str, pd.DataFrame], cut: pd.Timestamp) -> list[tuple[str, dict]]:
    """The events a service started at ``cut`` still receives: each at its own known-at time."""
    out = []
    for rec in tables["orders"].to_dict("records"):
        rec = {k: v for k, v in rec.items() if not _null(v)}
        if rec["paid_at"] >= cut:
            out.append((rec["paid_at"], "order", rec))
            continue
        for name in ("shipped_at", "delivered_at"):
            if name in rec and rec[name] >= cut:
                out.append((rec[name], "order", {"order_id": rec["order_id"], name: rec[name],
                                                  **({"shipped_at": rec["shipped_at"]} if name == "delivered_at"
                                                     else {})}))
    for rec in tables["refunds"].to_dict("records"):
        r = {k: rec[k] for k in ("refund_id", "order_id", "requested_at", "kind", "reason", "amount")}
        if rec["requested_at"] >= cut:
            out.append((rec["requested_at"], "refund", r))
        if not _null(rec["resolved_at"]) and rec["resolved_at"] >= cut:
            out.append((rec["resolved_at"], "resolution", (rec["refund_id"], rec["resolved_at"], rec["outcome"],
                                                           None if _null(rec["is_abuse"]) else bool(rec["is_abuse"]))))
    out.sort(key=lambda e: (e[0], ("order", "refund", "resolution").index(e[1])))
    return [(k, ev) for _, k, ev in out]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_from_tables_as_of_then_the_later_events_equals_everything(seed: int) -> None:
    tables = random_tables(seed, n_orders=80, n_refunds=50)
    requests = requests_from_tables(tables)
    cut = requests["requested_at"].iloc[len(requests) // 2]
    full = ProfileStore.from_tables(tables, validate_tables=False)
    started = ProfileStore.from_tables(tables, as_of=cut, validate_tables=False)
    assert started.stats()["orders"] < full.stats()["orders"]
    feed(started, _rest_after(tables, cut))
    assert all_profiles(started, requests) == all_profiles(full, requests)


def test_from_tables_validates_raw_tables() -> None:
    tables = random_tables(4)
    raw = {k: v.astype({c: object for c in v.columns if str(v[c].dtype) == "str"}) for k, v in tables.items()}
    raw["refunds"] = raw["refunds"].astype({"is_abuse": object})
    raw["refunds"].loc[0, "is_abuse"] = "False"
    store = ProfileStore.from_tables(raw)
    requests = requests_from_tables(tables)
    assert all_profiles(store, requests) == all_profiles(ProfileStore.from_tables(tables), requests)
    bad = dict(tables)
    bad["refunds"] = tables["refunds"].assign(kind="REFUND-ONLY")
    with pytest.raises(Exception, match="kind"):
        ProfileStore.from_tables(bad)


def test_snapshot_round_trip_is_exact_verified_and_atomic(tmp_path) -> None:
    from refundguard.errors import DataError
    from refundguard.online.snapshot import snapshot_sha256

    tables = random_tables(8)
    hist = fake_history(tables, 8)
    requests = requests_from_tables(tables)
    store = ProfileStore.from_tables(tables, store_scores=hist, validate_tables=False)
    store.observe_resolution("r-later", T0 + 5000 * H, "rejected", True)     # a held resolution
    path = store.save(tmp_path / "snap")
    store.save(tmp_path / "snap")                                           # replaced in one rename
    assert sorted(p.name for p in tmp_path.iterdir()) == ["snap"]
    again = ProfileStore.load(path, expected_sha256=snapshot_sha256(path))
    assert all_profiles(again, requests) == all_profiles(store, requests)
    assert again.stats()["pending_resolutions"] == 1
    # the restored store goes on taking events like the original
    for s in (store, again):
        s.observe_order(order("o-new", buyer_id="b0", paid_at=T0 + 3000 * H))
    assert all_profiles(again, requests) == all_profiles(store, requests)
    with pytest.raises(DataError, match="expected sha256"):
        ProfileStore.load(path, expected_sha256="0" * 64)
    data = (path / "buyers.parquet").read_bytes()
    (path / "buyers.parquet").write_bytes(data[:-9] + bytes([data[-9] ^ 1]) + data[-8:])
    with pytest.raises(DataError, match="buyers.parquet"):
        ProfileStore.load(path)
    (path / "extra.txt").write_text("x")
    with pytest.raises(DataError, match="files"):
        ProfileStore.load(path)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("keep me")
    with pytest.raises(DataError, match="not a ProfileStore snapshot"):
        store.save(tmp_path / "notes")
    assert (tmp_path / "notes" / "a.txt").read_text() == "keep me"


def test_expire_keeps_every_later_request_exact_and_refuses_earlier_ones() -> None:
    tables = random_tables(9, n_orders=120, n_refunds=60)
    requests = requests_from_tables(tables)
    full = ProfileStore.from_tables(tables, validate_tables=False)
    before = requests["requested_at"].iloc[len(requests) // 2]
    store = ProfileStore.from_tables(tables, validate_tables=False)
    dropped = store.expire(before)
    assert dropped > 0 and store.stats()["block_values"] < full.stats()["block_values"]
    later = requests[requests["requested_at"] >= before].reset_index(drop=True)
    assert all_profiles(store, later) == all_profiles(full, later)
    with pytest.raises(RequestError, match="requested_at"):
        store.profiles(request_record(requests, 0))
    assert store.expire(before - pd.Timedelta(days=30)) == 0            # the floor never goes back


def test_horizon_expires_on_ingest() -> None:
    tables = random_tables(10, n_orders=150, n_refunds=60)
    stream = events(tables)
    stream.sort(key=lambda e: e[1]["paid_at"] if e[0] == "order" else
                (e[1]["requested_at"] if e[0] == "refund" else e[1][1]))
    plain, bounded = ProfileStore(), ProfileStore(horizon_days=120)
    requests = requests_from_tables(tables)
    for kind, ev in stream:
        feed(plain, [(kind, ev)])
        feed(bounded, [(kind, ev)])
    assert bounded.stats()["floor"] is not None
    floor = pd.Timestamp(bounded.stats()["floor"], tz="UTC")
    assert bounded.stats()["block_values"] < plain.stats()["block_values"]
    later = requests[requests["requested_at"] >= floor].reset_index(drop=True)
    assert len(later) >= 3
    assert all_profiles(bounded, later) == all_profiles(plain, later)


# --------------------------------------------------------------------------- columnar state (issue 9, part 2)
def _sim(seed: int = 5, n_buyers: int = 300, days: int = 120) -> dict[str, pd.DataFrame]:
    import refundguard as rg

    tables, _ = rg.validate(rg.simulate(n_buyers=n_buyers, n_stores=12, days=days, seed=seed))
    return tables


def test_warm_start_equals_event_replay_and_batch_on_every_refund_of_a_simulated_marketplace() -> None:
    tables = _sim()
    requests = requests_from_tables(tables)
    assert len(requests) == len(tables["refunds"]) > 100
    hist = fake_history(tables, 5)
    batch = profiles_as_of(tables, requests, store_scores=hist)
    warm = ProfileStore.from_tables(tables, store_scores=hist, validate_tables=False)
    fed = ProfileStore(store_scores=hist)
    feed(fed, events(tables))
    want = [batch.profile(i) for i in range(len(requests))]
    assert all_profiles(warm, requests) == want
    assert all_profiles(fed, requests) == want
    a, b = warm.stats(), fed.stats()
    a.pop("bytes"), b.pop("bytes")
    assert a == b
    # the warm store keeps its keys in one shared buffer per kind: no key is a live copy yet
    assert not warm._buyers.live and warm._buyers.n_base == a["buyers"]


def test_from_tables_never_writes_the_callers_frames() -> None:
    tables = _sim(6, n_buyers=120)
    before = {k: v.copy(deep=True) for k, v in tables.items()}
    cut = tables["orders"]["paid_at"].max() - pd.Timedelta(days=20)
    ProfileStore.from_tables(tables, as_of=cut, validate_tables=False)
    for k, v in tables.items():
        pd.testing.assert_frame_equal(v, before[k])


def test_from_tables_refuses_refunds_of_unknown_orders_when_not_validated() -> None:
    from refundguard.errors import DataError

    tables = random_tables(11)
    bad = dict(tables)
    bad["refunds"] = tables["refunds"].assign(order_id="o-missing")
    with pytest.raises(DataError, match="o-missing"):
        ProfileStore.from_tables(bad, validate_tables=False)


@pytest.mark.parametrize("seed", [21, 22])
def test_a_warm_store_takes_duplicated_and_out_of_order_later_events(seed: int) -> None:
    """Warm start at a cut, then the later events shuffled, each twice, with replays of earlier ones."""
    tables = random_tables(seed, n_orders=120, n_refunds=70)
    requests = requests_from_tables(tables)
    cut = requests["requested_at"].iloc[len(requests) // 2]
    full = ProfileStore.from_tables(tables, validate_tables=False)
    warm = ProfileStore.from_tables(tables, as_of=cut, validate_tables=False)
    later = _rest_after(tables, cut)
    rng = np.random.default_rng(seed)
    orders = [e for e in later if e[0] == "order" and "buyer_id" in e[1]]
    rest = [e for e in later if not (e[0] == "order" and "buyer_id" in e[1])]
    replays = [e for e in events(tables)[: len(orders)] if e[0] == "order" and e[1]["paid_at"] < cut]
    rng.shuffle(orders)
    messy = rest + rest
    rng.shuffle(messy)
    with np.errstate(all="ignore"):
        feed(warm, orders + replays + orders[: len(orders) // 2] + messy)
    assert warm.stats()["pending_resolutions"] == 0
    assert warm._buyers.live and warm._buyers.n_base > 0            # some keys copied, some still shared
    assert all_profiles(warm, requests) == all_profiles(full, requests)
    a, b = warm.stats(), full.stats()
    assert (a["orders"], a["refunds"], a["block_values"]) == (b["orders"], b["refunds"], b["block_values"])


def test_snapshot_of_a_warm_started_store_with_later_events(tmp_path) -> None:
    tables = random_tables(23, n_orders=150, n_refunds=80)
    hist = fake_history(tables, 23)
    requests = requests_from_tables(tables)
    cut = requests["requested_at"].iloc[len(requests) // 3]
    store = ProfileStore.from_tables(tables, as_of=cut, store_scores=hist, validate_tables=False)
    plain = ProfileStore.load(store.save(tmp_path / "warm"))                  # the shared buffers, as they are
    assert all_profiles(plain, requests) == all_profiles(store, requests)
    feed(store, _rest_after(tables, cut)[:60])                               # live copies and new keys
    assert store._buyers.live
    again = ProfileStore.load(store.save(tmp_path / "mixed"))
    assert not again._buyers.live                                             # loaded into one buffer per kind
    assert all_profiles(again, requests) == all_profiles(store, requests)
    a, b = again.stats(), store.stats()
    a.pop("bytes"), b.pop("bytes")
    assert a == b
    for s in (store, again):
        feed(s, _rest_after(tables, cut)[60:])
    assert all_profiles(again, requests) == all_profiles(store, requests)
    everything = ProfileStore.from_tables(tables, store_scores=hist, validate_tables=False)
    assert all_profiles(store, requests) == all_profiles(everything, requests)


def _long_tables(seed: int) -> dict[str, pd.DataFrame]:
    """Random tables over ~500 days, so that rows older than a floor minus 365 days exist."""
    return random_tables(seed, n_orders=260, n_refunds=120)


@given(seed=st.integers(0, 2**32 - 1), share=st.floats(0.55, 0.95), warm=st.booleans())
@settings(max_examples=20, deadline=None)
def test_expire_keeps_every_request_from_before_on_and_drops_rows_and_memory(seed: int, share: float,
                                                                            warm: bool) -> None:
    """After expire(before): profiles of requests at or after ``before`` (so also at or after ``before +
    365 days``) are unchanged, less is held, and a replay of every event changes nothing."""
    tables = _long_tables(seed)
    requests = requests_from_tables(tables)
    span = tables["orders"]["paid_at"]
    before = span.min() + (span.max() - span.min()) * share
    full = ProfileStore.from_tables(tables, validate_tables=False)
    if warm:
        store = ProfileStore.from_tables(tables, validate_tables=False)
    else:
        store = ProfileStore()
        feed(store, events(tables))
    later = requests[requests["requested_at"] >= before].reset_index(drop=True)
    want = all_profiles(full, later)
    held = store.stats()
    store.expire(before)
    after = store.stats()
    assert all_profiles(store, later) == want
    far = later[later["requested_at"] >= before + pd.Timedelta(days=365)].reset_index(drop=True)
    assert all_profiles(store, far) == all_profiles(full, far)
    assert after["block_values"] <= held["block_values"] and after["orders"] <= held["orders"]
    old = before - pd.Timedelta(days=365)
    o = tables["orders"]
    # rows whose every event is older than before - 365 days go (unless a refund of them is still open)
    r = tables["refunds"]
    last_refund = r.groupby("order_id")[["requested_at", "resolved_at"]].max().max(axis=1)
    open_refund = set(r.loc[r["resolved_at"].isna(), "order_id"])
    last = pd.concat([o.set_index("order_id")[["paid_at", "shipped_at", "delivered_at"]].max(axis=1),
                      last_refund], axis=1).max(axis=1)
    unclaimed = set(r.loc[(r["reason"] == "not_received"), "order_id"]) & set(o.loc[o["delivered_at"].isna(),
                                                                                   "order_id"])
    expect_gone = {oid for oid, t in last.items() if t < old and oid not in open_refund and oid not in unclaimed}
    assert after["orders"] == held["orders"] - len(expect_gone)
    if expect_gone:
        assert after["bytes"] < held["bytes"]
    # replaying everything (at-least-once delivery, a consumer rewound) is ignored where it was expired
    with np.errstate(all="ignore"):
        feed(store, events(tables))
    assert all_profiles(store, later) == want
    assert store.stats()["orders"] == after["orders"]
    assert store.stats()["ignored_events"] >= len(expect_gone)


def test_expire_drops_rows_and_refuses_new_refunds_of_dropped_orders() -> None:
    store = ProfileStore()
    store.observe_order(order("o1", shipped_at=T0 + H, delivered_at=T0 + 2 * H))
    store.observe_refund(refund("r1", requested_at=T0 + 3 * H, resolved_at=T0 + 4 * H, outcome="rejected"))
    store.observe_order(order("o2", paid_at=T0 + H))
    store.observe_refund(refund("r2", order_id="o2", requested_at=T0 + 3 * H, amount=1.0))   # still open
    store.observe_order(order("o3", paid_at=T0 + 500 * 24 * H))
    q = query(requested_at=T0 + 600 * 24 * H)
    want = store.profiles(q)
    assert store.stats()["orders"] == 3
    store.expire(T0 + 400 * 24 * H)                  # old = T0 + 35 days
    s = store.stats()
    assert (s["orders"], s["refunds"]) == (2, 1)      # o1 and r1 went; o2 stays (r2 may still be resolved)
    assert store.profiles(q) == want
    assert store.profiles(q)[0].n_rejected == 1       # all-time facts stay in the blocks
    store.observe_order(order("o1", shipped_at=T0 + H, delivered_at=T0 + 2 * H))            # replay: ignored
    store.observe_refund(refund("r1", requested_at=T0 + 3 * H, resolved_at=T0 + 4 * H, outcome="rejected"))
    store.observe_resolution("r1", T0 + 4 * H, "rejected")
    assert store.stats()["ignored_events"] == 3 and store.profiles(q) == want
    with pytest.raises(RequestError, match="expired") as err:
        store.observe_refund(refund("r9", order_id="o1", requested_at=T0 + 450 * 24 * H, amount=1.0))
    assert err.value.field == "order_id"
    store.observe_resolution("r2", T0 + 450 * 24 * H, "rejected")                            # o2 was kept for this
    assert store.profiles(q)[0].n_rejected == 2


def test_horizon_on_ingest_drops_rows_too() -> None:
    tables = _long_tables(12)
    stream = events(tables)
    stream.sort(key=lambda e: e[1]["paid_at"] if e[0] == "order" else
                (e[1]["requested_at"] if e[0] == "refund" else e[1][1]))
    plain, bounded = ProfileStore(), ProfileStore(horizon_days=90)
    for kind, ev in stream:
        feed(plain, [(kind, ev)])
        feed(bounded, [(kind, ev)])
    floor = pd.Timestamp(bounded.stats()["floor"], tz="UTC")
    assert bounded.stats()["orders"] < plain.stats()["orders"]
    requests = requests_from_tables(tables)
    later = requests[requests["requested_at"] >= floor].reset_index(drop=True)
    assert len(later) >= 3
    assert all_profiles(bounded, later) == all_profiles(plain, later)


def test_shared_buffers_are_rebuilt_once_half_is_superseded(monkeypatch) -> None:
    import refundguard.online.memory as memory

    monkeypatch.setattr(memory, "_MIN_DEAD", 0)
    tables = random_tables(24, n_orders=200, n_refunds=90)
    requests = requests_from_tables(tables)
    cut = requests["requested_at"].iloc[len(requests) // 4]
    full = ProfileStore.from_tables(tables, validate_tables=False)
    store = ProfileStore.from_tables(tables, as_of=cut, validate_tables=False)
    n0 = len(store._buyers.base_np)
    shrunk = False
    for e in _rest_after(tables, cut):
        feed(store, [e])
        k = store._buyers
        assert k.dead <= memory._DEAD_SHARE * len(k.base_np) or k.dead == 0
        shrunk |= len(k.base_np) < n0
    assert shrunk
    assert all_profiles(store, requests) == all_profiles(full, requests)


def test_expire_runs_while_events_and_lookups_go_on() -> None:
    """expire() rebuilds the shared buffers outside the lock: events and lookups meanwhile stay exact."""
    tables = _long_tables(25)
    requests = requests_from_tables(tables)
    span = tables["orders"]["paid_at"]
    before = span.min() + (span.max() - span.min()) * 0.6
    cut = before + pd.Timedelta(days=1)
    later_events = _rest_after(tables, cut)
    full = ProfileStore.from_tables(tables, validate_tables=False)
    store = ProfileStore.from_tables(tables, as_of=cut, validate_tables=False)
    later = requests[requests["requested_at"] >= before].reset_index(drop=True)
    errors: list[BaseException] = []
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)

    def run(fn) -> None:
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    try:
        threads = [threading.Thread(target=run, args=(lambda: [store.expire(before) for _ in range(5)],)),
                   threading.Thread(target=run, args=(lambda: feed(store, later_events),)),
                   threading.Thread(target=run, args=(lambda: all_profiles(store, later),))]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    finally:
        sys.setswitchinterval(old)
    assert not errors, errors
    assert all_profiles(store, later) == all_profiles(full, later)


@given(ids=st.lists(st.text(min_size=0, max_size=30), unique=True, max_size=300),
       probes=st.lists(st.text(max_size=30), max_size=50))
@settings(max_examples=60, deadline=None)
def test_id_index_is_an_exact_map(ids: list[str], probes: list[str]) -> None:
    import pyarrow as pa

    from refundguard.online._ids import IdIndex

    half = len(ids) // 2
    ix = IdIndex.from_arrow(pa.array(ids[:half], type=pa.string()))
    for k in ids[half:]:
        ix.add(k)                                                    # events after a bulk build
    want = {k: i for i, k in enumerate(ids)}
    assert [ix.get(k) for k in ids] == list(range(len(ids)))
    assert [ix.key(i) for i in range(len(ids))] == ids
    asked = probes + ids[::3] + [None]
    got = ix.find(pa.array(asked, type=pa.large_string()))
    assert got.tolist() == [want.get(k, -1) if k is not None else -1 for k in asked]
    assert [ix.get(k) for k in probes] == [want.get(k, -1) for k in probes]
    rows = np.arange(len(ids))[::2]
    sub = ix.take(rows)
    assert [sub.get(k) for k in ids] == [i // 2 if i % 2 == 0 else -1 for i in range(len(ids))]


def test_rows_written_while_expire_plans_are_kept(monkeypatch) -> None:
    """expire() plans the rows without the lock: events meanwhile (a refund or a delivery that needs an order
    the plan dropped, a resolution, new orders) are carried over exactly."""
    import refundguard.online.memory as memory

    day = 24 * H

    def build() -> ProfileStore:
        s = ProfileStore()
        s.observe_order(order("o1", shipped_at=T0 + H, delivered_at=T0 + 2 * H, amount=50.0))
        s.observe_refund(refund("r1", requested_at=T0 + 3 * H, resolved_at=T0 + 4 * H, outcome="rejected",
                                amount=5.0))
        s.observe_order(order("o2", paid_at=T0 + H, shipped_at=T0 + 2 * H))                 # not delivered yet
        s.observe_order(order("o3", paid_at=T0 + 2 * H, buyer_id="b3"))
        s.observe_refund(refund("r3", order_id="o3", requested_at=T0 + 3 * H))               # still open
        s.observe_order(order("o4", paid_at=T0 + 3 * H, buyer_id="b4", device_id="d4"))     # goes for good
        s.observe_order(order("o5", paid_at=T0 + 500 * day))
        return s

    meanwhile = [
        ("refund", refund("r1b", order_id="o1", requested_at=T0 + 450 * day, amount=5.0)),
        ("order", {"order_id": "o2", "shipped_at": T0 + 2 * H, "delivered_at": T0 + 420 * day}),
        ("resolution", ("r3", T0 + 5 * H, "rejected", True)),
        ("order", order("o6", paid_at=T0 + 460 * day, buyer_id="b3")),
        ("refund", refund("r6", order_id="o6", requested_at=T0 + 461 * day, reason="quality")),
        ("refund", refund("r5", order_id="o5", requested_at=T0 + 501 * day)),
    ]
    real = memory.plan_rows
    store = build()

    def plan_then_events(*args, **kw):
        plan = real(*args, **kw)
        feed(store, meanwhile)                     # the lock is free while the plan is made
        return plan

    monkeypatch.setattr(memory, "plan_rows", plan_then_events)
    before = T0 + 400 * day                        # old = T0 + 35 days: o1..o4 could go
    store.expire(before)
    monkeypatch.setattr(memory, "plan_rows", real)
    reference = build()
    feed(reference, meanwhile)
    reference.expire(before)
    queries = [query(requested_at=T0 + d * day, buyer_id=b) for d in (401, 455, 470, 510) for b in ("b", "b3", "b4")]
    assert [store.profiles(q) for q in queries] == [reference.profiles(q) for q in queries]
    held = {store._orders.ids.key(i) for i in range(store.stats()["orders"])}
    assert held >= {"o1", "o2", "o5", "o6"} and "o4" not in held
    assert {reference._orders.ids.key(i) for i in range(reference.stats()["orders"])} <= held
    # every row carried over is whole: the same events again change nothing, later ones still apply
    feed(store, meanwhile)
    assert [store.profiles(q) for q in queries] == [reference.profiles(q) for q in queries]
    store.observe_resolution("r1b", T0 + 452 * day, "rejected")
    reference.observe_resolution("r1b", T0 + 452 * day, "rejected")
    with pytest.raises(RequestError, match="amount"):
        store.observe_refund(refund("r1c", order_id="o1", requested_at=T0 + 453 * day, amount=45.0))
    assert [store.profiles(q) for q in queries] == [reference.profiles(q) for q in queries]
