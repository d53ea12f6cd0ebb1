"""The command line: exit codes, messages, and the validate / simulate commands."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from refundguard.cli import main
from refundguard.tables import load_tables, validate
from tests.test_tables import make_tables


def _write(tables: dict[str, pd.DataFrame], folder: Path, fmt: str = "parquet") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, df in tables.items():
        if fmt == "parquet":
            df.to_parquet(folder / f"{name}.parquet", index=False)
        else:
            df.to_csv(folder / f"{name}.csv", index=False)
    return folder


def test_help_documents_every_command(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("simulate", "validate"):
        assert cmd in out
    for cmd in ("simulate", "validate"):
        with pytest.raises(SystemExit) as info:
            main([cmd, "--help"])
        assert info.value.code == 0
        assert "usage: refundguard " + cmd in capsys.readouterr().out


def test_bad_arguments_exit_2_with_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["validate", "--data", str(tmp_path / "missing")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "not a folder" in err and "Traceback" not in err
    _write(make_tables(), tmp_path / "d")
    assert main(["validate", "--data", str(tmp_path / "d"), "--rejects", str(tmp_path / "r.csv")]) == 2
    assert "--rejects needs --mode quarantine" in capsys.readouterr().err


def test_validate_clean_data_exits_0(tmp_path, capsys):
    _write(make_tables(), tmp_path / "d")
    assert main(["validate", "--data", str(tmp_path / "d")]) == 0
    out = capsys.readouterr().out
    assert "orders" in out and "refunds" in out


def test_validate_strict_bad_data_exits_1_without_traceback(tmp_path, capsys):
    t = make_tables()
    t["orders"].loc[0, "buyer_id"] = None
    _write(t, tmp_path / "d")
    assert main(["validate", "--data", str(tmp_path / "d")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "buyer_id" in err[0] and "required" in err[0]
    assert main(["--debug", "validate", "--data", str(tmp_path / "d")]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_injected_bad_rows_are_exactly_the_rejects(tmp_path, capsys):
    rng = np.random.default_rng(7)
    t = make_tables(40, seed=3)
    bad_orders = sorted(rng.choice(40, size=3, replace=False).tolist())
    bad_reviews = sorted(set(rng.choice(40, size=4, replace=False).tolist()) - set(bad_orders))
    t["orders"]["amount"] = t["orders"]["amount"].astype(object)
    t["orders"].loc[bad_orders, "amount"] = "n/a"
    t["reviews"].loc[bad_reviews, "rating"] = 9
    _write(t, tmp_path / "d", fmt="csv")
    rej_path = tmp_path / "r.parquet"
    args = ["validate", "--data", str(tmp_path / "d"), "--mode", "quarantine", "--rejects", str(rej_path)]
    with pytest.warns(Warning):
        assert main(args) == 0
    rejects = pd.read_parquet(rej_path)
    orders = rejects[rejects["table"] == "orders"]
    assert sorted(orders["row_index"]) == bad_orders and set(orders["rule"]) == {"type"}
    refunds = rejects[rejects["table"] == "refunds"]
    # every order has exactly one refund (same position): the children of the bad orders
    assert sorted(refunds["row_index"]) == bad_orders and set(refunds["rule"]) == {"parent_rejected"}
    reviews = rejects[rejects["table"] == "reviews"]
    assert set(reviews.loc[reviews["rule"] == "range", "row_index"]) == set(bad_reviews)
    assert set(reviews.loc[reviews["rule"] == "parent_rejected", "row_index"]) == set(bad_orders)
    out = capsys.readouterr().out
    assert "parent_rejected" in out and "rejects written" in out
    with pytest.warns(Warning):
        assert main(args + ["--fail-on-rejects"]) == 1


def test_tables_written_by_other_tools_validate(tmp_path):
    """CSV written by hand (no pandas dtypes, text timestamps with offsets) meets the contract."""
    d = tmp_path / "d"
    d.mkdir()
    (d / "orders.csv").write_text(
        "order_id,buyer_id,store_id,category,amount,paid_at,shipped_at,delivered_at\n"
        "A1,u1,S1,books,12.50,2024-07-01 10:00:00+08:00,2024-07-01T12:00:00Z,\n"
        "A2,u2,S1,books,7,2024-07-02T00:00:00,,\n"
    )
    (d / "refunds.csv").write_text(
        "refund_id,order_id,requested_at,kind,reason,amount,resolved_at,outcome,escalated\n"
        "R1,A1,2024-07-03T00:00:00Z,refund_only,not_received,12.5,2024-07-04T00:00:00Z,refunded,false\n"
    )
    (d / "reviews.csv").write_text("order_id,rating,created_at\nA1,2,2024-07-05T00:00:00Z\n")
    assert main(["validate", "--data", str(d)]) == 0
    clean, _ = validate(load_tables(d))
    assert clean["orders"].loc[0, "paid_at"] == pd.Timestamp("2024-07-01T02:00:00Z")


# --------------------------------------------------------------------------- train / evaluate / score / demo
@pytest.fixture(scope="module")
def alt_folder(tmp_path_factory):
    """Tables the simulator did not make, written as Parquet."""
    from tests.alt_marketplace import make_marketplace

    return _write(make_marketplace(), tmp_path_factory.mktemp("alt") / "data")


def test_train_evaluate_score_end_to_end_on_foreign_tables(alt_folder, tmp_path, capsys):
    model = tmp_path / "model"
    champion = tmp_path / "champion"
    args = ["train", "--data", str(alt_folder), "--train-end", "2024-09-01", "--valid-end", "2024-10-01",
            "--test-end", "2024-11-17", "--out", str(model), "--champion", str(champion)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "test  PR-AUC" in out and "promoted" in out and (champion / "MANIFEST").exists()
    assert main(args) == 0  # the same model again does not beat itself
    assert "champion kept" in capsys.readouterr().out

    assert main(["evaluate", "--data", str(alt_folder), "--model", str(model), "--from", "2024-10-01",
                 "--to", "2024-11-17", "--out", str(tmp_path / "m.json")]) == 0
    out = capsys.readouterr().out
    assert "pr_auc" in out and "by store-score band" in out and (tmp_path / "m.json").exists()

    for suffix in ("parquet", "csv"):
        target = tmp_path / f"scored.{suffix}"
        assert main(["score", "--data", str(alt_folder), "--model", str(model), "--out", str(target),
                     "--always-score", "--from", "2024-06-01"]) == 0
        scored = pd.read_parquet(target) if suffix == "parquet" else pd.read_csv(target)
        from refundguard.guard import SCORED_COLUMNS

        assert list(scored.columns) == list(SCORED_COLUMNS)
        assert scored["abuse_probability"].notna().all()
        before = pd.to_datetime(scored["requested_at"], utc=True) < pd.Timestamp("2024-08-09", tz="UTC")
        assert before.any() and not (scored.loc[before, "action"] == "merchant_handles").any()
    assert "refunds decided" in capsys.readouterr().out


def test_train_and_score_argument_errors(alt_folder, tmp_path, capsys):
    assert main(["train", "--data", str(alt_folder), "--train-end", "2024-09-01", "--valid-end", "2024-10-01",
                 "--out", str(tmp_path / "m"), "--champion", str(tmp_path / "c")]) == 2
    assert "--champion needs --test-end" in capsys.readouterr().err
    assert main(["train", "--data", str(alt_folder), "--train-end", "2024-05-02", "--valid-end", "2024-05-03",
                 "--out", str(tmp_path / "m")]) == 1
    assert "slice has" in capsys.readouterr().err
    assert main(["score", "--data", str(alt_folder), "--model", str(alt_folder), "--out", str(tmp_path / "x.parquet")]) == 1
    assert "MANIFEST" in capsys.readouterr().err
    assert main(["score", "--data", str(alt_folder), "--model", str(alt_folder), "--out", str(tmp_path / "x.json")]) == 2
    with pytest.raises(SystemExit) as info:
        main(["train", "--data", str(alt_folder), "--train-end", "someday", "--valid-end", "2024-10-01",
              "--out", str(tmp_path / "m")])
    assert info.value.code == 2


def test_demo_runs_end_to_end(tmp_path, capsys):
    assert main(["--quiet", "demo", "--out", str(tmp_path / "demo"), "--buyers", "1500", "--stores", "60",
                 "--days", "100"]) == 0
    out = capsys.readouterr().out
    for step in ("1. simulated", "2. validated", "3. store experience scores", "4. decided", "5. against", "6. online"):
        assert step in out
    assert (tmp_path / "demo" / "scored.csv").exists()
