"""Buyer behaviour candidates (issue 10): which raise test PR-AUC on the time split?

    python benchmarks/behaviour_candidates.py              # simulator and alt marketplace, seed 1
    python benchmarks/behaviour_candidates.py both 1,2,3   # what the issue note quotes (~6 min)

Issue 10 asks for buyer behaviour features that need no labels (shrunk refund and
refund-only rates, velocity, time from delivery to claim and its regularity, price level
against the category, reasons repeated across refunds) and to keep only those that raise
test PR-AUC over the same model without them. Before building a group into both feature
implementations (the vectorised kernel and the online stores), this script measures it:
each group is computed point in time with plain pandas (cumulative sums joined with
``merge_asof``, strictly before each request), appended to the library's feature matrix
(:func:`refundguard.pipeline.point_in_time_features`, whatever features the library
ships), and a model is trained with and without it on the same train / early-stopping /
test slices as ``refundguard.training`` (simulator and ``tests/alt_marketplace.py``).

A group is built into the library only if it raises test PR-AUC on both marketplaces
across seeds. The printed table is the record.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.alt_marketplace
import refundguard as rg  # noqa: E402
from refundguard.features import CATEGORICAL_FEATURES, monotone_constraints  # noqa: E402
from refundguard.model import RefundAbuseClassifier  # noqa: E402
from refundguard.pipeline import point_in_time_features  # noqa: E402
from refundguard.training import DEFAULT_PARAMS, training_slices  # noqa: E402
from tests.alt_marketplace import make_marketplace  # noqa: E402

DAY = pd.Timedelta(days=1)


def before(requests: pd.DataFrame, events: pd.DataFrame, key: str, value_cols: list[str], shift: pd.Timedelta
           = pd.Timedelta(0)) -> pd.DataFrame:
    """Cumulative sums of ``value_cols`` over ``events`` (key, time) strictly before ``t - shift`` per request."""
    ev = events.sort_values("time", kind="stable")
    cum = ev.groupby(key, sort=False)[value_cols].cumsum()
    cum[key] = ev[key].to_numpy()
    cum["time"] = ev["time"].to_numpy()
    q = pd.DataFrame({key: requests[key].to_numpy(), "time": (requests["requested_at"] - shift).to_numpy(),
                      "_i": np.arange(len(requests))}).sort_values("time", kind="stable")
    q = q[q[key].notna()] if q[key].isna().any() else q
    m = pd.merge_asof(q, cum.sort_values("time"), on="time", by=key, allow_exact_matches=False,
                      direction="backward")
    out = pd.DataFrame(0.0, index=np.arange(len(requests)), columns=value_cols)
    out.loc[m["_i"].to_numpy(), value_cols] = m[value_cols].fillna(0.0).to_numpy()
    return out


def behaviour(tables, req: pd.DataFrame, X: pd.DataFrame) -> pd.DataFrame:
    o, r = tables["orders"], tables["refunds"]
    ro = r.merge(o[["order_id", "buyer_id", "delivered_at", "category"]], on="order_id", how="left")
    f = pd.DataFrame(index=X.index)
    # 1. shrunk rates (empirical Bayes toward fixed population priors)
    n_o, n_r, n_ro = X["buyer_n_orders_365d"], X["buyer_n_refunds_365d"], X["buyer_n_refund_only_365d"]
    f["buyer_refund_rate_shrunk"] = (n_r + 5 * 0.08) / (n_o + 5)
    f["buyer_refund_only_rate_shrunk"] = (n_ro + 5 * 0.04) / (n_o + 5)
    # 2. velocity: orders and refunds per active day (90 days, day-aligned start)
    od = o.assign(day=o["paid_at"].dt.floor("D"))
    first_of_day = od.sort_values("paid_at").drop_duplicates(["buyer_id", "day"])
    ev = pd.DataFrame({"buyer_id": first_of_day["buyer_id"], "time": first_of_day["paid_at"], "one": 1.0})
    now = before(req, ev, "buyer_id", ["one"])["one"]
    start = req["requested_at"].dt.floor("D") - 90 * DAY
    then = before(req.assign(requested_at=start), ev, "buyer_id", ["one"])["one"]
    active = (now - then).to_numpy()
    f["buyer_active_days_90d"] = active
    f["buyer_orders_per_active_day_90d"] = np.where(active > 0, X["buyer_n_orders_90d"] / np.maximum(active, 1), np.nan)
    f["buyer_refunds_per_active_day_90d"] = np.where(active > 0, X["buyer_n_refunds_90d"] / np.maximum(active, 1),
                                                     np.nan)
    # 3. time from delivery to claim, its mean and spread, over past claims on delivered orders
    d = ro[ro["delivered_at"].notna() & (ro["delivered_at"] < ro["requested_at"])]
    h = (d["requested_at"] - d["delivered_at"]).dt.total_seconds() / 3600
    ev = pd.DataFrame({"buyer_id": d["buyer_id"], "time": d["requested_at"], "n": 1.0, "s": h, "s2": h * h})
    c = before(req, ev, "buyer_id", ["n", "s", "s2"])
    mean = np.where(c["n"] > 0, c["s"] / np.maximum(c["n"], 1), np.nan)
    var = np.where(c["n"] > 1, c["s2"] / np.maximum(c["n"], 1) - mean ** 2, np.nan)
    f["buyer_claim_after_delivery_hours_mean"] = mean
    f["buyer_claim_after_delivery_hours_std"] = np.sqrt(np.maximum(var, 0))
    this = (req["requested_at"] - req["delivered_at"]).dt.total_seconds() / 3600
    this = this.where(req["delivered_at"] < req["requested_at"])
    f["claim_hours_vs_buyer_mean"] = this.to_numpy() - mean
    # 4. price level: the order against the category's mean price over 30 days
    ev = pd.DataFrame({"category": o["category"], "time": o["paid_at"], "n": 1.0, "s": o["amount"]})
    c_now = before(req, ev, "category", ["n", "s"])
    c_then = before(req, ev, "category", ["n", "s"], 30 * DAY)
    n30, s30 = c_now["n"] - c_then["n"], c_now["s"] - c_then["s"]
    cat_mean = np.where(n30 > 0, s30 / np.maximum(n30, 1), np.nan)
    f["order_amount_to_category_mean_30d"] = req["order_amount"].to_numpy() / cat_mean
    # buyer's own price level: mean order amount 365d against the category mean at the request
    f["buyer_mean_amount_365d_to_category_mean"] = (X["buyer_spend_365d"] / X["buyer_n_orders_365d"].replace(0, np.nan)
                                                    ).to_numpy() / cat_mean
    # 5. the same reason again: the buyer's past refunds with this request's reason
    same = np.zeros(len(req))
    for reason in req["reason"].unique():
        ev = ro.loc[ro["reason"] == reason, ["buyer_id", "requested_at"]].rename(columns={"requested_at": "time"})
        ev["n"] = 1.0
        mask = (req["reason"] == reason).to_numpy()
        same[mask] = before(req[mask].reset_index(drop=True), ev, "buyer_id", ["n"])["n"].to_numpy()
    f["buyer_n_same_reason"] = same
    f["buyer_same_reason_share"] = np.where(X["buyer_n_refunds_365d"] > 0, same / np.maximum(X["buyer_n_refunds_365d"], 1),
                                            np.nan)
    return f


def evaluate(tables, train_end, valid_end, test_end, label: str) -> dict:
    clean, _ = rg.validate(tables)
    t0 = time.time()
    batch = point_in_time_features(clean, None, test_end, with_labels=True)
    req, X = batch.requests, batch.X
    extra_b = behaviour(clean, req, X)
    print(f"[{label}] features in {time.time() - t0:.1f} s, {len(req):,} requests")
    sl = training_slices(req, train_end, valid_end, test_end)
    y = req["is_abuse"].fillna(False).astype(bool).to_numpy()
    groups = {
        "base": [],
        "+shrunk": ["buyer_refund_rate_shrunk", "buyer_refund_only_rate_shrunk"],
        "+velocity": ["buyer_active_days_90d", "buyer_orders_per_active_day_90d", "buyer_refunds_per_active_day_90d"],
        "+claim_timing": ["buyer_claim_after_delivery_hours_mean", "buyer_claim_after_delivery_hours_std",
                          "claim_hours_vs_buyer_mean"],
        "+price": ["order_amount_to_category_mean_30d", "buyer_mean_amount_365d_to_category_mean"],
        "+same_reason": ["buyer_n_same_reason", "buyer_same_reason_share"],
    }
    allx = pd.concat([X, extra_b], axis=1)
    results = {}
    behaviour_cols = [c for g, cols in groups.items() if g != "base" for c in cols]
    combos = {**{g: cols for g, cols in groups.items()},
              "+behaviour(all)": behaviour_cols}
    for name, cols in combos.items():
        Xi = allx[list(X.columns) + cols]
        p = dict(DEFAULT_PARAMS)
        clf = RefundAbuseClassifier(**p, monotone_constraints=monotone_constraints(),
                                    categorical_features=list(CATEGORICAL_FEATURES), n_jobs=2)
        clf.fit(Xi.loc[sl.train], y[sl.train], eval_set=(Xi.loc[sl.early], y[sl.early]))
        pt = clf.predict_proba(Xi.loc[sl.test])[:, 1]
        pv = clf.predict_proba(Xi.loc[sl.valid])[:, 1]
        results[name] = (average_precision_score(y[sl.valid], pv), average_precision_score(y[sl.test], pt))
        print(f"[{label}] {name:22s} valid PR-AUC {results[name][0]:.4f}  test PR-AUC {results[name][1]:.4f}", flush=True)
    return results


if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else "both"
    seeds = [int(x) for x in sys.argv[2].split(",")] if len(sys.argv) > 2 else [1]
    table = {}
    for seed in seeds:
        if which in ("sim", "both"):
            table[("sim", seed)] = evaluate(rg.simulate(n_buyers=20_000, n_stores=400, days=180, seed=seed),
                                            "2024-09-15", "2024-10-20", "2024-11-28", f"sim{seed}")
        if which in ("alt", "both"):
            table[("alt", seed)] = evaluate(make_marketplace(n_buyers=8_000, n_stores=120, seed=seed),
                                            "2024-09-01", "2024-10-01", "2024-11-17", f"alt{seed}")
    for src in ("sim", "alt"):
        runs = [v for (s_, _), v in table.items() if s_ == src]
        if not runs:
            continue
        print(f"== {src}: mean test PR-AUC gain over base ({len(runs)} seeds)")
        for name in runs[0]:
            gains = [r[name][1] - r["base"][1] for r in runs]
            print(f"   {name:22s} {np.mean(gains):+.4f}  per seed {[round(g, 4) for g in gains]}")
