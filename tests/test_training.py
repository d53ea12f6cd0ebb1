"""Time-split training, calibration, thresholds, champion/challenger, evaluate: end to end."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import lightgbm as lgb
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score

import refundguard as rg
from refundguard.artifacts import load_model
from refundguard.errors import ConfigError, DataError
from refundguard.guard import SCORED_COLUMNS, RefundGuard
from refundguard.profiles import requests_from_tables
from refundguard.scores import store_scores_for_requests
from refundguard.registry import ModelRegistry
from refundguard.training import promote_if_better, training_slices
from tests.alt_marketplace import make_marketplace

TRAIN_END, VALID_END, TEST_END = "2024-09-01", "2024-10-01", "2024-11-17"


@pytest.fixture(scope="module")
def alt_tables():
    clean, rejects = rg.validate(make_marketplace(), mode="strict")
    assert rejects.empty
    return clean


@pytest.fixture(scope="module")
def alt_model(alt_tables):
    return rg.train(alt_tables, TRAIN_END, VALID_END, TEST_END, validate_tables=False, trained_at="2024-11-17")


def test_slices_respect_gap_label_maturity_and_order():
    at = pd.Series(pd.date_range("2024-06-01", periods=200, freq="D", tz="UTC"))
    req = pd.DataFrame({
        "requested_at": at,
        "resolved_at": at + pd.Timedelta(days=10),
        "is_abuse": pd.Series([True, False] * 100, dtype="boolean"),
    })
    req.loc[5, "is_abuse"] = pd.NA
    sl = training_slices(req, "2024-09-01", "2024-10-01", "2024-11-01", gap_days=14)
    cut = pd.Timestamp("2024-08-18", tz="UTC")
    fit = sl.train | sl.early
    assert (req.loc[fit, "requested_at"] < cut).all()
    assert (req.loc[fit, "resolved_at"] < cut).all()  # label known before train_end - gap
    assert not fit[5]  # null label never trained on
    assert req.loc[sl.early, "requested_at"].min() > req.loc[sl.train, "requested_at"].max()
    assert abs(sl.early.sum() - 0.15 * fit.sum()) <= 1
    assert req.loc[sl.valid, "requested_at"].between("2024-09-01", "2024-09-30 23:59", inclusive="both").all()
    assert req.loc[sl.test, "requested_at"].min() >= pd.Timestamp("2024-10-01", tz="UTC")
    with pytest.raises(ConfigError, match="'valid_end' parameter of train must be a date after train_end") as e:
        training_slices(req, "2024-10-01", "2024-09-01")
    assert (e.value.owner, e.value.field) == ("train", "valid_end")
    with pytest.raises(ConfigError, match="'test_end' parameter of train"):
        training_slices(req, "2024-09-01", "2024-10-01", "2024-10-01")
    with pytest.raises(ConfigError, match="'gap_days' parameter of train must be an int >= 0. Got -3"):
        training_slices(req, "2024-09-01", "2024-10-01", gap_days=-3)
    with pytest.raises(ConfigError, match="'train_end' parameter of train must be a date or timestamp"):
        training_slices(req, "yesterday", "2024-10-01")


def test_train_on_tables_the_simulator_did_not_make(alt_model, alt_tables, tmp_path: Path):
    m = alt_model
    assert set(m.metrics) == {"valid", "test"}
    assert m.metrics["test"]["pr_auc"] > 0.8
    assert m.thresholds.review is None or m.thresholds.intercept is None or m.thresholds.review <= m.thresholds.intercept
    saved = m.save(tmp_path / "model")
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["MANIFEST", "README.md", "meta.json", "model.txt"]
    meta = load_model(tmp_path / "model").meta
    for key in ("format_version", "model_version", "features", "monotone_constraints", "calibration", "thresholds",
                "validation_curve", "drift", "gated_share", "windows", "score_config", "metrics", "versions",
                "data_fingerprint"):
        assert meta.get(key) is not None, key
    assert meta["model_version"] == saved.model_version
    assert len(meta["validation_curve"]["threshold"]) <= 201
    card = (tmp_path / "model" / "README.md").read_text()
    assert saved.model_version in card and "valid" in card and "test" in card

    guard = RefundGuard.load(tmp_path / "model")
    scored = guard.score_history(alt_tables, always_score=True, validate_tables=False)
    assert list(scored.columns) == list(SCORED_COLUMNS)
    assert len(scored) == len(alt_tables["refunds"])
    assert scored["abuse_probability"].notna().all()  # always_score: every request scored
    keys = list(zip(scored["requested_at"], scored["refund_id"]))
    assert keys == sorted(keys)
    ev = rg.evaluate(tmp_path / "model", alt_tables, "2024-10-01", "2024-11-17", validate_tables=False)
    assert ev.overall["pr_auc"] == pytest.approx(m.metrics["test"]["pr_auc"], abs=1e-9)
    assert ev.by_band is not None and ev.by_category is not None


def _baseline_features(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Request fields plus simple buyer history counts (orders and refunds before the request)."""
    o, r = tables["orders"], tables["refunds"]
    req = r.merge(o[["order_id", "buyer_id", "paid_at", "delivered_at", "amount"]].rename(columns={"amount": "order_amount"}),
                  on="order_id")
    req = req.sort_values("requested_at").reset_index(drop=True)
    ords = o[["buyer_id", "paid_at"]].sort_values("paid_at").assign(n_orders=1)
    ords["n_orders"] = ords.groupby("buyer_id").cumcount() + 1
    req = pd.merge_asof(req, ords.rename(columns={"paid_at": "t"}), left_on="requested_at", right_on="t",
                        by="buyer_id", allow_exact_matches=False)
    prior = req[["buyer_id", "requested_at"]].copy()
    prior["n_refunds"] = prior.groupby("buyer_id").cumcount()
    req["n_refunds"] = prior["n_refunds"]
    return pd.DataFrame({
        "requested_at": req["requested_at"],
        "resolved_at": req["resolved_at"],
        "is_abuse": req["is_abuse"],
        "amount": req["amount"],
        "kind": req["kind"].astype("category"),
        "reason": req["reason"].astype("category"),
        "hours_since_paid": (req["requested_at"] - req["paid_at"]).dt.total_seconds() / 3600,
        "delivered": (req["delivered_at"] < req["requested_at"]).astype(float),
        "buyer_orders_before": req["n_orders"].fillna(0),
        "buyer_refunds_before": req["n_refunds"],
    })


