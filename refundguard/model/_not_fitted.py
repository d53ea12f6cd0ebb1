"""The not-fitted error raised by the model subpackage's estimators.

One job: a :class:`refundguard.errors.NotFittedError` that scikit-learn also
recognises as its own ``NotFittedError`` (``check_is_fitted``, the estimator
checks), shared by :mod:`.estimator` and :mod:`.calibration`.
"""

from __future__ import annotations

from sklearn.exceptions import NotFittedError as _SklearnNotFittedError

from refundguard.errors import NotFittedError

__all__ = ["NotFitted"]


class NotFitted(NotFittedError, _SklearnNotFittedError):
    """refundguard's NotFittedError that scikit-learn also recognises as its own."""
