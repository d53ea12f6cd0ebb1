"""Policy what-if: replay a period under other store gates, intercept precisions and review capacity.

Every request of the period is scored once (:func:`~refundguard.monitoring.period.score_period`);
each variant is then decided again with the dated-policy machinery
(:func:`refundguard.policy.decide_batch`) on a copy of the model's policy timeline
in which every version that has a store gate gets the variant's gate (versions
without a gate keep none: the replay changes the rule, not its date), and every
version gets the variant's thresholds. An intercept precision becomes a threshold
through the model's validation curve (``meta.json``'s ``validation_curve``: the
lowest threshold whose validation precision reaches it, as in training).

Review capacity (``review_capacity`` reviews per day): on a day with more
reviews than that, the reviews with the lowest abuse probability are approved
instead (the overflow), so that at most ``review_capacity`` remain.

Money and labels. Requests the model's own policy put behind the gate were
handled by merchants, and only the audit sample of them was adjudicated: with
``censor="policy"`` (the default) their labels count as unknown (censored) even
when the data holds one, as they would be in production. A censored request
counts as abusive with the model's calibrated probability rescaled by the audit
sample: the audit sample is a random sample of the gated requests (the draw is a
hash of the refund id), and the ratio of its observed abusive count to the count
the model expected there (the sum of its probabilities) corrects the model's
level behind the gate; the exact Poisson interval of that ratio (``confidence``,
default 95%) gives each amount's bounds, and each estimate is capped at 1. With
no audit sample the ratio is 1 and the bounds run from none to all of the
censored amount. Every variant uses the same per-request estimates, so the
figures add up across actions and move the same way as the gate. ``censor="none"``
uses every label in the data (a simulation's full truth). Requests without a
label that are not censored (refunds still open) are left out of the money
figures and counted in ``unlabelled``.

>>> from refundguard.monitoring import whatif
>>> result = whatif("models/2026-11", tables, gates=[4.6, 4.7, 4.8, 4.9])  # doctest: +SKIP
>>> print(result.to_text())                                               # doctest: +SKIP
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import beta, chi2

from refundguard._params import Interval, Options, check_params, is_finite_real
from refundguard.errors import ConfigError, ModelError
from refundguard.guard import RefundGuard
from refundguard.monitoring.period import ScoredPeriod, TableReport, as_guard, score_period
from refundguard.policy import ACTIONS, PolicyTimeline, decide_batch

__all__ = [
    "CENSOR_MODES",
    "SMALL_AUDIT_EXPECTED",
    "PolicyVariant",
    "WhatIf",
    "apply_review_capacity",
    "clopper_pearson",
    "rate_ratio_interval",
    "replay",
    "threshold_at_precision",
    "variant_timeline",
    "whatif",
]

#: How labels behind the store gate are read: ``policy`` (only the audit sample's) or ``none`` (all).
CENSOR_MODES: tuple[str, ...] = ("policy", "none")
#: Below this expected abusive count in the audit sample, the estimates behind the gate are flagged as unreliable.
SMALL_AUDIT_EXPECTED = 5.0
_POLICY_COLUMNS = ("refund_id", "requested_at", "kind", "buyer_id", "store_score", "store_score_missing",
                   "provisional")


@dataclass(frozen=True)
class PolicyVariant:
    """One replayed variant of the policy.

    Attributes
    ----------
    gate : float or None
        The store gate of every gated policy version (``None``: no gate at all).
    intercept_precision : float or None
        Target validation precision of the intercept threshold; ``None`` keeps the
        model's thresholds.
    """

    gate: float | None
    intercept_precision: float | None = None

    @property
    def label(self) -> str:
        """A short name: ``gate 4.80`` or ``gate 4.80, precision 0.95``."""
        gate = "no gate" if self.gate is None else f"gate {self.gate:.2f}"
        return gate if self.intercept_precision is None else f"{gate}, precision {self.intercept_precision:.2f}"


def threshold_at_precision(curve: Mapping[str, Sequence[float]], target: float) -> float | None:
    """The lowest threshold whose validation precision reaches ``target`` (``None``: none does).

    Parameters
    ----------
    curve
        ``{"threshold": [...], "precision": [...]}``, thresholds in any order
        (``meta.json``'s ``validation_curve``; thinned to at most 200 points, so
        the threshold is that of the nearest stored point).
    target
        The precision wanted, in (0, 1].
    """
    th = np.asarray(curve["threshold"], dtype=np.float64)
    prec = np.asarray(curve["precision"], dtype=np.float64)
    ok = prec >= float(target) - 1e-12
    return float(th[ok].min()) if ok.any() else None


def variant_timeline(
    policy: PolicyTimeline, gate: float | None, intercept: float | None, review: float | None
) -> PolicyTimeline:
    """``policy`` with ``gate`` in every version that has a gate and these thresholds in every version."""
    return PolicyTimeline(
        v.replace(gate=gate if v.gate is not None else None, intercept_threshold=intercept, review_threshold=review)
        for v in policy.versions
    )


def apply_review_capacity(action: Any, p: Any, day: Any, capacity: int | None) -> np.ndarray:
    """Approve the lowest-risk reviews of each day beyond ``capacity``.

    Parameters
    ----------
    action
        The actions (:data:`~refundguard.policy.ACTIONS`).
    p
        The abuse probabilities (the order within a day: highest kept first; ties
        keep the earlier row).
    day
        The day of each request (any integer or label).
    capacity
        Reviews per day; ``None``: unlimited.

    Returns
    -------
    numpy.ndarray
        The actions, with the overflow reviews turned into ``approve``.
    """
    out = np.asarray(action, dtype=object).copy()
    if capacity is None:
        return out
    rows = np.flatnonzero(out == "review")
    if rows.size <= capacity:
        return out
    probs = np.asarray(p, dtype=np.float64)[rows]
    days = pd.factorize(np.asarray(day)[rows])[0]
    order = np.lexsort((rows, -probs, days))  # by day, then highest p, then row
    sorted_days = days[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_days)) + 1]
    rank = np.arange(order.size) - np.repeat(starts, np.diff(np.r_[starts, order.size]))
    out[rows[order[rank >= capacity]]] = "approve"
    return out


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The exact (Clopper-Pearson) interval of a binomial rate ``k / n``; ``(0, 1)`` for ``n = 0``."""
    if n <= 0:
        return 0.0, 1.0
    alpha = 1.0 - confidence
    low = 0.0 if k <= 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    high = 1.0 if k >= n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return low, high


