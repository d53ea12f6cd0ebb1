"""The command line: every command end to end, global options, exit codes, messages, printed numbers."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import refundguard.cli
from refundguard.cli import build_parser, main
from refundguard.config import DEFAULT_GATE, ScoreConfig
from refundguard.guard import default_model_path
from refundguard.policy import ACTIONS, PolicyTimeline
from refundguard.tables import load_tables, validate
from tests.test_tables import make_tables

#: A float printed with more than 4 significant digits after the point: what a person should not have to read.
RAW_FLOAT = re.compile(r"\d\.0*[1-9]\d{4,}")
GATE_DATE = PolicyTimeline.default().versions[-1].effective_from


def _commands() -> list[str]:
    """The sub-commands registered on the parser."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return list(sub.choices)


def _write(tables: dict[str, pd.DataFrame], folder: Path, fmt: str = "parquet") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, df in tables.items():
        if fmt == "parquet":
            df.to_parquet(folder / f"{name}.parquet", index=False)
        else:
            df.to_csv(folder / f"{name}.csv", index=False)
    return folder


def test_the_parser_registers_the_documented_commands():
    assert set(_commands()) >= {"simulate", "validate", "store-scores", "train", "evaluate", "score", "report",
                                "drift", "whatif", "demo"}


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for cmd in _commands():
        assert cmd in out


