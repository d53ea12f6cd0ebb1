"""Time-split training: slices, label maturity, calibration, thresholds, champion/challenger.

Slices, all by ``requested_at`` (DESIGN.md section 5):

- **train**: before ``train_end - gap``, keeping only rows whose label was known
  by then (``resolved_at < train_end - gap``); the last 15 % of it by time is the
  early-stopping set;
- **valid**: ``[train_end, valid_end)``: calibration and thresholds;
- **test** (optional): ``[valid_end, test_end)``: reported metrics and the
  champion/challenger comparison.

Rows with a null label are never trained on. Features come from
:func:`refundguard.pipeline.point_in_time_features`, the same path batch scoring uses.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from refundguard._time import parameter_ns
from refundguard._version import __version__
from refundguard.artifacts import (
    SavedModel,
    build_meta,
    data_fingerprint,
    feature_bins,
    save_model,
    score_histogram,
)
from refundguard.config import ScoreConfig
from refundguard.errors import ConfigError, DataError
from refundguard.evaluation import Evaluation, Thresholds, choose_thresholds, evaluate_predictions, validation_curve
from refundguard.features import CATEGORICAL_FEATURES, monotone_constraints
from refundguard.model import Calibrator, RefundAbuseClassifier, choose_calibrator
from refundguard.guard import RefundGuard
from refundguard.pipeline import FeatureBatch, canonical_tables, point_in_time_features
from refundguard.policy import PolicyTimeline, gate_batch
from refundguard.registry import ModelRegistry

__all__ = [
    "DEFAULT_GAP_DAYS",
    "EARLY_STOPPING_SHARE",
    "DEFAULT_PARAMS",
    "TUNING_SPACE",
    "TrainedModel",
    "train",
    "Promotion",
    "promote_if_better",
    "training_slices",
    "TrainingSlices",
    "evaluate",
]

DEFAULT_GAP_DAYS = 14
EARLY_STOPPING_SHARE = 0.15
#: Classifier parameters used by :func:`train` unless overridden.
DEFAULT_PARAMS: dict[str, Any] = {
    "n_estimators": 400,
    "learning_rate": 0.05,
    "num_leaves": 31,
    "min_child_samples": 40,
    "reg_lambda": 1.0,
    "colsample_bytree": 0.8,
    "early_stopping_rounds": 40,
    "random_state": 0,
}
_MIN_TRAIN_ROWS = 50
_MIN_TRAIN_POSITIVES = 5


def _ts(value: Any, name: str) -> pd.Timestamp:
    """A slice boundary as a UTC timestamp (dates mean 00:00 UTC; naive means UTC)."""
    return pd.Timestamp(parameter_ns(value, name, "train"), tz="UTC")


@dataclass(frozen=True)
class TrainingSlices:
    """Boolean row masks of the training slices and their ``meta.json`` record."""

    train: np.ndarray
    early: np.ndarray
    valid: np.ndarray
    test: np.ndarray | None
    windows: dict[str, Any]


def training_slices(
    requests: pd.DataFrame,
    train_end: Any,
    valid_end: Any,
    test_end: Any = None,
    *,
    gap_days: int = DEFAULT_GAP_DAYS,
) -> TrainingSlices:
    """Boolean masks of the train, early-stopping, valid and test slices.

    Parameters
    ----------
    requests
        Requests sorted by ``requested_at`` with ``requested_at, resolved_at, is_abuse``.
    train_end, valid_end, test_end
        Slice boundaries (``train_end < valid_end < test_end``).
    gap_days
        Label maturity gap before ``train_end``.

    Returns
    -------
    TrainingSlices
        ``train`` (fit rows, early-stopping rows excluded), ``early``, ``valid``,
        ``test`` (or None) and the ``windows`` record for ``meta.json``.
    """
    t_end = _ts(train_end, "train_end")
    v_end = _ts(valid_end, "valid_end")
    te_end = None if test_end is None else _ts(test_end, "test_end")
    if not t_end < v_end:
        raise ConfigError.invalid("train", "valid_end", f"a date after train_end ({t_end.date()})", valid_end)
    if te_end is not None and not v_end < te_end:
        raise ConfigError.invalid("train", "test_end", f"None or a date after valid_end ({v_end.date()})", test_end)
    if isinstance(gap_days, bool) or not isinstance(gap_days, int) or gap_days < 0:
        raise ConfigError.invalid("train", "gap_days", "an int >= 0", gap_days)
    cut = t_end - pd.Timedelta(days=gap_days)
    at = requests["requested_at"]
    labelled = requests["is_abuse"].notna().to_numpy()
    resolved = requests["resolved_at"]
    train_all = (at < cut).to_numpy() & (resolved < cut).fillna(False).to_numpy() & labelled
    idx = np.flatnonzero(train_all)  # requests are sorted by time
    n_early = int(math.ceil(EARLY_STOPPING_SHARE * len(idx)))
    early = np.zeros(len(requests), dtype=bool)
    if n_early and len(idx) - n_early > 0:
        early[idx[-n_early:]] = True
    train = train_all & ~early
    valid = ((at >= t_end) & (at < v_end)).to_numpy() & labelled
    test = None if te_end is None else ((at >= v_end) & (at < te_end)).to_numpy() & labelled
    first = at[train_all].min() if train_all.any() else None
    windows = {
        "train": [None if first is None else first.isoformat(), cut.isoformat()],
        "early_stopping": [at[early].min().isoformat(), cut.isoformat()] if early.any() else None,
        "valid": [t_end.isoformat(), v_end.isoformat()],
        "test": None if te_end is None else [v_end.isoformat(), te_end.isoformat()],
        "gap_days": int(gap_days),
        "label_rule": "is_abuse not null and resolved_at < train_end - gap (train); is_abuse not null (valid, test)",
        "rows": {
            "train": int(train.sum()),
            "early_stopping": int(early.sum()),
            "valid": int(valid.sum()),
            "test": None if test is None else int(test.sum()),
        },
    }
    return TrainingSlices(train=train, early=early, valid=valid, test=test, windows=windows)


@dataclass
class TrainedModel:
    """A trained, calibrated abuse model with its thresholds and metadata.

    Attributes
    ----------
    classifier
        The fitted :class:`~refundguard.model.RefundAbuseClassifier`.
    calibrator
        Maps raw scores to calibrated probabilities.
    thresholds
        Intercept / review thresholds on the calibrated probability.
    meta
        ``meta.json`` content (without ``model_version``, set on save).
    evaluations
        ``{"valid": Evaluation, "test": Evaluation}`` (test only with ``test_end``).
    model_card
        The README.md text of the artifact.
    """

    classifier: RefundAbuseClassifier
    calibrator: Calibrator
    thresholds: Thresholds
    meta: dict[str, Any]
    evaluations: dict[str, Evaluation] = field(default_factory=dict)
    model_card: str = ""

    @property
    def metrics(self) -> dict[str, Any]:
        """Overall metrics per slice (``{"valid": {...}, "test": {...}}``)."""
        return {k: dict(v.overall) for k, v in self.evaluations.items()}

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        """Calibrated abuse probabilities of a feature matrix."""
        return self.calibrator.transform(self.classifier.predict_proba(X)[:, 1])

    def save(self, path: str | Path) -> SavedModel:
        """Write the model folder (model.txt, meta.json, README.md, MANIFEST) atomically."""
        return save_model(
            path,
            booster_text=self.classifier.booster_.model_to_string(),
            meta=self.meta,
            model_card=self.model_card,
        )


def _check_slice(name: str, y: np.ndarray, min_rows: int, min_pos: int) -> None:
    if len(y) < min_rows or int(y.sum()) < min_pos or int(y.sum()) == len(y):
        raise DataError(
            f"The {name} slice has {len(y)} labelled rows with {int(y.sum())} abusive; at least {min_rows} rows "
            f"and {min_pos} of each class are needed. Move the slice boundaries or bring more history.",
            detail={"slice": name, "rows": int(len(y)), "positives": int(y.sum())},
        )


def _gates(batch: FeatureBatch, policy: PolicyTimeline) -> pd.DataFrame:
    """The policy's gate step for every request: ``gated`` and ``audit`` per row."""
    return gate_batch(batch.policy_requests(), policy)


