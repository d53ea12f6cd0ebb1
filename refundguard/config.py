"""Frozen, validated configuration objects.

Every configuration is a frozen dataclass checked in ``__post_init__``: a bad
value raises :class:`~refundguard.errors.ConfigError` naming the field, the
constraint and the value received, in scikit-learn's style. Each class has
``to_dict()`` / ``from_dict()`` (JSON-serialisable, used by model artifacts) and
a stable ``config_hash()`` (sha256 of the canonical JSON).

Sections: ``ScoreConfig`` (store experience score) and ``PolicyConfig`` (one dated
version of the decision policy; the rules that use its values live in
:mod:`refundguard.policy`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

from refundguard._io import atomic_write_text
from refundguard._params import is_python_real
from refundguard.errors import ConfigError

__all__ = [
    "DIMENSIONS",
    "INDICATORS",
    "INDICATOR_DIMENSION",
    "HIGHER_IS_BETTER",
    "ScoreConfig",
    "REFUND_KINDS",
    "DEFAULT_GATE",
    "PolicyConfig",
]


_fail = ConfigError.invalid


def _checked_fields(cls: type, d: Any) -> dict[str, Any]:
    """``d`` as keyword arguments of the dataclass ``cls``; unknown keys are a ConfigError."""
    if not isinstance(d, Mapping):
        raise _fail(cls.__name__, "d", "a mapping (the output of to_dict)", d)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise _fail(cls.__name__, unknown[0], f"one of {sorted(known)}", d[unknown[0]])
    return dict(d)


def _canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


# --------------------------------------------------------------------------- ScoreConfig
#: The three dimensions of the store experience score, in display order.
DIMENSIONS: tuple[str, ...] = ("product", "logistics", "service")

#: The seven indicators, in display order.
INDICATORS: tuple[str, ...] = (
    "quality_refund_rate",
    "good_review_rate",
    "pickup_48h_rate",
    "delivery_hours",
    "refund_handling_hours",
    "dispute_rate",
    "response_3min_rate",
)

#: The dimension each indicator belongs to.
INDICATOR_DIMENSION: Mapping[str, str] = MappingProxyType(
    {
        "quality_refund_rate": "product",
        "good_review_rate": "product",
        "pickup_48h_rate": "logistics",
        "delivery_hours": "logistics",
        "refund_handling_hours": "service",
        "dispute_rate": "service",
        "response_3min_rate": "service",
    }
)

#: Whether a higher indicator value is better.
HIGHER_IS_BETTER: Mapping[str, bool] = MappingProxyType(
    {
        "quality_refund_rate": False,
        "good_review_rate": True,
        "pickup_48h_rate": True,
        "delivery_hours": False,
        "refund_handling_hours": False,
        "dispute_rate": False,
        "response_3min_rate": True,
    }
)

_RATES = frozenset(
    {"quality_refund_rate", "good_review_rate", "pickup_48h_rate", "dispute_rate", "response_3min_rate"}
)

_DEFAULT_DIMENSION_WEIGHTS = {"product": 0.25, "logistics": 0.25, "service": 0.50}
_DEFAULT_INDICATOR_WEIGHTS = {
    "quality_refund_rate": 0.7,
    "good_review_rate": 0.3,
    "pickup_48h_rate": 0.7,
    "delivery_hours": 0.3,
    "refund_handling_hours": 0.4,
    "dispute_rate": 0.3,
    "response_3min_rate": 0.3,
}
# The values earning 0, 1, 2, 3, 4 and 5 points ("*": every category). Reviewed
# against the public Taobao samples (background/store-experience-score.md, 1.2):
# good reviews 97.24% -> 4.8, 100% -> 5; 48h pickup 100% -> 5; delivery 40.42 h -> 5;
# 3-minute response 85% -> 4.0; refund handling 1.34 h -> 5; help-request
# (dispute) rate 0.04% -> 5; negative product feedback 0.13-0.21% -> 5.
# refund_handling_hours runs from request to resolution (DESIGN.md section 3), so it
# includes the days a return_and_refund parcel travels back: its anchors are wider
# than Taobao's merchant handling time (1.34 h there still earns 5 points here).
_DEFAULT_BANDS = {
    "quality_refund_rate": {"*": (0.10, 0.06, 0.04, 0.025, 0.015, 0.005)},
    "good_review_rate": {"*": (0.60, 0.70, 0.80, 0.86, 0.90, 0.99)},
    "pickup_48h_rate": {"*": (0.50, 0.70, 0.80, 0.90, 0.95, 0.99)},
    "delivery_hours": {"*": (168.0, 120.0, 96.0, 72.0, 60.0, 48.0)},
    "refund_handling_hours": {"*": (168.0, 120.0, 72.0, 48.0, 24.0, 8.0)},
    "dispute_rate": {"*": (0.02, 0.01, 0.005, 0.003, 0.002, 0.001)},
    "response_3min_rate": {"*": (0.40, 0.55, 0.70, 0.80, 0.85, 0.95)},
}
_DEFAULT_PSEUDO_COUNTS = {
    "quality_refund_rate": 50.0,
    "good_review_rate": 10.0,
    "pickup_48h_rate": 20.0,
    "delivery_hours": 10.0,
    "refund_handling_hours": 5.0,
    "dispute_rate": 50.0,
    "response_3min_rate": 20.0,
}
_DEFAULT_MIN_COUNTS = {
    "quality_refund_rate": 10,
    "good_review_rate": 3,
    "pickup_48h_rate": 5,
    "delivery_hours": 5,
    "refund_handling_hours": 1,
    "dispute_rate": 10,
    "response_3min_rate": 5,
}


def _freeze_bands(bands: Mapping[str, Mapping[str, Any]]) -> Mapping[str, Mapping[str, tuple[float, ...]]]:
    out = {}
    for ind, per_cat in bands.items():
        out[ind] = MappingProxyType({str(c): tuple(float(v) for v in a) for c, a in per_cat.items()})
    return MappingProxyType(out)


@dataclass(frozen=True)
class ScoreConfig:
    """Everything that defines the store experience score.

    Parameters
    ----------
    window_days : int, default 30
        Length of the rolling window ``[as_of - window_days, as_of)`` in days.
    min_orders : int, default 30
        A store with fewer orders (by ``paid_at``) in the window is ``provisional``.
    timezone : str, default "UTC"
        Time zone of the daily buckets: a date ``as_of`` means its 00:00 there.
    dimension_weights : mapping, default product 0.25, logistics 0.25, service 0.50
        Weight of each dimension in the total; must sum to 1.
    indicator_weights : mapping
        Weight of each indicator within its dimension; each dimension's weights sum to 1.
    bands : mapping indicator -> category -> six floats
        The indicator values earning 0, 1, 2, 3, 4 and 5 points, strictly monotone in
        the "better" direction (increasing when higher is better, decreasing
        otherwise). Every indicator needs a ``"*"`` entry used for other categories.
    pseudo_counts : mapping indicator -> float > 0
        Strength (in events) of the shrinkage toward the category mean.
    min_counts : mapping indicator -> int >= 1
        An indicator whose denominator is below this is "not assessed".

    Notes
    -----
    Mappings are copied into read-only mappings, so a config never changes after
    construction. The 4.80 gate is not here: it belongs to the decision policy.
    """

    window_days: int = 30
    min_orders: int = 30
    timezone: str = "UTC"
    dimension_weights: Mapping[str, float] = field(default_factory=lambda: dict(_DEFAULT_DIMENSION_WEIGHTS))
    indicator_weights: Mapping[str, float] = field(default_factory=lambda: dict(_DEFAULT_INDICATOR_WEIGHTS))
    bands: Mapping[str, Mapping[str, tuple[float, ...]]] = field(
        default_factory=lambda: {k: dict(v) for k, v in _DEFAULT_BANDS.items()}
    )
    pseudo_counts: Mapping[str, float] = field(default_factory=lambda: dict(_DEFAULT_PSEUDO_COUNTS))
    min_counts: Mapping[str, int] = field(default_factory=lambda: dict(_DEFAULT_MIN_COUNTS))

    def __post_init__(self) -> None:  # noqa: C901 - one check per field, in order
        own = "ScoreConfig"
        wd = self.window_days
        if isinstance(wd, bool) or not isinstance(wd, int) or not 1 <= wd <= 3660:
            raise _fail(own, "window_days", "an int in [1, 3660]", wd)
        mo = self.min_orders
        if isinstance(mo, bool) or not isinstance(mo, int) or mo < 0:
            raise _fail(own, "min_orders", "an int >= 0", mo)
        tz = self.timezone
        if not isinstance(tz, str) or not tz:
            raise _fail(own, "timezone", "a time zone name such as 'UTC' or 'Asia/Shanghai'", tz)
        try:
            import pandas as pd

            pd.Timestamp("2020-01-01").tz_localize(tz)
        except Exception as exc:  # unknown zone names raise various errors
            raise _fail(own, "timezone", "a time zone name such as 'UTC' or 'Asia/Shanghai'", tz) from exc

        # weights
        dw = self._check_mapping("dimension_weights", self.dimension_weights, DIMENSIONS)
        for k, v in dw.items():
            if not is_python_real(v) or not 0.0 <= v <= 1.0:
                raise _fail(own, "dimension_weights", f"a mapping of floats in [0, 1] (bad {k!r})", v)
        if not math.isclose(sum(dw.values()), 1.0, abs_tol=1e-9):
            raise _fail(own, "dimension_weights", "a mapping whose weights sum to 1", dict(dw))
        iw = self._check_mapping("indicator_weights", self.indicator_weights, INDICATORS)
        for k, v in iw.items():
            if not is_python_real(v) or not 0.0 <= v <= 1.0:
                raise _fail(own, "indicator_weights", f"a mapping of floats in [0, 1] (bad {k!r})", v)
        for dim in DIMENSIONS:
            tot = sum(iw[i] for i in INDICATORS if INDICATOR_DIMENSION[i] == dim)
            if not math.isclose(tot, 1.0, abs_tol=1e-9):
                raise _fail(own, "indicator_weights", f"weights summing to 1 within dimension {dim!r} (sum {tot!r})", dict(iw))

        # bands
        if not isinstance(self.bands, Mapping):
            raise _fail(own, "bands", "a mapping indicator -> category -> six anchors", self.bands)
        self._check_mapping("bands", self.bands, INDICATORS)
        for ind in INDICATORS:
            per_cat = self.bands[ind]
            if not isinstance(per_cat, Mapping) or "*" not in per_cat:
                raise _fail(own, "bands", f"a mapping with a '*' entry for {ind!r}", per_cat)
            for cat, anchors in per_cat.items():
                if not isinstance(cat, str) or not cat:
                    raise _fail(own, "bands", f"keyed by non-empty category strings (indicator {ind!r})", cat)
                if isinstance(anchors, (str, bytes)) or not hasattr(anchors, "__len__") or len(anchors) != 6:
                    raise _fail(own, "bands", f"six anchors (0..5 points) for {ind!r}/{cat!r}", anchors)
                if not all(is_python_real(a) and math.isfinite(a) for a in anchors):
                    raise _fail(own, "bands", f"finite numbers for {ind!r}/{cat!r}", anchors)
                a = [float(x) for x in anchors]
                up = HIGHER_IS_BETTER[ind]
                ok = all((a[i + 1] > a[i]) if up else (a[i + 1] < a[i]) for i in range(5))
                if not ok:
                    word = "increasing" if up else "decreasing"
                    raise _fail(own, "bands", f"strictly {word} anchors for {ind!r}/{cat!r}", tuple(anchors))
                if min(a) < 0 or (ind in _RATES and max(a) > 1.0):
                    raise _fail(own, "bands", f"anchors within the indicator's range for {ind!r}/{cat!r}", tuple(anchors))

        pc = self._check_mapping("pseudo_counts", self.pseudo_counts, INDICATORS)
        for k, v in pc.items():
            if not is_python_real(v) or not (math.isfinite(v) and v > 0):
                raise _fail(own, "pseudo_counts", f"a mapping of finite floats > 0 (bad {k!r})", v)
        mc = self._check_mapping("min_counts", self.min_counts, INDICATORS)
        for k, v in mc.items():
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise _fail(own, "min_counts", f"a mapping of ints >= 1 (bad {k!r})", v)

        object.__setattr__(self, "dimension_weights", MappingProxyType({k: float(dw[k]) for k in DIMENSIONS}))
        object.__setattr__(self, "indicator_weights", MappingProxyType({k: float(iw[k]) for k in INDICATORS}))
        object.__setattr__(self, "bands", _freeze_bands({k: self.bands[k] for k in INDICATORS}))
        object.__setattr__(self, "pseudo_counts", MappingProxyType({k: float(pc[k]) for k in INDICATORS}))
        object.__setattr__(self, "min_counts", MappingProxyType({k: int(mc[k]) for k in INDICATORS}))

    @staticmethod
    def _check_mapping(name: str, value: Any, keys: tuple[str, ...]) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise _fail("ScoreConfig", name, f"a mapping with keys {list(keys)}", value)
        if set(value) != set(keys):
            missing = sorted(set(keys) - set(value))
            extra = sorted(set(value) - set(keys))
            raise _fail("ScoreConfig", name, f"a mapping with exactly the keys {list(keys)} (missing {missing}, unknown {extra})", dict(value))
        return value

    # ------------------------------------------------------------------ helpers
    def anchors(self, indicator: str, category: str | None) -> tuple[float, ...]:
        """The six anchors used for ``indicator`` in ``category`` (``"*"`` fallback)."""
        per_cat = self.bands[indicator]
        if category is not None and category in per_cat:
            return per_cat[category]
        return per_cat["*"]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict; ``ScoreConfig.from_dict(c.to_dict()) == c``."""
        return {
            "window_days": self.window_days,
            "min_orders": self.min_orders,
            "timezone": self.timezone,
            "dimension_weights": dict(self.dimension_weights),
            "indicator_weights": dict(self.indicator_weights),
            "bands": {ind: {c: list(a) for c, a in sorted(pc.items())} for ind, pc in self.bands.items()},
            "pseudo_counts": dict(self.pseudo_counts),
            "min_counts": dict(self.min_counts),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ScoreConfig:
        """Build a config from :meth:`to_dict` output (validated)."""
        kw = _checked_fields(cls, d)
        if "bands" in kw and isinstance(kw["bands"], Mapping):
            kw["bands"] = {
                ind: ({c: tuple(a) for c, a in pc.items()} if isinstance(pc, Mapping) else pc)
                for ind, pc in kw["bands"].items()
            }
        return cls(**kw)

    def to_json(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`to_dict` as JSON to ``path`` (atomically: a temporary file, then a rename)."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> ScoreConfig:
        """Read a config written by :meth:`to_json` (validated).

        Raises
        ------
        ConfigError
            The file is missing, unreadable, not JSON, or not a valid configuration.
        """
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise _fail("ScoreConfig", "path", f"a readable JSON file ({type(exc).__name__}: {exc})", str(path)) from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise _fail("ScoreConfig", "path", f"a JSON file ({exc})", str(path)) from None
        return cls.from_dict(data)

    def config_hash(self) -> str:
        """sha256 (hex) of the canonical JSON of :meth:`to_dict`; stable across runs."""
        return hashlib.sha256(_canonical_json(self.to_dict()).encode("utf-8")).hexdigest()

    def replace(self, **changes: Any) -> ScoreConfig:
        """A copy with some fields changed (validated)."""
        d = self.to_dict()
        d.update(changes)
        return ScoreConfig.from_dict(d)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ScoreConfig):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(self.config_hash())


# --------------------------------------------------------------------------- PolicyConfig

#: The two refund kinds of the data contract.
REFUND_KINDS: tuple[str, ...] = ("refund_only", "return_and_refund")

#: The default store gate: a request to a store whose published score is at or above
#: it is left to the merchant (:attr:`PolicyConfig.gate`). Read it from here; never
#: re-type the number.
DEFAULT_GATE: float = 4.80


def _as_date(owner: str, name: str, value: Any) -> Any:
    from datetime import date, datetime

    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value[:10])
        except ValueError:
            pass
    raise _fail(owner, name, "a date (datetime.date or 'YYYY-MM-DD')", value)


