"""refundguard: stop abuse of refund-only requests on a marketplace.

Public API re-exports only; no logic lives here.
"""

from refundguard._version import __version__
from refundguard.errors import (
    ConfigError,
    DataError,
    ModelError,
    NotFittedError,
    RefundGuardError,
    RefundGuardWarning,
    RejectedRowsWarning,
    RequestError,
    SchemaError,
)

__all__ = [
    "__version__",
    "ConfigError",
    "DataError",
    "ModelError",
    "NotFittedError",
    "RefundGuardError",
    "RefundGuardWarning",
    "RejectedRowsWarning",
    "RequestError",
    "SchemaError",
]
