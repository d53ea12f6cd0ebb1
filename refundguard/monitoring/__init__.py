"""Analyst tools: drift (PSI), policy what-if replays, and the report with plots.

One job per module::

    period.py   score a period once (gated requests too) with its labels and days
    drift.py    PSI of features, score and gated share against the model's training bins
    whatif.py   replay a period under other gates, intercept precisions and review capacity
    plots.py    every figure (matplotlib, Agg canvas, no pyplot); needs the ``report`` extra
    report.py   the HTML page and its PNG figures

Only drawing needs matplotlib: :func:`drift` and :func:`whatif` work without it
(their ``plot`` methods need it), :func:`write_report` needs it.

>>> from refundguard.monitoring import drift, whatif, write_report
>>> write_report("models/2026-11", tables, "report/", "2026-11-01", "2026-12-01")  # doctest: +SKIP
"""

from refundguard.monitoring.drift import (
    PSI_MODERATE,
    PSI_SIGNIFICANT,
    DriftReport,
    drift,
    drift_table,
    psi,
)
from refundguard.monitoring.period import ScoredPeriod, score_period
from refundguard.monitoring.report import FIGURES, Report, write_report
from refundguard.monitoring.whatif import (
    PolicyVariant,
    WhatIf,
    apply_review_capacity,
    replay,
    whatif,
)

__all__ = [
    "FIGURES",
    "PSI_MODERATE",
    "PSI_SIGNIFICANT",
    "DriftReport",
    "PolicyVariant",
    "Report",
    "ScoredPeriod",
    "WhatIf",
    "apply_review_capacity",
    "drift",
    "drift_table",
    "psi",
    "replay",
    "score_period",
    "whatif",
    "write_report",
]