@pytest.mark.parametrize("command", _commands())
def test_help_documents_every_command(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: refundguard " + command in out
    assert "--debug" in out and "--quiet" in out


def _minimal_args(folder: Path) -> dict[str, list[str]]:
    """Arguments that parse for each command (parsing only: nothing runs)."""
    d = str(folder)
    return {
        "simulate": ["--out", f"{d}/sim"],
        "convert": ["--source", "olist", "--in", d, "--out", f"{d}/c"],
        "validate": ["--data", d],
        "store-scores": ["--data", d, "--as-of", "2024-10-01"],
        "calibrate-bands": ["--data", d, "--from", "2024-06-01", "--to", "2024-08-01", "--out", f"{d}/c.json"],
        "train": ["--data", d, "--train-end", "2024-09-01", "--valid-end", "2024-10-01", "--out", f"{d}/m"],
        "rollback": ["--registry", d],
        "evaluate": ["--data", d, "--model", d],
        "score": ["--data", d, "--model", d, "--out", f"{d}/s.csv"],
        "report": ["--data", d, "--model", d, "--out", f"{d}/report"],
        "drift": ["--model", d, "--data", d],
        "whatif": ["--data", d, "--model", d, "--gate", "4.6", "none"],
        "demo": ["--out", f"{d}/demo"],
    }


@pytest.mark.parametrize("flag", ["--quiet", "--debug"])
def test_global_options_go_before_or_after_every_command(tmp_path, flag):
    parser = build_parser()
    minimal = _minimal_args(tmp_path)
    assert set(minimal) == set(_commands()), "add the new command to _minimal_args"
    name = flag.removeprefix("--")
    other = "--debug" if flag == "--quiet" else "--quiet"
    for command, rest in minimal.items():
        assert getattr(parser.parse_args([command, *rest]), name) is False, command
        assert getattr(parser.parse_args([flag, command, *rest]), name) is True, command
        assert getattr(parser.parse_args([command, *rest, flag]), name) is True, command
        both = parser.parse_args([other, command, *rest, flag])
        assert both.quiet is True and both.debug is True, command


def test_cli_source_types_no_gate_and_no_policy_date():
    source = Path(refundguard.cli.__file__).read_text()
    for literal in ("4.8", "4.80", "2024-08-09"):
        assert literal not in source, literal


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
    assert main(["validate", "--data", str(tmp_path / "d"), "--debug"]) == 1
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
    assert main(args) == 0
    warning = "refundguard: warning: validate rejected 3 orders rows, 3 refunds rows, 7 reviews rows; see the rejects table"
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [warning]  # one clean line, no source line
    rejects = pd.read_parquet(rej_path)
    orders = rejects[rejects["table"] == "orders"]
    assert sorted(orders["row_index"]) == bad_orders and set(orders["rule"]) == {"type"}
    refunds = rejects[rejects["table"] == "refunds"]
    # every order has exactly one refund (same position): the children of the bad orders
    assert sorted(refunds["row_index"]) == bad_orders and set(refunds["rule"]) == {"parent_rejected"}
    reviews = rejects[rejects["table"] == "reviews"]
    assert set(reviews.loc[reviews["rule"] == "range", "row_index"]) == set(bad_reviews)
    assert set(reviews.loc[reviews["rule"] == "parent_rejected", "row_index"]) == set(bad_orders)
    assert "parent_rejected" in captured.out and "rejects written" in captured.out
    assert main(args + ["--fail-on-rejects"]) == 1
    n_rejected = rejects.groupby("table")["row_index"].nunique().sum()
    assert capsys.readouterr().err.splitlines() == [warning, f"refundguard: {n_rejected:,d} rows rejected"]


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


# --------------------------------------------------------------------------- on a small simulated marketplace
def _assert_readable(out: str) -> None:
    """No float printed with more than 4 significant digits after the point."""
    assert not RAW_FLOAT.search(out), RAW_FLOAT.findall(out)


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    """The folder ``refundguard simulate`` writes for a small marketplace (shared by this module)."""
    folder = tmp_path_factory.mktemp("sim") / "data"
    argv = ["simulate", "--out", str(folder), "--buyers", "400", "--stores", "20", "--days", "80", "--seed", "3"]
    assert main([*argv, "--quiet"]) == 0
    return folder


def test_simulate_writes_every_table(simulated, tmp_path, capsys):
    assert sorted(p.name for p in simulated.iterdir()) == ["orders", "refunds", "reviews", "service"]
    assert main(["--quiet", "simulate", "--out", str(tmp_path / "d"), "--buyers", "50", "--stores", "5",
                 "--days", "10"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^orders\s+[\d,]+ rows$", out, re.MULTILINE) and f"written to {tmp_path / 'd'}" in out
    _assert_readable(out)


def test_validate_a_simulated_folder(simulated, capsys):
    assert main(["validate", "--data", str(simulated), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^refunds\s+[\d,]+\s+[\d,]+\s+0$", out, re.MULTILINE)
    _assert_readable(out)


def test_store_scores_as_of_history_explain_and_out(simulated, tmp_path, capsys):
    out_file = tmp_path / "scores.parquet"
    assert main(["store-scores", "--data", str(simulated), "--as-of", "2024-08-01", "--out", str(out_file)]) == 0
    out = capsys.readouterr().out
    scores = pd.read_parquet(out_file)
    scored = scores["score"].dropna()
    share = (scored >= DEFAULT_GATE).mean()
    assert f"stores: {len(scores):,d}  scored: {len(scored):,d}  share >= {DEFAULT_GATE:.2f}: {share:.1%}" in out
    assert "not assessed: " in out and f"written to {out_file}" in out
    _assert_readable(out)

    config = tmp_path / "score-config.json"
    config.write_text(json.dumps(ScoreConfig().to_dict()))
    assert main(["store-scores", "--data", str(simulated), "--history", "2024-07-01", "2024-07-03",
                 "--config", str(config), "--window-days", "14", "--debug"]) == 0
    out = capsys.readouterr().out
    assert "3 days" in out and "stores (last day):" in out and "window: 14 days" in out
    _assert_readable(out)

    store = str(scores["store_id"].iloc[0])
    assert main(["--quiet", "store-scores", "--data", str(simulated), "--as-of", "2024-08-01", "--explain", store]) == 0
    assert f"store {store}" in capsys.readouterr().out

    assert main(["store-scores", "--data", str(simulated)]) == 2
    assert "--as-of is required" in capsys.readouterr().err
    assert main(["store-scores", "--data", str(simulated), "--as-of", "2024-08-01",
                 "--config", str(tmp_path / "missing.json")]) == 2


def test_score_and_evaluate_a_simulated_folder_with_the_bundled_model(simulated, tmp_path, capsys):
    target = tmp_path / "scored.csv"
    assert main(["score", "--data", str(simulated), "--model", str(default_model_path()), "--out", str(target),
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    scored = pd.read_csv(target)
    assert f"in = scored + rejected: {len(scored):,} = {len(scored):,} + 0 refunds" in out
    for action in ACTIONS:
        n = int((scored["action"] == action).sum())
        assert re.search(rf"^  {action}\s+{n:,d}$", out, re.MULTILINE), action
    explained = scored["reasons"].map(json.loads)
    assert explained.map(lambda r: isinstance(r, list)).all() and explained.map(len).gt(0).any()
    _assert_readable(out)

    assert main(["evaluate", "--data", str(simulated), "--model", str(default_model_path()), "--debug"]) == 0
    out = capsys.readouterr().out
    assert "labelled refunds" in out and "by category:" in out
    _assert_readable(out)


def test_a_reader_closing_the_pipe_ends_the_command_quietly(simulated, tmp_path):
    """``refundguard score ... | head``: the file is written, no error line, no traceback, exit 141."""
    import subprocess
    import sys

    target = tmp_path / "scored.parquet"
    cmd = [sys.executable, "-m", "refundguard.cli", "score", "--data", str(simulated), "--model",
           str(default_model_path()), "--out", str(target), "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    proc.stdout.close()  # the reader goes away before the summary is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == refundguard.cli.EXIT_BROKEN_PIPE
    assert err == "", err
    assert target.exists()


# --------------------------------------------------------------------------- analyst tools
def test_drift_prints_the_psi_table_and_writes_csv_and_plot(simulated, tmp_path, capsys):
    model = str(default_model_path())
    assert main(["drift", "--model", model, "--data", str(simulated), "--from", "2024-07-01", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "against the training bins of model" in out
    assert re.search(r"^score\s+score\s+\d+\.\d{3}\s+(stable|moderate|significant)\s", out, re.MULTILINE)
    assert re.search(r"^gated_share\s+gated_share\s", out, re.MULTILINE)
    assert re.search(r"^\d+ significant, \d+ moderate, \d+ stable$", out, re.MULTILINE)
    _assert_readable(out)
    pytest.importorskip("matplotlib")
    assert main(["drift", "--model", model, "--data", str(simulated), "--out", str(tmp_path / "d")]) == 0
    assert {p.name for p in (tmp_path / "d").iterdir()} == {"drift.csv", "drift.png"}


def test_whatif_prints_one_line_per_variant(simulated, tmp_path, capsys):
    args = ["whatif", "--data", str(simulated), "--model", str(default_model_path()), "--gate", "4.6", "4.7", "none",
            "--intercept-precision", "0.9", "0.95", "--review-capacity", "3", "--from", "2024-07-15"]
    assert main(args) == 0
    out = capsys.readouterr().out
    variants = re.findall(r"^(gate \d\.\d\d|no gate)(, precision 0\.\d\d)? ", out, re.MULTILINE)
    assert [v[0] + v[1] for v in variants] == [
        "gate 4.60, precision 0.90", "gate 4.60, precision 0.95", "gate 4.70, precision 0.90",
        "gate 4.70, precision 0.95", "no gate, precision 0.90", "no gate, precision 0.95"]
    assert "review capacity 3 per day" in out and "abuse to merchants [interval]" in out
    _assert_readable(out)
    assert main(["whatif", "--data", str(simulated), "--model", str(default_model_path())]) == 0
    assert re.search(rf"^gate {DEFAULT_GATE:.2f} ", capsys.readouterr().out, re.MULTILINE)  # the policy's own gate
    assert main(["whatif", "--data", str(simulated), "--model", str(default_model_path()), "--review-capacity",
                 "-1"]) == 2
    assert "review_capacity" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["whatif", "--data", str(simulated), "--model", str(default_model_path()), "--gate", "high"])
    assert info.value.code == 2
    pytest.importorskip("matplotlib")
    assert main([*args, "--quiet", "--out", str(tmp_path / "w")]) == 0
    assert {p.name for p in (tmp_path / "w").iterdir()} == {"whatif.csv", "whatif.png"}


@pytest.mark.extras
def test_report_writes_the_page_and_its_figures(simulated, tmp_path, capsys):
    from refundguard.monitoring import FIGURES

    out_dir = tmp_path / "report"
    assert main(["report", "--data", str(simulated), "--model", str(default_model_path()), "--out", str(out_dir),
                 "--from", "2024-07-01", "--to", "2024-08-20", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "PR-AUC" in out and "abusive amount stopped" in out and f"written to {out_dir}" in out
    assert {p.name for p in out_dir.iterdir()} == {"index.html", *FIGURES}
    _assert_readable(out)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("x")
    assert main(["report", "--data", str(simulated), "--model", str(default_model_path()), "--out",
                 str(tmp_path / "other")]) == 2
    assert "index.html" in capsys.readouterr().err


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
    assert "test  PR-AUC" in out and "promoted" in out and (champion / "current").exists()
    thresholds = re.search(r"^thresholds: intercept (\S+), review (\S+)$", out, re.MULTILINE)
    assert thresholds, out
    for value in thresholds.groups():  # 4 significant digits
        assert value == "disabled" or value == f"{float(value):.4g}", value
    _assert_readable(out)
    assert main(args) == 0  # the same model again does not beat itself
    assert "kept" in capsys.readouterr().out

    assert main(["evaluate", "--data", str(alt_folder), "--model", str(model), "--from", "2024-10-01",
                 "--to", "2024-11-17", "--out", str(tmp_path / "m.json")]) == 0
    out = capsys.readouterr().out
    assert "pr_auc" in out and "by store-score band" in out and (tmp_path / "m.json").exists()
    _assert_readable(out)

    for suffix in ("parquet", "csv"):
        target = tmp_path / f"scored.{suffix}"
        assert main(["score", "--data", str(alt_folder), "--model", str(model), "--out", str(target),
                     "--always-score", "--from", "2024-06-01", "--quiet"]) == 0
        scored = pd.read_parquet(target) if suffix == "parquet" else pd.read_csv(target)
        from refundguard.guard import SCORED_COLUMNS

        assert list(scored.columns) == list(SCORED_COLUMNS)
        assert scored["abuse_probability"].notna().all()
        before = pd.to_datetime(scored["requested_at"], utc=True) < pd.Timestamp(GATE_DATE, tz="UTC")
        assert before.any() and not (scored.loc[before, "action"] == "merchant_handles").any()
    assert "in = scored + rejected: " in capsys.readouterr().out


def test_train_and_score_argument_errors(alt_folder, tmp_path, capsys):
    assert main(["train", "--data", str(alt_folder), "--train-end", "2024-09-01", "--valid-end", "2024-10-01",
                 "--out", str(tmp_path / "m"), "--champion", str(tmp_path / "c")]) == 2
    assert "--registry needs --test-end" in capsys.readouterr().err
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
    assert main(["demo", "--out", str(tmp_path / "demo"), "--buyers", "400", "--stores", "20", "--days", "80",
                 "--seed", "3", "--debug", "--quiet"]) == 0
    out = capsys.readouterr().out
    for step in ("1. simulated", "2. validated", "3. store experience scores", "4. decided", "5. against", "6. online"):
        assert step in out
    assert f"at {DEFAULT_GATE:.2f} or more" in out and f"before {GATE_DATE}  from {GATE_DATE}" in out
    assert (tmp_path / "demo" / "scored.csv").exists()
    assert "7. analyst report" in out
    _assert_readable(out)
