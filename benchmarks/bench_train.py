"""Training overhead: RefundAbuseClassifier.fit versus plain ``lightgbm.train`` on the same matrix.

    python benchmarks/bench_train.py            # 1,000,000 rows
    python benchmarks/bench_train.py --quick    # 100,000 rows

The matrix has the model's real feature list (``refundguard.features.FEATURES``):
float features drawn from simulated feature rows (bootstrap-resampled to the
asked size with small noise, so the value distributions are realistic) and the
categoricals as pandas categories. Both sides train the same parameters for the
same number of rounds (no early stopping) on the same threads; the plain side
gets the matrix already encoded as float64 with category codes, so what is
measured is everything refundguard adds: input checks, encoding from the stored
levels, Dataset construction and the model text round trip. A third line adds
calibration and threshold selection on a 20 % validation slice (what ``train``
does after fitting). Goal: overhead <= 20 %.
"""

from __future__ import annotations

import argparse
import time
import warnings

import lightgbm as lgb
import numpy as np
import pandas as pd

from refundguard.evaluation import choose_thresholds
from refundguard.features import CATEGORICAL_FEATURES, FEATURES
from refundguard.model import RefundAbuseClassifier, choose_calibrator
from refundguard.pipeline import point_in_time_features
from refundguard.simulate import simulate
from refundguard.tables import validate

PARAMS = dict(n_estimators=200, learning_rate=0.05, num_leaves=63, min_child_samples=40, reg_lambda=1.0,
              colsample_bytree=0.8, random_state=0, n_jobs=2)


def feature_matrix(rows: int, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Real simulated feature rows, resampled to ``rows`` with 1 % multiplicative noise on floats."""
    tables, _ = validate(simulate(n_buyers=12_000, n_stores=300, days=120, seed=seed))
    batch = point_in_time_features(tables, with_labels=True)
    labelled = batch.requests["is_abuse"].notna().to_numpy()
    X0 = batch.X.loc[labelled].reset_index(drop=True)
    y0 = batch.requests.loc[labelled, "is_abuse"].astype(bool).to_numpy()
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(X0), rows)
    X = X0.iloc[pick].reset_index(drop=True)
    for f in FEATURES:
        if f.dtype == "float":
            X[f.name] = X[f.name].to_numpy() * rng.normal(1.0, 0.01, rows)
    return X, y0[pick]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--quick", action="store_true", help="100,000 rows")
    ap.add_argument("--repeat", type=int, default=2, help="runs per side; the best is reported")
    args = ap.parse_args()
    rows = 100_000 if args.quick else args.rows

    t0 = time.perf_counter()
    X, y = feature_matrix(rows)
    print(f"matrix: {rows:,} rows x {X.shape[1]} features ({y.mean():.1%} positive), built in {time.perf_counter() - t0:.1f} s")
    mono = {f.name: f.monotone for f in FEATURES if f.monotone and f.dtype != "category"}
    clf = RefundAbuseClassifier(**PARAMS, monotone_constraints=mono, categorical_features=list(CATEGORICAL_FEATURES))

    # the plain side: the same matrix, already encoded, straight into lightgbm.train
    probe = RefundAbuseClassifier(**{**PARAMS, "n_estimators": 1}, monotone_constraints=mono,
                                  categorical_features=list(CATEGORICAL_FEATURES)).fit(X.head(10_000), y[:10_000])
    encoded, _ = probe.encoder_.transform(X)
    names = list(X.columns)
    cat_idx = [names.index(c) for c in CATEGORICAL_FEATURES]
    params = probe._lgb_params([mono.get(n, 0) for n in names], seed=0)

    def plain() -> None:
        ds = lgb.Dataset(encoded, label=y.astype(np.float64), categorical_feature=cat_idx, free_raw_data=True)
        lgb.train(params, ds, num_boost_round=PARAMS["n_estimators"])

    def ours() -> None:
        clf.fit(X, y)

    n_valid = rows // 5

    def ours_full() -> None:
        clf.fit(X.iloc[n_valid:], y[n_valid:])
        raw = clf.predict_proba(X.iloc[:n_valid])[:, 1]
        cal, _ = choose_calibrator(y[:n_valid], raw)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            choose_thresholds(y[:n_valid], cal.transform(raw))

    def plain_full() -> None:
        ds = lgb.Dataset(encoded[n_valid:], label=y[n_valid:].astype(np.float64), categorical_feature=cat_idx)
        booster = lgb.train(params, ds, num_boost_round=PARAMS["n_estimators"])
        booster.predict(encoded[:n_valid])

    def best(fn) -> float:
        times = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times)

    t_plain = best(plain)
    t_ours = best(ours)
    t_plain_full = best(plain_full)
    t_ours_full = best(ours_full)
    print(f"plain lightgbm.train (encoded float64)          {t_plain:8.2f} s")
    print(f"RefundAbuseClassifier.fit (DataFrame)           {t_ours:8.2f} s   ratio {t_ours / t_plain:.3f}  "
          f"overhead {100 * (t_ours / t_plain - 1):+.1f}%")
    print(f"plain train on 80% + predict 20%                {t_plain_full:8.2f} s")
    print(f"fit on 80% + calibrate + thresholds on 20%      {t_ours_full:8.2f} s   ratio {t_ours_full / t_plain_full:.3f}  "
          f"overhead {100 * (t_ours_full / t_plain_full - 1):+.1f}%")
    print("goal: overhead <= 20%")


if __name__ == "__main__":
    main()