def rate_ratio_interval(observed: int, expected: float, confidence: float = 0.95) -> tuple[float, float, float]:
    """An observed/expected count ratio with its exact Poisson interval.

    Parameters
    ----------
    observed
        Events counted (abusive requests in the audit sample).
    expected
        Events the model expected there (the sum of its probabilities).
    confidence
        Level of the interval.

    Returns
    -------
    tuple of float
        ``(ratio, low, high)``; ``(1, 0, inf)`` when nothing was expected (no evidence
        either way).
    """
    if not expected > 0:
        return 1.0, 0.0, math.inf
    alpha = 1.0 - confidence
    low = 0.0 if observed <= 0 else float(chi2.ppf(alpha / 2, 2 * observed)) / (2 * expected)
    high = float(chi2.ppf(1 - alpha / 2, 2 * observed + 2)) / (2 * expected)
    return observed / expected, low, high


@dataclass(frozen=True)
class _Labels:
    """Each request's label for a replay: known (0/1), estimated when censored, or left out.

    ``y``, ``low`` and ``high`` are the label, or its estimate and interval bounds
    for censored requests (NaN for requests left out of the amounts).
    """

    y: np.ndarray
    low: np.ndarray
    high: np.ndarray
    censored: np.ndarray
    sample: np.ndarray
    ratio: tuple[float, float, float]
    expected: float

    @property
    def judged(self) -> np.ndarray:
        """Requests counted in the amounts (known or estimated label)."""
        return ~np.isnan(self.y)


def _labels(rows: pd.DataFrame, censor: str, confidence: float) -> _Labels:
    """Known labels, and for censored requests the model's probability rescaled by the audit sample.

    The audit sample's observed abusive count over the model's expected count (the
    sum of its probabilities there) rescales the probability of every censored
    request; the exact Poisson interval of that ratio gives the bounds. Each
    estimate is capped at 1.
    """
    y = rows["is_abuse"].astype("Float64").to_numpy(dtype=np.float64, na_value=np.nan)
    p = rows["abuse_probability"].to_numpy(dtype=np.float64)
    gated = (rows["action"] == "merchant_handles").to_numpy()
    audit = rows["audit"].to_numpy(dtype=bool)
    censored = gated & ~audit if censor == "policy" else np.zeros(len(rows), dtype=bool)
    sample = gated & audit & ~np.isnan(y)
    expected = float(p[sample].sum())
    ratio = rate_ratio_interval(int(np.nansum(y[sample])), expected, confidence)
    low, high = y.copy(), y.copy()
    if censored.any():
        pc = p[censored]
        r, lo, hi = ratio
        y[censored] = np.minimum(1.0, r * pc)
        low[censored] = np.minimum(1.0, lo * pc)
        high[censored] = 1.0 if math.isinf(hi) else np.minimum(1.0, hi * pc)
    return _Labels(y=y, low=low, high=high, censored=censored, sample=sample, ratio=ratio, expected=expected)


