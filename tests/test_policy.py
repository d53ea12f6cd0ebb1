"""Tests for refundguard.policy (and PolicyConfig in refundguard.config)."""

from __future__ import annotations

import hashlib
import math
import re
from datetime import date

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

from refundguard.config import PolicyConfig
from refundguard.errors import ConfigError, DataError, RequestError, SchemaError
from refundguard.policy import (
    DECISION_COLUMNS,
    Decision,
    PolicyTimeline,
    audit_draw,
    decide_batch,
    decide_one,
    gate_batch,
)

GATE_DAY = pd.Timestamp("2024-08-09", tz="UTC")
TL = PolicyTimeline.default(intercept_threshold=0.9, review_threshold=0.5, audit_rate=0.0)


def one(policy=TL, **kw):
    base = dict(
        refund_id="r1",
        requested_at=GATE_DAY + pd.Timedelta(days=1),
        kind="refund_only",
        buyer_id="b1",
        store_score=4.9,
        provisional=False,
        probability=0.95,
    )
    base.update(kw)
    return decide_one(policy, **base)


# ---------------------------------------------------------------------- config and timeline


def test_policy_config_defaults_and_validation():
    c = PolicyConfig()
    assert c.gate == 4.80 and c.effective_from == date(2024, 8, 9) and c.name == "2024-08-09"
    assert c.gate_kinds == {"refund_only", "return_and_refund"} and c.audit_rate == 0.01
    assert not c.gate_provisional and not c.gate_missing
    assert PolicyConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ConfigError, match=re.escape("The 'gate' parameter of PolicyConfig must be None or a float in [0.0, 5.0]. Got 48 instead.")):
        PolicyConfig(gate=48)
    with pytest.raises(ConfigError, match=re.escape("'review_threshold' parameter of PolicyConfig must be <= intercept_threshold (0.5)")):
        PolicyConfig(intercept_threshold=0.5, review_threshold=0.6)
    with pytest.raises(ConfigError, match=re.escape("'gate_kinds' parameter")):
        PolicyConfig(gate_kinds={"exchange"})
    with pytest.raises(ConfigError, match=re.escape("'audit_rate' parameter of PolicyConfig must be a float in [0.0, 1.0]")):
        PolicyConfig(audit_rate=1.5)
    with pytest.raises(ConfigError, match=re.escape("'block_list' parameter")):
        PolicyConfig(block_list="b1")
    with pytest.raises(ConfigError, match=re.escape("'effective_from' parameter")):
        PolicyConfig(effective_from="yesterday")
    assert PolicyConfig(block_list=["b1", "b1"]).block_list == frozenset({"b1"})


def test_default_timeline_dates():
    tl = PolicyTimeline.default()
    assert [v.name for v in tl.versions] == ["2020-01-01", "2024-08-09"]
    assert tl.versions[0].gate is None and tl.versions[1].gate == 4.80
    assert tl.version_at("2024-08-08 23:59:59.999999+00:00").name == "2020-01-01"
    assert tl.version_at(GATE_DAY).name == "2024-08-09"
    assert tl.version_at(pd.Timestamp("2024-08-09 07:59", tz="Asia/Shanghai")).name == "2020-01-01"  # 23:59 UTC
    assert tl.version_at("2024-08-09").name == "2024-08-09"  # naive = UTC
    from datetime import datetime, timedelta, timezone

    assert tl.version_at(datetime(2024, 8, 8, 23, 59, 59, 999999)).name == "2020-01-01"
    assert tl.version_at(datetime(2024, 8, 9, 1, 0, tzinfo=timezone(timedelta(hours=2)))).name == "2020-01-01"
    assert tl.version_at(pd.Timestamp("2024-08-09 00:00:00.000000001")).name == "2024-08-09"
    assert tl.version_at(date(2024, 8, 9)).name == "2024-08-09"
    assert tl.version_at(np.datetime64("2024-08-09T00:00")).name == "2024-08-09"
    with pytest.raises(RequestError, match=re.escape("'requested_at' is required")):
        tl.version_at(pd.NaT)
    with pytest.raises(RequestError, match=re.escape("'requested_at' must be a timestamp")):
        tl.version_at("soon")
    with pytest.raises(RequestError, match=re.escape("before the first policy version (2020-01-01)")):
        tl.version_at("2019-12-31")
    assert PolicyTimeline.from_dict(tl.to_dict()) == tl
    with pytest.raises(ConfigError, match=re.escape("distinct effective_from dates")):
        PolicyTimeline([PolicyConfig(), PolicyConfig(gate=4.5)])


