"""Online decision latency: RefundGuard.assess on the bundled model versus Booster.predict on one row.

    python benchmarks/bench_assess.py [--calls 5000]

Requests and profiles come from a simulated marketplace (a seed the default model
never saw). Timed, per call, on one thread:

- ``assess`` on requests it approves or leaves to the merchant (features + encoding +
  model + calibration + policy, no reasons);
- ``assess`` on requests it sends to review or intercepts (plus three reasons from
  :class:`refundguard.model.PathExplainer`);
- ``assess(always_score=True, explain=True)`` on every request;
- the plain baseline measured in the same run: ``booster.predict`` on the
  already-encoded 1-row numpy array (default threads), which is only the model.

Goal (DESIGN.md section 9): assess p99 <= 200 us, with reasons p99 <= 1 ms, and
faster than the 1-row ``Booster.predict`` baseline.
"""

from __future__ import annotations

import argparse
import gc
import time

import numpy as np

import refundguard as rg
from refundguard.features import build_features_one
from refundguard.pipeline import point_in_time_features
from refundguard.profiles import request_record


def _percentiles(ns: list[int]) -> tuple[float, float]:
    a = np.asarray(ns) / 1e3
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=5_000)
    args = ap.parse_args()

    guard = rg.RefundGuard.default()
    tables, _ = rg.validate(rg.simulate(n_buyers=6_000, n_stores=200, days=120, seed=99))
    batch = point_in_time_features(tables, "2024-08-15", "2024-09-15", score_config=guard.score_config)
    n = len(batch)
    items = [(request_record(batch.requests, i), batch.profiles.profile(i)) for i in range(n)]
    encoded = [guard._state.encoder.encode_row(build_features_one(r, p)) for r, p in items]
    booster = guard._state.loaded.booster
    print(f"model {guard.model_version}: {booster.num_trees()} trees; {n} distinct requests; {args.calls} calls each")

    def run(fn) -> list[int]:
        for k in range(200):  # warm up
            fn(k % n)
        gc.collect()
        out = []
        for k in range(args.calls):
            t0 = time.perf_counter_ns()
            fn(k % n)
            out.append(time.perf_counter_ns() - t0)
        return out

    actions = [guard.assess(r, p).action for r, p in items]
    plain = [i for i, a in enumerate(actions) if a in ("approve", "merchant_handles")]
    flagged = [i for i, a in enumerate(actions) if a in ("review", "intercept")]
    print(f"decided: {len(plain)} approve/merchant_handles (no reasons), {len(flagged)} review/intercept (reasons)")
    rows = {
        "baseline: booster.predict(1-row numpy), default threads": run(
            lambda i: booster.predict(encoded[i].reshape(1, -1))),
        "assess, approve/merchant_handles: no reasons": run(lambda k: guard.assess(*items[plain[k % len(plain)]])),
        "assess, review/intercept: with 3 reasons": run(lambda k: guard.assess(*items[flagged[k % len(flagged)]])),
        "assess(always_score=True, explain=True), any request": run(
            lambda i: guard.assess(*items[i], always_score=True, explain=True)),
    }
    base50, base99 = _percentiles(rows["baseline: booster.predict(1-row numpy), default threads"])
    print(f"{'path':55s} {'p50 us':>9s} {'p99 us':>9s} {'p99 / baseline p99':>19s}")
    for name, ns in rows.items():
        p50, p99 = _percentiles(ns)
        print(f"{name:55s} {p50:9.1f} {p99:9.1f} {p99 / base99:19.2f}")
    print("goals: assess p99 <= 200 us and below the baseline; with reasons p99 <= 1000 us")


if __name__ == "__main__":
    main()
