"""RefundGuard: online assess == batch score_history, the dated gate, thread safety, reload, bad input."""

from __future__ import annotations

import math
import shutil
import threading
from pathlib import Path

import pandas as pd
import pytest

import refundguard as rg
from refundguard.artifacts import load_model, save_model
from refundguard.errors import ModelError, RequestError
from refundguard.guard import SCORED_COLUMNS, RefundGuard
from refundguard.pipeline import point_in_time_features
from refundguard.policy import ACTIONS
from refundguard.profiles import request_record

GATE_DAY = pd.Timestamp("2024-08-09", tz="UTC")


@pytest.fixture(scope="module")
def tables():
    clean, _ = rg.validate(rg.simulate(n_buyers=4_000, n_stores=120, days=120, seed=21))
    return clean


@pytest.fixture(scope="module")
def guard():
    return RefundGuard.default()


@pytest.fixture(scope="module")
def scored(guard, tables):
    return guard.score_history(tables, "2024-07-20", "2024-09-01", validate_tables=False, always_score=True)


def test_scored_output_contract(scored):
    assert list(scored.columns) == list(SCORED_COLUMNS)
    keys = list(zip(scored["requested_at"], scored["refund_id"]))
    assert keys == sorted(keys)
    assert set(scored["action"]) <= set(ACTIONS)
    before = scored[scored["requested_at"] < GATE_DAY]
    assert len(before) and not (before["action"] == "merchant_handles").any()
    assert set(before["policy_version"]) == {"2020-01-01"}
    after = scored[scored["requested_at"] >= GATE_DAY]
    assert set(after["policy_version"]) == {"2024-08-09"}
    gated = after["store_score"] >= 4.80 - 1e-9
    gated &= ~after["provisional"] & ~after["store_score_missing"]
    assert gated.any() and (~gated).any()
    assert (after.loc[gated, "action"] == "merchant_handles").all()
    assert (after.loc[~gated, "action"] != "merchant_handles").all()
    flagged = scored["action"].isin(["review", "intercept"])
    assert scored.loc[flagged, "reasons"].map(len).between(1, 3).all()


def test_online_assess_equals_batch(guard, tables, scored):
    batch = point_in_time_features(tables, "2024-08-05", "2024-08-14", score_config=guard.score_config,
                                      category_levels=guard.category_levels)
    by_id = scored.set_index("refund_id")
    assert len(batch)
    for i in range(len(batch)):
        request = request_record(batch.requests, i)
        d = guard.assess(request, batch.profiles.profile(i), always_score=True)
        row = by_id.loc[d.refund_id]
        assert d.action == row["action"]
        assert d.policy_version == row["policy_version"] and d.model_version == row["model_version"]
        assert math.isclose(d.abuse_probability, row["abuse_probability"], rel_tol=0, abs_tol=1e-12)
        assert d.provisional == row["provisional"] and d.store_score_missing == row["store_score_missing"]
        if d.action in ("review", "intercept"):
            assert [r["feature"] for r in d.reasons] == [r["feature"] for r in row["reasons"]]


def test_assess_is_thread_safe(guard, tables):
    batch = point_in_time_features(tables, "2024-08-20", "2024-08-23", score_config=guard.score_config)
    items = [(request_record(batch.requests, i), batch.profiles.profile(i)) for i in range(len(batch))]
    expected = [guard.assess(r, p, always_score=True).abuse_probability for r, p in items]
    results: dict[int, list[float]] = {}

    def work(k: int) -> None:
        results[k] = [guard.assess(r, p, always_score=True).abuse_probability for r, p in items]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(results[k] == expected for k in range(4))


def test_bad_request_gets_request_error(guard, tables):
    batch = point_in_time_features(tables, "2024-08-20", "2024-08-21", score_config=guard.score_config)
    request, profiles = request_record(batch.requests, 0), batch.profiles.profile(0)
    for field, value in (("refund_id", None), ("amount", "lots"), ("kind", "refund"), ("requested_at", "soon")):
        bad = dict(request, **{field: value})
        with pytest.raises(RequestError, match=field):
            guard.assess(bad, profiles)
    with pytest.raises(RequestError, match="profiles"):
        guard.assess(request, (profiles[0], profiles[1]))


def test_reload_swaps_and_a_bad_model_leaves_the_old_one(guard, tables, tmp_path: Path):
    g = RefundGuard.default()
    broken = tmp_path / "broken"
    shutil.copytree(rg.guard.default_model_path(), broken)
    data = bytearray((broken / "model.txt").read_bytes())
    data[len(data) // 2] ^= 0x01
    (broken / "model.txt").write_bytes(bytes(data))
    with pytest.raises(ModelError, match="model.txt"):
        g.reload(broken)
    assert g.model_version == guard.model_version
    with pytest.raises(ModelError):
        RefundGuard.load(broken)
    # a really different model: the default with an intercept threshold of 0 (every scored request intercepted)
    default = load_model(rg.guard.default_model_path())
    meta = {**default.meta, "thresholds": {**default.meta["thresholds"], "intercept": 0.0, "review": 0.0}}
    other = save_model(tmp_path / "other", booster_text=default.booster.model_to_string(), meta=meta,
                          model_card=default.model_card)
    assert other.model_version != guard.model_version
    batch = point_in_time_features(tables, "2024-07-01", "2024-07-03", score_config=g.score_config)
    request, profiles = request_record(batch.requests, 0), batch.profiles.profile(0)
    before = g.assess(request, profiles)
    g.reload(other.path)
    assert g.model_version == other.model_version
    after = g.assess(request, profiles)
    assert after.model_version == other.model_version and after.action == "intercept"
    assert after.abuse_probability == pytest.approx(before.abuse_probability, abs=1e-12)


def test_gate_kinds_and_audit_rows_in_batch(guard, tables):
    timeline = rg.PolicyTimeline.default(audit_rate=0.5)
    g = RefundGuard.default(policy=timeline)
    out = g.score_history(tables, "2024-08-09", "2024-09-01", validate_tables=False)
    gated = out["action"] == "merchant_handles"
    assert gated.sum() >= 20
    audited = out.loc[gated, "audit"]
    assert out.loc[gated & out["audit"], "abuse_probability"].notna().all()
    assert out.loc[gated & ~out["audit"], "abuse_probability"].isna().all()
    assert 0.2 < audited.mean() < 0.8
    assert not out.loc[~gated, "audit"].any()
