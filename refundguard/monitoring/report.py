"""The analyst report: one self-contained HTML page and its PNG figures for one period.

:func:`write_report` scores the period once (:func:`~refundguard.monitoring.period.score_period`,
gated requests scored too), measures the model against the labels and the
policy's decisions, draws eight figures (:mod:`refundguard.monitoring.plots`) and
writes ``index.html`` beside them. The page opens with a summary (PR-AUC, recall
at the intercept precision, abusive amount stopped, honest amount held), refers
to every figure by its file name, and loads nothing else: no script, no
stylesheet or font from the network. The folder is written atomically.

Figures (file name: what it shows)

``pr_curve.png``
    precision against recall on the labelled requests, the intercept and review
    thresholds marked;
``calibration.png``
    observed abuse rate against the mean predicted probability, 10 bins;
``score_histogram.png``
    the probability of honest and of abusive requests, thresholds marked;
``feature_importance.png``
    the 20 features with the largest share of the model's split gain;
``by_category.png``
    PR-AUC, recall at the intercept precision and abuse rate per category;
``by_store_band.png``
    the false-intercept rate of honest buyers per store-score band, as decided
    and by the model alone;
``daily_decisions.png``
    intercepts and reviews per day, policy changes marked;
``store_gate.png``
    the weekly share of requests left to merchants, and the abuse rate of the
    audit sample next to that of the requests the platform decided.
"""

from __future__ import annotations

import html
import math
import os
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from refundguard._time import NS_PER_DAY, date_ns
from refundguard.errors import ConfigError, DataError
from refundguard.evaluation import (
    Evaluation,
    evaluate_predictions,
    precision_recall_table,
    store_score_band,
)
from refundguard.guard import RefundGuard
from refundguard.monitoring.period import ScoredPeriod, as_guard, score_period
from refundguard.monitoring.plots import (
    INSTALL_HINT,
    available,
    by_band_figure,
    by_category_figure,
    calibration_figure,
    daily_figure,
    feature_importance_figure,
    gate_figure,
    pr_curve_figure,
    score_histogram_figure,
)
from refundguard.monitoring.whatif import (
    SMALL_AUDIT_EXPECTED,
    PolicyVariant,
    WhatIf,
    clopper_pearson,
    replay,
)

__all__ = ["FIGURES", "Report", "write_report"]

#: The figures of the report, in page order: file name -> what it shows.
FIGURES: dict[str, str] = {
    "pr_curve.png": "Precision-recall curve with the decision thresholds",
    "calibration.png": "Calibration curve",
    "score_histogram.png": "Abuse probability by label",
    "feature_importance.png": "Feature importance",
    "by_category.png": "Model quality by category",
    "by_store_band.png": "False-intercept rate of honest buyers by store band",
    "daily_decisions.png": "Intercepts and reviews per day",
    "store_gate.png": "Store gate: share left to merchants, audit sample abuse rate",
}
_INDEX = "index.html"


@dataclass(frozen=True, eq=False)
class Report:
    """A written report.

    Attributes
    ----------
    folder, index
        The report folder and its ``index.html``.
    figures
        The PNG files written, in page order.
    summary
        The summary figures: ``requests, labelled, abuse_rate, pr_auc,
        recall_at_precision, intercept_precision, intercepted,
        abuse_amount_stopped, honest_amount_held, honest_intercepted,
        gated_share, audit_sample, audit_expected, audit_small,
        abuse_to_merchants`` (with ``_low``/``_high``).
    evaluation
        The model measured on the labelled requests.
    whatif
        The replay of the model's own policy (the estimate behind the gate).
    """

    folder: Path
    index: Path
    figures: tuple[Path, ...]
    summary: Mapping[str, Any] = field(default_factory=dict)
    evaluation: Evaluation | None = None
    whatif: WhatIf | None = None

    def lines(self) -> list[str]:
        """What ``refundguard report`` prints."""
        s = self.summary
        return [
            f"{s['requests']:,} requests ({s['period']}), {s['labelled']:,} labelled, {s['abuse_rate']:.1%} abusive",
            (f"PR-AUC {s['pr_auc']:.4f}, recall {s['recall_at_precision']:.4f} at "
             f"{s['intercept_precision']:.0%} precision"),
            (f"intercepted {s['intercepted']:,}: abusive amount stopped {s['abuse_amount_stopped']:,.2f}, "
             f"honest amount held {s['honest_amount_held']:,.2f}"),
            (f"left to merchants {s['gated_share']:.1%}; estimated abuse there {s['abuse_to_merchants']:,.2f} "
             f"[{s['abuse_to_merchants_low']:,.2f}, {s['abuse_to_merchants_high']:,.2f}] "
             f"from an audit sample of {s['audit_sample']:,}"
             + (" (small: read the interval)" if s["audit_small"] else "")),
            f"{len(self.figures)} figures and {self.index.name} written to {self.folder}",
        ]

    def to_text(self) -> str:
        """:meth:`lines` joined by newlines."""
        return "\n".join(self.lines())