def _label_weights(gates: pd.DataFrame, mode: str, audit_rate: float) -> tuple[np.ndarray, np.ndarray]:
    """Which labelled rows may be used, and their training weights, under ``gated_labels=mode``.

    ``"all"``: every labelled row, weight 1. ``"audit"``: the platform labels gated requests
    only through the audit sample, so a gated row counts only when it was audited, with
    weight ``1 / audit_rate`` (it stands for the gated requests that were not audited).
    """
    n = len(gates)
    if mode == "all":
        return np.ones(n, dtype=bool), np.ones(n)
    gated = gates["gated"].to_numpy(dtype=bool)
    audit = gates["audit"].to_numpy(dtype=bool)
    usable = ~gated | audit
    weight = np.where(gated & audit, 1.0 / audit_rate, 1.0)
    return usable, weight


def _model_card(meta: Mapping[str, Any], command: str | None) -> str:
    w = meta["windows"]
    m = meta.get("metrics") or {}
    test_text = "none" if w["test"] is None else f"{w['test'][0]} .. {w['test'][1]} ({w['rows']['test']} rows)"
    fp = meta.get("data_fingerprint") or {}
    fp_rows = ", ".join(f"{t}: {v.get('rows')} rows" for t, v in (fp.get("tables") or {}).items())
    lines = [
        "# refundguard abuse model {model_version}",
        "",
        "LightGBM binary classifier of refund-only abuse, calibrated "
        f"({meta['calibration']['method'] if meta.get('calibration') else 'uncalibrated'}), "
        f"with {len(meta['features'])} point-in-time features (see meta.json).",
        "",
        "## Data",
        f"- fingerprint: {str(fp.get('sha256', 'n/a'))[:16]} ({fp_rows})",
        f"- share of requests behind the store gate in the training period: {meta.get('gated_share')}",
        "",
        "## Slices (by requested_at)",
        f"- train: {w['train'][0]} .. {w['train'][1]} ({w['rows']['train']} rows; early stopping on the last "
        f"{w['rows']['early_stopping']} by time); labels known before train_end - {w['gap_days']} days",
        f"- valid: {w['valid'][0]} .. {w['valid'][1]} ({w['rows']['valid']} rows): calibration and thresholds",
        f"- test: {test_text}",
        "",
        "## Thresholds (calibrated probability)",
        f"- intercept: {meta['thresholds'].get('intercept')} (target precision {meta['thresholds'].get('intercept_precision')})",
        f"- review: {meta['thresholds'].get('review')} (target precision {meta['thresholds'].get('review_precision')})",
        "",
        "## Metrics",
    ]
    for slice_name in ("valid", "test"):
        overall = (m.get(slice_name) or {}).get("overall")
        if overall:
            keys = ("n", "n_positive", "pr_auc", "roc_auc", "recall_at_precision", "precision_at_k", "ece", "brier", "intercepted_amount")
            shown = ", ".join(f"{k}={overall[k]:.4g}" if isinstance(overall.get(k), float) else f"{k}={overall.get(k)}" for k in keys if k in overall)
            lines.append(f"- {slice_name}: {shown}")
    tuning = meta.get("tuning")
    if tuning:
        chosen = tuning["tried"][tuning["chosen"]]
        best = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in chosen["params"].items())
        lines += [
            "",
            "## Tuning",
            f"- {tuning['candidates']} parameter sets tried (seed {tuning['seed']}), compared by {tuning['metric']}",
            f"- chosen: candidate {tuning['chosen']} (validation PR-AUC {chosen['valid_pr_auc']:.4f}, "
            f"{chosen['trees']} trees): {best}",
        ]
    lines += [
        "",
        "## Reproduce",
        f"`{command}`" if command else "(trained through the Python API)",
        "",
        f"refundguard {__version__}; library versions in meta.json. No pickle: model.txt is LightGBM text.",
        "",
    ]
    return "\n".join(lines)


