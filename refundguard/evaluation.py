"""Metrics for a rare positive class, overall, by category and by store-score band.

* :func:`evaluate_predictions`: PR-AUC (average precision), ROC-AUC, recall at the
  intercept precision (0.90), precision at k, expected calibration error, Brier
  score, log-loss and, given a threshold, what it intercepts (count, amount, abuse
  amount); the same per category and per store-score band (``< 4.6``,
  ``4.6-4.8``, ``>= 4.8``, ``missing``). A slice with one class or no rows gives NaN
  for the metrics that need both classes, never an exception.
* :func:`precision_recall_table` / :func:`validation_curve`: precision and recall for
  every distinct threshold (``flag if p >= threshold``).
* :func:`choose_thresholds`: the intercept and review thresholds of DESIGN.md
  section 5 (lowest threshold whose validation precision reaches the target).

Every function takes the labels first, like scikit-learn's metrics:
``(y_true, y_score, ...)``.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from refundguard._io import atomic_write_text
from refundguard.errors import DataError, ThresholdUnreachableWarning

__all__ = [
    "STORE_SCORE_BANDS",
    "Thresholds",
    "Evaluation",
    "precision_recall_table",
    "validation_curve",
    "choose_thresholds",
    "expected_calibration_error",
    "slice_metrics",
    "evaluate_predictions",
    "store_score_band",
]

#: Store-score bands for reports, in display order.
STORE_SCORE_BANDS: tuple[str, ...] = ("<4.6", "4.6-4.8", ">=4.8", "missing")
_BAND_TOLERANCE = 1e-9  # published scores are two-decimal floats; 4.8 may be stored as 4.7999999999


# ----------------------------------------------------------------------------- input checks


def _labels(y: Any, name: str = "y") -> np.ndarray:
    s = pd.Series(y) if not isinstance(y, pd.Series) else y
    if s.isna().any():
        raise DataError(
            f"{name} has {int(s.isna().sum())} missing label(s); evaluate labelled rows only.",
            detail={"n_missing": int(s.isna().sum())},
        )
    try:
        arr = s.to_numpy(dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{name} must be bool or 0/1; got dtype {s.dtype}.") from exc
    if not np.isin(arr, (0.0, 1.0)).all():
        bad = arr[~np.isin(arr, (0.0, 1.0))]
        raise DataError(f"{name} must be bool or 0/1; got values such as {bad[:3].tolist()}.")
    return arr


def _probs(p: Any, n: int | None = None, name: str = "p") -> np.ndarray:
    arr = np.asarray(pd.Series(p).to_numpy(dtype=np.float64, na_value=np.nan)).reshape(-1)
    if n is not None and arr.shape[0] != n:
        raise DataError(f"{name} has {arr.shape[0]} values for {n} labels.")
    bad = np.isnan(arr) | (arr < 0) | (arr > 1)
    if bad.any():
        raise DataError(
            f"{name} must hold probabilities in [0, 1] with no NaN; {int(bad.sum())} do not, e.g. {arr[bad][:3].tolist()}."
        )
    return arr


# ----------------------------------------------------------------------------- curves and thresholds


def precision_recall_table(y_true: Any, y_score: Any) -> pd.DataFrame:
    """Precision and recall of ``flag if y_score >= threshold`` for every distinct threshold.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        Labels, bool or 0/1, no missing values.
    y_score : array-like of shape (n_samples,)
        Probabilities in [0, 1].

    Returns
    -------
    DataFrame
        Columns ``threshold`` (descending), ``n_flagged``, ``tp``, ``precision``,
        ``recall`` (NaN when there are no positives).
    """
    ya = _labels(y_true, "y_true")
    probs = _probs(y_score, ya.size, "y_score")
    order = np.argsort(-probs, kind="stable")
    ps, ys = probs[order], ya[order]
    # The last index of each run of equal p: everything up to it is flagged at that threshold.
    last = np.r_[np.flatnonzero(np.diff(ps) != 0), ps.size - 1] if ps.size else np.array([], dtype=np.int64)
    tp = np.cumsum(ys)[last] if ps.size else np.array([])
    flagged = last + 1
    n_pos = ya.sum()
    return pd.DataFrame(
        {
            "threshold": ps[last] if ps.size else np.array([]),
            "n_flagged": flagged.astype(np.int64),
            "tp": tp.astype(np.int64),
            "precision": tp / np.maximum(flagged, 1),
            "recall": tp / n_pos if n_pos > 0 else np.full(len(last), np.nan),
        }
    )


def validation_curve(y_true: Any, y_score: Any, max_points: int = 200) -> dict[str, list[float]]:
    """The precision/recall/threshold curve, thinned to at most ``max_points`` (for meta.json).

    Points are taken evenly along the table of :func:`precision_recall_table`; the
    first and last points are always kept.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        Validation labels, bool or 0/1.
    y_score : array-like of shape (n_samples,)
        Validation probabilities in [0, 1].
    max_points : int, default=200
        Most points kept.

    Returns
    -------
    dict
        ``{"threshold": [...], "precision": [...], "recall": [...]}`` (recall ``None``
        when there are no positives).
    """
    t = precision_recall_table(y_true, y_score)
    if len(t) > max_points:
        idx = np.unique(np.linspace(0, len(t) - 1, max_points).round().astype(np.int64))
        t = t.iloc[idx]
    return {
        "threshold": t["threshold"].tolist(),
        "precision": t["precision"].tolist(),
        "recall": [None if math.isnan(v) else v for v in t["recall"].tolist()],
    }


@dataclass(frozen=True)
class Thresholds:
    """Thresholds chosen on validation data.

    Attributes
    ----------
    intercept, review : float or None
        ``None`` disables the action (target precision unreachable).
    intercept_precision, review_precision : float
        The targets.
    achieved : dict
        Per action: ``{"precision", "recall", "n_flagged"}`` at the chosen threshold.
    """

    intercept: float | None
    review: float | None
    intercept_precision: float = 0.90
    review_precision: float = 0.50
    achieved: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the ``thresholds`` field of meta.json)."""
        return {
            "intercept": self.intercept,
            "review": self.review,
            "intercept_precision": self.intercept_precision,
            "review_precision": self.review_precision,
            "achieved": {k: dict(v) for k, v in self.achieved.items()},
        }