# --------------------------------------------------------------------------- numbers
def _threshold_point(table: pd.DataFrame, threshold: float) -> tuple[float, float] | None:
    """(recall, precision) of ``flag if p >= threshold`` from a precision/recall table."""
    hit = table[table["threshold"] >= threshold]
    if hit.empty:
        return None
    row = hit.iloc[-1]
    return float(row["recall"]), float(row["precision"])


def _calibration(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> pd.DataFrame:
    b = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    frame = pd.DataFrame({"bin": b, "y": y, "p": p}).groupby("bin").agg(
        mean_p=("p", "mean"), observed=("y", "mean"), n=("y", "size"))
    return frame


def _band_table(rows: pd.DataFrame, y: np.ndarray, labelled: np.ndarray, intercept: float | None,
                by_band: pd.DataFrame | None) -> pd.DataFrame:
    band = store_score_band(rows["store_score"].reset_index(drop=True)).astype(str).to_numpy()
    action = rows["action"].to_numpy(dtype=object)
    p = rows["abuse_probability"].to_numpy(dtype=np.float64)
    honest = labelled & (y == 0)
    model_hit = p >= intercept if intercept is not None else np.zeros(len(rows), dtype=bool)
    out = {}
    for name in (by_band.index if by_band is not None else sorted(set(band))):
        m = band == name
        h = m & honest
        n_h = int(h.sum())
        out[name] = {
            "requests": int(m.sum()),
            "labelled": int((m & labelled).sum()),
            "abuse_rate": float(y[m & labelled].mean()) if (m & labelled).any() else math.nan,
            "pr_auc": float(by_band.loc[name, "pr_auc"]) if by_band is not None else math.nan,
            "honest": n_h,
            "honest_intercepted": int((h & (action == "intercept")).sum()),
            "false_intercept_rate": float((h & (action == "intercept")).sum() / n_h) if n_h else math.nan,
            "model_false_intercept_rate": float((h & model_hit).sum() / n_h) if n_h else math.nan,
        }
    frame = pd.DataFrame.from_dict(out, orient="index")
    frame.index.name = "store_score_band"
    return frame


def _gate_rates(rows: pd.DataFrame, y: np.ndarray, labelled: np.ndarray, confidence: float) -> pd.DataFrame:
    gated = (rows["action"] == "merchant_handles").to_numpy()
    audit = rows["audit"].to_numpy(dtype=bool)
    groups = {
        "audit sample (gated, audited)": gated & audit & labelled,
        "decided by the platform (not gated)": ~gated & labelled,
    }
    if (gated & ~audit & labelled).any():
        groups["all gated with a label in the data\n(unknown in production)"] = gated & labelled
    out = {}
    for name, m in groups.items():
        n, k = int(m.sum()), int(y[m].sum())
        lo, hi = clopper_pearson(k, n, confidence)
        out[name] = {"rate": k / n if n else math.nan, "low": lo, "high": hi, "n": n}
    return pd.DataFrame.from_dict(out, orient="index")


# --------------------------------------------------------------------------- figures
def _draw(folder: Path, period: ScoredPeriod, guard: RefundGuard, ev: Evaluation, bands: pd.DataFrame,
          rates: pd.DataFrame, confidence: float) -> list[Path]:
    rows = period.rows
    p_all = rows["abuse_probability"].to_numpy(dtype=np.float64)
    y_all = rows["is_abuse"].astype("Float64").to_numpy(dtype=np.float64, na_value=np.nan)
    labelled = ~np.isnan(y_all)
    y, p = y_all[labelled], p_all[labelled]
    th = guard.meta.get("thresholds") or {}
    thresholds = [(name, th[name]) for name in ("intercept", "review") if th.get(name) is not None]
    target = float(th.get("intercept_precision") or 0.9)
    o = ev.overall
    written = []

    table = precision_recall_table(y, p)
    marks = [(n, t, *pt) for n, t in thresholds if (pt := _threshold_point(table, t)) is not None]
    written.append(pr_curve_figure(table["recall"], table["precision"], marks, folder / "pr_curve.png",
                                         pr_auc=o["pr_auc"], positive_rate=o["positive_rate"]))
    cal = _calibration(y, p)
    written.append(calibration_figure(cal["mean_p"], cal["observed"], cal["n"], folder / "calibration.png",
                                            ece=o["ece"]))
    written.append(score_histogram_figure(p[y == 0], p[y == 1], thresholds, folder / "score_histogram.png"))
    written.append(feature_importance_figure(guard.feature_importance("gain"),
                                                   folder / "feature_importance.png"))
    assert ev.by_category is not None
    written.append(by_category_figure(ev.by_category, folder / "by_category.png", intercept_precision=target))
    written.append(by_band_figure(bands, folder / "by_store_band.png"))

    days = np.arange(period.first_day, period.first_day + period.n_days)
    action = rows["action"]
    per_day = pd.crosstab(rows["day"], action).reindex(index=days, fill_value=0)
    dates = pd.to_datetime(days * NS_PER_DAY)
    lo_ns, hi_ns = days[0] * NS_PER_DAY, (days[-1] + 1) * NS_PER_DAY
    changes = [(v.name or v.effective_from.isoformat(), pd.Timestamp(date_ns(v.effective_from)))
               for v in guard.policy.versions[1:] if lo_ns < date_ns(v.effective_from) < hi_ns]
    written.append(daily_figure(dates, per_day.get("intercept", 0 * days), per_day.get("review", 0 * days),
                                      folder / "daily_decisions.png", policy_dates=changes))

    week = period.first_day + 7 * ((rows["day"].to_numpy() - period.first_day) // 7)
    weekly = pd.Series((action == "merchant_handles").to_numpy(dtype=np.float64)).groupby(week).mean()
    gates = [v.gate for v in guard.policy.versions if v.gate is not None]
    written.append(gate_figure(pd.to_datetime(weekly.index.to_numpy() * NS_PER_DAY), weekly.to_numpy(), rates,
                                     folder / "store_gate.png", gate=gates[-1] if gates else None,
                                     confidence=confidence))
    return written


# --------------------------------------------------------------------------- HTML
_CSS = """
body { font-family: sans-serif; max-width: 62rem; margin: 2rem auto; padding: 0 1rem; color: #222; line-height: 1.45; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.2rem; margin-top: 2.2rem; border-bottom: 1px solid #ccc; }
p.summary { font-size: 1.05rem; background: #f4f6f8; padding: 0.8rem 1rem; border-left: 4px solid #1f77b4; }
figure { margin: 1rem 0; } figcaption { font-size: 0.9rem; color: #555; }
img { max-width: 100%; height: auto; border: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.88rem; margin: 0.6rem 0; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.55rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
""".strip()


def _cell(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return fmt.format(value)


def _html_table(frame: pd.DataFrame, columns: Mapping[str, tuple[str, str]], index_name: str) -> str:
    head = "".join(f"<th>{html.escape(title)}</th>" for title, _ in columns.values())
    body = []
    for name, row in frame.iterrows():
        cells = "".join(f"<td>{html.escape(_cell(row[c], fmt))}</td>" for c, (_, fmt) in columns.items())
        body.append(f"<tr><td>{html.escape(str(name))}</td>{cells}</tr>")
    return (f"<table><thead><tr><th>{html.escape(index_name)}</th>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>")


def _figure_html(name: str, caption: str) -> str:
    return (f'<figure><img src="{html.escape(name)}" alt="{html.escape(FIGURES[name])}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _page(s: Mapping[str, Any], ev: Evaluation, bands: pd.DataFrame, rates: pd.DataFrame) -> str:
    e = html.escape
    target = s["intercept_precision"]
    summary = (
        f"From {s['period']}, {s['requests']:,} refund requests were decided by model {s['model_version']} "
        f"({s['labelled']:,} labelled, {s['abuse_rate']:.1%} abusive). The model reaches a PR-AUC of "
        f"{s['pr_auc']:.3f} and a recall of {s['recall_at_precision']:.1%} at {target:.0%} precision. "
        f"The policy intercepted {s['intercepted']:,} requests: {s['abuse_amount_stopped']:,.2f} of abusive refunds "
        f"stopped, and {s['honest_amount_held']:,.2f} of honest buyers' refunds held ({s['honest_intercepted']:,} "
        f"honest requests). The store gate left {s['gated_share']:.1%} of requests to merchants; the audit sample "
        f"({s['audit_sample']:,} labelled) puts the abusive amount behind the gate at "
        f"{s['abuse_to_merchants']:,.2f} ({s['confidence']:.0%} interval {s['abuse_to_merchants_low']:,.2f} to "
        f"{s['abuse_to_merchants_high']:,.2f})."
        + (f" The audit sample is small (the model expected {s['audit_expected']:.1f} abusive requests in it): "
           "read the interval rather than the estimate." if s["audit_small"] else "")
    )
    cat_cols = {"n": ("labelled", "{:,.0f}"), "n_positive": ("abusive", "{:,.0f}"),
                "positive_rate": ("abuse rate", "{:.1%}"), "pr_auc": ("PR-AUC", "{:.3f}"),
                "recall_at_precision": (f"recall at {target:.0%} precision", "{:.3f}"), "ece": ("ECE", "{:.4f}")}
    band_cols = {"requests": ("requests", "{:,.0f}"), "labelled": ("labelled", "{:,.0f}"),
                 "abuse_rate": ("abuse rate", "{:.1%}"), "pr_auc": ("PR-AUC", "{:.3f}"),
                 "honest": ("honest", "{:,.0f}"), "honest_intercepted": ("honest intercepted", "{:,.0f}"),
                 "false_intercept_rate": ("false-intercept rate (decided)", "{:.2%}"),
                 "model_false_intercept_rate": ("false-intercept rate (model alone)", "{:.2%}")}
    rate_cols = {"n": ("labelled", "{:,.0f}"), "rate": ("abuse rate", "{:.2%}"),
                 "low": ("interval low", "{:.2%}"), "high": ("interval high", "{:.2%}")}
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>refundguard report {e(s['period'])}</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>refundguard report</h1>",
        f"<p>Model {e(s['model_version'])}, requests from {e(s['period'])}.</p>",
        f'<p class="summary">{e(summary)}</p>',
        "<h2>Model quality</h2>",
        _figure_html("pr_curve.png", "Precision against recall on the labelled requests; the dots are the intercept "
                     "and review thresholds of the model."),
        _figure_html("calibration.png", "Mean predicted probability against the observed abuse rate in ten bins of "
                     "the probability; on the diagonal the probabilities can be read as rates."),
        _figure_html("score_histogram.png", "How the probabilities of honest and of abusive requests spread (log "
                     "scale), with the thresholds."),
        _figure_html("feature_importance.png", "The features the model relies on most (share of its split gain)."),
        "<h2>By category and by store band</h2>",
        _figure_html("by_category.png", "Model quality per category."),
        _html_table(ev.by_category if ev.by_category is not None else pd.DataFrame(), cat_cols, "category"),
        _figure_html("by_store_band.png", "Share of honest requests intercepted per store-score band: buyers of "
                     "low-score stores must not pay for the store's faults. 'Decided' is what buyers met (the gate "
                     "leaves high-score stores to merchants); 'model alone' applies the intercept threshold to every "
                     "request."),
        _html_table(bands, band_cols, "store-score band"),
        "<h2>Decisions over time</h2>",
        _figure_html("daily_decisions.png", "Intercepts and reviews per day; dashed lines mark policy versions that "
                     "start in the period."),
        "<h2>The store gate</h2>",
        _figure_html("store_gate.png", "Left: the weekly share of requests left to merchants by the store gate. "
                     "Right: the abuse rate of the audit sample (the only gated requests the platform judges) next "
                     "to that of the requests the platform decided, with exact binomial intervals."),
        _html_table(rates.rename(index=lambda n: n.replace("\n", " ")), rate_cols, "requests"),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


# --------------------------------------------------------------------------- folder
def _check_target(target: Path) -> None:
    ok = not target.exists() or (target.is_dir() and (not any(target.iterdir()) or (target / _INDEX).is_file()))
    if not ok:
        raise ConfigError.invalid("write_report", "out",
                                  "an absent or empty folder, or an earlier report folder (with index.html)",
                                  str(target))


def _install(tmp: Path, target: Path) -> None:
    """Move the finished folder ``tmp`` to ``target``, replacing an earlier report there."""
    if target.exists():
        old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(target, old)
        try:
            os.replace(tmp, target)
        except BaseException:
            os.replace(old, target)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)


def write_report(
    model: RefundGuard | str | Path,
    tables: Mapping[str, pd.DataFrame],
    out: str | Path,
    start: Any = None,
    end: Any = None,
    *,
    confidence: float = 0.95,
    validate_tables: bool = True,
    progress: bool = False,
) -> Report:
    """Write the analyst report of the refunds requested in ``[start, end)`` to the folder ``out``.

    Parameters
    ----------
    model
        A :class:`RefundGuard` or a model folder.
    tables
        The contract's tables, with labels (``is_abuse``) for the model figures.
    out
        The report folder: created, or replaced when it holds an earlier report.
    start, end
        Half-open bounds on ``requested_at``.
    confidence
        Level of the intervals (audit sample, abuse behind the gate).
    validate_tables
        Validate the input first.
    progress
        Show a progress bar while the features are built.

    Returns
    -------
    Report

    Raises
    ------
    ImportError
        matplotlib is not installed (``pip install 'refundguard[report]'``).
    ConfigError
        ``out`` is a file or a folder that holds something other than a report.
    DataError
        No refund, or no labelled refund, in the period.
    """
    if not available():
        raise ImportError(f"The report draws its figures with matplotlib, which is not installed: "
                          f"{INSTALL_HINT}.")
    target = Path(out)
    _check_target(target)
    guard = as_guard(model)
    period = score_period(guard, tables, start, end, validate_tables=validate_tables, progress=progress)
    rows = period.rows
    y_all = rows["is_abuse"].astype("Float64").to_numpy(dtype=np.float64, na_value=np.nan)
    labelled = ~np.isnan(y_all)
    if not labelled.any():
        raise DataError(f"No labelled refund requested in [{start}, {end}): the report measures the model "
                        "against labels.", detail={"requests": len(rows)})
    th = guard.meta.get("thresholds") or {}
    intercept = th.get("intercept")
    target_precision = float(th.get("intercept_precision") or 0.9)
    lab = rows.loc[labelled]
    ev = evaluate_predictions(y_all[labelled], lab["abuse_probability"].to_numpy(dtype=np.float64),
                              lab["amount"].to_numpy(dtype=np.float64),
                              category=lab["category"].astype(object).to_numpy(),
                              store_score=lab["store_score"].to_numpy(dtype=np.float64),
                              intercept_threshold=intercept, intercept_precision=target_precision)
    bands = _band_table(rows, y_all, labelled, intercept, ev.by_band)
    rates = _gate_rates(rows, y_all, labelled, confidence)
    gates = [v.gate for v in guard.policy.versions if v.gate is not None]
    current = replay(period, guard.policy, [PolicyVariant(gates[-1] if gates else None)],
                     confidence=confidence, censor="policy")
    w = current.table.iloc[0]
    action = rows["action"].to_numpy(dtype=object)
    amount = rows["amount"].to_numpy(dtype=np.float64)
    hit = action == "intercept"
    o = ev.overall
    summary = {
        "period": period.period_text,
        "model_version": guard.model_version,
        "requests": len(rows),
        "labelled": int(labelled.sum()),
        "abuse_rate": float(o["positive_rate"]),
        "pr_auc": float(o["pr_auc"]),
        "recall_at_precision": float(o["recall_at_precision"]),
        "intercept_precision": target_precision,
        "intercepted": int(hit.sum()),
        "abuse_amount_stopped": float(amount[hit & (y_all == 1)].sum()),
        "honest_amount_held": float(amount[hit & (y_all == 0)].sum()),
        "honest_intercepted": int((hit & (y_all == 0)).sum()),
        "gated_share": float(np.mean(action == "merchant_handles")),
        "audit_sample": int(w["audit_sample"]),
        "audit_expected": float(w["audit_expected"]),
        "audit_small": bool(w["censored"]) and float(w["audit_expected"]) < SMALL_AUDIT_EXPECTED,
        "abuse_to_merchants": float(w["abuse_to_merchants"]),
        "abuse_to_merchants_low": float(w["abuse_to_merchants_low"]),
        "abuse_to_merchants_high": float(w["abuse_to_merchants_high"]),
        "confidence": confidence,
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        figures = _draw(tmp, period, guard, ev, bands, rates, confidence)
        (tmp / _INDEX).write_text(_page(summary, ev, bands, rates), encoding="utf-8")
        _install(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return Report(folder=target, index=target / _INDEX, figures=tuple(target / f.name for f in figures),
                  summary=summary, evaluation=ev, whatif=current)
