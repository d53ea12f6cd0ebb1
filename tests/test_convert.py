"""Issue 12, item 8: real, messy data through one door, ``refundguard convert``.

UCI Online Retail and Olist (../shared/data) are converted to contract tables; every source
row is accounted for (mapped, or set aside with a reason); ``validate`` then ``store-scores``
run end to end on the output. A small hand-made UCI file pins each rule of the mapping.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from refundguard.cli import main
from refundguard.datasets import DATASET_SOURCES, convert_dataset, load_uci_online_retail
from refundguard.datasets.uci import UCI_CATEGORY, convert_uci_online_retail
from refundguard.errors import ConfigError, SchemaError
from refundguard.tables import REJECT_COLUMNS, TABLES, load_tables, non_canonical_column, validate
from tests.conftest import require_shared_data

#: Rows set aside in the real UCI file, per (table, reason). A change here is a change of the mapping.
UCI_COUNTS = {
    ("online_retail", "no_customer"): 135_077,
    ("online_retail", "no_earlier_invoice"): 1_306,
    ("online_retail", "not_a_sale"): 3,
    ("refunds", "refund_sum"): 35,
}
OLIST_COUNTS = {
    ("olist_orders", "no_items"): 115,
    ("olist_order_reviews", "order_without_items"): 112,
    ("orders", "after_paid_at"): 31,
    ("orders", "after_shipped_at"): 3,
    ("reviews", "parent_rejected"): 33,
}


def _counts(rejects: pd.DataFrame) -> dict[tuple[str, str], int]:
    g = rejects.groupby(["table", "rule"])["row_index"].nunique()
    return {k: int(v) for k, v in g.items()}


@pytest.fixture(scope="module")
def uci_file() -> Path:
    return require_shared_data("uci-online-retail", "online_retail.parquet")


@pytest.fixture(scope="module")
def uci(uci_file):
    return convert_uci_online_retail(uci_file)


# --------------------------------------------------------------------------- UCI on the real file
def test_uci_counts_per_reason_and_every_row_accounted_for(uci, uci_file):
    assert _counts(uci.rejects) == UCI_COUNTS
    r = uci.report
    assert r["rows"] == uci.source_rows["online_retail"] == 541_909
    # each source row: a line of an order, a line of a refund, or set aside with one reason
    assert r["sale_lines"] + r["cancellation_lines"] + r["rows_set_aside"] == r["rows"]
    src = uci.rejects[uci.rejects["table"] == "online_retail"]
    assert src["row_index"].is_unique and len(src) == r["rows_set_aside"]
    # 135,080 rows lack a CustomerID (SOURCE.md): 3 of them are the "A" adjustments, set aside as not_a_sale
    raw = pd.read_parquet(uci_file)
    assert int(raw["CustomerID"].isna().sum()) == 135_080
    assert set(raw.loc[src.loc[src["rule"] == "not_a_sale", "row_index"], "InvoiceNo"].str[0]) == {"A"}
    # contract rows: clean + rejected = mapped
    assert len(uci.tables["orders"]) == r["orders"] == 18_536
    assert len(uci.tables["refunds"]) + UCI_COUNTS[("refunds", "refund_sum")] == r["refunds"]
    assert r["stores"] == uci.tables["orders"]["store_id"].nunique() == 37
    assert all(non_canonical_column(t, uci.tables[t]) is None for t in TABLES)
    assert list(uci.rejects.columns) == list(REJECT_COLUMNS)


def test_uci_refunds_follow_the_linking_rule(uci, uci_file):
    """Brute force on 300 cancellation lines: the linked order is the customer's latest earlier invoice with the code."""
    raw = pd.read_parquet(uci_file)
    raw["t"] = pd.to_datetime(raw["InvoiceDate"], format="ISO8601", utc=True)
    raw = raw[raw["CustomerID"].notna()]
    sales = raw[raw["InvoiceNo"].str.fullmatch(r"[0-9]+")]
    paid = sales.groupby("InvoiceNo")["t"].min()
    cancels = raw[raw["InvoiceNo"].str.startswith("C")].copy()
    cancels["req"] = cancels.groupby("InvoiceNo")["t"].transform("min")
    refunds = uci.tables["refunds"]
    orders = uci.tables["orders"].set_index("order_id")
    # refund ids -> (cancellation invoice, order)
    rid = refunds["refund_id"].str.split(":", n=1)
    ref_pairs = set(zip(rid.str[0], refunds["order_id"]))
    rejected_rids = set(uci.rejects.loc[uci.rejects["table"] == "refunds", "key"])
    rng = np.random.default_rng(0)
    checked = 0
    for i in rng.choice(len(cancels), size=300, replace=False):
        c = cancels.iloc[i]
        cand = sales[(sales["CustomerID"] == c["CustomerID"]) & (sales["StockCode"] == c["StockCode"])]
        cand_paid = paid.loc[cand["InvoiceNo"].unique()]
        cand_paid = cand_paid[cand_paid < c["req"]]
        if cand_paid.empty:
            continue  # set aside as no_earlier_invoice (counted above)
        latest = max(cand_paid.index, key=lambda inv: (cand_paid[inv], inv))
        pair = (c["InvoiceNo"], latest)
        assert pair in ref_pairs or any(k.startswith(c["InvoiceNo"]) for k in rejected_rids), pair
        checked += 1
    assert checked > 200
    paid_at = refunds["order_id"].map(orders["paid_at"])
    assert paid_at.notna().all() and (refunds["requested_at"] > paid_at).all()
    assert (refunds["kind"] == "return_and_refund").all() and (refunds["reason"] == "other").all()
    assert (refunds["amount"] > 0).all() and refunds["is_abuse"].isna().all()
    assert (uci.tables["orders"]["category"] == UCI_CATEGORY).all()