# ---------------------------------------------------------------------- rule order


def test_gate_before_block_before_allow_before_thresholds():
    tl = PolicyTimeline.default(
        intercept_threshold=0.9, review_threshold=0.5, block_list={"bad"}, allow_list={"good", "bad"}, audit_rate=0.0
    )
    assert one(tl, buyer_id="bad").action == "merchant_handles"  # gate first
    d = one(tl, buyer_id="bad", store_score=4.5, probability=0.1)
    assert d.action == "intercept" and d.reasons[0]["feature"] == "buyer_id"  # block beats allow
    assert one(tl, buyer_id="good", store_score=4.5, probability=0.99).action == "approve"  # allow beats threshold
    assert one(tl, store_score=4.5, probability=0.9).action == "intercept"
    assert one(tl, store_score=4.5, probability=0.5).action == "review"
    assert one(tl, store_score=4.5, probability=0.4999).action == "approve"


def test_gate_boundary_and_flags():
    assert one(store_score=4.80).action == "merchant_handles"
    assert one(store_score=4.79999999999).action == "merchant_handles"  # 4.80 as a float artefact
    assert one(store_score=4.79).action == "intercept"
    d = one(store_score=4.9)
    assert d.abuse_probability is None and not d.audit and d.store_score == 4.9
    # Provisional and missing scores are not gated by default, and are flagged.
    d = one(store_score=4.95, provisional=True)
    assert d.action == "intercept" and d.provisional
    d = one(store_score=None)
    assert d.action == "intercept" and d.store_score_missing and d.store_score is None
    d = one(store_score=math.nan)
    assert d.store_score_missing and d.store_score is None
    gp = PolicyTimeline([PolicyConfig(gate_provisional=True, gate_missing=True, audit_rate=0.0, intercept_threshold=0.9)])
    assert one(gp, store_score=4.95, provisional=True).action == "merchant_handles"
    assert one(gp, store_score=None).action == "merchant_handles"


def test_gate_kinds():
    only_ro = PolicyTimeline([PolicyConfig(gate_kinds={"refund_only"}, audit_rate=0.0, intercept_threshold=0.9)])
    assert one(only_ro, kind="refund_only").action == "merchant_handles"
    assert one(only_ro, kind="return_and_refund").action == "intercept"
    with pytest.raises(RequestError, match=re.escape("kind must be one of ['refund_only', 'return_and_refund']; got 'swap'")):
        one(kind="swap")


def test_before_gate_date_no_merchant_handles():
    d = one(requested_at=GATE_DAY - pd.Timedelta(microseconds=1), store_score=5.0)
    assert d.action == "intercept" and d.policy_version == "2020-01-01"
    assert one(requested_at=GATE_DAY, store_score=5.0).policy_version == "2024-08-09"


def test_gated_requests_are_not_scored_unless_asked():
    calls = []

    def score():
        calls.append(1)
        return 0.97

    d = one(probability=score)
    assert d.action == "merchant_handles" and d.abuse_probability is None and calls == []
    d = one(probability=score, always_score=True)
    assert d.action == "merchant_handles" and d.abuse_probability == 0.97 and not d.audit and calls == [1]
    with pytest.raises(RequestError, match=re.escape("must be scored but its abuse probability is None")):
        one(store_score=3.0, probability=None)


def test_audit_is_deterministic_sha256():
    salt = "s"
    expected = int.from_bytes(hashlib.sha256(b"sr42").digest()[:8], "big") / 2**64
    assert audit_draw(salt, "r42") == expected
    tl = PolicyTimeline([PolicyConfig(audit_rate=1.0, audit_salt=salt, intercept_threshold=0.9)])
    d = one(tl, probability=0.99)
    assert d.audit and d.action == "merchant_handles" and d.abuse_probability == 0.99 and d.reasons == ()
    assert not one(tl, store_score=4.0).audit  # only gated requests are audited


