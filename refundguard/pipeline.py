"""One path from tables to a point-in-time feature matrix, shared by training, evaluation and scoring.

tables -> refund requests (joined to their orders) -> profiles as of each request
-> features. Training, ``evaluate`` and batch scoring all call
:func:`point_in_time_features`, so the three can never drift apart.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from refundguard.config import ScoreConfig
from refundguard.evaluation import Evaluation, evaluate_predictions
from refundguard.features import build_features
from refundguard.profiles import Profiles, profiles_as_of, requests_from_tables
# the one coercion path lives in tables; re-exported here, where callers have imported it from
from refundguard.tables import canonical_tables

__all__ = ["FeatureBatch", "point_in_time_features", "canonical_tables"]


@dataclass(frozen=True)
class FeatureBatch:
    """Requests with their profiles and features, row ``i`` of each for request ``i``.

    Attributes
    ----------
    requests
        Refund requests joined to their orders, sorted by ``(requested_at, refund_id)``,
        with a fresh ``RangeIndex``.
    profiles
        Their buyer / store / link profiles as of ``requested_at``.
    X
        The feature matrix (``refundguard.features.FEATURE_NAMES`` columns).
    """

    requests: pd.DataFrame
    profiles: Profiles
    X: pd.DataFrame

    def __len__(self) -> int:
        return len(self.requests)

    def policy_requests(self) -> pd.DataFrame:
        """The columns the policy reads (``gate_batch`` / ``decide_batch``), one row per request."""
        store = self.profiles.store
        return pd.DataFrame(
            {
                "refund_id": self.requests["refund_id"].to_numpy(),
                "requested_at": self.requests["requested_at"].reset_index(drop=True),
                "kind": self.requests["kind"].to_numpy(),
                "buyer_id": self.requests["buyer_id"].to_numpy(),
                "store_score": store["score"].to_numpy(dtype=np.float64),
                "provisional": store["provisional"].to_numpy(dtype=bool),
                "store_score_missing": store["score_missing"].to_numpy(dtype=bool),
            }
        )

    def evaluate(self, mask: np.ndarray, p: np.ndarray, intercept_threshold: float | None) -> Evaluation:
        """Metrics of calibrated probabilities ``p`` for the (labelled) rows selected by ``mask``."""
        req = self.requests.loc[mask]
        return evaluate_predictions(
            req["is_abuse"].astype(bool).to_numpy(),
            p,
            req["amount"].to_numpy(dtype=np.float64),
            category=req["category"].astype(object).to_numpy(),
            store_score=self.profiles.store["score"].to_numpy(dtype=np.float64)[mask],
            intercept_threshold=intercept_threshold,
        )


def point_in_time_features(
    tables: Mapping[str, pd.DataFrame],
    start: Any = None,
    end: Any = None,
    *,
    score_config: ScoreConfig | None = None,
    category_levels: Sequence[str] | None = None,
    with_labels: bool = False,
    store_scores: pd.DataFrame | None = None,
    progress: bool = False,
) -> FeatureBatch:
    """Build the features of every refund requested in ``[start, end)``.

    Everything is as of each request's ``requested_at``: history strictly before
    it, store scores from the row of its day (DESIGN.md sections 2-4).

    Parameters
    ----------
    tables
        Validated tables (:func:`refundguard.tables.validate` output).
    start, end
        Half-open bounds on ``requested_at``; ``None`` is unbounded.
    score_config
        Store score configuration (default ``ScoreConfig()``).
    category_levels
        Levels of the ``category`` feature (a model's stored levels); ``None``
        learns them from these requests.
    with_labels
        Keep ``resolved_at, outcome, escalated, is_abuse`` in ``requests``
        (training and evaluation; features never read them).
    store_scores
        A precomputed daily store score history, if there is one.
    progress
        Show a progress bar over the three steps (requests, profiles, features).

    Returns
    -------
    FeatureBatch
    """
    with tqdm(total=3, desc="point-in-time features", unit="step", disable=not progress, leave=False) as bar:
        # requests_from_tables returns them sorted by (requested_at, refund_id)
        bar.set_postfix_str("requests")
        requests = requests_from_tables(dict(tables), start, end, with_labels=with_labels).reset_index(drop=True)
        bar.update()
        bar.set_postfix_str(f"profiles of {len(requests):,} requests")
        profiles = profiles_as_of(dict(tables), requests, score_config=score_config, store_scores=store_scores)
        bar.update()
        bar.set_postfix_str("features")
        X = build_features(requests, profiles, category_levels=category_levels)
        bar.update()
    return FeatureBatch(requests=requests, profiles=profiles, X=X.reset_index(drop=True))