def _abuse_estimate(mask: np.ndarray, amount: np.ndarray, lab: _Labels) -> dict[str, float]:
    """Abusive amount (with bounds) and count among the judged requests of ``mask``."""
    m = mask & lab.judged
    a = amount[m]
    return {
        "amount": float(np.dot(a, lab.y[m])),
        "low": float(np.dot(a, lab.low[m])),
        "high": float(np.dot(a, lab.high[m])),
        "count": float(lab.y[m].sum()),
        "judged": float(m.sum()),
        "judged_amount": float(a.sum()),
    }


def _variant_row(
    variant: PolicyVariant,
    action: np.ndarray,
    overflow: int,
    period: ScoredPeriod,
    lab: _Labels,
    thresholds: tuple[float | None, float | None],
) -> dict[str, Any]:
    rows = period.rows
    amount = rows["amount"].to_numpy(dtype=np.float64)
    days = rows["day"].to_numpy()
    n = len(rows)
    est = {a: _abuse_estimate(action == a, amount, lab) for a in ACTIONS}
    reviews_by_day = pd.Series(action == "review").groupby(days).sum()
    inter = est["intercept"]
    return {
        "variant": variant.label,
        "gate": variant.gate,
        "intercept_precision": variant.intercept_precision,
        "intercept_threshold": thresholds[0],
        "review_threshold": thresholds[1],
        "requests": n,
        "days": period.n_days,
        "gated_share": float(np.mean(action == "merchant_handles")) if n else math.nan,
        "intercepts_per_day": float(np.sum(action == "intercept")) / period.n_days,
        "reviews_per_day": float(np.sum(action == "review")) / period.n_days,
        "reviews_max_day": int(reviews_by_day.max()) if len(reviews_by_day) else 0,
        "overflow_approved": int(overflow),
        "abuse_to_merchants": est["merchant_handles"]["amount"],
        "abuse_to_merchants_low": est["merchant_handles"]["low"],
        "abuse_to_merchants_high": est["merchant_handles"]["high"],
        "abuse_stopped": inter["amount"],
        "abuse_stopped_low": inter["low"],
        "abuse_stopped_high": inter["high"],
        "abuse_in_review": est["review"]["amount"],
        "abuse_approved": est["approve"]["amount"],
        "honest_intercepted": inter["judged"] - inter["count"],
        "honest_amount_held": inter["judged_amount"] - inter["amount"],
        "censored": int(lab.censored.sum()),
        "audit_sample": int(lab.sample.sum()),
        "audit_expected": lab.expected,
        "audit_ratio": lab.ratio[0],
        "unlabelled": int((~lab.judged).sum()),
    }


_REPLAY_RULES = {
    "review_capacity": [Interval(numbers.Integral, 0, None, closed="left"), None],
    "confidence": [Interval(numbers.Real, 0, 1, closed="neither")],
    "censor": [Options(str, set(CENSOR_MODES))],
}