def _lowest_threshold(table: pd.DataFrame, target: float) -> int | None:
    ok = np.flatnonzero(table["precision"].to_numpy() >= target - 1e-12)
    if not ok.size:
        return None
    return int(ok[-1])  # the table is sorted by descending threshold: last = lowest


def choose_thresholds(
    y_true: Any, y_score: Any, intercept_precision: float = 0.90, review_precision: float = 0.50
) -> Thresholds:
    """Intercept and review thresholds from validation data (DESIGN.md section 5).

    ``intercept`` is the lowest threshold whose validation precision (flag if
    ``p >= threshold``) is at least ``intercept_precision``; ``review`` likewise with
    ``review_precision``; then ``review <= intercept`` is enforced. A target no
    threshold reaches gives ``None`` (the action is disabled) and a
    :class:`~refundguard.errors.ThresholdUnreachableWarning`.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        Validation labels (bool or 0/1).
    y_score : array-like of shape (n_samples,)
        Calibrated validation probabilities.
    intercept_precision, review_precision : float in (0, 1]
        The target precisions.

    Returns
    -------
    Thresholds
    """
    for name, v in (("intercept_precision", intercept_precision), ("review_precision", review_precision)):
        if not 0.0 < float(v) <= 1.0:
            raise DataError(f"{name} must be in (0, 1]; got {v!r}.")
    table = precision_recall_table(y_true, y_score)
    chosen: dict[str, float | None] = {}
    achieved: dict[str, Any] = {}
    for action, target in (("intercept", intercept_precision), ("review", review_precision)):
        i = _lowest_threshold(table, float(target))
        if i is None:
            warnings.warn(
                f"No threshold reaches the {action} precision {target:.2f} on validation data "
                f"({int(table['tp'].iloc[-1]) if len(table) else 0} positives in {len(_labels(y_true))} rows); "
                f"the {action} action is disabled.",
                ThresholdUnreachableWarning,
                stacklevel=2,
            )
            chosen[action] = None
            continue
        row = table.iloc[i]
        chosen[action] = float(row["threshold"])
        achieved[action] = {
            "precision": float(row["precision"]),
            "recall": float(row["recall"]),
            "n_flagged": int(row["n_flagged"]),
        }
    if chosen["review"] is not None and chosen["intercept"] is not None and chosen["review"] > chosen["intercept"]:
        chosen["review"] = chosen["intercept"]
        achieved["review"] = dict(achieved["intercept"])
    return Thresholds(
        intercept=chosen["intercept"],
        review=chosen["review"],
        intercept_precision=float(intercept_precision),
        review_precision=float(review_precision),
        achieved=achieved,
    )


# ----------------------------------------------------------------------------- metrics


def expected_calibration_error(y: Any, p: Any, n_bins: int = 10) -> float:
    """Expected calibration error on ``n_bins`` equal-width bins of [0, 1].

    ``sum_b (n_b / n) * |mean(y in b) - mean(p in b)|``; bins are ``[i/n, (i+1)/n)``,
    the last one closed. NaN for no rows.
    """
    ya = _labels(y)
    probs = _probs(p, ya.size)
    if not ya.size:
        return math.nan
    b = np.minimum((probs * n_bins).astype(np.int64), n_bins - 1)
    sum_y = np.bincount(b, weights=ya, minlength=n_bins)
    sum_p = np.bincount(b, weights=probs, minlength=n_bins)
    return float(np.abs(sum_y - sum_p).sum() / ya.size)


