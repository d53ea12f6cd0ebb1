"""Probability calibration stored as plain numbers, and the rule that picks the method.

One job: :class:`Calibrator` maps raw probabilities to calibrated ones (isotonic
thresholds or Platt's ``a, b``, fitted here by maximum likelihood);
:func:`choose_calibrator` picks the method by out-of-fold log-loss on validation
data. Nothing here reads or writes files; :mod:`refundguard.artifacts` does that.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import expit

from refundguard.errors import ConfigError, DataError
from refundguard.model._not_fitted import NotFitted

__all__ = ["Calibrator", "choose_calibrator"]


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, 1e-9, 1 - 1e-9)
    return np.log(q) - np.log1p(-q)


def _check_py(p: Any, y: Any | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """``p`` as a float64 vector of probabilities and ``y`` (if given) as 0.0/1.0 labels of the same length."""
    probs = np.asarray(p, dtype=np.float64).reshape(-1)
    if probs.size == 0:
        raise DataError("Calibration needs at least one probability; got none.")
    if np.isnan(probs).any() or (probs < 0).any() or (probs > 1).any():
        bad = probs[np.isnan(probs) | (probs < 0) | (probs > 1)]
        raise DataError(f"Probabilities must be in [0, 1] with no NaN; {bad.size} are not, e.g. {bad[:3].tolist()}.")
    if y is None:
        return probs, None
    labels = np.asarray(pd.Series(y).to_numpy(dtype=np.float64, na_value=np.nan)).reshape(-1)
    if labels.shape != probs.shape:
        raise DataError(f"p has {probs.size} values but y has {labels.size}.")
    if np.isnan(labels).any() or not np.isin(labels, (0.0, 1.0)).all():
        raise DataError("Calibration labels must be 0/1 (or bool) with no missing values.")
    return probs, labels


class Calibrator:
    """Probability calibration stored as plain numbers.

    Parameters
    ----------
    method : {"isotonic", "platt"}
        ``isotonic``: a monotone step function (sklearn's IsotonicRegression),
        stored as its ``x``/``y`` thresholds and applied by linear interpolation,
        clipped at both ends. ``platt``: ``sigmoid(a * logit(p) + b)``, fitted by
        maximum likelihood (Newton's method).

    Attributes
    ----------
    params_ : dict
        ``{"x": [...], "y": [...]}`` or ``{"a": float, "b": float}``.
    """

    METHODS = ("isotonic", "platt")

    def __init__(self, method: str = "isotonic") -> None:
        if method not in self.METHODS:
            raise ConfigError(
                f"The 'method' parameter of Calibrator must be one of {self.METHODS}. Got {method!r} instead.",
                owner="Calibrator",
                field="method",
                value=method,
            )
        self.method = method

    def fit(self, p: Any, y: Any, sample_weight: Any = None) -> Calibrator:
        """Fit on raw probabilities ``p`` and 0/1 labels ``y``."""
        probs, labels = _check_py(p, y)
        assert labels is not None
        w = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64).reshape(-1)
        if self.method == "isotonic":
            from sklearn.isotonic import IsotonicRegression

            iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
            iso.fit(probs, labels, sample_weight=w)
            self.params_ = {
                "x": [float(v) for v in iso.X_thresholds_],
                "y": [float(v) for v in iso.y_thresholds_],
            }
        else:
            a, b = _fit_platt(_logit(probs), labels, w)
            self.params_ = {"a": a, "b": b}
        return self

    def transform(self, p: Any) -> np.ndarray:
        """Calibrated probabilities for raw probabilities ``p``."""
        if not hasattr(self, "params_"):
            raise NotFitted("This Calibrator instance is not fitted yet. Call 'fit' first.")
        probs, _ = _check_py(p)
        if self.method == "isotonic":
            return np.interp(probs, self.params_["x"], self.params_["y"])
        return expit(self.params_["a"] * _logit(probs) + self.params_["b"])

    def transform_one(self, p: float) -> float:
        """Calibrate one probability in plain Python (online path); equals :meth:`transform`."""
        if not hasattr(self, "params_"):
            raise NotFitted("This Calibrator instance is not fitted yet. Call 'fit' first.")
        if self.method == "platt":
            q = min(max(p, 1e-9), 1 - 1e-9)
            z = self.params_["a"] * (math.log(q) - math.log1p(-q)) + self.params_["b"]
            return 1.0 / (1.0 + math.exp(-z)) if z > -700 else 0.0
        x, y = self.params_["x"], self.params_["y"]
        if p <= x[0]:
            return y[0]
        if p >= x[-1]:
            return y[-1]
        i = bisect.bisect_right(x, p)
        x0, x1, y0, y1 = x[i - 1], x[i], y[i - 1], y[i]
        return y0 + (p - x0) * (y1 - y0) / (x1 - x0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description: ``{"method": ..., **params}``."""
        if not hasattr(self, "params_"):
            raise NotFitted("This Calibrator instance is not fitted yet. Call 'fit' first.")
        return {"method": self.method, **self.params_}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Calibrator:
        """Rebuild from :meth:`to_dict` output; raises ConfigError on malformed input."""
        method = d.get("method")
        cal = cls(str(method))
        try:
            if method == "isotonic":
                x = [float(v) for v in d["x"]]
                y = [float(v) for v in d["y"]]
                if len(x) != len(y) or not x or any(b <= a for a, b in zip(x, x[1:])) or any(b < a for a, b in zip(y, y[1:])):
                    raise ValueError("x must be strictly increasing, y non-decreasing, both non-empty and equally long")
                cal.params_ = {"x": x, "y": y}
            else:
                a, b = float(d["a"]), float(d["b"])
                if not (math.isfinite(a) and math.isfinite(b)):
                    raise ValueError("a and b must be finite")
                cal.params_ = {"a": a, "b": b}
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(
                f"The calibration numbers are malformed: {exc}.", owner="Calibrator", field="params", value=dict(d)
            ) from exc
        return cal

    def __repr__(self) -> str:
        return f"Calibrator(method={self.method!r})"


def _fit_platt(z: np.ndarray, y: np.ndarray, w: np.ndarray | None, n_iter: int = 100) -> tuple[float, float]:
    """Maximum-likelihood logistic fit of y on z (two parameters), Newton with step halving."""
    w = np.ones_like(z) if w is None else w
    a, b = 1.0, 0.0

    def nll(a_: float, b_: float) -> float:
        t = a_ * z + b_
        return float(np.sum(w * (np.logaddexp(0.0, t) - y * t)))

    cur = nll(a, b)
    for _ in range(n_iter):
        t = a * z + b
        q = expit(t)
        g = np.array([np.sum(w * (q - y) * z), np.sum(w * (q - y))])
        h = q * (1 - q) * w
        H = np.array([[np.sum(h * z * z), np.sum(h * z)], [np.sum(h * z), np.sum(h)]]) + 1e-9 * np.eye(2)
        step = np.linalg.solve(H, g)
        s = 1.0
        while s > 1e-6:
            na, nb = a - s * step[0], b - s * step[1]
            new = nll(na, nb)
            if new <= cur:
                break
            s /= 2
        else:
            break
        done = abs(cur - new) < 1e-12 * max(1.0, abs(cur))
        a, b, cur = na, nb, new
        if done:
            break
    return float(a), float(b)


def _log_loss(y: np.ndarray, q: np.ndarray) -> float:
    q = np.clip(q, 1e-15, 1 - 1e-15)
    return float(-np.mean(y * np.log(q) + (1 - y) * np.log1p(-q)))


def choose_calibrator(
    y_true: Any,
    y_score: Any,
    *,
    n_splits: int = 5,
    min_gain: float = 0.005,
    min_positives: int = 50,
    random_state: int = 0,
) -> tuple[Calibrator, dict[str, Any]]:
    """Pick isotonic or Platt calibration on validation data and fit it on all of it.

    Rule (documented, deterministic): both methods are scored by out-of-fold
    log-loss in ``n_splits`` stratified folds. Isotonic is chosen only if there are
    at least ``min_positives`` positives **and** its out-of-fold log-loss is lower
    than Platt's by more than ``min_gain`` (relative, 0.5% by default); otherwise
    Platt, which has two parameters and cannot overfit small slices.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        Validation labels, bool or 0/1 (labels first, like scikit-learn's metrics).
    y_score : array-like of shape (n_samples,)
        Raw (uncalibrated) validation probabilities.
    n_splits : int, default=5
        Stratified folds for the out-of-fold log-loss (fewer when a class is rarer).
    min_gain : float, default=0.005
        Relative log-loss gain isotonic needs over Platt.
    min_positives : int, default=50
        Positives isotonic needs at least.
    random_state : int, default=0
        Seed of the fold shuffle.

    Returns
    -------
    calibrator : Calibrator
        Fitted on all of ``y_score, y_true`` (``Calibrator.fit(p, y)`` keeps the
        ``fit(X, y)`` order).
    report : dict
        ``{"chosen", "oof_log_loss": {"isotonic", "platt", "uncalibrated"}, "n", "n_positive", "rule"}``.
    """
    from sklearn.model_selection import StratifiedKFold

    probs, labels = _check_py(y_score, y_true)
    assert labels is not None
    n_pos = int(labels.sum())
    report: dict[str, Any] = {
        "n": int(probs.size),
        "n_positive": n_pos,
        "rule": f"isotonic if >= {min_positives} positives and its out-of-fold log-loss beats Platt's by > {min_gain:.1%}, else platt",
        "oof_log_loss": {"uncalibrated": _log_loss(labels, probs)},
    }
    n_neg = int(probs.size - n_pos)
    folds = min(n_splits, n_pos, n_neg)
    if folds < 2:
        raise DataError(
            f"Calibration needs at least 2 positive and 2 negative validation rows; got {n_pos} positive, {n_neg} negative.",
            detail={"n_positive": n_pos, "n_negative": n_neg},
        )
    oof = {m: np.empty_like(probs) for m in Calibrator.METHODS}
    for train_idx, test_idx in StratifiedKFold(folds, shuffle=True, random_state=random_state).split(probs, labels):
        for m in Calibrator.METHODS:
            oof[m][test_idx] = Calibrator(m).fit(probs[train_idx], labels[train_idx]).transform(probs[test_idx])
    losses = {m: _log_loss(labels, oof[m]) for m in Calibrator.METHODS}
    report["oof_log_loss"].update(losses)
    use_iso = n_pos >= min_positives and losses["isotonic"] < losses["platt"] * (1 - min_gain)
    chosen = "isotonic" if use_iso else "platt"
    report["chosen"] = chosen
    return Calibrator(chosen).fit(probs, labels), report
