"""Batch scoring at scale: the streamed engine equals online assess, for every jobs and chunk_days.

Also: every row accounted for on corrupted input (the screened Parquet path rejects
exactly what ``validate`` rejects), a failed or killed run leaves nothing at ``out``,
and published store scores gate exactly on the values given.
"""

from __future__ import annotations

import hashlib
import math
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings, strategies as st

import refundguard as rg
import refundguard.batch
from refundguard.batch import (
    SCORED_SCHEMA,
    BatchResult,
    _coded_history,
    _history_rows,
    _store_orders_window,
    _slice_store_rows,
    _store_rows,
    build_index,
    plan_slices,
)
from refundguard.config import ScoreConfig
from refundguard.cli import main
from refundguard.config import DEFAULT_GATE
from refundguard.errors import ConfigError, DataError, RejectedRowsWarning, UnseenCategoryWarning
from refundguard.guard import SCORED_COLUMNS, RefundGuard, default_model_path
from refundguard.profiles import profiles_as_of, profiles_from_codes, request_record, requests_from_tables
from refundguard.simulate import SimulationConfig, simulate_to_parquet
from refundguard.sources import code_tables, read_published_scores, read_source
from refundguard.tables import REJECT_COLUMNS
from tests.test_profiles import fake_history, random_tables

REPO = Path(__file__).resolve().parents[1]
GATE_DAY = pd.Timestamp("2024-08-09", tz="UTC")