def test_convert_uci_then_validate_and_store_scores_end_to_end(uci_file, tmp_path, capsys):
    out, rejects = tmp_path / "uci", tmp_path / "uci-rejects.csv"
    assert main(["convert", "--source", "uci-online-retail", "--in", str(uci_file), "--out", str(out),
                 "--rejects", str(rejects)]) == 0
    printed = capsys.readouterr().out
    assert "no_earlier_invoice" in printed and "135,077" in printed and f"written to {out}" in printed
    assert sorted(p.name for p in out.iterdir()) == [f"{t}.parquet" for t in sorted(TABLES)]
    written = pd.read_csv(rejects, dtype=str)
    assert _counts(written.assign(row_index=written["row_index"].astype(int))) == UCI_COUNTS
    assert main(["validate", "--data", str(out)]) == 0  # strict: the output meets the contract
    assert main(["store-scores", "--data", str(out), "--as-of", "2011-12-01", "--out", str(tmp_path / "s.parquet")]) == 0
    scores = pd.read_parquet(tmp_path / "s.parquet")
    assert len(scores) > 10 and scores["quality_refund_rate_assessed"].any()
    assert main(["store-scores", "--data", str(out), "--history", "2011-11-01", "2011-11-30", "--quiet"]) == 0


# --------------------------------------------------------------------------- Olist on the real files
def test_convert_olist_counts_then_validate_and_store_scores_end_to_end(tmp_path, capsys):
    olist = require_shared_data("olist")
    out, rejects = tmp_path / "olist", tmp_path / "olist-rejects.parquet"
    assert main(["convert", "--source", "olist", "--in", str(olist), "--out", str(out), "--rejects", str(rejects)]) == 0
    assert "no_items" in capsys.readouterr().out
    assert _counts(pd.read_parquet(rejects)) == OLIST_COUNTS
    assert main(["validate", "--data", str(out)]) == 0
    assert main(["store-scores", "--data", str(out), "--as-of", "2018-06-01"]) == 0
    assert "share >= " in capsys.readouterr().out


