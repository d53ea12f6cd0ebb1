"""Adapter from the public Olist e-commerce data set to refundguard's data contract.

Olist (Brazil, 2016-2018, CC BY-NC-SA 4.0) publishes orders, order items,
reviews, customers, products and sellers. The mapping (issue 3):

* a **seller** is a store; an order with items from several sellers becomes one
  contract order per seller, ``order_id`` = ``"<order_id>:<seller_id>"`` (orders
  with a single seller keep their ``order_id``);
* ``amount`` = that seller's items ``price + freight_value``;
* ``buyer_id`` = ``customer_unique_id``; ``paid_at`` = ``order_purchase_timestamp``;
* ``ship_by`` = the seller's latest ``shipping_limit_date``; ``shipped_at`` =
  ``order_delivered_carrier_date``; ``delivered_at`` = ``order_delivered_customer_date``;
* ``category`` = the most frequent English product category of the seller's items
  in the order (ties alphabetical; untranslated names kept in Portuguese, missing
  ones ``"unknown"``);
* reviews come from the reviews file: a review of a multi-seller order is attached to
  each of its contract orders (the buyer reviewed the whole order); every distinct
  ``(review_id, order_id)`` row is one review (Olist repeats a ``review_id`` across
  orders bought together, and a few orders have several reviews); exact duplicate
  rows are dropped and counted;
* there are **no refunds and no service chats** in Olist: both tables are empty, so
  the indicators built on them are "not assessed", never invented.

Olist's time stamps are local (Brazil) wall-clock times; they are read as UTC.

Nothing is repaired: :func:`load_olist` returns *raw* contract tables, like
:func:`refundguard.tables.load_tables`. Pass them to
:func:`refundguard.tables.validate` with ``mode="quarantine"`` to set aside rows
that break the contract (in the 15k sample: 31 orders whose carrier date precedes
the purchase and 3 delivered before the carrier pick-up, with their 33 reviews as
``parent_rejected``). Orders without any item have no seller, so they
cannot become contract orders: they are counted in the report
(``return_report=True``), as are their reviews.

:func:`convert_olist` does both steps (``refundguard convert --source olist``) and
returns a :class:`~refundguard.datasets.conversion.Conversion`: the clean tables and
every row set aside, the Olist rows the mapping cannot use included, with these
reasons (``table`` is the Olist file's role):

* ``olist_orders`` / ``no_items``: an order without any item (no seller, no amount);
* ``olist_orders`` / ``duplicate_order``: a second row of an ``order_id`` (the first is used);
* ``olist_order_items`` / ``order_missing``: an item of an order absent from the orders file;
* ``olist_order_reviews`` / ``duplicate_row``: an exact copy of an earlier review row;
* ``olist_order_reviews`` / ``order_without_items``: a review of an order that has no item
  (or is absent from the orders file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from refundguard.datasets.conversion import Conversion, finish_conversion, map_rejects
from refundguard.errors import SchemaError

__all__ = ["OLIST_FILES", "load_olist", "convert_olist"]

#: The Olist files the adapter reads, by role.
OLIST_FILES: dict[str, str] = {
    "orders": "olist_orders_dataset",
    "items": "olist_order_items_dataset",
    "reviews": "olist_order_reviews_dataset",
    "customers": "olist_customers_dataset",
    "products": "olist_products_dataset",
    "translation": "product_category_name_translation",
}

_TS = "datetime64[ns, UTC]"


def _find(root: Path, stem: str) -> Path:
    candidates = [root, root / "sample_15k_orders", root / "full"] + sorted(p for p in root.iterdir() if p.is_dir())
    for folder in candidates:
        for ext in (".csv", ".csv.gz"):
            p = folder / f"{stem}{ext}"
            if p.is_file():
                return p
    raise SchemaError(
        f"Olist file {stem}.csv[.gz] not found under {str(root)!r} (looked in it, sample_15k_orders/, full/ and subfolders)",
        table=stem,
        rule="missing_file",
    )


def _read(root: Path, role: str, usecols: list[str]) -> pd.DataFrame:
    path = _find(root, OLIST_FILES[role])
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=True)
    except (OSError, ValueError) as exc:
        raise SchemaError(f"cannot read Olist file {str(path)!r}: {exc}", table=role, rule="unreadable") from exc
    missing = [c for c in usecols if c not in df.columns]
    if missing:
        raise SchemaError(
            f"Olist file {path.name} lacks column(s) {missing}", table=role, column=missing[0], rule="required"
        )
    return df[usecols]


def _ts(s: pd.Series) -> pd.Series:
    return pd.to_datetime(s, errors="coerce").dt.tz_localize("UTC").dt.as_unit("ns").astype(_TS)


def load_olist(path: str | Path, *, return_report: bool = False) -> Any:
    """Read the Olist files under ``path`` as raw contract tables.

    Parameters
    ----------
    path : str or Path
        The Olist folder (e.g. ``../shared/data/olist`` with ``sample_15k_orders/`` and
        ``full/``), or any folder holding the Olist CSV files (``.csv`` or ``.csv.gz``).
    return_report : bool, default False
        Also return a dict of counts describing what the mapping did.

    Returns
    -------
    tables : dict of DataFrame
        ``orders``, ``refunds`` (empty), ``reviews`` and ``service`` (empty), not yet
        validated: pass them to ``validate(tables, mode="quarantine")``.
    report : dict of int
        Only with ``return_report=True``: ``olist_orders``, ``orders_without_items``,
        ``multi_seller_orders``, ``contract_orders``, ``olist_reviews``,
        ``reviews_exact_duplicates``, ``reviews_of_orders_without_items``,
        ``reviews_copied_to_extra_sellers``, ``contract_reviews``,
        ``items_without_category``.

    Raises
    ------
    SchemaError
        A file or column is missing or unreadable.
    """
    tables, report, _, _ = _map_olist(path)
    return (tables, report) if return_report else tables


def convert_olist(path: str | Path) -> Conversion:
    """Olist as clean contract tables plus every row set aside, with a reason each.

    :func:`load_olist`, then :func:`refundguard.tables.validate` in quarantine mode;
    the Olist rows the mapping cannot use are rejects too (module docstring).

    Parameters
    ----------
    path : str or Path
        The Olist folder (as for :func:`load_olist`).

    Returns
    -------
    refundguard.datasets.conversion.Conversion
        ``report`` holds :func:`load_olist`'s counts.
    """
    tables, report, rejected, source_rows = _map_olist(path)
    return finish_conversion("olist", tables, rejected, source_rows, report)


def _map_olist(path: str | Path) -> tuple[dict[str, pd.DataFrame], dict[str, int], list[pd.DataFrame], dict[str, int]]:
    """The mapping: raw contract tables, the report, the Olist rows set aside, rows read per file."""
    root = Path(path)
    if not root.is_dir():
        raise SchemaError(f"Olist folder {str(root)!r} does not exist", rule="missing_folder")
    from refundguard.tables import empty_tables

    orders = _read(
        root,
        "orders",
        ["order_id", "customer_id", "order_status", "order_purchase_timestamp", "order_delivered_carrier_date", "order_delivered_customer_date"],
    )
    items = _read(root, "items", ["order_id", "order_item_id", "product_id", "seller_id", "shipping_limit_date", "price", "freight_value"])
    reviews = _read(root, "reviews", ["review_id", "order_id", "review_score", "review_creation_date"])
    customers = _read(root, "customers", ["customer_id", "customer_unique_id"])
    products = _read(root, "products", ["product_id", "product_category_name"])
    trans = _read(root, "translation", ["product_category_name", "product_category_name_english"])

    # item category: English name, else the Portuguese one, else "unknown"
    cat_map = pd.Series(trans["product_category_name_english"].to_numpy(), index=trans["product_category_name"].to_numpy())
    cat_map = cat_map[~cat_map.index.duplicated()]
    pcat = products.drop_duplicates("product_id").set_index("product_id")["product_category_name"]
    item_pt = items["product_id"].map(pcat)
    item_cat = item_pt.map(cat_map).fillna(item_pt).fillna("unknown").astype("str")
    items = items.assign(
        category=item_cat,
        value=pd.to_numeric(items["price"], errors="coerce") + pd.to_numeric(items["freight_value"], errors="coerce"),
        shipping_limit_date=_ts(items["shipping_limit_date"]),
    )

    # one contract order per (order, seller)
    agg = items.groupby(["order_id", "seller_id"], sort=True).agg(
        amount=("value", "sum"), ship_by=("shipping_limit_date", "max")
    )
    agg["amount"] = agg["amount"].round(2)
    cat_counts = items.groupby(["order_id", "seller_id", "category"], sort=True).size().rename("n").reset_index()
    cat_counts = cat_counts.sort_values(["order_id", "seller_id", "n", "category"], ascending=[True, True, False, True], kind="stable")
    modal = cat_counts.drop_duplicates(["order_id", "seller_id"]).set_index(["order_id", "seller_id"])["category"]
    agg["category"] = modal
    agg = agg.reset_index()
    n_sellers = agg.groupby("order_id")["seller_id"].transform("size")
    agg["contract_id"] = np.where(n_sellers > 1, agg["order_id"] + ":" + agg["seller_id"], agg["order_id"])

    o = orders.drop_duplicates("order_id").merge(customers.drop_duplicates("customer_id"), on="customer_id", how="left")
    merged = agg.merge(o, on="order_id", how="inner", validate="many_to_one")
    out_orders = pd.DataFrame(
        {
            "order_id": merged["contract_id"].astype("str"),
            "buyer_id": merged["customer_unique_id"].astype("str"),
            "store_id": merged["seller_id"].astype("str"),
            "category": merged["category"].astype("str"),
            "amount": merged["amount"].astype("float64"),
            "paid_at": _ts(merged["order_purchase_timestamp"]),
            "ship_by": merged["ship_by"].astype(_TS),
            "shipped_at": _ts(merged["order_delivered_carrier_date"]),
            "delivered_at": _ts(merged["order_delivered_customer_date"]),
            "device_id": pd.Series(np.nan, index=merged.index, dtype="str"),
            "address_id": pd.Series(np.nan, index=merged.index, dtype="str"),
            "olist_order_id": merged["order_id"].astype("str"),
            "order_status": merged["order_status"].astype("str"),
        }
    )

    # reviews: one per distinct row, attached to each contract order of the Olist order
    n_rev_in = len(reviews)
    rv = reviews.drop_duplicates()
    n_exact_dup = n_rev_in - len(rv)
    link = agg[["order_id", "contract_id"]]
    rv_m = rv.merge(link, on="order_id", how="inner")
    n_rev_orphan = int((~rv["order_id"].isin(link["order_id"])).sum())
    out_reviews = pd.DataFrame(
        {
            "order_id": rv_m["contract_id"].astype("str"),
            "rating": pd.to_numeric(rv_m["review_score"], errors="coerce"),
            "created_at": _ts(rv_m["review_creation_date"]),
            "review_id": rv_m["review_id"].astype("str"),
        }
    )
    if out_reviews["rating"].notna().all():
        out_reviews["rating"] = out_reviews["rating"].astype("int64")

    empty = empty_tables()
    tables = {
        "orders": out_orders.sort_values(["paid_at", "order_id"], kind="stable").reset_index(drop=True),
        "refunds": empty["refunds"],
        "reviews": out_reviews.sort_values(["created_at", "order_id"], kind="stable").reset_index(drop=True),
        "service": empty["service"],
    }
    # the Olist rows the mapping cannot use, each with its reason
    dup_order = orders["order_id"].duplicated(keep="first").to_numpy()
    no_items = ~dup_order & ~orders["order_id"].isin(agg["order_id"]).to_numpy()
    item_orphan = ~items["order_id"].isin(orders["order_id"]).to_numpy()
    rv_dup = reviews.duplicated(keep="first").to_numpy()
    rv_orphan = ~rv_dup & ~reviews["order_id"].isin(link["order_id"]).to_numpy()

    def rows_of(frame: pd.DataFrame, mask: np.ndarray, table: str, key: str, column: str, rule: str,
                detail: str) -> pd.DataFrame:
        idx = np.flatnonzero(mask)
        return map_rejects(table, idx, frame[key].to_numpy()[idx], column, rule, frame[column].to_numpy()[idx], detail)

    rejected = [
        rows_of(orders, dup_order, "olist_orders", "order_id", "order_id", "duplicate_order",
                "a second row of this order_id; the first is used"),
        rows_of(orders, no_items, "olist_orders", "order_id", "order_id", "no_items",
                "the order has no item: no seller (store) and no amount"),
        rows_of(items, item_orphan, "olist_order_items", "order_id", "order_id", "order_missing",
                "the item's order is not in the orders file"),
        rows_of(reviews, rv_dup, "olist_order_reviews", "order_id", "review_id", "duplicate_row",
                "an exact copy of an earlier review row"),
        rows_of(reviews, rv_orphan, "olist_order_reviews", "order_id", "order_id", "order_without_items",
                "the reviewed order has no item (or is not in the orders file)"),
    ]
    source_rows = {"olist_orders": len(orders), "olist_order_items": len(items), "olist_order_reviews": len(reviews)}
    olist_ids = set(orders["order_id"])
    with_items = set(agg["order_id"])
    report = {
        "olist_orders": len(olist_ids),
        "orders_without_items": len(olist_ids - with_items),
        "multi_seller_orders": int((agg.groupby("order_id").size() > 1).sum()),
        "contract_orders": len(out_orders),
        "olist_reviews": n_rev_in,
        "reviews_exact_duplicates": int(n_exact_dup),
        "reviews_of_orders_without_items": n_rev_orphan,
        "reviews_copied_to_extra_sellers": int(len(rv_m) - (len(rv) - n_rev_orphan)),
        "contract_reviews": len(out_reviews),
        "items_without_category": int(item_pt.isna().sum()),
    }
    return tables, report, rejected, source_rows
