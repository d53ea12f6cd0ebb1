"""Retraining fitted to the marketplace: calibrated bands carried into the model, tuning on the validation slice only."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

import refundguard as rg
from refundguard.cli import main
from refundguard.config import DEFAULT_GATE
from refundguard.pipeline import point_in_time_features
from refundguard.profiles import request_record
from refundguard.scores import excellent_share, store_scores_for_requests, summarize_store_scores

TRAIN_END, VALID_END, TEST_END = "2024-08-20", "2024-09-20", "2024-10-20"
REF_START, REF_END = "2024-06-01", "2024-08-01"


@pytest.fixture(scope="module")
def tables():
    clean, _ = rg.validate(rg.simulate(n_buyers=3_500, n_stores=120, days=140, seed=41))
    return clean


@pytest.fixture(scope="module")
def calibrated(tables):
    return rg.calibrate_bands(tables, REF_START, REF_END, target_excellent=0.05)


def test_target_excellent_share_is_reached_and_is_what_the_history_shows(tables, calibrated):
    base = excellent_share(tables, REF_START, REF_END)
    got = excellent_share(tables, REF_START, REF_END, calibrated)
    assert got.established > 1000 and abs(got.share - 0.05) < 0.01
    assert abs(base.share - 0.05) > 0.01  # the built-in bands did not give 5% here: calibration moved it
    first_full_day = (pd.Timestamp(REF_START) + pd.Timedelta(days=calibrated.window_days)).date().isoformat()
    history = rg.store_score_history(tables, first_full_day, REF_END, calibrated)
    summary = summarize_store_scores(history, calibrated, history=True)
    assert summary.excellent == got  # store-scores --history on the period prints exactly this share
    stricter = rg.calibrate_bands(tables, REF_START, REF_END, target_excellent=0.01)
    assert excellent_share(tables, REF_START, REF_END, stricter).share < got.share


def test_calibrated_config_goes_into_the_model_and_gates_score_and_assess(tables, calibrated, tmp_path):
    model = rg.train(tables, TRAIN_END, VALID_END, TEST_END, score_config=calibrated, validate_tables=False,
                     trained_at="2024-10-20")
    model.save(tmp_path / "model")
    guard = rg.RefundGuard.load(tmp_path / "model")
    assert guard.score_config == calibrated and guard.meta["score_config"] == calibrated.to_dict()
    scored = guard.score_history(tables, "2024-08-09", TEST_END, validate_tables=False)
    requests = scored[["requested_at", "store_id"]]
    published = store_scores_for_requests(tables, requests, calibrated)
    should = ((published["score"] >= DEFAULT_GATE - 1e-9) & ~published["provisional"]).to_numpy()
    gated = (scored["action"] == "merchant_handles").to_numpy()
    assert gated.sum() >= 20  # the gate fires on the calibrated marketplace
    np.testing.assert_array_equal(gated, should)  # exactly the requests whose store scored >= 4.80 that day
    np.testing.assert_array_equal(scored["store_score"].to_numpy(), published["score"].to_numpy())
    batch = point_in_time_features(tables, "2024-09-01", "2024-09-03", score_config=guard.score_config,
                                   category_levels=guard.category_levels)
    by_id = scored.set_index("refund_id")
    for i in range(len(batch)):
        d = guard.assess(request_record(batch.requests, i), batch.profiles.profile(i))
        assert d.action == by_id.loc[d.refund_id, "action"]
        assert d.store_score == by_id.loc[d.refund_id, "store_score"] or np.isnan(by_id.loc[d.refund_id, "store_score"])
    store = rg.ProfileStore(store_scores=rg.store_score_history(tables, "2024-09-01", "2024-09-03", calibrated),
                            score_config=guard.score_config)
    store.observe_tables(tables)
    for i in range(len(batch)):
        rec = request_record(batch.requests, i)
        assert store.profiles(rec)[1] == batch.profiles.profile(i)[1]


def test_tuning_never_reads_the_test_slice(tables):
    kw = dict(validate_tables=False, trained_at="2024-10-20", tune=3)
    clean = rg.train(tables, TRAIN_END, VALID_END, TEST_END, **kw)
    poisoned = {k: v.copy() for k, v in tables.items()}
    r = poisoned["refunds"]
    test_rows = (r["requested_at"] >= pd.Timestamp(VALID_END, tz="UTC")) & r["is_abuse"].notna()
    r.loc[test_rows, "is_abuse"] = ~r.loc[test_rows, "is_abuse"].astype(bool)  # every test label flipped
    bad = rg.train(poisoned, TRAIN_END, VALID_END, TEST_END, **kw)
    assert bad.metrics["test"]["roc_auc"] < 0.1 < 0.9 < clean.metrics["test"]["roc_auc"]  # the poison reached the test slice
    assert bad.meta["tuning"] == clean.meta["tuning"]
    assert bad.classifier.booster_.model_to_string() == clean.classifier.booster_.model_to_string()
    assert bad.calibrator.to_dict() == clean.calibrator.to_dict() and bad.thresholds == clean.thresholds


def test_tuning_record_and_the_default_stays_one_fit(tables):
    plain = rg.train(tables, TRAIN_END, VALID_END, validate_tables=False, trained_at="2024-10-20")
    assert "tuning" not in plain.meta
    tuned = rg.train(tables, TRAIN_END, VALID_END, validate_tables=False, trained_at="2024-10-20", tune=3)
    t = tuned.meta["tuning"]
    assert t["candidates"] == 3 and len(t["tried"]) == 3
    scores = [c["valid_pr_auc"] for c in t["tried"]]
    assert t["chosen"] == int(np.argmax(scores))
    assert t["tried"][0]["valid_pr_auc"] == pytest.approx(plain.metrics["valid"]["pr_auc"], abs=1e-12)
    assert "## Tuning" in tuned.model_card and f"candidate {t['chosen']}" in tuned.model_card
    with pytest.raises(rg.ConfigError, match="'tune' parameter of train"):
        rg.train(tables, TRAIN_END, VALID_END, validate_tables=False, tune=-1)


def test_cli_calibrate_bands_then_store_scores_then_train(tables, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    for name, df in tables.items():
        df.to_parquet(data / f"{name}.parquet")
    cfg_file = tmp_path / "score_config.json"
    assert main(["calibrate-bands", "--data", str(data), "--from", REF_START, "--to", REF_END, "--out", str(cfg_file),
                 "--target-excellent", "0.05"]) == 0
    out = capsys.readouterr().out
    reported = re.search(r"-> (\d+\.\d)% calibrated \((\S+) of (\S+)\)", out)
    assert reported, out
    first_full_day = (pd.Timestamp(REF_START) + pd.Timedelta(days=30)).date().isoformat()
    assert main(["store-scores", "--data", str(data), "--config", str(cfg_file), "--history", first_full_day,
                 REF_END]) == 0
    shown = re.search(r"over the period: (\d+\.\d)% \((\S+) of (\S+)\)", capsys.readouterr().out)
    assert shown and shown.groups() == reported.groups()
    assert main(["train", "--data", str(data), "--train-end", TRAIN_END, "--valid-end", VALID_END,
                 "--score-config", str(cfg_file), "--out", str(tmp_path / "m"), "--quiet"]) == 0
    assert rg.RefundGuard.load(tmp_path / "m").score_config == rg.ScoreConfig.from_json(cfg_file)
    assert main(["calibrate-bands", "--data", str(data), "--from", REF_START, "--to", REF_END, "--out",
                 str(tmp_path / "x.json"), "--target-excellent", "1.5"]) == 2
    assert "'target_excellent' parameter of calibrate_bands" in capsys.readouterr().err
