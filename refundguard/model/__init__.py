"""The abuse model subpackage: re-exports only (DESIGN.md section 11).

One module per job:

* :mod:`.encoder`: :class:`FeatureEncoder`, model input from the stored feature list and levels;
* :mod:`.estimator`: :class:`RefundAbuseClassifier`, the scikit-learn estimator over LightGBM;
* :mod:`.calibration`: :class:`Calibrator` and :func:`choose_calibrator`;
* :mod:`.explain`: :class:`PathExplainer` and :func:`reasons_from_contributions`;
* :mod:`.fast`: :class:`FastRowPredictor`, LightGBM's fast single-row C API;
* :mod:`._not_fitted` (private): the not-fitted error the estimators raise.
"""

from __future__ import annotations

from refundguard.model.calibration import Calibrator, choose_calibrator
from refundguard.model.encoder import FeatureEncoder
from refundguard.model.estimator import RefundAbuseClassifier
from refundguard.model.explain import PathExplainer, reasons_from_contributions
from refundguard.model.fast import FastRowPredictor

__all__ = [
    "FeatureEncoder",
    "FastRowPredictor",
    "PathExplainer",
    "RefundAbuseClassifier",
    "Calibrator",
    "choose_calibrator",
    "reasons_from_contributions",
]
