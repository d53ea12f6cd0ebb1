"""The decision policy: dated versions, the store gate, lists, thresholds and the audit sample.

DESIGN.md section 6 (contract). Rule order within a version::

    1. store gate: published store score >= gate (4.80)    -> merchant_handles
       (provisional or missing score: not gated by default, flagged)
    2. block list (buyer)                                   -> intercept
    3. allow list (buyer)                                   -> approve
    4. p >= intercept threshold -> intercept; p >= review -> review; else approve

The store gate lives here and nowhere else. Gated requests are not scored, except
with ``always_score=True`` (monitoring) or when the request falls in the audit
sample: ``sha256(audit_salt + refund_id)`` read as a fraction in [0, 1) is below
``audit_rate``. Audited requests are scored and flagged ``audit=True``; their action
stays ``merchant_handles``.

The store score compared with the gate must be the **published** score (two
decimals, :func:`refundguard.scores.publish_score`); the comparison allows 1e-9
for float representation only (4.8 stored as 4.79999999999 still counts as 4.80).

Two entry points, tested equal: :func:`decide_one` (plain Python, online) and
:func:`decide_batch` (vectorised, one pass per policy version).
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import numpy as np
import pandas as pd

from refundguard._time import NAT, column_ns, date_ns, field_ns
from refundguard.config import REFUND_KINDS, PolicyConfig
from refundguard.errors import ConfigError, DataError, RequestError, SchemaError
from refundguard.tables import require_columns

__all__ = [
    "ACTIONS",
    "Decision",
    "PolicyConfig",
    "PolicyTimeline",
    "audit_draw",
    "gate_batch",
    "decide_one",
    "decide_batch",
    "decide_arrays",
    "BatchDecisions",
    "DECISION_COLUMNS",
]

#: The four actions, from "platform does nothing" to "platform stops the refund".
ACTIONS: tuple[str, ...] = ("merchant_handles", "approve", "review", "intercept")
#: Columns of :func:`decide_batch` output, the fields of :class:`Decision`.
DECISION_COLUMNS: tuple[str, ...] = (
    "refund_id",
    "action",
    "abuse_probability",
    "store_score",
    "store_score_missing",
    "provisional",
    "audit",
    "reasons",
    "model_version",
    "policy_version",
)
_GATE_TOLERANCE = 1e-9
_MAX_REASONS = 3


def _block_reason(buyer_id: str) -> dict[str, Any]:
    return {"text": "buyer is on the block list", "feature": "buyer_id", "value": buyer_id, "contribution": None}


# ----------------------------------------------------------------------------- Decision


@dataclass(frozen=True)
class Decision:
    """The outcome for one refund request.

    Attributes
    ----------
    refund_id : str
    action : str
        One of :data:`ACTIONS`.
    abuse_probability : float or None
        Calibrated probability; None when the request was not scored (gated).
    store_score : float or None
        The published store score used by the gate (None when missing).
    store_score_missing : bool
    provisional : bool
        The store's score is provisional (too few orders).
    audit : bool
        A gated request scored for the audit sample.
    reasons : tuple of dict
        Up to three ``{text, feature, value, contribution}`` items, for review and
        intercept (and on request).
    model_version, policy_version : str
    """

    refund_id: str
    action: str
    abuse_probability: float | None
    store_score: float | None
    store_score_missing: bool
    provisional: bool
    audit: bool
    reasons: tuple[dict[str, Any], ...] = field(default=())
    model_version: str = ""
    policy_version: str = ""

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (reasons as a list of dicts), ready for JSON."""
        return {
            "refund_id": self.refund_id,
            "action": self.action,
            "abuse_probability": self.abuse_probability,
            "store_score": self.store_score,
            "store_score_missing": self.store_score_missing,
            "provisional": self.provisional,
            "audit": self.audit,
            "reasons": [dict(r) for r in self.reasons],
            "model_version": self.model_version,
            "policy_version": self.policy_version,
        }


# ----------------------------------------------------------------------------- timeline


