"""Tests for refundguard.evaluation: metrics vs scikit-learn, slices, thresholds."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st
from sklearn import metrics as skm

from refundguard.errors import DataError, ThresholdUnreachableWarning
from refundguard.evaluation import (
    STORE_SCORE_BANDS,
    choose_thresholds,
    evaluate_predictions,
    expected_calibration_error,
    precision_recall_table,
    store_score_band,
    validation_curve,
)

# A hand-made example: 10 rows, 4 positives, a tie at 0.7.
Y = np.array([1, 0, 1, 1, 0, 0, 1, 0, 0, 0], dtype=bool)
P = np.array([0.95, 0.9, 0.7, 0.7, 0.6, 0.4, 0.3, 0.2, 0.1, 0.05])
AMOUNT = np.array([100.0, 50.0, 20.0, 30.0, 10.0, 5.0, 40.0, 1.0, 2.0, 3.0])
CATEGORY = np.array(["a", "a", "a", "b", "b", "b", "b", "c", "c", "c"])
SCORE = np.array([4.9, 4.8, 4.79999999999, 4.7, 4.6, 4.59, np.nan, 3.0, 5.0, np.nan])


def test_overall_metrics_match_sklearn_and_hand_values():
    ev = evaluate_predictions(Y, P, AMOUNT, intercept_threshold=0.7, k=3)
    o = ev.overall
    assert o["n"] == 10 and o["n_positive"] == 4 and o["positive_rate"] == 0.4
    assert o["pr_auc"] == pytest.approx(skm.average_precision_score(Y, P), abs=1e-12)
    assert o["roc_auc"] == pytest.approx(skm.roc_auc_score(Y, P), abs=1e-12)
    assert o["brier"] == pytest.approx(skm.brier_score_loss(Y, P), abs=1e-12)
    assert o["log_loss"] == pytest.approx(skm.log_loss(Y, P), abs=1e-12)
    # Precision at k=3: rows 0.95 (pos), 0.9 (neg), 0.7 (pos) -> 2/3.
    assert o["precision_at_k"] == pytest.approx(2 / 3)
    # Thresholds: 0.95 -> P=1, R=.25; 0.9 -> .5; 0.7 -> 3/4=.75, R=.75; no threshold reaches 0.9 beyond 0.95.
    assert o["recall_at_precision"] == pytest.approx(0.25) and o["threshold_at_precision"] == 0.95
    # Intercept at 0.7: rows 0..3 flagged; 3 of them abusive.
    assert o["intercepted_n"] == 4 and o["intercepted_amount"] == 200.0
    assert o["intercepted_abuse_amount"] == 150.0 and o["abuse_amount"] == 190.0
    assert o["intercept_precision"] == 0.75 and o["intercept_recall"] == 0.75
    assert o["intercept_amount_recall"] == pytest.approx(150 / 190)


def test_ece_hand_computed():
    # Two bins used: [0.1, 0.2) has p=.15,.15 y=0,1 ; [0.9, 1] has p=.95 y=1.
    y = np.array([0, 1, 1])
    p = np.array([0.15, 0.15, 0.95])
    assert expected_calibration_error(y, p, n_bins=10) == pytest.approx((2 / 3) * abs(0.5 - 0.15) + (1 / 3) * 0.05)
    assert expected_calibration_error(np.array([1, 0]), np.array([1.0, 0.0])) == 0.0


def test_by_category_and_by_band():
    ev = evaluate_predictions(Y, P, AMOUNT, category=CATEGORY, store_score=SCORE, intercept_threshold=0.7)
    cat = ev.by_category
    assert list(cat.index) == ["a", "b", "c"]
    assert cat.loc["a", "n"] == 3 and cat.loc["a", "n_positive"] == 2
    assert cat.loc["a", "roc_auc"] == pytest.approx(skm.roc_auc_score(Y[:3], P[:3]))
    # Category c has no positives: metrics needing both classes are NaN, no crash.
    assert np.isnan(cat.loc["c", "roc_auc"]) and np.isnan(cat.loc["c", "pr_auc"])
    assert np.isnan(cat.loc["c", "recall_at_precision"])
    band = ev.by_band
    assert list(band.index) == list(STORE_SCORE_BANDS)
    # 4.9, 4.8, 4.79999999999 (published 4.80), 5.0 -> >=4.8 ; 4.7, 4.6 -> 4.6-4.8 ; 4.59, 3.0 -> <4.6 ; 2 missing.
    assert band["n"].to_dict() == {"<4.6": 2, "4.6-4.8": 2, ">=4.8": 4, "missing": 2}
    assert band["n"].sum() == 10
    d = ev.to_dict()
    assert d["by_band"]["missing"]["n"] == 2 and d["by_category"]["c"]["roc_auc"] is None


def test_empty_band_and_single_class_are_nan_not_errors():
    ev = evaluate_predictions([0, 0], [0.1, 0.2], [1.0, 2.0], store_score=[4.9, 4.85], intercept_threshold=0.5)
    assert np.isnan(ev.overall["roc_auc"]) and np.isnan(ev.overall["pr_auc"])
    assert ev.by_band.loc["<4.6", "n"] == 0 and np.isnan(ev.by_band.loc["<4.6", "brier"])
    assert ev.overall["intercepted_n"] == 0 and np.isnan(ev.overall["intercept_precision"])


def test_store_score_band_edges():
    s = store_score_band([4.6, 4.5999999999, 4.59, 4.8, 4.7999999999, 4.79, None])
    assert s.tolist() == ["4.6-4.8", "4.6-4.8", "<4.6", ">=4.8", ">=4.8", "4.6-4.8", "missing"]


def test_bad_inputs():
    with pytest.raises(DataError, match=re.escape("y has 1 missing label(s)")):
        evaluate_predictions(pd.Series([True, None], dtype="boolean"), [0.1, 0.2], [1, 1])
    with pytest.raises(DataError, match=re.escape("p must hold probabilities in [0, 1] with no NaN; 1 do not")):
        evaluate_predictions([0, 1], [0.1, 1.5], [1, 1])
    with pytest.raises(DataError, match=re.escape("amount has 1 values for 2 labels")):
        evaluate_predictions([0, 1], [0.1, 0.5], [1])


@settings(max_examples=40)
@given(
    data=st.lists(st.tuples(st.booleans(), st.integers(0, 20)), min_size=2, max_size=60).filter(
        lambda rows: 0 < sum(r[0] for r in rows) < len(rows)
    )
)
def test_pr_auc_and_roc_auc_match_sklearn(data):
    y = np.array([r[0] for r in data])
    p = np.array([r[1] / 20 for r in data])  # many ties
    o = evaluate_predictions(y, p, np.ones(len(y))).overall
    assert o["pr_auc"] == pytest.approx(skm.average_precision_score(y, p), abs=1e-12)
    assert o["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p), abs=1e-12)


def test_precision_recall_table_matches_sklearn():
    t = precision_recall_table(Y, P)
    prec, rec, thr = skm.precision_recall_curve(Y, P)
    ref = pd.DataFrame({"threshold": thr, "precision": prec[:-1], "recall": rec[:-1]}).sort_values("threshold", ascending=False)
    np.testing.assert_allclose(t["threshold"], ref["threshold"])
    np.testing.assert_allclose(t["precision"], ref["precision"])
    np.testing.assert_allclose(t["recall"], ref["recall"])
    curve = validation_curve(Y, P, max_points=4)
    assert len(curve["threshold"]) == 4 and curve["threshold"][0] == 0.95 and curve["threshold"][-1] == 0.05


# ---------------------------------------------------------------------- thresholds


def test_choose_thresholds_lowest_reaching_target():
    # Precision by threshold (desc): .95->1, .9->.5, .7->.75, .6->.6, .4->.5, .3->4/7, .2->.5, .1->4/9, .05->.4
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        th = choose_thresholds(Y, P, intercept_precision=0.9, review_precision=0.5)
    assert th.intercept == 0.95
    assert th.review == 0.2  # the LOWEST threshold with precision >= 0.5
    assert th.review <= th.intercept
    assert th.achieved["intercept"] == {"precision": 1.0, "recall": 0.25, "n_flagged": 1}
    assert th.achieved["review"]["precision"] == 0.5
    th2 = choose_thresholds(Y, P, intercept_precision=0.7, review_precision=0.55)
    assert th2.intercept == 0.7 and th2.review == 0.3
    assert th.to_dict()["intercept"] == 0.95


def test_unreachable_target_disables_action_with_warning():
    y = np.array([0, 1, 0, 1, 0, 0])
    p = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])  # best precision 0.5
    with pytest.warns(ThresholdUnreachableWarning, match="intercept precision 0.90"):
        th = choose_thresholds(y, p)
    assert th.intercept is None and th.review == 0.6
    with pytest.warns(ThresholdUnreachableWarning) as rec:
        th0 = choose_thresholds([0, 0], [0.2, 0.3])
    assert th0.intercept is None and th0.review is None and len(rec) == 2


@settings(max_examples=40)
@given(
    data=st.lists(st.tuples(st.booleans(), st.integers(0, 50)), min_size=1, max_size=80),
    ti=st.floats(0.55, 1.0),
    tr=st.floats(0.05, 0.55),
)
def test_thresholds_properties(data, ti, tr):
    y = np.array([r[0] for r in data])
    p = np.array([r[1] / 50 for r in data])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ThresholdUnreachableWarning)
        th = choose_thresholds(y, p, intercept_precision=ti, review_precision=tr)
    for thr, target in ((th.intercept, ti), (th.review, tr)):
        if thr is None:
            continue
        flag = p >= thr
        assert y[flag].mean() >= target - 1e-12
        # No lower candidate threshold reaches the target.
        for t in np.unique(p[p < thr]):
            assert y[p >= t].mean() < target - 1e-12
    if th.intercept is not None and th.review is not None:
        assert th.review <= th.intercept


# ---------------------------------------------------------------------- argument order (y_true, y_score)
# Labels first, like scikit-learn's metrics. The keyword calls fail on the old (p, y)
# signatures; a swapped positional call raises, since a probability such as 0.95 is no label.


def test_precision_recall_table_takes_y_true_then_y_score():
    by_name = precision_recall_table(y_true=Y, y_score=P)
    pd.testing.assert_frame_equal(precision_recall_table(Y, P), by_name)
    assert by_name["threshold"].iloc[0] == 0.95 and by_name["tp"].iloc[-1] == 4
    with pytest.raises(DataError, match=re.escape("y_true must be bool or 0/1")):
        precision_recall_table(P, Y)


def test_validation_curve_takes_y_true_then_y_score():
    curve = validation_curve(y_true=Y, y_score=P, max_points=4)
    assert curve == validation_curve(Y, P, max_points=4)
    assert curve["threshold"][0] == 0.95 and curve["recall"][-1] == 1.0
    with pytest.raises(DataError, match=re.escape("y_true must be bool or 0/1")):
        validation_curve(P, Y)


def test_choose_thresholds_takes_y_true_then_y_score():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        th = choose_thresholds(y_true=Y, y_score=P, intercept_precision=0.9, review_precision=0.5)
    assert (th.intercept, th.review) == (0.95, 0.2)
    with pytest.raises(DataError, match=re.escape("y_true must be bool or 0/1")):
        choose_thresholds(P, Y)
