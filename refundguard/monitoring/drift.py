"""Drift: the population stability index (PSI) of a period against the model's training bins.

``meta.json`` keeps, from training (:mod:`refundguard.artifacts`):

* ``drift.feature_bins``: per feature, the training shares on fixed bins (numeric:
  quantile edges, bin ``i`` being ``edges[i-1] <= x < edges[i]``, plus a missing
  bin; categorical: the levels, plus "other" and missing bins);
* ``drift.score_histogram``: the shares of the validation probabilities on 20
  equal-width bins of [0, 1];
* ``gated_share``: the share of training-period requests behind the store gate.

A period's values are put in the same bins and compared with

    PSI = sum over bins of (actual - expected) * ln(actual / expected),

an empty bin counting as a share of :data:`PSI_FLOOR` (so that one new value in a
bin that was empty does not make the index infinite). The usual reading, used for
the flags: below :data:`PSI_MODERATE` (0.1) ``stable``, from 0.1 to
:data:`PSI_SIGNIFICANT` (0.25) ``moderate``, from 0.25 ``significant``. The gated
share is compared as a two-bin distribution (gated, not gated).

>>> from refundguard.monitoring import drift
>>> report = drift("models/2026-11", tables, "2026-11-01", "2026-12-01")  # doctest: +SKIP
>>> report.table.head()                                                  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from refundguard.errors import DataError, ModelError
from refundguard.guard import RefundGuard
from refundguard.monitoring.period import TableReport, as_guard
from refundguard.pipeline import canonical_tables, point_in_time_features
from refundguard.policy import gate_batch

__all__ = [
    "PSI_FLOOR",
    "PSI_MODERATE",
    "PSI_SIGNIFICANT",
    "DriftReport",
    "bin_labels",
    "binned_shares",
    "drift",
    "drift_table",
    "expected_shares",
    "psi",
    "psi_flag",
]

#: PSI from which a distribution has moved enough to watch.
PSI_MODERATE = 0.1
#: PSI from which a distribution has shifted significantly.
PSI_SIGNIFICANT = 0.25
#: The share an empty bin counts as.
PSI_FLOOR = 1e-4


def psi(expected: Sequence[float] | np.ndarray, actual: Sequence[float] | np.ndarray, *,
        floor: float = PSI_FLOOR) -> float:
    """The population stability index of ``actual`` shares against ``expected`` shares.

    Parameters
    ----------
    expected, actual
        Shares on the same bins (each sums to 1, or close to it).
    floor
        Shares below it count as ``floor``.

    Returns
    -------
    float
        ``sum((a - e) * ln(a / e))``, >= 0; 0 for identical shares.
    """
    e = np.maximum(np.asarray(expected, dtype=np.float64).reshape(-1), floor)
    a = np.maximum(np.asarray(actual, dtype=np.float64).reshape(-1), floor)
    if e.shape != a.shape:
        raise DataError(f"psi needs shares on the same bins; got {e.size} expected and {a.size} actual.")
    return float(np.sum((a - e) * np.log(a / e)))


def psi_flag(value: float) -> str:
    """``stable`` (< 0.1), ``moderate`` (< 0.25) or ``significant``; ``n/a`` for NaN."""
    if math.isnan(value):
        return "n/a"
    if value < PSI_MODERATE:
        return "stable"
    return "moderate" if value < PSI_SIGNIFICANT else "significant"


def expected_shares(spec: Mapping[str, Any]) -> np.ndarray:
    """The training shares of one ``feature_bins`` entry, missing (and other) bins last."""
    shares = [float(s) for s in spec["shares"]]
    if spec.get("kind") == "categorical":
        shares.append(float(spec.get("other_share", 0.0)))
    shares.append(float(spec.get("missing_share", 0.0)))
    return np.asarray(shares, dtype=np.float64)


def binned_shares(spec: Mapping[str, Any], values: Any) -> np.ndarray:
    """The shares of ``values`` on the bins of one ``feature_bins`` entry (as :func:`expected_shares`).

    Parameters
    ----------
    spec
        ``{"kind": "numeric", "edges", ...}`` or ``{"kind": "categorical", "levels", ...}``.
    values
        The feature's values in the period (raw values, not codes).
    """
    col = pd.Series(values).reset_index(drop=True)
    total = max(len(col), 1)
    missing = col.isna().to_numpy()
    if spec.get("kind") == "categorical":
        levels = list(spec["levels"])
        raw = col.astype(object) if isinstance(col.dtype, pd.CategoricalDtype) else col
        idx = pd.Index(levels).get_indexer(raw)
        counts = np.bincount(idx[idx >= 0], minlength=len(levels)).astype(np.float64)
        other = float(np.count_nonzero((idx < 0) & ~missing))
        return np.r_[counts, other, float(missing.sum())] / total
    edges = np.asarray(spec["edges"], dtype=np.float64)
    v = col.to_numpy(dtype=np.float64, na_value=np.nan)
    finite = v[~np.isnan(v)]
    counts = np.bincount(np.searchsorted(edges, finite, side="right"), minlength=edges.size + 1).astype(np.float64)
    return np.r_[counts, float(np.isnan(v).sum())] / total


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def bin_labels(spec: Mapping[str, Any]) -> list[str]:
    """Readable names of the bins of one ``feature_bins`` entry, in :func:`expected_shares` order."""
    if spec.get("kind") == "categorical":
        return [str(v) for v in spec["levels"]] + ["other", "missing"]
    edges = [float(e) for e in spec["edges"]]
    if not edges:
        return ["all values", "missing"]
    inner = [f"[{_fmt(lo)}, {_fmt(hi)})" for lo, hi in pairwise(edges)]
    return [f"< {_fmt(edges[0])}", *inner, f">= {_fmt(edges[-1])}", "missing"]


def _moved(labels: Sequence[str], expected: np.ndarray, actual: np.ndarray) -> dict[str, Any]:
    """The bin that adds most to the PSI, with its two shares."""
    e = np.maximum(expected, PSI_FLOOR)
    a = np.maximum(actual, PSI_FLOOR)
    i = int(np.argmax((a - e) * np.log(a / e)))
    return {"moved_bin": labels[i], "moved_expected": float(expected[i]), "moved_actual": float(actual[i])}


def _score_shares(histogram: Mapping[str, Any], p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    edges = np.asarray(histogram["edges"], dtype=np.float64)
    expected = np.asarray(histogram["shares"], dtype=np.float64)
    probs = p[~np.isnan(p)]
    counts, _ = np.histogram(np.clip(probs, edges[0], edges[-1]), bins=edges)
    return edges, expected, counts / max(probs.size, 1)


def drift_table(
    reference: Mapping[str, Any],
    X: pd.DataFrame,
    p: Any,
    gated: Any,
    *,
    gated_share: float | None = None,
) -> pd.DataFrame:
    """PSI of a period's features, scores and gated share against training bins.

    Parameters
    ----------
    reference
        ``meta.json``'s ``drift`` field: ``{"feature_bins": ..., "score_histogram": ...}``.
    X
        The period's feature matrix (features missing from ``X`` are skipped).
    p
        The period's calibrated probabilities (every request).
    gated
        Whether each request is behind the store gate.
    gated_share
        The training gated share (``meta.json``'s ``gated_share``); ``None``: no row for it.

    Returns
    -------
    pandas.DataFrame
        One row per compared quantity: ``name``, ``kind`` (``score``, ``gated_share``,
        ``numeric``, ``categorical``), ``psi``, ``flag``, ``bins``, ``expected``
        and ``actual`` (the training and period value: the mean score, the gated
        share, the missing share of a feature), and ``moved_bin``,
        ``moved_expected``, ``moved_actual``: the bin that adds most to the PSI
        and its two shares. Score and gated share first, then the features by
        decreasing PSI.
    """
    rows: list[dict[str, Any]] = []
    probs = np.asarray(pd.Series(p).to_numpy(dtype=np.float64, na_value=np.nan)).reshape(-1)
    hist = reference.get("score_histogram")
    if hist:
        edges, expected, actual = _score_shares(hist, probs)
        centres = (edges[:-1] + edges[1:]) / 2
        labels = [f"[{_fmt(lo)}, {_fmt(hi)})" for lo, hi in pairwise(edges)]
        rows.append({"name": "score", "kind": "score", "psi": psi(expected, actual), "bins": int(expected.size),
                     "expected": float(np.dot(expected, centres)), "actual": float(np.nanmean(probs)),
                     **_moved(labels, expected, actual)})
    g = np.asarray(gated, dtype=bool).reshape(-1)
    if gated_share is not None and g.size:
        share = float(g.mean())
        expected, actual = np.array([gated_share, 1 - gated_share]), np.array([share, 1 - share])
        rows.append({"name": "gated_share", "kind": "gated_share", "psi": psi(expected, actual), "bins": 2,
                     "expected": float(gated_share), "actual": share,
                     **_moved(["gated", "not gated"], expected, actual)})
    features = []
    for name, spec in (reference.get("feature_bins") or {}).items():
        if name not in X.columns:
            continue
        expected = expected_shares(spec)
        actual = binned_shares(spec, X[name])
        features.append({"name": name, "kind": spec.get("kind", "numeric"), "psi": psi(expected, actual),
                         "bins": int(expected.size), "expected": float(expected[-1]), "actual": float(actual[-1]),
                         **_moved(bin_labels(spec), expected, actual)})
    features.sort(key=lambda r: (-r["psi"], r["name"]))
    columns = ["name", "kind", "psi", "bins", "expected", "actual", "moved_bin", "moved_expected", "moved_actual"]
    table = pd.DataFrame(rows + features, columns=columns)
    table.insert(3, "flag", [psi_flag(v) for v in table["psi"]])
    return table


@dataclass(frozen=True, eq=False)
class DriftReport(TableReport):
    """PSI of one period against a model's training bins.

    Attributes
    ----------
    table
        :func:`drift_table` output.
    n
        Requests in the period.
    model_version
        The model compared with.
    score_edges, score_expected, score_actual
        The score histogram's edges and its training and period shares (for the plot).
    start, end
        The period asked for.
    """

    table: pd.DataFrame
    n: int
    model_version: str
    score_edges: np.ndarray
    score_expected: np.ndarray
    score_actual: np.ndarray
    start: Any = None
    end: Any = None

    def psi(self, name: str) -> float:
        """The PSI of one row of the table (``score``, ``gated_share`` or a feature name)."""
        hit = self.table.loc[self.table["name"] == name, "psi"]
        if hit.empty:
            raise KeyError(name)
        return float(hit.iloc[0])

    @property
    def flagged(self) -> pd.DataFrame:
        """The rows whose PSI is at least :data:`PSI_MODERATE`."""
        return self.table[self.table["psi"] >= PSI_MODERATE]

    def lines(self) -> list[str]:
        """The table as text: one line per row, PSI at 3 decimals, the bin that moved most with its shares."""
        period = f"[{self.start or 'start'}, {self.end or 'end'})"
        t = self.table
        width = max([len("name"), *(len(n) for n in t["name"])])
        out = [f"PSI of {self.n:,} requests in {period} against the training bins of model {self.model_version}",
               f"flags: moderate from {PSI_MODERATE:g}, significant from {PSI_SIGNIFICANT:g}",
               f"{'name':{width}s} {'kind':11s} {'PSI':>7s}  {'flag':11s} largest change (bin: training -> period)"]
        for r in t.itertuples(index=False):
            out.append(f"{r.name:{width}s} {r.kind:11s} {r.psi:7.3f}  {r.flag:11s} "
                       f"{r.moved_bin}: {r.moved_expected:.1%} -> {r.moved_actual:.1%}")
        counts = t["flag"].value_counts()
        out.append(", ".join(f"{counts.get(f, 0):,} {f}" for f in ("significant", "moderate", "stable")))
        return out

    def plot(self, path: str | Path) -> Path:
        """Draw the PSI bars and the two score histograms into a PNG (needs matplotlib)."""
        from refundguard.monitoring.plots import drift_figure

        return drift_figure(
            self.table, self.score_edges, self.score_expected, self.score_actual, path,
            moderate=PSI_MODERATE, significant=PSI_SIGNIFICANT, model_version=self.model_version,
        )


def drift(
    model: RefundGuard | str | Path,
    tables: Mapping[str, pd.DataFrame],
    start: Any = None,
    end: Any = None,
    *,
    validate_tables: bool = True,
    progress: bool = False,
) -> DriftReport:
    """PSI per feature, for the score and for the gated share of a period, against training.

    Every refund requested in ``[start, end)`` gets its point-in-time features and
    its calibrated probability (gated requests too), and the policy timeline of the
    model tells which requests are behind the store gate.

    Parameters
    ----------
    model
        A :class:`RefundGuard` or a model folder; its ``meta.json`` must hold the
        training bins (``drift``).
    tables
        The contract's tables.
    start, end
        Half-open bounds on ``requested_at``.
    validate_tables
        Validate the input first.
    progress
        Show a progress bar while the features are built.

    Returns
    -------
    DriftReport

    Raises
    ------
    ModelError
        The model has no training bins.
    DataError
        No refund in the period.
    """
    guard = as_guard(model)
    reference = guard.meta.get("drift") or {}
    if not reference.get("feature_bins") or not reference.get("score_histogram"):
        raise ModelError("The model's meta.json holds no training bins (drift); retrain it to check drift.",
                         problem="meta_field")
    clean = canonical_tables(tables, validate_tables)
    batch = point_in_time_features(clean, start, end, score_config=guard.score_config,
                                   category_levels=guard.category_levels, progress=progress)
    if not len(batch):
        raise DataError(f"No refund requested in [{start}, {end}): nothing to compare.",
                        detail={"start": str(start), "end": str(end)})
    p = guard.predict_proba(batch.X)
    gated = gate_batch(batch.policy_requests(), guard.policy)["gated"].to_numpy()
    table = drift_table(reference, batch.X, p, gated, gated_share=guard.meta.get("gated_share"))
    edges, expected, actual = _score_shares(reference["score_histogram"], np.asarray(p, dtype=np.float64))
    return DriftReport(table=table, n=len(batch), model_version=guard.model_version, score_edges=edges,
                       score_expected=expected, score_actual=actual, start=start, end=end)
