"""refundguard: stop abuse of refund-only requests on a marketplace.

Public API re-exports only; no logic lives here. ``__all__`` holds the task-level
names; the building blocks stay importable from their modules
(``refundguard.tables``, ``.scores``, ``.profiles``, ``.online``, ``.features``, ``.model``,
``.evaluation``, ``.artifacts``, ``.policy``, ``.pipeline``, ``.guard``,
``.training``, ``.simulate``, ``.datasets``, ``.demo``).

>>> import refundguard as rg
>>> tables = rg.load_tables("data/")                       # doctest: +SKIP
>>> clean, rejects = rg.validate(tables, mode="quarantine")  # doctest: +SKIP
>>> scores = rg.store_scores(clean, as_of="2024-10-01")    # doctest: +SKIP
>>> model = rg.train(clean, train_end="2024-09-01", valid_end="2024-10-01")  # doctest: +SKIP
>>> guard = rg.RefundGuard.default()                       # doctest: +SKIP
"""

from refundguard._version import __version__
from refundguard.config import PolicyConfig, ScoreConfig
from refundguard.errors import (
    ConfigError,
    DataError,
    ModelError,
    NotFittedError,
    RefundGuardError,
    RefundGuardWarning,
    RequestError,
    SchemaError,
)
from refundguard.guard import RefundGuard
from refundguard.model import RefundAbuseClassifier
from refundguard.online import ProfileStore
from refundguard.policy import Decision, PolicyTimeline
from refundguard.scores import calibrate_bands, explain_store, publish_score, store_score_history, store_scores
from refundguard.simulate import SimulationConfig, simulate
from refundguard.tables import load_tables, validate
from refundguard.training import evaluate, train

__all__ = [
    "__version__",
    # data: the contract's tables, a simulated marketplace
    "load_tables",
    "validate",
    "simulate",
    "SimulationConfig",
    # store experience score
    "ScoreConfig",
    "store_scores",
    "store_score_history",
    "explain_store",
    "calibrate_bands",
    "publish_score",
    # online state, the model, training
    "ProfileStore",
    "RefundAbuseClassifier",
    "train",
    "evaluate",
    # decisions
    "RefundGuard",
    "Decision",
    "PolicyConfig",
    "PolicyTimeline",
    # errors
    "RefundGuardError",
    "SchemaError",
    "ConfigError",
    "RequestError",
    "ModelError",
    "DataError",
    "NotFittedError",
    "RefundGuardWarning",
]
