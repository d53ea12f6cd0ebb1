"""The Olist adapter on the real public files (../shared/data/olist) and on a tiny hand-made copy."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from refundguard.datasets import load_olist
from refundguard.errors import RejectedRowsWarning, SchemaError
from refundguard.scores import store_scores
from refundguard.tables import validate
from tests.conftest import require_shared_data


def require_olist() -> Path:
    """The real Olist folder; skip when absent, but fail under CI=true."""
    return require_shared_data("olist")


@pytest.fixture(scope="module")
def olist():
    path = require_olist()
    tables, report = load_olist(path, return_report=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RejectedRowsWarning)
        clean, rejects = validate(tables, mode="quarantine")
    return tables, report, clean, rejects


def test_olist_mapping_counts(olist):
    tables, report, clean, rejects = olist
    assert report["olist_orders"] == 15_000
    # every Olist order with items becomes one order per seller
    assert report["contract_orders"] == len(tables["orders"])
    assert report["contract_orders"] == report["olist_orders"] - report["orders_without_items"] + (
        tables["orders"].groupby("olist_order_id").size().sub(1).sum()
    )
    assert report["multi_seller_orders"] > 0 and report["orders_without_items"] > 0
    o = tables["orders"]
    assert o["order_id"].is_unique
    assert (o["amount"] > 0).all()
    assert o["store_id"].notna().all() and o["category"].notna().all()
    assert len(tables["refunds"]) == 0 and len(tables["service"]) == 0
    # reviews: the sample's rows, minus those of orders without items, plus copies for extra sellers
    assert report["contract_reviews"] == report["olist_reviews"] - report["reviews_exact_duplicates"] - report[
        "reviews_of_orders_without_items"
    ] + report["reviews_copied_to_extra_sellers"]


def test_olist_multi_seller_split(olist):
    tables = olist[0]
    o = tables["orders"]
    multi = o[o["order_id"].str.contains(":")]
    assert len(multi) > 0
    assert (multi["order_id"] == multi["olist_order_id"] + ":" + multi["store_id"]).all()
    # the split orders of one Olist order share buyer and paid_at, differ by store
    g = multi.groupby("olist_order_id")
    assert (g["store_id"].nunique() == g.size()).all()
    assert (g["buyer_id"].nunique() == 1).all() and (g["paid_at"].nunique() == 1).all()


def test_olist_contract_violations_are_counted_not_hidden(olist):
    tables, _, clean, rejects = olist
    # clean + rejected = input for every table
    for name in ("orders", "reviews"):
        n_rej = rejects.loc[rejects["table"] == name, "row_index"].nunique()
        assert len(clean[name]) + n_rej == len(tables[name])
    rules = set(zip(rejects["table"], rejects["rule"]))
    assert ("orders", "after_paid_at") in rules  # carrier dates before the purchase exist in Olist
    assert int((rejects["table"] == "orders").sum()) < 100


def test_olist_scores_as_of_2018_06_01(olist):
    clean = olist[2]
    s = store_scores(clean, "2018-06-01")
    assert len(s) > 300
    sc = s["score"].dropna()
    assert len(sc) > 50 and sc.between(0, 5).all()
    # no refunds and no chats: never invented
    for ind in ("quality_refund_rate", "refund_handling_hours", "dispute_rate", "response_3min_rate"):
        assert not s[f"{ind}_assessed"].any()
        assert s[f"{ind}_raw"].isna().all()
    assert s["service"].isna().all()
    assert s["good_review_rate_assessed"].any() and s["pickup_48h_rate_assessed"].any()


def test_olist_cli(olist, capsys):
    from refundguard.cli import main

    path = require_olist()
    assert main(["store-scores", "--olist", str(path), "--as-of", "2018-06-01"]) == 0
    out = capsys.readouterr().out
    assert "set aside" in out and "share >= 4.80" in out and "response_3min_rate 100%" in out


def _write_tiny(folder):
    folder.mkdir()
    pd.DataFrame(
        {
            "order_id": ["A", "B", "C"],
            "customer_id": ["c1", "c2", "c3"],
            "order_status": ["delivered", "delivered", "canceled"],
            "order_purchase_timestamp": ["2018-01-01 10:00:00", "2018-01-02 10:00:00", "2018-01-03 10:00:00"],
            "order_delivered_carrier_date": ["2018-01-02 10:00:00", "2018-01-03 10:00:00", None],
            "order_delivered_customer_date": ["2018-01-05 10:00:00", "2018-01-06 10:00:00", None],
        }
    ).to_csv(folder / "olist_orders_dataset.csv", index=False)
    pd.DataFrame(
        {
            "order_id": ["A", "A", "A", "B"],
            "order_item_id": [1, 2, 3, 1],
            "product_id": ["p1", "p2", "p3", "p1"],
            "seller_id": ["s1", "s1", "s2", "s2"],
            "shipping_limit_date": ["2018-01-03 00:00:00", "2018-01-04 00:00:00", "2018-01-03 00:00:00", "2018-01-04 00:00:00"],
            "price": [10.0, 5.0, 7.5, 3.0],
            "freight_value": [1.0, 1.0, 2.0, 0.5],
        }
    ).to_csv(folder / "olist_order_items_dataset.csv.gz", index=False, compression="gzip")
    pd.DataFrame(
        {
            "review_id": ["r1", "r2", "r2", "r3"],
            "order_id": ["A", "B", "B", "C"],
            "review_score": [5, 1, 1, 3],
            "review_creation_date": ["2018-01-06 00:00:00", "2018-01-07 00:00:00", "2018-01-07 00:00:00", "2018-01-08 00:00:00"],
        }
    ).to_csv(folder / "olist_order_reviews_dataset.csv", index=False)
    pd.DataFrame({"customer_id": ["c1", "c2", "c3"], "customer_unique_id": ["u1", "u1", "u3"]}).to_csv(
        folder / "olist_customers_dataset.csv", index=False
    )
    pd.DataFrame({"product_id": ["p1", "p2", "p3"], "product_category_name": ["beleza_saude", "pc_gamer", None]}).to_csv(
        folder / "olist_products_dataset.csv", index=False
    )
    pd.DataFrame({"product_category_name": ["beleza_saude"], "product_category_name_english": ["health_beauty"]}).to_csv(
        folder / "product_category_name_translation.csv", index=False
    )


def test_tiny_olist_by_hand(tmp_path):
    _write_tiny(tmp_path / "o")
    tables, rep = load_olist(tmp_path / "o", return_report=True)
    o = tables["orders"].set_index("order_id")
    assert sorted(o.index) == ["A:s1", "A:s2", "B"]
    assert o.loc["A:s1", "amount"] == pytest.approx(17.0)  # 10 + 1 + 5 + 1
    assert o.loc["A:s2", "amount"] == pytest.approx(9.5)
    assert o.loc["A:s1", "ship_by"] == pd.Timestamp("2018-01-04", tz="UTC")  # latest limit of the seller
    assert o.loc["A:s1", "category"] == "health_beauty"  # tie health_beauty / pc_gamer: alphabetical
    assert o.loc["A:s2", "category"] == "unknown"
    assert o.loc["B", "buyer_id"] == "u1" and o.loc["A:s1", "buyer_id"] == "u1"
    assert o.loc["B", "shipped_at"] == pd.Timestamp("2018-01-03 10:00", tz="UTC")
    assert o.loc["B", "delivered_at"] == pd.Timestamp("2018-01-06 10:00", tz="UTC")
    assert str(o["paid_at"].dtype) == "datetime64[ns, UTC]"
    rv = tables["reviews"]
    assert sorted(rv["order_id"]) == ["A:s1", "A:s2", "B"]  # exact duplicate dropped; C has no items
    assert rep["reviews_exact_duplicates"] == 1 and rep["reviews_of_orders_without_items"] == 1
    assert rep["reviews_copied_to_extra_sellers"] == 1 and rep["orders_without_items"] == 1
    assert rv["rating"].dtype == np.int64
    clean, rejects = validate(tables, mode="strict")
    assert len(rejects) == 0 and len(clean["orders"]) == 3
    s = store_scores(clean, "2018-01-31").set_index("store_id")
    assert s.loc["s2", "n_orders"] == 2 and s.loc["s2", "good_review_rate_raw"] == pytest.approx(0.5)


def test_missing_files_raise_schema_error(tmp_path):
    with pytest.raises(SchemaError):
        load_olist(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SchemaError) as e:
        load_olist(tmp_path / "empty")
    assert e.value.rule == "missing_file"


def test_olist_score_predicts_next_quarter_bad_reviews(olist):
    """Done-when check of issue 3 (benchmarks/olist_predictive.py), default bands."""
    import importlib.util

    from refundguard.config import ScoreConfig

    spec = importlib.util.spec_from_file_location(
        "olist_predictive", Path(__file__).resolve().parents[1] / "benchmarks" / "olist_predictive.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    df = mod.pooled_rows(olist[2], ScoreConfig(window_days=90))
    both = df.dropna(subset=["score", "naive_mean_rating"])
    assert len(both) > 500
    rho_score = mod.spearman(both, "score")
    rho_naive = mod.spearman(both, "naive_mean_rating")
    assert rho_score < 0 and abs(rho_score) > abs(rho_naive)