def test_model_beats_plain_lightgbm_baseline_on_the_same_split(alt_model, alt_tables):
    base = _baseline_features(alt_tables)
    sl = training_slices(base, TRAIN_END, VALID_END, TEST_END)
    cols = ["amount", "kind", "reason", "hours_since_paid", "delivered", "buyer_orders_before", "buyer_refunds_before"]
    y = base["is_abuse"].fillna(False).astype(bool).to_numpy()
    fit = sl.train | sl.early
    booster = lgb.train({"objective": "binary", "verbosity": -1, "seed": 0, "deterministic": True,
                         "num_threads": 1}, lgb.Dataset(base.loc[fit, cols], label=y[fit]), num_boost_round=300)
    pr_base = average_precision_score(y[sl.test], booster.predict(base.loc[sl.test, cols]))
    pr_ours = alt_model.metrics["test"]["pr_auc"]
    print(f"\ntest PR-AUC: refundguard {pr_ours:.4f}, plain LightGBM on request fields + buyer counts {pr_base:.4f}")
    assert pr_ours > pr_base


def test_champion_replaced_only_by_a_better_model(alt_model, alt_tables, tmp_path: Path):
    champ = tmp_path / "registry"
    first = promote_if_better(alt_model, alt_tables, champ, validate_tables=False)
    assert first.promoted and first.champion is None and first.previous is None
    registry = ModelRegistry(champ)
    assert registry.current() == first.version
    before = (registry.current_path() / "MANIFEST").read_bytes()
    # a deliberately weak challenger (3 trees, no monotone help) must not replace it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        weak = rg.train(alt_tables, TRAIN_END, VALID_END, TEST_END, validate_tables=False,
                        params={"n_estimators": 2, "num_leaves": 2, "early_stopping_rounds": None})
    result = promote_if_better(weak, alt_tables, champ, validate_tables=False)
    assert not result.promoted and result.champion == pytest.approx(first.challenger)
    assert (registry.current_path() / "MANIFEST").read_bytes() == before
    assert registry.versions() == [first.version, result.version]  # the weak one is kept aside, not served
    last = registry.history()[-1]
    assert (last.event, last.version, last.detail["champion_version"]) == ("keep", result.version, first.version)
    assert last.detail["challenger"] == pytest.approx(result.challenger)
    no_test = rg.train(alt_tables, TRAIN_END, VALID_END, validate_tables=False)
    with pytest.raises(DataError, match="needs a test slice"):
        promote_if_better(no_test, alt_tables, champ, validate_tables=False)


