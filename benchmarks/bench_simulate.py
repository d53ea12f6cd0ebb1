"""Simulator throughput: in-memory ``simulate`` and chunked ``simulate_to_parquet``.

Buyers are sized from the default rate (about 19.5 orders per buyer over 180
days), so ``--orders`` is a target, not an exact count. Prints rows, wall time,
orders per second and the peak resident memory of the process (for a fair peak,
run one mode per process; ``/usr/bin/time -v`` reports the same figure as
"Maximum resident set size").

Usage::

    python benchmarks/bench_simulate.py memory --orders 1000000
    /usr/bin/time -v python benchmarks/bench_simulate.py parquet --orders 10000000 --stores 30000 --out /tmp/sim10m
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import time
from pathlib import Path

from refundguard.simulate import SimulationConfig, simulate, simulate_to_parquet

ORDERS_PER_BUYER_180D = 19.5


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return the exit code."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=("memory", "parquet"))
    p.add_argument("--orders", type=int, default=1_000_000, help="target number of orders")
    p.add_argument("--stores", type=int, default=5_000)
    p.add_argument("--days", type=int, default=180)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("/tmp/refundguard-bench-sim"), help="parquet mode output")
    p.add_argument("--keep", action="store_true", help="keep the parquet output")
    args = p.parse_args(argv)

    buyers = max(1, round(args.orders / ORDERS_PER_BUYER_180D * 180 / args.days))
    cfg = SimulationConfig(n_buyers=buyers, n_stores=args.stores, days=args.days, seed=args.seed)
    print(f"config: {cfg}")
    t0 = time.perf_counter()
    if args.mode == "memory":
        tables = simulate(cfg)
        counts = {name: len(df) for name, df in tables.items()}
    else:
        if args.out.exists():
            shutil.rmtree(args.out)
        counts = simulate_to_parquet(cfg, args.out, progress=sys.stderr.isatty())
    wall = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for name, n in counts.items():
        print(f"{name:8s} {n:>12,d} rows")
    print(f"mode {args.mode}: {wall:.1f} s, {counts['orders'] / wall:,.0f} orders/s, peak RSS {peak_mb:,.0f} MB")
    if args.mode == "parquet":
        size = sum(f.stat().st_size for f in args.out.rglob("*.parquet")) / 1e6
        print(f"written {size:,.0f} MB to {args.out}")
        if not args.keep:
            shutil.rmtree(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
