"""What the identity-cluster features add: test PR-AUC with and without them, on the time split.

    python benchmarks/feature_value.py [--seeds 1,2,3] [--which sim,alt]

For each marketplace (the simulator, ``refundguard.simulate``; and ``tests/alt_marketplace.py``,
which the simulator did not make) and each seed: the library's features of every request
(``point_in_time_features``), the slices ``refundguard.training`` uses (train / early stopping /
valid / test, with its gap), and the library's classifier with its default parameters trained
twice on the same rows: with every feature, and without the cluster features
(``refundguard.clusters.CLUSTER_FIELDS``). Prints the test PR-AUC of both and the gain, per seed
and the mean. Not a timing benchmark: a quality measure (deterministic for a seed).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import refundguard as rg  # noqa: E402
from refundguard.clusters import CLUSTER_FIELDS  # noqa: E402
from refundguard.features import CATEGORICAL_FEATURES, monotone_constraints  # noqa: E402
from refundguard.model import RefundAbuseClassifier  # noqa: E402
from refundguard.pipeline import point_in_time_features  # noqa: E402
from refundguard.training import DEFAULT_PARAMS, training_slices  # noqa: E402
from tests.alt_marketplace import make_marketplace  # noqa: E402

#: (tables for a seed, train_end, valid_end, test_end) of each marketplace.
MARKETPLACES = {
    "sim": (lambda seed: rg.simulate(n_buyers=20_000, n_stores=400, days=180, seed=seed),
            "2024-09-15", "2024-10-20", "2024-11-28"),
    "alt": (lambda seed: make_marketplace(n_buyers=8_000, n_stores=120, seed=seed),
            "2024-09-01", "2024-10-01", "2024-11-17"),
}


def test_pr_auc(tables: dict, train_end: str, valid_end: str, test_end: str) -> dict[str, float]:
    """Test PR-AUC with every feature (``all``) and without the cluster features (``without``)."""
    clean, _ = rg.validate(tables)
    batch = point_in_time_features(clean, None, test_end, with_labels=True)
    req, X = batch.requests, batch.X
    sl = training_slices(req, train_end, valid_end, test_end)
    y = req["is_abuse"].fillna(False).astype(bool).to_numpy()
    out = {}
    for name, drop in (("all", ()), ("without", CLUSTER_FIELDS)):
        cols = [c for c in X.columns if c not in drop]
        mono = {k: v for k, v in monotone_constraints().items() if k in cols}
        clf = RefundAbuseClassifier(**DEFAULT_PARAMS, monotone_constraints=mono,
                                    categorical_features=list(CATEGORICAL_FEATURES), n_jobs=2)
        Xi = X[cols]
        clf.fit(Xi.loc[sl.train], y[sl.train], eval_set=(Xi.loc[sl.early], y[sl.early]))
        out[name] = float(average_precision_score(y[sl.test], clf.predict_proba(Xi.loc[sl.test])[:, 1]))
    out["share_in_cluster"] = float((X["cluster_n_accounts"] > 1).mean())
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--which", default="sim,alt")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"{'market':6s} {'seed':>4s} {'in cluster':>10s} {'all':>8s} {'without':>8s} {'gain':>8s}")
    for market in args.which.split(","):
        make, *ends = MARKETPLACES[market]
        gains = []
        for seed in seeds:
            t0 = time.perf_counter()
            r = test_pr_auc(make(seed), *ends)
            gains.append(r["all"] - r["without"])
            print(f"{market:6s} {seed:4d} {r['share_in_cluster']:10.1%} {r['all']:8.4f} {r['without']:8.4f} "
                  f"{gains[-1]:+8.4f}   ({time.perf_counter() - t0:.0f} s)", flush=True)
        print(f"{market:6s} mean {'':10s} {'':8s} {'':8s} {np.mean(gains):+8.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
