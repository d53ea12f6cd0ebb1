"""One period scored once, with its labels: the input of the report and the what-if replays.

:func:`score_period` decides every refund requested in ``[start, end)`` with
:meth:`RefundGuard.score_history` and ``always_score=True`` (so requests behind the
store gate carry a probability too, their action unchanged), then attaches the
label ``is_abuse`` from the refunds table and the request's day in the score time
zone. The decisions it holds are those of the model's own policy timeline: the
report describes them and the what-if replays take them as what happened.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from refundguard._time import NS_PER_DAY, day_index, parameter_ns, series_ns
from refundguard.errors import DataError
from refundguard.guard import RefundGuard
from refundguard.pipeline import canonical_tables

__all__ = ["ScoredPeriod", "TableReport", "as_guard", "score_period"]


class TableReport:
    """Text and CSV output of a report holding a ``table`` and its ``lines()`` (drift, what-if)."""

    table: pd.DataFrame

    def lines(self) -> list[str]:  # pragma: no cover - each report writes its own
        raise NotImplementedError

    def to_text(self) -> str:
        """:meth:`lines` joined by newlines."""
        return "\n".join(self.lines())

    def to_csv(self, path: str | Path) -> Path:
        """Write :attr:`table` as CSV (atomically)."""
        from refundguard._io import atomic_target

        target = Path(path)
        with atomic_target(target) as tmp:
            self.table.to_csv(tmp, index=False)
        return target


def as_guard(model: RefundGuard | str | Path) -> RefundGuard:
    """A :class:`RefundGuard` as given, or loaded (and verified) from a model folder."""
    return model if isinstance(model, RefundGuard) else RefundGuard.load(model)


@dataclass(frozen=True, eq=False)
class ScoredPeriod:
    """Every refund of a period, decided and scored, with its label.

    Attributes
    ----------
    rows
        :meth:`RefundGuard.score_history` columns (without ``reasons``), every row
        with its ``abuse_probability``, plus ``is_abuse`` (nullable boolean: ``<NA>``
        when the refund has no label) and ``day`` (day number in the score time
        zone, days since 1970-01-01).
    first_day, n_days
        The period's first day number and its length in days (from ``start`` or
        the first request to ``end`` or the last request).
    timezone
        The score time zone the days are counted in.
    model_version
        The model that scored the period.
    start, end
        The bounds asked for (``None``: unbounded).
    """

    rows: pd.DataFrame
    first_day: int
    n_days: int
    timezone: str
    model_version: str
    start: Any = None
    end: Any = None

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def period_text(self) -> str:
        """The period as ``YYYY-MM-DD to YYYY-MM-DD`` (first and last day, both included)."""
        first = pd.Timestamp(self.first_day * NS_PER_DAY).date()
        last = pd.Timestamp((self.first_day + self.n_days - 1) * NS_PER_DAY).date()
        return f"{first} to {last}"


def _labels(refunds: pd.DataFrame, refund_ids: pd.Series) -> pd.Series:
    """``is_abuse`` of each refund id (nullable boolean; ``<NA>`` when unknown or absent)."""
    if "is_abuse" not in refunds.columns:
        return pd.Series(pd.array([pd.NA] * len(refund_ids), dtype="boolean"), index=refund_ids.index)
    by_id = pd.Series(refunds["is_abuse"].astype("boolean").to_numpy(), index=refunds["refund_id"].astype(str))
    return pd.Series(by_id.reindex(refund_ids.astype(str)).to_numpy(), index=refund_ids.index, dtype="boolean")


def _day_bound(value: Any, name: str, tz: str, *, last: bool) -> int | None:
    ns = parameter_ns(value, name, "score_period", optional=True)
    if ns is None:
        return None
    return int(day_index(np.array([ns - 1 if last else ns], dtype=np.int64), tz)[0])


def score_period(
    model: RefundGuard | str | Path,
    tables: Mapping[str, pd.DataFrame],
    start: Any = None,
    end: Any = None,
    *,
    validate_tables: bool = True,
    progress: bool = False,
) -> ScoredPeriod:
    """Score every refund requested in ``[start, end)`` once, with its label and day.

    Parameters
    ----------
    model
        A :class:`RefundGuard` or a model folder.
    tables
        The contract's tables (validated in strict mode unless ``validate_tables=False``).
    start, end
        Half-open bounds on ``requested_at``; ``None`` is unbounded.
    validate_tables
        Validate the input first.
    progress
        Show a progress bar while the features are built.

    Returns
    -------
    ScoredPeriod

    Raises
    ------
    DataError
        No refund was requested in the period.
    """
    guard = as_guard(model)
    tz = guard.score_config.timezone
    first_bound = _day_bound(start, "start", tz, last=False)
    last_bound = _day_bound(end, "end", tz, last=True)
    clean = canonical_tables(tables, validate_tables)
    scored = guard.score_history(clean, start, end, always_score=True, validate_tables=False, progress=progress)
    if not len(scored):
        raise DataError(
            f"No refund requested in [{start}, {end}): nothing to report on.",
            detail={"start": str(start), "end": str(end)},
        )
    rows = scored.drop(columns=["reasons"])
    rows["is_abuse"] = _labels(clean["refunds"], rows["refund_id"])
    rows["day"] = day_index(series_ns(rows["requested_at"]), tz)
    first = int(rows["day"].min()) if first_bound is None else min(first_bound, int(rows["day"].min()))
    last = int(rows["day"].max()) if last_bound is None else max(last_bound, int(rows["day"].max()))
    return ScoredPeriod(
        rows=rows,
        first_day=first,
        n_days=last - first + 1,
        timezone=tz,
        model_version=guard.model_version,
        start=start,
        end=end,
    )