# --------------------------------------------------------------------------- the rules, by hand
def _uci_rows(rows: list[tuple]) -> pd.DataFrame:
    cols = ["InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID", "Country"]
    return pd.DataFrame(rows, columns=cols)


def _tiny(tmp_path: Path) -> Path:
    rows = [
        # customer 1 buys X twice and Y once; customer 2 buys X
        ("100", "X", "x", 2, "2011-01-01 10:00:00", 5.0, 1.0, "France"),
        ("100", "Y", "y", 1, "2011-01-01 10:01:00", 3.0, 1.0, "France"),   # paid_at is the earliest line
        ("101", "X", "x", 4, "2011-01-05 09:00:00", 5.0, 1.0, "France"),
        ("102", "X", "x", 1, "2011-01-06 09:00:00", 5.0, 2.0, "Spain"),
        ("103", "Z", "z", 1, "2011-01-06 09:00:00", 0.0, 2.0, "Spain"),    # a free line: an order of 0.00
        # cancellations
        ("C200", "X", "x", -1, "2011-01-07 12:00:00", 5.0, 1.0, "France"),  # -> 101 (latest with X)
        ("C200", "Y", "y", -1, "2011-01-07 12:00:00", 3.0, 1.0, "France"),  # -> 100: C200 links two orders
        ("C201", "X", "x", -1, "2011-01-05 09:00:00", 5.0, 1.0, "France"),  # same minute as 101: -> 100 (strictly earlier)
        ("C202", "X", "x", -1, "2011-01-01 09:00:00", 5.0, 1.0, "France"),  # before any purchase: no_earlier_invoice
        ("C203", "D", "Discount", -1, "2011-01-08 00:00:00", 2.0, 2.0, "Spain"),  # no invoice holds D
        # rows set aside
        ("104", "X", "x", 1, "2011-01-02 00:00:00", 5.0, None, "France"),       # no_customer
        ("A105", "B", "Adjust bad debt", 1, "2011-01-02 00:00:00", -9.0, None, "United Kingdom"),  # not_a_sale
        ("106", "X", "x", 1, "02/01/2011 00:00", 5.0, 3.0, "France"),           # bad_date: never guessed
        ("107", "X", "x", -2, "2011-01-02 00:00:00", 5.0, 3.0, "France"),       # non_positive_quantity
        ("108", "X", "x", 2, "2011-01-02 00:00:00", -5.0, 3.0, "France"),       # bad_price
        ("C109", "X", "x", 2, "2011-01-09 00:00:00", 5.0, 1.0, "France"),       # non_negative_cancellation
    ]
    path = tmp_path / "online_retail.parquet"
    _uci_rows(rows).to_parquet(path)
    return path


def test_tiny_uci_by_hand(tmp_path):
    path = _tiny(tmp_path)
    conv = convert_uci_online_retail(tmp_path)  # the folder holding online_retail.parquet works too
    o = conv.tables["orders"].set_index("order_id")
    assert sorted(o.index) == ["100", "101", "102", "103"]
    assert o.loc["100", "amount"] == 13.0 and o.loc["101", "amount"] == 20.0 and o.loc["103", "amount"] == 0.0
    assert o.loc["100", "paid_at"] == pd.Timestamp("2011-01-01 10:00", tz="UTC")
    assert (o.loc["100", "buyer_id"], o.loc["100", "store_id"]) == ("1", "France")
    assert (o.loc["102", "buyer_id"], o.loc["102", "store_id"]) == ("2", "Spain")
    assert o["shipped_at"].isna().all() and (o["ship_by"] == o["paid_at"] + pd.Timedelta(hours=48)).all()
    r = conv.tables["refunds"].set_index("refund_id")
    assert sorted(r.index) == ["C200:100", "C200:101", "C201"]
    assert r.loc["C200:101", "order_id"] == "101" and r.loc["C200:101", "amount"] == 5.0
    assert r.loc["C200:100", "order_id"] == "100" and r.loc["C200:100", "amount"] == 3.0
    assert r.loc["C201", "order_id"] == "100"
    assert (r["resolved_at"] == r["requested_at"]).all() and (r["outcome"] == "refunded").all()
    rej = conv.rejects.set_index("row_index")
    assert rej["rule"].to_dict() == {
        8: "no_earlier_invoice", 9: "no_earlier_invoice", 10: "no_customer", 11: "not_a_sale", 12: "bad_date",
        13: "non_positive_quantity", 14: "bad_price", 15: "non_negative_cancellation",
    }
    assert rej.loc[12, "value"] == "02/01/2011 00:00" and rej.loc[11, "key"] == "A105"
    rep = conv.report
    assert rep["sale_lines"] + rep["cancellation_lines"] + rep["rows_set_aside"] == rep["rows"] == 16
    assert rep["cancellations_linked_to_several_orders"] == 1
    tables, report = load_uci_online_retail(path, return_report=True)
    assert report == rep
    clean, rejects = validate(tables, mode="strict")
    assert rejects.empty and len(clean["refunds"]) == 3