def test_audit_rate_about_one_percent():
    n = 50_000
    req = _frame(n, store_score=np.full(n, 4.9), seed=1).assign(
        requested_at=GATE_DAY + pd.Timedelta(hours=1), provisional=False
    )
    g = gate_batch(req, PolicyTimeline.default())
    assert g["gated"].all()
    share = g["audit"].mean()
    assert 0.0085 < share < 0.0115  # 1% +- 3.4 standard errors
    again = gate_batch(req, PolicyTimeline.default())
    assert (again["audit"] == g["audit"]).all()
    other_salt = gate_batch(req, PolicyTimeline.default(audit_salt="other"))
    assert (other_salt["audit"] != g["audit"]).any()
    assert (g["needs_score"] == g["audit"]).all()


def test_reasons_only_for_review_and_intercept():
    def explain():
        return [{"text": f"t{i}", "feature": f"f{i}", "value": i, "contribution": 1.0 / (i + 1)} for i in range(5)]

    d = one(store_score=4.0, probability=0.95, explain=explain)
    assert d.action == "intercept" and len(d.reasons) == 3
    assert one(store_score=4.0, probability=0.1, explain=explain).reasons == ()
    assert len(one(store_score=4.0, probability=0.1, explain=explain, explain_all=True).reasons) == 3
    assert one(store_score=4.9, explain=explain, explain_all=True).reasons == ()  # not scored


def test_decision_fields_and_to_dict():
    assert tuple(Decision.__dataclass_fields__) == DECISION_COLUMNS
    d = one(store_score=4.0, model_version="2026-11-21-abc")
    out = d.to_dict()
    assert list(out) == list(DECISION_COLUMNS)
    assert out["model_version"] == "2026-11-21-abc" and out["policy_version"] == "2024-08-09"
    with pytest.raises(AttributeError):
        d.action = "approve"  # type: ignore[misc]


# ---------------------------------------------------------------------- batch


