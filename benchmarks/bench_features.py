"""Benchmark: point-in-time profiles and features, batch and online.

Batch: ``requests_from_tables`` + ``profiles_as_of`` (with the real store score
history) + ``build_features`` on simulated tables of two sizes, to show the cost
is linear-ish in rows (default about 0.5M and 1M orders; ``--full`` 5M and 10M).

Online: ``build_features_one`` per call (dict + profile dataclasses -> feature
dict), and ``ProfileStore.profiles`` + ``build_features_one`` (the online path up
to the model), p50/p99 in microseconds, against a plain baseline measured in the same run:
building a 1-row pandas DataFrame from the same feature dict with explicit dtypes
(what the online path would otherwise cost before any model runs).

Usage::

    python benchmarks/bench_features.py            # ~0.5M and ~1M orders
    python benchmarks/bench_features.py --full     # ~5M and ~10M orders
    python benchmarks/bench_features.py --buyers 10000 20000 --online 5000   # quick
"""

from __future__ import annotations

import argparse
import gc
import time

import numpy as np
import pandas as pd

from refundguard import scores
from refundguard.features import FEATURES, build_features, build_features_one
from refundguard.online import ProfileStore
from refundguard.profiles import (
    profiles_as_of,
    request_record,
    requests_from_tables,
)
from refundguard.simulate import simulate


def _timed(fn, *args, **kw):
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t0


def batch(n_buyers: int, n_stores: int, seed: int) -> dict[str, float]:
    """Time the batch path on one simulated size."""
    tables, t_sim = _timed(simulate, n_buyers=n_buyers, n_stores=n_stores, days=180, seed=seed)
    gc.collect()
    req, t_req = _timed(requests_from_tables, tables)
    sc, t_sc = _timed(scores.store_scores_for_requests, tables, req)
    prof, t_prof = _timed(profiles_as_of, tables, req)
    X, t_feat = _timed(build_features, req, prof)
    assert len(X) == len(req)
    total = t_req + t_prof + t_feat
    return {"orders": len(tables["orders"]), "refunds": len(req), "simulate_s": t_sim,
            "requests_s": t_req, "store_scores_s": t_sc, "profiles_s": t_prof,
            "features_s": t_feat, "total_s": total,
            "requests_per_s": len(req) / total,
            "ns_per_order": 1e9 * total / len(tables["orders"])}


def online(n_calls: int, seed: int) -> dict[str, float]:
    """p50/p99 of build_features_one versus a 1-row DataFrame build, same requests."""
    tables = simulate(n_buyers=3000, n_stores=100, days=120, seed=seed)
    req = requests_from_tables(tables)
    prof = profiles_as_of(tables, req)
    idx = np.resize(np.arange(len(req)), n_calls)
    reqs = [request_record(req, i) for i in range(len(req))]
    profs = [prof.profile(i) for i in range(len(req))]
    feats = [build_features_one(reqs[i], profs[i]) for i in range(len(req))]
    cat_dtypes = {f.name: pd.CategoricalDtype(list(f.levels or sorted(
        {d[f.name] for d in feats if d[f.name] is not None}))) for f in FEATURES
        if f.dtype == "category"}
    dtypes = {f.name: cat_dtypes.get(f.name, "float64") for f in FEATURES}

    res = scores.store_scores_for_requests(tables, req)
    hist = pd.DataFrame({"store_id": req["store_id"].to_numpy(), "as_of": res["score_day"],
                         **{c: res[c].to_numpy() for c in ("score", "product", "logistics",
                                                           "service", "category",
                                                           "provisional")}}
                        ).drop_duplicates(["store_id", "as_of"])
    store = ProfileStore(store_scores=hist)
    store.observe_tables(tables)

    def one(i: int) -> object:
        return build_features_one(reqs[i], profs[i])

    def live(i: int) -> object:  # the whole online path before the model
        return build_features_one(reqs[i], store.profiles(reqs[i]))

    def frame(i: int) -> object:  # baseline: the cheapest honest 1-row DataFrame build
        d = feats[i]
        return pd.DataFrame({k: pd.Series([d[k]], dtype=dtypes[k]) for k in dtypes})

    out: dict[str, float] = {}
    for name, fn in (("features_one", one), ("store_and_features", live), ("df_1row", frame)):
        for i in idx[:300]:  # warm-up
            fn(int(i))
        lat = np.empty(len(idx))
        pc = time.perf_counter_ns
        for k, i in enumerate(idx):
            t0 = pc()
            fn(int(i))
            lat[k] = pc() - t0
        out[f"{name}_p50_us"] = float(np.percentile(lat, 50) / 1e3)
        out[f"{name}_p99_us"] = float(np.percentile(lat, 99) / 1e3)
    out["speedup_p50"] = out["df_1row_p50_us"] / out["features_one_p50_us"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--buyers", type=int, nargs="+", default=[25_000, 50_000],
                    help="simulated buyers per size (about 20 orders each)")
    ap.add_argument("--full", action="store_true", help="about 5M and 10M orders")
    ap.add_argument("--online", type=int, default=20_000, help="online calls to time")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    sizes = [250_000, 500_000] if args.full else args.buyers
    rows = []
    for nb in sizes:
        r = batch(nb, max(50, nb // 100), args.seed)
        rows.append(r)
        print(f"buyers={nb:>8,}  orders={r['orders']:>11,}  refunds={r['refunds']:>9,}  "
              f"requests {r['requests_s']:6.2f}s  profiles {r['profiles_s']:6.2f}s "
              f"(of which store scores ~{r['store_scores_s']:5.2f}s)  "
              f"features {r['features_s']:5.2f}s  total {r['total_s']:6.2f}s  "
              f"{r['requests_per_s']:>9,.0f} req/s  {r['ns_per_order']:6.0f} ns/order",
              flush=True)
    if len(rows) >= 2:
        a, b = rows[0], rows[-1]
        print(f"scaling: orders x{b['orders'] / a['orders']:.2f} -> "
              f"time x{b['total_s'] / a['total_s']:.2f} (linear = same ratio)")
    if args.online:
        o = online(args.online, args.seed)
        print(f"online, {args.online:,} calls: build_features_one p50 {o['features_one_p50_us']:.1f} us"
              f" / p99 {o['features_one_p99_us']:.1f} us; 1-row DataFrame baseline p50 "
              f"{o['df_1row_p50_us']:.1f} us / p99 {o['df_1row_p99_us']:.1f} us "
              f"(x{o['speedup_p50']:.0f} at p50)")
        print(f"online: ProfileStore.profiles + build_features_one p50 "
              f"{o['store_and_features_p50_us']:.1f} us / p99 {o['store_and_features_p99_us']:.1f} us")


if __name__ == "__main__":
    main()