class PolicyTimeline:
    """Dated policy versions; each request uses the version in force at its time.

    Parameters
    ----------
    versions
        :class:`PolicyConfig` objects with distinct ``effective_from`` dates (any order).
        A version applies from 00:00 UTC of its date until the next version's date.
    """

    def __init__(self, versions: Iterable[PolicyConfig]) -> None:
        vs = list(versions)
        if not vs or not all(isinstance(v, PolicyConfig) for v in vs):
            raise ConfigError(
                f"The 'versions' parameter of PolicyTimeline must be a non-empty list of PolicyConfig. Got {vs!r} instead.",
                owner="PolicyTimeline",
                field="versions",
                value=vs,
            )
        vs.sort(key=lambda v: v.effective_from)
        dates = [v.effective_from for v in vs]
        dup = sorted({d.isoformat() for d in dates if dates.count(d) > 1})
        if dup:
            raise ConfigError(
                f"The 'versions' parameter of PolicyTimeline must have distinct effective_from dates. Got {dup} twice.",
                owner="PolicyTimeline",
                field="versions",
                value=dup,
            )
        names = [v.name for v in vs]
        if len(set(names)) != len(names):
            raise ConfigError(
                "The 'versions' parameter of PolicyTimeline must have distinct names.",
                owner="PolicyTimeline",
                field="versions",
                value=names,
            )
        self._versions: tuple[PolicyConfig, ...] = tuple(vs)
        self._starts: list[int] = [date_ns(d) for d in dates]
        self._starts_arr = np.asarray(self._starts, dtype=np.int64)

    @classmethod
    def default(
        cls, *, intercept_threshold: float | None = None, review_threshold: float | None = None, **common: Any
    ) -> PolicyTimeline:
        """The default timeline: 2020-01-01 without a store gate, 2024-08-09 with the 4.80 gate.

        Parameters
        ----------
        intercept_threshold, review_threshold
            Applied to both versions (usually the model's thresholds).
        **common
            Other :class:`PolicyConfig` fields applied to both versions (e.g. ``audit_rate``).
        """
        kw = dict(common, intercept_threshold=intercept_threshold, review_threshold=review_threshold)
        return cls(
            [
                PolicyConfig(effective_from=date(2020, 1, 1), gate=None, **kw),
                PolicyConfig(effective_from=date(2024, 8, 9), **kw),
            ]
        )

    @property
    def versions(self) -> tuple[PolicyConfig, ...]:
        """The versions, oldest first."""
        return self._versions

    def version_at(self, ts: Any) -> PolicyConfig:
        """The version in force at ``ts`` (a timestamp; naive means UTC).

        Raises
        ------
        RequestError
            If ``ts`` is before the first version.
        """
        ns = field_ns(ts, "requested_at", required=True)
        i = bisect.bisect_right(self._starts, ns) - 1
        if i < 0:
            raise RequestError(
                f"requested_at {ts} is before the first policy version ({self._versions[0].effective_from}).",
                field="requested_at",
                value=ts,
            )
        return self._versions[i]

    def version_index(self, requested_at: pd.Series) -> np.ndarray:
        """Vectorised :meth:`version_at`: index into :attr:`versions` per row (-1 before the first)."""
        s = pd.Series(requested_at)
        ns = column_ns(s, "requested_at")
        if (ns == NAT).any():
            n_bad = int((ns == NAT).sum())
            raise SchemaError(f"Column 'requested_at' has {n_bad} missing value(s).", column="requested_at",
                              rule="required", n_bad=n_bad)
        return np.searchsorted(self._starts_arr, ns, side="right") - 1

    def with_thresholds(self, intercept: float | None, review: float | None) -> PolicyTimeline:
        """A copy where every version uses these thresholds."""
        return PolicyTimeline(
            v.replace(intercept_threshold=intercept, review_threshold=review) for v in self._versions
        )

    def to_dict(self) -> dict[str, Any]:
        """``{"versions": [PolicyConfig.to_dict(), ...]}``."""
        return {"versions": [v.to_dict() for v in self._versions]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PolicyTimeline:
        """Inverse of :meth:`to_dict`."""
        try:
            return cls(PolicyConfig.from_dict(v) for v in d["versions"])
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"PolicyTimeline.from_dict needs {{'versions': [...]}}: {exc}.", owner="PolicyTimeline",
                              field="versions", value=d) from exc

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PolicyTimeline) and self._versions == other._versions

    def __hash__(self) -> int:
        return hash(self._versions)

    def __repr__(self) -> str:
        return f"PolicyTimeline({[v.name for v in self._versions]})"


