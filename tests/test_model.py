"""Tests for refundguard.model: the estimator, its encoder, single-row path, reasons and calibration."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st
from sklearn.utils.estimator_checks import estimator_checks_generator

from refundguard.errors import ConfigError, DataError, NotFittedError, RequestError, SchemaError, UnseenCategoryWarning
from refundguard.model import (
    Calibrator,
    FeatureEncoder,
    RefundAbuseClassifier,
    choose_calibrator,
    reasons_from_contributions,
)

REASONS = ["not_received", "quality", "damaged", "other"]


def make_data(n: int = 3000, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Synthetic refund-like data: numeric, str and category features, ~10% positives."""
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(
        {
            "amount": rng.gamma(2.0, 50.0, n),
            "n_refunds_30d": rng.poisson(1.0, n).astype(np.float64),
            "account_days": rng.uniform(0, 1000, n),
            "reason": pd.Series(rng.choice(REASONS, n, p=[0.4, 0.3, 0.2, 0.1]), dtype="str"),
            "kind": pd.Categorical(rng.choice(["refund_only", "return_and_refund"], n)),
        }
    )
    X.loc[rng.random(n) < 0.05, "account_days"] = np.nan
    logit = (
        -3.0
        + 0.01 * X["amount"]
        + 0.8 * X["n_refunds_30d"]
        - 0.002 * X["account_days"].fillna(500)
        + 1.5 * (X["reason"] == "not_received")
        + 0.7 * (X["kind"] == "refund_only").astype(float)
    )
    y = rng.random(n) < 1 / (1 + np.exp(-logit.to_numpy()))
    return X, y


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, np.ndarray]:
    return make_data()


@pytest.fixture(scope="module")
def fitted(data) -> RefundAbuseClassifier:
    X, y = data
    return RefundAbuseClassifier(
        n_estimators=40, num_leaves=15, monotone_constraints={"amount": 1, "n_refunds_30d": 1}, n_jobs=1
    ).fit(X, y)


# ---------------------------------------------------------------------- scikit-learn compatibility


def _check_name(check) -> str:
    return getattr(check, "func", check).__name__


# Not applicable: array-API dispatch. The estimator's array_api_support tag is False and
# scikit-learn itself skips this check unless SCIPY_ARRAY_API is set before scipy loads.
_NOT_APPLICABLE = {"check_array_api_input"}
_CHECKS = [
    pytest.param(est, chk, id=_check_name(chk))
    for est, chk in estimator_checks_generator(
        RefundAbuseClassifier(n_estimators=20, min_child_samples=2, num_leaves=7, n_jobs=1), legacy=True
    )
    if _check_name(chk) not in _NOT_APPLICABLE
]


@pytest.mark.parametrize(("estimator", "check"), _CHECKS)
def test_sklearn_estimator_checks(estimator, check):
    # Every other check passes; none is marked as an expected failure. Note that
    # check_dataframe_column_names_consistency (not in the default set) would flag that
    # DataFrame columns are matched by NAME: reordering them is allowed by design.
    check(estimator)


def test_estimator_checks_were_collected():
    names = {p.id for p in _CHECKS}
    assert len(names) >= 55
    assert {"check_classifiers_train", "check_fit_idempotent", "check_estimators_unfitted"} <= names


def test_fitted_attributes(fitted, data):
    X, _ = data
    assert fitted.n_features_in_ == 5
    assert list(fitted.feature_names_in_) == list(X.columns)
    assert fitted.feature_names_ == list(X.columns)
    assert fitted.classes_.tolist() == [False, True]
    assert fitted.categories_ == {"reason": sorted(REASONS), "kind": ["refund_only", "return_and_refund"]}
    assert fitted.monotone_constraints_ == {
        "amount": 1,
        "n_refunds_30d": 1,
        "account_days": 0,
        "reason": 0,
        "kind": 0,
    }
    assert fitted.dtypes_["reason"] == "category" and fitted.dtypes_["amount"] == "float64"
    assert fitted.best_iteration_ == 40 == fitted.booster_.current_iteration()
    assert fitted.booster_.feature_name() == list(X.columns)
    spec = fitted.feature_spec()
    assert spec[3] == {"name": "reason", "dtype": "category", "monotone": 0, "levels": sorted(REASONS)}


