"""Single-request model latency: dict -> probability, every path side by side in one run.

Trains a seeded reference-sized model (300 trees x 63 leaves by default, 40
features of which 5 categorical, like ``../shared/background/inference-perf.md``)
on synthetic data, then times, per call, over the same distinct requests (dicts of
Python values; 1% unseen levels, some None):

* ``encode_row``: dict -> float64 row in model order (stored levels);
* ``encode + FastRowPredictor.predict``: LightGBM's fast single-row C API (1 thread);
* ``encode + predict_proba_row``: ``booster.predict(row, num_threads=1)``;
* ``booster.predict(1-row numpy)`` with default threads (the reference the
  online path must beat, DESIGN.md section 9);
* ``encode + fast + calibrate + decide_one``: the model-and-policy part of an
  online ``assess`` (Platt calibration, the dated policy with a store score below
  the gate so the request is scored; no reasons, no profile/feature building);
* ``predict_proba(1-row DataFrame)``: what not to do (fewer calls).

It checks that every path gives the same probabilities, then prints p50/p99 in
microseconds. GC stays on, 300 warm-up calls, ``perf_counter_ns`` around each call.

Batch (same run): ``RefundAbuseClassifier.predict_proba(DataFrame)`` (encode from the
stored levels + predict) versus raw ``booster.predict`` on the already-encoded
float64 matrix, 2 threads, median of 3 (DESIGN.md section 9 goal: at least as fast
as the raw predict, floor 50%).

Usage::

    python benchmarks/bench_online_model.py            # 300 trees x 63 leaves, 5000 calls
    python benchmarks/bench_online_model.py --quick    # 50 trees x 31 leaves, 1000 calls
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from refundguard.model import Calibrator, RefundAbuseClassifier
from refundguard.policy import PolicyTimeline, decide_one

N_NUMERIC = 35
CATS = {"reason": 7, "kind": 2, "category": 12, "device_type": 15, "ship_country": 40}


def make_data(n: int, seed: int = 42) -> tuple[pd.DataFrame, np.ndarray]:
    """Seeded synthetic requests: 35 numeric features (some NaN) and 5 categoricals."""
    rng = np.random.default_rng(seed)
    cols: dict[str, object] = {}
    for i in range(N_NUMERIC):
        v = rng.gamma(1.5 + i % 4, 10.0, n)
        if i % 9 == 0:
            v[rng.random(n) < 0.1] = np.nan
        cols[f"num_{i:02d}"] = v
    for j, (name, k) in enumerate(CATS.items()):
        weights = 1.0 / np.arange(1, k + 1)
        cols[name] = pd.Series(rng.choice([f"{name}_{i}" for i in range(k)], n, p=weights / weights.sum()), dtype="str")
        # Interleave categoricals with numeric columns.
        cols[f"num_extra_{j}"] = rng.normal(size=n)
    X = pd.DataFrame(cols)
    logit = (
        -4.0
        + 0.02 * X["num_00"].fillna(10)
        + 0.3 * np.sin(X["num_01"] / 5)
        + 0.5 * (X["reason"] == "reason_0")
        + 0.4 * (X["ship_country"].isin([f"ship_country_{i}" for i in range(5)]))
        + 0.3 * X["num_extra_0"] * X["num_extra_1"]
    )
    y = rng.random(n) < 1 / (1 + np.exp(-logit.to_numpy()))
    return X, y


def requests(X: pd.DataFrame, n: int, seed: int = 7) -> list[dict]:
    """Distinct request dicts of Python values (None for missing, 1% unseen levels)."""
    rng = np.random.default_rng(seed)
    rows = X.sample(n, random_state=seed).astype(object).where(X.sample(n, random_state=seed).notna(), None)
    out = rows.to_dict("records")
    for i in np.flatnonzero(rng.random(n) < 0.01):
        out[i]["ship_country"] = "never_seen"
    for i in np.flatnonzero(rng.random(n) < 0.01):
        out[i]["device_type"] = None
    return out


def timed(fn, items, warmup: int = 300) -> tuple[np.ndarray, list[float]]:
    for it in items[:warmup]:
        fn(it)
    times = np.empty(len(items), dtype=np.int64)
    results = []
    for i, it in enumerate(items):
        t0 = time.perf_counter_ns()
        r = fn(it)
        times[i] = time.perf_counter_ns() - t0
        results.append(r)
    return times / 1000.0, results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="50 trees x 31 leaves, 1000 calls")
    ap.add_argument("--rows", type=int, default=None, help="training rows (default 100k, quick 20k)")
    args = ap.parse_args()
    n_trees, leaves, calls = (50, 31, 1000) if args.quick else (300, 63, 5000)
    n_rows = args.rows or (20_000 if args.quick else 100_000)

    X, y = make_data(n_rows)
    t0 = time.perf_counter()
    clf = RefundAbuseClassifier(n_estimators=n_trees, num_leaves=leaves, min_child_samples=20, random_state=42)
    clf.fit(X, y)
    print(f"model: {clf.booster_.num_trees()} trees x {leaves} leaves, {clf.n_features_in_} features "
          f"({len(clf.categories_)} categorical), trained on {n_rows:,} rows in {time.perf_counter() - t0:.1f} s")

    reqs = requests(X, calls)
    booster = clf.booster_
    fast = clf.fast_row_predictor()
    encode = clf.encode_row

    cal = Calibrator("platt").fit(clf.predict_proba(X.head(20_000))[:, 1], y[:20_000])
    timeline = PolicyTimeline.default(intercept_threshold=0.9, review_threshold=0.5)
    when = pd.Timestamp("2024-10-01 12:00", tz="UTC").to_pydatetime()

    def assess_like(r):
        return decide_one(
            timeline,
            refund_id="r-1",
            requested_at=when,
            kind="refund_only",
            buyer_id="b-1",
            store_score=4.62,
            provisional=False,
            probability=lambda: cal.transform_one(fast.predict(encode(r))),
        ).abuse_probability

    paths = {
        "encode_row (dict -> float64 row)": lambda r: encode(r),
        "encode + FastRowPredictor (C API, 1 thread)": lambda r: fast.predict(encode(r)),
        "encode + predict_proba_row (booster.predict, 1 thread)": lambda r: clf.predict_proba_row(encode(r)),
        "encode + booster.predict(1-row numpy), default threads": lambda r: float(
            booster.predict(encode(r).reshape(1, -1))[0]
        ),
    }
    paths["encode + fast + calibrate + decide_one (no reasons)"] = assess_like
    rows: list[tuple[str, float, float]] = []
    results = {}
    for name, fn in paths.items():
        t, res = timed(fn, reqs)
        rows.append((name, float(np.percentile(t, 50)), float(np.percentile(t, 99))))
        results[name] = res
    dtypes = {c: ("str" if c in CATS else "float64") for c in X.columns}

    def via_frame(r):
        return float(clf.predict_proba(pd.DataFrame([r]).astype(dtypes))[0, 1])

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unseen-level warnings on 1% of requests
        t, res_df = timed(via_frame, reqs[: max(calls // 10, 200)], warmup=50)
    rows.append(("predict_proba(1-row DataFrame) [what not to do]", float(np.percentile(t, 50)), float(np.percentile(t, 99))))

    ref = np.array(results["encode + predict_proba_row (booster.predict, 1 thread)"])
    assert np.array_equal(np.array(results["encode + FastRowPredictor (C API, 1 thread)"]), ref), "fast path differs"
    assert np.array_equal(
        np.array(results["encode + booster.predict(1-row numpy), default threads"]), ref
    ), "numpy path differs"
    np.testing.assert_allclose(np.array(res_df), ref[: len(res_df)], rtol=0, atol=1e-15)

    np.testing.assert_allclose(
        np.array(results["encode + fast + calibrate + decide_one (no reasons)"]),
        cal.transform(ref),
        rtol=0,
        atol=1e-12,
    )
    n_batch = 50_000 if args.quick else 200_000
    Xb = pd.concat([X] * (n_batch // len(X) + 1), ignore_index=True).head(n_batch)
    matrix = clf.encoder_.transform(Xb)[0]

    def median_time(fn) -> float:
        out = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
        return float(np.median(out))

    clf.set_params(n_jobs=2)
    t_ours = median_time(lambda: clf.predict_proba(Xb))
    t_raw = median_time(lambda: booster.predict(matrix, num_threads=2))
    np.testing.assert_array_equal(clf.predict_proba(Xb)[:, 1], booster.predict(matrix, num_threads=2))

    print(f"fast C API in use: {fast.fast}; {calls} distinct requests; all paths give identical probabilities")
    print(f"{'path':58s} {'p50 us':>9s} {'p99 us':>9s}")
    for name, p50, p99 in rows:
        print(f"{name:58s} {p50:9.1f} {p99:9.1f}")
    print(
        f"batch {n_batch:,} rows, 2 threads: predict_proba(DataFrame) {n_batch / t_ours:,.0f} rows/s, "
        f"raw booster.predict(matrix) {n_batch / t_raw:,.0f} rows/s (ratio {t_raw / t_ours:.2f})"
    )


if __name__ == "__main__":
    main()