#: The parameter space :func:`train` searches with ``tune`` (scipy.stats distributions or lists).
TUNING_SPACE: dict[str, Any] = {
    "num_leaves": [15, 31, 63, 127],
    "min_child_samples": [10, 20, 40, 80, 160],
    "learning_rate": stats.loguniform(0.02, 0.2),
    "colsample_bytree": stats.uniform(0.5, 0.5),
    "reg_lambda": stats.loguniform(1e-3, 10.0),
    "reg_alpha": [0.0, 0.01, 0.1, 1.0],
}
_TUNING_SEED = 0


def _tune(
    fit: Any, base: Mapping[str, Any], n: int, X_valid: pd.DataFrame, y_valid: np.ndarray, *, progress: bool
) -> tuple[RefundAbuseClassifier, dict[str, Any]]:
    """Fit ``n`` candidates (the base parameters first), keep the best by validation PR-AUC."""
    from sklearn.model_selection import ParameterSampler
    from tqdm.auto import tqdm

    draws = list(ParameterSampler(TUNING_SPACE, n_iter=n - 1, random_state=_TUNING_SEED)) if n > 1 else []
    candidates = [dict(base)] + [
        {**base, **{k: (float(v) if isinstance(v, float | np.floating) else v) for k, v in d.items()},
         "n_estimators": max(int(base.get("n_estimators", 400)), 1000)}
        for d in draws
    ]
    tried = []
    best: tuple[float, int, RefundAbuseClassifier] | None = None
    for i, cand in enumerate(tqdm(candidates, desc="tuning", unit="model", disable=not progress, leave=False)):
        clf = fit(cand)
        score = float(evaluate_predictions(y_valid, clf.predict_proba(X_valid)[:, 1],
                                           np.zeros(len(y_valid))).overall["pr_auc"])
        tried.append({"params": {k: clf.get_params()[k] for k in sorted(TUNING_SPACE)}, "valid_pr_auc": score,
                      "trees": int(clf.best_iteration_)})
        if best is None or score > best[0]:
            best = (score, i, clf)
    assert best is not None
    record = {
        "candidates": len(candidates),
        "metric": "PR-AUC of the raw score on the validation slice (the test slice is never read)",
        "space": {k: (v if isinstance(v, list) else repr(v.dist.name) + str(v.args)) for k, v in TUNING_SPACE.items()},
        "seed": _TUNING_SEED,
        "chosen": best[1],
        "tried": tried,
    }
    return best[2], record


