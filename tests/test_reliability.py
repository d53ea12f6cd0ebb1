"""Issue 12, items 1 and 3: no computation on uncoerced tables, and sane numbers, ids and timestamps.

Each test names the case of issue 12 it reproduces. Case 1: the simulator's tables written as
CSV and scored without validating first; case 6: "validated already" tables that are not;
case 4: an amount of 1e307; case 8: a non-ISO text timestamp; case 13: ids padded with
whitespace.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import refundguard as rg
from refundguard.errors import RejectedRowsWarning, SchemaError
from refundguard.guard import RefundGuard, default_model_path
from refundguard.pipeline import canonical_tables as pipeline_canonical_tables
from refundguard.scores import (
    calibrate_bands,
    explain_store,
    store_score_history,
    store_scores,
    store_scores_for_requests,
)
from refundguard.simulate import SimulationConfig, simulate
from refundguard.tables import (
    MAX_AMOUNT,
    TABLES,
    canonical_tables,
    load_tables,
    non_canonical_column,
    validate,
)
from refundguard.training import evaluate as training_evaluate
from tests.test_tables import make_tables

AS_OF = "2024-08-15"


@pytest.fixture(scope="module")
def sim_tables() -> dict[str, pd.DataFrame]:
    """A small simulated marketplace with escalated refunds (the setting of case 1)."""
    tables = simulate(SimulationConfig(n_buyers=400, n_stores=20, days=80, seed=3))
    assert tables["refunds"]["escalated"].any() and not tables["refunds"]["escalated"].all()
    return tables


@pytest.fixture(scope="module")
def csv_dir(tmp_path_factory, sim_tables) -> Path:
    """The simulator's tables written as CSV, as a user exports them."""
    folder = tmp_path_factory.mktemp("csv")
    for name, df in sim_tables.items():
        df.to_csv(folder / f"{name}.csv", index=False)
    return folder


@pytest.fixture(scope="module")
def clean(sim_tables) -> dict[str, pd.DataFrame]:
    out, rejects = validate(sim_tables, mode="strict")
    assert rejects.empty
    return out


# --------------------------------------------------------------------------- item 1: one coercion path
def test_case1_store_scores_on_unvalidated_csv_text_equals_the_validated_run(csv_dir, clean):
    raw = load_tables(csv_dir)
    assert set(raw["refunds"]["escalated"]) == {"False", "True"}  # text, which is truthy
    expected = store_scores(clean, AS_OF)
    assert expected["dispute_rate_raw"].notna().any()
    pd.testing.assert_frame_equal(store_scores(raw, AS_OF), expected)


def _score_calls(tables_day: str, store: str = "s0001"):
    """Every public function of refundguard.scores that takes tables, as (name, call)."""
    def requests(t):
        r = t["refunds"]
        return pd.DataFrame({"requested_at": r["requested_at"], "order_id": r["order_id"]})

    return {
        "store_scores": lambda t, **kw: store_scores(t, tables_day, **kw),
        "store_score_history": lambda t, **kw: store_score_history(t, "2024-08-10", "2024-08-15", **kw),
        "explain_store": lambda t, **kw: explain_store(t, store, tables_day, **kw).to_text(),
        "calibrate_bands": lambda t, **kw: calibrate_bands(t, "2024-06-01", tables_day, min_stores=5, **kw).to_dict(),
        "store_scores_for_requests": lambda t, **kw: store_scores_for_requests(t, requests(t), **kw),
    }


@pytest.mark.parametrize("name", list(_score_calls(AS_OF)))
def test_every_score_function_coerces_raw_tables_and_checks_dtypes_when_told_validated(name, csv_dir, clean):
    call = _score_calls(AS_OF)[name]
    raw = load_tables(csv_dir)
    if name == "store_scores_for_requests":
        # the requests are the caller's own frame: give both calls the same one
        req = pd.DataFrame({"requested_at": clean["refunds"]["requested_at"], "order_id": clean["refunds"]["order_id"]})
        got = store_scores_for_requests(raw, req)
        expected = store_scores_for_requests(clean, req)
    else:
        got, expected = call(raw), call(clean)
    if isinstance(expected, pd.DataFrame):
        pd.testing.assert_frame_equal(got, expected)
    else:
        assert got == expected
    with pytest.raises(SchemaError) as info:
        call(raw, validate_tables=False)
    assert (info.value.table, info.value.column, info.value.rule) == ("orders", "amount", "dtype")


