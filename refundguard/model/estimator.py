"""The abuse model: a scikit-learn estimator over LightGBM.

One job: :class:`RefundAbuseClassifier` trains with ``lightgbm.train`` on the
matrix of :class:`~refundguard.model.encoder.FeatureEncoder` (native categoricals,
monotone constraints, deterministic) and predicts through the same encoder.
Single-row prediction, explanations and calibration live in their own modules of
this subpackage. Nothing here reads or writes files; :mod:`refundguard.artifacts`
does that.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from numbers import Integral, Real
from typing import Any, ClassVar

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import check_array, column_or_1d

from refundguard._params import (
    Interval,
    ListOf,
    MappingOf,
    Options,
    Unchecked,
    check_params,
    is_int,
)
from refundguard.errors import (
    ConfigError,
    DataError,
    SchemaError,
    UnseenCategoryWarning,
)
from refundguard.model._not_fitted import NotFitted
from refundguard.model.encoder import FeatureEncoder, _python_scalar
from refundguard.model.explain import PathExplainer, reasons_from_contributions
from refundguard.model.fast import FastRowPredictor

__all__ = ["RefundAbuseClassifier"]

_OWNER = "RefundAbuseClassifier"

# Characters LightGBM refuses in feature names, plus whitespace (which it rewrites).
_BAD_NAME_CHARS = set('"\',:[]{}') | {" ", "\t", "\n", "\r"}


class RefundAbuseClassifier(ClassifierMixin, BaseEstimator):
    """Binary abuse classifier: LightGBM (``lightgbm.train``) behind the scikit-learn API.

    Parameters
    ----------
    n_estimators : int, default=300
        Boosting rounds (the maximum when early stopping is on).
    learning_rate : float, default=0.05
    num_leaves : int, default=31
    max_depth : int, default=-1
        -1 means no limit.
    min_child_samples : int, default=20
        Minimum rows in a leaf (LightGBM ``min_data_in_leaf``).
    min_child_weight : float, default=1e-3
        Minimum hessian sum in a leaf.
    reg_alpha, reg_lambda : float, default=0.0
        L1 / L2 regularisation of leaf values.
    subsample : float, default=1.0
        Row share per bagging round (``bagging_fraction``); bagging runs every
        ``subsample_freq`` rounds (1 when ``subsample < 1`` and the freq is 0).
    subsample_freq : int, default=0
    colsample_bytree : float, default=1.0
        Feature share per tree (``feature_fraction``).
    max_bin : int, default=255
    early_stopping_rounds : int or None, default=None
        Stop when the binary log-loss on ``eval_set`` has not improved for this
        many rounds; only used when ``fit`` gets an ``eval_set``. The fitted
        booster keeps only the best iteration's trees.
    monotone_constraints : dict or None, default=None
        Feature name -> -1 (decreasing), 0 or +1 (increasing in the abuse score).
        Categorical features cannot be constrained.
    categorical_features : "auto" or list, default="auto"
        "auto": DataFrame columns of category, str or object dtype. A list names the
        categorical features (column names, or positions for arrays).
    class_weight : None, "balanced" or dict, default=None
        Weights per class, multiplied into ``sample_weight``.
    scale_pos_weight : float or None, default=None
        LightGBM's positive-class weight (alternative to ``class_weight``).
    random_state : int, RandomState or None, default=0
        Seed; an int gives a bit-identical model for the same data.
    n_jobs : int or None, default=None
        Threads for training and batch prediction (None: LightGBM's default, all cores).
    verbose : int, default=-1
        LightGBM verbosity.

    Attributes
    ----------
    classes_ : ndarray of shape (2,)
        The two labels; ``classes_[1]`` is the abuse class.
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        Only when fitted on a DataFrame with string column names.
    feature_names_ : list of str
        Feature names in booster order (``x0, x1, ...`` for arrays).
    dtypes_ : dict
        Feature -> dtype name seen at fit (``"category"`` for categoricals).
    categories_ : dict
        Categorical feature -> its levels at fit time (code ``i`` = level ``i``).
    monotone_constraints_ : dict
        Feature -> constraint for every feature (0 = none).
    encoder_ : FeatureEncoder
        The encoder built from ``feature_names_`` and ``categories_``.
    booster_ : lightgbm.Booster
    best_iteration_ : int
        Number of trees kept.

    Notes
    -----
    Input is always encoded by :class:`FeatureEncoder` from the stored feature list
    and levels: DataFrame columns are matched by name (order is irrelevant, extra
    columns are ignored, missing ones raise :class:`SchemaError`), levels not seen at
    fit become NaN with one :class:`UnseenCategoryWarning` per call. Training is
    deterministic (``deterministic=True``, ``force_row_wise=True``, fixed seed).
    ``__init__`` only stores the parameters; ``fit`` checks them against the rules
    of ``_parameter_constraints`` and raises :class:`~refundguard.errors.ConfigError`.
    """

    #: The rules of every ``__init__`` parameter, checked at the start of ``fit``
    #: (:func:`refundguard._params.check_params`); a parameter may follow any one
    #: of its rules. Cross-parameter rules are checked after this table.
    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        "n_estimators": [Interval(Integral, 1, None, closed="left")],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "num_leaves": [Interval(Integral, 2, 131072, closed="both")],
        "max_depth": [Interval(Integral, None, None, closed="neither")],  # <= 0: no limit
        "min_child_samples": [Interval(Integral, 1, None, closed="left")],
        "min_child_weight": [Interval(Real, 0, None, closed="left")],
        "reg_alpha": [Interval(Real, 0, None, closed="left")],
        "reg_lambda": [Interval(Real, 0, None, closed="left")],
        "subsample": [Interval(Real, 0, 1, closed="right")],
        "subsample_freq": [Interval(Integral, 0, None, closed="left")],
        "colsample_bytree": [Interval(Real, 0, 1, closed="right")],
        "max_bin": [Interval(Integral, 2, None, closed="left")],
        "early_stopping_rounds": [None, Interval(Integral, 1, None, closed="left")],
        "monotone_constraints": [None, MappingOf(Options(Integral, {-1, 0, 1}), key="feature")],
        "categorical_features": [Options(str, {"auto"}), ListOf("feature names or positions")],
        "class_weight": [None, Options(str, {"balanced"}), MappingOf(Interval(Real, 0, None, closed="left"), key="class")],
        "scale_pos_weight": [None, Interval(Real, 0, None, closed="neither")],
        "random_state": [Unchecked("scikit-learn's check_random_state in fit")],
        "n_jobs": [None, Interval(Integral, None, None, closed="neither")],
        "verbose": [Unchecked("passed to LightGBM as int(verbose)")],
    }

    def __init__(
        self,
        *,
        n_estimators: int = 300,
        learning_rate: float = 0.05,
        num_leaves: int = 31,
        max_depth: int = -1,
        min_child_samples: int = 20,
        min_child_weight: float = 1e-3,
        reg_alpha: float = 0.0,
        reg_lambda: float = 0.0,
        subsample: float = 1.0,
        subsample_freq: int = 0,
        colsample_bytree: float = 1.0,
        max_bin: int = 255,
        early_stopping_rounds: int | None = None,
        monotone_constraints: Mapping[str, int] | None = None,
        categorical_features: str | Sequence[str | int] = "auto",
        class_weight: str | Mapping[Any, float] | None = None,
        scale_pos_weight: float | None = None,
        random_state: int | np.random.RandomState | None = 0,
        n_jobs: int | None = None,
        verbose: int = -1,
    ) -> None:
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.max_depth = max_depth
        self.min_child_samples = min_child_samples
        self.min_child_weight = min_child_weight
        self.reg_alpha = reg_alpha
        self.reg_lambda = reg_lambda
        self.subsample = subsample
        self.subsample_freq = subsample_freq
        self.colsample_bytree = colsample_bytree
        self.max_bin = max_bin
        self.early_stopping_rounds = early_stopping_rounds
        self.monotone_constraints = monotone_constraints
        self.categorical_features = categorical_features
        self.class_weight = class_weight
        self.scale_pos_weight = scale_pos_weight
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.verbose = verbose

    # -- scikit-learn plumbing ---------------------------------------------------------

    def __sklearn_tags__(self):  # noqa: D105 (scikit-learn protocol)
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        tags.input_tags.categorical = True
        tags.classifier_tags.multi_class = False
        return tags

    def __sklearn_is_fitted__(self) -> bool:  # noqa: D105
        return hasattr(self, "booster_")

    def _check_fitted(self) -> None:
        if not hasattr(self, "booster_"):
            raise NotFitted(
                f"This {_OWNER} instance is not fitted yet. Call 'fit' with appropriate arguments before using it."
            )

    def _validate_params(self) -> None:
        check_params(_OWNER, self._parameter_constraints, self.get_params(deep=False))
        if self.class_weight is not None and self.scale_pos_weight is not None:
            raise ConfigError(
                f"The 'class_weight' and 'scale_pos_weight' parameters of {_OWNER} cannot both be set. "
                f"Got class_weight={self.class_weight!r} and scale_pos_weight={self.scale_pos_weight!r}.",
                owner=_OWNER,
                field="scale_pos_weight",
                value=self.scale_pos_weight,
            )

    # -- input handling ----------------------------------------------------------------

    def _as_frame(self, X: Any) -> tuple[pd.DataFrame, bool]:
        """Return X as a DataFrame with string column names and whether it came with names."""
        if isinstance(X, pd.DataFrame):
            cols = list(X.columns)
            str_names = [c for c in cols if isinstance(c, str)]
            if len(str_names) == len(cols) and cols:
                if len(X) == 0:
                    raise SchemaError(f"Found array with 0 sample(s) (shape={X.shape}) while a minimum of 1 is required by {_OWNER}.")
                return X, True
            if str_names:
                raise TypeError(
                    "Feature names are only supported if all input features have string names, but your input has "
                    f"{sorted({type(c).__name__ for c in cols})} as feature name / column name types."
                )
            values = X.to_numpy()
        else:
            values = X
        arr = check_array(values, dtype="numeric", ensure_all_finite="allow-nan", accept_sparse=False, input_name="X")
        arr = np.asarray(arr, dtype=np.float64)
        names = [f"x{i}" for i in range(arr.shape[1])]
        return pd.DataFrame(arr, columns=names, copy=False), False

    def _encode(self, X: Any) -> np.ndarray:
        self._check_fitted()
        return self._encode_with(X, self.encoder_, hasattr(self, "feature_names_in_"))

    def _encode_with(self, X: Any, encoder: FeatureEncoder, fitted_with_names: bool) -> np.ndarray:
        frame, named = self._as_frame(X)
        n_expected = encoder.n_features
        if not named or not fitted_with_names:
            # Arrays are positional (scikit-learn's convention); so is a DataFrame given to
            # a model fitted on an array.
            if frame.shape[1] != n_expected:
                raise SchemaError(
                    f"X has {frame.shape[1]} features, but {_OWNER} is expecting {n_expected} features as input."
                )
            if not named and fitted_with_names:
                warnings.warn(
                    f"X does not have valid feature names, but {_OWNER} was fitted with feature names; "
                    "columns are taken in the fitted order.",
                    UserWarning,
                    stacklevel=4,
                )
            frame = frame.set_axis(list(encoder.features), axis=1)
        matrix, unseen = encoder.transform(frame)
        if unseen:
            detail = ", ".join(f"{k}: {v}" for k, v in unseen.items())
            warnings.warn(
                f"Category levels not seen at training time were treated as missing ({detail} row(s)).",
                UnseenCategoryWarning,
                stacklevel=4,
            )
        return matrix

    def _check_y(self, y: Any) -> tuple[np.ndarray, np.ndarray]:
        y = self._clean_y(y)
        classes, y_idx = np.unique(y, return_inverse=True)
        if len(classes) > 2:
            y_type = type_of_target(y, input_name="y")
            raise DataError(
                f"Only binary classification is supported. The type of the target is {y_type}: "
                f"{len(classes)} classes, e.g. {classes[:5].tolist()}.",
                detail={"n_classes": len(classes)},
            )
        if len(classes) < 2:
            raise DataError(
                f"{_OWNER} needs 2 classes in y; got 1 class: {classes.tolist()}.",
                detail={"n_classes": len(classes)},
            )
        return classes, y_idx.astype(np.float64)

    @staticmethod
    def _clean_y(y: Any) -> np.ndarray:
        if y is None:
            raise ValueError(f"{_OWNER} requires y to be passed, but the target y is None.")
        if isinstance(y, (pd.Series, pd.Index)) or hasattr(y, "isna"):
            series = pd.Series(y)
            if series.isna().any():
                raise DataError(
                    f"Input y contains NaN: {int(series.isna().sum())} row(s) have no label; drop unlabeled rows before fit.",
                    detail={"n_missing": int(series.isna().sum())},
                )
            numpy_dtype = getattr(series.dtype, "numpy_dtype", None)
            y = series.to_numpy(dtype=numpy_dtype) if numpy_dtype is not None else series.to_numpy()
        y = column_or_1d(y, warn=True)
        if y.dtype.kind in "fc":
            y = check_array(y, ensure_2d=False, dtype=None, ensure_all_finite=True, input_name="y")
        check_classification_targets(y)
        return y

    def _resolve_categoricals(self, frame: pd.DataFrame, named: bool) -> list[str]:
        cf = self.categorical_features
        names = list(frame.columns)
        if cf == "auto":
            if not named:
                return []
            return [
                c
                for c in names
                if isinstance(frame[c].dtype, (pd.CategoricalDtype, pd.StringDtype)) or frame[c].dtype == object
            ]
        chosen: list[str] = []
        for item in cf:
            if is_int(item) and not named:
                if not 0 <= item < len(names):
                    raise ConfigError(
                        f"The 'categorical_features' parameter of {_OWNER} has position {item}, "
                        f"but X has {len(names)} columns.",
                        owner=_OWNER,
                        field="categorical_features",
                        value=item,
                    )
                chosen.append(names[item])
            elif item in names:
                chosen.append(str(item))
            else:
                raise ConfigError(
                    f"The 'categorical_features' parameter of {_OWNER} names {item!r}, which is not a column of X.",
                    owner=_OWNER,
                    field="categorical_features",
                    value=item,
                )
        return [c for c in names if c in set(chosen)]

    @staticmethod
    def _levels(col: pd.Series) -> list[Any]:
        if isinstance(col.dtype, pd.CategoricalDtype):
            levels = list(col.cat.categories)
        else:
            uniq = pd.unique(col.dropna())
            try:
                levels = sorted(uniq.tolist())
            except TypeError:
                levels = sorted(uniq.tolist(), key=lambda v: (type(v).__name__, str(v)))
        return [_python_scalar(v) for v in levels]

    def _sample_weight(self, y_idx: np.ndarray, sample_weight: Any) -> np.ndarray | None:
        sw: np.ndarray | None = None
        if sample_weight is not None:
            sw = np.asarray(sample_weight, dtype=np.float64)
            if sw.ndim != 1 or sw.shape[0] != y_idx.shape[0]:
                raise ValueError(
                    f"sample_weight.shape == {sw.shape}, expected {(y_idx.shape[0],)}!"
                )
            if not np.all(np.isfinite(sw)) or np.any(sw < 0):
                raise DataError("sample_weight must be finite and >= 0.")
            if not sw.sum() > 0:
                raise DataError("sample_weight sums to zero: nothing to train on.")
        cw = self.class_weight
        if cw is None:
            return sw
        if cw == "balanced":
            counts = np.bincount(y_idx.astype(np.int64), minlength=2).astype(np.float64)
            per_class = len(y_idx) / (2.0 * np.maximum(counts, 1.0))
        else:
            per_class = np.array([float(cw.get(self.classes_[0], 1.0)), float(cw.get(self.classes_[1], 1.0))])
        w = per_class[y_idx.astype(np.int64)]
        return w if sw is None else w * sw

    def _lgb_params(self, monotone: list[int], seed: int) -> dict[str, Any]:
        params: dict[str, Any] = {
            "objective": "binary",
            "learning_rate": float(self.learning_rate),
            "num_leaves": int(self.num_leaves),
            "max_depth": int(self.max_depth),
            "min_data_in_leaf": int(self.min_child_samples),
            "min_sum_hessian_in_leaf": float(self.min_child_weight),
            "lambda_l1": float(self.reg_alpha),
            "lambda_l2": float(self.reg_lambda),
            "bagging_fraction": float(self.subsample),
            "bagging_freq": int(self.subsample_freq or (1 if self.subsample < 1 else 0)),
            "feature_fraction": float(self.colsample_bytree),
            "max_bin": int(self.max_bin),
            "seed": seed,
            "deterministic": True,
            "force_row_wise": True,
            "feature_pre_filter": False,
            "num_threads": 0 if self.n_jobs is None else int(self.n_jobs),
            "verbosity": int(self.verbose),
            "metric": "binary_logloss",
        }
        if any(monotone):
            params["monotone_constraints"] = monotone
        if self.scale_pos_weight is not None:
            params["scale_pos_weight"] = float(self.scale_pos_weight)
        return params

    # -- public API ----------------------------------------------------------------------

    def fit(
        self,
        X: Any,
        y: Any,
        *,
        sample_weight: Any = None,
        eval_set: tuple[Any, Any] | Sequence[tuple[Any, Any]] | None = None,
    ) -> RefundAbuseClassifier:
        """Train the model.

        Parameters
        ----------
        X : DataFrame or array-like of shape (n_samples, n_features)
            Categorical columns may hold strings or pandas categories.
        y : array-like of shape (n_samples,)
            Two classes; the larger label (``True``, 1) is the abuse class. No missing labels.
        sample_weight : array-like of shape (n_samples,), optional
        eval_set : (X_val, y_val) or [(X_val, y_val)], optional
            Validation data for early stopping (encoded with the levels of ``X``).

        Returns
        -------
        self
        """
        self._validate_params()
        frame, named = self._as_frame(X)
        self.__dict__.pop("feature_names_in_", None)
        self.__dict__.pop("_explainer", None)
        classes, y_idx = self._check_y(y)
        if len(y_idx) != len(frame):
            raise ValueError(f"X has {len(frame)} rows but y has {len(y_idx)}.")
        self.classes_ = classes
        names = [str(c) for c in frame.columns]
        bad = [n for n in names if not n or _BAD_NAME_CHARS & set(n)]
        if bad:
            raise SchemaError(
                f"Feature names must be non-empty and contain no whitespace or JSON special characters; got {bad[:5]}.",
                rule="feature_name",
                n_bad=len(bad),
                values=bad[:5],
            )
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise SchemaError(f"Feature names must be unique; duplicated: {dup}.", rule="unique", values=dup)
        cat_features = self._resolve_categoricals(frame, named)
        categories = {c: self._levels(frame[c]) for c in cat_features}
        mono_in = dict(self.monotone_constraints or {})
        unknown = sorted(set(mono_in) - set(names), key=str)
        if unknown:
            raise ConfigError(
                f"The 'monotone_constraints' parameter of {_OWNER} names feature(s) not in X: {unknown}.",
                owner=_OWNER,
                field="monotone_constraints",
                value=unknown,
            )
        on_cat = sorted(f for f in cat_features if mono_in.get(f, 0) != 0)
        if on_cat:
            raise ConfigError(
                f"The 'monotone_constraints' parameter of {_OWNER} constrains categorical feature(s) {on_cat}; "
                "only numeric features can be constrained.",
                owner=_OWNER,
                field="monotone_constraints",
                value=on_cat,
            )
        encoder = FeatureEncoder(names, categories)
        matrix, _ = encoder.transform(frame)
        weight = self._sample_weight(y_idx, sample_weight)
        monotone = [int(mono_in.get(n, 0)) for n in names]

        rs = self.random_state
        seed = int(rs) if is_int(rs) else int(check_random_state(rs).randint(np.iinfo(np.int32).max))
        params = self._lgb_params(monotone, seed)
        cat_idx = [names.index(c) for c in cat_features]
        train_set = lgb.Dataset(
            matrix,
            label=y_idx,
            weight=weight,
            feature_name=names,
            categorical_feature=cat_idx,
            free_raw_data=True,
            params={"verbosity": params["verbosity"]},
        )
        valid_sets: list[lgb.Dataset] = []
        callbacks: list[Callable[..., Any]] = []
        if eval_set is not None:
            pairs = [eval_set] if isinstance(eval_set, tuple) else list(eval_set)
            for X_val, y_val in pairs:
                m_val = self._encode_with(X_val, encoder, named)
                yv = self._clean_y(y_val)
                unknown_labels = sorted(set(np.unique(yv).tolist()) - set(classes.tolist()), key=str)
                if unknown_labels:
                    raise DataError(f"eval_set has labels not seen in y: {unknown_labels[:5]}.")
                if len(yv) != len(m_val):
                    raise ValueError(f"eval_set X has {len(m_val)} rows but y has {len(yv)}.")
                valid_sets.append(
                    lgb.Dataset(
                        m_val,
                        label=(yv == classes[1]).astype(np.float64),
                        reference=train_set,
                        categorical_feature=cat_idx,
                    )
                )
            if self.early_stopping_rounds is not None:
                callbacks.append(lgb.early_stopping(int(self.early_stopping_rounds), first_metric_only=True, verbose=False))
        booster = lgb.train(
            params,
            train_set,
            num_boost_round=int(self.n_estimators),
            valid_sets=valid_sets or None,
            valid_names=[f"valid_{i}" for i in range(len(valid_sets))] or None,
            callbacks=callbacks or None,
        )
        best = int(booster.best_iteration) if booster.best_iteration and booster.best_iteration > 0 else booster.current_iteration()
        # Keep only the trees that are used: the booster and its text are then one and the same model.
        booster = lgb.Booster(model_str=booster.model_to_string(num_iteration=best))

        self.booster_ = booster
        self.best_iteration_ = best
        self.n_features_in_ = len(names)
        self.feature_names_ = names
        if named:
            self.feature_names_in_ = np.asarray(names, dtype=object)
        self.categories_ = categories
        self.dtypes_ = {n: ("category" if n in categories else str(frame[n].dtype)) for n in names}
        self.monotone_constraints_ = dict(zip(names, monotone))
        self.encoder_ = encoder
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        """Raw score (log-odds of the abuse class), shape (n_samples,)."""
        matrix = self._encode(X)
        return self.booster_.predict(matrix, raw_score=True, num_threads=self._threads())

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, shape (n_samples, 2); column 1 is the abuse class."""
        matrix = self._encode(X)
        p = self.booster_.predict(matrix, num_threads=self._threads())
        return np.column_stack([1.0 - p, p])

    def predict(self, X: Any) -> np.ndarray:
        """Predicted labels (abuse when the raw score is > 0, i.e. p > 0.5)."""
        self._check_fitted()
        return self.classes_[(self.decision_function(X) > 0).astype(np.int64)]

    def _threads(self) -> int:
        return 0 if self.n_jobs is None else int(self.n_jobs)

    def encode_row(self, row: Mapping[str, Any], *, unseen: list[str] | None = None) -> np.ndarray:
        """Encode one request dict to a float64 row in feature order (see :meth:`FeatureEncoder.encode_row`)."""
        self._check_fitted()
        return self.encoder_.encode_row(row, unseen=unseen)

    def predict_proba_row(self, row: np.ndarray) -> float:
        """Abuse probability of one encoded row (online path, one thread, no pandas).

        Parameters
        ----------
        row : ndarray of shape (n_features,)
            Output of :meth:`encode_row`.
        """
        self._check_fitted()
        return float(self.booster_.predict(row.reshape(1, -1), num_threads=1)[0])

    def fast_row_predictor(self) -> FastRowPredictor:
        """A :class:`FastRowPredictor` for this model (LightGBM's fast single-row C API)."""
        self._check_fitted()
        return FastRowPredictor(self.booster_)

    def top_contributions(self, X_row: Mapping[str, Any] | pd.DataFrame | np.ndarray, k: int = 3) -> list[dict[str, Any]]:
        """The ``k`` features that pushed this request's score up the most.

        The contributions are the :class:`~refundguard.model.explain.PathExplainer`
        path attributions (log-odds) that ``RefundGuard.assess`` serves with every
        decision, so an analyst calling this method sees the reasons production
        gives. With :attr:`PathExplainer.bias` they sum to :meth:`decision_function`.
        The explainer is built on the first call and kept until the next ``fit``.

        Parameters
        ----------
        X_row
            A request dict, a 1-row DataFrame, or an encoded row (ndarray of shape (n_features,)).
        k
            At most this many reasons; only positive contributions are returned.

        Returns
        -------
        list of dict
            Items ``{text, feature, value, contribution}``, largest contribution first.
        """
        self._check_fitted()
        if isinstance(X_row, Mapping):
            row = self.encoder_.encode_row(X_row)
        elif isinstance(X_row, pd.DataFrame):
            if len(X_row) != 1:
                raise SchemaError(f"top_contributions expects one row; got {len(X_row)}.")
            row = self._encode(X_row)[0]
        else:
            row = np.asarray(X_row, dtype=np.float64).reshape(-1)
            if row.shape[0] != self.n_features_in_:
                raise SchemaError(f"X_row has {row.shape[0]} values, but {_OWNER} is expecting {self.n_features_in_}.")
        contrib = self._path_explainer().contributions_one(row)
        return reasons_from_contributions(self.encoder_, row, contrib, k=k)

    def _path_explainer(self) -> PathExplainer:
        """The :class:`PathExplainer` of ``booster_``, built once per fitted booster.

        Private fitted state (not a parameter: ``get_params`` and ``clone`` never see
        it). It is keyed by the booster object, so a re-``fit`` or a replaced
        ``booster_`` gets a new explainer.
        """
        cached: tuple[lgb.Booster, PathExplainer] | None = self.__dict__.get("_explainer")
        if cached is None or cached[0] is not self.booster_:
            cached = (self.booster_, PathExplainer(self.booster_))
            self._explainer = cached
        return cached[1]

    @classmethod
    def from_booster(
        cls,
        booster: lgb.Booster,
        *,
        categories: Mapping[str, Sequence[Any]] | None = None,
        dtypes: Mapping[str, str] | None = None,
        monotone_constraints: Mapping[str, int] | None = None,
        classes: Sequence[Any] = (False, True),
        feature_names_in: bool = True,
        params: Mapping[str, Any] | None = None,
    ) -> RefundAbuseClassifier:
        """Rebuild a fitted classifier around a loaded booster (e.g. from an artifact).

        The feature list is the booster's own; ``categories`` must be the stored levels.
        """
        clf = cls(**dict(params or {}))
        names = list(booster.feature_name())
        cats = {k: list(v) for k, v in (categories or {}).items()}
        clf.encoder_ = FeatureEncoder(names, cats)
        clf.booster_ = booster
        clf.best_iteration_ = int(booster.current_iteration())
        clf.n_features_in_ = len(names)
        clf.feature_names_ = names
        if feature_names_in:
            clf.feature_names_in_ = np.asarray(names, dtype=object)
        clf.categories_ = cats
        clf.dtypes_ = {n: (dtypes or {}).get(n, "category" if n in cats else "float64") for n in names}
        mono = dict(monotone_constraints or {})
        clf.monotone_constraints_ = {n: int(mono.get(n, 0)) for n in names}
        clf.classes_ = np.asarray(list(classes))
        return clf

    def feature_spec(self) -> list[dict[str, Any]]:
        """The feature list for ``meta.json``: ``[{name, dtype, levels?, monotone}]`` in booster order."""
        self._check_fitted()
        spec = []
        for n in self.feature_names_:
            item: dict[str, Any] = {"name": n, "dtype": self.dtypes_[n], "monotone": int(self.monotone_constraints_[n])}
            if n in self.categories_:
                item["levels"] = list(self.categories_[n])
            spec.append(item)
        return spec

