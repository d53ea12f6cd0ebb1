"""RefundGuard: one verified model plus the dated policy, online (``assess``) and batch (``score_history``).

The online path is plain Python: request + profiles -> ``build_features_one`` ->
an encoded float64 row (stored feature order and category levels) -> LightGBM's
single-row prediction on one thread -> calibration -> :func:`policy.decide_one`.
The batch path builds the same features with :func:`pipeline.point_in_time_features`
and decides with :func:`policy.decide_batch`; the parity tests hold the two equal.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from refundguard.artifacts import LoadedModel, load_model
from refundguard.config import ScoreConfig
from refundguard._time import NAT, field_ns, utc_series
from refundguard.errors import ConfigError, DataError, ModelError, RequestError, UnseenCategoryWarning
from refundguard.evaluation import Evaluation
from refundguard.features import FEATURE_NAMES, build_features, build_features_one
from refundguard.model import (
    Calibrator,
    FeatureEncoder,
    PathExplainer,
    RefundAbuseClassifier,
    reasons_from_contributions,
)
from refundguard.batch import DEFAULT_CHUNK_DAYS, SCORED_COLUMNS
from refundguard.online._events import check_id
from refundguard.pipeline import canonical_tables, point_in_time_features
from refundguard.policy import Decision, PolicyTimeline, decide_one
from refundguard.profiles import Profiles
from refundguard.registry import resolve_model_path

__all__ = ["RefundGuard", "SCORED_COLUMNS", "default_model_path"]

_REASONS = 3


def default_model_path() -> Path:
    """Folder of the bundled default model.

    Installed from the wheel, the model is package data (``refundguard/_default_model``);
    in a source checkout (editable install included) it is ``models/default`` beside the
    package. ``REFUNDGUARD_DEFAULT_MODEL`` overrides both.
    """
    env = os.environ.get("REFUNDGUARD_DEFAULT_MODEL")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent
    installed = here / "_default_model"
    if (installed / "MANIFEST").is_file():
        return installed
    return here.parent / "models" / "default"


@dataclass(frozen=True)
class _State:
    """Everything one model needs to serve; swapped as a whole by :meth:`RefundGuard.reload`."""

    loaded: LoadedModel
    classifier: RefundAbuseClassifier
    encoder: FeatureEncoder
    explainer: PathExplainer
    calibrator: Calibrator | None
    policy: PolicyTimeline
    score_config: ScoreConfig
    category_levels: tuple[str, ...] | None


def _state(loaded: LoadedModel, policy: PolicyTimeline | None) -> _State:
    if loaded.features != list(FEATURE_NAMES):
        missing = sorted(set(FEATURE_NAMES) - set(loaded.features))
        extra = sorted(set(loaded.features) - set(FEATURE_NAMES))
        raise ModelError(
            f"The model at {loaded.path} was trained on another feature list (missing {missing}, extra {extra}, "
            "or another order); retrain it with this refundguard version.",
            path=str(loaded.path),
            problem="feature_list",
        )
    th = loaded.meta.get("thresholds") or {}
    timeline = policy if policy is not None else PolicyTimeline.default()
    timeline = timeline.with_thresholds(th.get("intercept"), th.get("review"))
    cfg_dict = loaded.meta.get("score_config")
    cfg = ScoreConfig.from_dict(cfg_dict) if cfg_dict else ScoreConfig()
    levels = loaded.categories.get("category")
    return _State(
        loaded=loaded,
        classifier=loaded.classifier(),
        encoder=loaded.encoder(),
        explainer=PathExplainer(loaded.booster),
        calibrator=loaded.calibrator(),
        policy=timeline,
        score_config=cfg,
        category_levels=None if levels is None else tuple(levels),
    )


class RefundGuard:
    """Decide refund-only requests with a verified model and the dated policy.

    Parameters
    ----------
    model
        A :class:`~refundguard.artifacts.LoadedModel` (see :meth:`load`).
    policy
        Policy timeline; the model's thresholds are applied to every version.
        Default: :meth:`PolicyTimeline.default` (no gate before 2024-08-09, the
        4.80 gate from then on).

    Notes
    -----
    ``assess`` is thread safe: each thread gets its own LightGBM single-row
    config, and :meth:`reload` swaps the whole serving state in one assignment.
    """

    def __init__(self, model: LoadedModel, policy: PolicyTimeline | None = None) -> None:
        self._policy_arg = policy
        self._state = _state(model, policy)
        self._local = threading.local()
        self._warm_up()

    # ------------------------------------------------------------------ construction
    @classmethod
    def load(cls, path: str | Path, *, expected_sha256: str | None = None,
             policy: PolicyTimeline | None = None) -> RefundGuard:
        """Load and verify a model folder (see :func:`refundguard.artifacts.load_model`).

        ``path`` may also be a model registry (:class:`refundguard.registry.ModelRegistry`):
        its ``current`` version is served.
        """
        return cls(load_model(resolve_model_path(path), expected_sha256=expected_sha256), policy=policy)

    @classmethod
    def default(cls, policy: PolicyTimeline | None = None) -> RefundGuard:
        """The bundled default model (``models/default``), trained on simulated data."""
        path = default_model_path()
        if not path.exists():
            raise ModelError(
                f"The bundled default model is not at {path}; install refundguard from a source checkout "
                "(pip install -e .) or set REFUNDGUARD_DEFAULT_MODEL.",
                path=str(path),
                problem="missing_model",
            )
        return cls.load(path, policy=policy)

    def reload(self, path: str | Path, *, expected_sha256: str | None = None) -> None:
        """Swap in another model atomically; on any error the current model keeps serving.

        ``path`` may be a model folder or a registry (its ``current`` version).

        Raises
        ------
        ModelError
            The new folder fails verification (the old model is still in use).
        """
        new_state = _state(load_model(resolve_model_path(path), expected_sha256=expected_sha256), self._policy_arg)
        self._state = new_state  # one reference assignment: readers see old or new, never a mix
        self._local = threading.local()
        self._warm_up()

    def _warm_up(self) -> None:
        st = self._state
        row = np.full(len(st.loaded.features), np.nan)
        self._predictor(st).predict(row)

    # ------------------------------------------------------------------ properties
    @property
    def model_version(self) -> str:
        """The serving model's version."""
        return self._state.loaded.model_version

    @property
    def policy(self) -> PolicyTimeline:
        """The policy timeline in use (with the model's thresholds)."""
        return self._state.policy

    @property
    def meta(self) -> dict[str, Any]:
        """The serving model's ``meta.json``."""
        return self._state.loaded.meta

    @property
    def score_config(self) -> ScoreConfig:
        """The store score configuration the model was trained with."""
        return self._state.score_config

    @property
    def category_levels(self) -> tuple[str, ...] | None:
        """The ``category`` feature's levels stored in the model (``None`` when it has none)."""
        return self._state.category_levels

    def feature_importance(self, importance_type: str = "gain") -> pd.Series:
        """The serving model's feature importance, read from its LightGBM booster.

        Parameters
        ----------
        importance_type : {"gain", "split"}, default "gain"
            ``"gain"``: total loss reduction of the splits on each feature;
            ``"split"``: how many splits use it.

        Returns
        -------
        pandas.Series
            One value per feature (index: feature names in model order), as float.
        """
        if importance_type not in ("gain", "split"):
            raise ConfigError.invalid("RefundGuard.feature_importance", "importance_type", "'gain' or 'split'",
                                      importance_type)
        booster = self._state.loaded.booster
        values = booster.feature_importance(importance_type=importance_type)
        return pd.Series(np.asarray(values, dtype=np.float64), index=list(booster.feature_name()),
                         name=f"importance_{importance_type}")

    # ------------------------------------------------------------------ online
    def _predictor(self, st: _State) -> Any:
        cache = getattr(self._local, "predictor", None)
        if cache is None or cache[0] is not st:
            cache = (st, st.classifier.fast_row_predictor())
            self._local.predictor = cache
        return cache[1]

    def _calibrate_one(self, st: _State, raw: float) -> float:
        return raw if st.calibrator is None else float(st.calibrator.transform_one(raw))

    def assess(
        self,
        request: Mapping[str, Any],
        profiles: tuple[Any, Any, Any] | None = None,
        *,
        store: Any = None,
        explain: bool = False,
        always_score: bool = False,
    ) -> Decision:
        """Decide one refund request (online path: plain Python, one thread, no I/O of its own).

        Parameters
        ----------
        request
            The refund request with its order's fields: ``refund_id, requested_at,
            buyer_id, kind, reason, amount, paid_at, order_amount`` and optionally
            ``shipped_at, delivered_at, category, store_id, device_id, address_id``.
        profiles
            ``(BuyerProfile, StoreProfile, LinkProfile)`` as of ``requested_at``
            (from :func:`refundguard.profiles.profiles_as_of`), or ``None`` with ``store``.
        store
            A :class:`refundguard.online.ProfileStore` (or ``RedisProfileStore``): the
            profiles are looked up there (``store.profiles(request)``), in the same call.
        explain
            Compute reasons for every scored request, not only review/intercept.
        always_score
            Score gated requests too (monitoring).

        Returns
        -------
        Decision

        Raises
        ------
        RequestError
            A field is missing or has a bad value (``request`` not a mapping, an
            amount above the order's, ...), or neither/both of ``profiles`` and
            ``store`` are given.
        """
        st = self._state
        refund_id, buyer_id = _check_request(request)
        profiles = _profiles_of(request, profiles, store)
        features = build_features_one(request, profiles)
        row: list[np.ndarray] = []

        def probability() -> float:
            encoded = st.encoder.encode_row(features)
            row.append(encoded)
            return self._calibrate_one(st, self._predictor(st).predict(encoded))

        def reasons() -> list[dict[str, Any]]:
            encoded = row[0] if row else st.encoder.encode_row(features)
            contrib = st.explainer.contributions_one(encoded)
            return reasons_from_contributions(st.encoder, encoded, contrib, k=_REASONS)

        store_profile = profiles[1]
        return decide_one(
            st.policy,
            refund_id=refund_id,
            requested_at=request["requested_at"],
            kind=request["kind"],
            buyer_id=buyer_id,
            store_score=store_profile.score,
            provisional=bool(store_profile.provisional),
            store_score_missing=bool(store_profile.score_missing),
            probability=probability,
            explain=reasons,
            explain_all=explain,
            always_score=always_score,
            model_version=st.loaded.model_version,
        )

    def assess_many(
        self,
        requests: Sequence[Mapping[str, Any]],
        profiles: Sequence[tuple[Any, Any, Any]] | None = None,
        *,
        store: Any = None,
        explain: bool = False,
        always_score: bool = False,
    ) -> list[Decision]:
        """Decide a micro-batch of requests through the vectorised path; equal to :meth:`assess` row by row.

        Profiles are looked up one by one (``store``) or given; the features are built
        with :func:`refundguard.features.build_features`, the model scores every row in
        one ``Booster.predict`` call, and each row is then decided by the same policy
        function as :meth:`assess`.

        Parameters
        ----------
        requests
            Refund requests, as for :meth:`assess`.
        profiles
            One ``(BuyerProfile, StoreProfile, LinkProfile)`` per request, or ``None`` with ``store``.
        store, explain, always_score
            As for :meth:`assess`.

        Returns
        -------
        list of Decision
            One per request, in order.

        Raises
        ------
        RequestError
            As :meth:`assess`, naming the field (and the request's position).
        """
        st = self._state
        if isinstance(requests, Mapping) or not isinstance(requests, Sequence):
            raise RequestError(f"requests must be a sequence of mappings; got {type(requests).__name__}.",
                               field=None, value=requests)
        if profiles is not None and (not isinstance(profiles, Sequence) or len(profiles) != len(requests)):
            raise RequestError("profiles must hold one (BuyerProfile, StoreProfile, LinkProfile) per request.",
                               field="profiles", value=profiles)
        if not requests:
            return []
        rows, ids = [], []
        for i, request in enumerate(requests):
            try:
                ids.append(_check_request(request))
                prof = _profiles_of(request, None if profiles is None else profiles[i], store)
                features = build_features_one(request, prof)  # the checks of one request, as assess does
            except RequestError as exc:
                raise RequestError(f"request {i}: {exc}", field=exc.field, value=exc.value) from None
            rows.append((prof, features))
        batch = _request_frame(requests)
        prof = Profiles.from_records(*zip(*(p for p, _ in rows), strict=True))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UnseenCategoryWarning)  # assess maps unseen levels to missing too
            X = build_features(batch, prof, category_levels=st.category_levels)
        encoded, _ = st.encoder.transform(X)
        raw = st.loaded.booster.predict(encoded, num_threads=1)
        out = []
        for i, request in enumerate(requests):
            store_profile = rows[i][0][1]
            p = self._calibrate_one(st, float(raw[i]))

            def reasons(i: int = i) -> list[dict[str, Any]]:
                contrib = st.explainer.contributions_one(encoded[i])
                return reasons_from_contributions(st.encoder, encoded[i], contrib, k=_REASONS)

            out.append(decide_one(
                st.policy,
                refund_id=ids[i][0],
                requested_at=request["requested_at"],
                kind=request["kind"],
                buyer_id=ids[i][1],
                store_score=store_profile.score,
                provisional=bool(store_profile.provisional),
                store_score_missing=bool(store_profile.score_missing),
                probability=p,
                explain=reasons,
                explain_all=explain,
                always_score=always_score,
                model_version=st.loaded.model_version,
            ))
        return out

    # ------------------------------------------------------------------ batch
    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        """Calibrated abuse probabilities of a feature matrix (batch)."""
        return _proba(self._state, X)

    def score_history(
        self,
        data: Mapping[str, pd.DataFrame] | str | os.PathLike[str],
        start: Any = None,
        end: Any = None,
        *,
        out: str | os.PathLike[str] | None = None,
        rejects: str | os.PathLike[str] | None = None,
        store_scores: pd.DataFrame | str | os.PathLike[str] | None = None,
        jobs: int = 1,
        chunk_days: int = DEFAULT_CHUNK_DAYS,
        always_score: bool = False,
        explain: bool = False,
        validate_tables: bool = True,
        progress: bool = False,
        return_rejects: bool = False,
        backend: str = "threads",
        compiled: bool | None = None,
    ) -> Any:
        """Decide every refund requested in ``[start, end)``, point in time, slice by slice.

        The batch engine (:mod:`refundguard.batch`): the tables are read once with
        only the columns needed, validated in quarantine mode (bad rows are set aside
        and reported, never decided), coded into integers, then decided in time
        slices of ``chunk_days`` on ``jobs`` threads (or processes). Every decision equals
        :meth:`assess` on the same request and profiles, and the output is the same
        for every ``jobs`` and ``chunk_days``.

        Parameters
        ----------
        data
            The contract's tables as a mapping of DataFrames, or a data folder
            (Parquet folders are read column by column; see :mod:`refundguard.sources`).
        start, end
            Half-open bounds on ``requested_at``; ``None`` is unbounded.
        out
            Write the scored rows to this ``.parquet`` or ``.csv`` file (streamed,
            atomic: written under a temporary name and renamed at the end) and return
            a :class:`~refundguard.batch.BatchResult` instead of a DataFrame.
        rejects
            Write the rejects table (the contract's columns) to this file.
        store_scores
            A published daily store-score history (a frame or a file with the
            columns ``store-scores --history`` writes) to gate on instead of
            recomputing; a (store, day) absent from it is a missing score.
        jobs
            Slices decided at once (``-1``: every core), each on one thread of this
            process, LightGBM included (see ``backend``).
        chunk_days
            Days per slice (the unit of work and of memory).
        always_score
            Score gated requests too (their action stays ``merchant_handles``).
        explain
            Reasons for every scored row, not only review/intercept.
        validate_tables
            Validate the input (quarantine mode). ``False`` only for tables in memory
            that are :func:`refundguard.tables.validate` output already.
        progress
            Show a progress bar, advanced slice by slice.
        return_rejects
            Without ``out``: return ``(scored, rejects)``.
        backend
            With ``jobs > 1``: ``"threads"`` (default; one process, the slices share
            the index in memory) or ``"processes"`` (joblib workers memory-map a saved
            copy; each starts Python and parses the model, ~2 s of CPU, so it pays off
            only on many cores, where the threads' GIL-held share limits them). The
            output is the same bytes either way.
        compiled
            Run the model stage (probabilities, and the reasons' leaf indices) on the
            forest compiled by lleaves (the ``fast`` extra; compiled once, ~50 s for the
            default model, and cached in the user cache folder, see
            :mod:`refundguard.model.compiled`); its results are LightGBM's to the last
            bit, checked before use. ``True`` compiles the model when the cache does
            not hold it (``ConfigError`` without the extra); ``None`` (default) takes it
            from the cache only, never compiling (the environment variable
            ``REFUNDGUARD_COMPILED=0`` or ``1`` stands for ``False`` or ``True``);
            ``False``: LightGBM.

        Returns
        -------
        pandas.DataFrame, (pandas.DataFrame, pandas.DataFrame) or BatchResult
            Without ``out``: :data:`SCORED_COLUMNS`, sorted by ``(requested_at,
            refund_id)`` (and the rejects table with ``return_rejects``). With ``out``:
            the :class:`~refundguard.batch.BatchResult` (``rows_in == scored + rejected``).

        Raises
        ------
        SchemaError
            A required table or column is missing, or a table cannot be read.
        ConfigError
            A bad parameter.
        """
        from refundguard.batch import history_result, score_data

        model = self.batch_model(always_score=always_score, explain=explain, compiled=compiled)
        result, table = score_data(
            model, data, start, end, out=out, rejects=rejects, store_scores=store_scores, jobs=jobs,
            chunk_days=chunk_days, validate_tables=validate_tables, progress=progress, backend=backend,
        )
        return history_result(result, table, out, return_rejects)

    def batch_model(self, *, always_score: bool = False, explain: bool = False, compiled: bool | None = None) -> Any:
        """The serving model as the batch engine's portable :class:`~refundguard.batch.BatchModel`.

        Worker processes (joblib, Dask) parse it once each; this process reuses the
        parsed model (and loads or compiles its forest here, see ``compiled`` in
        :meth:`score_history`). :mod:`refundguard.dask` passes it to the cluster.
        """
        from refundguard.batch import BatchModel, register_scorer, use_compiled
        from refundguard.model.compiled import compiled_cache_dir

        st = self._state
        want = use_compiled(compiled)  # (the environment is read here, once, not by each worker)
        model = BatchModel(
            booster_text=st.loaded.booster.model_to_string(),
            meta=st.loaded.meta,
            manifest_sha256=st.loaded.manifest_sha256,
            policy=st.policy,
            score_config=st.score_config,
            category_levels=st.category_levels,
            model_version=st.loaded.model_version,
            always_score=bool(always_score),
            explain=bool(explain),
            compiled=want,
            cache_dir="" if want is False else str(compiled_cache_dir()),
        )
        register_scorer(model, st.encoder, st.loaded.booster, st.calibrator, st.explainer)
        return model

    def evaluate(
        self,
        tables: Mapping[str, pd.DataFrame],
        start: Any = None,
        end: Any = None,
        *,
        validate_tables: bool = True,
    ) -> Evaluation:
        """Measure the model on the labelled refunds requested in ``[start, end)``.

        Every labelled request is scored (gated ones too, so abuse behind the gate
        stays measurable); metrics come overall, by category and by store-score band.

        Returns
        -------
        refundguard.evaluation.Evaluation

        Raises
        ------
        DataError
            No labelled refund in the period.
        """
        st = self._state
        clean = canonical_tables(tables, validate_tables)
        batch = point_in_time_features(
            clean, start, end, score_config=st.score_config, category_levels=st.category_levels, with_labels=True
        )
        labelled = batch.requests["is_abuse"].notna().to_numpy()
        if not labelled.any():
            raise DataError(
                f"No labelled refund requested in [{start}, {end}): nothing to evaluate.",
                detail={"start": str(start), "end": str(end), "requests": int(len(batch))},
            )
        th = st.loaded.meta.get("thresholds") or {}
        return batch.evaluate(labelled, _proba(st, batch.X.loc[labelled]), th.get("intercept"))