def _average_precision(ys: np.ndarray, table: pd.DataFrame) -> float:
    n_pos = ys.sum()
    if n_pos == 0:
        return math.nan
    recall = table["recall"].to_numpy()
    prec = table["precision"].to_numpy()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * prec))


def _roc_auc(y: np.ndarray, p: np.ndarray) -> float:
    n_pos = y.sum()
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = pd.Series(p).rank(method="average").to_numpy()
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def slice_metrics(
    y: np.ndarray,
    p: np.ndarray,
    amount: np.ndarray,
    *,
    intercept_threshold: float | None = None,
    k: int = 100,
    intercept_precision: float = 0.90,
    n_bins: int = 10,
) -> dict[str, float]:
    """Every metric for one slice (arrays already validated). See :func:`evaluate_predictions`."""
    n = int(y.size)
    n_pos = float(y.sum())
    out: dict[str, float] = {"n": n, "n_positive": int(n_pos), "positive_rate": n_pos / n if n else math.nan}
    if n:
        table = precision_recall_table(y, p)
        out["pr_auc"] = _average_precision(y, table)
        out["roc_auc"] = _roc_auc(y, p)
        ok = table["precision"].to_numpy() >= intercept_precision - 1e-12
        if n_pos == 0:
            out["recall_at_precision"] = math.nan
            out["threshold_at_precision"] = math.nan
        elif ok.any():
            out["recall_at_precision"] = float(table["recall"].to_numpy()[ok].max())
            out["threshold_at_precision"] = float(table["threshold"].to_numpy()[np.flatnonzero(ok)[-1]])
        else:
            out["recall_at_precision"] = 0.0
            out["threshold_at_precision"] = math.nan
        kk = min(int(k), n)
        top = np.argsort(-p, kind="stable")[:kk]
        out["precision_at_k"] = float(y[top].mean()) if kk else math.nan
        out["k"] = kk
        out["ece"] = expected_calibration_error(y, p, n_bins)
        out["brier"] = float(np.mean((p - y) ** 2))
        q = np.clip(p, 1e-15, 1 - 1e-15)
        out["log_loss"] = float(-np.mean(y * np.log(q) + (1 - y) * np.log1p(-q)))
        out["mean_p"] = float(p.mean())
    else:
        for key in (
            "pr_auc",
            "roc_auc",
            "recall_at_precision",
            "threshold_at_precision",
            "precision_at_k",
            "ece",
            "brier",
            "log_loss",
            "mean_p",
        ):
            out[key] = math.nan
        out["k"] = 0
    out["amount"] = float(amount.sum())
    out["abuse_amount"] = float(amount[y == 1].sum())
    if intercept_threshold is not None:
        flag = p >= intercept_threshold
        n_flag = int(flag.sum())
        tp = float((flag & (y == 1)).sum())
        out["intercepted_n"] = n_flag
        out["intercepted_share"] = n_flag / n if n else math.nan
        out["intercepted_amount"] = float(amount[flag].sum())
        out["intercepted_abuse_amount"] = float(amount[flag & (y == 1)].sum())
        out["intercept_precision"] = tp / n_flag if n_flag else math.nan
        out["intercept_recall"] = tp / n_pos if n_pos else math.nan
        out["intercept_amount_recall"] = (
            out["intercepted_abuse_amount"] / out["abuse_amount"] if out["abuse_amount"] > 0 else math.nan
        )
    return out


def store_score_band(store_score: Any) -> pd.Series:
    """Band label per published store score: ``<4.6``, ``4.6-4.8``, ``>=4.8`` or ``missing``."""
    s = pd.Series(store_score)
    v = s.to_numpy(dtype=np.float64, na_value=np.nan)
    labels = np.select(
        [np.isnan(v), v >= 4.8 - _BAND_TOLERANCE, v >= 4.6 - _BAND_TOLERANCE],
        ["missing", ">=4.8", "4.6-4.8"],
        default="<4.6",
    )
    return pd.Series(pd.Categorical(labels, categories=list(STORE_SCORE_BANDS)), index=s.index)