def test_deterministic_model_text(data):
    X, y = data
    params = dict(n_estimators=10, subsample=0.8, colsample_bytree=0.8, random_state=7)
    a = RefundAbuseClassifier(**params).fit(X, y).booster_.model_to_string()
    b = RefundAbuseClassifier(**params).fit(X, y).booster_.model_to_string()
    assert a == b
    c = RefundAbuseClassifier(**{**params, "random_state": 8}).fit(X, y).booster_.model_to_string()
    assert c != a
    # The trees do not depend on the thread count (only the recorded num_threads line does).
    one = RefundAbuseClassifier(**params, n_jobs=1).fit(X, y).booster_.model_to_string()
    two = RefundAbuseClassifier(**params, n_jobs=2).fit(X, y).booster_.model_to_string()
    assert one.split("parameters:")[0] == two.split("parameters:")[0] == a.split("parameters:")[0]


def test_not_fitted_raises_library_error():
    with pytest.raises(NotFittedError, match=re.escape("is not fitted yet")):
        RefundAbuseClassifier().predict_proba(np.zeros((1, 2)))


# ---------------------------------------------------------------------- input mapping


def test_column_order_and_extra_columns_do_not_matter(fitted, data):
    X, _ = data
    p = fitted.predict_proba(X)[:, 1]
    shuffled = X[["kind", "account_days", "reason", "amount", "n_refunds_30d"]].assign(extra=1.0)
    np.testing.assert_array_equal(fitted.predict_proba(shuffled)[:, 1], p)


def test_missing_columns_raise_schema_error_naming_them(fitted, data):
    X, _ = data
    with pytest.raises(SchemaError, match=re.escape("missing 2 feature column(s): ['amount', 'reason']")):
        fitted.predict_proba(X.drop(columns=["reason", "amount"]))


def test_non_numeric_value_in_numeric_column(fitted, data):
    X, _ = data
    bad = X.head(5).astype({"amount": object})
    bad.loc[bad.index[1], "amount"] = "12 EUR"
    with pytest.raises(SchemaError, match=re.escape("Feature column 'amount' must be numeric; 1 value(s) are not")):
        fitted.predict_proba(bad)