def test_case6_validated_already_but_not_canonical_is_a_schema_error_not_a_type_error(csv_dir):
    raw = load_tables(csv_dir)
    for fn in (canonical_tables, pipeline_canonical_tables):
        with pytest.raises(SchemaError) as info:
            fn(raw, validate_tables=False)
        e = info.value
        assert (e.table, e.column, e.rule) == ("orders", "amount", "dtype")
        assert "'orders'" in str(e) and "'amount'" in str(e) and "float64" in str(e)
    guard = RefundGuard.default()
    with pytest.raises(SchemaError) as info:
        guard.evaluate(raw, validate_tables=False)
    assert info.value.rule == "dtype"
    with pytest.raises(SchemaError):
        training_evaluate(default_model_path(), raw, validate_tables=False)


def test_guard_evaluate_on_raw_csv_tables_equals_the_validated_run(csv_dir, clean):
    guard = RefundGuard.default()
    assert guard.evaluate(load_tables(csv_dir)).to_dict() == guard.evaluate(clean, validate_tables=False).to_dict()


def test_validated_tables_pass_through_without_a_copy(clean, tmp_path):
    out = canonical_tables(clean, validate_tables=False)
    assert all(out[name] is clean[name] for name in TABLES)
    assert all(canonical_tables(clean)[name] is clean[name] for name in TABLES)
    # slices, concatenations and a Parquet round trip of validated tables stay canonical
    half = {name: df.iloc[: len(df) // 2] for name, df in clean.items()}
    assert all(non_canonical_column(n, df) is None for n, df in half.items())
    both = {name: pd.concat([half[name], df.iloc[len(df) // 2:]]) for name, df in clean.items()}
    assert all(non_canonical_column(n, df) is None for n, df in both.items())
    for name, df in clean.items():
        df.to_parquet(tmp_path / f"{name}.parquet")
    assert all(non_canonical_column(n, df) is None for n, df in load_tables(tmp_path).items())


def test_a_missing_service_table_is_an_empty_canonical_one(clean):
    three = {name: clean[name] for name in ("orders", "refunds", "reviews")}
    out = canonical_tables(three, validate_tables=False)
    assert len(out["service"]) == 0 and non_canonical_column("service", out["service"]) is None


@pytest.mark.parametrize(
    "table, column, change, rule",
    [
        ("refunds", "escalated", lambda s: s.astype("str"), "dtype"),
        ("orders", "paid_at", lambda s: s.dt.tz_localize(None), "dtype"),
        ("orders", "paid_at", lambda s: s.dt.as_unit("us"), "dtype"),
        ("reviews", "rating", lambda s: s.astype("int32"), "dtype"),
        ("refunds", "is_abuse", lambda s: s.astype(object), "dtype"),
        ("orders", "order_id", lambda s: s.astype(object), "dtype"),
        ("orders", "device_id", None, "missing_column"),
    ],
)
def test_one_non_canonical_column_is_named_or_coerced(table, column, change, rule):
    validated, _ = validate(make_tables(), mode="strict")
    tables = dict(validated)
    tables[table] = validated[table].drop(columns=[column]) if change is None else \
        validated[table].assign(**{column: change(validated[table][column])})
    with pytest.raises(SchemaError) as info:
        canonical_tables(tables, validate_tables=False)
    assert (info.value.table, info.value.column, info.value.rule) == (table, column, rule)
    coerced = canonical_tables(tables)  # the default coerces through validate
    for name in TABLES:
        assert non_canonical_column(name, coerced[name]) is None


def test_canonical_tables_still_checks_the_table_names():
    with pytest.raises(SchemaError) as info:
        canonical_tables({"orders": make_tables()["orders"]}, validate_tables=False)
    assert info.value.rule == "missing_table"


# --------------------------------------------------------------------------- item 3: sane numbers
def _quarantine(tables):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RejectedRowsWarning)
        return validate(tables, mode="quarantine")


def test_case4_an_amount_above_the_bound_is_a_range_reject():
    t = make_tables()
    t["orders"].loc[1, "amount"] = 1e307
    t["orders"].loc[2, "amount"] = MAX_AMOUNT  # the bound itself is allowed
    t["refunds"].loc[2, "amount"] = 1.0
    with pytest.raises(SchemaError) as info:
        validate(t, mode="strict")
    assert (info.value.table, info.value.column, info.value.rule) == ("orders", "amount", "range")
    clean_t, rejects = _quarantine(t)
    assert set(rejects.loc[rejects["rule"] == "range", "key"]) == {"o1"}
    assert "o2" in set(clean_t["orders"]["order_id"])
    # refunds too; and the guarded entry points refuse such tables instead of overflowing
    t = make_tables()
    t["orders"].loc[3, "amount"] = 5e12
    t["refunds"].loc[3, "amount"] = 2e12
    _, rejects = _quarantine(t)
    assert {("orders", "o3"), ("refunds", "r3")} <= set(
        rejects.loc[rejects["rule"] == "range", ["table", "key"]].itertuples(index=False, name=None))
    with pytest.raises(SchemaError) as info:
        store_scores(t, "2024-06-10")
    assert info.value.rule == "range"


def test_case8_text_timestamps_must_be_iso_8601(tmp_path):
    t = make_tables()
    for name, df in t.items():
        df.to_csv(tmp_path / f"{name}.csv", index=False)
    orders = pd.read_csv(tmp_path / "orders.csv", dtype=str)
    orders.loc[0, "paid_at"] = "01/06/2024 00:11"  # day first or month first? never guessed
    orders.loc[1, "paid_at"] = "now"
    orders.loc[2, "paid_at"] = "today"
    orders.loc[3, "paid_at"] = "2024-06-01T03:00:00+02:00"  # ISO 8601 with an offset: fine
    orders.to_csv(tmp_path / "orders.csv", index=False)
    raw = load_tables(tmp_path)
    with pytest.raises(SchemaError) as info:
        validate(raw, mode="strict")
    assert (info.value.column, info.value.rule) == ("paid_at", "type")
    assert info.value.values[:3] == ["01/06/2024 00:11", "now", "today"]
    clean_t, rejects = _quarantine(raw)
    bad = rejects[(rejects["table"] == "orders") & (rejects["column"] == "paid_at")]
    assert set(bad["key"]) == {"o0", "o1", "o2"} and set(bad["rule"]) == {"type"}
    o3 = clean_t["orders"].set_index("order_id").loc["o3", "paid_at"]
    assert o3 == pd.Timestamp("2024-06-01T01:00:00", tz="UTC")


def test_case13_ids_with_leading_or_trailing_whitespace_are_rejected():
    t = make_tables()
    t["orders"].loc[1, "order_id"] = "o0 "  # beside "o0": not a second order
    t["orders"].loc[2, "buyer_id"] = " b2"
    t["refunds"].loc[4, "refund_id"] = "r4\t"
    t["reviews"].loc[5, "order_id"] = "o5\n"
    with pytest.raises(SchemaError) as info:
        validate(t, mode="strict")
    assert (info.value.table, info.value.column, info.value.rule) == ("orders", "order_id", "id_whitespace")
    assert info.value.values == ["o0 "]
    clean_t, rejects = _quarantine(t)
    ws = rejects[rejects["rule"] == "id_whitespace"]
    assert set(ws[["table", "column", "value"]].itertuples(index=False, name=None)) == {
        ("orders", "order_id", "o0 "), ("orders", "buyer_id", " b2"),
        ("refunds", "refund_id", "r4\t"), ("reviews", "order_id", "o5\n"),
    }
    assert "o0" in set(clean_t["orders"]["order_id"]) and not clean_t["orders"]["order_id"].str.contains(r"\s").any()
    # the rows that reference the rejected orders are rejected with them ("o1" is no order now)
    assert "r2" in set(rejects.loc[rejects["rule"] == "parent_rejected", "key"])
    assert "r1" in set(rejects.loc[rejects["rule"] == "exists", "key"])


def test_new_rule_codes_are_documented():
    from refundguard.errors import SCHEMA_RULES

    assert {"id_whitespace", "dtype", "range"} <= set(SCHEMA_RULES)
    assert "1e12" in SCHEMA_RULES["range"] and MAX_AMOUNT == 1e12
    # 1e12 units in cents is exact in float64 and far from the int64 limit
    assert MAX_AMOUNT * 100 < 2**53 and np.iinfo(np.int64).max / (MAX_AMOUNT * 100) > 90_000
    assert rg.__name__ == "refundguard"


# --------------------------------------------------------------------------- the README's promises
def test_every_guarantee_in_the_readme_names_tests_that_exist():
    """Each row of README "Guarantees" names tests (``tests/f.py::name``, then ``::name`` in the same file;
    ``*`` matches any suffix) that exist."""
    import fnmatch
    import re

    root = Path(__file__).resolve().parents[1]
    text = (root / "README.md").read_text()
    section = text.split("\n## Guarantees\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| promise")
            and not line.startswith("| ---")]
    assert len(rows) >= 10
    for row in rows:
        refs = re.findall(r"`((?:tests/[\w/]+\.py)?::[\w*]+)`", row)
        assert refs, row
        current = None
        for ref in refs:
            file, name = ref.split("::")
            current = file or current
            source = (root / current).read_text()
            defined = re.findall(r"^def (test_\w+)", source, re.MULTILINE)
            assert fnmatch.filter(defined, name), f"{current}::{name} (README Guarantees) does not exist"


@pytest.mark.parametrize("validate_tables", [True, False])
def test_a_validated_frame_edited_afterwards_is_refused_not_computed_on(validate_tables):
    """Canonical dtypes are not enough: the per-cell rules are checked on them too (cheaply)."""
    clean, _ = rg.validate(make_tables())
    for table, column, value, rule in (("refunds", "kind", "REFUND-ONLY", "enum"),
                                       ("orders", "amount", -5.0, "min"),
                                       ("reviews", "rating", 9, "range"),
                                       ("orders", "buyer_id", np.nan, "required")):
        edited = {k: v.copy() for k, v in clean.items()}
        edited[table].loc[0, column] = value
        with pytest.raises(SchemaError) as e:
            canonical_tables(edited, validate_tables)
        assert (e.value.table, e.value.column, e.value.rule) == (table, column, rule)
    assert canonical_tables(clean, validate_tables)["orders"] is clean["orders"]  # untouched tables pass as they are


# --------------------------------------------------------------------------- instants in the contract's range
def test_instants_outside_1970_to_2200_are_range_rejects_everywhere(tmp_path):
    """1732 is a valid pandas instant, but 2024 - 1732 overflows int64 ns: the batch features wrapped
    around while assess computed in Python ints (the fuzz profile found assess_many != assess)."""
    from datetime import datetime

    from refundguard.errors import RequestError

    t = make_tables(8)
    t["orders"]["paid_at"] = t["orders"]["paid_at"].astype(object)
    t["orders"].loc[1, "paid_at"] = pd.Timestamp("1732-01-01", tz="UTC")
    t["orders"].loc[2, "paid_at"] = pd.Timestamp("1970-01-01", tz="UTC")  # the lower bound itself is allowed
    t["orders"].loc[2, "shipped_at"] = pd.NaT
    t["orders"].loc[2, "delivered_at"] = pd.NaT
    t["refunds"].loc[3, "resolved_at"] = pd.Timestamp("2200-01-01", tz="UTC")
    with pytest.raises(SchemaError) as info:
        validate(t, mode="strict")
    assert info.value.rule == "range"
    clean_t, rejects = _quarantine(t)
    ranged = set(zip(rejects.loc[rejects["rule"] == "range", "table"], rejects.loc[rejects["rule"] == "range", "key"],
                     strict=True))
    assert ranged == {("orders", "o1"), ("refunds", "r3")}
    assert "o2" in set(clean_t["orders"]["order_id"])
    # an edited validated frame is refused by the cheap canonical check too
    edited = {k: v.copy() for k, v in clean_t.items()}
    edited["orders"].loc[0, "paid_at"] = pd.Timestamp("1969-12-31 23:59:59", tz="UTC")
    with pytest.raises(SchemaError):
        rg.store_scores(edited, "2024-06-05", validate_tables=False)
    # the batch path (Parquet, screened) rejects exactly what validate rejects
    data = tmp_path / "data"
    data.mkdir()
    for name, df in t.items():
        df.to_parquet(data / f"{name}.parquet")
    guard = RefundGuard.load(default_model_path())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, batch_rejects = guard.score_history(data, return_rejects=True)
    assert set(zip(batch_rejects["table"], batch_rejects["row_index"], batch_rejects["rule"], strict=True)) == set(
        zip(rejects["table"], rejects["row_index"], rejects["rule"], strict=True))
    # online: a RequestError naming the field
    store = rg.ProfileStore()
    order = {"order_id": "o9", "buyer_id": "b", "store_id": "s", "category": "home", "amount": 10.0,
             "paid_at": datetime(1732, 1, 1)}
    with pytest.raises(RequestError) as info:
        store.observe_order(order)
    assert info.value.field == "paid_at"
    store.observe_order(dict(order, paid_at="2024-06-01T00:00:00Z", delivered_at="  "))  # blank: missing
