"""Every figure of the analyst tools, drawn with matplotlib into PNG files (the ``report`` extra).

Figures are built with :class:`matplotlib.figure.Figure` and the Agg canvas
directly, never through ``pyplot``: no global state, no display, nothing changed
in the caller's matplotlib setup, safe in threads and servers. Every figure has a
title and labelled axes, and is written atomically. The functions take plain
arrays and frames (the numbers are computed elsewhere); each returns the path
written.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from refundguard._io import atomic_target

__all__ = [
    "INSTALL_HINT",
    "available",
    "by_band_figure",
    "by_category_figure",
    "calibration_figure",
    "daily_figure",
    "drift_figure",
    "feature_importance_figure",
    "gate_figure",
    "pr_curve_figure",
    "score_histogram_figure",
    "whatif_figure",
]

#: How to get matplotlib.
INSTALL_HINT = "pip install 'refundguard[report]'"
_SIZE = (8.0, 4.6)
_WIDE = (11.0, 4.8)
_DPI = 110
_BLUE, _RED, _GREY, _ORANGE, _GREEN = "#1f77b4", "#d62728", "#7f7f7f", "#ff7f0e", "#2ca02c"
_FLAG_COLOURS = {"stable": _GREEN, "moderate": _ORANGE, "significant": _RED, "n/a": _GREY}


def available() -> bool:
    """Whether matplotlib is installed."""
    return importlib.util.find_spec("matplotlib") is not None


def _figure(size: tuple[float, float] = _SIZE, ncols: int = 1) -> tuple[Any, Any]:
    if not available():
        raise ImportError(f"Plots need matplotlib, which is not installed: {INSTALL_HINT}.")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols)
    return fig, axes


def _save(fig: Any, path: str | Path) -> Path:
    """Write the figure as a PNG at ``path`` (atomically) and return the path."""
    target = Path(path)
    with atomic_target(target) as tmp:
        fig.savefig(tmp, format="png", dpi=_DPI)
    return target


def _style(ax: Any, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title, fontsize=11)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)


def _percent(axis: Any) -> None:
    """Tick labels of ``axis`` as percentages (shares in [0, 1]) with as many decimals as the ticks need."""
    from matplotlib.ticker import PercentFormatter

    axis.set_major_formatter(PercentFormatter(1.0, decimals=None))


def _money(value: float, _pos: Any = None) -> str:
    if abs(value) >= 1e6:
        return f"{value / 1e6:.1f}M"
    if abs(value) >= 1e3:
        return f"{value / 1e3:.0f}k"
    return f"{value:.0f}"


# --------------------------------------------------------------------------- model quality
def pr_curve_figure(
    recall: Sequence[float],
    precision: Sequence[float],
    marks: Sequence[tuple[str, float, float, float]],
    path: str | Path,
    *,
    pr_auc: float,
    positive_rate: float,
) -> Path:
    """Precision against recall, with the decision thresholds marked.

    Parameters
    ----------
    recall, precision
        The curve (one point per distinct threshold).
    marks
        ``(name, threshold, recall, precision)`` per marked threshold.
    pr_auc, positive_rate
        For the legend and the no-skill line.
    """
    fig, ax = _figure()
    ax.step(recall, precision, where="post", color=_BLUE, label=f"model (PR-AUC {pr_auc:.3f})")
    ax.axhline(positive_rate, color=_GREY, linestyle="--", label=f"no skill (abuse rate {positive_rate:.1%})")
    for (name, threshold, r, p), colour in zip(marks, (_RED, _ORANGE, _GREEN)):
        ax.plot([r], [p], "o", color=colour, markersize=8,
                label=f"{name} threshold {threshold:.3f}: precision {p:.2f}, recall {r:.2f}")
    ax.set_xlim(0, 1.01)
    ax.set_ylim(0, 1.02)
    _style(ax, "Precision-recall curve on the labelled requests", "recall (share of abusive requests flagged)",
           "precision (share of flagged that are abusive)")
    ax.legend(loc="lower left", fontsize=8)
    return _save(fig, path)


def calibration_figure(
    mean_p: Sequence[float], observed: Sequence[float], counts: Sequence[int], path: str | Path, *, ece: float
) -> Path:
    """Observed abuse rate against mean predicted probability per probability bin (bins with rows only)."""
    fig, ax = _figure()
    ax.plot([0, 1], [0, 1], color=_GREY, linestyle="--", label="perfect calibration")
    sizes = 20 + 200 * np.sqrt(np.asarray(counts, dtype=np.float64) / max(float(np.max(counts)), 1.0))
    ax.plot(mean_p, observed, color=_BLUE, linewidth=1)
    ax.scatter(mean_p, observed, s=sizes, color=_BLUE, alpha=0.7, label=f"model (ECE {ece:.4f}); area ~ requests")
    for x, y, n in zip(mean_p, observed, counts):
        right = x > 0.93  # the last bin: its label goes to the left, inside the axes
        ax.annotate(f"{int(n):,} requests" if right else f"{int(n):,}", (x, y), textcoords="offset points",
                    xytext=(-14, 0) if right else (6, -12), fontsize=7, color="#444444",
                    ha="right" if right else "left", va="center" if right else "baseline",
                    bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.8})
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    _style(ax, "Calibration: predicted against observed abuse rate (10 bins)", "mean predicted probability in the bin",
           "observed share of abusive requests")
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, path)


def score_histogram_figure(
    p_honest: np.ndarray, p_abusive: np.ndarray, thresholds: Sequence[tuple[str, float]], path: str | Path
) -> Path:
    """Histograms of the abuse probability of honest and abusive requests (log count scale)."""
    fig, ax = _figure()
    bins = np.linspace(0, 1, 41)
    ax.hist(p_honest, bins=bins, color=_BLUE, alpha=0.6, label=f"honest ({len(p_honest):,})")
    ax.hist(p_abusive, bins=bins, color=_RED, alpha=0.6, label=f"abusive ({len(p_abusive):,})")
    for (name, t), colour in zip(thresholds, (_RED, _ORANGE)):
        ax.axvline(t, color=colour, linestyle="--", linewidth=1.2, label=f"{name} threshold {t:.3f}")
    ax.set_yscale("log")
    ax.set_xlim(0, 1)
    _style(ax, "Abuse probability of honest and abusive requests", "calibrated abuse probability",
           "requests (log scale)")
    ax.legend(loc="upper center", fontsize=8)
    return _save(fig, path)


def feature_importance_figure(importance: pd.Series, path: str | Path, *, top: int = 20) -> Path:
    """The ``top`` features by share of the total gain, largest on top."""
    total = float(importance.sum()) or 1.0
    shares = (importance / total).sort_values(ascending=False).head(top).iloc[::-1]
    fig, ax = _figure((8.0, 6.0))
    ax.barh(list(shares.index), shares.to_numpy(), color=_BLUE)
    for y, v in enumerate(shares.to_numpy()):
        ax.text(v, y, f" {v:.1%}", va="center", fontsize=7)
    ax.set_xlim(0, float(shares.max()) * 1.18 if len(shares) else 1)
    ax.tick_params(axis="y", labelsize=8)
    _style(ax, f"Feature importance: top {len(shares)} features by split gain", "share of the model's total gain",
           "feature")
    _percent(ax.xaxis)
    return _save(fig, path)


# --------------------------------------------------------------------------- slices
def by_category_figure(frame: pd.DataFrame, path: str | Path, *, intercept_precision: float) -> Path:
    """PR-AUC and recall at the intercept precision per category (index), with the abuse rate."""
    fig, ax = _figure()
    x = np.arange(len(frame))
    w = 0.27
    ax.bar(x - w, frame["pr_auc"].to_numpy(dtype=np.float64), w, color=_BLUE, label="PR-AUC")
    ax.bar(x, frame["recall_at_precision"].to_numpy(dtype=np.float64), w, color=_GREEN,
           label=f"recall at {intercept_precision:.0%} precision")
    ax.bar(x + w, frame["positive_rate"].to_numpy(dtype=np.float64), w, color=_RED, label="abuse rate")
    ax.set_xticks(x, [f"{c}\n({int(n):,})" for c, n in zip(frame.index, frame["n"])], fontsize=8)
    ax.set_ylim(0, 1.1)
    _style(ax, "Model quality by category", "category (labelled requests)", "value (0 to 1)")
    ax.legend(loc="upper center", ncols=3, fontsize=8)
    return _save(fig, path)


def by_band_figure(frame: pd.DataFrame, path: str | Path) -> Path:
    """False-intercept rate of honest buyers per store-score band (index): as decided and by the model alone.

    ``frame`` columns: ``honest``, ``false_intercept_rate`` (the policy's decisions,
    gate included) and ``model_false_intercept_rate`` (``p >= intercept threshold``).
    """
    fig, ax = _figure()
    x = np.arange(len(frame))
    w = 0.38
    decided = frame["false_intercept_rate"].to_numpy(dtype=np.float64)
    model = frame["model_false_intercept_rate"].to_numpy(dtype=np.float64)
    ax.bar(x - w / 2, np.nan_to_num(decided), w, color=_RED, label="intercepted as decided (store gate applied)")
    ax.bar(x + w / 2, np.nan_to_num(model), w, color=_ORANGE, alpha=0.8, label="model alone (p >= intercept threshold)")
    for xi, v in zip(x, decided):
        ax.text(xi - w / 2, 0 if np.isnan(v) else v, "n/a" if np.isnan(v) else f"{v:.1%}", ha="center",
                va="bottom", fontsize=8)
    for xi, v in zip(x, model):
        ax.text(xi + w / 2, 0 if np.isnan(v) else v, "n/a" if np.isnan(v) else f"{v:.1%}", ha="center",
                va="bottom", fontsize=8)
    ax.set_xticks(x, [f"{b}\n({int(n):,} honest)" for b, n in zip(frame.index, frame["honest"])], fontsize=8)
    top = np.nanmax(np.r_[decided, model, 0.01])
    ax.set_ylim(0, top * 1.3)
    _percent(ax.yaxis)
    _style(ax, "False-intercept rate of honest buyers by store-score band", "store-score band (published score)",
           "share of honest requests intercepted")
    ax.legend(loc="upper right", fontsize=8)
    return _save(fig, path)


# --------------------------------------------------------------------------- decisions and the gate
def daily_figure(
    dates: Sequence[Any],
    intercepts: Sequence[int],
    reviews: Sequence[int],
    path: str | Path,
    *,
    policy_dates: Sequence[tuple[str, Any]] = (),
) -> Path:
    """Intercepts and reviews per day, with the policy versions that start in the period marked."""
    fig, ax = _figure()
    ax.plot(dates, intercepts, color=_RED, linewidth=1.2, label="intercepts")
    ax.plot(dates, reviews, color=_ORANGE, linewidth=1.2, label="reviews")
    for name, when in policy_dates:
        ax.axvline(when, color=_GREY, linestyle="--", linewidth=1)
        ax.annotate(f"policy {name}", (when, 1), xycoords=("data", "axes fraction"), xytext=(3, -12),
                    textcoords="offset points", fontsize=8, color=_GREY)
    ax.set_ylim(bottom=0)
    _style(ax, "Intercepts and reviews per day", "day (score time zone)", "requests per day")
    ax.legend(loc="upper left", fontsize=8)
    fig.autofmt_xdate()
    return _save(fig, path)


def gate_figure(
    weeks: Sequence[Any],
    gated_share: Sequence[float],
    rates: pd.DataFrame,
    path: str | Path,
    *,
    gate: float | None,
    confidence: float,
) -> Path:
    """Left: share of requests behind the store gate per week. Right: abuse rates with their intervals.

    ``rates``: index = group name, columns ``rate``, ``low``, ``high``, ``n``.
    """
    fig, (left, right) = _figure(_WIDE, ncols=2)
    left.plot(weeks, gated_share, color=_BLUE, marker="o", markersize=3)
    left.set_ylim(0, max(0.05, float(np.nanmax(np.r_[np.asarray(gated_share, dtype=np.float64), 0])) * 1.25))
    _percent(left.yaxis)
    gate_text = "no gate" if gate is None else f"store score >= {gate:.2f}"
    _style(left, f"Share of requests left to merchants ({gate_text})", "week starting", "share of requests gated")
    for label in left.get_xticklabels():
        label.set_rotation(30)
        label.set_horizontalalignment("right")
    y = np.arange(len(rates))
    r = rates["rate"].to_numpy(dtype=np.float64)
    err = np.vstack([np.maximum(r - rates["low"].to_numpy(dtype=np.float64), 0),
                     np.maximum(rates["high"].to_numpy(dtype=np.float64) - r, 0)])
    colours = [_RED, _BLUE, _GREY][: len(rates)]
    right.barh(y, r, xerr=err, color=colours, alpha=0.75, capsize=4)
    high = rates["high"].to_numpy(dtype=np.float64)
    for yi, (v, hi, n) in enumerate(zip(r, high, rates["n"])):
        text = "no labelled request" if not n else f"{v:.1%} of {int(n):,}"
        right.text(0 if np.isnan(hi) else hi, yi, f"  {text}", va="center", fontsize=8)
    right.set_yticks(y, list(rates.index), fontsize=8)
    right.invert_yaxis()
    _percent(right.xaxis)
    right.set_xlim(0, min(1.0, max(0.05, float(np.nanmax(np.r_[high, 0])) * 1.35)))
    _style(right, f"Abuse rate with {confidence:.0%} interval", "share of labelled requests that are abusive",
           "requests")
    return _save(fig, path)


# --------------------------------------------------------------------------- drift and what-if
def drift_figure(
    table: pd.DataFrame,
    edges: np.ndarray,
    expected: np.ndarray,
    actual: np.ndarray,
    path: str | Path,
    *,
    moderate: float,
    significant: float,
    model_version: str,
    top: int = 25,
) -> Path:
    """Left: PSI per feature (top ``top``), score and gated share, flags coloured. Right: the score histograms."""
    fig, (left, right) = _figure((12.0, 7.0), ncols=2)
    shown = pd.concat([table[table["kind"].isin(["score", "gated_share"])],
                       table[~table["kind"].isin(["score", "gated_share"])].head(top)]).iloc[::-1]
    y = np.arange(len(shown))
    left.barh(y, shown["psi"].to_numpy(dtype=np.float64), color=[_FLAG_COLOURS[f] for f in shown["flag"]])
    left.set_yticks(y, [n.replace("_", " ") if k == "gated_share" else n for n, k in zip(shown["name"], shown["kind"])],
                    fontsize=7)
    left.axvline(moderate, color=_ORANGE, linestyle="--", linewidth=1, label=f"moderate ({moderate:g})")
    left.axvline(significant, color=_RED, linestyle="--", linewidth=1, label=f"significant ({significant:g})")
    left.set_xlim(0, max(significant * 1.3, float(shown["psi"].max()) * 1.1 if len(shown) else 1))
    _style(left, f"PSI against the training bins (score, gated share, top {top} features)",
           "population stability index", "feature")
    left.legend(loc="lower right", fontsize=8)
    centres = (edges[:-1] + edges[1:]) / 2
    width = float(edges[1] - edges[0]) if edges.size > 1 else 0.05
    right.bar(centres - width / 4, expected, width / 2, color=_GREY, label="training (validation scores)")
    right.bar(centres + width / 4, actual, width / 2, color=_BLUE, label="this period")
    right.set_yscale("log")
    right.set_xlim(0, 1)
    _style(right, "Score distribution: training against this period", "calibrated abuse probability",
           "share of requests (log scale)")
    right.legend(loc="upper center", fontsize=8)
    fig.suptitle(f"Drift of model {model_version}", fontsize=12)
    return _save(fig, path)


def whatif_figure(table: pd.DataFrame, path: str | Path, *, confidence: float, model_version: str) -> Path:
    """Left: abusive amount left to merchants against the share they handle, one point per gate.
    Right: abusive amount stopped against honest requests intercepted, one line per intercept precision.
    """
    fig, (left, right) = _figure(_WIDE, ncols=2)
    colours = [_BLUE, _RED, _GREEN, _ORANGE, _GREY]

    def gate_label(g: Any) -> str:
        return "no gate" if pd.isna(g) else f"{g:.2f}"

    per_gate = table.drop_duplicates("gate").sort_values("gated_share")
    val = per_gate["abuse_to_merchants"].to_numpy(dtype=np.float64)
    err = np.vstack([val - per_gate["abuse_to_merchants_low"].to_numpy(dtype=np.float64),
                     per_gate["abuse_to_merchants_high"].to_numpy(dtype=np.float64) - val])
    left.errorbar(per_gate["gated_share"], val, yerr=np.maximum(err, 0), color=_BLUE, marker="o", capsize=4,
                  label=f"estimate with {confidence:.0%} interval")
    for i, (_, r) in enumerate(per_gate.iterrows()):
        left.annotate(gate_label(r["gate"]), (r["gated_share"], r["abuse_to_merchants"]),
                      textcoords="offset points", xytext=(6, 4 + 12 * (i % 2)), fontsize=8)
    prec = table["intercept_precision"].astype(object).where(table["intercept_precision"].notna(), "model")
    for i, (q, part) in enumerate(table.groupby(prec.astype(str), sort=False)):
        part = part.sort_values("gated_share", ascending=False)
        colour = colours[i % len(colours)]
        name = "model thresholds" if q == "model" else f"intercept precision {float(q):.2f}"
        right.plot(part["honest_intercepted"], part["abuse_stopped"], color=colour, marker="o", label=name)
        for _, r in part.iterrows():
            right.annotate(gate_label(r["gate"]), (r["honest_intercepted"], r["abuse_stopped"]),
                           textcoords="offset points", xytext=(5, -10), fontsize=7, color=colour)
    _percent(left.xaxis)
    left.yaxis.set_major_formatter(_money)
    right.yaxis.set_major_formatter(_money)
    left.set_ylim(bottom=0)
    _style(left, "Abuse left to merchants by store gate (labels: gate)", "share of requests left to merchants",
           "abusive amount left to merchants")
    _style(right, "Abuse stopped against honest buyers intercepted (labels: gate)", "honest requests intercepted",
           "abusive amount intercepted")
    left.legend(fontsize=8, loc="upper left")
    right.legend(fontsize=8, loc="lower right")
    fig.suptitle(f"Policy what-if, model {model_version}", fontsize=12)
    return _save(fig, path)