def test_category_codes_come_from_stored_levels(fitted, data):
    """A batch missing a level (re-inferred categories) predicts exactly like the full batch."""
    X, _ = data
    full = fitted.predict_proba(X)[:, 1]
    mask = (X["reason"] != "damaged").to_numpy()
    sub = X[mask].copy()
    # Re-infer categories from the batch: 'damaged' is absent, so naive codes would shift.
    sub["reason"] = pd.Categorical(sub["reason"].astype("str"))
    sub["kind"] = pd.Categorical(sub["kind"].astype("str"), categories=["return_and_refund", "refund_only"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(fitted.predict_proba(sub)[:, 1], full[mask])
    # Plain str / object columns map the same way.
    sub2 = X[mask].astype({"reason": object, "kind": "str"})
    np.testing.assert_array_equal(fitted.predict_proba(sub2)[:, 1], full[mask])


def test_unseen_level_becomes_missing_with_one_warning(fitted, data):
    X, _ = data
    batch = X.head(50).copy()
    batch["reason"] = batch["reason"].astype(object)
    batch.loc[batch.index[:3], "reason"] = "brand_new_reason"
    as_missing = batch.copy()
    as_missing.loc[as_missing.index[:3], "reason"] = None
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        p_unseen = fitted.predict_proba(batch)[:, 1]
    unseen = [w for w in rec if issubclass(w.category, UnseenCategoryWarning)]
    assert len(unseen) == 1
    assert "reason: 3" in str(unseen[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # missing values are not "unseen"
        p_missing = fitted.predict_proba(as_missing)[:, 1]
    np.testing.assert_array_equal(p_unseen, p_missing)
    matrix, counts = fitted.encoder_.transform(batch)
    assert counts == {"reason": 3} and np.isnan(matrix[:3, 3]).all()


def test_array_input_is_positional_with_warning(data):
    X, y = data
    num = X[["amount", "n_refunds_30d", "account_days"]]
    clf = RefundAbuseClassifier(n_estimators=10, n_jobs=1).fit(num, y)
    with pytest.warns(UserWarning, match="does not have valid feature names"):
        p = clf.predict_proba(num.head(20).to_numpy())[:, 1]
    np.testing.assert_array_equal(p, clf.predict_proba(num.head(20))[:, 1])
    with pytest.raises(SchemaError, match=re.escape("X has 4 features, but RefundAbuseClassifier is expecting 3")):
        clf.predict_proba(np.zeros((2, 4)))
    # Fitted on an array: features are x0, x1, ... and a DataFrame is taken positionally.
    arr = RefundAbuseClassifier(n_estimators=10, n_jobs=1).fit(num.to_numpy(), y)
    assert arr.feature_names_ == ["x0", "x1", "x2"] and not hasattr(arr, "feature_names_in_")
    np.testing.assert_array_equal(arr.predict_proba(num.head(20))[:, 1], arr.predict_proba(num.head(20).to_numpy())[:, 1])


# ---------------------------------------------------------------------- single-row path and reasons


def _row_dicts(X: pd.DataFrame) -> list[dict]:
    rows = X.astype(object).where(X.notna(), None).to_dict("records")
    return [{k: (str(v) if k in ("reason", "kind") and v is not None else v) for k, v in r.items()} for r in rows]


def test_row_path_equals_batch(fitted, data):
    X, _ = data
    head = X.head(200)
    p_batch = fitted.predict_proba(head)[:, 1]
    rows = [fitted.encode_row(r) for r in _row_dicts(head)]
    np.testing.assert_array_equal(np.vstack(rows), fitted.encoder_.transform(head)[0])
    p_row = np.array([fitted.predict_proba_row(r) for r in rows])
    np.testing.assert_allclose(p_row, p_batch, rtol=0, atol=1e-15)


def test_encode_row_unseen_and_errors(fitted):
    base = {"amount": 10.0, "n_refunds_30d": 1, "account_days": None, "reason": "other", "kind": "refund_only"}
    unseen: list[str] = []
    row = fitted.encode_row({**base, "reason": "new"}, unseen=unseen)
    assert unseen == ["reason"] and np.isnan(row[3]) and np.isnan(row[2])
    with pytest.raises(RequestError, match=re.escape("The request has no feature 'kind'")):
        fitted.encode_row({k: v for k, v in base.items() if k != "kind"})
    with pytest.raises(RequestError, match=re.escape("Feature 'amount' must be a number; got 'ten'")):
        fitted.encode_row({**base, "amount": "ten"})
    with pytest.raises(RequestError, match=re.escape("must be a category level (str); got ['x']")):
        fitted.encode_row({**base, "reason": ["x"]})


def test_top_contributions(fitted, data):
    X, _ = data
    row = _row_dicts(X.head(1))[0] | {"n_refunds_30d": 6.0, "reason": "not_received"}
    reasons = fitted.top_contributions(row, k=3)
    assert 1 <= len(reasons) <= 3
    assert [set(r) for r in reasons] == [{"text", "feature", "value", "contribution"}] * len(reasons)
    contribs = [r["contribution"] for r in reasons]
    assert contribs == sorted(contribs, reverse=True) and all(c > 0 for c in contribs)
    by_feature = {r["feature"]: r for r in reasons}
    if "reason" in by_feature:
        assert by_feature["reason"]["value"] == "not_received"
    # The three entry points agree.
    enc = fitted.encode_row(row)
    assert fitted.top_contributions(enc, k=3) == reasons
    assert fitted.top_contributions(pd.DataFrame([row]).astype({"reason": "str", "kind": "str"}), k=3) == reasons


def test_top_contributions_are_the_served_path_attributions(data):
    """Analysts (top_contributions) and production (RefundGuard.assess: PathExplainer) see the same reasons."""
    from sklearn.base import clone

    from refundguard.model import PathExplainer

    X, y = data
    clf = RefundAbuseClassifier(n_estimators=30, num_leaves=15, n_jobs=1).fit(X, y)
    params = clf.get_params()
    explainer = PathExplainer(clf.booster_)
    head = X.head(40)
    raw = clf.decision_function(head)
    for i, row_dict in enumerate(_row_dicts(head)):
        row = clf.encode_row(row_dict)
        contrib = explainer.contributions_one(row)
        assert clf.top_contributions(row_dict) == reasons_from_contributions(clf.encoder_, row, contrib)
        assert clf.top_contributions(row, k=5) == reasons_from_contributions(clf.encoder_, row, contrib, k=5)
        assert abs(contrib.sum() + explainer.bias - raw[i]) <= 1e-9
    # Built once per fitted booster; private state that get_params and clone do not see.
    cached = clf._path_explainer()
    assert clf._path_explainer() is cached
    assert clf.get_params() == params and "_explainer" not in clone(clf).__dict__
    # A re-fit explains with the new booster.
    clf.set_params(n_estimators=5).fit(X, y)
    assert "_explainer" not in clf.__dict__
    row = clf.encode_row(_row_dicts(head)[0])
    again = PathExplainer(clf.booster_).contributions_one(row)
    assert clf.top_contributions(row) == reasons_from_contributions(clf.encoder_, row, again)
    assert clf._path_explainer() is not cached


@settings(max_examples=40)
@given(
    idx=st.integers(0, 2999),
    feature=st.sampled_from(["amount", "n_refunds_30d"]),
    delta=st.floats(0.0, 500.0, allow_nan=False),
)
def test_monotone_constraint_never_lowers_p(fitted, data, idx, feature, delta):
    X, _ = data
    row = _row_dicts(X.iloc[[idx]])[0]
    p0 = fitted.predict_proba_row(fitted.encode_row(row))
    p1 = fitted.predict_proba_row(fitted.encode_row({**row, feature: row[feature] + delta}))
    assert p1 >= p0


# ---------------------------------------------------------------------- parameters, labels, early stopping


def test_bad_params_raise_config_error(data):
    X, y = data
    with pytest.raises(ConfigError, match=re.escape("The 'num_leaves' parameter of RefundAbuseClassifier must be an int in the range [2, 131072]. Got 1 instead.")):
        RefundAbuseClassifier(num_leaves=1).fit(X, y)
    with pytest.raises(ConfigError, match=re.escape("names feature(s) not in X: ['nope']")):
        RefundAbuseClassifier(monotone_constraints={"nope": 1}).fit(X, y)
    with pytest.raises(ConfigError, match=re.escape("constrains categorical feature(s) ['reason']")):
        RefundAbuseClassifier(monotone_constraints={"reason": 1}).fit(X, y)
    with pytest.raises(ConfigError, match=re.escape("cannot both be set")):
        RefundAbuseClassifier(class_weight="balanced", scale_pos_weight=3.0).fit(X, y)


def test_parameter_table_covers_exactly_the_init_parameters():
    import inspect

    init = set(inspect.signature(RefundAbuseClassifier.__init__).parameters) - {"self"}
    table = set(RefundAbuseClassifier._parameter_constraints)
    assert init == table, {"without a rule": sorted(init - table), "rule without a parameter": sorted(table - init)}
    assert set(RefundAbuseClassifier().get_params(deep=False)) == table


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"n_estimators": 0}, "'n_estimators' parameter of RefundAbuseClassifier must be an int in the range [1, inf). Got 0 instead."),
        ({"n_estimators": 10.0}, "'n_estimators' parameter of RefundAbuseClassifier must be an int in the range [1, inf). Got 10.0 instead."),
        ({"learning_rate": float("nan")}, "'learning_rate' parameter of RefundAbuseClassifier must be a float in the range (0.0, inf). Got nan instead."),
        ({"learning_rate": float("inf")}, "must be a float in the range (0.0, inf). Got inf instead."),
        ({"max_depth": 2.5}, "'max_depth' parameter of RefundAbuseClassifier must be an int. Got 2.5 instead."),
        ({"subsample": 0.0}, "'subsample' parameter of RefundAbuseClassifier must be a float in the range (0.0, 1.0]. Got 0.0 instead."),
        ({"reg_alpha": -1}, "'reg_alpha' parameter of RefundAbuseClassifier must be a float in the range [0.0, inf). Got -1 instead."),
        ({"early_stopping_rounds": True}, "'early_stopping_rounds' parameter of RefundAbuseClassifier must be None or an int in the range [1, inf). Got True instead."),
        ({"monotone_constraints": {"amount": 2}}, "must be None or a mapping of feature -> an int among {-1, 0, 1}. Got {'amount': 2} instead."),
        ({"categorical_features": "reason"}, "must be 'auto' or a list of feature names or positions. Got 'reason' instead."),
        ({"class_weight": {True: -1.0}}, "must be None, 'balanced' or a mapping of class -> a float in the range [0.0, inf). Got {True: -1.0} instead."),
        ({"scale_pos_weight": 0}, "'scale_pos_weight' parameter of RefundAbuseClassifier must be None or a float in the range (0.0, inf). Got 0 instead."),
        ({"n_jobs": "2"}, "'n_jobs' parameter of RefundAbuseClassifier must be None or an int. Got '2' instead."),
    ],
)
def test_each_parameter_rule_is_checked_in_fit(data, params, message):
    X, y = data
    clf = RefundAbuseClassifier(**params)  # __init__ only stores
    with pytest.raises(ConfigError, match=re.escape(message)) as e:
        clf.fit(X.head(50), y[:50])
    assert e.value.field == next(iter(params)) and e.value.owner == "RefundAbuseClassifier"