def _as_timeline(policy: PolicyTimeline | PolicyConfig) -> PolicyTimeline:
    if isinstance(policy, PolicyTimeline):
        return policy
    if isinstance(policy, PolicyConfig):
        return PolicyTimeline([policy])
    raise ConfigError(
        f"The policy must be a PolicyTimeline or a PolicyConfig. Got {type(policy).__name__} instead.",
        owner="policy",
        field="policy",
        value=policy,
    )


# ----------------------------------------------------------------------------- audit draw


def audit_draw(salt: str, refund_id: str) -> float:
    """The deterministic audit draw in [0, 1): first 8 bytes of sha256(salt + refund_id) / 2**64."""
    digest = hashlib.sha256((salt + refund_id).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 18446744073709551616.0


def _audit_draws(salt: str, refund_ids: Sequence[str]) -> np.ndarray:
    if not len(refund_ids):
        return np.empty(0, dtype=np.float64)
    salt_b = salt.encode("utf-8")
    digests = b"".join(hashlib.sha256(salt_b + r.encode("utf-8")).digest()[:8] for r in refund_ids)
    return np.frombuffer(digests, dtype=">u8").astype(np.float64) / 18446744073709551616.0


# ----------------------------------------------------------------------------- one request


def _is_missing_score(score: Any) -> bool:
    return score is None or (isinstance(score, float) and math.isnan(score))


def decide_one(
    policy: PolicyTimeline | PolicyConfig,
    *,
    refund_id: str,
    requested_at: Any,
    kind: str,
    buyer_id: str,
    store_score: float | None,
    provisional: bool,
    probability: float | Callable[[], float] | None = None,
    store_score_missing: bool | None = None,
    explain: Callable[[], Sequence[Mapping[str, Any]]] | None = None,
    explain_all: bool = False,
    always_score: bool = False,
    model_version: str = "",
) -> Decision:
    """Decide one refund request (online path, plain Python).

    Parameters
    ----------
    policy
        A timeline (the version in force at ``requested_at`` is used) or one version.
    refund_id, requested_at, kind, buyer_id
        The request; ``kind`` is ``refund_only`` or ``return_and_refund``.
    store_score
        The store's **published** score on the request day, or None/NaN when missing.
    provisional
        Whether that score is provisional.
    probability
        The calibrated abuse probability, or a zero-argument callable computing it
        (called only when the request must be scored, so gated requests cost nothing).
    store_score_missing
        Defaults to ``store_score`` being None/NaN.
    explain
        Zero-argument callable returning reason dicts (e.g. the model's top contributions);
        called only for review/intercept decided by the model, or always with ``explain_all``.
    always_score
        Score gated requests too (monitoring); their action is unchanged.
    model_version
        Copied into the decision.

    Returns
    -------
    Decision

    Raises
    ------
    RequestError
        On an unknown ``kind``, a bad timestamp, or a missing/invalid probability when one is needed.
    """
    cfg = _as_timeline(policy).version_at(requested_at)
    if kind not in REFUND_KINDS:
        raise RequestError(f"kind must be one of {list(REFUND_KINDS)}; got {kind!r}.", field="kind", value=kind)
    missing = _is_missing_score(store_score) or bool(store_score_missing)
    score = None if missing or _is_missing_score(store_score) else float(store_score)  # type: ignore[arg-type]
    provisional = bool(provisional)

    gated = False
    if cfg.gate is not None and kind in cfg.gate_kinds:
        if score is None:
            gated = cfg.gate_missing
        else:
            gated = score >= cfg.gate - _GATE_TOLERANCE and (cfg.gate_provisional or not provisional)
    audit = gated and audit_draw(cfg.audit_salt, refund_id) < cfg.audit_rate
    scored = (not gated) or audit or always_score

    p: float | None = None
    if scored:
        value = probability() if callable(probability) else probability
        if value is None or not (0.0 <= float(value) <= 1.0):
            raise RequestError(
                f"Request {refund_id!r} must be scored but its abuse probability is {value!r}.",
                field="probability",
                value=value,
            )
        p = float(value)

    reasons: list[Mapping[str, Any]] = []
    if gated:
        action = "merchant_handles"
    elif buyer_id in cfg.block_list:
        action = "intercept"
        reasons.append(_block_reason(buyer_id))
    elif buyer_id in cfg.allow_list:
        action = "approve"
    else:
        assert p is not None
        if cfg.intercept_threshold is not None and p >= cfg.intercept_threshold:
            action = "intercept"
        elif cfg.review_threshold is not None and p >= cfg.review_threshold:
            action = "review"
        else:
            action = "approve"
    by_model = action in ("review", "intercept") and not reasons
    if explain is not None and p is not None and (by_model or explain_all):
        reasons.extend(explain())
    return Decision(
        refund_id=refund_id,
        action=action,
        abuse_probability=p,
        store_score=score,
        store_score_missing=missing,
        provisional=provisional,
        audit=audit,
        reasons=tuple(dict(r) for r in reasons[:_MAX_REASONS]),
        model_version=model_version,
        policy_version=cfg.name or "",
    )


# ----------------------------------------------------------------------------- batch


def _object_array(items: list[Any]) -> np.ndarray:
    out = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):  # element-wise: numpy would broadcast equal-length lists
        out[i] = item
    return out

