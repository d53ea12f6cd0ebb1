"""Store scores vs the same window aggregation in DuckDB SQL, in one run.

Generates seeded benchmark tables with a dedicated fast generator (simpler than
``refundguard.simulate``, which is built for realism, not for 10M rows in seconds),
then times:

* ``refundguard.store_scores(tables, as_of)``: window filter, per-store integer
  statistics, modal category, shrinkage, points, weights and publishing;
* the same window aggregation in DuckDB SQL over the same in-memory DataFrames:
  the per-store integer statistics and the modal category (no scoring step, so
  DuckDB does strictly less work).

It checks that both agree (every store, ``n_orders`` and category equal, every
indicator's raw value within 1e-9), and prints both times, the ratio and peak memory.

Usage::

    python benchmarks/bench_store_scores.py            # 30k stores x 10M orders
    python benchmarks/bench_store_scores.py --full     # 100k stores x 30M orders
    python benchmarks/bench_store_scores.py --quick    # 2k stores x 200k orders
    python benchmarks/bench_store_scores.py --duckdb-native   # DuckDB on its own tables
    python benchmarks/bench_store_scores.py --parquet         # from Parquet files, both sides

By default DuckDB scans the same in-memory data as Arrow tables (pandas' string and
timestamp columns convert without copying); ``--duckdb-native`` first copies them into
DuckDB's own columnar storage (not timed), DuckDB's best case.

``--parquet`` times the user's whole path instead: the tables are first written as
Parquet folders (ten parts per table, ids zero-padded to one width as the simulator
and most auto-increment keys write them; not timed), then

* refundguard reads only the store score's columns of those files
  (:func:`refundguard.sources.read_store_events`: projection, integer codes, refunds
  and reviews joined to their order once by integer row) and scores
  (:func:`refundguard.scores.coded_store_scores_as_of`), with as many threads as DuckDB;
* DuckDB runs the same SQL over ``read_parquet`` of the same files.

Both are timed from the files to the per-store result. Timestamps are nanoseconds:
DuckDB reads them as ``TIMESTAMP_NS``, whose epoch seconds are ``epoch_ns(x) // 10^9``
(DuckDB 2 refuses ``epoch_us`` on them).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from refundguard.scores import QUALITY_REASONS, store_scores

DAY_S = 86_400
START = pd.Timestamp("2024-06-01", tz="UTC")
REASONS = np.array(["not_received", "quality", "not_as_described", "damaged", "wrong_item", "changed_mind", "other"])
CATEGORIES = np.array(["apparel", "beauty", "books", "electronics", "food", "home", "sports", "toys"])


PAD = 0  # digits ids are zero-padded to (0: not padded); --parquet pads them like the simulator


def _ids(prefix: str, nums: np.ndarray) -> pd.Series:
    digits = pc.cast(pa.array(np.asarray(nums, dtype=np.int64)), pa.string())
    if PAD:
        digits = pc.utf8_lpad(digits, width=PAD, padding="0")
    a = pc.binary_join_element_wise(pa.scalar(prefix), digits, "")
    return a.to_pandas().astype("str")


def _labels(names: np.ndarray, codes: np.ndarray) -> pd.Series:
    return pa.array(names.tolist()).take(pa.array(np.asarray(codes, dtype=np.int64))).to_pandas().astype("str")


def _ts(seconds: np.ndarray) -> pd.Series:
    ns = START.value + seconds.astype(np.int64) * 10**9
    return pd.Series(pd.DatetimeIndex(ns.astype("datetime64[ns]"), tz="UTC"))


def make_tables(n_stores: int, n_orders: int, days: int = 180, seed: int = 0) -> dict[str, pd.DataFrame]:
    """Seeded contract tables: orders, refunds (10% of orders), reviews (40%), chats (30%)."""
    rng = np.random.default_rng(seed)
    span = days * DAY_S
    weights = rng.pareto(1.2, n_stores) + 0.05
    store = rng.choice(n_stores, size=n_orders, p=weights / weights.sum())
    store_cat = rng.integers(0, len(CATEGORIES), n_stores)
    cat = np.where(rng.random(n_orders) < 0.9, store_cat[store], rng.integers(0, len(CATEGORIES), n_orders))
    paid = rng.integers(0, span, n_orders)
    shipped = paid + rng.exponential(30 * 3600, n_orders).astype(np.int64)
    ship_na = rng.random(n_orders) < 0.02
    delivered = shipped + rng.exponential(72 * 3600, n_orders).astype(np.int64)
    deliv_na = ship_na | (rng.random(n_orders) < 0.05)
    order_ids = _ids("o", np.arange(n_orders))
    orders = pd.DataFrame(
        {
            "order_id": order_ids,
            "buyer_id": _ids("b", rng.integers(0, max(n_orders // 10, 1), n_orders)),
            "store_id": _ids("s", store),
            "category": _labels(CATEGORIES, cat),
            "amount": np.round(rng.gamma(2.0, 40.0, n_orders), 2),
            "paid_at": _ts(paid),
            "ship_by": _ts(paid + 48 * 3600),
            "shipped_at": _ts(shipped).where(~ship_na),
            "delivered_at": _ts(delivered).where(~deliv_na),
        }
    )
    n_ref = n_orders // 10
    ro = rng.choice(n_orders, size=n_ref, replace=False)
    req = paid[ro] + rng.integers(3600, 15 * DAY_S, n_ref)
    res = req + rng.exponential(48 * 3600, n_ref).astype(np.int64)
    res_na = rng.random(n_ref) < 0.1
    refunds = pd.DataFrame(
        {
            "refund_id": _ids("r", np.arange(n_ref)),
            "order_id": order_ids.iloc[ro].reset_index(drop=True),
            "requested_at": _ts(req),
            "kind": _labels(np.array(["refund_only", "return_and_refund"]), (rng.random(n_ref) >= 0.6).astype(np.int64)),
            "reason": _labels(REASONS, rng.integers(0, len(REASONS), n_ref)),
            "amount": np.round(orders["amount"].to_numpy()[ro] * 0.9, 2),
            "resolved_at": _ts(res).where(~res_na),
            "outcome": pd.Series(np.where(res_na, None, "refunded"), dtype="str"),
            "escalated": rng.random(n_ref) < 0.05,
        }
    )
    n_rev = int(n_orders * 0.4)
    vo = rng.choice(n_orders, size=n_rev, replace=False)
    reviews = pd.DataFrame(
        {
            "order_id": order_ids.iloc[vo].reset_index(drop=True),
            "rating": rng.choice(np.arange(1, 6), size=n_rev, p=[0.06, 0.04, 0.1, 0.25, 0.55]).astype(np.int64),
            "created_at": _ts(paid[vo] + rng.integers(2 * DAY_S, 20 * DAY_S, n_rev)),
        }
    )
    n_chat = int(n_orders * 0.3)
    service = pd.DataFrame(
        {
            "store_id": _ids("s", rng.choice(n_stores, size=n_chat, p=weights / weights.sum())),
            "started_at": _ts(rng.integers(0, span, n_chat)),
            "first_response_s": rng.exponential(120.0, n_chat),
        }
    )
    return {"orders": orders, "refunds": refunds, "reviews": reviews, "service": service}


SQL = """
WITH o AS (
  SELECT store_id,
    count(*) FILTER (WHERE paid_at >= $lo AND paid_at < $hi) AS n_orders,
    count(*) FILTER (WHERE ship_by >= $lo AND ship_by < $hi) AS pk_n,
    count(*) FILTER (WHERE ship_by >= $lo AND ship_by < $hi AND shipped_at <= ship_by) AS pk_ok,
    count(*) FILTER (WHERE delivered_at >= $lo AND delivered_at < $hi) AS dl_n,
    sum(epoch_ns(delivered_at) // 1000000000 - epoch_ns(paid_at) // 1000000000)
      FILTER (WHERE delivered_at >= $lo AND delivered_at < $hi) AS dl_sum_s
  FROM orders
  WHERE (paid_at >= $lo AND paid_at < $hi) OR (ship_by >= $lo AND ship_by < $hi) OR (delivered_at >= $lo AND delivered_at < $hi)
  GROUP BY store_id),
cat AS (
  SELECT store_id, category FROM (
    SELECT store_id, category, row_number() OVER (PARTITION BY store_id ORDER BY count(*) DESC, category) AS k
    FROM orders WHERE paid_at >= $lo AND paid_at < $hi GROUP BY store_id, category)
  WHERE k = 1),
r AS (
  SELECT o.store_id,
    count(*) AS rf_n,
    count(*) FILTER (WHERE r.reason IN {quality}) AS qr_n,
    sum(CASE WHEN r.resolved_at < $hi THEN epoch_ns(r.resolved_at) // 1000000000
             ELSE epoch_us($hi) // 1000000 END - epoch_ns(r.requested_at) // 1000000000) AS rf_sum_s,
    count(*) FILTER (WHERE r.escalated AND r.resolved_at < $hi) AS dp_n
  FROM refunds r JOIN orders o USING (order_id)
  WHERE r.requested_at >= $lo AND r.requested_at < $hi
  GROUP BY o.store_id),
v AS (
  SELECT o.store_id, count(*) AS rv_n, count(*) FILTER (WHERE v.rating >= 4) AS rv_good
  FROM reviews v JOIN orders o USING (order_id)
  WHERE v.created_at >= $lo AND v.created_at < $hi
  GROUP BY o.store_id),
s AS (
  SELECT store_id, count(*) AS sv_n, count(*) FILTER (WHERE first_response_s <= 180) AS sv_ok
  FROM service WHERE started_at >= $lo AND started_at < $hi GROUP BY store_id),
ids AS (SELECT store_id FROM o UNION SELECT store_id FROM r UNION SELECT store_id FROM v UNION SELECT store_id FROM s)
SELECT ids.store_id, cat.category,
  coalesce(n_orders, 0) AS n_orders, coalesce(pk_n, 0) AS pk_n, coalesce(pk_ok, 0) AS pk_ok,
  coalesce(dl_n, 0) AS dl_n, coalesce(dl_sum_s, 0) AS dl_sum_s,
  coalesce(rf_n, 0) AS rf_n, coalesce(qr_n, 0) AS qr_n, coalesce(rf_sum_s, 0) AS rf_sum_s, coalesce(dp_n, 0) AS dp_n,
  coalesce(rv_n, 0) AS rv_n, coalesce(rv_good, 0) AS rv_good, coalesce(sv_n, 0) AS sv_n, coalesce(sv_ok, 0) AS sv_ok
FROM ids LEFT JOIN o USING (store_id) LEFT JOIN cat USING (store_id) LEFT JOIN r USING (store_id)
  LEFT JOIN v USING (store_id) LEFT JOIN s USING (store_id)
ORDER BY ids.store_id
""".replace("{quality}", "(" + ", ".join(f"'{r}'" for r in QUALITY_REASONS) + ")")


def duckdb_scores(con, lo: pd.Timestamp, hi: pd.Timestamp) -> pd.DataFrame:
    return con.execute(SQL, {"lo": lo.to_pydatetime(), "hi": hi.to_pydatetime()}).df()


def check_agree(ours: pd.DataFrame, duck: pd.DataFrame) -> None:
    """Raise AssertionError unless both computations agree."""
    assert len(ours) == len(duck), (len(ours), len(duck))
    a = ours.set_index("store_id").sort_index()
    b = duck.set_index("store_id").sort_index()
    assert (a.index == b.index).all(), "store sets differ"
    assert (a["n_orders"].to_numpy() == b["n_orders"].to_numpy()).all(), "n_orders differ"
    ca = a["category"].fillna("").to_numpy(dtype=object)
    cb = b["category"].fillna("").to_numpy(dtype=object)
    assert (ca == cb).all(), "categories differ"

    def close(x: np.ndarray, y: np.ndarray, name: str) -> None:
        both_nan = np.isnan(x) & np.isnan(y)
        ok = both_nan | (np.abs(x - y) <= 1e-9 * np.maximum(1.0, np.abs(y)))
        assert ok.all(), f"{name}: {int((~ok).sum())} stores differ"

    with np.errstate(invalid="ignore", divide="ignore"):
        f = lambda c: b[c].to_numpy(dtype="float64")  # noqa: E731
        close(a["good_review_rate_raw"].to_numpy(), f("rv_good") / np.where(f("rv_n") > 0, f("rv_n"), np.nan), "good_review_rate")
        close(a["pickup_48h_rate_raw"].to_numpy(), f("pk_ok") / np.where(f("pk_n") > 0, f("pk_n"), np.nan), "pickup_48h_rate")
        close(a["delivery_hours_raw"].to_numpy(), f("dl_sum_s") / (np.where(f("dl_n") > 0, f("dl_n"), np.nan) * 3600.0), "delivery_hours")
        close(a["quality_refund_rate_raw"].to_numpy(), f("qr_n") / np.where(f("n_orders") > 0, f("n_orders"), np.nan), "quality_refund_rate")
        close(a["refund_handling_hours_raw"].to_numpy(), f("rf_sum_s") / (np.where(f("rf_n") > 0, f("rf_n"), np.nan) * 3600.0), "refund_handling_hours")
        close(a["dispute_rate_raw"].to_numpy(), f("dp_n") / np.where(f("n_orders") > 0, f("n_orders"), np.nan), "dispute_rate")
        close(a["response_3min_rate_raw"].to_numpy(), f("sv_ok") / np.where(f("sv_n") > 0, f("sv_n"), np.nan), "response_3min_rate")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def write_parquet(tables: dict[str, pd.DataFrame], folder: Path, parts: int = 10) -> None:
    """Each table as a folder of ``parts`` Parquet files (like the simulator writes)."""
    import pyarrow.parquet as pq

    for name, df in tables.items():
        (folder / name).mkdir(parents=True)
        table = pa.Table.from_pandas(df, preserve_index=False)
        step = -(-table.num_rows // parts)
        for k in range(parts):
            pq.write_table(table.slice(k * step, step), folder / name / f"part-{k:05d}.parquet")


def parquet_main(args: argparse.Namespace, n_stores: int, n_orders: int) -> None:
    """Store scores from the Parquet files vs the DuckDB query over the same files, same run."""
    import duckdb

    from refundguard.scores import coded_store_scores_as_of
    from refundguard.sources import read_store_events

    global PAD
    PAD = len(str(n_orders))
    tables = make_tables(n_stores, n_orders)
    folder = Path(tempfile.mkdtemp(prefix="bench-store-scores-"))
    try:
        write_parquet(tables, folder)
        size = sum(f.stat().st_size for f in folder.rglob("*.parquet")) / 1e6
        print(f"tables: {n_stores:,d} stores, {len(tables['orders']):,d} orders, {len(tables['refunds']):,d} refunds, "
              f"{len(tables['reviews']):,d} reviews, {len(tables['service']):,d} chats; {size:,.0f} MB of Parquet in {folder}")
        del tables
        as_of = START + pd.Timedelta(days=120)
        lo = as_of - pd.Timedelta(days=30)
        con = duckdb.connect()
        if args.threads:
            con.execute(f"SET threads = {args.threads}")
        threads = int(con.execute("SELECT current_setting('threads')").fetchone()[0])
        for name in ("orders", "refunds", "reviews", "service"):
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet('{folder / name}/*.parquet')")

        ours_t, duck_t = [], []
        for _ in range(args.repeat):
            t = time.perf_counter()
            window = (lo.value, as_of.value)  # the as_of's 30 days: only its events are joined
            ours = coded_store_scores_as_of(read_store_events(folder, threads=threads, window=window), as_of)
            ours_t.append(time.perf_counter() - t)
            t = time.perf_counter()
            duck = duckdb_scores(con, lo, as_of)
            duck_t.append(time.perf_counter() - t)
        check_agree(ours, duck)
        best_o, best_d = min(ours_t), min(duck_t)
        med_o, med_d = float(np.median(ours_t)), float(np.median(duck_t))
        print(f"as_of {as_of.date()}, window 30 days: {len(ours):,d} stores scored; results agree")
        print(f"refundguard, Parquet files -> scores ({threads} threads): {best_o:7.3f} s  "
              f"(best of {args.repeat}; all {', '.join(f'{x:.3f}' for x in ours_t)})")
        print(f"DuckDB SQL over read_parquet ({threads} threads)  : {best_d:7.3f} s  "
              f"(best of {args.repeat}; all {', '.join(f'{x:.3f}' for x in duck_t)})")
        print(f"ratio refundguard / DuckDB = {best_o / best_d:.2f} best, {med_o / med_d:.2f} median  (goal <= 1.00); "
              f"peak RSS {_peak_rss_mb():,.0f} MB; load average {os.getloadavg()[0]:.1f}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description="store_scores vs DuckDB SQL")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--full", action="store_true", help="100k stores x 30M orders")
    g.add_argument("--quick", action="store_true", help="2k stores x 200k orders")
    ap.add_argument("--repeat", type=int, default=3, help="timed repetitions (best is reported)")
    ap.add_argument("--threads", type=int, default=None, help="DuckDB threads (default: all cores)")
    ap.add_argument(
        "--duckdb-native",
        action="store_true",
        help="copy the tables into DuckDB's own storage first (copy not timed): the strictest comparison",
    )
    ap.add_argument("--parquet", action="store_true",
                    help="from Parquet files to scores: refundguard vs DuckDB over the same files")
    args = ap.parse_args()
    n_stores, n_orders = (100_000, 30_000_000) if args.full else (2_000, 200_000) if args.quick else (30_000, 10_000_000)
    if args.parquet:
        parquet_main(args, n_stores, n_orders)
        return

    import duckdb

    t0 = time.perf_counter()
    tables = make_tables(n_stores, n_orders)
    gen_s = time.perf_counter() - t0
    print(
        f"tables: {n_stores:,d} stores, {len(tables['orders']):,d} orders, {len(tables['refunds']):,d} refunds, "
        f"{len(tables['reviews']):,d} reviews, {len(tables['service']):,d} chats  (generated in {gen_s:.1f} s)"
    )
    as_of = START + pd.Timedelta(days=120)
    lo = as_of - pd.Timedelta(days=30)
    rss_before = _peak_rss_mb()

    ours_t = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        ours = store_scores(tables, as_of)
        ours_t.append(time.perf_counter() - t)
    rss_ours = _peak_rss_mb()

    con = duckdb.connect()
    if args.threads:
        con.execute(f"SET threads = {args.threads}")
    # DuckDB scans Arrow natively; pandas' arrow-backed columns convert without copying the data
    for name, df in tables.items():
        if args.duckdb_native:
            con.register(f"{name}_arrow", pa.Table.from_pandas(df, preserve_index=False))
            con.execute(f"CREATE TABLE {name} AS SELECT * FROM {name}_arrow")
            con.unregister(f"{name}_arrow")
        else:
            con.register(name, pa.Table.from_pandas(df, preserve_index=False))
    duck_t = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        duck = duckdb_scores(con, lo, as_of)
        duck_t.append(time.perf_counter() - t)
    rss_duck = _peak_rss_mb()

    check_agree(ours, duck)
    best_o, best_d = min(ours_t), min(duck_t)
    threads = con.execute("SELECT current_setting('threads')").fetchone()[0]
    print(f"as_of {as_of.date()}, window 30 days: {len(ours):,d} stores scored; results agree")
    print(f"refundguard.store_scores            : {best_o:7.3f} s  (best of {args.repeat}; all {', '.join(f'{x:.3f}' for x in ours_t)})")
    where = "native tables" if args.duckdb_native else "over Arrow"
    print(f"DuckDB SQL ({threads} threads, {where}): {best_d:7.3f} s  (best of {args.repeat}; all {', '.join(f'{x:.3f}' for x in duck_t)})")
    print(f"ratio store_scores / DuckDB = {best_o / best_d:.2f}  (goal <= 1.00)")
    print(f"peak RSS: after tables {rss_before:,.0f} MB, after store_scores {rss_ours:,.0f} MB, after DuckDB {rss_duck:,.0f} MB")


if __name__ == "__main__":
    main()
