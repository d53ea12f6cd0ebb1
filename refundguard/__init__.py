"""refundguard: stop abuse of refund-only requests on a marketplace.

Public API re-exports only; no logic lives here.

>>> import refundguard as rg
>>> tables = rg.load_tables("data/")                       # doctest: +SKIP
>>> clean, rejects = rg.validate(tables, mode="quarantine")  # doctest: +SKIP
>>> scores = rg.store_scores(clean, as_of="2024-10-01")    # doctest: +SKIP
>>> model = rg.train(clean, train_end="2024-09-01", valid_end="2024-10-01")  # doctest: +SKIP
>>> guard = rg.RefundGuard.default()                       # doctest: +SKIP
"""

from refundguard._version import __version__
from refundguard.artifacts import LoadedModel, SavedModel, load_model, save_model, verify_model
from refundguard.config import PolicyConfig, ScoreConfig
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
    ThresholdUnreachableWarning,
    UnseenCategoryWarning,
)
from refundguard.evaluation import Evaluation, Thresholds, choose_thresholds, evaluate_predictions
from refundguard.features import (
    CATEGORICAL_FEATURES,
    FEATURE_NAMES,
    FEATURES,
    Feature,
    build_features,
    build_features_one,
)
from refundguard.guard import SCORED_COLUMNS, RefundGuard
from refundguard.model import Calibrator, RefundAbuseClassifier, choose_calibrator
from refundguard.pipeline import FeatureBatch, point_in_time_features
from refundguard.policy import ACTIONS, Decision, PolicyTimeline, decide_batch, decide_one
from refundguard.profiles import (
    BuyerProfile,
    LinkProfile,
    ProfileStore,
    Profiles,
    StoreProfile,
    request_record,
    profiles_as_of,
    requests_from_tables,
)
from refundguard.datasets import load_olist
from refundguard.scores import (
    OUTPUT_COLUMNS as STORE_SCORE_COLUMNS,
    StoreExplanation,
    calibrate_bands,
    explain_store,
    publish_score,
    store_score_history,
    store_scores,
    store_scores_for_requests,
)
from refundguard.simulate import SimulationConfig, simulate, simulate_to_parquet
from refundguard.tables import REJECT_COLUMNS, load_tables, validate
from refundguard.training import Promotion, TrainedModel, evaluate, promote_if_better, train

__all__ = [
    "__version__",
    # data contract
    "load_tables",
    "validate",
    "REJECT_COLUMNS",
    # simulator
    "SimulationConfig",
    "simulate",
    "simulate_to_parquet",
    # store experience score
    "ScoreConfig",
    "store_scores",
    "store_score_history",
    "publish_score",
    "explain_store",
    "StoreExplanation",
    "calibrate_bands",
    "store_scores_for_requests",
    "STORE_SCORE_COLUMNS",
    "load_olist",
    # profiles and features
    "BuyerProfile",
    "StoreProfile",
    "LinkProfile",
    "Profiles",
    "ProfileStore",
    "profiles_as_of",
    "requests_from_tables",
    "request_record",
    "Feature",
    "FEATURES",
    "CATEGORICAL_FEATURES",
    "FEATURE_NAMES",
    "build_features",
    "build_features_one",
    "FeatureBatch",
    "point_in_time_features",
    # model, training, evaluation, artifacts
    "RefundAbuseClassifier",
    "Calibrator",
    "choose_calibrator",
    "train",
    "TrainedModel",
    "evaluate",
    "promote_if_better",
    "Promotion",
    "evaluate_predictions",
    "Evaluation",
    "choose_thresholds",
    "Thresholds",
    "save_model",
    "load_model",
    "verify_model",
    "LoadedModel",
    "SavedModel",
    # policy and decisions
    "PolicyConfig",
    "PolicyTimeline",
    "Decision",
    "ACTIONS",
    "decide_one",
    "decide_batch",
    "RefundGuard",
    "SCORED_COLUMNS",
    # errors and warnings
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
