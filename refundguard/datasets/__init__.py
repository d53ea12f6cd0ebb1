"""Adapters from public data sets to refundguard's data contract.

Each adapter has a ``load_*`` function returning raw contract tables (``orders``,
``refunds``, ``reviews``, ``service``) to pass to :func:`refundguard.tables.validate`,
and a ``convert_*`` function returning a
:class:`~refundguard.datasets.conversion.Conversion`: the clean tables plus every row
set aside, with a reason each. :func:`convert_dataset` is the one door
``refundguard convert`` uses.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from refundguard.datasets.conversion import Conversion, check_output_folder
from refundguard.datasets.olist import convert_olist, load_olist
from refundguard.datasets.uci import convert_uci_online_retail, load_uci_online_retail
from refundguard.errors import ConfigError

__all__ = [
    "DATASET_SOURCES",
    "Conversion",
    "convert_dataset",
    "convert_olist",
    "convert_uci_online_retail",
    "load_olist",
    "load_uci_online_retail",
]

#: The public data sets :func:`convert_dataset` knows, by name.
DATASET_SOURCES: dict[str, Callable[[str | Path], Conversion]] = {
    "olist": convert_olist,
    "uci-online-retail": convert_uci_online_retail,
}
_REJECT_FORMATS = (".parquet", ".csv")


def convert_dataset(
    source: str,
    path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    rejects: str | os.PathLike[str] | None = None,
) -> Conversion:
    """Convert a public data set to clean contract tables in ``out`` (Parquet), rows set aside in ``rejects``.

    Parameters
    ----------
    source
        One of :data:`DATASET_SOURCES` (``olist``, ``uci-online-retail``).
    path
        The data set: the Olist folder, or UCI's ``online_retail.parquet`` (or its folder).
    out
        A new folder (absent or empty) for ``orders``, ``refunds``, ``reviews`` and
        ``service`` ``.parquet``; it appears complete or not at all.
    rejects
        A ``.parquet`` or ``.csv`` file for every row set aside, with its reason (the
        source rows the mapping cannot use and the contract rows validation rejects).

    Returns
    -------
    Conversion

    Raises
    ------
    ConfigError
        An unknown source, ``out`` not an empty or absent folder, or a rejects file
        of another format (checked before any work).
    SchemaError
        The data set's files are missing or unreadable.
    """
    if source not in DATASET_SOURCES:
        raise ConfigError.invalid("convert_dataset", "source", f"one of {sorted(DATASET_SOURCES)}", source)
    check_output_folder(out, "convert_dataset")
    if rejects is not None and Path(rejects).suffix not in _REJECT_FORMATS and not str(rejects).endswith(".csv.gz"):
        raise ConfigError.invalid("convert_dataset", "rejects", "a .parquet or .csv file", str(rejects))
    result = DATASET_SOURCES[source](path)
    result.write(out, rejects)
    return result