def test_a_cancellation_over_the_order_amount_is_a_contract_reject(tmp_path):
    rows = [
        ("100", "X", "x", 1, "2011-01-01 10:00:00", 5.0, 1.0, "France"),
        ("C200", "X", "x", -3, "2011-01-07 12:00:00", 5.0, 1.0, "France"),  # 15.00 back on a 5.00 order
    ]
    _uci_rows(rows).to_parquet(tmp_path / "online_retail.parquet")
    conv = convert_uci_online_retail(tmp_path / "online_retail.parquet")
    assert _counts(conv.rejects) == {("refunds", "refund_sum"): 1} and conv.tables["refunds"].empty


def test_convert_refuses_bad_outputs_before_any_work(tmp_path, capsys):
    path = _tiny(tmp_path)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError):
        convert_dataset("uci-online-retail", path, busy)
    assert main(["convert", "--source", "uci-online-retail", "--in", str(path), "--out", str(busy)]) == 2
    assert "empty or absent folder" in capsys.readouterr().err and sorted(p.name for p in busy.iterdir()) == ["keep.txt"]
    assert main(["convert", "--source", "uci-online-retail", "--in", str(path), "--out", str(tmp_path / "o"),
                 "--rejects", str(tmp_path / "r.xlsx")]) == 2
    assert not (tmp_path / "o").exists()
    with pytest.raises(ConfigError):
        convert_dataset("kaggle", path, tmp_path / "o")
    with pytest.raises(SystemExit) as info:
        main(["convert", "--source", "olist", "--in", str(tmp_path / "absent"), "--out", str(tmp_path / "o")])
    assert info.value.code == 2
    assert set(DATASET_SOURCES) == {"olist", "uci-online-retail"}


def test_missing_or_broken_uci_file_is_a_schema_error(tmp_path):
    with pytest.raises(SchemaError) as info:
        convert_uci_online_retail(tmp_path)
    assert info.value.rule == "missing_file"
    _uci_rows([]).drop(columns=["Country"]).to_parquet(tmp_path / "online_retail.parquet")
    with pytest.raises(SchemaError) as info:
        convert_uci_online_retail(tmp_path)
    assert (info.value.rule, info.value.column) == ("missing_column", "Country")


def test_a_written_conversion_reads_back_as_canonical_tables(tmp_path):
    path = _tiny(tmp_path)
    conv = convert_dataset("uci-online-retail", path, tmp_path / "out", rejects=tmp_path / "r.parquet")
    back = load_tables(tmp_path / "out")
    for name in TABLES:
        assert non_canonical_column(name, back[name]) is None, name
        pd.testing.assert_frame_equal(back[name], conv.tables[name])
    assert len(pd.read_parquet(tmp_path / "r.parquet")) == len(conv.rejects)