def replay(
    period: ScoredPeriod,
    policy: PolicyTimeline,
    variants: Sequence[PolicyVariant],
    *,
    validation_curve: Mapping[str, Sequence[float]] | None = None,
    thresholds: Mapping[str, Any] | None = None,
    review_capacity: int | None = None,
    confidence: float = 0.95,
    censor: str = "policy",
) -> WhatIf:
    """Decide a scored period again under each variant and measure it (see the module docstring).

    Parameters
    ----------
    period
        The period, scored once (:func:`~refundguard.monitoring.period.score_period`):
        its actions and audit flags are what the model's policy did.
    policy
        The model's policy timeline, with its thresholds (:attr:`RefundGuard.policy`).
    variants
        The variants to replay.
    validation_curve
        The model's validation curve; needed by variants with an intercept precision.
    thresholds
        The model's ``meta.json`` ``thresholds``: a variant whose intercept precision
        is the model's own target gets the model's exact threshold (chosen on the
        full validation table, where the stored curve is thinned).
    review_capacity
        Reviews per day; ``None``: unlimited.
    confidence
        Level of the intervals of the estimated amounts.
    censor
        ``"policy"`` or ``"none"`` (see the module docstring).

    Returns
    -------
    WhatIf
    """
    check_params("replay", _REPLAY_RULES,
                 {"review_capacity": review_capacity, "confidence": confidence, "censor": censor})
    rows = period.rows
    lab = _labels(rows, censor, confidence)
    frame = rows.loc[:, list(_POLICY_COLUMNS)]
    p = rows["abuse_probability"].to_numpy(dtype=np.float64)
    last = policy.versions[-1]
    out = []
    for variant in variants:
        intercept, review = last.intercept_threshold, last.review_threshold
        if variant.intercept_precision is not None:
            own = thresholds or {}
            if own.get("intercept_precision") is not None \
                    and math.isclose(variant.intercept_precision, float(own["intercept_precision"])):
                intercept = own.get("intercept")
            elif not validation_curve:
                raise ModelError("The model's meta.json holds no validation curve: an intercept precision cannot "
                                 "be turned into a threshold.", problem="meta_field")
            else:
                intercept = threshold_at_precision(validation_curve, variant.intercept_precision)
            if intercept is not None and review is not None:
                review = min(review, intercept)
        timeline = variant_timeline(policy, variant.gate, intercept, review)
        decided = decide_batch(frame, timeline, probability=p)["action"].to_numpy(dtype=object)
        action = apply_review_capacity(decided, p, rows["day"].to_numpy(), review_capacity)
        overflow = int(np.sum((decided == "review") & (action == "approve")))
        out.append(_variant_row(variant, action, overflow, period, lab, (intercept, review)))
    return WhatIf(table=pd.DataFrame(out), period=period, review_capacity=review_capacity, confidence=confidence,
                  censor=censor)


@dataclass(frozen=True, eq=False)
class WhatIf(TableReport):
    """The replays of one period.

    Attributes
    ----------
    table
        One row per variant: ``variant, gate, intercept_precision,
        intercept_threshold, review_threshold, requests, days, gated_share,
        intercepts_per_day, reviews_per_day, reviews_max_day, overflow_approved,
        abuse_to_merchants`` (with ``_low``/``_high``), ``abuse_stopped`` (with
        ``_low``/``_high``), ``abuse_in_review, abuse_approved,
        honest_intercepted, honest_amount_held, censored, audit_sample,
        audit_expected`` (the abusive count the model expected in the audit
        sample), ``audit_ratio`` (observed over expected), ``unlabelled``.
        Amounts are sums of refund amounts; ``honest_intercepted``
        counts requests (estimated where labels are censored).
    period
        The scored period.
    review_capacity, confidence, censor
        As passed to :func:`replay`.
    """

    table: pd.DataFrame
    period: ScoredPeriod
    review_capacity: int | None
    confidence: float
    censor: str

    def lines(self) -> list[str]:
        """The table as text, one line per variant (money with 2 decimals, shares as percentages)."""
        t = self.table
        cap = "unlimited" if self.review_capacity is None else f"{self.review_capacity:,} per day"
        first = t.iloc[0] if len(t) else None
        head = (f"{len(self.period):,} requests over {self.period.n_days:,} days ({self.period.period_text}), "
                f"model {self.period.model_version}; review capacity {cap}")
        out = [head]
        if first is not None and self.censor == "policy":
            out.append(f"labels of {int(first['censored']):,} gated requests censored: the model's probabilities "
                       f"rescaled by the audit sample ({int(first['audit_sample']):,} labelled, observed/expected "
                       f"abuse {first['audit_ratio']:.2f}); {self.confidence:.0%} intervals")
        if first is not None and self.censor == "policy" and first["censored"] \
                and first["audit_expected"] < SMALL_AUDIT_EXPECTED:
            out.append(f"the audit sample is small (the model expected {first['audit_expected']:.1f} abusive requests "
                       f"in it): read the intervals, not the estimates; a larger audit_rate narrows them")
        if first is not None and first["unlabelled"]:
            out.append(f"{int(first['unlabelled']):,} requests without a label are left out of the amounts")
        width = max([len("variant"), *(len(v) for v in t["variant"])])
        out.append(f"{'variant':{width}s} {'intercept':>9s} {'gated':>6s} {'intercepts/d':>12s} {'reviews/d':>9s} "
                   f"{'max/d':>5s} {'overflow':>8s}  {'abuse to merchants [interval]':>36s} {'abuse stopped':>13s} "
                   f"{'honest intercepted':>18s} {'honest held':>11s}")
        for r in t.itertuples(index=False):
            th = "disabled" if r.intercept_threshold is None or _isnan(r.intercept_threshold) \
                else f"{r.intercept_threshold:.4g}"
            merchants = (f"{r.abuse_to_merchants:,.2f} [{r.abuse_to_merchants_low:,.2f}, "
                         f"{r.abuse_to_merchants_high:,.2f}]")
            out.append(f"{r.variant:{width}s} {th:>9s} {r.gated_share:>6.1%} {r.intercepts_per_day:>12.1f} "
                       f"{r.reviews_per_day:>9.1f} {r.reviews_max_day:>5,d} {r.overflow_approved:>8,d}  "
                       f"{merchants:>36s} {r.abuse_stopped:>13,.2f} {r.honest_intercepted:>18,.0f} "
                       f"{r.honest_amount_held:>11,.2f}")
        return out

    def plot(self, path: str | Path) -> Path:
        """Draw the trade-off plot into a PNG (needs matplotlib)."""
        from refundguard.monitoring.plots import whatif_figure

        return whatif_figure(self.table, path, confidence=self.confidence,
                                   model_version=self.period.model_version)


