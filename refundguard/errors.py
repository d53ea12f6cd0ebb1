"""Every exception and warning refundguard raises.

Each exception carries what went wrong as data (attributes), not only as text,
so that callers can react to it programmatically. This module imports nothing
from the package.

Hierarchy::

    RefundGuardError                      base of everything raised on purpose
    +-- SchemaError(RefundGuardError, ValueError)   a table breaks the data contract
    +-- ConfigError(RefundGuardError, ValueError)   a configuration value is invalid
    +-- RequestError(RefundGuardError, ValueError)  one online request is malformed
    +-- ModelError(RefundGuardError)                a model artifact is missing, corrupt or incompatible
    +-- NotFittedError(RefundGuardError, ValueError, AttributeError)
    +-- DataError(RefundGuardError, ValueError)     data is valid but unusable for the job

    RefundGuardWarning(UserWarning)
    +-- RejectedRowsWarning       quarantine dropped rows
    +-- ThresholdUnreachableWarning   a target precision could not be reached
    +-- UnseenCategoryWarning     a category level unseen at training time
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = [
    "SCHEMA_RULES",
    "RefundGuardError",
    "SchemaError",
    "ConfigError",
    "RequestError",
    "ModelError",
    "NotFittedError",
    "DataError",
    "RefundGuardWarning",
    "RejectedRowsWarning",
    "ThresholdUnreachableWarning",
    "UnseenCategoryWarning",
]


#: The stable rule codes of :class:`SchemaError` and of the rejects table's ``rule`` column:
#: code -> what broke. Programs may switch on these codes; they only ever grow.
SCHEMA_RULES: dict[str, str] = {
    # the tables as a whole
    "missing_folder": "the data folder does not exist",
    "missing_table": "a required table is absent",
    "unknown_table": "a table name outside orders, refunds, reviews, service",
    "ambiguous_table": "a table is present in more than one file format",
    "unreadable": "a file cannot be read",
    "not_a_frame": "a table is not a pandas DataFrame",
    "missing_column": "a required column is absent",
    "duplicate_column": "a column name appears twice",
    "dtype": "a column of tables given as validated (validate_tables=False) lacks its canonical dtype",
    "format": "an output file name has an unsupported extension",
    # one cell or one row (validate's rejects use these)
    "type": "a cell cannot be read as its column's type",
    "required": "a required value is null",
    "unique": "an id that must be unique appears more than once",
    "enum": "a value outside the column's levels",
    "min": "a number below its minimum (or not finite)",
    "range": "a value outside its allowed range (amounts: at most MAX_AMOUNT = 1e12; instants: 1970-01-01 to 2200-01-01)",
    "id_whitespace": "an id with leading or trailing whitespace",
    "exists": "a reference to an order that is not in orders",
    "parent_rejected": "the order this row references was rejected",
    "after_paid_at": "an instant before the order's paid_at",
    "after_shipped_at": "delivered_at before shipped_at",
    "shipped_first": "delivered_at given while shipped_at is null",
    "after_requested_at": "an instant before the refund's requested_at",
    "outcome_iff_resolved": "outcome null while resolved_at is set, or the reverse",
    "refund_sum": "an order's refunds sum to more than its amount (+0.01)",
    # derived inputs (requests, profiles, feature matrices, score histories)
    "aligned": "two inputs that must have one row each per request do not",
    "before_first_policy": "a request before the first policy version",
    "feature_name": "a feature name LightGBM cannot store",
    "missing_file": "a file of a public data set is absent",
}


class RefundGuardError(Exception):
    """Base class of every exception raised by refundguard on purpose."""


class SchemaError(RefundGuardError, ValueError):
    """A table breaks the data contract.

    Parameters
    ----------
    message
        The human-readable message.
    table
        The table (``orders``, ``refunds``, ``reviews``, ``service``) or ``None``.
    column
        The offending column or ``None`` when the problem is table-wide.
    rule
        The rule that failed: one of the stable codes of :data:`SCHEMA_RULES`
        (``missing_column``, ``required``, ``unique``, ``type``, ...).
    n_bad
        How many rows break the rule.
    values
        The first few offending values.
    """

    def __init__(
        self,
        message: str,
        *,
        table: str | None = None,
        column: str | None = None,
        rule: str | None = None,
        n_bad: int = 0,
        values: Sequence[Any] = (),
    ) -> None:
        super().__init__(message)
        self.table = table
        self.column = column
        self.rule = rule
        self.n_bad = int(n_bad)
        self.values = list(values)


class ConfigError(RefundGuardError, ValueError):
    """A configuration object got an invalid value.

    Parameters
    ----------
    message
        The human-readable message, in scikit-learn's style ("The 'x' parameter
        of Owner must be ... Got ... instead.").
    owner
        The class that rejected the value.
    field
        The field (parameter) name.
    value
        The value received.
    """

    def __init__(
        self, message: str, *, owner: str | None = None, field: str | None = None, value: Any = None
    ) -> None:
        super().__init__(message)
        self.owner = owner
        self.field = field
        self.value = value

    @classmethod
    def invalid(cls, owner: str, field: str, constraint: str, value: Any, extra: str = "") -> ConfigError:
        """The scikit-learn style error: "The 'x' parameter of Owner must be ... Got ... instead."."""
        return cls(
            f"The {field!r} parameter of {owner} must be {constraint}{extra}. Got {value!r} instead.",
            owner=owner,
            field=field,
            value=value,
        )


class RequestError(RefundGuardError, ValueError):
    """A single online refund request is malformed.

    Parameters
    ----------
    message
        The human-readable message.
    field
        The request field that is missing or bad.
    value
        The value received.
    """

    def __init__(self, message: str, *, field: str | None = None, value: Any = None) -> None:
        super().__init__(message)
        self.field = field
        self.value = value


class ModelError(RefundGuardError):
    """A model artifact is missing, corrupt, tampered with or incompatible.

    Parameters
    ----------
    message
        The human-readable message.
    path
        The model folder or file concerned.
    problem
        A short machine-readable code (``missing_file``, ``extra_file``,
        ``hash_mismatch``, ``format_version``, ``feature_list``, ``parse``, ...).
    """

    def __init__(self, message: str, *, path: str | None = None, problem: str | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.problem = problem


class NotFittedError(RefundGuardError, ValueError, AttributeError):
    """An estimator was used before ``fit``."""


class DataError(RefundGuardError, ValueError):
    """Data passes the contract but cannot serve the job (e.g. an empty training slice).

    Parameters
    ----------
    message
        The human-readable message.
    detail
        Any structured detail (counts, dates).
    """

    def __init__(self, message: str, *, detail: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.detail = dict(detail or {})


class RefundGuardWarning(UserWarning):
    """Base class of refundguard's warnings."""


class RejectedRowsWarning(RefundGuardWarning):
    """Validation in quarantine mode rejected rows."""


class ThresholdUnreachableWarning(RefundGuardWarning):
    """A target precision cannot be reached on validation data; the action is disabled."""


class UnseenCategoryWarning(RefundGuardWarning):
    """A category level was not seen at training time; it is treated as missing."""