_REQUIRED = ("refund_id", "requested_at", "kind", "buyer_id", "store_score", "provisional")


def _bool_col(df: pd.DataFrame, name: str, default: np.ndarray | None = None) -> np.ndarray:
    if name not in df.columns:
        assert default is not None
        return default
    col = df[name]
    try:
        return col.astype("boolean").fillna(False).to_numpy(dtype=bool)
    except (TypeError, ValueError) as exc:
        raise SchemaError(f"Column {name!r} must be boolean; got dtype {col.dtype}.", column=name, rule="type") from exc


def gate_batch(
    requests: pd.DataFrame, policy: PolicyTimeline | PolicyConfig, *, always_score: bool = False
) -> pd.DataFrame:
    """The gate step for many requests: which are gated, audited and must be scored.

    Parameters
    ----------
    requests
        Columns ``refund_id, requested_at, kind, buyer_id, store_score`` (published,
        NaN when missing), ``provisional`` and optionally ``store_score_missing``.
    policy
        A timeline or one version.
    always_score
        Score gated requests too.

    Returns
    -------
    DataFrame
        Same index; columns ``version`` (index into ``timeline.versions``), ``gated``,
        ``audit``, ``needs_score``, ``store_score`` (NaN when missing),
        ``store_score_missing``, ``provisional``.
    """
    timeline = _as_timeline(policy)
    if not isinstance(requests, pd.DataFrame):
        raise SchemaError(f"requests must be a pandas DataFrame; got {type(requests).__name__}.")
    require_columns(requests, _REQUIRED, "requests")
    n = len(requests)
    vidx = timeline.version_index(requests["requested_at"])
    early = vidx < 0
    if early.any():
        raise SchemaError(
            f"{int(early.sum())} request(s) are before the first policy version "
            f"({timeline.versions[0].effective_from}).",
            column="requested_at",
            rule="before_first_policy",
            n_bad=int(early.sum()),
            values=requests["requested_at"][early].head(3).tolist(),
        )
    kind = requests["kind"].astype("str")
    bad_kind = ~kind.isin(REFUND_KINDS).to_numpy()
    if bad_kind.any():
        raise SchemaError(
            f"Column 'kind' has {int(bad_kind.sum())} value(s) outside {list(REFUND_KINDS)}.",
            column="kind",
            rule="enum",
            n_bad=int(bad_kind.sum()),
            values=requests["kind"][bad_kind].head(3).tolist(),
        )
    try:
        score = pd.to_numeric(requests["store_score"], errors="raise").to_numpy(dtype=np.float64, na_value=np.nan)
    except (TypeError, ValueError) as exc:
        raise SchemaError("Column 'store_score' must be numeric.", column="store_score", rule="type") from exc
    missing = _bool_col(requests, "store_score_missing", np.isnan(score)) | np.isnan(score)
    provisional = _bool_col(requests, "provisional")
    ids = requests["refund_id"].astype("str")  # (a Python string only for the rows drawn for audit)

    gated = np.zeros(n, dtype=bool)
    audit = np.zeros(n, dtype=bool)
    for i, cfg in enumerate(timeline.versions):
        rows = vidx == i
        if cfg.gate is None or not rows.any():
            continue
        in_kinds = kind.isin(sorted(cfg.gate_kinds)).to_numpy(dtype=bool)
        with np.errstate(invalid="ignore"):
            high = ~missing & (score >= cfg.gate - _GATE_TOLERANCE) & (cfg.gate_provisional | ~provisional)
        g = rows & in_kinds & (high | (missing & cfg.gate_missing))
        gated |= g
        if cfg.audit_rate > 0 and g.any():
            where = np.flatnonzero(g)
            audit[where] = _audit_draws(cfg.audit_salt, ids.iloc[where].tolist()) < cfg.audit_rate
    needs = ~gated | audit | bool(always_score)
    return pd.DataFrame(
        {
            "version": vidx,
            "gated": gated,
            "audit": audit,
            "needs_score": needs,
            "store_score": np.where(missing, np.nan, score),
            "store_score_missing": missing,
            "provisional": provisional,
        },
        index=requests.index,
    )