def test_numpy_scalars_are_valid_parameters(data):
    X, y = data
    clf = RefundAbuseClassifier(
        n_estimators=np.int64(3), learning_rate=np.float32(0.1), num_leaves=np.int32(7), n_jobs=np.int64(1),
        monotone_constraints={"amount": np.int8(1)}, class_weight={True: np.float64(2.0)},
    )
    assert clf.fit(X, y).best_iteration_ == 3


def test_missing_labels_raise_data_error(data):
    X, y = data
    y_na = pd.Series(y, dtype="boolean")
    y_na.iloc[:4] = pd.NA
    with pytest.raises(DataError, match=re.escape("Input y contains NaN: 4 row(s) have no label")):
        RefundAbuseClassifier(n_estimators=2).fit(X, y_na)


def test_nullable_boolean_labels_and_explicit_categoricals(data):
    X, y = data
    clf = RefundAbuseClassifier(n_estimators=5, categorical_features=["reason"], n_jobs=1)
    Xc = X.assign(kind=(X["kind"] == "refund_only").astype(float))
    clf.fit(Xc, pd.Series(y, dtype="boolean"))
    assert list(clf.categories_) == ["reason"] and clf.classes_.tolist() == [False, True]


def test_early_stopping_keeps_best_trees(data):
    X, y = data
    Xv, yv = make_data(1500, seed=1)
    clf = RefundAbuseClassifier(n_estimators=400, learning_rate=0.3, early_stopping_rounds=5, n_jobs=1)
    clf.fit(X, y, eval_set=(Xv, yv))
    assert clf.best_iteration_ < 400
    assert clf.booster_.current_iteration() == clf.best_iteration_