def train(
    tables: Mapping[str, pd.DataFrame],
    train_end: Any,
    valid_end: Any,
    test_end: Any = None,
    *,
    gap_days: int = DEFAULT_GAP_DAYS,
    score_config: ScoreConfig | None = None,
    params: Mapping[str, Any] | None = None,
    intercept_precision: float = 0.90,
    review_precision: float = 0.50,
    policy: PolicyTimeline | None = None,
    gated_labels: str = "all",
    tune: int = 0,
    validate_tables: bool = True,
    trained_at: Any = None,
    command: str | None = None,
    progress: bool = False,
) -> TrainedModel:
    """Train, calibrate and set the thresholds of an abuse model on a time split.

    Parameters
    ----------
    tables
        The contract's tables (validated here in strict mode unless
        ``validate_tables=False``).
    train_end, valid_end, test_end
        Slice boundaries (see the module docstring). ``test_end=None``: no test slice.
    gap_days
        Label maturity gap (default 14 days).
    score_config
        Store score configuration for the store features (stored in the artifact).
    params
        Overrides of :data:`DEFAULT_PARAMS` for :class:`RefundAbuseClassifier`.
    intercept_precision, review_precision
        Validation precision targets of the intercept and review thresholds.
    policy
        Policy timeline: the gated share, and the gate and audit sample behind
        ``gated_labels`` (default timeline).
    gated_labels
        ``"all"`` (default): train on every labelled row. ``"audit"``: the labels of
        requests behind the store gate come only from the audit sample (the platform
        does not adjudicate the rest), so gated rows are used only when audited, with
        weight ``1 / audit_rate``; validation and test keep the audited gated rows
        (unweighted) and drop the others.
    tune
        Try this many parameter sets (0, the default: train once with ``params``).
        The candidates are :data:`DEFAULT_PARAMS` (merged with ``params``) and
        ``tune - 1`` draws from :data:`TUNING_SPACE`, each fitted on the train slice
        with early stopping on its last 15%, and compared by PR-AUC on the
        validation slice only (the test slice is never read); the search is
        recorded in ``meta.json`` (``tuning``) and the model card.
    validate_tables
        Validate the input tables first.
    trained_at
        Training date recorded in the artifact (default: today, UTC).
    command
        The command line that produced the model, for the model card.
    progress
        Show a progress bar while the features are built.

    Returns
    -------
    TrainedModel

    Raises
    ------
    DataError
        A slice has too few labelled rows or only one class.
    SchemaError
        The tables break the data contract.
    """
    cfg = score_config if score_config is not None else ScoreConfig()
    clean = canonical_tables(tables, validate_tables)
    last = _ts(test_end if test_end is not None else valid_end, "test_end" if test_end is not None else "valid_end")
    batch = point_in_time_features(clean, None, last, score_config=cfg, with_labels=True, progress=progress)
    sl = training_slices(batch.requests, train_end, valid_end, test_end, gap_days=gap_days)
    y_all = batch.requests["is_abuse"].fillna(False).astype(bool).to_numpy()
    if gated_labels not in ("all", "audit"):
        raise ConfigError.invalid("train", "gated_labels", "'all' or 'audit'", gated_labels)
    timeline = policy if policy is not None else PolicyTimeline.default()
    gates = _gates(batch, timeline)
    audit_rate = timeline.versions[-1].audit_rate
    if gated_labels == "audit" and not audit_rate > 0:
        raise ConfigError.invalid("train", "gated_labels", "'all' when the policy's audit_rate is 0", gated_labels)
    usable, weight = _label_weights(gates, gated_labels, audit_rate)
    masks = {"train": sl.train & usable, "early_stopping": sl.early & usable, "valid": sl.valid & usable,
             "test": None if sl.test is None else sl.test & usable}
    rows = {k: None if m is None else int(m.sum()) for k, m in masks.items()}
    sl = TrainingSlices(train=masks["train"], early=masks["early_stopping"], valid=masks["valid"], test=masks["test"],
                 windows={**sl.windows, "rows": rows, "gated_labels": gated_labels})

    _check_slice("train", y_all[sl.train], _MIN_TRAIN_ROWS, _MIN_TRAIN_POSITIVES)
    _check_slice("valid", y_all[sl.valid], 20, 2)
    if isinstance(tune, bool) or not isinstance(tune, int) or tune < 0:
        raise ConfigError.invalid("train", "tune", "an int >= 0 (candidate parameter sets to try)", tune)
    p_kw = {**DEFAULT_PARAMS, **(params or {})}

    def fit(candidate: Mapping[str, Any]) -> RefundAbuseClassifier:
        clf = RefundAbuseClassifier(
            **candidate, monotone_constraints=monotone_constraints(), categorical_features=list(CATEGORICAL_FEATURES)
        )
        eval_set = None
        if sl.early.any() and len(np.unique(y_all[sl.early])) == 2:
            eval_set = (batch.X.loc[sl.early], y_all[sl.early])
        elif candidate.get("early_stopping_rounds"):
            warnings.warn("The early-stopping slice has a single class; training without early stopping.",
                          stacklevel=3)
            clf.set_params(early_stopping_rounds=None)
        return clf.fit(batch.X.loc[sl.train], y_all[sl.train], sample_weight=weight[sl.train], eval_set=eval_set)

    tuning = None
    if tune:
        clf, tuning = _tune(fit, p_kw, tune, batch.X.loc[sl.valid], y_all[sl.valid], progress=progress)
    else:
        clf = fit(p_kw)

    raw_valid = clf.predict_proba(batch.X.loc[sl.valid])[:, 1]
    calibrator, cal_report = choose_calibrator(y_all[sl.valid], raw_valid)
    p_valid = calibrator.transform(raw_valid)
    thresholds = choose_thresholds(y_all[sl.valid], p_valid, intercept_precision, review_precision)
    evaluations = {"valid": batch.evaluate(sl.valid, p_valid, thresholds.intercept)}
    if sl.test is not None and sl.test.any():
        p_test = calibrator.transform(clf.predict_proba(batch.X.loc[sl.test])[:, 1])
        evaluations["test"] = batch.evaluate(sl.test, p_test, thresholds.intercept)
    when = trained_at if trained_at is not None else datetime.now(timezone.utc).date()
    meta = build_meta(
        clf,
        trained_at=when,
        calibration={**calibrator.to_dict(), "choice": cal_report},
        thresholds=thresholds.to_dict(),
        validation_curve=validation_curve(y_all[sl.valid], p_valid),
        drift={
            "feature_bins": feature_bins(batch.X.loc[sl.train], categories=clf.categories_),
            "score_histogram": score_histogram(p_valid),
        },
        gated_share=float(gates.loc[sl.train | sl.early | sl.valid, "gated"].mean()),
        windows=sl.windows,
        score_config=cfg.to_dict(),
        metrics={k: v.to_dict() for k, v in evaluations.items()},
        data_fingerprint=data_fingerprint(clean),
        extra=None if tuning is None else {"tuning": tuning},
    )
    card = _model_card(meta, command)
    return TrainedModel(clf, calibrator, thresholds, meta, evaluations, card)


