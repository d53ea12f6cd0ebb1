"""The published store scores an online store reads: one row per (store, day) (private).

Both ProfileStore backends keep the daily score history in process (it is one
small table per day, the same for every replica) and read the row of the request
day ``D = floor(t)`` in the score time zone, as :func:`refundguard.profiles.profiles_as_of`
does.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from refundguard._time import NS_PER_DAY, TimeValueError, day_start_ns, floor_day_ns, label_days
from refundguard.config import ScoreConfig
from refundguard.errors import DataError, SchemaError
from refundguard.tables import require_columns

__all__ = ["ScoreTable", "SCORE_COLUMNS"]

SCORE_COLUMNS = ("store_id", "as_of", "score", "product", "logistics", "service", "provisional")
_QUARTER_HOUR = NS_PER_DAY // 96


def _opt(v: float) -> float | None:
    return None if math.isnan(v) else float(v)


class ScoreTable:
    """Store score rows by (store, day start in UTC ns).

    Parameters
    ----------
    config
        Gives the time zone of the days.
    """

    def __init__(self, config: ScoreConfig) -> None:
        self.tz = config.timezone
        self.min_orders = config.min_orders
        self.rows: dict[tuple[str, int], tuple[Any, ...]] = {}
        self.frame = pd.DataFrame({"store_id": pd.Series(dtype="str"),
                                   "day": pd.Series(dtype="int64"),
                                   "category": pd.Series(dtype="str"),
                                   **{c: pd.Series(dtype="float64") for c in ("score", "product", "logistics",
                                                                               "service")},
                                   "provisional": pd.Series(dtype="bool")})
        self._floor_cache: dict[int, int] = {}

    def set_history(self, history: pd.DataFrame) -> None:
        """Replace the rows with a history (``store_id, as_of, score, product, logistics, service,
        provisional`` and optional ``category``)."""
        require_columns(history, SCORE_COLUMNS, "store_scores")
        try:
            day = day_start_ns(label_days(history["as_of"], self.tz), self.tz)
        except TimeValueError as exc:
            raise SchemaError(f"Column 'store_scores.as_of' must hold dates or timestamps: {exc}.",
                              table="store_scores", column="as_of", rule="type") from None
        cat = (history["category"].astype("str") if "category" in history.columns
               else pd.Series(np.nan, index=history.index, dtype="str"))
        frame = pd.DataFrame({
            "store_id": history["store_id"].astype("str").to_numpy(),
            "day": np.asarray(day, dtype=np.int64),
            "category": cat.to_numpy(),
            **{c: history[c].astype("float64").to_numpy() for c in ("score", "product", "logistics", "service")},
            "provisional": history["provisional"].astype("boolean").fillna(True).to_numpy(bool),
        })
        frame["category"] = frame["category"].astype("str")
        self.set_frame(frame)

    def set_frame(self, frame: pd.DataFrame) -> None:
        """Replace the rows with a normalised frame (``store_id, day, category, score, product,
        logistics, service, provisional``), as :attr:`frame` holds them."""
        dup = frame.duplicated(["store_id", "day"])
        if dup.any():
            stores = frame.loc[dup, "store_id"].head(5).tolist()
            raise DataError(f"store score history has duplicated (store_id, as_of) rows, e.g. stores {stores}.",
                            detail={"stores": stores})
        cols = [frame[c].to_numpy(np.float64) for c in ("score", "product", "logistics", "service")]
        prov = frame["provisional"].to_numpy(bool)
        cats = frame["category"].astype(object).to_numpy()
        rows = {}
        for k, (sid, d) in enumerate(zip(frame["store_id"].astype(object).to_numpy(),
                                         frame["day"].to_numpy(np.int64).tolist(), strict=True)):
            c = cats[k]
            rows[(sid, d)] = (*(_opt(col[k]) for col in cols), bool(prov[k]),
                              None if not isinstance(c, str) else c)
        self.rows, self.frame = rows, frame.reset_index(drop=True)

    def day(self, t: int) -> int:
        """UTC ns of 00:00 (score time zone) of the day of ``t``."""
        if self.tz == "UTC":
            return t - t % NS_PER_DAY
        bucket = t - t % _QUARTER_HOUR  # every zone's midnight falls on a quarter hour
        d = self._floor_cache.get(bucket)
        if d is None:
            if len(self._floor_cache) > 100_000:
                self._floor_cache.clear()
            d = int(floor_day_ns(np.array([bucket], dtype=np.int64), self.tz)[0])
            self._floor_cache[bucket] = d
        return d

    def values(self, store: str, t: int, n_orders: int, n_refunds: int, n_24h: int) -> dict[str, Any]:
        """Every :class:`~refundguard.profiles.StoreProfile` field."""
        row = self.rows.get((store, self.day(t)))
        if row is None:
            return {"score": None, "product": None, "logistics": None, "service": None,
                    "provisional": self.min_orders > 0, "score_missing": True,
                    "n_orders_30d": n_orders, "n_refunds_30d": n_refunds,
                    "refund_rate_30d": n_refunds / n_orders if n_orders else None,
                    "n_refunds_24h": n_24h, "category": None}
        score, product, logistics, service, provisional, category = row
        return {"score": score, "product": product, "logistics": logistics, "service": service,
                "provisional": provisional, "score_missing": score is None,
                "n_orders_30d": n_orders, "n_refunds_30d": n_refunds,
                "refund_rate_30d": n_refunds / n_orders if n_orders else None,
                "n_refunds_24h": n_24h, "category": category}