def test_class_weight_balanced_raises_predictions(data):
    X, y = data
    plain = RefundAbuseClassifier(n_estimators=20, n_jobs=1).fit(X, y).predict_proba(X)[:, 1].mean()
    bal = RefundAbuseClassifier(n_estimators=20, class_weight="balanced", n_jobs=1).fit(X, y).predict_proba(X)[:, 1].mean()
    assert bal > plain


def test_feature_encoder_validates_categories():
    with pytest.raises(ConfigError, match=re.escape("name features that are not in the feature list: ['z']")):
        FeatureEncoder(["a"], {"z": ["x"]})


def test_from_booster_round_trip(fitted, data):
    X, _ = data
    import lightgbm as lgb

    booster = lgb.Booster(model_str=fitted.booster_.model_to_string())
    clone = RefundAbuseClassifier.from_booster(
        booster, categories=fitted.categories_, monotone_constraints=fitted.monotone_constraints_
    )
    np.testing.assert_array_equal(clone.predict_proba(X)[:, 1], fitted.predict_proba(X)[:, 1])
    assert clone.feature_spec() == fitted.feature_spec()


# ---------------------------------------------------------------------- calibration


def test_isotonic_round_trip_and_monotone():
    rng = np.random.default_rng(3)
    p = rng.random(2000)
    y = rng.random(2000) < p**2
    cal = Calibrator("isotonic").fit(p, y)
    d = cal.to_dict()
    assert d["method"] == "isotonic" and len(d["x"]) == len(d["y"])
    again = Calibrator.from_dict(d)
    grid = np.linspace(-0.0, 1.0, 101)
    np.testing.assert_array_equal(again.transform(grid), cal.transform(grid))
    assert np.all(np.diff(cal.transform(grid)) >= 0)
    from sklearn.isotonic import IsotonicRegression

    ref = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(p, y).predict(grid)
    np.testing.assert_allclose(cal.transform(grid), ref, atol=1e-12)
    probes = np.r_[grid, d["x"], np.nextafter(np.array(d["x"]), 2.0), 0.37]
    one_by_one = np.array([cal.transform_one(float(v)) for v in probes])
    np.testing.assert_allclose(one_by_one, cal.transform(probes), rtol=0, atol=1e-15)