@dataclass(frozen=True)
class Promotion:
    """Outcome of a champion/challenger comparison on the test slice.

    Attributes
    ----------
    promoted
        Whether the challenger became the registry's ``current`` version.
    metric
        The metric compared (``pr_auc``).
    challenger, champion
        Their values on the same test slice (``champion`` is None when there was none).
    version
        The challenger's version in the registry.
    previous
        The version that was ``current`` before (``None`` when there was none).
    """

    promoted: bool
    metric: str
    challenger: float
    champion: float | None
    version: str = ""
    previous: str | None = None


def promote_if_better(
    trained: TrainedModel,
    tables: Mapping[str, pd.DataFrame],
    registry: str | Path | ModelRegistry,
    *,
    metric: str = "pr_auc",
    validate_tables: bool = True,
) -> Promotion:
    """Register ``trained`` and make it the current model only if it beats the current one on the test slice.

    The challenger is written to the registry (:class:`~refundguard.registry.ModelRegistry`)
    as a new version either way. Both models score the same test requests
    (``trained``'s test window), each with its own category levels and calibration;
    the ``current`` pointer moves to the challenger when its ``metric`` is strictly
    higher (or when there is no current model). The decision is logged with both
    figures; the replaced version stays, and ``ModelRegistry.rollback`` serves it again.

    Raises
    ------
    DataError
        ``trained`` has no test slice.
    ModelError
        The registry folder is not a registry, or the current model fails verification
        or uses another feature list.
    """
    tables = canonical_tables(tables, validate_tables)
    test = trained.meta["windows"].get("test")
    if not test or "test" not in trained.evaluations:
        raise DataError("Champion/challenger needs a test slice: train with test_end (--test-end).")
    reg = registry if isinstance(registry, ModelRegistry) else ModelRegistry(registry)
    new_value = float(trained.evaluations["test"].overall[metric])
    version = reg.register(trained)
    previous = reg.current()
    detail: dict[str, Any] = {"metric": metric, "test_window": list(test), "challenger": new_value, "champion": None}
    if previous is None:
        reg.promote(version, detail)
        return Promotion(True, metric, new_value, None, version, previous)
    if previous == version:  # the very artifact that serves already: nothing to beat
        detail["champion"] = new_value
        reg.keep(version, detail)
        return Promotion(False, metric, new_value, new_value, version, previous)
    champion = RefundGuard.load(reg.current_path())  # verifies it and its feature list (ModelError)
    old_value = float(champion.evaluate(tables, test[0], test[1], validate_tables=validate_tables).overall[metric])
    detail["champion"] = old_value
    detail["champion_version"] = previous
    better = bool(new_value > old_value or (math.isnan(old_value) and not math.isnan(new_value)))
    if better:
        reg.promote(version, detail)
    else:
        reg.keep(version, detail)
    return Promotion(better, metric, new_value, old_value, version, previous)


