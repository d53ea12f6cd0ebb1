"""Online events checked like ``validate`` checks one row (private; both ProfileStore backends use it).

Each event is read from a mapping into a small frozen record, or a
:class:`~refundguard.errors.RequestError` names the field and the value. The rules are
the data contract's (DESIGN.md section 2) for one row:

* ids are non-empty strings without leading or trailing whitespace;
* ``kind``, ``reason`` and ``outcome`` are the contract's enums
  (:data:`refundguard.tables.KINDS`, ``REASONS``, ``OUTCOMES``);
* amounts are real numbers (not bools), finite, ``>= 0`` for orders and ``> 0``
  for refunds, and at most :data:`MAX_AMOUNT` (whole cents stay exact);
* instants follow :func:`refundguard._time.field_ns`, in order: ``ship_by`` and
  ``shipped_at`` not before ``paid_at``, ``delivered_at`` not before ``shipped_at``
  (and only with a ``shipped_at``), a refund not before its order's ``paid_at``, a
  resolution not before its request;
* ``outcome`` is given exactly when ``resolved_at`` is; ``is_abuse`` is a real
  bool or ``None`` (never the text ``"False"``);
* an order's refunds sum to at most its amount + :data:`REFUND_SUM_TOLERANCE`.

The rules that need the stored state (the order of a refund, a second sighting
of an order or refund) are the ``check_*`` functions; the backends call them
with what they have stored.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from refundguard._time import NAT, NEVER, field_ns
from refundguard.errors import RequestError
from refundguard.tables import KINDS, OUTCOMES, REASONS, REFUND_SUM_TOLERANCE

__all__ = [
    "MAX_AMOUNT",
    "OrderEvent",
    "RefundEvent",
    "Resolution",
    "RequestKey",
    "parse_order",
    "parse_refund",
    "parse_resolution",
    "parse_request_key",
    "check_order_update",
    "check_refund",
    "check_resolution",
    "cents",
]

try:  # the contract's bound on amounts (issue 12), where tables defines it
    from refundguard.tables import MAX_AMOUNT  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - older tables module
    #: Largest amount accepted: whole cents of sums of many of them stay exact in int64 and float64.
    MAX_AMOUNT = 1e12


@dataclass(frozen=True, slots=True)
class OrderEvent:
    """An order, or (``buyer_id is None``) an update of a known order's shipping times.

    Times are int ns UTC; ``NAT`` when not given.
    """

    order_id: str
    buyer_id: str | None
    store_id: str | None
    amount: float
    paid: int
    shipped: int
    delivered: int
    device_id: str | None
    address_id: str | None


@dataclass(frozen=True, slots=True)
class Resolution:
    """The resolution of a refund: when, the outcome, and the label (``None``: unknown)."""

    refund_id: str
    resolved: int
    outcome: str
    is_abuse: bool | None

    @property
    def rejected(self) -> bool:
        return self.outcome == "rejected"

    @property
    def bad(self) -> bool:
        """Rejected or labelled abuse: the buyer counts as a bad buyer on its devices and addresses."""
        return self.outcome == "rejected" or bool(self.is_abuse)


@dataclass(frozen=True, slots=True)
class RefundEvent:
    """A refund request, optionally with its resolution (a full contract row)."""

    refund_id: str
    order_id: str
    requested: int
    refund_only: bool
    not_received: bool
    amount: float
    resolution: Resolution | None


@dataclass(frozen=True, slots=True)
class RequestKey:
    """What a profile lookup reads from a request."""

    t: int
    buyer_id: str
    store_id: str
    device_id: str | None
    address_id: str | None


# --------------------------------------------------------------------------- fields
def _mapping(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise RequestError(f"{what} must be a mapping of field names to values; got "
                           f"{type(value).__name__} {value!r:.80}.", field=None, value=value)
    return value


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def check_id(d: Mapping[str, Any], field: str, optional: bool = False) -> str | None:
    """An id field: a non-empty string without leading or trailing whitespace (``validate``'s rule).

    An integer (not a bool) is an id written as text, as ``validate`` reads an integer id cell.
    """
    v = d.get(field)
    if _missing(v) or (isinstance(v, str) and not v.strip()):  # blank text is missing, as in validate
        if optional:
            return None
        raise RequestError(f"The field {field!r} is required; got {v!r}.", field=field, value=v)
    if isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)):
        return str(int(v))
    if not isinstance(v, str):
        raise RequestError(f"The field {field!r} must be a string; got {type(v).__name__} {v!r}.",
                           field=field, value=v)
    if not v or v != v.strip():
        raise RequestError(f"The field {field!r} must be a non-empty string without leading or trailing "
                           f"whitespace; got {v!r}.", field=field, value=v)
    return v


def _amount(d: Mapping[str, Any], field: str, positive: bool) -> float:
    v = d.get(field)
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise RequestError(f"The field {field!r} must be a number; got {type(v).__name__} {v!r}.",
                           field=field, value=v)
    x = float(v)
    low_ok = x > 0 if positive else x >= 0
    if not math.isfinite(x) or not low_ok:
        raise RequestError(f"The field {field!r} must be a finite number {'> 0' if positive else '>= 0'}; "
                           f"got {v!r}.", field=field, value=v)
    if x > MAX_AMOUNT:
        raise RequestError(f"The field {field!r} must be at most {MAX_AMOUNT:g}; got {v!r}.",
                           field=field, value=v)
    return x


def _enum(d: Mapping[str, Any], field: str, levels: tuple[str, ...]) -> str:
    v = d.get(field)
    if not isinstance(v, str) or v not in levels:
        raise RequestError(f"The field {field!r} must be one of {list(levels)}; got {v!r}.",
                           field=field, value=v)
    return v


def _time(d: Mapping[str, Any], field: str, required: bool) -> int:
    ns = field_ns(d.get(field), field, required=required)
    return NAT if ns is None else ns


def _order_rule(field: str, value: Any, msg: str) -> RequestError:
    return RequestError(f"The field {field!r} {msg}; got {value!r}.", field=field, value=value)


def _label(v: Any) -> bool | None:
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return None
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    raise RequestError(f"The field 'is_abuse' must be True, False or None; got {type(v).__name__} {v!r}.",
                       field="is_abuse", value=v)


def cents(amount: float) -> int:
    """Whole cents of an amount, rounded half to even like ``np.rint(amount * 100)``."""
    return round(amount * 100.0)


# --------------------------------------------------------------------------- events
def parse_order(order: Any) -> OrderEvent:
    """Read an order event (a new order, or an update of a known one's shipping times).

    A new order has ``order_id, buyer_id, store_id, category, amount, paid_at`` and
    optionally ``ship_by, shipped_at, delivered_at, device_id, address_id``. A mapping
    without ``buyer_id`` is an update: only ``order_id``, ``shipped_at`` and
    ``delivered_at`` are read.
    """
    d = _mapping(order, "An order event")
    oid = check_id(d, "order_id")
    shipped = _time(d, "shipped_at", False)
    delivered = _time(d, "delivered_at", False)
    if "buyer_id" not in d:
        if shipped == NAT and delivered == NAT:
            raise RequestError("An order update needs 'shipped_at' or 'delivered_at' (a new order needs "
                               "'buyer_id', 'store_id', 'category', 'amount' and 'paid_at').",
                               field="buyer_id", value=None)
        if delivered != NAT and shipped != NAT and delivered < shipped:
            raise _order_rule("delivered_at", d.get("delivered_at"), "must not be before 'shipped_at'")
        return OrderEvent(oid, None, None, math.nan, NAT, shipped, delivered, None, None)  # type: ignore[arg-type]
    buyer = check_id(d, "buyer_id")
    store = check_id(d, "store_id")
    cat = d.get("category")
    if not isinstance(cat, str) or not cat.strip():
        raise RequestError(f"The field 'category' is required (a non-empty string); got {cat!r}.",
                           field="category", value=cat)
    amount = _amount(d, "amount", positive=False)
    paid = _time(d, "paid_at", True)
    ship_by = _time(d, "ship_by", False)
    if ship_by != NAT and ship_by < paid:
        raise _order_rule("ship_by", d.get("ship_by"), "must not be before 'paid_at'")
    if shipped != NAT and shipped < paid:
        raise _order_rule("shipped_at", d.get("shipped_at"), "must not be before 'paid_at'")
    if delivered != NAT and shipped == NAT:
        raise _order_rule("delivered_at", d.get("delivered_at"), "needs a 'shipped_at' (an order is "
                          "shipped before it is delivered)")
    if delivered != NAT and delivered < shipped:
        raise _order_rule("delivered_at", d.get("delivered_at"), "must not be before 'shipped_at'")
    return OrderEvent(oid, buyer, store, amount, paid, shipped, delivered,  # type: ignore[arg-type]
                      check_id(d, "device_id", True), check_id(d, "address_id", True))


def check_order_update(event: OrderEvent, stored: OrderEvent) -> tuple[int, int]:
    """Check a second sighting of an order against the stored one; return the new (shipped, delivered).

    Immutable fields must agree; ``shipped_at`` and ``delivered_at`` are set once.
    """
    if event.buyer_id is not None:
        for field, new, old in (("buyer_id", event.buyer_id, stored.buyer_id),
                                ("store_id", event.store_id, stored.store_id),
                                ("paid_at", event.paid, stored.paid),
                                ("amount", event.amount, stored.amount),
                                ("device_id", event.device_id, stored.device_id),
                                ("address_id", event.address_id, stored.address_id)):
            if new != old:
                raise RequestError(f"The field {field!r} of order {event.order_id!r} differs from the one "
                                   f"observed before ({old!r}); got {new!r}.", field=field, value=new)
    shipped, delivered = stored.shipped, stored.delivered
    for field, new, old in (("shipped_at", event.shipped, stored.shipped),
                            ("delivered_at", event.delivered, stored.delivered)):
        if new != NAT and old != NAT and new != old:
            raise RequestError(f"The field {field!r} of order {event.order_id!r} was observed before with "
                               f"another value ({old} ns); got {new} ns.", field=field, value=new)
    if event.shipped != NAT:
        shipped = event.shipped
    if event.delivered != NAT:
        delivered = event.delivered
    if shipped != NAT and shipped < stored.paid:
        raise _order_rule("shipped_at", shipped, "must not be before 'paid_at'")
    if delivered != NAT and shipped == NAT:
        raise _order_rule("delivered_at", delivered, "needs a 'shipped_at' (an order is shipped before "
                          "it is delivered)")
    if delivered != NAT and delivered < shipped:
        raise _order_rule("delivered_at", delivered, "must not be before 'shipped_at'")
    return shipped, delivered


def parse_resolution(refund_id: Any, resolved_at: Any, outcome: Any, is_abuse: Any = None) -> Resolution:
    """Read a refund's resolution (``resolved_at`` required, ``outcome`` one of the contract's)."""
    rid = check_id({"refund_id": refund_id}, "refund_id")
    res = _time({"resolved_at": resolved_at}, "resolved_at", True)
    out = _enum({"outcome": outcome}, "outcome", OUTCOMES)
    return Resolution(rid, res, out, _label(is_abuse))  # type: ignore[arg-type]


def parse_refund(refund: Any) -> RefundEvent:
    """Read a refund request; with ``resolved_at`` and ``outcome`` it carries its resolution too."""
    d = _mapping(refund, "A refund event")
    rid = check_id(d, "refund_id")
    oid = check_id(d, "order_id")
    t = _time(d, "requested_at", True)
    kind = _enum(d, "kind", KINDS)
    reason = _enum(d, "reason", REASONS)
    amount = _amount(d, "amount", positive=True)
    resolved = _time(d, "resolved_at", False)
    outcome = d.get("outcome")
    resolution = None
    if (resolved == NAT) != _missing(outcome):
        raise RequestError("The field 'outcome' must be given exactly when 'resolved_at' is; got "
                           f"outcome={outcome!r}, resolved_at={d.get('resolved_at')!r}.", field="outcome",
                           value=outcome)
    if resolved != NAT:
        resolution = parse_resolution(rid, d.get("resolved_at"), outcome, d.get("is_abuse"))
        check_resolution(resolution, t)
    elif not _missing(d.get("is_abuse")):
        _label(d.get("is_abuse"))  # a label on an open refund is ignored, but it must still be a bool
    return RefundEvent(rid, oid, t, kind == "refund_only", reason == "not_received", amount,  # type: ignore[arg-type]
                       resolution)


def check_refund(event: RefundEvent, paid: int, order_amount: float, refunded: float) -> None:
    """Rules of a refund against its order: not before its payment, the refunds' sum within the amount."""
    if event.requested < paid:
        raise RequestError(f"The field 'requested_at' of refund {event.refund_id!r} is before its order's "
                           f"paid_at ({paid} ns); got {event.requested} ns.", field="requested_at",
                           value=event.requested)
    if refunded + event.amount > order_amount + REFUND_SUM_TOLERANCE:
        raise RequestError(f"The field 'amount' of refund {event.refund_id!r}: the order's refunds would sum "
                           f"to {refunded + event.amount:.2f}, more than its amount {order_amount:.2f} "
                           f"(+{REFUND_SUM_TOLERANCE}); got {event.amount!r}.", field="amount",
                           value=event.amount)


def check_resolution(res: Resolution, requested: int) -> None:
    """A resolution is not before its refund's request."""
    if res.resolved < requested:
        raise RequestError(f"The field 'resolved_at' of refund {res.refund_id!r} is before its request "
                           f"({requested} ns); got {res.resolved} ns.", field="resolved_at",
                           value=res.resolved)


def same_refund(event: RefundEvent, stored: RefundEvent) -> None:
    """A second sighting of a refund must be the same request."""
    for field, new, old in (("order_id", event.order_id, stored.order_id),
                            ("requested_at", event.requested, stored.requested),
                            ("kind", event.refund_only, stored.refund_only),
                            ("reason", event.not_received, stored.not_received),
                            ("amount", event.amount, stored.amount)):
        if new != old:
            raise RequestError(f"The field {field!r} of refund {event.refund_id!r} differs from the one "
                               f"observed before.", field=field, value=new)


def same_resolution(new: Resolution, old: Resolution) -> None:
    """A refund is resolved once: a second, different resolution is an error."""
    for field, a, b in (("resolved_at", new.resolved, old.resolved), ("outcome", new.outcome, old.outcome),
                        ("is_abuse", new.is_abuse, old.is_abuse)):
        if a != b:
            raise RequestError(f"The field {field!r}: refund {new.refund_id!r} was resolved before with "
                               f"{b!r}; got {a!r}.", field=field, value=a)


def parse_request_key(request: Any) -> RequestKey:
    """What a profile lookup needs: ``requested_at, buyer_id, store_id`` and optional ``device_id, address_id``."""
    d = _mapping(request, "A request")
    t = field_ns(d.get("requested_at"), "requested_at", required=True)
    return RequestKey(t, check_id(d, "buyer_id"), check_id(d, "store_id"),  # type: ignore[arg-type]
                      check_id(d, "device_id", True), check_id(d, "address_id", True))


__all__ += ["same_refund", "same_resolution", "NEVER"]