def test_platt_recovers_parameters_and_round_trips():
    rng = np.random.default_rng(4)
    z = rng.normal(0, 2, 20000)
    p_raw = 1 / (1 + np.exp(-z))
    y = rng.random(z.size) < 1 / (1 + np.exp(-(0.5 * z - 1.0)))
    cal = Calibrator("platt").fit(p_raw, y)
    assert cal.params_["a"] == pytest.approx(0.5, abs=0.05)
    assert cal.params_["b"] == pytest.approx(-1.0, abs=0.06)
    again = Calibrator.from_dict(cal.to_dict())
    np.testing.assert_array_equal(again.transform(p_raw[:50]), cal.transform(p_raw[:50]))
    assert cal.transform_one(0.2) == pytest.approx(float(cal.transform([0.2])[0]), abs=1e-12)


def test_choose_calibrator_rule():
    rng = np.random.default_rng(5)
    # Well specified on the logit scale -> Platt.
    z = rng.normal(-2, 1.5, 6000)
    p = 1 / (1 + np.exp(-z))
    y = rng.random(z.size) < 1 / (1 + np.exp(-(0.7 * z - 0.3)))
    cal, report = choose_calibrator(y, p)
    assert report["chosen"] == "platt" == cal.method
    assert set(report["oof_log_loss"]) == {"uncalibrated", "isotonic", "platt"}
    # A step-shaped truth that no sigmoid fits, with many positives -> isotonic.
    p2 = rng.random(6000)
    y2 = rng.random(6000) < np.where(p2 < 0.5, 0.05, np.where(p2 < 0.6, 0.9, 0.3))
    cal2, report2 = choose_calibrator(y2, p2)
    assert report2["chosen"] == "isotonic" == cal2.method


def test_calibrator_bad_input():
    with pytest.raises(ConfigError, match=re.escape("must be one of ('isotonic', 'platt'). Got 'beta' instead.")):
        Calibrator("beta")
    with pytest.raises(DataError, match=re.escape("Probabilities must be in [0, 1] with no NaN; 1 are not")):
        Calibrator("platt").fit([0.1, 1.2], [0, 1])
    with pytest.raises(NotFittedError, match="not fitted"):
        Calibrator("platt").transform([0.5])
    with pytest.raises(ConfigError, match=re.escape("The calibration numbers are malformed")):
        Calibrator.from_dict({"method": "isotonic", "x": [0.0, 1.0], "y": [0.5]})
    with pytest.raises(DataError, match=re.escape("needs at least 2 positive and 2 negative")):
        choose_calibrator([0, 0, 1], [0.1, 0.2, 0.3])


# ---------------------------------------------------------------------- fast single-row C API