def decide_batch(
    requests: pd.DataFrame,
    policy: PolicyTimeline | PolicyConfig,
    *,
    probability: Any = None,
    explain: Callable[[np.ndarray], Sequence[Sequence[Mapping[str, Any]]]] | None = None,
    explain_all: bool = False,
    always_score: bool = False,
    model_version: str = "",
) -> pd.DataFrame:
    """Decide many requests at once (vectorised; equal to :func:`decide_one` row by row).

    Parameters
    ----------
    requests
        See :func:`gate_batch`.
    policy
        A timeline or one version.
    probability
        Calibrated probabilities aligned with ``requests`` (array-like; values of rows
        that are not scored are ignored), or a callable ``f(mask) -> array`` returning
        the probabilities of the rows selected by the boolean ``mask`` (only the rows
        that must be scored are asked for).
    explain
        Callable ``f(mask) -> list of reason lists`` for the rows selected by ``mask``
        (review/intercept decided by the model, or every scored row with ``explain_all``).
    always_score
        Score gated requests too.
    model_version
        Copied into every row.

    Returns
    -------
    DataFrame
        Columns :data:`DECISION_COLUMNS`, same index as ``requests``;
        ``abuse_probability`` and ``store_score`` are NaN when absent.

    Raises
    ------
    SchemaError
        On missing columns or bad values.
    DataError
        If a row that must be scored has no valid probability.
    """
    d = decide_arrays(requests, policy, probability=probability, explain_all=explain_all,
                      always_score=always_score)
    g, n = d.gate, len(d.gate)
    reasons: list[list[dict[str, Any]]] = [[] for _ in range(n)]
    for j, own in d.own_reasons().items():
        reasons[j].extend(own)
    want = d.explain
    if explain is not None and want.any():
        got_reasons = list(explain(want.copy()))
        if len(got_reasons) != int(want.sum()):
            raise DataError(f"explain(mask) returned {len(got_reasons)} reason lists for {int(want.sum())} rows.")
        for j, rs in zip(np.flatnonzero(want), got_reasons):
            reasons[j].extend(dict(r) for r in rs)
            del reasons[j][_MAX_REASONS:]  # (a block-list row alone holds one reason)

    out = pd.DataFrame(
        {
            "refund_id": requests["refund_id"].astype("str").to_numpy(),
            "action": pd.array(d.action, dtype="str"),
            "abuse_probability": d.probability,
            "store_score": g["store_score"].to_numpy(),
            "store_score_missing": g["store_score_missing"].to_numpy(),
            "provisional": g["provisional"].to_numpy(),
            "audit": g["audit"].to_numpy(),
            "reasons": _object_array(reasons),
            "model_version": pd.array([model_version] * n, dtype="str"),
            "policy_version": pd.array(d.policy_version.tolist(), dtype="str"),
        },
        index=requests.index,
    )
    return out


