"""One conversion of a public data set to the contract: clean tables plus every row set aside, with a reason.

An adapter maps the source's rows to raw contract tables and sets aside the source rows it
cannot map (each with a reason code); :func:`finish_conversion` then validates the mapped
tables in quarantine mode, so the result holds only clean contract tables, and one rejects
table accounts for both stages:

* source rows the adapter could not map: ``table`` is the source's own table name (for
  example ``online_retail`` or ``olist_orders``), ``row_index`` the row's position in that
  source table, ``rule`` the adapter's reason code (documented in the adapter's module);
* contract rows :func:`refundguard.tables.validate` rejected: ``table`` is ``orders``,
  ``refunds``, ``reviews`` or ``service``, ``rule`` one of
  :data:`refundguard.errors.SCHEMA_RULES`.

:meth:`Conversion.write` writes the clean tables as Parquet into a new folder (atomically: a
failed run leaves no partial folder) and, if asked, the rejects table.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from refundguard._io import atomic_target
from refundguard.errors import ConfigError, RejectedRowsWarning
from refundguard.tables import REJECT_COLUMNS, TABLES, summarize_rejects, validate, write_table

__all__ = ["Conversion", "finish_conversion", "map_rejects", "check_output_folder"]


def map_rejects(
    table: str,
    rows: np.ndarray,
    keys: Any,
    column: str,
    rule: str,
    values: Any,
    detail: str,
) -> pd.DataFrame:
    """Source rows an adapter could not map, in the rejects table's columns.

    Parameters
    ----------
    table
        The source table's name.
    rows
        Positions of the rows in the source table.
    keys, values
        Per row: its id in the source (e.g. the invoice number) and the value at fault.
    column
        The source column at fault.
    rule
        The adapter's reason code.
    detail
        One sentence saying why the row could not be mapped.
    """
    rows = np.asarray(rows, dtype=np.int64)
    n = len(rows)

    def text(v: Any) -> np.ndarray:
        arr = np.asarray(pd.Series(v).to_numpy(dtype=object)) if not np.isscalar(v) else np.full(n, v, dtype=object)
        return np.array(["<null>" if pd.isna(x) else str(x) for x in arr], dtype=object)

    return pd.DataFrame(
        {
            "table": np.full(n, table, dtype=object),
            "row_index": rows,
            "key": text(keys),
            "column": np.full(n, column, dtype=object),
            "rule": np.full(n, rule, dtype=object),
            "value": text(values),
            "detail": np.full(n, detail, dtype=object),
        }
    )


@dataclass(frozen=True, eq=False)
class Conversion:
    """A public data set converted to the contract.

    Attributes
    ----------
    source
        The data set (``olist``, ``uci-online-retail``).
    tables
        The clean contract tables (:func:`refundguard.tables.validate` output).
    rejects
        Every row set aside, with :data:`refundguard.tables.REJECT_COLUMNS`: source rows
        the adapter could not map (``table`` = the source table) and contract rows that
        broke a rule (``table`` = a contract table).
    source_rows
        Rows read, per source table.
    report
        The adapter's own counts (what the mapping did).
    """

    source: str
    tables: dict[str, pd.DataFrame]
    rejects: pd.DataFrame
    source_rows: dict[str, int]
    report: dict[str, int] = field(default_factory=dict)

    def counts(self) -> pd.DataFrame:
        """Rejected rows per table, column and reason (``table, column, rule, rows``)."""
        return summarize_rejects(self.rejects)

    def lines(self) -> list[str]:
        """The summary ``refundguard convert`` prints."""
        read = ", ".join(f"{n:,d} {t} rows" for t, n in self.source_rows.items())
        out = [f"{self.source}: read {read}"]
        out.append("contract tables: " + ", ".join(f"{len(self.tables[t]):,d} {t}" for t in TABLES))
        counts = self.counts()
        if len(counts):
            out.append("set aside (table, column, reason, rows):")
            out.extend(f"  {r.table:20s} {r.column:16s} {r.rule:24s} {r.rows:>9,d}" for r in counts.itertuples(index=False))
        else:
            out.append("set aside: nothing")
        return out

    def to_text(self) -> str:
        """:meth:`lines` joined."""
        return "\n".join(self.lines())

    def write(self, out: str | os.PathLike[str], rejects: str | os.PathLike[str] | None = None) -> Path:
        """Write the clean tables as ``out/<table>.parquet`` and, if given, the rejects table.

        Parameters
        ----------
        out
            A new (absent or empty) folder; it appears complete or not at all.
        rejects
            A ``.parquet`` or ``.csv`` file for the rejects table (written atomically).

        Returns
        -------
        pathlib.Path
            The folder written.
        """
        target = check_output_folder(out, "Conversion.write")
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_target(target) as tmp:
            tmp.mkdir()
            for name in TABLES:
                self.tables[name].to_parquet(tmp / f"{name}.parquet", index=False)
        # (the rename replaces an empty folder at ``out`` in one step)
        if rejects is not None:
            write_table(self.rejects, rejects)
        return target


def check_output_folder(out: str | os.PathLike[str], owner: str) -> Path:
    """``out`` as a Path when it is an absent or empty folder; else a ``ConfigError``."""
    target = Path(out)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ConfigError.invalid(owner, "out", "an empty or absent folder", str(target),
                                  extra=" (converted tables never replace other files)")
    return target


def finish_conversion(
    source: str,
    raw: Mapping[str, pd.DataFrame],
    rejected_source_rows: list[pd.DataFrame],
    source_rows: Mapping[str, int],
    report: Mapping[str, int] | None = None,
) -> Conversion:
    """Validate an adapter's raw contract tables (quarantine) and join both stages' rejects.

    Parameters
    ----------
    source
        The data set's name.
    raw
        The mapped, not yet validated, contract tables.
    rejected_source_rows
        Frames from :func:`map_rejects`.
    source_rows
        Rows read per source table.
    report
        The adapter's counts.
    """
    with warnings.catch_warnings():  # the rejects are the result here, not news
        warnings.simplefilter("ignore", RejectedRowsWarning)
        clean, contract_rejects = validate(raw, mode="quarantine")
    parts = [p for p in rejected_source_rows if len(p)]
    mapped = pd.concat(parts, ignore_index=True) if parts else contract_rejects.iloc[:0]
    mapped = mapped.sort_values(["table", "row_index", "rule"], kind="mergesort")
    rejects = pd.concat([mapped.astype(contract_rejects.dtypes.to_dict()), contract_rejects], ignore_index=True)
    return Conversion(
        source=source,
        tables=clean,
        rejects=rejects[list(REJECT_COLUMNS)],
        source_rows=dict(source_rows),
        report=dict(report or {}),
    )