def _check_request(request: Any) -> tuple[str, str]:
    """The fields every decision needs, before anything else reads the request: ``(refund_id, buyer_id)``."""
    if not isinstance(request, Mapping):
        raise RequestError(f"A request must be a mapping of field names to values; got {type(request).__name__}.",
                           field=None, value=request)
    for name in ("store_id", "device_id", "address_id"):
        check_id(request, name, optional=True)
    return check_id(request, "refund_id"), check_id(request, "buyer_id")  # type: ignore[return-value]


def _profiles_of(request: Mapping[str, Any], profiles: Any, store: Any) -> tuple[Any, Any, Any]:
    """The request's profiles: given, or looked up in ``store`` (exactly one of the two)."""
    if (profiles is None) == (store is None):
        raise RequestError("Give the request's profiles or a store to look them up in (exactly one).",
                           field="profiles", value=profiles)
    return store.profiles(request) if store is not None else profiles


_TIME_FIELDS = ("requested_at", "paid_at", "shipped_at", "delivered_at")


def _request_frame(requests: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """The columns :func:`build_features` reads, from request dicts (times by the online rule)."""
    cols: dict[str, Any] = {}
    for name in _TIME_FIELDS:
        ns = [field_ns(r.get(name), name, required=False) for r in requests]
        cols[name] = utc_series(np.asarray([NAT if v is None else v for v in ns], dtype=np.int64))
    for name in ("kind", "reason", "category"):
        cols[name] = pd.Series([r.get(name) for r in requests], dtype="str")
    for name in ("amount", "order_amount"):
        cols[name] = np.asarray([float(r[name]) for r in requests], dtype=np.float64)
    return pd.DataFrame(cols)


def _proba(st: _State, X: pd.DataFrame) -> np.ndarray:
    """Calibrated abuse probabilities of a feature matrix with one serving state."""
    raw = st.classifier.predict_proba(X)[:, 1]
    return raw if st.calibrator is None else st.calibrator.transform(raw)


# --------------------------------------------------------------------------- scored output files
#: File suffixes :func:`write_scored` writes (the format follows the suffix).
SCORED_FORMATS: tuple[str, ...] = (".parquet", ".csv")


def write_scored(scored: pd.DataFrame, path: str | Path) -> Path:
    """Write a scored frame (:meth:`RefundGuard.score_history` output) to Parquet or CSV, atomically.

    Parquet keeps ``reasons`` as a list of structs; a CSV cell cannot hold one, so
    in CSV each row's ``reasons`` is written as JSON text (a list of
    ``{text, feature, value, contribution}`` objects).

    Parameters
    ----------
    scored
        The scored rows.
    path
        Target file ending in one of :data:`SCORED_FORMATS`.

    Returns
    -------
    pathlib.Path
        The file written.

    Raises
    ------
    SchemaError
        ``path`` does not end in ``.parquet`` or ``.csv``.
    """
    import json

    from refundguard.errors import SchemaError
    from refundguard.tables import write_table

    target = Path(path)
    if target.suffix not in SCORED_FORMATS:
        raise SchemaError(
            f"Unsupported scored output {target.name!r}: use one of {list(SCORED_FORMATS)}.", rule="format"
        )
    if target.suffix == ".csv" and "reasons" in scored.columns:
        scored = scored.assign(reasons=scored["reasons"].map(lambda r: json.dumps(list(r), default=str)))
    write_table(scored, target)
    return target


__all__ += ["SCORED_FORMATS", "write_scored"]