def _tricky_rows(fitted, data) -> np.ndarray:
    X, _ = data
    m = fitted.encoder_.transform(X.head(300))[0]
    m[::7, 2] = np.nan  # missing numeric
    m[::11, 3] = np.nan  # missing / unseen category
    # Values whose low 32 bits are all ones (the tl2cgen bug trigger).
    m[::5, 0] = np.frombuffer(np.uint64(0x4059_0FFF_FFFF_FFFF).tobytes(), dtype=np.float64)[0]
    return np.ascontiguousarray(m)


def test_fast_row_predictor_equals_booster_predict(fitted, data):
    rows = _tricky_rows(fitted, data)
    fast = fitted.fast_row_predictor()
    assert fast.fast  # the C API is available with the pinned lightgbm
    expected = fitted.booster_.predict(rows)
    got = np.array([fast.predict(r) for r in rows])
    np.testing.assert_array_equal(got, expected)
    # Non-contiguous or wrong-dtype input is copied, wrong length is a RequestError.
    assert fast.predict(rows[:, :][0].astype(np.float32).astype(np.float64)) == pytest.approx(expected[0], abs=0)
    with pytest.raises(RequestError, match=re.escape("The encoded row has 4 values; the model expects 5")):
        fast.predict(np.zeros(4))
    fast.close()
    assert fast.predict(rows[1]) == expected[1]  # a new config is made after close


def test_fast_row_predictor_threads(fitted, data):
    from concurrent.futures import ThreadPoolExecutor

    rows = _tricky_rows(fitted, data)
    fast = fitted.fast_row_predictor()
    expected = fitted.booster_.predict(rows)
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda r: fast.predict(r), list(rows) * 4))
    np.testing.assert_array_equal(np.array(got), np.tile(expected, 4))


def test_fast_row_predictor_falls_back(fitted, data, monkeypatch):
    import refundguard.model.fast as fast_mod

    monkeypatch.setattr(fast_mod, "_fast_api", lambda: None)
    rows = _tricky_rows(fitted, data)
    slow = fitted.fast_row_predictor()
    assert not slow.fast
    assert slow.predict(rows[3]) == fitted.predict_proba_row(rows[3])


def test_path_explainer_sums_to_raw_score_and_one_equals_batch(fitted, data):
    from refundguard.model import PathExplainer

    X, _ = data
    explainer = PathExplainer(fitted.booster_)
    encoded, _ = fitted.encoder_.transform(X.head(300))
    contrib = explainer.contributions(encoded)
    raw = fitted.booster_.predict(encoded, raw_score=True)
    np.testing.assert_allclose(contrib.sum(axis=1) + explainer.bias, raw, rtol=0, atol=1e-9)
    for i in range(0, 300, 37):
        np.testing.assert_array_equal(explainer.contributions_one(encoded[i]), contrib[i])
    # a feature that never splits gets nothing; the top reason is the largest positive contribution
    used = set(np.flatnonzero(fitted.booster_.feature_importance() > 0))
    assert set(np.flatnonzero(np.abs(contrib).sum(axis=0) > 0)) <= used
    reasons = reasons_from_contributions(fitted.encoder_, encoded[0], contrib[0], k=3)
    assert [r["contribution"] for r in reasons] == sorted((r["contribution"] for r in reasons), reverse=True)
    assert all(r["contribution"] > 0 for r in reasons)


def test_choose_calibrator_takes_y_true_then_y_score():
    rng = np.random.default_rng(6)
    p = rng.random(400)
    y = rng.random(400) < p
    cal, report = choose_calibrator(y_true=y, y_score=p)
    cal2, report2 = choose_calibrator(y, p)
    assert report == report2 and cal.to_dict() == cal2.to_dict()
    assert report["n"] == 400 and report["n_positive"] == int(y.sum())
    np.testing.assert_array_equal(cal.transform(p), Calibrator(report["chosen"]).fit(p, y).transform(p))
    with pytest.raises(DataError, match=re.escape("Calibration labels must be 0/1")):
        choose_calibrator(p, y)  # the old (p, y) order: probabilities are not labels


