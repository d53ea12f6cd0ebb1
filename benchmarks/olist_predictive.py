"""Does the store score predict next-quarter bad reviews on real data (Olist)?

Pools monthly ``as_of`` dates from 2017-09-01 to 2018-06-01 with a 90-day window.
Rows: sellers with >= 3 orders in the window and >= 5 reviews created in the next
90 days ``[as_of, as_of + 90d)``. Target: the share of those next-90-day reviews
rated <= 2. Compared: the store score (published) and the naive trailing mean
rating of the window's reviews. Both Spearman coefficients are computed on the
rows where both are defined (the score is null when nothing is assessed).

Two configurations are reported:

* ``default``: the built-in bands (reviewed against Taobao's public samples);
* ``calibrated``: bands from :func:`refundguard.scores.calibrate_bands` on the
  reference period 2017-01-01 to 2017-09-01, i.e. strictly before the first
  ``as_of`` and using only indicator distributions, never the target.

Usage::

    python benchmarks/olist_predictive.py [--olist ../shared/data/olist]
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from refundguard.config import ScoreConfig
from refundguard.datasets.olist import load_olist
from refundguard.errors import RejectedRowsWarning
from refundguard.scores import calibrate_bands, store_scores
from refundguard.tables import validate

WINDOW = 90
AS_OF = pd.date_range("2017-09-01", "2018-06-01", freq="MS", tz="UTC")
REFERENCE = ("2017-01-01", "2017-09-01")


def pooled_rows(tables: dict[str, pd.DataFrame], cfg: ScoreConfig) -> pd.DataFrame:
    """One row per (seller, as_of) meeting the filters, with score, naive and target."""
    orders = tables["orders"][["order_id", "store_id"]]
    rv = tables["reviews"].merge(orders, on="order_id", how="inner")
    rows = []
    for as_of in AS_OF:
        sc = store_scores(tables, as_of, cfg)
        lo, hi = as_of - pd.Timedelta(days=WINDOW), as_of + pd.Timedelta(days=WINDOW)
        past = rv[(rv["created_at"] >= lo) & (rv["created_at"] < as_of)]
        fut = rv[(rv["created_at"] >= as_of) & (rv["created_at"] < hi)]
        naive = past.groupby("store_id")["rating"].mean().rename("naive_mean_rating")
        fut_g = fut.groupby("store_id")["rating"]
        target = pd.DataFrame({"n_future_reviews": fut_g.size(), "future_bad_rate": fut_g.apply(lambda r: float((r <= 2).mean()))})
        df = sc[["store_id", "score", "n_orders"]].merge(target, left_on="store_id", right_index=True, how="inner")
        df = df.merge(naive, left_on="store_id", right_index=True, how="left")
        df = df[(df["n_orders"] >= 3) & (df["n_future_reviews"] >= 5)]
        df["as_of"] = as_of
        rows.append(df)
    return pd.concat(rows, ignore_index=True)


def spearman(df: pd.DataFrame, col: str) -> float:
    return float(df[col].corr(df["future_bad_rate"], method="spearman"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--olist", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "olist")
    args = ap.parse_args()
    raw = load_olist(args.olist)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RejectedRowsWarning)
        tables, rejects = validate(raw, mode="quarantine")
    base = ScoreConfig(window_days=WINDOW)
    configs = {"default": base, "calibrated": calibrate_bands(tables, REFERENCE[0], REFERENCE[1], base)}
    print(f"as_of {AS_OF[0].date()} .. {AS_OF[-1].date()} monthly, window {WINDOW} days; rows set aside by validate: {rejects['row_index'].nunique() if len(rejects) else 0}")
    for name, cfg in configs.items():
        df = pooled_rows(tables, cfg)
        both = df.dropna(subset=["score", "naive_mean_rating"])
        rho_s = spearman(both, "score")
        rho_n = spearman(both, "naive_mean_rating")
        print(
            f"{name:10s} rows {len(df):4d} (both defined {len(both):4d}, sellers {both['store_id'].nunique():3d})  "
            f"spearman(score, bad rate) = {rho_s:+.3f}   spearman(naive mean rating, bad rate) = {rho_n:+.3f}   "
            f"score stronger: {abs(rho_s) > abs(rho_n) and rho_s < 0}"
        )
    cal = configs["calibrated"]
    print("calibrated '*' bands (0..5 points):")
    for ind in ("good_review_rate", "pickup_48h_rate", "delivery_hours"):
        print(f"  {ind:18s} {np.round(cal.bands[ind]['*'], 4).tolist()}")


if __name__ == "__main__":
    main()