@dataclass(frozen=True)
class Evaluation:
    """Result of :func:`evaluate_predictions`.

    Attributes
    ----------
    overall : dict
        Metric name -> value.
    by_category : DataFrame or None
        One row per category (index), same metric columns.
    by_band : DataFrame or None
        One row per store-score band (all four bands, in :data:`STORE_SCORE_BANDS` order).
    """

    overall: dict[str, float]
    by_category: pd.DataFrame | None = None
    by_band: pd.DataFrame | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready nested dict (NaN -> None)."""

        def clean(d: Mapping[str, Any]) -> dict[str, Any]:
            return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}

        out: dict[str, Any] = {"overall": clean(self.overall)}
        for name in ("by_category", "by_band"):
            frame = getattr(self, name)
            out[name] = None if frame is None else {str(i): clean(r) for i, r in frame.to_dict("index").items()}
        return out

    def to_json(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`to_dict` as JSON to ``path`` (atomically: a temporary file, then a rename)."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, default=str) + "\n")


def _group_frame(
    keys: pd.Series, y: np.ndarray, p: np.ndarray, amount: np.ndarray, order: list[Any] | None, **kw: Any
) -> pd.DataFrame:
    codes, uniques = pd.factorize(keys, sort=True)
    if (codes < 0).any():
        uniques = uniques.append(pd.Index(["missing"]))
        codes = np.where(codes < 0, len(uniques) - 1, codes)
    rows = {}
    for i, name in enumerate(uniques):
        sel = codes == i
        rows[name] = slice_metrics(y[sel], p[sel], amount[sel], **kw)
    if order is not None:
        empty = slice_metrics(np.array([]), np.array([]), np.array([]), **kw)
        rows = {name: rows.get(name, empty) for name in order}
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame.index.name = keys.name
    return frame


def evaluate_predictions(
    y: Any,
    p: Any,
    amount: Any,
    *,
    category: Any = None,
    store_score: Any = None,
    intercept_threshold: float | None = None,
    k: int = 100,
    intercept_precision: float = 0.90,
    n_bins: int = 10,
) -> Evaluation:
    """Evaluate abuse probabilities against labels, overall and by slice.

    Parameters
    ----------
    y
        Labels (bool or 0/1, no missing values).
    p
        Predicted (calibrated) probabilities.
    amount
        Refund amounts (>= 0), for the intercepted-amount figures.
    category
        Optional category per row: adds ``by_category``.
    store_score
        Optional published store score per row (NaN = missing): adds ``by_band``.
    intercept_threshold
        If given, adds ``intercepted_n``, ``intercepted_share``, ``intercepted_amount``,
        ``intercepted_abuse_amount``, ``intercept_precision``, ``intercept_recall``,
        ``intercept_amount_recall``.
    k
        For ``precision_at_k`` (the top ``min(k, n)`` rows by p; ties by row order).
    intercept_precision
        Target precision for ``recall_at_precision`` (the highest recall among
        thresholds whose precision reaches it; 0.0 if none does) and
        ``threshold_at_precision`` (the lowest such threshold).
    n_bins
        Bins of the expected calibration error.

    Returns
    -------
    Evaluation
        Metrics: ``n, n_positive, positive_rate, pr_auc`` (average precision, as
        ``sklearn.metrics.average_precision_score``), ``roc_auc, recall_at_precision,
        threshold_at_precision, precision_at_k, k, ece, brier, log_loss, mean_p,
        amount, abuse_amount`` (+ the intercept figures). Metrics needing both
        classes are NaN on a one-class slice.
    """
    ya = _labels(y)
    probs = _probs(p, ya.size)
    am = np.asarray(pd.Series(amount).to_numpy(dtype=np.float64, na_value=np.nan)).reshape(-1)
    if am.shape[0] != ya.size:
        raise DataError(f"amount has {am.shape[0]} values for {ya.size} labels.")
    if (~np.isfinite(am) | (am < 0)).any():
        raise DataError("amount must be finite and >= 0 for every row.")
    kw = dict(intercept_threshold=intercept_threshold, k=k, intercept_precision=intercept_precision, n_bins=n_bins)
    overall = slice_metrics(ya, probs, am, **kw)
    by_category = None
    if category is not None:
        cat = pd.Series(category).reset_index(drop=True)
        if len(cat) != ya.size:
            raise DataError(f"category has {len(cat)} values for {ya.size} labels.")
        cat = cat.astype(object).where(cat.notna(), None).rename("category")
        by_category = _group_frame(cat, ya, probs, am, None, **kw)
    by_band = None
    if store_score is not None:
        band = store_score_band(pd.Series(store_score).reset_index(drop=True)).rename("store_score_band")
        if len(band) != ya.size:
            raise DataError(f"store_score has {len(band)} values for {ya.size} labels.")
        by_band = _group_frame(band.astype(str), ya, probs, am, list(STORE_SCORE_BANDS), **kw)
    return Evaluation(overall=overall, by_category=by_category, by_band=by_band)