def evaluate(
    model: str | Path | TrainedModel | Any,
    tables: Mapping[str, pd.DataFrame],
    start: Any = None,
    end: Any = None,
    *,
    validate_tables: bool = True,
) -> Evaluation:
    """Evaluate a model on the labelled refunds requested in ``[start, end)``.

    Parameters
    ----------
    model
        A model folder, a :class:`~refundguard.guard.RefundGuard` or a
        :class:`TrainedModel` (saved to a temporary folder and loaded, so exactly
        the artifact path is measured).
    tables
        The contract's tables.
    start, end
        Half-open bounds on ``requested_at``.
    validate_tables
        Tables that are not :func:`refundguard.validate` output are validated (strict)
        first; ``False`` means "validated already" (dtypes still checked).

    Returns
    -------
    refundguard.evaluation.Evaluation
        PR-AUC, ROC-AUC, recall at the intercept precision, precision at k,
        expected calibration error, intercepted amount; by category and by
        store-score band (< 4.6, 4.6-4.8, >= 4.8, missing).
    """
    tables = canonical_tables(tables, validate_tables)  # once, before a TrainedModel is saved and loaded
    if isinstance(model, TrainedModel):
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            model.save(Path(tmp) / "model")
            guard = RefundGuard.load(Path(tmp) / "model")
            return guard.evaluate(tables, start, end, validate_tables=validate_tables)
    guard = model if isinstance(model, RefundGuard) else RefundGuard.load(model)
    return guard.evaluate(tables, start, end, validate_tables=validate_tables)