@dataclass(frozen=True)
class BatchDecisions:
    """:func:`decide_arrays`' result: the decisions of many requests as arrays, no list per row.

    Attributes
    ----------
    gate
        :func:`gate_batch`'s frame (``store_score``, ``store_score_missing``,
        ``provisional``, ``audit``, ``needs_score`` ...).
    action
        Object array of action names.
    probability
        The calibrated probability of every scored row, NaN elsewhere.
    policy_version
        Object array: the policy version's name of every row.
    buyers
        Object array of the requests' ``buyer_id`` (as text); ``None`` when no policy
        version has a block or allow list (no row is blocked then).
    blocked
        Rows whose one reason is their buyer's block list (:meth:`own_reasons`).
    explain
        Rows whose model reasons are asked for (decided by the model as review or
        intercept, or every scored row with ``explain_all``).
    """

    gate: pd.DataFrame
    action: np.ndarray
    probability: np.ndarray
    policy_version: np.ndarray
    buyers: np.ndarray | None
    blocked: np.ndarray
    explain: np.ndarray

    def own_reasons(self) -> dict[int, list[dict[str, Any]]]:
        """The policy's own reasons by row: the block list's, for the ``blocked`` rows."""
        return {int(j): [_block_reason(self.buyers[j])] for j in np.flatnonzero(self.blocked)}


def decide_arrays(
    requests: pd.DataFrame,
    policy: PolicyTimeline | PolicyConfig,
    *,
    probability: Any = None,
    explain_all: bool = False,
    always_score: bool = False,
) -> BatchDecisions:
    """:func:`decide_batch` without its per-row reason lists and frame (the batch engine's path).

    The actions, probabilities and versions are :func:`decide_batch`'s; the rows whose
    reasons it would fill are returned as masks (``blocked``, ``explain``), so a
    caller that builds the reasons in columns (:mod:`refundguard.batch`) creates no
    Python object per row. Parameters and errors as :func:`decide_batch`.
    """
    timeline = _as_timeline(policy)
    g = gate_batch(requests, timeline, always_score=always_score)
    n = len(g)
    needs = g["needs_score"].to_numpy()
    p = np.full(n, np.nan)
    if needs.any():
        if callable(probability):
            got = np.asarray(probability(needs.copy()), dtype=np.float64).reshape(-1)
            if got.shape[0] != int(needs.sum()):
                raise DataError(
                    f"probability(mask) returned {got.shape[0]} values for {int(needs.sum())} selected rows."
                )
            p[needs] = got
        elif probability is None:
            raise DataError(f"{int(needs.sum())} request(s) must be scored but no probability was given.")
        else:
            arr = np.asarray(pd.Series(probability).to_numpy(dtype=np.float64, na_value=np.nan)).reshape(-1)
            if arr.shape[0] != n:
                raise DataError(f"probability has {arr.shape[0]} values for {n} requests.")
            p[needs] = arr[needs]
    bad = needs & ~((p >= 0) & (p <= 1))
    if bad.any():
        raise DataError(
            f"{int(bad.sum())} request(s) must be scored but have no valid probability (NaN or outside [0, 1]).",
            detail={"refund_ids": requests["refund_id"][bad].head(5).tolist()},
        )

    vidx = g["version"].to_numpy()
    gated = g["gated"].to_numpy()
    # (the buyers as Python strings only where a version lists some)
    listed = any(cfg.block_list or cfg.allow_list for cfg in timeline.versions)
    buyers = requests["buyer_id"].astype("str").to_numpy(dtype=object) if listed else None
    blocked = np.zeros(n, dtype=bool)
    allowed = np.zeros(n, dtype=bool)
    hi = np.zeros(n, dtype=bool)
    mid = np.zeros(n, dtype=bool)
    names = np.empty(n, dtype=object)
    for i, cfg in enumerate(timeline.versions):
        rows = vidx == i
        if not rows.any():
            continue
        names[rows] = cfg.name
        if cfg.block_list:
            blocked |= rows & np.isin(buyers, sorted(cfg.block_list))
        if cfg.allow_list:
            allowed |= rows & np.isin(buyers, sorted(cfg.allow_list))
        with np.errstate(invalid="ignore"):
            if cfg.intercept_threshold is not None:
                hi |= rows & (p >= cfg.intercept_threshold)
            if cfg.review_threshold is not None:
                mid |= rows & (p >= cfg.review_threshold)
    action = np.select(
        [gated, blocked, allowed, hi, mid],
        ["merchant_handles", "intercept", "approve", "intercept", "review"],
        default="approve",
    ).astype(object)

    block_rows = ~gated & blocked
    by_model = ~gated & ~blocked & ~allowed & (hi | mid)
    want = needs & (by_model | (bool(explain_all) & np.ones(n, dtype=bool)))
    return BatchDecisions(gate=g, action=action, probability=np.where(needs, p, np.nan), policy_version=names,
                          buyers=buyers, blocked=block_rows, explain=want)
