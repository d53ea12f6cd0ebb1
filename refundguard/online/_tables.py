"""The order and refund rows an in-memory ProfileStore keeps (private): ids plus a few numeric columns.

Rows are append-only; ids live in an :class:`~refundguard.online._ids.IdIndex`
(about 30 bytes each). An order row costs 52 bytes of columns, a refund row 38.
"""

from __future__ import annotations

import numpy as np

from refundguard._time import NAT
from refundguard.online._ids import IdIndex

__all__ = ["Columns", "ORDER_COLUMNS", "REFUND_COLUMNS", "F_ONLY", "F_NR", "F_CLAIM", "F_RESOLVED",
           "F_REJECTED", "F_ABUSE", "F_LABELLED", "OUTCOME_CODES"]

#: Order columns: buyer, store, device and address codes (-1: none), times, amount, first refund row.
ORDER_COLUMNS: dict[str, tuple[type, int | float]] = {
    "buyer": (np.int32, -1), "store": (np.int32, -1), "device": (np.int32, -1), "address": (np.int32, -1),
    "paid": (np.int64, NAT), "shipped": (np.int64, NAT), "delivered": (np.int64, NAT),
    "amount": (np.float64, 0.0), "first_refund": (np.int32, -1),
}
#: Refund columns: order row, times, amount, flags, outcome code, next refund row of the same order.
REFUND_COLUMNS: dict[str, tuple[type, int | float]] = {
    "order": (np.int32, -1), "requested": (np.int64, NAT), "resolved": (np.int64, NAT),
    "amount": (np.float64, 0.0), "flags": (np.uint8, 0), "outcome": (np.uint8, 0), "next": (np.int32, -1),
}
F_ONLY, F_NR, F_CLAIM, F_RESOLVED, F_REJECTED, F_ABUSE, F_LABELLED = (1, 2, 4, 8, 16, 32, 64)
#: Outcome codes in the refund rows (0: open).
OUTCOME_CODES = {"refunded": 1, "rejected": 2, "withdrawn": 3}


class Columns:
    """Append-only rows: an :class:`IdIndex` and numpy columns with room to grow."""

    def __init__(self, spec: dict[str, tuple[type, int | float]]) -> None:
        self.spec = spec
        self.ids = IdIndex()
        self.n = 0
        self.cols = {name: np.full(1024, fill, dtype=dt) for name, (dt, fill) in spec.items()}

    def _grow(self, need: int) -> None:
        cap = len(next(iter(self.cols.values())))
        if need <= cap:
            return
        new = max(need, 2 * cap)
        for name, (dt, fill) in self.spec.items():
            col = np.full(new, fill, dtype=dt)
            col[: self.n] = self.cols[name][: self.n]
            self.cols[name] = col

    def append(self, key: str, **values: int | float) -> int:
        """Add a row for id ``key`` (absent) and return it."""
        row = self.ids.add(key)
        assert row == self.n
        self._grow(row + 1)
        cols = self.cols
        for name, v in values.items():
            cols[name][row] = v
        self.n = row + 1
        return row

    def set_all(self, ids: object, values: dict[str, np.ndarray]) -> None:
        """Replace every row at once (ids: an Arrow string array, distinct)."""
        self.ids = IdIndex.from_arrow(ids)  # type: ignore[arg-type]
        n = len(self.ids)
        self.n = n
        cap = max(1024, n + n // 4)
        for name, (dt, fill) in self.spec.items():
            col = np.full(cap, fill, dtype=dt)
            if name in values:
                col[:n] = values[name]
            self.cols[name] = col

    def column(self, name: str) -> np.ndarray:
        """The filled part of a column (a view)."""
        return self.cols[name][: self.n]

    @property
    def nbytes(self) -> int:
        """Bytes held by the ids and the columns (capacity included)."""
        return self.ids.nbytes + sum(int(c.nbytes) for c in self.cols.values())