def _as_id_set(owner: str, name: str, value: Any) -> frozenset[str]:
    if isinstance(value, str) or not hasattr(value, "__iter__"):
        raise _fail(owner, name, "a collection of buyer ids (str)", value)
    items = list(value)
    bad = [v for v in items if not isinstance(v, str) or not v]
    if bad:
        raise _fail(owner, name, "a collection of non-empty str buyer ids", bad[:3])
    return frozenset(items)


@dataclass(frozen=True)
class PolicyConfig:
    """One dated version of the refund decision policy (DESIGN.md section 6).

    Parameters
    ----------
    effective_from : date, default 2024-08-09
        The version applies to requests at or after 00:00 UTC of this date (until
        the next version's date).
    gate : float or None, default :data:`DEFAULT_GATE` (4.80)
        Store gate: a request to a store whose **published** score is >= ``gate`` is
        left to the merchant. ``None`` disables the gate.
    gate_kinds : frozenset of str, default both kinds
        Refund kinds the gate applies to.
    gate_provisional : bool, default False
        Whether stores with a provisional score can be gated.
    gate_missing : bool, default False
        Whether a request whose store score is missing is gated.
    intercept_threshold, review_threshold : float in [0, 1] or None
        Calibrated probability at or above which a request is intercepted / reviewed;
        ``None`` disables that action. ``review_threshold <= intercept_threshold``.
    block_list, allow_list : frozenset of str
        Buyer ids always intercepted / always approved (block wins).
    audit_rate : float in [0, 1], default 0.01
        Share of gated requests scored anyway (flagged ``audit=True``).
    audit_salt : str
        Salt of the deterministic audit draw ``sha256(salt + refund_id)``.
    name : str or None
        The version's name in decisions (``policy_version``); default the ISO date.
    """

    effective_from: Any = "2024-08-09"
    gate: float | None = DEFAULT_GATE
    gate_kinds: frozenset[str] = frozenset(REFUND_KINDS)
    gate_provisional: bool = False
    gate_missing: bool = False
    intercept_threshold: float | None = None
    review_threshold: float | None = None
    block_list: frozenset[str] = frozenset()
    allow_list: frozenset[str] = frozenset()
    audit_rate: float = 0.01
    audit_salt: str = "refundguard-audit-v1"
    name: str | None = None

    def __post_init__(self) -> None:  # noqa: C901 - one check per field, in order
        own = "PolicyConfig"
        set_ = object.__setattr__
        set_(self, "effective_from", _as_date(own, "effective_from", self.effective_from))
        g = self.gate
        if g is not None:
            if not is_python_real(g) or not 0.0 <= float(g) <= 5.0:
                raise _fail(own, "gate", "None or a float in [0.0, 5.0]", g)
            set_(self, "gate", float(g))
        kinds = self.gate_kinds
        if isinstance(kinds, str) or not hasattr(kinds, "__iter__"):
            raise _fail(own, "gate_kinds", f"a collection of refund kinds from {list(REFUND_KINDS)}", kinds)
        kinds = frozenset(kinds)
        if not kinds <= set(REFUND_KINDS):
            raise _fail(own, "gate_kinds", f"a collection of refund kinds from {list(REFUND_KINDS)}", sorted(map(str, kinds)))
        set_(self, "gate_kinds", kinds)
        for name in ("gate_provisional", "gate_missing"):
            if not isinstance(getattr(self, name), bool):
                raise _fail(own, name, "a bool", getattr(self, name))
        for name in ("intercept_threshold", "review_threshold"):
            v = getattr(self, name)
            if v is not None:
                if not is_python_real(v) or not 0.0 <= float(v) <= 1.0:
                    raise _fail(own, name, "None or a float in [0.0, 1.0]", v)
                set_(self, name, float(v))
        if (
            self.intercept_threshold is not None
            and self.review_threshold is not None
            and self.review_threshold > self.intercept_threshold
        ):
            raise _fail(own, "review_threshold", f"<= intercept_threshold ({self.intercept_threshold})", self.review_threshold)
        set_(self, "block_list", _as_id_set(own, "block_list", self.block_list))
        set_(self, "allow_list", _as_id_set(own, "allow_list", self.allow_list))
        ar = self.audit_rate
        if not is_python_real(ar) or not 0.0 <= float(ar) <= 1.0:
            raise _fail(own, "audit_rate", "a float in [0.0, 1.0]", ar)
        set_(self, "audit_rate", float(ar))
        if not isinstance(self.audit_salt, str):
            raise _fail(own, "audit_salt", "a str", self.audit_salt)
        if self.name is None:
            set_(self, "name", self.effective_from.isoformat())
        elif not isinstance(self.name, str) or not self.name:
            raise _fail(own, "name", "None or a non-empty str", self.name)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict; ``PolicyConfig.from_dict(c.to_dict()) == c``."""
        return {
            "effective_from": self.effective_from.isoformat(),
            "gate": self.gate,
            "gate_kinds": sorted(self.gate_kinds),
            "gate_provisional": self.gate_provisional,
            "gate_missing": self.gate_missing,
            "intercept_threshold": self.intercept_threshold,
            "review_threshold": self.review_threshold,
            "block_list": sorted(self.block_list),
            "allow_list": sorted(self.allow_list),
            "audit_rate": self.audit_rate,
            "audit_salt": self.audit_salt,
            "name": self.name,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PolicyConfig:
        """Build a config from :meth:`to_dict` output (validated)."""
        return cls(**_checked_fields(cls, d))

    def config_hash(self) -> str:
        """sha256 (hex) of the canonical JSON of :meth:`to_dict`."""
        return hashlib.sha256(_canonical_json(self.to_dict()).encode("utf-8")).hexdigest()

    def replace(self, **changes: Any) -> PolicyConfig:
        """A copy with some fields changed (validated)."""
        d = self.to_dict()
        d.update(changes)
        if "effective_from" in changes and "name" not in changes and d["name"] == self.effective_from.isoformat():
            d["name"] = None
        return PolicyConfig.from_dict(d)
