"""Fuzzing the entry points: hostile values never escape as anything but the library's own errors,
and whatever is accepted gives the same result as its clean equivalent.

Run longer with ``HYPOTHESIS_PROFILE=fuzz`` (10x the ``ci`` examples).
"""

from __future__ import annotations

import warnings
from datetime import date, datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

import refundguard as rg
from refundguard.errors import RefundGuardError, RejectedRowsWarning, RequestError, UnseenCategoryWarning
from refundguard.policy import ACTIONS
from refundguard.tables import TABLES
from tests.test_tables import make_tables

# --------------------------------------------------------------------------- hostile values
HOSTILE = st.one_of(
    st.none(),
    st.just(float("nan")),
    st.just(float("inf")),
    st.just(float("-inf")),
    st.just(1e307),
    st.just(-1e307),
    st.just(5e-324),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=6),
    st.just(""),
    st.just("   "),
    st.just("x" * 10_000),
    st.just(" o0 "),
    st.just("o0 "),
    st.sampled_from(["refund_only", "REFUND-ONLY", "fraud", "quality", "rejected", "True", "False", "yes", "0"]),
    st.sampled_from(["2024-06-01T10:00:00", "2024-06-01T10:00:00Z", "2024-06-01T18:00:00+08:00",
                     "01/06/2024 00:11", "now", "today", "2024-13-45", "9999-12-31T23:59:59",
                     "1600-01-01T00:00:00", "1969-12-31T23:59:59Z"]),
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)),
    st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1),
                 timezones=st.sampled_from([timezone.utc, timezone(timedelta(hours=8)),
                                            timezone(timedelta(hours=-5, minutes=-30))])),
    st.dates(),
    st.binary(max_size=4),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
)

COLUMNS = [(t, c) for t, cols in {
    "orders": ["order_id", "buyer_id", "store_id", "category", "amount", "paid_at", "shipped_at", "delivered_at",
               "device_id", "address_id"],
    "refunds": ["refund_id", "order_id", "requested_at", "kind", "reason", "amount", "resolved_at", "outcome",
                "escalated", "is_abuse"],
    "reviews": ["order_id", "rating", "created_at"],
    "service": ["store_id", "started_at", "first_response_s"],
}.items() for c in cols]

FUZZ = settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RejectedRowsWarning)
        warnings.simplefilter("ignore", UnseenCategoryWarning)  # the tiny tables hold a level the model lacks
        return fn(*args, **kwargs)


def _corrupt(tables: dict[str, pd.DataFrame], cells: list[tuple[tuple[str, str], int, object]]) -> dict:
    out = {k: v.copy() for k, v in tables.items()}
    for (table, col), row, value in cells:
        df = out[table]
        i = row % len(df)
        s = df[col].astype(object)
        s.iloc[i] = value
        df[col] = s
    return out


CELLS = st.lists(st.tuples(st.sampled_from(COLUMNS), st.integers(0, 50), HOSTILE), min_size=1, max_size=6)


