"""The data contract: loading, every validation rule, quarantine accounting."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refundguard.errors import ConfigError, RejectedRowsWarning, SchemaError
from refundguard.tables import (
    REJECT_COLUMNS,
    TABLES,
    empty_tables,
    load_tables,
    summarize_rejects,
    validate,
    write_table,
)

T0 = pd.Timestamp("2024-06-01", tz="UTC")


def make_tables(n_orders: int = 6, seed: int = 0) -> dict[str, pd.DataFrame]:
    """Small valid tables: every order has a refund and a review; a service table."""
    rng = np.random.default_rng(seed)
    paid = T0 + pd.to_timedelta(np.arange(n_orders) * 3600, unit="s")
    shipped = paid + pd.Timedelta(hours=20)
    delivered = shipped + pd.Timedelta(hours=30)
    orders = pd.DataFrame(
        {
            "order_id": [f"o{i}" for i in range(n_orders)],
            "buyer_id": [f"b{i % 3}" for i in range(n_orders)],
            "store_id": [f"s{i % 2}" for i in range(n_orders)],
            "category": ["apparel", "home"] * (n_orders // 2) + ["apparel"] * (n_orders % 2),
            "amount": rng.integers(10, 100, n_orders).astype(float),
            "paid_at": paid,
            "shipped_at": shipped,
            "delivered_at": delivered,
            "device_id": [f"d{i % 2}" for i in range(n_orders)],
            "address_id": [f"a{i % 4}" for i in range(n_orders)],
            "note": [f"extra {i}" for i in range(n_orders)],
        }
    )
    refunds = pd.DataFrame(
        {
            "refund_id": [f"r{i}" for i in range(n_orders)],
            "order_id": orders["order_id"],
            "requested_at": delivered + pd.Timedelta(hours=5),
            "kind": ["refund_only", "return_and_refund"] * (n_orders // 2) + ["refund_only"] * (n_orders % 2),
            "reason": ["quality"] * n_orders,
            "amount": orders["amount"] / 2,
            "resolved_at": [delivered[i] + pd.Timedelta(hours=10) if i % 3 else pd.NaT for i in range(n_orders)],
            "outcome": ["refunded" if i % 3 else None for i in range(n_orders)],
            "escalated": [i % 2 == 0 for i in range(n_orders)],
            "is_abuse": [bool(i % 2) if i % 3 else None for i in range(n_orders)],
        }
    )
    reviews = pd.DataFrame(
        {
            "order_id": orders["order_id"],
            "rating": rng.integers(1, 6, n_orders),
            "created_at": delivered + pd.Timedelta(days=1),
        }
    )
    service = pd.DataFrame(
        {
            "store_id": ["s0", "s1", "s0"],
            "started_at": [T0, T0 + pd.Timedelta(hours=1), T0 + pd.Timedelta(hours=2)],
            "first_response_s": [30.0, 200.0, 0.0],
        }
    )
    return {"orders": orders, "refunds": refunds, "reviews": reviews, "service": service}


def test_valid_tables_pass_strict_with_canonical_dtypes():
    clean, rejects = validate(make_tables(), mode="strict")
    assert rejects.empty and list(rejects.columns) == list(REJECT_COLUMNS)
    assert set(clean) == set(TABLES)
    o = clean["orders"]
    assert str(o["paid_at"].dtype) == "datetime64[ns, UTC]"
    assert o["amount"].dtype == np.float64
    assert pd.api.types.is_string_dtype(o["order_id"].dtype)
    # ship_by defaults to paid_at + 48h; extra columns are kept
    assert (o["ship_by"] - o["paid_at"] == pd.Timedelta(hours=48)).all()
    assert list(o["note"]) == [f"extra {i}" for i in range(6)]
    r = clean["refunds"]
    assert r["escalated"].dtype == bool
    assert str(r["is_abuse"].dtype) == "boolean"
    assert clean["reviews"]["rating"].dtype == np.int64


def test_naive_timestamps_mean_utc_and_other_zones_convert():
    t = make_tables()
    t["orders"]["paid_at"] = t["orders"]["paid_at"].dt.tz_localize(None)
    t["orders"]["shipped_at"] = t["orders"]["shipped_at"].dt.tz_convert("Asia/Shanghai")
    clean, _ = validate(t)
    ref, _ = validate(make_tables())
    pd.testing.assert_series_equal(clean["orders"]["paid_at"], ref["orders"]["paid_at"])
    pd.testing.assert_series_equal(clean["orders"]["shipped_at"], ref["orders"]["shipped_at"])


def test_optional_columns_and_service_table_default():
    t = make_tables()
    t["orders"] = t["orders"].drop(columns=["device_id", "address_id"])
    t["refunds"] = t["refunds"].drop(columns=["escalated", "is_abuse"])
    del t["service"]
    clean, _ = validate(t)
    assert clean["orders"]["device_id"].isna().all()
    assert not clean["refunds"]["escalated"].any()
    assert clean["refunds"]["is_abuse"].isna().all()
    assert clean["service"].empty and list(clean["service"].columns) == ["store_id", "started_at", "first_response_s"]


def test_empty_tables_are_valid():
    clean = empty_tables()
    assert all(len(df) == 0 for df in clean.values())
    again, rejects = validate(clean)
    assert rejects.empty


# one corruption per rule: (table, column, row, new value, expected rule, message fragment)
RULES = [
    ("orders", "order_id", 1, "o0", "unique", "must be unique"),
    ("orders", "buyer_id", 1, None, "required", "buyer_id is required"),
    ("orders", "store_id", 1, "", "required", "store_id is required"),
    ("orders", "category", 2, None, "required", "category is required"),
    ("orders", "amount", 1, -1.0, "min", "finite and >= 0"),
    ("orders", "amount", 1, np.inf, "min", "finite and >= 0"),
    ("orders", "amount", 1, "ten", "type", "cannot be read as a number"),
    ("orders", "paid_at", 1, None, "required", "paid_at is required"),
    ("orders", "paid_at", 1, "yesterday-ish", "type", "cannot be read as a UTC timestamp"),
    ("orders", "ship_by", 1, T0 - pd.Timedelta(days=3), "after_paid_at", "ship_by must be >= paid_at"),
    ("orders", "shipped_at", 1, T0 - pd.Timedelta(days=3), "after_paid_at", "shipped_at must be >= paid_at"),
    ("orders", "delivered_at", 1, T0, "after_shipped_at", "delivered_at must be >= shipped_at"),
    ("orders", "shipped_at", 1, None, "shipped_first", "null when shipped_at is null"),  # reported on delivered_at
    ("refunds", "refund_id", 1, "r0", "unique", "must be unique"),
    ("refunds", "order_id", 1, "nope", "exists", "must exist in orders"),
    ("refunds", "requested_at", 1, T0 - pd.Timedelta(days=1), "after_paid_at", "requested_at must be >= the order's paid_at"),
    ("refunds", "kind", 1, "refund", "enum", "kind must be one of"),
    ("refunds", "reason", 1, "meh", "enum", "reason must be one of"),
    ("refunds", "amount", 1, 0.0, "min", "finite and > 0"),
    ("refunds", "amount", 1, 10_000.0, "refund_sum", "sum to more than the order amount"),
    ("refunds", "resolved_at", 1, T0, "after_requested_at", "resolved_at must be >= requested_at"),
    ("refunds", "outcome", 1, None, "outcome_iff_resolved", "null exactly when resolved_at is null"),
    ("refunds", "outcome", 1, "approved", "enum", "outcome must be one of"),
    ("refunds", "escalated", 1, "maybe", "type", "cannot be read as a boolean"),
    ("refunds", "escalated", 1, None, "required", "escalated is required"),
    ("refunds", "is_abuse", 1, "sometimes", "type", "boolean or null"),
    ("reviews", "order_id", 1, "nope", "exists", "must exist in orders"),
    ("reviews", "rating", 1, 6, "range", "rating must be an integer in 1..5"),
    ("reviews", "rating", 1, 4.5, "type", "cannot be read as an integer"),
    ("reviews", "created_at", 1, T0 - pd.Timedelta(days=1), "after_paid_at", "created_at must be >= the order's paid_at"),
    ("service", "store_id", 1, None, "required", "store_id is required"),
    ("service", "started_at", 1, "not a time", "type", "UTC timestamp"),
    ("service", "first_response_s", 1, -5.0, "min", "finite and >= 0"),
]


def _corrupt(tables, table, column, row, value):
    df = tables[table]
    col = df[column].astype(object) if column in df else pd.Series([None] * len(df), dtype=object)
    col.iloc[row] = value
    df[column] = col
    return tables


@pytest.mark.parametrize(("table", "column", "row", "value", "rule", "fragment"), RULES)
def test_each_rule_strict_raises_and_quarantine_rejects(table, column, row, value, rule, fragment):
    t = _corrupt(make_tables(), table, column, row, value)
    with pytest.raises(SchemaError, match=fragment) as info:
        validate(t, mode="strict")
    err = info.value
    reported_on = "delivered_at" if rule == "shipped_first" else column
    assert err.table == table and err.column == reported_on and err.rule == rule
    assert err.n_bad >= 1 and err.values
    t = _corrupt(make_tables(), table, column, row, value)
    with pytest.warns(RejectedRowsWarning):
        clean, rejects = validate(t, mode="quarantine")
    hit = rejects[(rejects["table"] == table) & (rejects["rule"] == rule)]
    assert row in set(hit["row_index"])
    for name in TABLES:
        n_in = len(t[name])
        assert len(clean[name]) + rejects.loc[rejects["table"] == name, "row_index"].nunique() == n_in


def test_strict_message_names_table_column_rule_count_and_values():
    t = make_tables()
    t["orders"]["amount"] = t["orders"]["amount"].astype(object)
    t["orders"].loc[[1, 3], "amount"] = ["x", "y"]
    with pytest.raises(SchemaError, match=r"Table 'orders', column 'amount': rule 'type' .* fails for 2 row\(s\); first values: \['x', 'y'\]"):
        validate(t)


def test_duplicate_ids_reject_every_copy_and_children():
    t = make_tables()
    t["orders"].loc[2, "order_id"] = "o1"
    with pytest.warns(RejectedRowsWarning):
        clean, rejects = validate(t, mode="quarantine")
    o = rejects[rejects["table"] == "orders"]
    assert set(o["row_index"]) == {1, 2} and set(o["rule"]) == {"unique"}
    children = rejects[rejects["table"] != "orders"]
    # the refunds and reviews of o1 and of the now-renamed o2 both point to a rejected id,
    # except those of o2, whose id no longer exists at all
    assert set(children.loc[children["rule"] == "parent_rejected", "key"]) >= {"r1"}
    assert "o1" not in set(clean["orders"]["order_id"])
    assert "o1" not in set(clean["refunds"]["order_id"]) and "o1" not in set(clean["reviews"]["order_id"])


def test_refund_sum_rejects_the_refund_that_goes_over():
    t = make_tables()
    o_amount = t["orders"].loc[0, "amount"]
    extra = t["refunds"].iloc[[0]].copy()
    extra["refund_id"] = "r_extra"
    extra["requested_at"] = extra["requested_at"] + pd.Timedelta(hours=1)
    extra["amount"] = o_amount / 2 + 0.02
    t["refunds"] = pd.concat([t["refunds"], extra], ignore_index=True)
    with pytest.warns(RejectedRowsWarning):
        clean, rejects = validate(t, mode="quarantine")
    assert list(rejects["key"]) == ["r_extra"] and list(rejects["rule"]) == ["refund_sum"]
    # within the 0.01 tolerance is fine
    t["refunds"].loc[len(t["refunds"]) - 1, "amount"] = o_amount / 2 + 0.005
    validate(t)


def test_missing_column_and_table_raise_in_both_modes():
    t = make_tables()
    t["refunds"] = t["refunds"].drop(columns=["reason"])
    for mode in ("strict", "quarantine"):
        with pytest.raises(SchemaError, match=r"missing required column\(s\) \['reason'\]. Columns in table"):
            validate(t, mode=mode)
    t = make_tables()
    del t["reviews"]
    with pytest.raises(SchemaError, match=r"Missing required table\(s\) \['reviews'\]"):
        validate(t)
    with pytest.raises(SchemaError, match=r"Unknown table name\(s\) \['order'\]"):
        validate({"order": make_tables()["orders"]})
    with pytest.raises(ConfigError, match="'mode' parameter of validate must be 'strict' or 'quarantine'"):
        validate(make_tables(), mode="lenient")


def test_out_of_range_timestamp_and_numbers_as_timestamps_are_type_rejects():
    t = make_tables()
    t["reviews"]["created_at"] = t["reviews"]["created_at"].astype(object)
    t["reviews"].loc[0, "created_at"] = "9999-01-01"
    with pytest.raises(SchemaError, match="rule 'type'"):
        validate(t)
    t = make_tables()
    t["service"]["started_at"] = [1, 2, 3]
    with pytest.raises(SchemaError, match="service.*started_at.*type"):
        validate(t)


def test_integer_ids_are_accepted_as_text():
    t = make_tables()
    t["service"]["store_id"] = [0, 1, 0]
    clean, _ = validate(t)
    assert list(clean["service"]["store_id"]) == ["0", "1", "0"]


# --------------------------------------------------------------------------- loading
@pytest.mark.parametrize("fmt", ["parquet", "csv", "partitioned"])
def test_load_tables_from_folder_round_trip(tmp_path: Path, fmt: str):
    ref, _ = validate(make_tables())
    for name, df in ref.items():
        if fmt == "parquet":
            df.to_parquet(tmp_path / f"{name}.parquet", index=False)
        elif fmt == "csv":
            df.to_csv(tmp_path / f"{name}.csv", index=False)
        else:
            (tmp_path / name).mkdir()
            half = len(df) // 2
            df.iloc[:half].to_parquet(tmp_path / name / "part-0.parquet", index=False)
            df.iloc[half:].to_parquet(tmp_path / name / "part-1.parquet", index=False)
    clean, rejects = validate(load_tables(tmp_path))
    assert rejects.empty
    for name in TABLES:
        pd.testing.assert_frame_equal(clean[name], ref[name], check_dtype=fmt != "csv")


def test_load_tables_errors(tmp_path: Path):
    with pytest.raises(SchemaError, match="does not exist"):
        load_tables(tmp_path / "nowhere")
    (tmp_path / "orders.csv").write_text("order_id\n")
    with pytest.raises(SchemaError, match=r"Missing required table\(s\) \['refunds', 'reviews'\]"):
        load_tables(tmp_path)
    (tmp_path / "orders.parquet").write_bytes(b"not parquet")
    with pytest.raises(SchemaError, match="ambiguous"):
        load_tables(tmp_path)
    (tmp_path / "orders.csv").unlink()
    (tmp_path / "refunds.csv").write_text("refund_id\n")
    (tmp_path / "reviews.csv").write_text("order_id\n")
    with pytest.raises(SchemaError, match="cannot read"):
        load_tables(tmp_path)


def test_write_table_formats(tmp_path: Path):
    df = pd.DataFrame({"a": [1, 2]})
    write_table(df, tmp_path / "x.parquet")
    write_table(df, tmp_path / "x.csv")
    assert pd.read_parquet(tmp_path / "x.parquet").equals(df)
    assert pd.read_csv(tmp_path / "x.csv").equals(df)
    with pytest.raises(SchemaError, match="Unsupported output format"):
        write_table(df, tmp_path / "x.xlsx")


# --------------------------------------------------------------------------- properties
_BAD_VALUES = {
    "id": [None, "", "   ", 3.5, True],
    "str": [None, "", 2.5],
    "float": ["abc", -1.0, np.nan, np.inf, True],
    "ts": ["not a date", None, "2024-13-45"],
    "int": [0, 6, 2.5, "five"],
    "enum": ["nonsense", None, 7],
}
_CORRUPTIBLE = {
    "orders": [("order_id", "id"), ("buyer_id", "id"), ("store_id", "id"), ("category", "str"),
               ("amount", "float"), ("paid_at", "ts")],
    "refunds": [("refund_id", "id"), ("kind", "enum"), ("reason", "enum"), ("requested_at", "ts")],
    "reviews": [("rating", "int"), ("created_at", "ts")],
    "service": [("first_response_s", "float"), ("started_at", "ts"), ("store_id", "id")],
}


@st.composite
def corruptions(draw):
    n = draw(st.integers(4, 12))
    seed = draw(st.integers(0, 10_000))
    cells = draw(
        st.lists(
            st.tuples(
                st.sampled_from(sorted(_CORRUPTIBLE)),
                st.integers(0, 10_000),
                st.integers(0, 10_000),
                st.integers(0, 10_000),
            ),
            min_size=1,
            max_size=6,
        )
    )
    return n, seed, cells


@given(corruptions())
def test_quarantine_rejects_exactly_the_corrupted_rows_and_children(case):
    n, seed, cells = case
    tables = make_tables(n, seed)
    # unique ids must stay unique except where we corrupt them: bad values never collide with ids
    expected: dict[str, set[int]] = {name: set() for name in TABLES}
    original_order_ids = tables["orders"]["order_id"].copy()
    for table, r_col, r_row, r_val in cells:
        col, kind = _CORRUPTIBLE[table][r_col % len(_CORRUPTIBLE[table])]
        row = r_row % len(tables[table])
        value = _BAD_VALUES[kind][r_val % len(_BAD_VALUES[kind])]
        _corrupt(tables, table, col, row, value)
        expected[table].add(row)
    # a corrupted order takes its refunds and reviews with it
    bad_orders = set(original_order_ids.iloc[sorted(expected["orders"])])
    for child in ("refunds", "reviews"):
        oid = tables[child]["order_id"].astype(object)
        expected[child] |= set(np.flatnonzero(oid.isin(bad_orders)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RejectedRowsWarning)
        clean, rejects = validate(tables, mode="quarantine")
    for name in TABLES:
        got = set(rejects.loc[rejects["table"] == name, "row_index"])
        assert got == expected[name], (name, got, expected[name])
        assert len(clean[name]) + len(got) == len(tables[name])
    # children of rejected orders carry parent_rejected (or exists, when the id itself was corrupted)
    for child in ("refunds", "reviews"):
        oid = tables[child]["order_id"].astype(object)
        orphans = set(np.flatnonzero(oid.isin(bad_orders)))
        kids = rejects[(rejects["table"] == child) & rejects["rule"].isin(["parent_rejected", "exists"])]
        assert orphans <= set(kids["row_index"])
    # strict raises SchemaError, never another exception
    with pytest.raises(SchemaError):
        validate(tables, mode="strict")


@given(st.lists(st.one_of(st.none(), st.text(max_size=5), st.floats(), st.integers(), st.booleans(),
                          st.datetimes()), min_size=1, max_size=8),
       st.sampled_from([("orders", "amount"), ("orders", "paid_at"), ("refunds", "escalated"),
                        ("reviews", "rating"), ("orders", "buyer_id"), ("refunds", "outcome")]))
def test_arbitrary_cells_never_raise_anything_but_schema_error(values, where):
    table, col = where
    tables = make_tables(len(values))
    tables[table][col] = pd.Series(values, dtype=object)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RejectedRowsWarning)
            clean, rejects = validate(tables, mode="quarantine")
    except SchemaError:
        raise AssertionError("quarantine raised on cell values") from None
    for name in TABLES:
        assert len(clean[name]) + rejects.loc[rejects["table"] == name, "row_index"].nunique() == len(tables[name])
    try:
        validate(tables, mode="strict")
    except SchemaError:
        pass


def test_summarize_rejects_counts_rows():
    t = make_tables()
    t["orders"].loc[[0, 1], "buyer_id"] = None
    with pytest.warns(RejectedRowsWarning):
        _, rejects = validate(t, mode="quarantine")
    s = summarize_rejects(rejects)
    row = s[(s["table"] == "orders") & (s["rule"] == "required")]
    assert int(row["rows"].iloc[0]) == 2
    assert set(s.loc[s["table"] == "refunds", "rule"]) == {"parent_rejected"}