def _isnan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def whatif(
    model: RefundGuard | str | Path,
    tables: Mapping[str, pd.DataFrame],
    start: Any = None,
    end: Any = None,
    *,
    gates: Sequence[float | None] | None = None,
    intercept_precisions: Sequence[float | None] | None = None,
    review_capacity: int | None = None,
    confidence: float = 0.95,
    censor: str = "policy",
    validate_tables: bool = True,
    progress: bool = False,
) -> WhatIf:
    """Replay the refunds requested in ``[start, end)`` under every gate x intercept precision.

    Parameters
    ----------
    model
        A :class:`RefundGuard` or a model folder.
    tables
        The contract's tables.
    start, end
        Half-open bounds on ``requested_at``.
    gates
        Store gates to try (``None`` in the list: no gate). Default: the gate of
        the model's policy.
    intercept_precisions
        Target intercept precisions to try (``None`` in the list: the model's own
        threshold). Default: the model's threshold only.
    review_capacity
        Reviews per day (``None``: unlimited).
    confidence
        Level of the intervals of the estimated amounts.
    censor
        ``"policy"`` (labels behind the gate come from the audit sample only) or ``"none"``.
    validate_tables
        Validate the input first.
    progress
        Show a progress bar while the features are built.

    Returns
    -------
    WhatIf
    """
    guard = as_guard(model)
    if gates is None:
        gated = [v.gate for v in guard.policy.versions if v.gate is not None]
        gates = [gated[-1] if gated else None]
    precisions = [None] if intercept_precisions is None else list(intercept_precisions)
    for value in precisions:
        if value is not None and not (is_finite_real(value) and 0.0 < float(value) <= 1.0):
            raise ConfigError.invalid("whatif", "intercept_precisions", "a list of floats in the range (0.0, 1.0]",
                                      list(precisions))
    gate_rule = "a non-empty list of store gates (floats in the range [0.0, 5.0], or None for no gate)"
    if not list(gates) or any(g is not None and not (is_finite_real(g) and 0.0 <= float(g) <= 5.0) for g in gates):
        raise ConfigError.invalid("whatif", "gates", gate_rule, list(gates))
    check_params("whatif", _REPLAY_RULES, {"review_capacity": review_capacity, "confidence": confidence,
                                           "censor": censor})
    variants = [PolicyVariant(None if g is None else float(g), None if q is None else float(q))
                for g in gates for q in precisions]
    period = score_period(guard, tables, start, end, validate_tables=validate_tables, progress=progress)
    return replay(period, guard.policy, variants, validation_curve=guard.meta.get("validation_curve"),
                  thresholds=guard.meta.get("thresholds"),
                  review_capacity=review_capacity, confidence=confidence, censor=censor)
