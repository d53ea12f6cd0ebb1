"""Adapters from public data sets to refundguard's data contract.

Each adapter returns raw contract tables (``orders``, ``refunds``, ``reviews``,
``service``) to pass to :func:`refundguard.tables.validate`.
"""

from refundguard.datasets.olist import load_olist

__all__ = ["load_olist"]