def test_path_explainer_leaf_blocks_do_not_change_the_sums(fitted, data, monkeypatch):
    """Leaves are predicted in row blocks (bounded memory): any block size gives the same contributions."""
    import refundguard.model.explain as explain_mod
    from refundguard.model import PathExplainer

    X, _ = data
    explainer = PathExplainer(fitted.booster_)
    encoded, _ = fitted.encoder_.transform(X.head(301))
    whole = explainer.contributions(encoded)
    monkeypatch.setattr(explain_mod, "_LEAF_ROWS", 7)
    monkeypatch.setattr(explain_mod, "_PRODUCT_ROWS", 3)
    blocked = explainer.contributions(encoded)
    np.testing.assert_array_equal(blocked, whole)
    for i in range(len(encoded)):
        np.testing.assert_array_equal(explainer.contributions_one(encoded[i]), blocked[i])


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_rows=st.integers(1, 40), n_trees=st.integers(1, 12),
       n_features=st.integers(1, 6))
def test_path_explainer_adds_the_trees_in_order_exactly(seed, n_rows, n_trees, n_features):
    """The batch sum of each row's leaf rows (a sparse product) adds the trees in order from zero, as a
    loop over trees does: magnitudes from 1e-3 to 1e17 make any other order give other floats."""
    from refundguard.model import PathExplainer

    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 6, n_trees)
    ex = PathExplainer.__new__(PathExplainer)
    ex.table_ = rng.choice([0.0, -0.0, 1e-3, -1.0, 3.0, 1e17, -1e17, 0.1], size=(int(sizes.sum()), n_features))
    ex.offsets_ = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    leaves = np.column_stack([rng.integers(0, k, n_rows) for k in sizes])
    got = ex.contributions(np.zeros((n_rows, n_features)), leaves=lambda X: leaves[:len(X)].copy())
    want = np.zeros((n_rows, n_features))
    for i in range(n_rows):
        for t in range(n_trees):
            want[i] += ex.table_[ex.offsets_[t] + leaves[i, t]]
    assert got.tobytes() == want.tobytes()


def test_reasons_columns_equal_the_per_row_reasons(fitted, data):
    """The batch's columnar reasons are, row by row, the online ``reasons_from_contributions``
    (values formatted once per distinct value, -0.0 and NaN included)."""
    from refundguard.model.explain import reasons_columns

    X, _ = data
    encoded, _ = fitted.encoder_.transform(X.head(400))
    encoded = encoded.copy()
    rng = np.random.default_rng(3)
    encoded[rng.random(encoded.shape) < 0.05] = np.nan
    numeric = [j for j, f in enumerate(fitted.encoder_.features) if f not in fitted.encoder_.categories]
    encoded[::7, numeric[0]] = -0.0
    encoded[1::7, numeric[0]] = 0.0
    contrib = np.round(rng.normal(size=encoded.shape), 1)  # ties and zeros
    contrib[::5] = -np.abs(contrib[::5])  # rows without any positive contribution
    contrib[3::11, 2] = np.nan  # (never a reason)
    contrib[4::13, 1] = np.inf
    contrib[5::17, :] = contrib[5::17, :1]  # every feature tied
    contrib[6::19, :] = -np.inf
    cols = reasons_columns(fitted.encoder_, encoded, contrib, k=3)
    for k in (0, 1, 2, contrib.shape[1] + 1):  # fewer or more reasons than features
        few = reasons_columns(fitted.encoder_, encoded, contrib, k=k)
        for i in range(0, len(encoded), 3):
            want = reasons_from_contributions(fitted.encoder_, encoded[i], contrib[i], k=k)
            assert few.feature[few.offsets[i]:few.offsets[i + 1]] == [r["feature"] for r in want]
    for i in range(len(encoded)):
        want = reasons_from_contributions(fitted.encoder_, encoded[i], contrib[i], k=3)
        lo, hi = cols.offsets[i], cols.offsets[i + 1]
        assert cols.text[lo:hi] == [r["text"] for r in want]
        assert cols.feature[lo:hi] == [r["feature"] for r in want]
        assert cols.value[lo:hi] == [None if r["value"] is None else str(r["value"]) for r in want]
        assert cols.contribution[lo:hi].tolist() == [r["contribution"] for r in want]