@FUZZ
@given(CELLS)
@example([(("orders", "order_id"), 0, [])])  # an empty list in a cell (numpy 2.0 warned on pd.isna([]))
@example([(("orders", "amount"), 1, np.array([1.0, 2.0]))])
def test_validate_takes_anything_and_accounts_for_every_row(cells):
    tables = _corrupt(make_tables(8), cells)
    try:
        clean, rejects = _quiet(rg.validate, tables, mode="quarantine")
    except RefundGuardError as exc:  # only a table-wide problem may stop quarantine mode
        assert exc.rule in ("missing_column", "duplicate_column"), exc
        return
    for name in TABLES:
        n_in = len(tables[name]) if name in tables else 0
        assert len(clean[name]) + rejects.loc[rejects["table"] == name, "row_index"].nunique() == n_in
    # what was accepted is canonical and validates again unchanged (strict mode accepts it)
    again, none = rg.validate(clean, mode="strict")
    assert len(none) == 0
    for name in TABLES:
        pd.testing.assert_frame_equal(again[name], clean[name])
    with pytest.raises(RefundGuardError) if len(rejects) else _nothing():
        rg.validate(tables, mode="strict")


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _equivalent_text(tables: dict[str, pd.DataFrame], zone: str, data) -> dict[str, pd.DataFrame]:
    """The same rows re-encoded as a foreign tool would write them: text cells, offsets, ints as text."""
    out = {}
    for name, df in tables.items():
        df = df.copy()
        for col in df.columns:
            s = df[col]
            if isinstance(s.dtype, pd.DatetimeTZDtype):
                style = data.draw(st.sampled_from(["offset", "naive", "z"]))
                local = s.dt.tz_convert(zone)
                if style == "offset":
                    text = local.map(lambda v: None if pd.isna(v) else v.isoformat())
                elif style == "naive":
                    text = s.dt.tz_localize(None).map(lambda v: None if pd.isna(v) else v.isoformat())
                else:
                    text = s.map(lambda v: None if pd.isna(v) else v.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
                df[col] = text.astype(object)
            elif pd.api.types.is_bool_dtype(s.dtype) or str(s.dtype) == "boolean":
                df[col] = s.map(lambda v: None if pd.isna(v) else ("true" if v else "false")).astype(object)
            elif pd.api.types.is_float_dtype(s.dtype):
                df[col] = s.map(lambda v: None if pd.isna(v) else repr(float(v))).astype(object)
            elif pd.api.types.is_integer_dtype(s.dtype):
                df[col] = s.map(str).astype(object)
        out[name] = df
    return out


@FUZZ
@given(st.sampled_from(["UTC", "Asia/Shanghai", "America/New_York", "Pacific/Chatham"]), st.data())
def test_the_same_rows_written_as_text_give_the_same_tables_and_scores(zone, data):
    tables = make_tables(8)
    clean, _ = rg.validate(tables)
    text = _equivalent_text(tables, zone, data)
    clean_text, rejects = rg.validate(text)
    assert len(rejects) == 0
    for name in TABLES:
        pd.testing.assert_frame_equal(clean_text[name], clean[name], check_like=False)
    as_of = "2024-06-05"
    pd.testing.assert_frame_equal(rg.store_scores(text, as_of), rg.store_scores(clean, as_of))


@FUZZ
@given(CELLS)
def test_store_scores_never_raise_anything_but_library_errors_and_match_the_clean_rows(cells):
    tables = _corrupt(make_tables(8), cells)
    try:
        got = rg.store_scores(tables, "2024-06-05")
    except RefundGuardError:
        return  # bad rows are refused (strict coercion), never computed on
    clean, rejects = _quiet(rg.validate, tables, mode="quarantine")
    assert len(rejects) == 0  # accepted only when every row is fine ...
    pd.testing.assert_frame_equal(got, rg.store_scores(clean, "2024-06-05"))  # ... and then equal to the clean run


# --------------------------------------------------------------------------- online events and requests
ORDER_FIELDS = ["order_id", "buyer_id", "store_id", "category", "amount", "paid_at", "shipped_at", "delivered_at",
                "device_id", "address_id"]
REFUND_FIELDS = ["refund_id", "order_id", "requested_at", "kind", "reason", "amount"]
REQUEST_FIELDS = ["refund_id", "requested_at", "buyer_id", "kind", "reason", "amount", "paid_at", "order_amount",
                  "shipped_at", "delivered_at", "category", "store_id", "device_id", "address_id"]


def _records(df: pd.DataFrame, fields: list[str]) -> list[dict]:
    return [{k: (None if pd.isna(v) else v) for k, v in row.items()} for row in df[fields].to_dict("records")]


def _one_row_tables(order: dict, refund: dict | None = None) -> dict[str, pd.DataFrame]:
    """The event as contract tables, so ``validate`` can say whether it would accept the same row."""
    base = make_tables(2)
    orders = pd.DataFrame({c: pd.Series([order.get(c)], dtype=object) for c in ORDER_FIELDS})
    refunds = base["refunds"].iloc[:0]
    if refund is not None:
        row = {"escalated": False} | refund  # escalated is required in the table (an event need not carry it)
        refunds = pd.DataFrame({c: pd.Series([row.get(c)], dtype=object) for c in base["refunds"].columns})
    return {"orders": orders, "refunds": refunds, "reviews": base["reviews"].iloc[:0]}


def _accepted_by_validate(tables: dict[str, pd.DataFrame]) -> bool:
    try:
        _, rejects = _quiet(rg.validate, tables, mode="quarantine")
    except RefundGuardError:
        return False
    return len(rejects) == 0


FIELD_AND_VALUE = st.tuples(st.integers(0, 20), HOSTILE)


@FUZZ
@given(st.lists(FIELD_AND_VALUE, min_size=1, max_size=3), st.integers(0, 7))
@example([(0, 0)], 0)  # an integer id: text, as validate reads an integer id cell (the store refused it)
@example([(5, date(2000, 1, 1))], 0)  # a date: its 00:00 UTC (validate refused it)
@example([(7, "")], 0)  # blank text is a missing delivered_at, as in validate (the store refused it)
@example([(5, datetime(1732, 1, 1))], 0)  # outside the contract's instant range: refused by both
def test_profile_store_orders_are_refused_with_request_errors_exactly_when_validate_rejects_the_row(edits, which):
    """An order event the store accepts is a row ``validate`` accepts, and the reverse."""
    order = _records(make_tables(8)["orders"], ORDER_FIELDS)[which]
    for i, value in edits:
        order[ORDER_FIELDS[i % len(ORDER_FIELDS)]] = value
    store = rg.ProfileStore()
    try:
        store.observe_order(order)
        accepted = True
    except RequestError:
        accepted = False
    assert accepted == _accepted_by_validate(_one_row_tables(order)), order


@FUZZ
@given(st.lists(FIELD_AND_VALUE, min_size=1, max_size=3), st.integers(0, 7), HOSTILE, HOSTILE)
def test_profile_store_refunds_and_resolutions_refuse_hostile_values_with_request_errors(edits, which, when, label):
    tables = make_tables(8)
    store = rg.ProfileStore()
    clean_orders = _records(tables["orders"], ORDER_FIELDS)
    for order in clean_orders:
        store.observe_order(order)
    refund = _records(tables["refunds"], REFUND_FIELDS)[which]
    for i, value in edits:
        refund[REFUND_FIELDS[i % len(REFUND_FIELDS)]] = value
    try:
        store.observe_refund(refund)
    except RequestError:
        return
    # accepted: validate accepts the same refund with its order
    order = next((o for o in clean_orders if o["order_id"] == refund["order_id"]), None)
    assert order is not None
    assert _accepted_by_validate(_one_row_tables(order, refund)), refund
    for args in ((refund["refund_id"], when, "refunded", None), (refund["refund_id"], refund["requested_at"],
                                                                 "refunded", label)):
        try:
            store.observe_resolution(*args)
        except RequestError:
            continue
        missing = args[3] is None or (isinstance(args[3], float) and np.isnan(args[3]))  # null, as in validate
        assert missing or isinstance(args[3], (bool, np.bool_)), args


@pytest.fixture(scope="module")
def warm():
    tables = make_tables(8)
    clean, _ = rg.validate(tables)
    store = rg.ProfileStore.from_tables(clean)
    guard = rg.RefundGuard.default()
    merged = tables["refunds"].merge(tables["orders"], on="order_id", suffixes=("", "_order"))
    merged = merged.rename(columns={"amount_order": "order_amount"})
    return guard, store, _records(merged, REQUEST_FIELDS)


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 40), HOSTILE), min_size=1, max_size=3), st.integers(0, 7))
@example([(0, "   ")], 0)  # a blank refund_id (assess accepted it)
@example([(0, 7)], 0)  # an integer refund_id: the decision carries it as text
@example([(24, float("nan"))], 0)  # a missing category: optional online
@example([(1, "9999-12-31T23:59:59")], 0)  # beyond the ns range: pandas 3 parsed it in us, .value overflowed
@example([(6, datetime(1732, 1, 1))], 0)  # 2024 - 1732 overflowed int64 ns in assess_many, not in assess
def test_assess_refuses_hostile_requests_and_what_it_accepts_is_what_validate_accepts(warm, edits, which):
    guard, store, requests = warm
    request = dict(requests[which])
    for i, value in edits:
        request[REQUEST_FIELDS[i % len(REQUEST_FIELDS)]] = value
    try:
        decision = guard.assess(request, store=store)
    except RequestError:
        return
    assert decision.action in ACTIONS
    assert decision.abuse_probability is None or 0.0 <= decision.abuse_probability <= 1.0
    assert guard.assess_many([request], store=store)[0] == decision  # the micro-batch path agrees
    cat = request.get("category")
    if cat is None or (isinstance(cat, float) and np.isnan(cat)) or (isinstance(cat, str) and not cat.strip()):
        return  # optional online (scored as missing, like an unseen level); the orders table requires it
    # the clean equivalent: the same request as contract rows, validated, decides the same
    order = {c: request.get(c) for c in ORDER_FIELDS} | {"order_id": "o-req", "amount": request.get("order_amount")}
    refund = {c: request.get(c) for c in REFUND_FIELDS} | {"order_id": "o-req"}
    tables = _one_row_tables(order, refund)
    assert _accepted_by_validate(tables), request
    clean, _ = rg.validate(tables)
    again = _records(clean["refunds"].merge(clean["orders"], on="order_id", suffixes=("", "_order"))
                     .rename(columns={"amount_order": "order_amount"}), REQUEST_FIELDS)[0]
    assert guard.assess(again, store=store) == decision


@FUZZ
@given(CELLS)
def test_score_history_takes_hostile_tables_and_decides_exactly_the_clean_rows(warm, cells):
    guard = warm[0]
    tables = _corrupt(make_tables(8), cells)
    try:
        scored, rejects = _quiet(guard.score_history, tables, return_rejects=True)
    except RefundGuardError as exc:
        assert exc.rule in ("missing_column", "duplicate_column"), exc
        return
    clean, expected_rejects = _quiet(rg.validate, tables, mode="quarantine")
    assert len(rejects) == len(expected_rejects)
    again = _quiet(guard.score_history, clean, validate_tables=False)
    pd.testing.assert_frame_equal(scored.reset_index(drop=True), again.reset_index(drop=True))