def test_too_little_data_is_a_clear_error(alt_tables):
    with pytest.raises(DataError, match="slice has .* labelled rows"):
        rg.train(alt_tables, "2024-05-03", "2024-05-04", validate_tables=False)


def test_gated_labels_audit_uses_only_audited_gated_rows_weighted():
    """Behind the gate only the audit sample is labelled: those rows count 1 / audit_rate."""
    clean, _ = rg.validate(rg.simulate(n_buyers=6_000, n_stores=150, days=150, seed=4))
    timeline = rg.PolicyTimeline.default(audit_rate=0.2)
    kw = dict(validate_tables=False, policy=timeline, trained_at="2024-10-29")
    full = rg.train(clean, "2024-09-01", "2024-10-01", "2024-10-29", **kw)
    audit = rg.train(clean, "2024-09-01", "2024-10-01", "2024-10-29", gated_labels="audit", **kw)
    assert 0 < full.meta["gated_share"] < 1
    assert audit.meta["windows"]["gated_labels"] == "audit"
    rows, all_rows = audit.meta["windows"]["rows"], full.meta["windows"]["rows"]
    # Independently of training.py: which labelled requests sit behind the gate and outside the audit sample?
    req = requests_from_tables(clean, None, "2024-10-29", with_labels=True)
    score = store_scores_for_requests(clean, req)
    gate_on = req["requested_at"] >= pd.Timestamp("2024-08-09", tz="UTC")
    gated = gate_on & (score["score"] >= 4.80 - 1e-9) & ~score["provisional"] & ~score["score_missing"]
    audited = req["refund_id"].map(
        lambda r: int.from_bytes(hashlib.sha256(("refundguard-audit-v1" + r).encode()).digest()[:8], "big") / 2**64 < 0.2)
    dropped = gated & ~audited & req["is_abuse"].notna()
    cut = pd.Timestamp("2024-08-18", tz="UTC")  # train_end - 14 days
    fit = (req["requested_at"] < cut) & (req["resolved_at"] < cut)
    valid = req["requested_at"].between(pd.Timestamp("2024-09-01", tz="UTC"), pd.Timestamp("2024-10-01", tz="UTC"),
                                        inclusive="left")
    test = req["requested_at"] >= pd.Timestamp("2024-10-01", tz="UTC")
    assert int((dropped & fit).sum()) > 0  # the gate starts on 2024-08-09, nine days before the train cut
    assert rows["train"] + rows["early_stopping"] == all_rows["train"] + all_rows["early_stopping"] - int((dropped & fit).sum())
    assert rows["valid"] == all_rows["valid"] - int((dropped & valid).sum())
    assert rows["test"] == all_rows["test"] - int((dropped & test).sum())
    assert audit.metrics["test"]["pr_auc"] > 0.7
    with pytest.raises(rg.ConfigError, match="gated_labels"):
        rg.train(clean, "2024-09-01", "2024-10-01", gated_labels="some", **kw)


def test_label_weights_rule():
    from refundguard.training import _label_weights

    gates = pd.DataFrame({"gated": [False, True, True, False], "audit": [False, True, False, False]})
    usable, weight = _label_weights(gates, "audit", 0.01)
    assert usable.tolist() == [True, True, False, True]
    assert weight.tolist() == [1.0, 100.0, 1.0, 1.0]
    usable, weight = _label_weights(gates, "all", 0.01)
    assert usable.all() and (weight == 1).all()