@pytest.fixture(scope="module")
def guard() -> RefundGuard:
    return RefundGuard.default()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A simulated marketplace written by the simulator as partitioned Parquet."""
    out = tmp_path_factory.mktemp("batch") / "sim"
    simulate_to_parquet(SimulationConfig(n_buyers=3_000, n_stores=90, days=140, seed=23), out)
    return out


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _same_rows(a: pd.DataFrame, b: pd.DataFrame) -> None:
    assert list(a.columns) == list(b.columns) == list(SCORED_COLUMNS)
    assert len(a) == len(b)
    for c in a.columns:
        if c == "reasons":
            assert all(list(x) == list(y) for x, y in zip(a[c], b[c], strict=True)), c
        else:
            pd.testing.assert_series_equal(a[c], b[c], check_names=True)


# --------------------------------------------------------------------------- invariance
def test_output_is_the_same_for_every_jobs_and_chunk_days(guard, folder, tmp_path):
    """Byte for byte, on one thread, on threads sharing the index, and on worker processes."""
    runs = [(1, 7, "threads"), (2, 3, "threads"), (3, 2, "threads"), (2, 30, "processes"), (2, 4, "processes"),
            (1, 1, "threads")]
    digests, results = [], []
    for jobs, days, backend in runs:
        out = tmp_path / f"s-{jobs}-{days}-{backend}.parquet"
        res = guard.score_history(folder, "2024-08-01", "2024-10-19", out=out, jobs=jobs, chunk_days=days,
                                  backend=backend)
        assert isinstance(res, BatchResult) and res.jobs == jobs
        digests.append(_sha(out))
        results.append(res)
    assert len(set(digests)) == 1, digests  # byte for byte: row groups are cut at fixed row counts
    assert len({r.slices for r in results}) > 1
    table = pq.read_table(tmp_path / "s-1-7-threads.parquet")
    assert table.schema.equals(SCORED_SCHEMA)
    keys = list(zip(table.column("requested_at").to_pylist(), table.column("refund_id").to_pylist()))
    assert keys == sorted(keys) and len(keys) == results[0].scored > 1_000
    assert results[0].rows_in == results[0].scored + results[0].rejected
    # the in-memory result is the same rows, and so is a CSV written by the same engine
    mem = guard.score_history(rg.load_tables(folder), "2024-08-01", "2024-10-19", jobs=2, chunk_days=5)
    _same_rows(mem, pd.read_parquet(tmp_path / "s-1-7-threads.parquet"))
    csv = tmp_path / "s.csv"
    guard.score_history(folder, "2024-08-01", "2024-10-19", out=csv, chunk_days=9)
    back = pd.read_csv(csv)
    assert list(back.columns) == list(SCORED_COLUMNS) and len(back) == len(mem)
    assert (back["refund_id"] == mem["refund_id"]).all() and (back["action"] == mem["action"]).all()


DAY_NS = 86_400 * 10**9


@given(data=st.data(), chunk_days=st.integers(1, 15), workers=st.integers(1, 40), aligned=st.booleans())
@settings(max_examples=150, deadline=None)
def test_slices_cover_every_refund_in_whole_days_and_give_every_worker_two(data, chunk_days, workers, aligned):
    """plan_slices: every decided refund in exactly one slice, in order; slices of whole days on a grid,
    chunk_days long (with several workers at most the period's days over twice the workers, at least one)."""
    from types import SimpleNamespace

    start = 1_700_006_400 * 10**9 - 1_700_006_400 * 10**9 % DAY_NS  # a UTC midnight
    at = data.draw(st.lists(st.tuples(st.integers(0, 90), st.integers(0, DAY_NS - 1)), min_size=1, max_size=300))
    offsets = sorted(day * DAY_NS + within for day, within in at)
    index = SimpleNamespace(r_req=np.asarray([start + o for o in offsets], dtype=np.int64),
                            q_rows=np.arange(len(offsets), dtype=np.int64))
    specs = plan_slices(index, chunk_days, start if aligned else None, workers=workers)
    assert [s.number for s in specs] == list(range(len(specs)))
    assert specs[0].lo == 0 and specs[-1].hi == len(offsets)
    for a, b in zip(specs, specs[1:]):
        assert a.hi == b.lo and a.t1 <= b.t0  # contiguous rows; days without refunds are left out
    period = offsets[-1] // DAY_NS - offsets[0] // DAY_NS + 1
    want = chunk_days if workers == 1 else max(1, min(chunk_days, period // (2 * workers)))
    origin = start if aligned else start + offsets[0] // DAY_NS * DAY_NS  # (the first refund's day)
    for s in specs:
        assert s.hi > s.lo
        t = index.r_req[s.lo:s.hi]
        assert (t >= s.t0).all() and (t < s.t1).all()
        assert s.t1 - s.t0 == want * DAY_NS and (s.t0 - origin) % (want * DAY_NS) == 0


def test_many_workers_get_shorter_slices():
    from types import SimpleNamespace

    start = 1_700_006_400 * 10**9 - 1_700_006_400 * 10**9 % DAY_NS
    index = SimpleNamespace(r_req=start + np.arange(61, dtype=np.int64) * DAY_NS, q_rows=np.arange(61))
    days = {w: [(s.t1 - s.t0) // DAY_NS for s in plan_slices(index, 7, start, workers=w)] for w in (1, 2, 4, 8, 16)}
    assert days[1] == days[2] == days[4] == [7] * 9  # two months: 9 slices, at least two per worker
    assert days[8] == [3] * 21 and days[16] == [1] * 61
    ten = SimpleNamespace(r_req=index.r_req[:10], q_rows=np.arange(10))
    assert [(s.t1 - s.t0) // DAY_NS for s in plan_slices(ten, 7, start)] == [7, 7]  # one worker: chunk_days
    assert [(s.t1 - s.t0) // DAY_NS for s in plan_slices(ten, 7, start, workers=2)] == [2] * 5


def test_the_runs_store_scores_do_not_depend_on_their_blocks(guard, folder, tmp_path, monkeypatch):
    """The decided requests' store scores are computed once per run, in blocks of days: one block,
    a block per day, five or seven days per block, carried from block to block by one sweep, by a
    sweep per worker or each block on its own give the same bytes (and workers read them saved)."""
    from refundguard.scores import StoreScoreSweep

    real, calls = StoreScoreSweep.columns, []

    def counted(self, *args, **kwargs):
        calls.append(self)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(StoreScoreSweep, "columns", counted)
    digests, blocks, sweeps = [], [], []
    # <= 90 stores: 1 and 5 days per block by store-days; 1,000 orders' reach: the 7-day floor;
    # a sweep budget of 0 store-days: no carry, every block on its own
    for store_days, orders, carry, jobs, backend in (
            (10**9, 10**9, 10**9, 1, "threads"), (1, 10**9, 10**9, 1, "threads"), (5 * 90, 10**9, 10**9, 1, "threads"),
            (10**9, 1_000, 10**9, 1, "threads"), (1, 10**9, 10**9, 2, "processes"), (5 * 90, 10**9, 10**9, 3, "threads"),
            (5 * 90, 10**9, 0, 1, "threads"), (5 * 90, 10**9, 0, 3, "processes")):
        monkeypatch.setattr(refundguard.batch, "STORE_BLOCK_STORE_DAYS", store_days)
        monkeypatch.setattr(refundguard.batch, "STORE_BLOCK_ORDERS", orders)
        monkeypatch.setattr(refundguard.batch, "STORE_SWEEP_STORE_DAYS", carry)
        calls.clear()
        out = tmp_path / f"b{store_days}-{orders}-{carry}-{jobs}-{backend}.parquet"
        guard.score_history(folder, "2024-08-01", "2024-10-19", out=out, jobs=jobs, chunk_days=7, backend=backend)
        digests.append(_sha(out))
        blocks.append(len(calls))
        sweeps.append(len({id(c) for c in calls}))
    assert len(set(digests)) == 1
    assert blocks[0] == 1 and blocks[1] >= 70 and 1 < blocks[2] < blocks[1], blocks  # (processes: in the workers)
    assert blocks[3] == len(range(0, 79, 7)), blocks  # 2024-08-01 .. 2024-10-18 in 7-day blocks
    assert sweeps[:4] == [1, 1, 1, 1] and sweeps[5] == 2, sweeps  # one sweep per worker computing blocks
    assert blocks[5] >= blocks[2], blocks  # 3 threads: 2 sweeps share the days, each at the budget of one
    assert blocks[6] == blocks[2] == len(range(0, 79, 5)) and sweeps[6] == blocks[6], (blocks, sweeps)  # no carry


@given(data=st.data())
@settings(max_examples=60, deadline=None)
def test_first_order_per_pair_is_the_earliest_row_of_every_pair(data) -> None:
    """_first_per_pair_rows: for every (a, b) pair with both codes >= 0 and a known time, the row of its
    earliest time (ties: the first such row), sorted; as a plain loop finds it."""
    from refundguard._time import NAT
    from refundguard.batch import _first_per_pair_rows

    n = data.draw(st.integers(0, 120))
    a = np.array(data.draw(st.lists(st.integers(-1, 6), min_size=n, max_size=n)), dtype=np.int32)
    b = np.array(data.draw(st.lists(st.integers(-1, 5), min_size=n, max_size=n)), dtype=np.int32)
    t = np.array(data.draw(st.lists(st.sampled_from([NAT, 5, 6, 7, 10**18]), min_size=n, max_size=n)),
                 dtype=np.int64)
    best: dict[tuple[int, int], int] = {}
    for i in range(n):
        if a[i] >= 0 and b[i] >= 0 and t[i] != NAT:
            k = (int(a[i]), int(b[i]))
            if k not in best or t[i] < t[best[k]]:
                best[k] = i
    got = _first_per_pair_rows(a, b, t, n_b=6)
    assert got.dtype == np.int64 and got.tolist() == sorted(best.values())


@given(data=st.data(), n_stores=st.sampled_from([1, 3, 200, 70_000]), presorted=st.booleans(),
       chunk=st.sampled_from([1, 7, 64, 1 << 20]))
@settings(max_examples=80, deadline=None)
def test_store_order_times_equal_a_full_sort(data, n_stores: int, presorted: bool, chunk: int) -> None:
    """The chunked counting sort by store plus the re-sort of the runs not in time order equals a full
    (store, time) sort, for file orders sorted or not, missing stores and times, more than 2**16 stores and
    any chunk size."""
    from refundguard.batch import _store_order_times

    nat = np.iinfo(np.int64).min
    m = data.draw(st.integers(0, 300))
    store = np.array(data.draw(st.lists(st.integers(-1, n_stores - 1), min_size=m, max_size=m)), dtype=np.int32)
    paid = np.array(data.draw(st.lists(st.one_of(st.integers(0, 40), st.just(nat)), min_size=m, max_size=m)),
                    dtype=np.int64)
    if presorted:
        paid = np.sort(paid)
    times, ptr = _store_order_times(store, paid, n_stores, chunk=chunk)
    ok = (store >= 0) & (paid != nat)
    assert np.array_equal(times, paid[ok][np.lexsort((paid[ok], store[ok]))])
    assert np.array_equal(ptr, np.concatenate([[0], np.cumsum(np.bincount(store[ok], minlength=n_stores))]))


def test_workers_do_not_take_the_memory_mapped_index_for_a_leak(tmp_path, monkeypatch):
    """loky replaces a worker whose RSS grew 300 MB past its first task; the mapped index's pages are allowed."""
    from joblib.externals.loky import process_executor

    monkeypatch.setattr(process_executor, "_MAX_MEMORY_LEAK_SIZE", int(3e8))
    (tmp_path / "graph").mkdir()
    (tmp_path / "o_paid.npy").write_bytes(b"x" * 4_000_000)
    (tmp_path / "graph" / "keys.npy").write_bytes(b"x" * 1_000_000)
    refundguard.batch._allow_mapped_pages(tmp_path)
    assert process_executor._MAX_MEMORY_LEAK_SIZE == int(3e8) + 5_000_000


def test_the_leak_allowance_reads_a_folder_other_workers_are_writing(tmp_path):
    """Workers size the index while another one writes a part under a temporary name and renames it
    (a FileNotFoundError here once failed a run)."""
    import shutil
    import threading

    (tmp_path / "o_paid.npy").write_bytes(b"x" * 1000)
    stop = threading.Event()

    def churn() -> None:
        k = 0
        while not stop.is_set():
            part = tmp_path / f"graph.{k}"
            part.mkdir()
            for j in range(20):
                (part / f"{j}.npy").write_bytes(b"x")
            final = tmp_path / f"graph-{k}"
            os.replace(part, final)
            shutil.rmtree(final)
            k += 1

    thread = threading.Thread(target=churn)
    thread.start()
    try:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            refundguard.batch._allow_mapped_pages(tmp_path)
    finally:
        stop.set()
        thread.join()


@pytest.mark.parametrize("jobs,backend", [(1, "threads"), (2, "threads"), (2, "processes")])
def test_a_period_without_refunds_writes_an_empty_file_and_computes_nothing(guard, folder, tmp_path, monkeypatch,
                                                                            jobs, backend):
    called = []
    monkeypatch.setattr(refundguard.batch, "add_run_parts", lambda *a, **k: called.append("run parts"))
    out = tmp_path / "none.parquet"
    res = guard.score_history(folder, "2020-01-01", "2020-02-01", out=out, jobs=jobs, backend=backend)
    assert (res.rows_in, res.scored, res.rejected, res.slices) == (0, 0, 0, 0)
    table = pq.read_table(out)
    assert table.num_rows == 0 and table.schema.equals(SCORED_SCHEMA)
    assert called == []


def test_an_index_scores_only_with_the_score_config_it_was_built_with(guard, folder):
    from refundguard.batch import score_slice
    from refundguard.sources import read_source

    source = read_source(folder)
    model = guard.batch_model()
    other = build_index(source, None, None, config=model.score_config.replace(window_days=20))
    spec = plan_slices(other, 7)[0]
    with pytest.raises(ConfigError, match="another store score configuration") as err:
        score_slice(other, model, spec)
    assert err.value.owner == "score_slice" and err.value.field == "index"
    bare = build_index(source, None, None, config=model.score_config, run_parts=False)
    with pytest.raises(ConfigError, match="run parts"):
        score_slice(bare, model, spec)
    same = build_index(source, None, None, config=model.score_config)
    assert score_slice(same, model, plan_slices(same, 7)[0]).num_rows == len(spec)


def test_the_slices_do_not_read_the_store_score_inputs_once_released(guard, folder, tmp_path, monkeypatch):
    """The runner lets the store-only columns go after the run parts; the slices' output is the same."""
    from refundguard.batch import STORE_ONLY, iter_slices_local, score_slice
    from refundguard.sources import read_source

    model = guard.batch_model()
    index = build_index(read_source(folder), None, None, config=model.score_config)
    specs = plan_slices(index, 7)
    kept = [score_slice(index, model, spec) for spec in specs]
    index.release_store_inputs()
    assert all(getattr(index, name) is None for name in STORE_ONLY)
    with pytest.raises(ConfigError, match="released"):
        index.store_events()
    for spec, want in zip(specs, kept):
        pd.testing.assert_frame_equal(score_slice(index, model, spec).to_pandas(), want.to_pandas())
    index.save(tmp_path / "saved")  # a released index saves and loads without them
    loaded = refundguard.batch.BatchIndex.load(tmp_path / "saved")
    assert loaded.o_ship_by is None and loaded.has_run_parts

    # the local runner releases them once it has computed the run parts (threads and one job)
    for jobs in (1, 2):
        fresh = build_index(read_source(folder), None, None, config=model.score_config, run_parts=False)
        for got, want in zip(iter_slices_local(fresh, model, specs, jobs, {}), kept, strict=True):
            pd.testing.assert_frame_equal(got.to_pandas(), want.to_pandas())
        assert all(getattr(fresh, name) is None for name in STORE_ONLY)


# --------------------------------------------------------------------------- parity with assess
def _assert_equals_assess(guard: RefundGuard, scored: pd.DataFrame, tables, store_scores=None,
                          explain: bool = True) -> None:
    """Every batch row equals guard.assess on the same request and its profiles_as_of profiles."""
    requests = requests_from_tables(tables)
    requests = requests[requests["refund_id"].isin(scored["refund_id"])].reset_index(drop=True)
    profiles = profiles_as_of(tables, requests, score_config=guard.score_config, store_scores=store_scores)
    by_id = scored.set_index("refund_id")
    assert len(requests) == len(scored) > 0
    for i in range(len(requests)):
        d = guard.assess(request_record(requests, i), profiles.profile(i), explain=explain, always_score=True)
        row = by_id.loc[d.refund_id]
        assert d.action == row["action"], i
        assert d.policy_version == row["policy_version"] and d.model_version == row["model_version"]
        assert math.isclose(d.abuse_probability, row["abuse_probability"], rel_tol=0, abs_tol=1e-12)
        assert d.provisional == row["provisional"] and d.store_score_missing == row["store_score_missing"]
        assert d.audit == row["audit"]
        assert (d.store_score is None and np.isnan(row["store_score"])) or d.store_score == row["store_score"]
        want = [(r["text"], r["feature"], None if r["value"] is None else str(r["value"])) for r in d.reasons]
        got = [(r["text"], r["feature"], r["value"]) for r in row["reasons"]]
        assert got == want, (i, got, want)
        for a, b in zip(d.reasons, row["reasons"], strict=True):
            if a["contribution"] is None:  # (the block list's reason has none)
                assert b["contribution"] is None
            else:
                assert math.isclose(a["contribution"], b["contribution"], rel_tol=1e-12, abs_tol=1e-12)


def test_streamed_batch_equals_online_assess_on_every_row(guard, folder):
    tables = rg.load_tables(folder)
    scored = guard.score_history(folder, "2024-08-20", "2024-09-10", always_score=True, explain=True,
                                 jobs=2, chunk_days=4)
    assert (scored["requested_at"] >= GATE_DAY).any() and (scored["action"] == "merchant_handles").any()
    _assert_equals_assess(guard, scored, rg.validate(tables)[0])


def test_block_and_allow_lists_decide_and_explain_in_batch_as_in_assess(guard, folder):
    """A policy with block and allow lists: the block list's reason comes first, then the model's (at most
    three in all), on every row, with the intercepts and approvals assess makes."""
    from refundguard.policy import PolicyTimeline

    tables = rg.validate(rg.load_tables(folder))[0]
    buyers = tables["orders"]["buyer_id"].drop_duplicates().sort_values().tolist()
    base = guard.policy.versions[-1]
    listed = RefundGuard.default(policy=PolicyTimeline([base.replace(block_list=buyers[:400:3],
                                                                      allow_list=buyers[1:400:3])]))
    scored = listed.score_history(folder, "2024-08-20", "2024-09-10", always_score=True, explain=True, jobs=2,
                                  chunk_days=4)
    blocked = scored["buyer_id"].isin(buyers[:400:3])
    assert blocked.sum() > 20 and scored["buyer_id"].isin(buyers[1:400:3]).sum() > 20
    first = scored.loc[blocked & (scored["action"] == "intercept"), "reasons"]
    assert len(first) and all(r[0]["feature"] == "buyer_id" and 1 <= len(r) <= 3 for r in first)
    assert (scored.loc[blocked, "reasons"].map(len) > 1).any()  # the model's reasons follow the block list's
    _assert_equals_assess(listed, scored, tables)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_long_history_windows_and_all_time_rows(guard, seed):
    """500 days of history: the 365-day windows, the pre-window median orders, first orders,
    first refunds per store and first bad outcomes all come from outside the slice's window."""
    tables = random_tables(seed, n_orders=800, n_refunds=400)
    hist = fake_history(tables, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnseenCategoryWarning)
        # from 2025-07-01 the 365-day window starts after the first month of orders
        scored = guard.score_history(tables, "2025-07-01", None, store_scores=hist, always_score=True,
                                     explain=True, chunk_days=3 + seed)
        assert len(scored) > 20
        _assert_equals_assess(guard, scored, tables, store_scores=hist)


@given(seed=st.integers(0, 2**32 - 1), chunk_days=st.integers(1, 60), workers=st.integers(1, 4))
@settings(max_examples=25)
def test_slice_profiles_equal_profiles_as_of(seed: int, chunk_days: int, workers: int) -> None:
    """Each slice reads only its window and its keys' all-time rows, and gets the same profiles."""
    tables = random_tables(seed, n_orders=120, n_refunds=80)
    hist = fake_history(tables, seed)
    requests = requests_from_tables(tables)
    want = profiles_as_of(tables, requests, store_scores=hist)
    source = code_tables(tables, validate_tables=False)
    index = build_index(source, None, None, config=ScoreConfig(),
                        published=read_published_scores(hist, source.store_ids, ScoreConfig()))
    assert (source.refund_ids.take(pa.array(index.q_rows)).to_pylist() == requests["refund_id"].tolist())
    got = []
    for spec in plan_slices(index, chunk_days, workers=workers):
        rows = index.q_rows[spec.lo:spec.hi]
        orow = index.r_order[rows]
        t = index.r_req[rows]
        q = [np.asarray(a[orow], dtype=np.int64) for a in (index.o_buyer, index.o_store, index.o_dev, index.o_addr)]
        o_rows, r_rows = _history_rows(index, spec.t0, spec.t1, *q)
        assert len(o_rows) <= index.n_orders
        store = _slice_store_rows(index, spec.lo, spec.hi)
        pd.testing.assert_frame_equal(store, _store_rows(index, q[1], t, ScoreConfig()))
        got.append(profiles_from_codes(_coded_history(index, o_rows, r_rows), t, *q, store,
                                       store_orders_30d=_store_orders_window(index, q[1], t, 30 * 86_400 * 10**9),
                                       clusters=index.graph))
    for name in ("buyer", "store", "link"):
        frame = pd.concat([getattr(p, name) for p in got], ignore_index=True)
        pd.testing.assert_frame_equal(frame, getattr(want, name), check_dtype=True)


# --------------------------------------------------------------------------- every row accounted for
def _corrupt(tables: dict[str, pd.DataFrame], seed: int = 7) -> dict[str, pd.DataFrame]:
    """A copy with every kind of broken row the contract names."""
    o, r, v, s = (tables[k].copy() for k in ("orders", "refunds", "reviews", "service"))
    rng = np.random.default_rng(seed)

    def rows(df: pd.DataFrame, k: int) -> np.ndarray:
        return rng.choice(len(df), k, replace=False)

    for c in ("order_id", "buyer_id", "store_id", "category", "device_id", "address_id"):
        o[c] = o[c].astype(object)
    i = rows(o, 20)
    o.loc[i[0], "order_id"] = o.loc[i[1], "order_id"]
    o.loc[i[2], "buyer_id"] = None
    o.loc[i[3], "store_id"] = "  "
    o.loc[i[4], "amount"] = -3.0
    o.loc[i[5], "amount"] = np.nan
    o.loc[i[6], "amount"] = np.inf
    o.loc[i[7], "paid_at"] = pd.NaT
    o.loc[i[8], "shipped_at"] = o.loc[i[8], "paid_at"] - pd.Timedelta(hours=1)
    o.loc[i[9], "delivered_at"] = o.loc[i[9], "paid_at"] - pd.Timedelta(hours=5)
    o.loc[i[10], "shipped_at"] = pd.NaT
    o.loc[i[11], "device_id"] = ""  # a blank optional id is null, not a reject
    o.loc[i[12], "category"] = "\t"
    o.loc[i[13], "address_id"] = "\u3000"
    o.loc[i[14], "ship_by"] = o.loc[i[14], "paid_at"] - pd.Timedelta(hours=2)
    o.loc[i[15], "ship_by"] = pd.NaT  # filled with paid_at + 48h
    for c in ("refund_id", "order_id", "kind", "reason", "outcome", "escalated"):
        r[c] = r[c].astype(object)
    j = rows(r, 20)
    r.loc[j[0], "refund_id"] = r.loc[j[1], "refund_id"]
    r.loc[j[2], "order_id"] = "no-such-order"
    r.loc[j[3], "order_id"] = None
    r.loc[j[4], "kind"] = "refund"
    r.loc[j[5], "reason"] = None
    r.loc[j[6], "amount"] = 0.0
    r.loc[j[7], "amount"] = -1.0
    r.loc[j[8], "resolved_at"] = r.loc[j[8], "requested_at"] - pd.Timedelta(hours=1)
    r.loc[j[9], "outcome"] = None
    r.loc[j[10], "outcome"] = "weird"
    r.loc[j[11], "requested_at"] = pd.NaT
    r.loc[j[12], "escalated"] = None
    r.loc[j[13], "order_id"] = o.loc[i[4], "order_id"]  # its order is rejected: parent_rejected
    r.loc[j[14], "amount"] = 1e6  # more than the order amount
    r.loc[j[15], "requested_at"] = pd.Timestamp("2020-01-01", tz="UTC")  # before its order was paid
    r.loc[j[16], "kind"] = " refund_only"
    v["order_id"] = v["order_id"].astype(object)
    v["rating"] = v["rating"].astype("float64")
    k = rows(v, 10)
    v.loc[k[0], "rating"] = 0
    v.loc[k[1], "rating"] = 6
    v.loc[k[2], "rating"] = np.nan
    v.loc[k[3], "rating"] = 3.5
    v.loc[k[4], "order_id"] = "missing"
    v.loc[k[5], "created_at"] = pd.Timestamp("2019-01-01", tz="UTC")
    v.loc[k[6], "order_id"] = o.loc[i[5], "order_id"]
    s["store_id"] = s["store_id"].astype(object)
    m = rows(s, 5)
    s.loc[m[0], "first_response_s"] = -1.0
    s.loc[m[1], "store_id"] = None
    s.loc[m[2], "started_at"] = pd.NaT
    return {"orders": o, "refunds": r, "reviews": v, "service": s}


@pytest.fixture(scope="module")
def corrupted(tmp_path_factory) -> tuple[dict[str, pd.DataFrame], Path]:
    tables = _corrupt(rg.simulate(n_buyers=1_500, n_stores=60, days=120, seed=7))
    folder = tmp_path_factory.mktemp("corrupt") / "data"
    folder.mkdir()
    for name, df in tables.items():
        df.to_parquet(folder / f"{name}.parquet")
    return tables, folder


def test_corrupted_input_every_row_accounted_for(guard, corrupted, tmp_path):
    tables, folder = corrupted
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RejectedRowsWarning)
        _, want = rg.validate(rg.load_tables(folder), mode="quarantine")
    # the screened Parquet path rejects exactly what the contract's validator rejects
    got = read_source(folder, threads=2).rejects
    pd.testing.assert_frame_equal(got.reset_index(drop=True), want.reset_index(drop=True))
    assert {"unique", "required", "min", "exists", "parent_rejected", "refund_sum", "after_paid_at", "enum",
            "range", "type", "outcome_iff_resolved", "after_requested_at", "shipped_first",
            "after_shipped_at"} <= set(want["rule"])

    out, rej = tmp_path / "scored.parquet", tmp_path / "rejects.csv"
    res = guard.score_history(folder, out=out, rejects=rej, jobs=2, chunk_days=6)
    n_refunds = len(tables["refunds"])
    bad_refunds = set(want.loc[want["table"] == "refunds", "row_index"])
    assert res.rows_in == n_refunds == res.scored + res.rejected  # no period: every refund row is in
    assert res.rejected == len(bad_refunds) and res.rejected_by_table["orders"] > 0
    scored = pd.read_parquet(out)
    assert len(scored) == res.scored
    bad_ids = set(tables["refunds"]["refund_id"].iloc[sorted(bad_refunds)].dropna())
    good_ids = set(tables["refunds"]["refund_id"].drop(index=sorted(bad_refunds)))
    assert set(scored["refund_id"]) == good_ids and not (bad_ids - good_ids) & set(scored["refund_id"])
    written = pd.read_csv(rej)
    assert list(written.columns) == list(REJECT_COLUMNS) and len(written) == len(want)
    # a period: refunds whose requested_at cannot be read count as in (they cannot be placed outside it)
    part = guard.score_history(folder, "2024-07-01", "2024-08-01", out=tmp_path / "p.parquet")
    t = pd.to_datetime(tables["refunds"]["requested_at"], utc=True)
    inside = ((t >= "2024-07-01") & (t < "2024-08-01")) | t.isna()
    assert part.rows_in == int(inside.sum()) == part.scored + part.rejected
    # in memory, the same rows are decided and the same rejects returned
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RejectedRowsWarning)
        mem, mem_rejects = guard.score_history(tables, return_rejects=True, jobs=1, chunk_days=6)
    _same_rows(mem, scored)
    pd.testing.assert_frame_equal(mem_rejects.reset_index(drop=True), want.reset_index(drop=True))


def test_rejected_rows_warn_in_memory(guard, corrupted):
    tables, _ = corrupted
    with pytest.warns(RejectedRowsWarning, match="not decided"):
        guard.score_history(tables, "2024-07-01", "2024-07-08")


# --------------------------------------------------------------------------- atomic output
@pytest.mark.parametrize("jobs", [1, 2])
def test_a_failed_run_leaves_nothing_at_out(guard, folder, tmp_path, monkeypatch, jobs):
    """A slice that raises (in this thread or on a worker thread) fails the run with its error, and leaves
    nothing at --out."""
    real = refundguard.batch.score_slice
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("disk on fire")
        return real(*args, **kwargs)

    monkeypatch.setattr(refundguard.batch, "score_slice", failing)
    out = tmp_path / "scored.parquet"
    with pytest.raises(RuntimeError, match="disk on fire"):
        guard.score_history(folder, "2024-08-01", "2024-10-01", out=out, chunk_days=2, jobs=jobs)
    assert len(calls) == 3 if jobs == 1 else 3 <= len(calls) < 31  # threads: a few more may have started
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temporary sibling


def test_a_killed_run_leaves_nothing_at_out(folder, tmp_path):
    out = tmp_path / "scored.parquet"
    cmd = [sys.executable, "-m", "refundguard.cli", "--quiet", "score", "--data", str(folder), "--model",
           str(default_model_path()), "--out", str(out), "--chunk-days", "1", "--jobs", "2"]
    scratch = tmp_path / "tmp"  # the workers' index folder: a killed run cannot remove it
    scratch.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(scratch)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if any(p.name.startswith(f".{out.name}.tmp-") for p in tmp_path.iterdir()):
                break
            time.sleep(0.02)
        assert proc.poll() is None, proc.communicate()  # still running: writing under the temporary name
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    assert all(p.name.startswith(".") for p in tmp_path.iterdir() if p != scratch)  # at most a hidden temporary


# --------------------------------------------------------------------------- published store scores
def test_published_store_scores_gate_exactly_on_the_values_given(guard, folder, tmp_path):
    start, end = "2024-08-12", "2024-08-26"
    base = guard.score_history(folder, start, end, always_score=True)
    day = base["requested_at"].dt.floor("D").dt.tz_localize(None)
    pairs = pd.DataFrame({"store_id": base["store_id"], "as_of": day}).drop_duplicates().reset_index(drop=True)
    rng = np.random.default_rng(3)
    n = len(pairs)
    # every published value lands exactly on or next to the gate; some rows provisional, some absent
    score = rng.choice([DEFAULT_GATE, DEFAULT_GATE - 0.01, 4.95, 3.2, np.nan], n)
    provisional = rng.random(n) < 0.2
    published = pairs.assign(score=score, product=4.1, logistics=4.2, service=4.3, category="published-cat",
                             provisional=provisional)
    absent = rng.random(n) < 0.15
    file = tmp_path / "published.parquet"
    published[~absent].to_parquet(file)
    res = guard.score_history(folder, start, end, store_scores=file, always_score=True, jobs=2, chunk_days=3)
    res_day = res["requested_at"].dt.floor("D").dt.tz_localize(None)
    key = pd.MultiIndex.from_arrays([res["store_id"], res_day])
    pub = published[~absent].set_index(["store_id", "as_of"])
    row = pub.reindex(key)
    found = row["score"].notna().to_numpy()
    assert found.any() and (~found).any()
    np.testing.assert_array_equal(res["store_score"].to_numpy(), row["score"].to_numpy())
    assert (res["store_score_missing"].to_numpy() == ~found).all()
    prov = row["provisional"].fillna(guard.score_config.min_orders > 0).astype(bool).to_numpy()
    assert (res["provisional"].to_numpy() == prov).all()
    after = (res["requested_at"] >= GATE_DAY).to_numpy()
    gated = after & found & ~prov & (row["score"].to_numpy() >= DEFAULT_GATE)
    assert gated.any() and (after & found & ~prov & ~gated).any()
    assert ((res["action"] == "merchant_handles").to_numpy() == gated).all()
    # the published scores feed the features too: the decisions differ from the computed scores'
    assert not np.allclose(res["abuse_probability"], base["abuse_probability"])

    # the computed daily history, published back, reproduces the computed run byte for byte
    hist = rg.store_score_history(rg.validate(rg.load_tables(folder))[0], "2024-08-12", "2024-08-25",
                                  guard.score_config)
    hist_file = tmp_path / "history.parquet"
    hist.to_parquet(hist_file)
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    guard.score_history(folder, start, end, out=a)
    guard.score_history(folder, start, end, out=b, store_scores=hist_file, jobs=2)
    assert _sha(a) == _sha(b)


def test_duplicated_published_rows_are_refused(guard, folder):
    hist = pd.DataFrame({"store_id": ["s0001", "s0001"], "as_of": pd.to_datetime(["2024-08-12"] * 2),
                         "score": [4.9, 4.1], "product": 4.0, "logistics": 4.0, "service": 4.0,
                         "provisional": False})
    with pytest.raises(DataError, match="duplicated"):
        guard.score_history(folder, "2024-08-12", "2024-08-13", store_scores=hist)


# --------------------------------------------------------------------------- options
def test_bad_options_are_config_errors(guard, folder, tmp_path, capsys):
    for kw in ({"jobs": 0}, {"jobs": 1.5}, {"chunk_days": 0}, {"out": tmp_path / "x.json"}, {"backend": "fork"}):
        with pytest.raises(ConfigError):
            guard.score_history(folder, "2024-08-01", "2024-08-02", **kw)
    args = ["score", "--data", str(folder), "--model", str(default_model_path()), "--out", str(tmp_path / "o.parquet")]
    for bad in (["--jobs", "0"], ["--jobs", "-2"], ["--chunk-days", "0"], ["--store-scores", str(tmp_path / "no.csv")],
                ["--backend", "fork"]):
        with pytest.raises(SystemExit) as info:  # refused while parsing, before any work
            main([*args, *bad])
        assert info.value.code == 2, bad
    assert main([*args, "--rejects", str(tmp_path / "r.json")]) == 2
    capsys.readouterr()
    assert main([*args, "--from", "2024-08-01", "--to", "2024-08-08", "--rejects", str(tmp_path / "r.parquet"),
                 "--jobs", "2"]) == 0
    text = capsys.readouterr().out
    assert "in = scored + rejected: " in text and (tmp_path / "r.parquet").exists()
    n = len(pd.read_parquet(tmp_path / "o.parquet"))
    assert f"{n:,} = {n:,} + 0 refunds" in text


@pytest.mark.parametrize("shape", ["dense", "padded", "long", "uuid", "ragged", "unsorted"])
def test_order_id_joins_are_exact_for_any_id_shape(shape):
    """Gapless auto-increment ids join by subtraction, other sorted fixed-width ids by binary search
    (packed or not), any other ids by hashing."""
    from refundguard.sources import _Keys

    rng = np.random.default_rng(5)
    n = 5_000
    nums = np.sort(rng.choice(10**9, n, replace=False))
    ids = {
        "dense": [f"o{x:08d}" for x in range(99_000, 99_000 + n)],
        "padded": [f"o{x // 10:010d}" for x in nums],  # prefix "o00", 8 bytes after it: uint64 keys
        "long": [f"order-{x:016d}-x" for x in nums],  # more than 8 bytes after the prefix
        "uuid": sorted(f"{x:032x}" for x in rng.integers(0, 2**62, n)),
        "ragged": [f"o{x}" for x in nums],
        "unsorted": [f"o{x:010d}" for x in rng.permutation(nums)],
    }[shape]
    chunks = [pa.array(ids[:1000]), pa.array(ids[1000:])]
    keys = _Keys.of(pa.chunked_array(chunks))
    assert (keys.fixed is not None) == (shape in ("dense", "padded", "long", "uuid"))
    assert (keys.packed is not None) == (shape in ("dense", "padded"))
    assert (keys.first is not None) == (shape == "dense")
    refs = [ids[i] for i in rng.integers(0, n, 300)] + ["nope", ids[0][:-1] + "~", "o", ""]
    refs += ["o00098999", f"o{99_000 + n:08d}", "x00099000", "o0009900:", "o0009900/", "o-0099001"]
    want = {v: i for i, v in enumerate(ids)}
    got = keys.rows(pa.chunked_array([pa.array(refs)]))
    assert got.tolist() == [want.get(r, -1) for r in refs]
    assert not keys.duplicated().any()


@settings(max_examples=150, deadline=None)
@given(width=st.integers(1, 20), data=st.data())
def test_order_id_joins_are_exact_for_random_fixed_width_ids(width, data):
    """Any ids of one width (a shared prefix or none, sorted or not, across chunks) join exactly: the
    packed uint64 keys (suffix up to 8 bytes, read in place when ids have 8 bytes or more), the
    string search, or the hash table."""
    from refundguard.sources import _Keys, _pack

    alphabet = data.draw(st.sampled_from(["01", "0123456789", "ab~"]))
    prefix = data.draw(st.text(alphabet, min_size=0, max_size=width - 1))
    tails = data.draw(st.lists(st.text(alphabet, min_size=width - len(prefix), max_size=width - len(prefix)),
                               min_size=0, max_size=60, unique=True))
    ids = [prefix + x for x in tails]
    if data.draw(st.booleans()):
        ids.sort()
    if len(ids) >= 3 and data.draw(st.booleans()):  # an id inside breaks the prefix its neighbours share
        k = data.draw(st.integers(1, len(ids) - 2))
        ids[k] = ("~" if ids[k][0] != "~" else "0") + ids[k][1:]
        ids = list(dict.fromkeys(ids))
    cut = data.draw(st.integers(0, len(ids)))
    keys = _Keys.of(pa.chunked_array([pa.array(ids[:cut], type=pa.string()), pa.array(ids[cut:], type=pa.string())]))
    want = {v: i for i, v in enumerate(ids)}
    # references of the ids' width take the fast paths; any other width, the hash table
    for refs in (ids + [prefix + "~" * (width - len(prefix)), "0" * width], ids[:3] + ["x" * (width + 1)]):
        got = keys.rows(pa.chunked_array([pa.array(refs, type=pa.string())]))
        assert got.tolist() == [want.get(r, -1) for r in refs]
    if keys.packed is not None:  # packing keeps the order of the suffixes
        raw = np.array([x.encode() for x in ids], dtype=f"S{width}")
        suffix = [x.encode()[len(keys.prefix):] for x in ids]
        packed = _pack(raw, len(keys.prefix))
        assert np.argsort(packed, kind="stable").tolist() == sorted(range(len(ids)), key=lambda i: suffix[i])


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.one_of(st.none(), st.text(alphabet=st.sampled_from(
    ["a", "Z", "0", "9", " ", "\t", "\n", "\u00a0", "\u2003", "\u3000", "\u200b", "é", "-", "_"]), max_size=5)),
    max_size=40), cut=st.integers(0, 40))
def test_one_id_screen_equals_the_blank_and_padded_screens(values, cut):
    """The id columns' one screen flags exactly what the blank-or-null and the padded screens flag together
    (Python's whitespace, Unicode spaces that are not whitespace, empty strings, nulls, across chunks)."""
    from refundguard.sources import _blank_null_or_padded, _blank_or_null, _padded

    a = pa.chunked_array([pa.array(values[:cut], type=pa.string()), pa.array(values[cut:], type=pa.string())])
    want = _blank_or_null(a) | _padded(a)
    assert _blank_null_or_padded(a).tolist() == want.tolist()
    assert want.tolist() == [v is None or not v.strip() or v != v.strip() for v in values]
    # each screen alone, by Python's rule (the three share one screen of the strings)
    assert _blank_or_null(a).tolist() == [v is None or not v.strip() for v in values]
    assert _padded(a).tolist() == [v is not None and v != v.strip() for v in values]


@settings(max_examples=150, deadline=None)
@given(digits=st.integers(1, 8), start=st.integers(0, 10**8), n=st.integers(1, 80), prefix=st.sampled_from(["", "o", "o0"]),
       cut=st.integers(0, 80), data=st.data())
def test_gapless_decimal_ids_join_by_subtraction_exactly(digits, start, n, prefix, cut, data):
    """Ids counting up by one in fixed-width decimal (an auto-increment key) join by ``number - first``;
    a gap, a byte outside the digits (``/`` and ``:`` sort next to them) or a broken count falls back
    to the search, and every path returns exactly the hash join's rows."""
    from refundguard.sources import _Keys

    start %= 10**digits
    n = min(n, 10**digits - start)
    ids = [f"{prefix}{x:0{digits}d}" for x in range(start, start + n)]
    broken = data.draw(st.sampled_from(["none", "gap", "colon", "slash"])) if n >= 3 else "none"
    if broken != "none":
        k = data.draw(st.integers(1, n - 2))
        tail = ids[k][len(prefix):]
        if broken == "gap":
            del ids[k]
        else:  # e.g. "09" < "0:" < "10": still sorted, still one width, the count still n - 1 apart
            ids[k] = prefix + tail[:-1] + (":" if broken == "colon" else "/")
            ids = sorted(set(ids))
    keys = _Keys.of(pa.chunked_array([pa.array(ids[:cut], type=pa.string()), pa.array(ids[cut:], type=pa.string())]))
    nums = [int(x[len(prefix):]) if x[len(prefix):].isdigit() else None for x in ids]
    gapless = None not in nums and nums == list(range(nums[0], nums[0] + len(nums)))
    if gapless and len(keys.prefix) < len(ids[0]):  # (the keys' prefix may take leading digits too)
        assert keys.first == int(ids[0][len(keys.prefix):])
    elif not gapless:
        assert keys.first is None
    width = len(ids[0])
    chars = "0123456789/:o~"
    refs = ids + data.draw(st.lists(st.text(chars, min_size=width, max_size=width), max_size=30))
    refs += [f"{prefix}{x:0{digits}d}" for x in (start - 1, start + n, start + n + 1) if 0 <= x < 10**digits]
    want = {v: i for i, v in enumerate(ids)}
    got = keys.rows(pa.chunked_array([pa.array(refs, type=pa.string())]))
    assert got.tolist() == [want.get(r, -1) for r in refs]


def test_digit_screen_reads_every_step(monkeypatch):
    """The packed keys' digit screen runs a step at a time: a byte outside the digits in any step fails it."""
    import refundguard.sources as sources

    monkeypatch.setattr(sources, "_DIGIT_KEYS_STEP", 3)
    ids = [f"o{x:04d}" for x in range(20)]
    raw = np.array([x.encode() for x in ids], dtype="S5")
    assert sources._all_digits(sources._pack(raw, 1), 4)
    for k in (0, 2, 3, 11, 19):
        bad = raw.copy()
        bad[k] = bad[k][:4] + (b":" if k % 2 else b"/")
        assert not sources._all_digits(sources._pack(bad, 1), 4), k


@given(seed=st.integers(0, 2**32 - 1), group=st.integers(1, 40), sort=st.booleans(), n_ranges=st.integers(1, 3))
@settings(max_examples=40, deadline=None)
def test_window_scan_keeps_exactly_the_rows_in_a_range(tmp_path_factory, seed, group, sort, n_ranges):
    """A window scan skips row groups by their statistics and masks the rest in NumPy: it returns exactly
    the rows a mask over the whole table keeps (nulls never inside), in file order, any row-group size."""
    from refundguard.sources import _Columns, _dataset, _TimeFilter

    rng = np.random.default_rng(seed)
    n = 120
    base = pd.Timestamp("2024-06-01").value
    hour = 3_600 * 10**9
    frame = pd.DataFrame({c: pd.to_datetime(base + rng.integers(0, 100, n) * hour) for c in ("a", "b", "c")})
    frame["s"] = rng.choice(["x", "y", None], n)
    for c in ("a", "b", "c"):
        frame.loc[rng.random(n) < 0.1, c] = pd.NaT
    if sort:  # time-sorted files: row groups the window misses are skipped
        frame = frame.sort_values("a", na_position="last", kind="stable").reset_index(drop=True)
    folder = tmp_path_factory.mktemp("scan")
    t = pa.Table.from_pandas(frame, preserve_index=False)
    pq.write_table(t.slice(0, n // 3), folder / "p0.parquet", row_group_size=group)
    pq.write_table(t.slice(n // 3), folder / "p1.parquet", row_group_size=group)
    ranges = []
    for _ in range(n_ranges):
        lo = int(rng.integers(-5, 105))
        ranges.append((str(rng.choice(["a", "b", "c"])), base + lo * hour, base + (lo + int(rng.integers(0, 30))) * hour))
    where = _TimeFilter(tuple(ranges))
    got = _Columns("t", dataset=_dataset(folder)).scan(["s", "a"], where=where, dictionary=["s"])
    keep = np.zeros(n, dtype=bool)
    for col, lo, hi in ranges:
        ns = frame[col].to_numpy().astype("int64")
        keep |= frame[col].notna().to_numpy() & (ns >= lo) & (ns < hi)
    assert got.column_names == ["s", "a"] and pa.types.is_dictionary(got.schema.field("s").type)
    assert got.column("s").cast(pa.string()).to_pylist() == t.column("s").filter(pa.array(keep)).to_pylist()
    assert got.column("a").to_pylist() == t.column("a").filter(pa.array(keep)).to_pylist()


def test_window_scan_skips_row_groups_outside_the_window(tmp_path):
    """On time-sorted files a narrow window reads only the row groups that may hold it."""
    from refundguard.sources import _Columns, _dataset, _TimeFilter

    ns = pd.Timestamp("2024-06-01").value + np.arange(1_000, dtype=np.int64) * 10**9
    pq.write_table(pa.table({"t": pa.array(ns, type=pa.timestamp("ns"))}), tmp_path / "p.parquet", row_group_size=100)
    c = _Columns("t", dataset=_dataset(tmp_path))
    where = _TimeFilter((("t", int(ns[250]), int(ns[260])),))
    frag = next(iter(c.dataset.get_fragments()))
    assert frag.subset(filter=where.expression(c.dataset.schema)).num_row_groups == 1
    assert c.scan(["t"], where=where).column(0).to_numpy().astype("int64").tolist() == ns[250:260].tolist()


def test_store_scores_from_parquet_columns_equal_store_scores(folder):
    """Reading only the score's columns as integer codes gives exactly store_scores (and the history)."""
    from refundguard.scores import coded_store_scores, coded_store_scores_as_of
    from refundguard.sources import read_store_events

    tables = rg.validate(rg.load_tables(folder))[0]
    as_of = pd.Timestamp("2024-09-15")
    want = rg.store_scores(tables, as_of)
    lo, hi = (pd.Timestamp("2024-08-16", tz="UTC").value, pd.Timestamp("2024-09-15", tz="UTC").value)
    for events in (read_store_events(folder, threads=2), read_store_events(folder, window=(lo, hi))):
        got = coded_store_scores_as_of(events, as_of)
        pd.testing.assert_frame_equal(got.drop(columns="score_config_hash"), want.drop(columns="score_config_hash"))
    # per request: the history row of the request's store and day
    events = read_store_events(folder)
    req = requests_from_tables(tables, "2024-09-01", "2024-09-08")
    codes = pd.Index(events.store_ids).get_indexer(req["store_id"])
    got = coded_store_scores(events, codes, req["requested_at"].array.asi8)
    ref = rg.scores.store_scores_for_requests(tables, req[["requested_at", "store_id"]]).reset_index(drop=True)
    pd.testing.assert_frame_equal(got, ref.drop(columns="score_day"), check_dtype=False)


def _random_coded_events(rng: np.random.Generator, n_stores: int, n_days: int, t0: int):
    """Integer-coded store events over ``n_days`` from ``t0`` (UTC ns): missing instants, late and
    early resolutions and escalations, low and high ratings, slow and fast chats."""
    from refundguard._time import NAT
    from refundguard.scores import CodedStoreEvents

    day = 86_400 * 10**9

    def instants(n, base, p_missing, lo=0.0, hi=3.0):
        out = base + (rng.uniform(lo, hi, n) * day).astype(np.int64)
        out[rng.random(n) < p_missing] = NAT
        return out

    n_o = int(rng.integers(0, 400))
    paid = t0 + (rng.uniform(0, n_days, n_o) * day).astype(np.int64)
    ship_by = instants(n_o, paid, 0.1, 0.5, 3)
    shipped = instants(n_o, paid, 0.2, 0, 4)
    delivered = instants(n_o, paid, 0.3, 1, 12)
    n_r = int(rng.integers(0, 150))
    r_order = rng.integers(0, max(n_o, 1), n_r) if n_o else np.zeros(0, dtype=np.int64)
    r_req = instants(n_r, paid[r_order] if n_o else np.zeros(n_r, dtype=np.int64), 0.0, 0, 20)
    r_res = instants(n_r, r_req, 0.3, 0, 45)  # some resolved after the window's end
    esc = rng.random(n_r) < 0.3
    esc_at = np.where(esc, instants(n_r, r_req, 0.5, 0, 40), NAT)
    n_v = int(rng.integers(0, 200))
    v_order = rng.integers(0, max(n_o, 1), n_v) if n_o else np.zeros(0, dtype=np.int64)
    n_s = int(rng.integers(0, 100))
    o_store = rng.integers(0, n_stores, n_o).astype(np.int32)
    req_ok = r_req[r_req != NAT]
    return CodedStoreEvents(
        store_ids=np.array([f"s{k}" for k in range(n_stores)], dtype=object),
        categories=np.array(["apparel", "books", "home"], dtype=object),
        o_store=o_store, o_category=rng.integers(0, 3, n_o).astype(np.int32),
        o_paid=paid, o_ship_by=ship_by, o_shipped=shipped, o_delivered=delivered,
        r_store=o_store[r_order] if n_o else np.zeros(0, dtype=np.int32), r_requested=r_req, r_resolved=r_res,
        r_escalation_known=np.where(esc_at != NAT, esc_at, r_res), r_reason=rng.integers(0, 5, n_r).astype(np.int8),
        r_escalated=esc,
        v_store=o_store[v_order] if n_o else np.zeros(0, dtype=np.int32),
        v_created=instants(n_v, paid[v_order] if n_o else np.zeros(n_v, dtype=np.int64), 0.0, 1, 25),
        v_rating=rng.choice([1.0, 3.0, 4.0, 5.0, np.nan], n_v),
        s_store=rng.integers(0, n_stores, n_s).astype(np.int32),
        s_started=t0 + (rng.uniform(0, n_days, n_s) * day).astype(np.int64),
        s_first_response=rng.choice([5.0, 60.0, 400.0, np.nan], n_s),
        first_refund_ns=int(req_ok.min()) if len(req_ok) else NAT,
    )


@given(seed=st.integers(0, 2**32 - 1), window=st.sampled_from([1, 3, 7, 30]),
       tz=st.sampled_from(["UTC", "Asia/Shanghai", "America/New_York"]), data=st.data())
@settings(max_examples=60, deadline=None)
def test_store_score_sweep_equals_scoring_each_block_on_its_own(seed, window, tz, data):
    """StoreScoreSweep reads each event once and carries the window's sums from block to block: every
    block's rows are exactly coded_store_scores of that block alone (which reads the window before it
    again), whatever the blocks, the gaps between them (shorter and longer than the window) and the
    time zone; a request before the sweep's days is refused."""
    from refundguard.scores import StoreScoreSweep, coded_store_scores

    rng = np.random.default_rng(seed)
    n_stores, n_days = int(rng.integers(1, 6)), 70
    t0 = pd.Timestamp("2024-03-01", tz="UTC").value
    events = _random_coded_events(rng, n_stores, n_days, t0)
    cfg = ScoreConfig(window_days=window, timezone=tz, min_orders=int(rng.integers(1, 4)))
    # requests: a few per day on random days, then cut into consecutive blocks at day boundaries
    req_days = np.unique(rng.integers(0, n_days + 10, int(rng.integers(1, 40))))
    cuts = sorted(set(data.draw(st.lists(st.integers(1, max(1, len(req_days) - 1)), max_size=6))))
    day_ns = 86_400 * 10**9
    sweep = StoreScoreSweep(events, cfg)
    for block in np.split(req_days, cuts):
        if not len(block):
            continue
        local = (pd.DatetimeIndex(pd.to_datetime(t0) + pd.to_timedelta(block, unit="D")).tz_localize("UTC")
                 .tz_convert(tz))
        # a request at the local midnight, one in the day, one at the last instant of a 23-hour day
        start = np.repeat(local.normalize().asi8, 3)
        t = start + np.tile([0, day_ns // 3, 23 * 3600 * 10**9 - 1], len(block))
        t = np.sort(t)
        store = rng.integers(-1, n_stores, len(t))
        got = sweep.scores(store, t)
        want = coded_store_scores(events, store, t, cfg)
        pd.testing.assert_frame_equal(got, want)
    with pytest.raises(ConfigError, match="StoreScoreSweep"):
        sweep.scores(np.array([0]), np.array([t0], dtype=np.int64))


def test_id_columns_are_read_as_parquet_dictionaries(folder, tmp_path):
    """dictionary=True really reads Parquet's dictionaries (no per-row hashing), and codes them as the strings would."""
    from refundguard.sources import _Columns, _dataset, _encode

    t = pq.read_table(folder / "orders" if (folder / "orders").is_dir() else folder / "orders.parquet")
    ids = t.column("store_id").combine_chunks()
    rows = len(ids)
    col = pa.array([None if i % 97 == 0 else ("  " if i % 89 == 0 else v) for i, v in enumerate(ids.to_pylist())],
                   type=pa.string())
    (tmp_path / "t").mkdir()
    for k, part in enumerate((col.slice(0, rows // 3), col.slice(rows // 3))):  # two files, two dictionaries
        pq.write_table(pa.table({"store_id": part}), tmp_path / "t" / f"part-{k}.parquet", row_group_size=500)
    cols = _Columns("orders", dataset=_dataset(tmp_path / "t"))
    got = cols.get("store_id", dictionary=True)
    assert pa.types.is_dictionary(got.type)
    (codes,), d = _encode(got)
    (want,), dw = _encode(cols.get("store_id"))
    assert d.equals(dw)
    np.testing.assert_array_equal(codes, want)
    back = np.asarray(d.to_pylist() + [None], dtype=object)[codes]
    assert back.tolist() == [None if v is None or not v.strip() else v for v in col.to_pylist()]


@given(seed=st.integers(0, 2**32 - 1), naive=st.booleans(), nudge=st.sampled_from([-1, 0, 1]))
@settings(max_examples=25, deadline=None)
def test_store_events_window_filter_keeps_exactly_the_window_rows(tmp_path_factory, seed: int, naive: bool,
                                                                  nudge: int) -> None:
    """read_store_events(window=...) reads reviews and chats through a scan filter: it keeps exactly the rows a
    mask over everything keeps, with edges on event times (ties on a 6-hour grid), ids not in time order, and
    naive (UTC) or tz-aware columns."""
    from refundguard.sources import read_store_events

    rng = np.random.default_rng(seed)
    base = pd.Timestamp("2024-06-01", tz="UTC").value
    six_h = 6 * 3_600 * 10**9

    def times(n: int) -> pd.Series:
        s = pd.Series(pd.to_datetime(base + rng.integers(0, 40, n) * six_h, utc=True))
        s[rng.random(n) < 0.05] = pd.NaT
        return s.dt.tz_localize(None) if naive else s

    n_o = 60
    paid = pd.Series(pd.to_datetime(base + rng.integers(0, 30, n_o) * six_h, utc=True))
    orders = pd.DataFrame({"order_id": [f"o{i}" for i in rng.permutation(n_o)], "store_id": [f"s{i}" for i in
                           rng.integers(0, 4, n_o)], "category": rng.choice(["a", "b"], n_o), "paid_at": paid,
                           "ship_by": paid + pd.Timedelta(hours=48), "shipped_at": paid + pd.Timedelta(hours=30),
                           "delivered_at": paid + pd.Timedelta(hours=90)})
    n_r, n_v, n_s = 15, 40, 40
    refunds = pd.DataFrame({"order_id": orders["order_id"].to_numpy()[rng.integers(0, n_o, n_r)],
                            "requested_at": paid.to_numpy()[:n_r], "reason": ["quality"] * n_r,
                            "resolved_at": pd.Series(paid.to_numpy()[:n_r]) + pd.Timedelta(hours=20),
                            "escalated": rng.random(n_r) < 0.3})
    reviews = pd.DataFrame({"order_id": orders["order_id"].to_numpy()[rng.integers(0, n_o, n_v)],
                            "rating": rng.integers(1, 6, n_v), "created_at": times(n_v)})
    service = pd.DataFrame({"store_id": [f"s{i}" for i in rng.integers(0, 5, n_s)], "started_at": times(n_s),
                            "first_response_s": rng.exponential(100.0, n_s)})
    folder = tmp_path_factory.mktemp("window")
    for name, df in {"orders": orders, "refunds": refunds, "reviews": reviews, "service": service}.items():
        (folder / name).mkdir()
        t = pa.Table.from_pandas(df, preserve_index=False)
        for k, part in enumerate((t.slice(0, len(df) // 2), t.slice(len(df) // 2))):
            pq.write_table(part, folder / name / f"part-{k}.parquet")
    edges = np.sort(rng.choice(np.arange(40), 2, replace=False)) * six_h + base + nudge
    whole = read_store_events(folder)
    got = read_store_events(folder, window=(int(edges[0]), int(edges[1])))
    from refundguard.sources import _orders_window_filter, _parquet_tables, _window_filter

    cols = _parquet_tables(folder)
    assert _window_filter(cols["reviews"], "created_at", (0, 1)) is not None  # the scan filter is what is tested
    assert _window_filter(cols["service"], "started_at", (0, 1)) is not None
    assert _orders_window_filter(cols["orders"], (0, 1)) is not None
    for prefix, col in (("v", "v_created"), ("s", "s_started")):
        keep = (getattr(whole, col) >= edges[0]) & (getattr(whole, col) < edges[1])
        assert keep.any() or len(getattr(got, col)) == 0
        for name in [f.name for f in __import__("dataclasses").fields(whole) if f.name.startswith(prefix + "_")]:
            want = getattr(whole, name)
            if name in ("s_store", "v_store"):  # store codes: compare the ids (the dictionaries may differ)
                want = np.asarray(whole.store_ids, dtype=object)[want]
                have = np.asarray(got.store_ids, dtype=object)[getattr(got, name)]
                assert have.tolist() == want[keep].tolist(), name
            else:
                np.testing.assert_array_equal(getattr(got, name), want[keep], err_msg=name)
    # refunds of the window keep their order's store; the orders kept include every order anchored in it
    r_keep = (whole.r_requested >= edges[0]) & (whole.r_requested < edges[1])
    ids = lambda ev, codes: np.asarray(ev.store_ids, dtype=object)[codes].tolist()  # noqa: E731
    assert ids(got, got.r_store) == ids(whole, whole.r_store[r_keep])

    def anchored(ev) -> list:
        m = np.zeros(len(ev.o_paid), dtype=bool)
        for a in (ev.o_paid, ev.o_ship_by, ev.o_delivered):
            m |= (a >= edges[0]) & (a < edges[1])
        cats = np.asarray(ev.categories, dtype=object)[ev.o_category[m]]
        return sorted(zip(ids(ev, ev.o_store[m]), cats, ev.o_paid[m], ev.o_ship_by[m], ev.o_shipped[m],
                          ev.o_delivered[m]))

    assert len(got.o_paid) <= len(whole.o_paid)
    assert anchored(got) == anchored(whole)


# --------------------------------------------------------------------------- memory pool
def _jemalloc_or_skip() -> pa.MemoryPool:
    try:
        return pa.jemalloc_memory_pool()
    except NotImplementedError:  # pragma: no cover - pyarrow built without jemalloc (Windows wheels)
        pytest.skip("this pyarrow has no jemalloc pool")


def test_a_batch_run_reads_and_writes_in_jemalloc_and_restores_the_default_pool(guard, folder, tmp_path, monkeypatch):
    """Arrow's pool during the run (seen from the runner, i.e. after the read) is jemalloc; afterwards it is
    the user's again, and tables the run returned stay valid."""
    from refundguard.batch import iter_slices_local, score_data

    _jemalloc_or_skip()
    monkeypatch.delenv("ARROW_DEFAULT_MEMORY_POOL", raising=False)
    before = pa.default_memory_pool()
    seen = []

    def runner(*args, **kwargs):
        seen.append(pa.default_memory_pool().backend_name)
        yield from iter_slices_local(*args, **kwargs)

    res, table = score_data(guard.batch_model(), folder, "2024-10-01", "2024-10-15", runner=runner)
    assert seen == ["jemalloc"]
    assert pa.default_memory_pool().backend_name == before.backend_name
    assert res.scored == table.num_rows > 0
    table.validate(full=True)  # buffers from the run's pool, freed into it later
    pq.write_table(table, tmp_path / "t.parquet")
    back = pq.read_table(tmp_path / "t.parquet")
    for c in ("refund_id", "action", "reasons"):
        assert back.column(c).to_pylist() == table.column(c).to_pylist(), c
    assert np.array_equal(back.column("abuse_probability").to_numpy(), table.column("abuse_probability").to_numpy(),
                          equal_nan=True)


def test_the_batch_pool_leaves_a_pool_the_user_chose(monkeypatch):
    from refundguard.batch import arrow_batch_pool

    _jemalloc_or_skip()
    monkeypatch.setenv("ARROW_DEFAULT_MEMORY_POOL", "system")
    before = pa.default_memory_pool().backend_name
    with arrow_batch_pool():
        assert pa.default_memory_pool().backend_name == before
    assert pa.default_memory_pool().backend_name == before


def test_concurrent_batch_runs_share_the_pool_switch_and_the_last_restores_it(monkeypatch):
    """Runs on several threads: the pool is jemalloc while any is inside, the user's once all have left
    (in any order: the first to leave does not restore it under the others)."""
    import threading

    from refundguard.batch import arrow_batch_pool

    _jemalloc_or_skip()
    monkeypatch.delenv("ARROW_DEFAULT_MEMORY_POOL", raising=False)
    before = pa.default_memory_pool().backend_name
    entered, leave = threading.Barrier(3), [threading.Event(), threading.Event()]
    inside: list[str] = []

    def run(k: int) -> None:
        with arrow_batch_pool():
            entered.wait()
            leave[k].wait()
            inside.append(pa.default_memory_pool().backend_name)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    entered.wait()
    leave[0].set()
    threads[0].join()
    assert pa.default_memory_pool().backend_name == "jemalloc"  # the other run is still inside
    leave[1].set()
    threads[1].join()
    assert inside == ["jemalloc", "jemalloc"]
    assert pa.default_memory_pool().backend_name == before
    with pytest.raises(RuntimeError), arrow_batch_pool():  # an error inside restores it too
        raise RuntimeError("boom")
    assert pa.default_memory_pool().backend_name == before


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.one_of(st.none(), st.integers(-2**62, 2**62)), max_size=6), min_size=1, max_size=5))
def test_timestamp_columns_convert_exactly_for_any_chunking(chunks) -> None:
    """Every chunking and null pattern gives the values in order (null: NAT for instants, NaN for floats)."""
    from refundguard._time import NAT
    from refundguard.sources import _f64, _ns

    col = pa.chunked_array([pa.array(c, type=pa.int64()) for c in chunks], type=pa.int64())
    ts = col.cast(pa.timestamp("ns", tz="UTC"))
    want = np.array([NAT if v is None else v for c in chunks for v in c], dtype=np.int64)
    assert np.array_equal(_ns(ts), want)
    small = [[None if v is None else v / 7 for v in c] for c in chunks]
    got = _f64(pa.chunked_array([pa.array(c, type=pa.float64()) for c in small], type=pa.float64()))
    exp = np.array([np.nan if v is None else v for c in small for v in c], dtype=np.float64)
    assert np.array_equal(got, exp, equal_nan=True)


def test_microsecond_timestamps_convert_to_ns() -> None:
    from refundguard.sources import _ns

    a = pa.chunked_array([pa.array([1, None], type=pa.timestamp("us")), pa.array([3], type=pa.timestamp("us"))])
    assert _ns(a).tolist() == [1_000, np.iinfo(np.int64).min, 3_000]


# --------------------------------------------------------------------------- memory bounded by the reach
@pytest.fixture(scope="module")
def long_folder(tmp_path_factory) -> Path:
    """800 days of a small marketplace: the last 60 are decided, the first ~370 lie beyond every window."""
    out = tmp_path_factory.mktemp("long") / "sim"
    simulate_to_parquet(SimulationConfig(n_buyers=800, n_stores=40, days=800, seed=31), out)
    return out


LONG_PERIOD = ("2026-06-01", "2026-08-01")  # (the simulation runs 2024-06-01 + 800 days = 2026-08-10)


def test_the_index_leaves_out_what_no_slice_reads_and_the_output_does_not_change(guard, long_folder, tmp_path,
                                                                                 monkeypatch):
    from refundguard._time import parameter_ns
    from refundguard.batch import _reach_rows, reach_ns
    from refundguard.profiles import MEDIAN_LAST_ORDERS
    from refundguard.sources import read_source

    model = guard.batch_model()
    lo, hi = (parameter_ns(x, "period", "test") for x in LONG_PERIOD)
    src = read_source(long_folder)
    o, r_order = src.orders, src.refunds["order"]
    reach = reach_ns(lo, model.score_config)
    keep = _reach_rows(o, r_order, reach, len(src.buyer_ids), lo)
    assert keep is not None
    old = (o["paid_at"] < reach) & (o["delivered_at"] < reach) & (o["ship_by"] < reach)
    assert old.sum() > 5_000 and (~keep).sum() > old.sum() // 2  # most old orders go
    assert keep[~old].all() and keep[r_order].all()
    # every buyer's first order and the old orders the median can read are kept: its last
    # MEDIAN_LAST_ORDERS - n old orders, n = the buyer's orders paid in [reach, start); nothing else old
    # but the pairs' first old orders and the refunds' orders
    paid_all = pd.Series(o["paid_at"])
    recent = pd.Series(o["buyer"])[(paid_all >= reach) & (paid_all < lo)].value_counts()
    frame = pd.DataFrame({"buyer": o["buyer"], "paid": o["paid_at"], "amount": o["amount"]})[old]
    frame["need"] = (MEDIAN_LAST_ORDERS - frame["buyer"].map(recent).fillna(0)).clip(lower=0).astype(int)
    need = frame.groupby("buyer")["need"].first()
    # both cases occur: buyers whose recent orders leave no old order to the median, and buyers with some
    assert (need == 0).sum() > 20 and ((need > 0) & (need < MEDIAN_LAST_ORDERS)).sum() > 20
    frame = frame.sort_values(["buyer", "paid", "amount"], kind="stable")
    rank_from_end = frame.groupby("buyer").cumcount(ascending=False)
    read = set(frame.groupby("buyer").head(1).index) | set(frame.index[rank_from_end < frame["need"]])
    assert all(keep[i] for i in read)  # what the kernel reads (its order: paid, amount, row)
    # kept: the rows of the first paid_at and from the need-th last paid_at on (ties included)
    paid = frame.groupby("buyer")["paid"]
    last_read = np.minimum(frame["need"], frame.groupby("buyer")["paid"].transform("size")) - 1
    kth = frame["paid"].where(rank_from_end == last_read).groupby(frame["buyer"]).transform("max")
    needed = set(frame.index[(frame["paid"] >= kth) | (frame["paid"] == paid.transform("min"))])
    assert read <= needed
    pairs = set()
    for key in ("device", "address"):
        f = pd.DataFrame({"k": o[key], "b": o["buyer"], "t": o["paid_at"]})[old]
        f = f[(f["k"] >= 0)].sort_values(["k", "b", "t"], kind="stable")
        pairs |= set(f.groupby(["k", "b"]).head(1).index)
    extra = set(np.flatnonzero(keep & old)) - needed - pairs - set(np.asarray(r_order).tolist())
    assert not extra
    # the output: the same bytes with and without leaving them out, for two slicings and two backends
    files = []
    for prune, jobs, backend, chunk in ((True, 1, "threads", 7), (False, 1, "threads", 7),
                                        (True, 2, "processes", 3)):
        monkeypatch.setattr("refundguard.batch.PRUNE_BEYOND_REACH", prune)
        out = tmp_path / f"scored-{prune}-{backend}-{chunk}.parquet"
        result = guard.score_history(long_folder, *LONG_PERIOD, out=out, jobs=jobs, backend=backend, chunk_days=chunk)
        assert result.scored > 300
        files.append(_sha(out))
    assert len(set(files)) == 1
