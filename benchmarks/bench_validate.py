"""Validation speed: refundguard.validate versus a plain-pandas check of the main rules, same run.

    python benchmarks/bench_validate.py [--orders 2000000]

Tables: ``--orders`` orders (30k stores, 200k buyers), a refund and a review for
every tenth order, as text ids and tz-aware timestamps, the way ``load_tables``
hands Parquet data over. The baseline is what one would write by hand: coerce each
contract column (``to_datetime``/``to_numeric``), flag duplicated ids, unknown
order ids (``isin``) and the time-order rules, with no rejects table and no
quarantine accounting. ``validate`` does all of that plus every other rule, the
rejects table and the clean copies.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from refundguard.tables import validate


def make_tables(n: int, seed: int = 0) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    paid = pd.Timestamp("2024-06-01", tz="UTC") + pd.to_timedelta(rng.integers(0, 180 * 86400, n), unit="s")
    orders = pd.DataFrame({
        "order_id": pd.Series(np.char.add("o", np.arange(n).astype(str)), dtype="str"),
        "buyer_id": pd.Series(np.char.add("b", rng.integers(0, 200_000, n).astype(str)), dtype="str"),
        "store_id": pd.Series(np.char.add("s", rng.integers(0, 30_000, n).astype(str)), dtype="str"),
        "category": pd.Series(rng.choice(["apparel", "books", "home"], n), dtype="str"),
        "amount": np.round(rng.random(n) * 100, 2),
        "paid_at": paid,
        "shipped_at": paid + pd.Timedelta(hours=3),
        "delivered_at": paid + pd.Timedelta(hours=50),
    })
    m = n // 10
    refunds = pd.DataFrame({
        "refund_id": pd.Series(np.char.add("r", np.arange(m).astype(str)), dtype="str"),
        "order_id": orders["order_id"][:m].reset_index(drop=True),
        "requested_at": paid[:m] + pd.Timedelta(days=3),
        "kind": pd.Series(["refund_only"] * m, dtype="str"),
        "reason": pd.Series(["quality"] * m, dtype="str"),
        "amount": orders["amount"][:m] / 2 + 0.01,
        "resolved_at": paid[:m] + pd.Timedelta(days=4),
        "outcome": pd.Series(["refunded"] * m, dtype="str"),
        "escalated": np.zeros(m, bool),
    })
    reviews = pd.DataFrame({"order_id": orders["order_id"][:m], "rating": rng.integers(1, 6, m),
                            "created_at": paid[:m] + pd.Timedelta(days=5)})
    return {"orders": orders, "refunds": refunds, "reviews": reviews}


def plain(tables: dict[str, pd.DataFrame]) -> int:
    """The main rules by hand: coercion, unique ids, foreign keys, time order. Returns the bad-row count."""
    o, r, v = tables["orders"], tables["refunds"], tables["reviews"]
    bad = 0
    paid = pd.to_datetime(o["paid_at"], utc=True)
    shipped = pd.to_datetime(o["shipped_at"], utc=True)
    delivered = pd.to_datetime(o["delivered_at"], utc=True)
    amount = pd.to_numeric(o["amount"], errors="coerce")
    bad += int((o["order_id"].duplicated(keep=False) | (amount < 0) | (shipped < paid) | (delivered < shipped)).sum())
    ra = pd.to_numeric(r["amount"], errors="coerce")
    req = pd.to_datetime(r["requested_at"], utc=True)
    res = pd.to_datetime(r["resolved_at"], utc=True)
    bad += int((r["refund_id"].duplicated(keep=False) | ~r["order_id"].isin(o["order_id"]) | (ra <= 0)
                | (res < req)).sum())
    bad += int((~v["order_id"].isin(o["order_id"]) | ~v["rating"].between(1, 5)).sum())
    return bad


def best(fn, tables, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn(tables)
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--orders", type=int, default=2_000_000)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    tables = make_tables(args.orders)
    print(f"{args.orders:,} orders, {len(tables['refunds']):,} refunds, {len(tables['reviews']):,} reviews")
    t_plain = best(plain, tables, args.repeat)
    t_ours = best(lambda t: validate(t, mode="quarantine"), tables, args.repeat)
    print(f"plain pandas, main rules only        {t_plain:7.2f} s")
    print(f"refundguard.validate (quarantine)    {t_ours:7.2f} s   ratio {t_ours / t_plain:.2f}")


if __name__ == "__main__":
    main()
