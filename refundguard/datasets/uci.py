"""Adapter from UCI "Online Retail" (a UK gift shop, 2010-12 to 2011-12) to refundguard's data contract.

The file (UCI id 352, CC BY 4.0, Daqing Chen) has one row per invoice line:
``InvoiceNo, StockCode, Description, Quantity, InvoiceDate, UnitPrice, CustomerID, Country``.
Invoices whose number starts with ``C`` are cancellations (negative quantities). The
mapping, deterministic and documented here, is:

Stores and orders
    * **one store per country**: ``store_id`` = ``Country`` (the shop ships to 38
      countries; a country is the nearest thing to a separately run storefront);
    * **one order per sale invoice** (an ``InvoiceNo`` of digits only): ``order_id`` =
      ``InvoiceNo``, ``buyer_id`` = ``CustomerID`` as an integer text (``"17850"``);
    * ``amount`` = the sum of ``Quantity * UnitPrice`` over the invoice's lines, rounded
      to cents (free lines, ``UnitPrice`` 0, add nothing);
    * ``paid_at`` = the invoice's earliest ``InvoiceDate``. The file's times are naive
      (presumably UK wall-clock time) and are read as UTC, the contract's rule for
      naive data; text must be ISO 8601 (the contract's rule for text instants);
    * ``category`` = ``"giftware"`` for every order: the file carries no product
      category, and the shop sells one line of goods (all-occasion gifts);
    * no shipping data: ``ship_by`` is the contract's default (``paid_at + 48h``),
      ``shipped_at`` and ``delivered_at`` are null, ``device_id`` and ``address_id``
      null. (The store score's pickup indicator therefore reads every order as "not
      picked up"; scores of this data set are meaningful for refunds, not logistics.)

Refunds
    * every **cancellation line** (``C`` invoice, negative ``Quantity``) is linked to
      **the same customer's latest earlier sale invoice holding the same
      ``StockCode``**: the sale invoice with the largest ``paid_at`` strictly before the
      cancellation's ``requested_at`` (below), ties broken by the larger invoice number;
    * the linked lines of one cancellation invoice form **one refund per linked order**:
      ``refund_id`` = the ``C`` invoice number, suffixed ``":<order_id>"`` when that
      cancellation links to more than one order; ``kind`` = ``return_and_refund``;
      ``reason`` = ``other`` (the file gives none); ``amount`` = the sum of
      ``-Quantity * UnitPrice`` over those lines, rounded to cents;
    * ``requested_at`` = the cancellation invoice's earliest ``InvoiceDate``; a
      cancellation invoice is a completed credit note, so ``resolved_at`` =
      ``requested_at``, ``outcome`` = ``refunded``, ``escalated`` false, ``is_abuse``
      null (no label).

Refunds that break the contract (for example a cancellation of more units than the
linked invoice sold, which pushes the order's refunds over its amount) are rejected by
:func:`refundguard.tables.validate` with the contract's own rules (``refund_sum``,
``min``). There are no reviews and no service chats: both tables are empty.

Rows set aside by the mapping (``table`` = ``online_retail``), checked in this order,
each row getting the first reason that applies:

* ``not_a_sale`` (column ``InvoiceNo``): neither digits (a sale) nor ``C`` + digits (a
  cancellation), e.g. the ``A`` "adjust bad debt" rows;
* ``bad_date`` (``InvoiceDate``): not an ISO 8601 instant;
* ``no_customer`` (``CustomerID``): no customer, so no buyer (and no link);
* ``bad_price`` (``UnitPrice``): missing, not finite or negative;
* ``non_positive_quantity`` (``Quantity``): a sale line with a quantity <= 0;
* ``non_negative_cancellation`` (``Quantity``): a cancellation line with a quantity >= 0;
* ``no_earlier_invoice`` (``StockCode``): a cancellation line for which the customer has
  no earlier sale invoice holding that stock code (discounts ``D``, manual lines ``M``,
  postage, and cancellations of purchases made before the file begins).

Every row of the file is either one line of a contract order or refund, or set aside
with its reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from refundguard.datasets.conversion import Conversion, finish_conversion, map_rejects
from refundguard.errors import SchemaError
from refundguard.tables import empty_tables

__all__ = ["UCI_COLUMNS", "UCI_CATEGORY", "UCI_FILE", "load_uci_online_retail", "convert_uci_online_retail"]

#: The columns of the UCI file the adapter reads.
UCI_COLUMNS: tuple[str, ...] = (
    "InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID", "Country",
)
#: The one category of every order (the file has no product categories).
UCI_CATEGORY = "giftware"
#: The file name looked for when ``path`` is a folder (``.parquet``, else ``.csv`` / ``.csv.gz``).
UCI_FILE = "online_retail"
SOURCE_TABLE = "online_retail"
_TS = "datetime64[ns, UTC]"


def _find(path: Path) -> Path:
    if path.is_file():
        return path
    if path.is_dir():
        for ext in (".parquet", ".csv", ".csv.gz"):
            p = path / f"{UCI_FILE}{ext}"
            if p.is_file():
                return p
        raise SchemaError(f"UCI Online Retail file {UCI_FILE}.parquet (or .csv) not found in {str(path)!r}",
                          table=SOURCE_TABLE, rule="missing_file")
    raise SchemaError(f"UCI Online Retail path {str(path)!r} does not exist", rule="missing_folder")


def _read(path: Path) -> pd.DataFrame:
    file = _find(path)
    try:
        if file.suffix == ".parquet":
            df = pd.read_parquet(file)
        else:
            df = pd.read_csv(file, dtype=str, keep_default_na=False, na_values=[""])
    except (OSError, ValueError) as exc:
        raise SchemaError(f"cannot read {str(file)!r}: {type(exc).__name__}: {exc}", table=SOURCE_TABLE,
                          rule="unreadable") from exc
    missing = [c for c in UCI_COLUMNS if c not in df.columns]
    if missing:
        raise SchemaError(f"{file.name} lacks column(s) {missing}", table=SOURCE_TABLE, column=missing[0],
                          rule="missing_column", values=missing)
    return df[list(UCI_COLUMNS)].reset_index(drop=True)


def _customer_text(c: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """CustomerID (a float in the file: 17850.0) as integer text; the second value marks missing ones."""
    num = pd.to_numeric(c, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    ok = np.isfinite(num) & (np.mod(np.where(np.isfinite(num), num, 0), 1) == 0)
    text = pd.Series(np.where(ok, num, 0).astype(np.int64), index=c.index).astype("str").where(ok)
    return text, ~ok


def _map(path: str | Path) -> tuple[dict[str, pd.DataFrame], dict[str, int], list[pd.DataFrame], dict[str, int]]:
    from refundguard.tables import _coerce_ts, _isnull_raw  # the contract's own reading of text instants

    df = _read(Path(path))
    n = len(df)
    invoice = df["InvoiceNo"].astype("str").str.strip()
    is_sale = invoice.str.fullmatch(r"[0-9]+").fillna(False).to_numpy(dtype=bool)
    is_cancel = invoice.str.fullmatch(r"C[0-9]+").fillna(False).to_numpy(dtype=bool)
    when, bad_when = _coerce_ts(df["InvoiceDate"], _isnull_raw(df["InvoiceDate"]))
    bad_when = bad_when | when.isna().to_numpy()
    customer, no_customer = _customer_text(df["CustomerID"])
    qty = pd.to_numeric(df["Quantity"], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    price = pd.to_numeric(df["UnitPrice"], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    bad_price = ~np.isfinite(price) | (price < 0)

    # each row gets the first reason that applies
    reasons = [
        ("not_a_sale", "InvoiceNo", ~is_sale & ~is_cancel,
         "the invoice number is neither digits (a sale) nor C + digits (a cancellation)"),
        ("bad_date", "InvoiceDate", bad_when, "InvoiceDate is not an ISO 8601 instant"),
        ("no_customer", "CustomerID", no_customer, "no CustomerID: no buyer to attach the row to"),
        ("bad_price", "UnitPrice", bad_price, "UnitPrice is missing, not finite or negative"),
        ("non_positive_quantity", "Quantity", is_sale & ~(qty > 0), "a sale line with a quantity <= 0"),
        ("non_negative_cancellation", "Quantity", is_cancel & ~(qty < 0), "a cancellation line with a quantity >= 0"),
    ]
    taken = np.zeros(n, dtype=bool)
    rejected: list[pd.DataFrame] = []
    counts: dict[str, int] = {}
    for rule, column, mask, detail in reasons:
        rows = np.flatnonzero(mask & ~taken)
        taken[rows] = True
        counts[rule] = len(rows)
        rejected.append(map_rejects(SOURCE_TABLE, rows, invoice.to_numpy()[rows], column, rule,
                                    df[column].to_numpy()[rows], detail))

    value = np.round(qty * price, 10)
    lines = pd.DataFrame(
        {
            "row": np.arange(n, dtype=np.int64),
            "invoice": invoice.to_numpy(dtype=object),
            "stock": df["StockCode"].astype("str").str.strip().to_numpy(dtype=object),
            "customer": customer.to_numpy(dtype=object),
            "country": df["Country"].astype("str").to_numpy(dtype=object),
            "when": when.to_numpy(),
            "value": value,
        }
    )

    # orders: one per sale invoice
    sales = lines[is_sale & ~taken]
    orders = sales.groupby("invoice", sort=True).agg(
        customer=("customer", "first"), country=("country", "first"), paid_at=("when", "min"),
        amount=("value", "sum"), n_lines=("row", "size"),
    )
    out_orders = pd.DataFrame(
        {
            "order_id": orders.index.to_numpy(dtype=object),
            "buyer_id": orders["customer"].to_numpy(dtype=object),
            "store_id": orders["country"].to_numpy(dtype=object),
            "category": UCI_CATEGORY,
            "amount": orders["amount"].round(2).to_numpy(dtype="float64"),
            "paid_at": pd.Series(orders["paid_at"].to_numpy()).astype(_TS),
            "shipped_at": pd.Series(pd.NaT, index=range(len(orders)), dtype=_TS),
            "delivered_at": pd.Series(pd.NaT, index=range(len(orders)), dtype=_TS),
        }
    )

    # refunds: each cancellation line linked to the customer's latest earlier invoice with its stock code
    cancels = lines[is_cancel & ~taken].copy()
    cancels["requested_at"] = cancels.groupby("invoice")["when"].transform("min")
    held = (
        sales[["invoice", "customer", "stock"]].drop_duplicates()
        .merge(orders["paid_at"], left_on="invoice", right_index=True)
        .rename(columns={"invoice": "order_id"})
        .sort_values(["paid_at", "order_id"], kind="mergesort")
    )
    linked = pd.merge_asof(
        cancels.sort_values(["requested_at", "row"], kind="mergesort"),
        held,
        left_on="requested_at",
        right_on="paid_at",
        by=["customer", "stock"],
        allow_exact_matches=False,  # strictly earlier
        direction="backward",
    ).sort_values("row", kind="mergesort")
    unlinked = linked["order_id"].isna().to_numpy()
    rows = linked["row"].to_numpy()[unlinked]
    counts["no_earlier_invoice"] = len(rows)
    rejected.append(map_rejects(SOURCE_TABLE, rows, invoice.to_numpy()[rows], "StockCode", "no_earlier_invoice",
                                df["StockCode"].to_numpy()[rows],
                                "the customer has no earlier sale invoice holding this stock code"))
    linked = linked[~unlinked]
    ref = linked.groupby(["invoice", "order_id"], sort=True).agg(
        requested_at=("requested_at", "min"), amount=("value", "sum"), n_lines=("row", "size"),
    ).reset_index()
    per_cancel = ref.groupby("invoice")["order_id"].transform("size").to_numpy()
    refund_id = np.where(per_cancel > 1, ref["invoice"] + ":" + ref["order_id"], ref["invoice"])
    requested = pd.Series(ref["requested_at"].to_numpy()).astype(_TS)
    out_refunds = pd.DataFrame(
        {
            "refund_id": refund_id.astype(object),
            "order_id": ref["order_id"].to_numpy(dtype=object),
            "requested_at": requested,
            "kind": "return_and_refund",
            "reason": "other",
            "amount": (-ref["amount"]).round(2).to_numpy(dtype="float64"),
            "resolved_at": requested,
            "outcome": "refunded",
            "escalated": False,
            "is_abuse": pd.Series(pd.NA, index=range(len(ref)), dtype="boolean"),
        }
    )

    empty = empty_tables()
    tables = {
        "orders": out_orders.sort_values(["paid_at", "order_id"], kind="mergesort").reset_index(drop=True),
        "refunds": out_refunds.sort_values(["requested_at", "refund_id"], kind="mergesort").reset_index(drop=True),
        "reviews": empty["reviews"],
        "service": empty["service"],
    }
    report = {
        "rows": n,
        "sale_lines": int(orders["n_lines"].sum()),
        "cancellation_lines": int(ref["n_lines"].sum()),
        "rows_set_aside": int(sum(counts.values())),
        "orders": len(out_orders),
        "refunds": len(out_refunds),
        "cancellations_linked_to_several_orders": int(ref.loc[per_cancel > 1, "invoice"].nunique()),
        "stores": int(out_orders["store_id"].nunique()),
        "buyers": int(out_orders["buyer_id"].nunique()),
        **{f"set_aside_{k}": v for k, v in counts.items()},
    }
    return tables, report, rejected, {SOURCE_TABLE: n}


def load_uci_online_retail(path: str | Path, *, return_report: bool = False) -> Any:
    """Read UCI Online Retail as raw contract tables (the mapping of the module docstring).

    Parameters
    ----------
    path : str or Path
        ``online_retail.parquet`` (or ``.csv``), or a folder holding it.
    return_report : bool, default False
        Also return a dict of counts describing what the mapping did.

    Returns
    -------
    tables : dict of DataFrame
        ``orders``, ``refunds``, ``reviews`` (empty) and ``service`` (empty), not yet
        validated: pass them to ``validate(tables, mode="quarantine")``.
    report : dict of int
        Only with ``return_report=True``: ``rows``, ``sale_lines``,
        ``cancellation_lines``, ``rows_set_aside`` (and ``set_aside_<reason>`` for
        each reason), ``orders``, ``refunds``, ``stores``, ``buyers``,
        ``cancellations_linked_to_several_orders``. ``sale_lines +
        cancellation_lines + rows_set_aside == rows``.

    Raises
    ------
    SchemaError
        The file is missing, unreadable, or lacks a column.
    """
    tables, report, _, _ = _map(path)
    return (tables, report) if return_report else tables


def convert_uci_online_retail(path: str | Path) -> Conversion:
    """UCI Online Retail as clean contract tables plus every row set aside, with a reason each.

    Parameters
    ----------
    path : str or Path
        ``online_retail.parquet`` (or ``.csv``), or a folder holding it.

    Returns
    -------
    refundguard.datasets.conversion.Conversion
        The rows the mapping set aside (``table`` ``online_retail``, reasons in the
        module docstring) and the contract rows :func:`refundguard.tables.validate`
        rejected, in one rejects table.
    """
    tables, report, rejected, source_rows = _map(path)
    return finish_conversion("uci-online-retail", tables, rejected, source_rows, report)
