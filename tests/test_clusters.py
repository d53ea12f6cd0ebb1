"""Identity clusters on a hand-built graph: joins at known times, ties, the hub and size caps, late events;
batch (profiles_as_of), the in-memory ProfileStore (events in any order, snapshot) and Redis agree."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pandas as pd
from hypothesis import given, settings, strategies as st

from refundguard.clusters import CLUSTER_FIELDS, CLUSTER_HUB_BUYERS, CLUSTER_MAX_ACCOUNTS, ClusterGraph, cluster_columns
from refundguard.online import ProfileStore
from refundguard.profiles import profiles_as_of, request_record, requests_from_tables
from tests.test_online import events, feed
from tests.test_profiles import BASE, H, canon, random_tables, reference_cluster

NS = pd.Timedelta(1, "ns")


def _tables(orders: list[tuple], refunds: list[tuple] = ()) -> dict[str, pd.DataFrame]:
    """``orders``: (order_id, buyer, paid hour, device, address); ``refunds``: (refund_id, order_id, requested
    hour, resolved hour or None, outcome or None)."""
    o = pd.DataFrame({
        "order_id": [x[0] for x in orders], "buyer_id": [x[1] for x in orders], "store_id": "s", "category": "c",
        "amount": 10.0, "paid_at": [BASE + x[2] * H for x in orders],
        "ship_by": [BASE + (x[2] + 48) * H for x in orders], "shipped_at": pd.NaT, "delivered_at": pd.NaT,
        "device_id": [x[3] for x in orders], "address_id": [x[4] for x in orders],
    })
    r = pd.DataFrame({
        "refund_id": [x[0] for x in refunds], "order_id": [x[1] for x in refunds],
        "requested_at": pd.to_datetime([BASE + x[2] * H for x in refunds], utc=True),
        "kind": "refund_only", "reason": "quality", "amount": 5.0,
        "resolved_at": pd.to_datetime([None if x[3] is None else BASE + x[3] * H for x in refunds], utc=True),
        "outcome": [x[4] for x in refunds], "escalated": False,
        "is_abuse": pd.array([None if x[3] is None else False for x in refunds], dtype="boolean"),
    })
    return canon({"orders": o, "refunds": r})


def _queries(points: list[tuple[str, pd.Timestamp]]) -> pd.DataFrame:
    return pd.DataFrame({"requested_at": pd.to_datetime([t for _, t in points], utc=True),
                         "buyer_id": [b for b, _ in points], "store_id": "s",
                         "device_id": pd.Series([None] * len(points), dtype="str"),
                         "address_id": pd.Series([None] * len(points), dtype="str")})


def _cluster(link) -> tuple:
    return tuple(getattr(link, f) for f in CLUSTER_FIELDS)


def _stores(tables: dict[str, pd.DataFrame], tmp_path, seed: int = 0) -> dict[str, ProfileStore]:
    """The in-memory store fed in time order, in reverse (every link arrives late), shuffled, warm started,
    and a snapshot round trip."""
    stream = events(tables)
    out = {}
    for name, order in (("forward", stream), ("reversed", stream[::-1])):
        s = ProfileStore()
        # a refund needs its order first: orders in the given order, then the rest in the given order
        feed(s, [e for e in order if e[0] == "order"] + [e for e in order if e[0] != "order"])
        out[name] = s
    shuffled = list(stream)
    np.random.default_rng(seed).shuffle(shuffled)
    s = ProfileStore()
    feed(s, [e for e in shuffled if e[0] == "order"] + [e for e in shuffled if e[0] != "order"])
    out["shuffled"] = s
    out["warm"] = ProfileStore.from_tables(tables, validate_tables=False)
    out["snapshot"] = ProfileStore.load(out["warm"].save(tmp_path / f"snap{seed}"))
    return out


def _check(tables, points, want, tmp_path, redis_client=None):
    q = _queries(points)
    batch = profiles_as_of(tables, q)
    got = [_cluster(batch.link_profile(i)) for i in range(len(q))]
    assert got == want
    stores = dict(_stores(tables, tmp_path))
    if redis_client is not None:
        from refundguard.online import RedisProfileStore

        stores["redis"] = RedisProfileStore.from_tables(tables, redis_client, prefix="clu", validate_tables=False)
    for name, store in stores.items():
        online = [_cluster(store.profiles(request_record(q, i))[2]) for i in range(len(q))]
        assert online == want, name


# --------------------------------------------------------------------------- a chain joined at known times
CHAIN = [("o0", "b0", 0, "d1", "a0"), ("o1", "b1", 10, "d1", "a1"), ("o2", "b2", 20, "d2", "a1"),
         ("o3", "b3", 30, "d2", "a3")]
CHAIN_REFUNDS = [("r0", "o2", 22, 26, "rejected")]
CHAIN_WANT = [
    (("b0", BASE + 5 * H), (1, 0, 0, 0)),                 # alone
    (("b0", BASE + 10 * H), (1, 0, 0, 0)),                # b1's link at exactly t is not known at t
    (("b0", BASE + 10 * H + NS), (2, 0, 0, 0)),           # ... one nanosecond later it is
    (("b0", BASE + 21 * H), (3, 0, 0, 0)),                # b2 through b1's address
    (("b0", BASE + 23 * H), (3, 1, 1, 0)),                # b2's refund at 22 h
    (("b0", BASE + 27 * H), (3, 1, 1, 1)),                # ... rejected at 26 h
    (("b0", BASE + 31 * H), (4, 1, 1, 1)),                # b3 through b2's device
    (("b0", BASE + 47 * H), (4, 0, 1, 1)),                # the refund left the 24-hour window
    (("b2", BASE + 31 * H), (4, 0, 0, 0)),                # b2's own refund is not "another member's"
    (("b0", BASE + 24 * 31 * H), (4, 0, 0, 1)),           # ... and the 30-day one
    (("nobody", BASE + 31 * H), (1, 0, 0, 0)),            # no history: a cluster of one
]


def test_chain_of_accounts_joined_at_known_times(tmp_path) -> None:
    tables = _tables(CHAIN, CHAIN_REFUNDS)
    _check(tables, [p for p, _ in CHAIN_WANT], [w for _, w in CHAIN_WANT], tmp_path)


# --------------------------------------------------------------------------- the hub cap
def _hub(n: int, tie: bool) -> list[tuple]:
    """``n`` buyers on one device, buyer ``i`` paid at 100 + i hours (the last two at the same instant if ``tie``)."""
    hours = [100 + i for i in range(n)]
    if tie:
        hours[-1] = hours[-2]
    return [(f"h{i}", f"hb{i}", hours[i], "hub", f"ha{i}") for i in range(n)]


def test_a_hub_links_nobody_from_the_time_it_has_more_than_the_cap(tmp_path) -> None:
    k = CLUSTER_HUB_BUYERS
    assert k == 20  # the times below are written for it
    orders = _hub(k + 2, tie=True)  # buyers k and k+1 both at 100 + k hours
    points = [("hb0", BASE + (100 + k - 0.5) * H),       # k buyers seen: linked
              ("hb0", BASE + (100 + k) * H),             # the two tied buyers are not known at their instant
              ("hb0", BASE + (100 + k + 0.5) * H),       # k + 2 buyers: a hub from then on
              ("hb5", BASE + 500 * H)]
    _check(_tables(orders), points, [(k, 0, 0, 0), (k, 0, 0, 0), (1, 0, 0, 0), (1, 0, 0, 0)], tmp_path)


def test_a_hub_cap_with_ties_does_not_depend_on_arrival_order(tmp_path) -> None:
    k = CLUSTER_HUB_BUYERS
    orders = [(f"h{i}", f"hb{i}", 100, "hub", f"ha{i}") for i in range(k + 1)]  # k + 1 at the same instant
    points = [("hb0", BASE + 100 * H), ("hb0", BASE + 100 * H + NS)]
    _check(_tables(orders), points, [(1, 0, 0, 0), (1, 0, 0, 0)], tmp_path)
    orders = orders[:k]  # exactly k: not a hub
    _check(_tables(orders), points, [(1, 0, 0, 0), (k, 0, 0, 0)], tmp_path)


# --------------------------------------------------------------------------- the size cap
def _long_chain(n: int) -> list[tuple]:
    """Buyers c0..c(n-1); c(i) pays at 200 + i hours on devices cd(i) and cd(i + 1): one chain through devices."""
    out = []
    for i in range(n):
        out.append((f"x{i}", f"c{i}", 200 + i, f"cd{i}", f"ca{i}"))
        out.append((f"y{i}", f"c{i}", 200 + i, f"cd{i + 1}", None))
    return out


def test_a_large_cluster_reads_as_large_with_no_member_counts(tmp_path) -> None:
    m = CLUSTER_MAX_ACCOUNTS
    orders = _long_chain(m + 2)
    refunds = [("rc", "x3", 210, None, None)]
    points = [("c0", BASE + (200 + m - 0.5) * H),        # c0..c(m-1): m accounts, not large
              ("c0", BASE + (200 + m + 0.5) * H),        # m + 1 accounts: large
              ("c1", BASE + 900 * H)]
    _check(_tables(orders, refunds), points, [(m, 1, 1, 0), (m + 1, None, None, None), (m + 1, None, None, None)],
           tmp_path)


# --------------------------------------------------------------------------- brute force with small caps, no leak
@given(seed=st.integers(0, 2**32 - 1), hub=st.integers(1, 4), cap=st.integers(1, 6))
@settings(max_examples=30)
def test_vectorised_search_equals_brute_force_for_any_caps(seed: int, hub: int, cap: int) -> None:
    tables = random_tables(seed, n_orders=60, n_refunds=30)
    o = tables["orders"]
    r = tables["refunds"].merge(o[["order_id", "buyer_id"]], on="order_id")
    codes = {c: pd.factorize(o[c])[0] for c in ("device_id", "address_id")}
    buyers, uniq = pd.factorize(pd.concat([o["buyer_id"], r["buyer_id"]], ignore_index=True))
    ob, rb = buyers[:len(o)], buyers[len(o):]
    res = r["resolved_at"].notna()
    bad = (res & ((r["outcome"] == "rejected") | r["is_abuse"].fillna(False))).to_numpy(bool)
    ns = lambda s: s.dt.as_unit("ns").astype("int64").to_numpy() if s.notna().all() else \
        np.where(s.notna(), s.dt.as_unit("ns").astype("int64").fillna(0).to_numpy(), np.iinfo(np.int64).min)
    graph = ClusterGraph.from_orders(ob, codes["device_id"], codes["address_id"], ns(o["paid_at"]), rb,
                                     ns(r["requested_at"]), ns(r["resolved_at"]), bad)
    req = requests_from_tables(tables)
    t = ns(req["requested_at"])
    q = pd.Index(uniq).get_indexer(req["buyer_id"])
    got = cluster_columns(graph, t, q, hub=hub, cap=cap)
    # the batch workers read the graph saved as .npy files and memory-mapped: the same answers
    with tempfile.TemporaryDirectory() as tmp:
        for name, a in graph.arrays().items():
            np.save(os.path.join(tmp, f"{name}.npy"), a, allow_pickle=False)
        saved = ClusterGraph.from_arrays({name: np.load(os.path.join(tmp, f"{name}.npy"), mmap_mode="r")
                                          for name in graph.arrays()})
        again = cluster_columns(saved, t, q, hub=hub, cap=cap)
    for name in CLUSTER_FIELDS:
        np.testing.assert_array_equal(again[name], got[name])
    orders = o.to_dict("records")
    refunds = r.to_dict("records")
    for i in range(len(req)):
        ti = req["requested_at"].iloc[i]
        bad_buyers = {x["buyer_id"] for x in refunds if x["resolved_at"] is not pd.NaT and x["resolved_at"] < ti
                      and (x["outcome"] == "rejected" or x["is_abuse"] is True)}
        want = reference_cluster([x for x in orders if x["paid_at"] < ti],
                                 [x for x in refunds if x["requested_at"] < ti], bad_buyers, req["buyer_id"].iloc[i],
                                 ti, hub=hub, cap=cap)
        for name in CLUSTER_FIELDS:
            v = got[name][i]
            assert (None if np.isnan(v) else int(v)) == want.get(name), (i, name)


@given(seed=st.integers(0, 2**32 - 1), cut=st.floats(0.1, 0.9))
@settings(max_examples=20)
def test_events_at_or_after_t_never_change_the_cluster_at_t(seed: int, cut: float) -> None:
    tables = random_tables(seed, n_orders=60, n_refunds=30)
    req = requests_from_tables(tables)
    t = req["requested_at"].quantile(cut)
    early = req[req["requested_at"] <= t].reset_index(drop=True)
    # everything known at or after t is removed (orders paid, refunds requested, outcomes resolved from t on)
    o, r = tables["orders"], tables["refunds"].copy()
    cutoff = early["requested_at"].max()
    kept = {**tables, "orders": o[o["paid_at"] < cutoff].reset_index(drop=True)}
    r = r[r["order_id"].isin(kept["orders"]["order_id"]) & (r["requested_at"] < cutoff)].copy()
    late = r["resolved_at"] >= cutoff
    r.loc[late, ["resolved_at", "outcome"]] = [pd.NaT, None]
    r.loc[late, "is_abuse"] = pd.NA
    kept["refunds"] = r.reset_index(drop=True)
    at = early[early["requested_at"] == cutoff].reset_index(drop=True)
    full = profiles_as_of(tables, at)
    past = profiles_as_of(kept, at)
    for i in range(len(at)):
        assert _cluster(full.link_profile(i)) == _cluster(past.link_profile(i))


@given(st.sets(st.integers(-50, 50)), st.sets(st.integers(-50, 50)))
def test_merge_disjoint_is_the_union(a, b):
    from refundguard.clusters import _merge_disjoint

    a = np.array(sorted(a), dtype=np.int64)
    b = np.array(sorted(set(b) - set(a.tolist())), dtype=np.int64)
    np.testing.assert_array_equal(_merge_disjoint(a, b), np.union1d(a, b))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(-3, 3)), max_size=60), st.integers(0, 3))
def test_sorted_groups_match_their_lexsort_definition(rows, spare_groups):
    """``_Sorted`` (two stable sorts, time ranks from the first) holds exactly the arrays its definition
    gives: the (group, time) order of ``np.lexsort``, the distinct times, each row's key
    ``group * (len(utimes) + 1) + rank``, and each group's start; ties keep their row order."""
    from refundguard.clusters import _Sorted

    group = np.array([g for g, _ in rows], dtype=np.int64)
    time = np.array([t * 1_000_000_007 for _, t in rows], dtype=np.int64)  # few distinct times: many ties
    n_groups = int(group.max(initial=-1)) + 1 + spare_groups
    got = _Sorted(group, time, n_groups)
    order = np.lexsort((time, group))
    utimes = np.unique(time)
    np.testing.assert_array_equal(got.order, order)
    np.testing.assert_array_equal(got.time, time[order])
    np.testing.assert_array_equal(got.utimes, utimes)
    np.testing.assert_array_equal(got.keys, group[order] * (len(utimes) + 1) + np.searchsorted(utimes, time[order]))
    np.testing.assert_array_equal(got.ptr, np.searchsorted(group[order], np.arange(n_groups + 1)))
    assert got.keys.dtype == np.int64 and got.utimes.dtype == np.int64