def _frame(n: int, store_score=None, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ts = pd.Timestamp("2024-07-01", tz="UTC") + pd.to_timedelta(rng.integers(0, 90 * 86400, n), unit="s")
    return pd.DataFrame(
        {
            "refund_id": pd.Series([f"r{i}" for i in range(n)], dtype="str"),
            "requested_at": ts,
            "kind": rng.choice(["refund_only", "return_and_refund"], n),
            "buyer_id": pd.Series([f"b{i % 50}" for i in range(n)], dtype="str"),
            "store_score": rng.choice([4.5, 4.79, 4.8, 4.95, np.nan], n) if store_score is None else store_score,
            "provisional": rng.random(n) < 0.2,
        }
    )


def test_decide_batch_columns_and_before_gate_date():
    req = _frame(400)
    p = np.random.default_rng(2).random(400)
    out = decide_batch(req, TL, probability=p, model_version="m1")
    assert list(out.columns) == list(DECISION_COLUMNS)
    assert out.index.equals(req.index)
    before = req["requested_at"] < GATE_DAY
    assert before.any() and (~before).any()
    assert not (out.loc[before, "action"] == "merchant_handles").any()
    assert (out.loc[~before, "action"] == "merchant_handles").any()
    gated = out["action"] == "merchant_handles"
    assert out.loc[gated, "abuse_probability"].isna().all()
    assert out.loc[~gated, "abuse_probability"].notna().all()


def test_decide_batch_probability_callable_sees_only_needed_rows():
    req = _frame(200)
    seen = {}

    def score(mask):
        seen["n"] = int(mask.sum())
        return np.full(int(mask.sum()), 0.6)

    out = decide_batch(req, TL, probability=score)
    assert seen["n"] == int((out["action"] != "merchant_handles").sum())
    with pytest.raises(DataError, match=re.escape("must be scored but no probability was given")):
        decide_batch(req, TL)
    with pytest.raises(DataError, match=re.escape("have no valid probability")):
        decide_batch(req, TL, probability=np.full(200, np.nan))


def test_decide_batch_schema_errors():
    req = _frame(10)
    with pytest.raises(SchemaError, match=re.escape("'requests' is missing required column(s) ['buyer_id']")):
        decide_batch(req.drop(columns="buyer_id"), TL, probability=np.zeros(10))
    bad = req.assign(kind=["swap"] + ["refund_only"] * 9)
    with pytest.raises(SchemaError, match=re.escape("Column 'kind' has 1 value(s) outside")):
        decide_batch(bad, TL, probability=np.zeros(10))
    early = req.assign(requested_at=pd.Timestamp("2019-01-01", tz="UTC"))
    with pytest.raises(SchemaError, match=re.escape("10 request(s) are before the first policy version")):
        decide_batch(early, TL, probability=np.zeros(10))


def _batch_row_as_dict(row: pd.Series) -> dict:
    out = row.to_dict()
    for key in ("abuse_probability", "store_score"):
        out[key] = None if pd.isna(out[key]) else float(out[key])
    out["reasons"] = list(out["reasons"])
    for key in ("store_score_missing", "provisional", "audit"):
        out[key] = bool(out[key])
    return out


def _explain_for(refund_id: str) -> list[dict]:
    n = int(hashlib.sha256(refund_id.encode()).digest()[0]) % 5
    return [{"text": f"{refund_id}-{i}", "feature": f"f{i}", "value": i, "contribution": 1.0} for i in range(n)]


requests_strategy = st.lists(
    st.fixed_dictionaries(
        {
            "day": st.integers(-40, 40),
            "kind": st.sampled_from(["refund_only", "return_and_refund"]),
            "buyer": st.sampled_from(["b0", "b1", "b2", "b3"]),
            "score": st.one_of(st.none(), st.sampled_from([4.79, 4.8, 4.79999999999, 5.0, 3.1]), st.floats(0, 5).map(lambda v: round(v, 2))),
            "missing_flag": st.booleans(),
            "provisional": st.booleans(),
            "p": st.floats(0, 1),
        }
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=60)
@given(
    rows=requests_strategy,
    always_score=st.booleans(),
    explain_all=st.booleans(),
    gate_provisional=st.booleans(),
    gate_missing=st.booleans(),
)
def test_decide_one_equals_decide_batch(rows, always_score, explain_all, gate_provisional, gate_missing):
    common = dict(block_list={"b0"}, allow_list={"b1"}, audit_rate=0.3, gate_provisional=gate_provisional, gate_missing=gate_missing)
    tl = PolicyTimeline(
        [
            PolicyConfig(effective_from="2020-01-01", gate=None, intercept_threshold=0.8, review_threshold=0.4, **common),
            PolicyConfig(effective_from="2024-08-09", intercept_threshold=0.9, review_threshold=0.5, **common),
            PolicyConfig(effective_from="2024-09-01", gate_kinds={"refund_only"}, intercept_threshold=0.7, **common),
        ]
    )
    req = pd.DataFrame(
        {
            "refund_id": pd.Series([f"r{i}" for i in range(len(rows))], dtype="str"),
            "requested_at": [GATE_DAY + pd.Timedelta(days=r["day"], hours=3) for r in rows],
            "kind": [r["kind"] for r in rows],
            "buyer_id": pd.Series([r["buyer"] for r in rows], dtype="str"),
            "store_score": [np.nan if r["score"] is None else r["score"] for r in rows],
            "store_score_missing": [r["score"] is None or (r["missing_flag"] and r["day"] % 3 == 0) for r in rows],
            "provisional": [r["provisional"] for r in rows],
        }
    )
    p = np.array([r["p"] for r in rows])
    ids = req["refund_id"].to_numpy()
    batch = decide_batch(
        req,
        tl,
        probability=p,
        explain=lambda mask: [_explain_for(r) for r in ids[mask]],
        explain_all=explain_all,
        always_score=always_score,
        model_version="mv",
    )
    for i, r in enumerate(rows):
        d = decide_one(
            tl,
            refund_id=ids[i],
            requested_at=req["requested_at"].iloc[i],
            kind=r["kind"],
            buyer_id=r["buyer"],
            store_score=r["score"],
            store_score_missing=bool(req["store_score_missing"].iloc[i]),
            provisional=r["provisional"],
            probability=float(p[i]),
            explain=lambda rid=ids[i]: _explain_for(rid),
            explain_all=explain_all,
            always_score=always_score,
            model_version="mv",
        )
        assert d.to_dict() == _batch_row_as_dict(batch.iloc[i])
