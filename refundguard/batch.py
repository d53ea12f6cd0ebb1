"""Batch scoring of historical refunds at scale: time slices, all cores, every row accounted for.

The engine behind :meth:`refundguard.RefundGuard.score_history` and ``refundguard score``
(DESIGN.md sections 1, 6 and 9). Five steps:

1. **Index** (:func:`build_index`, once): the tables are read with only the columns
   the features and the store score need, validated in quarantine mode
   (:mod:`refundguard.sources`), and turned into integer-coded arrays: ids are
   factorized once into integer codes, instants are int64 UTC nanoseconds, a refund
   or review carries the row and codes of its order. Nothing is joined by string
   after this step. The index keeps the orders within the period's reach
   (:func:`reach_ns`: 365 days, or the store score's window) and, of the older ones,
   only those a slice reads (:func:`_reach_rows`); the read still reads every row.
2. **Plan** (:func:`plan_slices`): the refunds to decide, sorted by
   ``(requested_at, refund_id)``, are cut into time slices of ``chunk_days``.
3. **Run parts** (:func:`add_run_parts`, once per run; the local runner's workers
   compute them when there are several): the first order of every device and address
   pair, the stores' sorted order times, the identity-cluster graph, and the store
   score of every decided request's store and day (blocks of days in time order, each
   reading only its own days' events and carrying the window's sums to the next, see
   :data:`STORE_BLOCK_ORDERS` and :class:`refundguard.scores.StoreScoreSweep`).
4. **Slices** (:func:`score_slice`, in any process): for one slice, the rows its
   profiles read are selected from the index (the buyers' window of 365 days plus
   their all-time rows, the stores' 30 days, the devices' and addresses' first
   orders per buyer), the profiles come from the same kernel as
   :func:`refundguard.profiles.profiles_as_of`
   (:func:`~refundguard.profiles.profiles_from_codes`, a sorted merge per slice),
   the features from :func:`refundguard.features.build_features`, then the model,
   the policy (:func:`refundguard.policy.decide_arrays`: decide_batch's decisions as arrays) and the reasons of all
   rows at once (:func:`refundguard.model.explain.reasons_columns`). The result is
   an Arrow table of :data:`SCORED_COLUMNS`.
5. **Output**: slices come back in order (joblib streams them) and are appended to
   one Parquet (or CSV) file under a temporary name, renamed at the end.

A request's decision depends only on the history before it, never on the slice it
falls in, so the output is the same for every ``jobs`` and ``chunk_days`` (row
groups are cut at fixed row counts, so even the Parquet bytes are the same).
:mod:`refundguard.dask` runs the same :func:`score_slice` on a Dask cluster.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from refundguard._io import atomic_target
from refundguard._sets import unique_sorted
from refundguard._time import NAT, NEVER, NS_PER_DAY, day_index, utc_series
from refundguard.clusters import ClusterGraph
from refundguard.config import ScoreConfig
from refundguard.errors import ConfigError, DataError
from refundguard.features import build_features
from refundguard.model.compiled import CompiledForest
from refundguard.model.explain import PathExplainer, reasons_columns
from refundguard.policy import DECISION_COLUMNS, PolicyTimeline, decide_arrays
from refundguard.profiles import (
    MEDIAN_LAST_ORDERS,
    CodedHistory,
    profiles_from_codes,
)
from refundguard.scores import CodedStoreEvents, StoreScoreSweep
from refundguard.sources import PublishedScores, SourceTables
from refundguard.tables import KINDS, OUTCOMES, REASONS

__all__ = [
    "BatchIndex",
    "BatchModel",
    "BatchResult",
    "SCORED_COLUMNS",
    "SCORED_SCHEMA",
    "SliceSpec",
    "STAGES",
    "add_run_parts",
    "arrow_batch_pool",
    "build_index",
    "plan_slices",
    "run_batch",
    "history_result",
    "score_data",
    "score_slice",
]

#: Columns of the batch scored output, in order (DESIGN.md section 6, contract): the
#: request's own columns, then the fields of a Decision.
REQUEST_COLUMNS: tuple[str, ...] = ("refund_id", "requested_at", "buyer_id", "store_id", "category", "kind", "amount")
SCORED_COLUMNS: tuple[str, ...] = REQUEST_COLUMNS + DECISION_COLUMNS[1:]
_REASON_TYPE = pa.struct(
    [("text", pa.string()), ("feature", pa.string()), ("value", pa.string()), ("contribution", pa.float64())]
)
#: The Arrow schema of the scored output (Parquet files have exactly this schema).
SCORED_SCHEMA = pa.schema(
    [
        ("refund_id", pa.large_string()),
        ("requested_at", pa.timestamp("ns", tz="UTC")),
        ("buyer_id", pa.large_string()),
        ("store_id", pa.large_string()),
        ("category", pa.large_string()),
        ("kind", pa.large_string()),
        ("amount", pa.float64()),
        ("action", pa.large_string()),
        ("abuse_probability", pa.float64()),
        ("store_score", pa.float64()),
        ("store_score_missing", pa.bool_()),
        ("provisional", pa.bool_()),
        ("audit", pa.bool_()),
        ("reasons", pa.list_(_REASON_TYPE)),
        ("model_version", pa.large_string()),
        ("policy_version", pa.large_string()),
    ]
)
#: Stages timed by :class:`BatchResult` (seconds of work, summed over slices for the slice stages).
STAGES: tuple[str, ...] = ("read", "validate", "index", "profiles", "features", "model", "policy", "reasons", "write")
#: Rows per Parquet row group of the scored output (fixed, so the file is the same for any slicing).
ROW_GROUP_ROWS = 65_536
#: Default slice length in days.
DEFAULT_CHUNK_DAYS = 7
_WINDOW_NS = 365 * NS_PER_DAY  # the longest feature window (buyer refunds and orders)
_STORE_NS = 30 * NS_PER_DAY  # the store's windows
_LINK_NS = NS_PER_DAY  # the device/address 24-hour refund window
_REASONS_K = 3


# --------------------------------------------------------------------------- parameters
def check_jobs(jobs: Any, owner: str = "score_history") -> int:
    """``jobs`` as a number of workers (threads or processes): an int >= 1, or -1 for every core."""
    if isinstance(jobs, bool) or not isinstance(jobs, (int, np.integer)) or (jobs < 1 and jobs != -1):
        raise ConfigError.invalid(owner, "jobs", "an int >= 1 or -1 (all cores)", jobs)
    return (os.cpu_count() or 1) if jobs == -1 else int(jobs)


#: How ``jobs > 1`` runs on one machine: ``"threads"`` (one process; the slices share the
#: index in memory) or ``"processes"`` (joblib's loky workers memory-map a saved copy).
BACKENDS = ("threads", "processes")


def check_backend(backend: Any, owner: str = "score_history") -> str:
    """``backend``: one of :data:`BACKENDS`."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ConfigError.invalid(owner, "backend", f"one of {list(BACKENDS)}", backend)
    return backend


def check_chunk_days(chunk_days: Any, owner: str = "score_history") -> int:
    """``chunk_days`` as an int >= 1."""
    if isinstance(chunk_days, bool) or not isinstance(chunk_days, (int, np.integer)) or chunk_days < 1:
        raise ConfigError.invalid(owner, "chunk_days", "an int >= 1", chunk_days)
    return int(chunk_days)


# --------------------------------------------------------------------------- the model, portable
@dataclass(frozen=True)
class BatchModel:
    """What a slice needs to decide, portable to any process: no file path, no open handle.

    Attributes
    ----------
    booster_text
        The LightGBM model text (``model.txt``).
    meta
        The parsed ``meta.json``.
    manifest_sha256
        Pins the artifact; workers cache their parsed model under it.
    policy
        The policy timeline with the model's thresholds.
    score_config
        The store score configuration (time zone, ``min_orders``).
    category_levels
        Levels of the ``category`` feature.
    model_version
        Copied into every row.
    always_score, explain, compiled
        As in :meth:`RefundGuard.score_history` (``compiled`` with :data:`COMPILED_ENV`
        already applied by :meth:`RefundGuard.batch_model`: workers do not read their own).
    cache_dir
        Where the compiled forests are cached, as the creating process saw it
        (``""``: :func:`~refundguard.model.compiled.compiled_cache_dir` of each process).
    """

    booster_text: str
    meta: dict[str, Any]
    manifest_sha256: str
    policy: PolicyTimeline
    score_config: ScoreConfig
    category_levels: tuple[str, ...] | None
    model_version: str
    always_score: bool = False
    explain: bool = False
    compiled: bool | None = None
    cache_dir: str = ""


_NOT_LOADED: Any = object()
#: The key under which a slice's timings count it as decided on the compiled forest (any runner, any
#: process: the counts are summed with the timings, and run_batch takes them out).
_COMPILED_SLICES = "slices_on_compiled_forest"


@dataclass
class _Scorer:
    """A parsed model in one process: encoder, booster, calibrator, explainer and the compiled forest.

    ``forest`` is the compiled forest, ``None`` (LightGBM) or, with ``compiled=None``
    (auto), not loaded yet: :attr:`compiled` loads it from the cache on first use, so
    the run parts, which set a run's peak, run without LLVM's ~50 MB.
    """

    encoder: Any
    booster: Any
    calibrator: Any
    explainer: PathExplainer
    forest: Any = None
    booster_text: str = field(default="", repr=False)
    cache_dir: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def compiled(self) -> CompiledForest | None:
        """The compiled forest, or ``None`` for LightGBM (loaded from the cache on first use)."""
        if self.forest is _NOT_LOADED:
            with self._lock:
                if self.forest is _NOT_LOADED:
                    self.forest = CompiledForest.load(self.booster, self.booster_text, compile=False,
                                                      cache_dir=self.cache_dir or None)
        return self.forest

    @property
    def stage(self) -> str:
        """``"compiled"`` if the compiled forest ran (or is loaded), else ``"lightgbm"``."""
        return "lightgbm" if self.forest is None or self.forest is _NOT_LOADED else "compiled"

    def probability(self, matrix: np.ndarray, threads: int) -> np.ndarray:
        """``Booster.predict`` of the encoded rows (the compiled forest's identical floats when there is one)."""
        if self.compiled is not None:
            return self.compiled.predict(matrix, n_jobs=threads)
        return self.booster.predict(matrix, num_threads=threads)


#: Environment variable standing in for ``compiled=None``: ``0`` keeps the batch model stage on
#: LightGBM, ``1`` compiles the model if it is not cached; unset: the compiled forests if cached.
COMPILED_ENV = "REFUNDGUARD_COMPILED"


def use_compiled(compiled: bool | None) -> bool | None:
    """``compiled`` as given, else :data:`COMPILED_ENV` (``None``: the compiled forests if cached)."""
    if compiled is not None:
        return bool(compiled)
    env = os.environ.get(COMPILED_ENV, "").strip().lower()
    if env in ("0", "false", "no", "off"):
        return False
    if env in ("1", "true", "yes", "on"):
        return True
    if env:
        raise ConfigError.invalid("score_history", COMPILED_ENV, "0 or 1 (or unset)", env,
                                  " (the environment variable)")
    return None


def _compiled_forest(model: BatchModel, booster: Any) -> Any:
    """The compiled forest ``model.compiled`` asks for (``None``: LightGBM; :data:`_NOT_LOADED`: auto).

    ``True`` compiles the model when it is not cached yet (here, before the run); ``None``
    (auto) takes it only from the cache, on first use: compiling the default model takes
    ~50 s, more than its forests save on a run of a million refunds (~13 us a row), so a
    run compiles only when asked to.
    """
    want = model.compiled
    if want is False:
        return None
    if want is None:
        return _NOT_LOADED
    got = CompiledForest.load(booster, model.booster_text, compile=True, cache_dir=model.cache_dir or None)
    if got is None and want:
        raise ConfigError("compiled=True (--compiled yes) needs the fast extra, pip install 'refundguard[fast]' "
                          "(lleaves and llvmlite), and a binary LightGBM model that lleaves reproduces bit for bit; "
                          "use compiled=None or False to score on LightGBM.",
                          owner="score_history", field="compiled", value=True)
    return got


_SCORERS: dict[str, _Scorer] = {}
_SCORERS_LOCK = threading.Lock()


def _scorer(model: BatchModel) -> _Scorer:
    """The parsed model for ``model`` in this process (parsed once per process)."""
    with _SCORERS_LOCK:
        got = _SCORERS.get(_scorer_key(model))
        if got is None:
            import lightgbm as lgb

            from refundguard.artifacts import LoadedModel

            booster = lgb.Booster(model_str=model.booster_text)
            loaded = LoadedModel(booster=booster, meta=model.meta, manifest_sha256=model.manifest_sha256, path=Path("."))
            got = _Scorer(loaded.encoder(), booster, loaded.calibrator(), PathExplainer(booster),
                          _compiled_forest(model, booster), model.booster_text, model.cache_dir)
            _SCORERS.clear()  # one model per process at a time
            _SCORERS[_scorer_key(model)] = got
        return got


def _scorer_key(model: BatchModel) -> str:
    """The parsed-model cache key: the artifact and whether its forest is compiled."""
    return f"{model.manifest_sha256}:{model.compiled}:{model.cache_dir}"


def register_scorer(model: BatchModel, encoder: Any, booster: Any, calibrator: Any, explainer: PathExplainer) -> None:
    """Give this process an already parsed model (the in-process path skips parsing; with
    ``compiled=True`` the forest is compiled, if not cached, here, before any worker starts)."""
    forest = _compiled_forest(model, booster)
    with _SCORERS_LOCK:
        _SCORERS.clear()
        _SCORERS[_scorer_key(model)] = _Scorer(encoder, booster, calibrator, explainer, forest, model.booster_text,
                                               model.cache_dir)


# --------------------------------------------------------------------------- the index
@dataclass
class BatchIndex:
    """The integer-coded history every slice reads (built once by :func:`build_index`).

    Orders (``o_*``), refunds (``r_*``), reviews (``v_*``) and service chats
    (``s_*``) are the clean rows only; with a period start, the orders, reviews and
    chats beyond its reach are left out but for the orders a slice reads
    (:func:`_reach_rows`). Codes index the dictionaries ``buyer_ids``,
    ``store_ids`` and ``categories`` (-1 for none); ``kind``/``reason`` codes index
    :data:`refundguard.tables.KINDS` / :data:`~refundguard.tables.REASONS`.
    ``q_rows`` are the refunds to decide, sorted by ``(requested_at, refund_id)``.

    The run parts (:func:`add_run_parts`) are computed once for the whole run, not per
    slice: the device and address pairs' first orders, the stores' sorted order times,
    the identity-cluster ``graph``, and the store score of every decided request's store
    and day (``q_score`` ... ``q_category``, aligned with ``q_rows``; published or computed).
    """

    # orders
    o_buyer: np.ndarray
    o_store: np.ndarray
    o_dev: np.ndarray
    o_addr: np.ndarray
    o_category: np.ndarray
    o_paid: np.ndarray
    o_ship_by: np.ndarray | None  # these three: None once released (:meth:`release_store_inputs`)
    o_shipped: np.ndarray | None
    o_delivered: np.ndarray | None
    o_amount: np.ndarray
    # refunds
    r_order: np.ndarray
    r_buyer: np.ndarray
    r_store: np.ndarray
    r_dev: np.ndarray
    r_addr: np.ndarray
    r_shipped: np.ndarray  # the refund's order's shipped_at and delivered_at
    r_delivered: np.ndarray
    r_req: np.ndarray
    r_res: np.ndarray
    r_esc_known: np.ndarray
    r_amount: np.ndarray
    r_kind: np.ndarray
    r_reason: np.ndarray
    r_rej: np.ndarray
    r_abuse: np.ndarray
    r_escalated: np.ndarray
    r_nr_deliv: np.ndarray
    r_pair_first: np.ndarray
    # reviews and service (read by the store scores only: None once released)
    v_store: np.ndarray | None
    v_created: np.ndarray | None
    v_rating: np.ndarray | None
    s_store: np.ndarray | None
    s_started: np.ndarray | None
    s_first_response: np.ndarray | None
    # all-time per-key rows
    first_bad_refund: np.ndarray  # per buyer: refund row of the first rejected/abusive outcome, -1 none
    # the refunds to decide
    q_rows: np.ndarray
    # dictionaries (Arrow arrays of strings) and scalars
    refund_ids: pa.Array = field(repr=False)
    buyer_ids: pa.Array = field(repr=False)
    store_ids: pa.Array = field(repr=False)
    categories: tuple[str, ...] = ()
    n_devices: int = 0
    n_addresses: int = 0
    first_refund_ns: int = NAT
    published: PublishedScores | None = None
    # run parts (:func:`add_run_parts`, or the local runner's workers), computed once per run:
    # the order-sized per-key tables
    dev_pair_rows: np.ndarray | None = None  # order rows that are the first of their (device, buyer) pair
    addr_pair_rows: np.ndarray | None = None  # order rows that are the first of their (address, buyer) pair
    store_times: np.ndarray | None = None  # every order's paid_at, sorted by (store, paid_at)
    store_ptr: np.ndarray | None = None  # store code -> its run in store_times
    # each decided request's store row, aligned with q_rows
    q_score: np.ndarray | None = None
    q_product: np.ndarray | None = None
    q_logistics: np.ndarray | None = None
    q_service: np.ndarray | None = None
    q_provisional: np.ndarray | None = None
    q_category: np.ndarray | None = None  # codes into store_categories, -1 none
    store_categories: tuple[str, ...] = ()
    score_config_hash: str = ""  # the configuration the store rows were computed with
    graph: ClusterGraph | None = field(default=None, repr=False)

    @property
    def has_run_parts(self) -> bool:
        """Whether the run parts (:func:`add_run_parts`) are here: slices need them."""
        return all(getattr(self, name) is not None for name in ("dev_pair_rows", "store_times", "graph", "q_score"))

    @property
    def n_orders(self) -> int:
        """Clean orders."""
        return len(self.o_paid)

    def release_store_inputs(self) -> None:
        """Let go of the columns that only the store scores read (:data:`STORE_ONLY`).

        The runners call this once the run parts are computed: the slices read each
        decided request's ``shipped_at`` and ``delivered_at`` from ``r_shipped`` and
        ``r_delivered``, and no review or chat, so ~35 bytes per order are freed
        before any slice runs.
        :meth:`store_events` raises afterwards.
        """
        for name in STORE_ONLY:
            setattr(self, name, None)

    def store_events(self) -> CodedStoreEvents:
        """The store score's inputs, sharing this index's arrays."""
        if any(getattr(self, name) is None for name in STORE_ONLY):
            raise ConfigError.invalid("BatchIndex.store_events", "index",
                                      f"an index that still holds {', '.join(STORE_ONLY)}",
                                      "an index whose store score inputs were released (release_store_inputs)")
        return CodedStoreEvents(
            store_ids=np.asarray(self.store_ids.to_numpy(zero_copy_only=False), dtype=object),
            categories=np.asarray(self.categories, dtype=object),
            o_store=self.o_store, o_category=self.o_category, o_paid=self.o_paid, o_ship_by=self.o_ship_by,
            o_shipped=self.o_shipped, o_delivered=self.o_delivered,
            r_store=self.r_store, r_requested=self.r_req, r_resolved=self.r_res,
            r_escalation_known=self.r_esc_known, r_reason=self.r_reason, r_escalated=self.r_escalated,
            v_store=self.v_store, v_created=self.v_created, v_rating=self.v_rating,
            s_store=self.s_store, s_started=self.s_started, s_first_response=self.s_first_response,
            first_refund_ns=self.first_refund_ns,
        )

    # -- sharing with worker processes: one .npy per array (memory-mapped), Arrow IPC for strings
    def save(self, folder: Path, threads: int = 1) -> None:
        """Write every array to ``folder`` (read back memory-mapped by :meth:`load`), in ``threads`` threads."""
        import json

        import pyarrow.ipc as ipc

        folder.mkdir(parents=True, exist_ok=True)
        arrays = [(f.name, getattr(self, f.name)) for f in fields(self) if isinstance(getattr(self, f.name), np.ndarray)]

        def write(item: tuple[str, np.ndarray]) -> None:
            np.save(folder / f"{item[0]}.npy", item[1], allow_pickle=False)

        if threads > 1:  # the copies into the page cache release the GIL
            with ThreadPoolExecutor(max_workers=threads) as pool:
                list(pool.map(write, arrays))
        else:
            for item in arrays:
                write(item)
        strings = pa.table({"refund_ids": self.refund_ids})
        with ipc.new_file(folder / "refund_ids.arrow", strings.schema) as w:
            w.write_table(strings)
        for name in ("buyer_ids", "store_ids"):
            t = pa.table({name: getattr(self, name)})
            with ipc.new_file(folder / f"{name}.arrow", t.schema) as w:
                w.write_table(t)
        scalars = {"categories": list(self.categories), "n_devices": self.n_devices,
                   "n_addresses": self.n_addresses, "first_refund_ns": int(self.first_refund_ns),
                   "store_categories": list(self.store_categories), "score_config_hash": self.score_config_hash}
        (folder / "scalars.json").write_text(json.dumps(scalars))
        if self.published is not None:
            self.published.save(folder / "published")
        if self.graph is not None:
            _save_graph(self.graph, folder)

    @classmethod
    def load(cls, folder: Path) -> BatchIndex:
        """The index saved in ``folder``, arrays memory-mapped read-only."""
        import json

        import pyarrow.ipc as ipc

        kw: dict[str, Any] = {}
        for f in fields(cls):
            p = folder / f"{f.name}.npy"
            if p.exists():
                kw[f.name] = np.load(p, mmap_mode="r", allow_pickle=False)
        for name in ("refund_ids", "buyer_ids", "store_ids"):
            source = pa.memory_map(str(folder / f"{name}.arrow"), "r")
            kw[name] = ipc.open_file(source).read_all().column(0).combine_chunks()
        scalars = json.loads((folder / "scalars.json").read_text())
        kw["categories"] = tuple(scalars["categories"])
        kw["n_devices"] = int(scalars["n_devices"])
        kw["n_addresses"] = int(scalars["n_addresses"])
        kw["first_refund_ns"] = int(scalars["first_refund_ns"])
        kw["store_categories"] = tuple(scalars["store_categories"])
        kw["score_config_hash"] = str(scalars["score_config_hash"])
        for name in STORE_ONLY:  # (not saved once released)
            kw.setdefault(name, None)
        pub = folder / "published"
        kw["published"] = PublishedScores.load(pub) if pub.exists() else None
        graph = folder / "graph"
        if graph.exists():
            kw["graph"] = ClusterGraph.from_arrays(
                {p.name[:-4]: np.load(p, mmap_mode="r", allow_pickle=False) for p in graph.glob("*.npy")})
        return cls(**kw)


#: :class:`BatchIndex` columns that only the store scores (a run part) read.
STORE_ONLY = ("o_ship_by", "o_shipped", "o_delivered", "v_store", "v_created", "v_rating",
              "s_store", "s_started", "s_first_response")


def _save_graph(graph: ClusterGraph, folder: Path) -> None:
    """Write the graph's arrays to ``folder/graph`` (under a temporary name, renamed whole:
    another worker may load the index meanwhile)."""
    with atomic_target(folder / "graph") as tmp:
        tmp.mkdir()
        for name, a in graph.arrays().items():
            np.save(tmp / f"{name}.npy", a, allow_pickle=False)


def _first_per_pair_rows(a: np.ndarray, b: np.ndarray, t: np.ndarray, n_b: int) -> np.ndarray:
    """Row of the earliest ``t`` of every distinct ``(a, b)`` pair with ``a, b >= 0`` (ties: the first row)."""
    ok = (a >= 0) & (b >= 0) & (t != NAT)
    # (int32 rows and codes, and no copies when every row counts: this runs beside other run parts,
    # so its peak counts)
    keep = None if ok.all() else np.flatnonzero(ok).astype(np.int32 if len(a) < 2**31 else np.int64)
    del ok
    if keep is not None and not len(keep):
        return np.zeros(0, dtype=np.int64)
    take = slice(None) if keep is None else keep  # (a slice: views, not copies)
    key = a[take].astype(np.int64)
    key *= max(n_b, 1)
    key += b[take]
    codes, uniq = pd.factorize(key, sort=False)
    n_pairs = len(uniq)
    del key, uniq
    if n_pairs < 2**31:
        codes = codes.astype(np.int32)
    tk = t[take]
    first = np.full(n_pairs, NEVER, dtype=np.int64)
    np.minimum.at(first, codes, tk)
    hit = np.flatnonzero(tk == first[codes])
    del tk, first
    # one row per pair: the first hit (assignments in reverse order leave the first one)
    row_of = np.empty(n_pairs, dtype=np.int64)
    row_of[codes[hit[::-1]]] = hit[::-1] if keep is None else keep[hit[::-1]]
    return np.sort(row_of)


_ORDER_TIMES_CHUNK = 1 << 20  # orders per pass of _store_order_times' counting sort


def _store_order_times(store: np.ndarray, paid: np.ndarray, n_stores: int, chunk: int = _ORDER_TIMES_CHUNK
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Orders' ``paid_at`` sorted by (store, paid_at), and each store's run in it.

    A stable counting sort by store, ``chunk`` orders at a time (each chunk radix-sorted
    by store in 16-bit passes, then placed after the store's rows of the earlier
    chunks), keeps the file order inside each store's run with temporaries of one
    chunk (a whole-array argsort held 8 B per order more, beside the other run parts);
    exports are nearly in time order, so only the runs that are not sorted then are
    sorted (exact for any order).
    """
    valid = (store >= 0) & (paid != NAT)
    s, p = (store, paid) if valid.all() else (store[valid], paid[valid])  # (no copies when all are valid)
    del valid
    ptr = np.concatenate([[0], np.cumsum(np.bincount(s, minlength=n_stores))]).astype(np.int64)
    if not len(p):
        return p, ptr
    times = np.empty(len(p), dtype=np.int64)
    cursor = ptr[:-1].copy()  # where each store's next row goes
    for lo in range(0, len(p), max(int(chunk), 1)):
        cs = s[lo:lo + chunk]
        order = np.argsort((cs & 0xFFFF).astype(np.uint16), kind="stable")  # radix sort: O(n)
        if n_stores > 0xFFFF:
            order = order[np.argsort((cs[order] >> 16).astype(np.uint16), kind="stable")]
        ss = cs[order].astype(np.int64)
        run = np.flatnonzero(np.concatenate(([True], ss[1:] != ss[:-1])))
        within = np.arange(len(ss)) - np.repeat(run, np.diff(np.append(run, len(ss))))
        times[cursor[ss] + within] = p[lo:lo + chunk][order]
        cursor += np.bincount(cs, minlength=n_stores)
        del order, ss, run, within
    desc = times[1:] < times[:-1]
    edges = ptr[1:-1] - 1  # position i where a new store's run starts at i + 1
    desc[edges[(edges >= 0) & (edges < len(desc))]] = False
    down = np.flatnonzero(desc)
    for st in unique_sorted(np.searchsorted(ptr, down, side="right") - 1):  # stores not in time order in the file
        times[ptr[st]:ptr[st + 1]].sort()
    return times, ptr


def _count_before(times: np.ndarray, lo: np.ndarray, hi: np.ndarray, x: np.ndarray) -> np.ndarray:
    """For each query, how many of ``times[lo:hi]`` (sorted) are ``< x``: one vectorised binary search."""
    lo0, lo, hi = lo.copy(), lo.copy(), hi.copy()
    last = max(len(times) - 1, 0)
    while True:
        active = lo < hi
        if not active.any():
            return lo - lo0
        mid = (lo + hi) // 2
        go = active & (times[np.minimum(mid, last)] < x) if len(times) else np.zeros(len(lo), dtype=bool)
        lo = np.where(go, mid + 1, lo)
        hi = np.where(active & ~go, mid, hi)


def _store_orders_window(ix: BatchIndex, q_store: np.ndarray, t: np.ndarray, width_ns: int) -> np.ndarray:
    """Each request's store's orders paid in ``[t - width, t)``."""
    ok = q_store >= 0
    s = np.where(ok, q_store, 0)
    lo, hi = np.asarray(ix.store_ptr[s], dtype=np.int64), np.asarray(ix.store_ptr[s + 1], dtype=np.int64)
    lo, hi = np.where(ok, lo, 0), np.where(ok, hi, 0)
    times = ix.store_times
    return _count_before(times, lo, hi, t) - _count_before(times, lo, hi, t - width_ns)


def _first_per_pair_flags(a: np.ndarray, b: np.ndarray, t: np.ndarray, n_b: int) -> np.ndarray:
    """Flag the rows :func:`_first_per_pair_rows` returns."""
    out = np.zeros(len(a), dtype=bool)
    out[_first_per_pair_rows(a, b, t, n_b)] = True
    return out


def build_index(tables: SourceTables, start_ns: int | None, end_ns: int | None, *, config: ScoreConfig,
                published: PublishedScores | None = None, threads: int = 1,
                timings: dict[str, float] | None = None, run_parts: bool = True) -> BatchIndex:
    """Turn clean, integer-coded source tables into the :class:`BatchIndex`.

    Parameters
    ----------
    tables
        Clean tables as integer-coded columns (:mod:`refundguard.sources`).
    start_ns, end_ns
        Half-open bounds on ``requested_at`` of the refunds to decide (``None``: unbounded).
    config
        The store score's configuration (the model's): the decided requests' store
        scores are computed (or looked up in ``published``) once, here.
    published
        Published daily store scores, if given.
    threads
        Threads for the per-key tables, the store scores and the cluster graph.
    timings
        If given, seconds are added to ``index`` and ``profiles`` (see :func:`add_run_parts`).
    run_parts
        Compute the run parts here (:func:`add_run_parts`); ``False`` leaves them to
        the caller (the local runner computes them in its worker processes).
    """
    t_start = time.perf_counter()
    index = _base_index(tables, start_ns, end_ns, published, threads, config)
    if timings is not None:
        timings["index"] = timings.get("index", 0.0) + time.perf_counter() - t_start
    if run_parts:
        add_run_parts(index, config, threads, timings)
    return index


#: Store-days the run's store scores compute at once: each statistic is one int64 per
#: store-day, so a block of days holds at most ``max(1, this // stores)`` days.
STORE_BLOCK_STORE_DAYS = 1_000_000
#: Orders a block of the run's store scores may read at once, its days and the score's
#: window before them (~115 bytes each while the block is computed): this bounds the
#: block's memory whatever the marketplace's size. Only the first block of a sweep
#: (:class:`~refundguard.scores.StoreScoreSweep`) reads the window; the next ones, of as
#: many days, read only their own days' events. A block still holds at least
#: :data:`STORE_BLOCK_MIN_DAYS` (what each 7-day slice computed before the run parts).
STORE_BLOCK_ORDERS = 3_000_000
STORE_BLOCK_MIN_DAYS = 7
#: Store-days a sweep may carry from one block to the next (per statistic, one integer per
#: store and day of the window ahead: ``stores * (window_days + 2)``). Past it (a
#: marketplace of some 60,000 stores and more with the 30-day window) every block is
#: computed on its own and reads the window before its days again.
STORE_SWEEP_STORE_DAYS = 2_000_000


def _request_times_stores(ix: BatchIndex, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """``requested_at`` and store code of the decided requests ``q_rows[lo:hi]``."""
    rows = np.asarray(ix.q_rows[lo:hi], dtype=np.int64)
    t = np.asarray(ix.r_req[rows], dtype=np.int64)
    return t, np.asarray(ix.o_store[np.asarray(ix.r_order[rows], dtype=np.int64)], dtype=np.int64)


def _store_segments(ix: BatchIndex, cfg: ScoreConfig, workers: int = 1) -> list[list[tuple[int, int]]]:
    """The ``q_rows`` spans of the store-score blocks, in time order, as ``workers`` segments.

    Each segment is one sweep (:func:`_store_segment`): its first block reads the score's
    window before its days, the next ones only their own days. The segments split the
    days evenly among the workers that compute them at once, who share the
    :data:`STORE_BLOCK_ORDERS` budget. A marketplace with too many stores to carry
    (:data:`STORE_SWEEP_STORE_DAYS`) gets a segment per block.
    """
    workers = max(1, workers)
    budget = max(1, STORE_BLOCK_ORDERS // workers)
    if not len(ix.q_rows):
        return [[(0, 0)]]
    t = np.asarray(ix.r_req[np.asarray(ix.q_rows, dtype=np.int64)], dtype=np.int64)
    day = day_index(t, cfg.timezone)  # non-decreasing: q_rows are sorted by requested_at
    paid = np.asarray(ix.o_paid)
    span_days = max(1, int((int(paid.max()) - int(paid.min())) // NS_PER_DAY) + 1) if len(paid) else 1
    reach = max(1, int(budget // max(1.0, len(paid) / span_days)))  # days of orders a block may read
    n_stores = max(len(ix.store_ids), 1)
    most = max(1, STORE_BLOCK_STORE_DAYS // n_stores)
    block = max(1, min(most, max(STORE_BLOCK_MIN_DAYS, reach - cfg.window_days - 1)))
    carry = n_stores * (cfg.window_days + 2) <= STORE_SWEEP_STORE_DAYS
    d_first, d_last = int(day[0]), int(day[-1])
    n_days = d_last - d_first + 1
    seg_days = -(-n_days // min(workers, n_days)) if carry else n_days
    # per segment, its blocks' first days (a block reads fewer events once carried, but its store-days
    # weigh as much: a block of more days raised the run's peak, 34 days against 14 at 10M orders)
    starts = [list(range(s0, min(s0 + seg_days, d_last + 1), block)) for s0 in range(d_first, d_last + 1, seg_days)]
    cuts = np.searchsorted(day, [d for seg in starts for d in seg][1:]).tolist()
    bounds = [0, *cuts, len(t)]
    spans = list(zip(bounds[:-1], bounds[1:]))
    if not carry:
        return [[span] for span in spans]
    out, k = [], 0
    for seg in starts:
        out.append(spans[k:k + len(seg)])
        k += len(seg)
    return out


def _store_segment(ix: BatchIndex, cfg: ScoreConfig, spans: Sequence[tuple[int, int]], timings: dict[str, float]
                   ) -> list[dict[str, Any]]:
    """The store rows of the decided requests of each span (in time order, one sweep), as
    arrays (categories as codes into ``levels``; timed as ``profiles``)."""
    clock = _Clock(timings)
    sweep = None if ix.published is not None else StoreScoreSweep(ix.store_events(), cfg)
    levels = None if sweep is None else [str(x) for x in sweep.events.categories]
    out = []
    for span in spans:
        t, store = _request_times_stores(ix, *span)
        if sweep is not None:  # arrays, categories as codes: no string per request
            cols = sweep.columns(store, t)
            block: dict[str, Any] = {c: cols[c] for c in ("score", "product", "logistics", "service", "provisional",
                                                          "category")}
            block["levels"] = levels
        else:
            frame = _store_rows(ix, store, t, cfg)
            codes, found = pd.factorize(frame["category"], use_na_sentinel=True)
            block = {c: frame[c].to_numpy(dtype=np.float64) for c in ("score", "product", "logistics", "service")}
            block["provisional"] = frame["provisional"].to_numpy(dtype=bool)
            block["category"] = np.asarray(codes, dtype=np.int32)
            block["levels"] = [str(x) for x in found]
            del frame
        out.append(block)
        _trim_heap()  # (the block's temporaries: the next block, or the other threads' work, reuse the pages)
    clock.lap("profiles")
    return out


def _merge_store_blocks(blocks: Sequence[dict[str, Any]], cfg: ScoreConfig) -> dict[str, Any]:
    """The blocks in order as the index's ``q_*`` arrays, ``store_categories`` and ``score_config_hash``."""
    levels: dict[str, int] = {}
    cats = []
    for b in blocks:
        remap = np.array([levels.setdefault(x, len(levels)) for x in b["levels"]] + [-1], dtype=np.int32)
        cats.append(remap[np.where(b["category"] >= 0, b["category"], len(b["levels"]))])
    out: dict[str, Any] = {f"q_{c}": np.concatenate([b[c] for b in blocks])
                           for c in ("score", "product", "logistics", "service", "provisional")}
    out["q_category"] = np.concatenate(cats).astype(np.int32)
    out["store_categories"] = tuple(levels)
    out["score_config_hash"] = cfg.config_hash()
    return out


def _links_and_graph(ix: BatchIndex, timings: dict[str, float]) -> dict[str, Any]:
    """Run part: the first order of every (device, buyer) and (address, buyer) pair (timed as ``index``),
    and the cluster graph (``profiles``)."""
    clock = _Clock(timings)
    n_b = len(ix.buyer_ids)
    ob, paid = np.asarray(ix.o_buyer), np.asarray(ix.o_paid)
    dev = _first_per_pair_rows(np.asarray(ix.o_dev), ob, paid, n_b)  # one order-sized table at a time
    addr = _first_per_pair_rows(np.asarray(ix.o_addr), ob, paid, n_b)
    clock.lap("index")
    graph = _build_graph(ix, dev, addr)
    clock.lap("profiles")
    return {"dev_pair_rows": dev, "addr_pair_rows": addr, "graph": graph}


def _store_order_part(ix: BatchIndex, timings: dict[str, float]) -> dict[str, Any]:
    """Run part: every order's ``paid_at`` sorted by (store, paid_at), and each store's run in it (``index``)."""
    clock = _Clock(timings)
    times, ptr = _store_order_times(np.asarray(ix.o_store), np.asarray(ix.o_paid), len(ix.store_ids))
    clock.lap("index")
    return {"store_times": times, "store_ptr": ptr}


def add_run_parts(ix: BatchIndex, cfg: ScoreConfig, threads: int = 1, timings: dict[str, float] | None = None
                  ) -> None:
    """Compute, in this process, the parts every slice reads (once per run).

    They are the first orders of the device and address pairs and the stores' sorted
    order times (timed as ``index``), the cluster graph and the decided requests'
    store rows (``profiles``), on ``threads`` threads. :func:`iter_slices_local` with
    several processes computes them in its workers instead.
    """
    clocks: list[dict[str, float]] = []

    def timed(f: Callable[..., Any], *args: Any) -> Any:
        own: dict[str, float] = {}
        clocks.append(own)
        return f(*args, own)

    if threads <= 1:  # one at a time; the store blocks first, before the graph's arrays exist
        blocks = [b for seg in _store_segments(ix, cfg) for b in timed(_store_segment, ix, cfg, seg)]
        parts = [timed(_store_order_part, ix), timed(_links_and_graph, ix)]
    else:
        # one thread: the pairs and the graph, then the stores' order times; the others share the store
        # blocks (a segment each), whose budget is divided among them; each thread trims its heap after a part
        def trimmed(f: Callable[..., Any], *args: Any) -> Any:
            part = timed(f, *args)
            _trim_heap()
            return part

        segments = _store_segments(ix, cfg, workers=threads - 1)
        with ThreadPoolExecutor(max_workers=1) as one, ThreadPoolExecutor(max_workers=threads - 1) as pool:
            # (the pairs before the stores' order times: their temporaries then overlap no kept run part)
            links_f = one.submit(trimmed, _links_and_graph, ix)
            times_f = one.submit(trimmed, _store_order_part, ix)
            blocks = [b for seg in pool.map(lambda seg: trimmed(_store_segment, ix, cfg, seg), segments) for b in seg]
            parts = [times_f.result(), links_f.result()]
    for own in clocks:
        _add_timings(timings, own)
    for part in [*parts, _merge_store_blocks(blocks, cfg)]:
        for name, value in part.items():
            setattr(ix, name, value)


def _slice_store_rows(ix: BatchIndex, lo: int, hi: int) -> pd.DataFrame:
    """The store rows of the decided requests ``q_rows[lo:hi]`` (as :func:`_store_rows` returns them)."""
    out = pd.DataFrame({c: np.asarray(getattr(ix, f"q_{c}")[lo:hi], dtype=np.float64)
                        for c in ("score", "product", "logistics", "service")})
    out["provisional"] = np.asarray(ix.q_provisional[lo:hi], dtype=bool)
    codes = np.asarray(ix.q_category[lo:hi], dtype=np.int64)
    levels = np.asarray([*ix.store_categories, None], dtype=object)
    out["category"] = pd.array(levels[np.where(codes >= 0, codes, len(ix.store_categories))], dtype="str")
    return out


#: Drop from the index the orders, reviews and chats no slice can read (:func:`_reach_rows`);
#: tests turn it off to prove the output does not change.
PRUNE_BEYOND_REACH = True


def reach_ns(start_ns: int, cfg: ScoreConfig) -> int:
    """The earliest instant any feature or store score of requests from ``start_ns`` on reads.

    The buyers' 365-day windows, and the store score's ``window_days`` before the
    request's local day (anchors from one more day back, :func:`refundguard.scores._history_range`),
    with a day of margin for the time zone.
    """
    return int(start_ns) - max(_WINDOW_NS, (int(cfg.window_days) + 2) * NS_PER_DAY) - NS_PER_DAY


def _reach_rows(o: Mapping[str, np.ndarray], r_order: np.ndarray, reach: int, n_buyers: int,
                start_ns: int) -> np.ndarray | None:
    """The order rows to keep when nothing before ``reach`` is read but the all-time rows (``None``: all).

    Kept: every order with an instant (paid, ship-by, shipped, delivered) at or after
    ``reach``; of the older ones, each buyer's first order, the first of every
    (device, buyer) and (address, buyer) pair (:func:`_first_per_pair_rows`; a pair
    whose first order is not old keeps it anyway), every refund's order, and the old
    orders the median of the last :data:`~refundguard.profiles.MEDIAN_LAST_ORDERS`
    can read: a request at ``t >= start_ns`` reads the buyer's last ``K`` orders paid
    before ``t``, and the buyer's ``n`` orders paid in ``[reach, start_ns)`` are always
    among them, so only the last ``K - n`` old orders by ``paid_at`` can be (none
    once ``n >= K``), with every order tied with the earliest of them on ``paid_at``
    (whichever :func:`_history_rows` picks by amount and row). Every row a slice's
    profiles, the run parts or the features read is kept; the old rows
    :func:`_history_rows` also hands the kernel change nothing (it takes the first,
    the last ones and the earliest of what it is given), so the output is the same
    (``PRUNE_BEYOND_REACH``).
    """
    paid = o["paid_at"]
    old = paid < reach
    for col in ("ship_by", "shipped_at", "delivered_at"):
        old &= o[col] < reach  # (NaT is int64 min: below any reach)
    if not old.any():
        return None
    keep = ~old
    keep[r_order] = True
    # (the choice's temporaries come on top of the whole coded input, so they are kept small: int32 rows,
    # a sort of the buyers that still need old orders only, the pairs a buyer range at a time)
    old_rows = np.flatnonzero(old).astype(np.int32 if len(paid) < 2**31 else np.int64)
    del old
    ob = o["buyer"]
    old_buyer = ob[old_rows]
    old_paid = paid[old_rows]
    # each buyer's first old order, with every order tied with it on paid_at
    first = np.full(n_buyers, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first, old_buyer, old_paid)
    keep[old_rows[old_paid == first[old_buyer]]] = True
    del first
    # the old orders the median can still read: MEDIAN_LAST_ORDERS minus the buyer's orders paid in
    # [reach, start_ns), which come after every old one and before every request
    recent = np.zeros(n_buyers, dtype=np.int64)
    for lo in range(0, len(paid), _REACH_CHUNK):
        p = paid[lo:lo + _REACH_CHUNK]
        recent += np.bincount(ob[lo:lo + _REACH_CHUNK][(p >= reach) & (p < start_ns)], minlength=n_buyers)
    need = np.maximum(MEDIAN_LAST_ORDERS - recent, 0)
    del recent
    sub = np.flatnonzero(need[old_buyer] > 0)
    if len(sub):
        # sorted by (buyer, paid): two stable radix sorts (a lexsort with the amount was 4x slower); rows
        # tied with the K-th last on paid are all kept, so whatever _history_rows' amount tie-break picks
        # among them is here
        sub_buyer, sub_paid = old_buyer[sub], old_paid[sub]
        order = np.argsort(sub_paid, kind="stable")
        order = order[np.argsort(sub_buyer[order], kind="stable")]
        grp = sub_buyer[order]
        t_sorted = sub_paid[order]
        del sub_buyer, sub_paid
        start = np.ones(len(order), dtype=bool)
        start[1:] = grp[1:] != grp[:-1]
        gid = np.cumsum(start) - 1
        first_at = np.flatnonzero(start)
        end_at = np.append(first_at[1:], len(order))
        kth_last = t_sorted[np.maximum(first_at, end_at - need[grp[first_at]])]
        keep[old_rows[sub[order[t_sorted >= kth_last[gid]]]]] = True
        del order, grp, t_sorted, start, gid
    del need, sub
    # the pairs' first orders among the old rows (a pair whose first order is not old keeps it anyway),
    # a range of buyers at a time: a pair has one buyer, so each range holds all of its pairs' rows
    span = max(1, -(-n_buyers // _REACH_PAIR_PARTS))
    for lo in range(0, max(n_buyers, 1), span):
        part = np.flatnonzero((old_buyer >= lo) & (old_buyer < lo + span))
        if not len(part):
            continue
        b, t = old_buyer[part], old_paid[part]
        for key in ("device", "address"):
            keep[old_rows[part[_first_per_pair_rows(o[key][old_rows[part]], b, t, n_buyers)]]] = True
        del part, b, t
    return keep


#: Orders per step of :func:`_reach_rows`' count of recent orders, and buyer ranges of its pairs.
_REACH_CHUNK = 1 << 22
_REACH_PAIR_PARTS = 8


def _base_index(tables: SourceTables, start_ns: int | None, end_ns: int | None,
                published: PublishedScores | None, threads: int, config: ScoreConfig | None = None) -> BatchIndex:
    """The :class:`BatchIndex` arrays (without the run parts :func:`add_run_parts` adds).

    With ``start_ns`` and ``config``, the orders no slice can read (older than
    :func:`reach_ns` and none of :func:`_reach_rows`' all-time rows) and the reviews and
    chats older than the reach are left out, so the index held through the run grows
    with the window the features read rather than with the whole history. They are
    dropped from ``tables`` in place (column by column, so the full columns are freed as
    they go): ``tables`` then holds the index's rows, and a refund's ``order`` points
    into them.
    """
    o, r = tables.orders, tables.refunds
    n_b = len(tables.buyer_ids)
    o_buyer = o["buyer"]
    r_order = r["order"]
    r_buyer = o_buyer[r_order]
    r_store = o["store"][r_order]
    r_req, r_res = r["requested_at"], r["resolved_at"]
    known = r_res != NAT
    r_rej = (r["outcome"] == OUTCOMES.index("rejected")) & known
    r_abuse = (r["is_abuse"] == 1) & known
    deliv = o["delivered_at"][r_order]
    r_nr = (r["reason"] == REASONS.index("not_received")) & (deliv != NAT) & (deliv < r_req)

    # (the order-sized per-key tables are run parts: add_run_parts, or the local runner's workers)
    pair_first = _first_per_pair_flags(r_buyer, r_store, r_req, len(tables.store_ids))
    bad = np.flatnonzero(r_rej | r_abuse)
    first_bad = np.full(n_b, -1, dtype=np.int64)
    if len(bad):
        order = np.lexsort((r_res[bad], r_buyer[bad]))
        rows = bad[order]
        b_sorted = r_buyer[rows]
        head = np.ones(len(rows), dtype=bool)
        head[1:] = b_sorted[1:] != b_sorted[:-1]
        first_bad[b_sorted[head]] = rows[head]

    sel = np.ones(len(r_req), dtype=bool)
    if start_ns is not None:
        sel &= r_req >= start_ns
    if end_ns is not None:
        sel &= r_req < end_ns
    q = np.flatnonzero(sel)
    if len(q):
        order = pc.sort_indices(
            pa.table({"t": pa.array(r_req[q]), "id": tables.refund_ids.take(pa.array(q))}),
            sort_keys=[("t", "ascending"), ("id", "ascending")],
        ).to_numpy()
        q = q[order]
    first_req = int(r_req.min()) if len(r_req) else NAT
    v, s = tables.reviews, tables.service
    v_store = o["store"][v["order"]]
    del o_buyer
    if PRUNE_BEYOND_REACH and start_ns is not None and config is not None:
        # (in place, column by column: each full column is freed as its kept rows are copied)
        reach = reach_ns(start_ns, config)
        keep = _reach_rows(o, r_order, reach, n_b, start_ns)
        if keep is not None:
            for k in list(o):
                o[k] = o[k][keep]
            new_row = np.cumsum(keep, dtype=np.int32 if len(keep) < 2**31 else np.int64) - 1
            r_order = new_row[r_order].astype(r_order.dtype, copy=False)
            r["order"] = r_order
            del new_row, keep
        v_in = v["created_at"] >= reach
        if not v_in.all():
            for k in list(v):
                v[k] = v[k][v_in]
            v_store = v_store[v_in]
        s_in = s["started_at"] >= reach
        if not s_in.all():
            for k in list(s):
                s[k] = s[k][s_in]
    return BatchIndex(
        o_buyer=o["buyer"], o_store=o["store"], o_dev=o["device"], o_addr=o["address"], o_category=o["category"],
        o_paid=o["paid_at"], o_ship_by=o["ship_by"], o_shipped=o["shipped_at"], o_delivered=o["delivered_at"],
        o_amount=o["amount"],
        r_order=r_order, r_buyer=r_buyer, r_store=r_store, r_dev=o["device"][r_order], r_addr=o["address"][r_order],
        r_shipped=o["shipped_at"][r_order], r_delivered=deliv,
        r_req=r_req, r_res=r_res, r_esc_known=r["escalation_known"], r_amount=r["amount"], r_kind=r["kind"],
        r_reason=r["reason"], r_rej=r_rej, r_abuse=r_abuse, r_escalated=r["escalated"], r_nr_deliv=r_nr,
        r_pair_first=pair_first,
        v_store=v_store, v_created=v["created_at"], v_rating=v["rating"],
        s_store=s["store"], s_started=s["started_at"], s_first_response=s["first_response_s"],
        first_bad_refund=first_bad,
        q_rows=q.astype(np.int64),
        refund_ids=tables.refund_ids, buyer_ids=tables.buyer_ids, store_ids=tables.store_ids,
        categories=tuple(tables.categories), n_devices=tables.n_devices, n_addresses=tables.n_addresses,
        first_refund_ns=first_req, published=published,
    )


# --------------------------------------------------------------------------- slices
@dataclass(frozen=True)
class SliceSpec:
    """One time slice: the decided refunds ``q_rows[lo:hi]``, requested in ``[t0, t1)``."""

    number: int
    t0: int
    t1: int
    lo: int
    hi: int

    def __len__(self) -> int:
        return self.hi - self.lo


def plan_slices(index: BatchIndex, chunk_days: int, start_ns: int | None = None, workers: int = 1
                ) -> list[SliceSpec]:
    """Cut the refunds to decide into slices of whole days (empty slices are left out).

    Slices are ``chunk_days`` long, on a grid of ``chunk_days`` from ``start_ns``
    (default: 00:00 UTC of the first refund's day). With several ``workers`` deciding
    slices at once, a slice is at most the period's days over twice the workers (and at
    least a day), so that every worker has at least two slices: on many cores, the default
    7-day slices of two months (9 slices) would leave most of them idle. Where the
    cuts fall never changes a decision.
    """
    t = index.r_req[index.q_rows]
    if not len(t):
        return []
    origin = int(start_ns) if start_ns is not None else int(t[0]) - int(t[0]) % NS_PER_DAY
    first_day, last_day = ((int(x) - origin) // NS_PER_DAY for x in (t[0], t[-1]))
    days = int(chunk_days)
    if workers > 1:
        days = max(1, min(days, (last_day - first_day + 1) // (2 * int(workers))))
    width = days * NS_PER_DAY
    out = []
    for k in range(first_day // days, last_day // days + 1):
        t0, t1 = origin + k * width, origin + (k + 1) * width
        lo, hi = np.searchsorted(t, [t0, t1], side="left")
        if hi > lo:
            out.append(SliceSpec(len(out), t0, t1, int(lo), int(hi)))
    return out


def _mask(n: int, codes: np.ndarray) -> np.ndarray:
    """Boolean lookup table over ``n`` codes (+1 slot for -1) with ``codes`` set."""
    m = np.zeros(n + 1, dtype=bool)
    m[codes[codes >= 0]] = True
    return m


def _history_rows(ix: BatchIndex, t0: int, t1: int, q_buyer: np.ndarray, q_store: np.ndarray,
                  q_dev: np.ndarray, q_addr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Order and refund rows that hold every event the slice's profiles read.

    Orders: the buyers' orders of the 365-day window, their last
    :data:`~refundguard.profiles.MEDIAN_LAST_ORDERS` orders before it and their first
    order; the first order of every (device, buyer) and (address, buyer) pair of the
    slice's devices and addresses. (The stores' 30-day order counts are read from the
    index's sorted order times, :func:`_store_orders_window`.)
    Refunds: the buyers' refunds of the 365-day window plus their all-time rows
    (first refund per store, "not received" claims on delivered orders, rejected and
    abusive outcomes); the stores' refunds of 30 days; the devices' and addresses'
    refunds of 24 hours; the first bad outcome of every buyer seen on those devices
    and addresses.
    """
    n_b = len(ix.first_bad_refund)
    in_b = _mask(n_b, q_buyer)
    in_s = _mask(len(ix.store_ids), q_store)
    in_d = _mask(ix.n_devices, q_dev)
    in_a = _mask(ix.n_addresses, q_addr)
    lo_w, lo_s, lo_l = t0 - _WINDOW_NS, t0 - _STORE_NS, t0 - _LINK_NS

    paid = ix.o_paid
    ob = np.asarray(ix.o_buyer)
    # the slice's buyers' orders (in row order): one pass over the orders, then only over these
    mine = np.flatnonzero(in_b[ob])
    p_mine = paid[mine]
    o_keep = np.zeros(len(paid), dtype=bool)
    o_keep[mine[(p_mine < t1) & (p_mine >= lo_w)]] = True
    # (the stores' 30-day order counts come from the index's sorted order times)
    # all-time rows of the buyers: their first order and the last orders before the window
    old = mine[(p_mine < lo_w) & (p_mine != NAT)]
    del mine, p_mine
    if len(old):
        order = np.lexsort((np.asarray(ix.o_amount)[old], paid[old], ob[old]))
        rows = old[order]
        grp = ob[rows]
        start = np.ones(len(rows), dtype=bool)
        start[1:] = grp[1:] != grp[:-1]
        gid = np.cumsum(start) - 1
        first_at = np.flatnonzero(start)
        size = np.diff(np.append(first_at, len(rows)))
        rank_from_end = (first_at[gid] + size[gid] - 1) - np.arange(len(rows))
        o_keep[rows[(rank_from_end < MEDIAN_LAST_ORDERS) | start]] = True
    for pair_rows, key, in_k in ((ix.dev_pair_rows, ix.o_dev, in_d), (ix.addr_pair_rows, ix.o_addr, in_a)):
        pr = pair_rows[in_k[np.asarray(key)[pair_rows]]]
        o_keep[pr[paid[pr] < t1]] = True
    o_rows = np.flatnonzero(o_keep)

    req = ix.r_req
    rb = np.asarray(ix.r_buyer)
    # the buyers' window and all-time rows, the stores' 30 days, the devices' and addresses' 24 hours
    special = np.asarray(ix.r_pair_first) | np.asarray(ix.r_nr_deliv) | np.asarray(ix.r_rej) | np.asarray(ix.r_abuse)
    r_keep = ((req >= lo_w) | special) & in_b[rb]
    r_keep |= (req >= lo_s) & in_s[np.asarray(ix.r_store)]
    r_keep |= (req >= lo_l) & (in_d[np.asarray(ix.r_dev)] | in_a[np.asarray(ix.r_addr)])
    r_keep &= req < t1
    # the buyers seen on the slice's devices and addresses (a mask over the buyers: no sort)
    linked = _mask(n_b, ob[o_rows[in_d[np.asarray(ix.o_dev)[o_rows]] | in_a[np.asarray(ix.o_addr)[o_rows]]]])[:n_b]
    fb = np.asarray(ix.first_bad_refund)[linked]
    r_keep[fb[fb >= 0]] = True
    return o_rows, np.flatnonzero(r_keep)


def _coded_history(ix: BatchIndex, o_rows: np.ndarray, r_rows: np.ndarray) -> CodedHistory:
    """The kernel's input for the selected rows (codes in the index's dtype, int32; instants int64)."""
    from refundguard.profiles import _cents

    def i64(a: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return np.asarray(a[rows], dtype=np.int64)

    def code(a: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return np.asarray(a[rows])  # in the index's dtype (int32 from the sources: half the bytes of int64)

    amount = np.asarray(ix.o_amount[o_rows], dtype=np.float64)
    return CodedHistory(
        o_buyer=code(ix.o_buyer, o_rows), o_store=code(ix.o_store, o_rows), o_dev=code(ix.o_dev, o_rows),
        o_addr=code(ix.o_addr, o_rows), o_paid=i64(ix.o_paid, o_rows), o_cents=_cents(amount), o_amount=amount,
        r_buyer=code(ix.r_buyer, r_rows), r_store=code(ix.r_store, r_rows), r_dev=code(ix.r_dev, r_rows),
        r_addr=code(ix.r_addr, r_rows), r_req=i64(ix.r_req, r_rows), r_res=i64(ix.r_res, r_rows),
        r_cents=_cents(np.asarray(ix.r_amount[r_rows], dtype=np.float64)),
        r_only=np.asarray(ix.r_kind[r_rows]) == KINDS.index("refund_only"),
        r_nr_deliv=np.asarray(ix.r_nr_deliv[r_rows], dtype=bool),
        r_rej=np.asarray(ix.r_rej[r_rows], dtype=bool), r_abuse=np.asarray(ix.r_abuse[r_rows], dtype=bool),
    )


def _build_graph(ix: BatchIndex, dev: np.ndarray, addr: np.ndarray) -> ClusterGraph:
    """The identity-cluster graph of the whole index (all-time pairs, refunds, first bad outcomes), built once
    per run: a cluster reaches beyond the keys a slice's history rows hold. ``dev``/``addr``: the pairs'
    first order rows."""
    dev, addr = np.asarray(dev, dtype=np.int64), np.asarray(addr, dtype=np.int64)
    ob, paid = np.asarray(ix.o_buyer), np.asarray(ix.o_paid)
    fbr = np.asarray(ix.first_bad_refund, dtype=np.int64)
    first_bad = np.where(fbr >= 0, np.asarray(ix.r_res, dtype=np.int64)[np.maximum(fbr, 0)], NEVER)
    return ClusterGraph.from_pairs(
        np.concatenate([ob[dev], ob[addr]]),
        np.concatenate([2 * np.asarray(ix.o_dev)[dev].astype(np.int64),
                        2 * np.asarray(ix.o_addr)[addr].astype(np.int64) + 1]),
        np.concatenate([paid[dev], paid[addr]]),
        np.asarray(ix.r_buyer, dtype=np.int64), np.asarray(ix.r_req, dtype=np.int64), first_bad)


def _store_rows(ix: BatchIndex, q_store: np.ndarray, t: np.ndarray, cfg: ScoreConfig) -> pd.DataFrame:
    """The published store score of each request's store and day (the run computes the others by a
    :class:`~refundguard.scores.StoreScoreSweep`, :func:`_store_segment`)."""
    if ix.published is None:
        raise ValueError("_store_rows reads published scores; the run computes the others by a sweep")
    res = ix.published.lookup(q_store, day_index(t, cfg.timezone), cfg)
    out = pd.DataFrame({c: res[c].to_numpy(dtype=np.float64) for c in ("score", "product", "logistics", "service")})
    out["provisional"] = res["provisional"].to_numpy(dtype=bool)
    out["category"] = res["category"].astype("str").to_numpy()
    out["category"] = out["category"].astype("str")
    return out


def _strings(levels: Sequence[str], codes: np.ndarray) -> pa.Array:
    """Arrow strings of ``levels[codes]`` (code -1: null)."""
    codes = np.asarray(codes)
    idx = pa.array(codes.astype(np.int32), mask=codes < 0)
    return pa.DictionaryArray.from_arrays(idx, pa.array(list(levels), type=pa.large_string())).cast(pa.large_string())


def score_slice(index: BatchIndex, model: BatchModel, spec: SliceSpec, *, threads: int = 1,
                timings: dict[str, float] | None = None, matrices: list[np.ndarray] | None = None) -> pa.Table:
    """Decide the refunds of one slice; an Arrow table of :data:`SCORED_SCHEMA`.

    Parameters
    ----------
    index
        The integer-coded history (:func:`build_index`), in memory or memory-mapped.
    model
        The model and policy (:class:`BatchModel`).
    spec
        The slice (:func:`plan_slices`).
    threads
        LightGBM threads for this slice.
    timings
        If given, seconds per stage (``profiles``, ``features``, ``model``, ``policy``,
        ``reasons``) are added to it.
    matrices
        If given, the slice's encoded feature matrix is appended to it (benchmarks
        time the plain ``Booster.predict`` on exactly these rows).
    """
    clock = _Clock(timings)
    ix = index
    if not ix.has_run_parts:
        raise ConfigError.invalid("score_slice", "index", "a BatchIndex with its run parts (per-key tables, "
                                  "cluster graph, store rows): call add_run_parts(index, model.score_config)",
                                  "an index without them")
    if ix.score_config_hash != model.score_config.config_hash():
        raise ConfigError.invalid("score_slice", "index", "built with the model's store score configuration "
                                  f"({model.score_config.config_hash()}): build_index(..., config=model.score_config)",
                                  f"an index built with another store score configuration ({ix.score_config_hash})")
    rows = np.asarray(ix.q_rows[spec.lo:spec.hi], dtype=np.int64)
    n = len(rows)
    t = np.asarray(ix.r_req[rows], dtype=np.int64)
    orow = np.asarray(ix.r_order[rows], dtype=np.int64)
    q_buyer = np.asarray(ix.o_buyer[orow], dtype=np.int64)
    q_store = np.asarray(ix.o_store[orow], dtype=np.int64)
    q_dev = np.asarray(ix.o_dev[orow], dtype=np.int64)
    q_addr = np.asarray(ix.o_addr[orow], dtype=np.int64)

    profiles = profiles_from_codes(_coded_history(ix, *_history_rows(ix, spec.t0, spec.t1, q_buyer, q_store, q_dev,
                                                                     q_addr)),
                                   t, q_buyer, q_store, q_dev, q_addr, _slice_store_rows(ix, spec.lo, spec.hi),
                                   store_orders_30d=_store_orders_window(ix, q_store, t, _STORE_NS),
                                   clusters=ix.graph)
    # (the slice's history, ~40 B per order row and ~44 B per refund row it holds, is not
    # referenced past this point: it is freed before the model and the reasons allocate theirs)
    clock.lap("profiles")

    # the text columns straight from Arrow (pandas' str arrays are Arrow strings): no Python string per row
    cat_codes = np.asarray(ix.o_category[orow], dtype=np.int64)
    category = _strings(ix.categories, cat_codes)
    kind = _strings(KINDS, np.asarray(ix.r_kind[rows], dtype=np.int64))
    requests = pd.DataFrame({
        "requested_at": utc_series(t),
        "paid_at": utc_series(np.asarray(ix.o_paid[orow], dtype=np.int64)),
        "shipped_at": utc_series(np.asarray(ix.r_shipped[rows], dtype=np.int64)),
        "delivered_at": utc_series(np.asarray(ix.r_delivered[rows], dtype=np.int64)),
        "kind": pd.array(kind, dtype="str"),
        "reason": pd.array(_strings(REASONS, np.asarray(ix.r_reason[rows], dtype=np.int64)), dtype="str"),
        "amount": np.asarray(ix.r_amount[rows], dtype=np.float64),
        "order_amount": np.asarray(ix.o_amount[orow], dtype=np.float64),
        "category": pd.array(category, dtype="str"),
    })
    X = build_features(requests, profiles, category_levels=model.category_levels)
    clock.lap("features")

    sc = _scorer(model)
    matrix, _ = sc.encoder.transform(X)
    if matrices is not None:
        matrices.append(matrix)
    refund_ids = ix.refund_ids.take(pa.array(rows))
    buyer_ids = ix.buyer_ids.take(pa.array(q_buyer))
    store = profiles.store
    frame = pd.DataFrame({
        "refund_id": pd.array(refund_ids, dtype="str"),
        "requested_at": requests["requested_at"],
        "kind": requests["kind"],
        "buyer_id": pd.array(buyer_ids, dtype="str"),
        "store_score": store["score"].to_numpy(dtype=np.float64),
        "provisional": store["provisional"].to_numpy(dtype=bool),
        "store_score_missing": store["score_missing"].to_numpy(dtype=bool),
    })
    model_s = [0.0]

    def probability(mask: np.ndarray) -> np.ndarray:
        t_m = time.perf_counter()
        raw = sc.probability(matrix[mask], threads)
        p = raw if sc.calibrator is None else sc.calibrator.transform(raw)
        model_s[0] += time.perf_counter() - t_m
        return p

    # decide_batch's decisions as arrays: its reasons are built below in columns, no list per row
    decided = decide_arrays(frame, model.policy, probability=probability, explain_all=model.explain,
                            always_score=model.always_score)
    clock.lap("policy", minus=model_s[0])
    clock.add("model", model_s[0])
    if model_s[0] and sc.stage == "compiled":
        clock.add(_COMPILED_SLICES, 1.0)  # (a count, not seconds: run_batch takes it out of the timings)

    reasons = _reasons_array(sc, matrix, decided.own_reasons(), decided.explain, threads)
    clock.lap("reasons")
    gate = decided.gate
    out = pa.table(
        {
            "refund_id": refund_ids.cast(pa.large_string()),
            "requested_at": pa.array(t.view("datetime64[ns]"), type=pa.timestamp("ns")).cast(pa.timestamp("ns", tz="UTC")),
            "buyer_id": buyer_ids.cast(pa.large_string()),
            "store_id": ix.store_ids.take(pa.array(q_store)).cast(pa.large_string()),
            "category": category,
            "kind": kind,
            "amount": pa.array(requests["amount"].to_numpy()),
            "action": pa.array(decided.action, type=pa.large_string()),
            "abuse_probability": pa.array(np.asarray(decided.probability, dtype=np.float64)),
            "store_score": pa.array(gate["store_score"].to_numpy(dtype=np.float64)),
            "store_score_missing": pa.array(gate["store_score_missing"].to_numpy(dtype=bool)),
            "provisional": pa.array(gate["provisional"].to_numpy(dtype=bool)),
            "audit": pa.array(gate["audit"].to_numpy(dtype=bool)),
            "reasons": reasons,
            "model_version": pa.array([model.model_version] * n, type=pa.large_string()),
            "policy_version": pa.array(decided.policy_version, type=pa.large_string()),
        },
        schema=SCORED_SCHEMA,
    )
    return out


def _reasons_array(sc: _Scorer, matrix: np.ndarray, policy_reasons: Mapping[int, Sequence[Mapping[str, Any]]],
                   wanted: np.ndarray, threads: int) -> pa.Array:
    """The ``reasons`` column: the policy's own reasons (block list; by row) then the model's, at most 3.

    The model's reasons of every ``wanted`` row come from one contribution pass and
    :func:`reasons_columns` (no Python call per row).
    """
    n = len(wanted)
    own_counts = np.zeros(n, dtype=np.int64)
    for i, rs in policy_reasons.items():
        own_counts[i] = len(rs)
    rows = np.flatnonzero(wanted)
    leaves = None
    if sc.compiled is not None and sc.compiled.compiled_leaves:
        forest = sc.compiled

        def leaves(X: np.ndarray) -> np.ndarray:
            return forest.leaves(X, n_jobs=threads)

    contrib = (sc.explainer.contributions(matrix[rows], num_threads=threads, leaves=leaves) if len(rows)
               else np.zeros((0, matrix.shape[1])))
    cols = reasons_columns(sc.encoder, matrix[rows], contrib, k=_REASONS_K)
    model_counts = np.zeros(n, dtype=np.int64)
    model_counts[rows] = np.diff(cols.offsets)
    take_model = np.minimum(model_counts, np.maximum(_REASONS_K - own_counts, 0))
    take_own = np.minimum(own_counts, _REASONS_K)
    counts = take_own + take_model
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    total = int(offsets[-1])
    if not policy_reasons and total == len(cols.contribution):
        # (no block-list reason: every row's items are the model's, already in row order)
        return _reasons_list(offsets, cols.text, cols.feature, cols.value, cols.contribution,
                             np.ones(total, dtype=bool))
    text: list[str | None] = [None] * total
    feature: list[str | None] = [None] * total
    value: list[str | None] = [None] * total
    contribution = np.full(total, np.nan)
    has_contribution = np.zeros(total, dtype=bool)
    # the policy's own reasons (rare: block lists), in Python
    for i in np.flatnonzero(take_own):
        at = int(offsets[i])
        for j, r in enumerate(policy_reasons[i][: int(take_own[i])]):
            text[at + j] = str(r.get("text", ""))
            feature[at + j] = str(r.get("feature", ""))
            v = r.get("value")
            value[at + j] = None if v is None else str(v)
            c = r.get("contribution")
            if c is not None:
                contribution[at + j] = float(c)
                has_contribution[at + j] = True
    # the model's reasons, vectorised: item q of a wanted row goes after the row's own reasons
    k_taken = take_model[rows]
    n_items = int(k_taken.sum())
    if n_items:
        within = np.arange(n_items) - np.repeat(np.cumsum(k_taken) - k_taken, k_taken)
        src = np.repeat(cols.offsets[:-1], k_taken) + within
        dst = np.repeat(offsets[rows].astype(np.int64) + take_own[rows], k_taken) + within
        for out_list, col in ((text, cols.text), (feature, cols.feature), (value, cols.value)):
            arr = np.empty(total, dtype=object)
            arr[:] = out_list
            arr[dst] = np.asarray(col, dtype=object)[src]
            out_list[:] = arr.tolist()
        contribution[dst] = cols.contribution[src]
        has_contribution[dst] = True
    return _reasons_list(offsets, text, feature, value, contribution, has_contribution)


def _reasons_list(offsets: np.ndarray, text: Sequence[str | None], feature: Sequence[str | None],
                  value: Sequence[str | None], contribution: np.ndarray, has_contribution: np.ndarray) -> pa.Array:
    """The ``reasons`` column from its items' fields (row ``i`` owns items ``offsets[i]:offsets[i + 1]``)."""
    struct = pa.StructArray.from_arrays(
        [
            pa.array(text, type=pa.string()),
            pa.array(feature, type=pa.string()),
            pa.array(value, type=pa.string()),
            pa.array(contribution, type=pa.float64(), mask=~has_contribution),
        ],
        fields=list(_REASON_TYPE),
    )
    return pa.ListArray.from_arrays(pa.array(offsets, type=pa.int32()), struct, type=pa.list_(_REASON_TYPE))


class _Clock:
    """Adds the seconds since the last lap to a stage of a timings dict."""

    def __init__(self, timings: dict[str, float] | None) -> None:
        self.timings = timings
        self.t = time.perf_counter()

    def lap(self, stage: str, minus: float = 0.0) -> None:
        now = time.perf_counter()
        self.add(stage, now - self.t - minus)
        self.t = now

    def add(self, stage: str, seconds: float) -> None:
        if self.timings is not None:
            self.timings[stage] = self.timings.get(stage, 0.0) + seconds


def _add_timings(timings: dict[str, float] | None, part: Mapping[str, float]) -> None:
    """Add the seconds per stage of ``part`` (a worker's, a task's) to ``timings``."""
    clock = _Clock(timings)
    for stage, seconds in part.items():
        clock.add(stage, seconds)


# --------------------------------------------------------------------------- running
@dataclass
class BatchResult:
    """What a batch run did: the row accounting, the actions, the rejects and the time per stage.

    Attributes
    ----------
    rows_in
        Refunds of the period in the input: requested in ``[start, end)``, or with a
        ``requested_at`` that cannot be read (they cannot be placed outside it).
    scored
        Rows written (one per clean refund of the period).
    rejected
        Refunds of the period rejected by validation (their own rule, or their order
        was rejected). ``rows_in == scored + rejected`` always.
    actions
        Rows per action.
    rejects
        The contract's rejects table for every table of the input.
    rejected_by_table
        Rejected rows per input table.
    timings
        Seconds per stage of :data:`STAGES` (slice stages summed over slices and
        processes) plus ``wall``.
    slices, jobs
        Number of slices and processes.
    out, rejects_path
        Files written (``None`` when not written).
    model_version
        The model that decided.
    model_stage
        ``"compiled"`` if slices were decided on the lleaves-compiled forest
        (:mod:`refundguard.model.compiled`; counted in whichever process or Dask worker
        decided them), else ``"lightgbm"``; the probabilities are the same floats either way.
    """

    rows_in: int
    scored: int
    rejected: int
    actions: dict[str, int]
    rejects: pd.DataFrame
    rejected_by_table: dict[str, int]
    timings: dict[str, float]
    slices: int
    jobs: int
    out: Path | None
    rejects_path: Path | None
    model_version: str
    model_stage: str = "lightgbm"

    def to_text(self) -> str:
        """The summary ``refundguard score`` prints."""
        lines = [
            f"in = scored + rejected: {self.rows_in:,} = {self.scored:,} + {self.rejected:,} refunds "
            f"(model {self.model_version}; {self.slices:,} slice(s), {self.jobs} job(s); model stage: "
            f"{'compiled forest' if self.model_stage == 'compiled' else 'LightGBM'})",
        ]
        for action, n in self.actions.items():
            lines.append(f"  {action:17s} {n:>10,d}")
        bad = {k: v for k, v in self.rejected_by_table.items() if v}
        if bad:
            lines.append("rejected input rows: " + ", ".join(f"{k} {v:,}" for k, v in bad.items()))
        return "\n".join(lines)


class _Writer:
    """Appends scored slices to one Parquet or CSV file; Parquet row groups of :data:`ROW_GROUP_ROWS`."""

    def __init__(self, path: Path, csv: bool) -> None:
        import pyarrow.parquet as pq

        self.path = path
        self.csv = csv
        self.pending: list[pa.Table] = []
        self.n_pending = 0
        self.rows = 0
        self._header = True
        # the file exists (under its temporary name) from the start
        if csv:
            self._w: Any = open(path, "w", encoding="utf-8", newline="")  # noqa: SIM115 - closed in close()
        else:
            self._w = pq.ParquetWriter(str(path), SCORED_SCHEMA)

    def write(self, table: pa.Table) -> None:
        self.rows += table.num_rows
        if self.csv:
            self._write_csv(table)
            return
        self.pending.append(table)
        self.n_pending += table.num_rows
        while self.n_pending >= ROW_GROUP_ROWS:
            self._flush(ROW_GROUP_ROWS)

    def _flush(self, n: int) -> None:
        whole = pa.concat_tables(self.pending)
        self._w.write_table(whole.slice(0, n), row_group_size=max(n, 1))
        rest = whole.slice(n)
        self.pending = [rest] if rest.num_rows else []
        self.n_pending = rest.num_rows

    def _write_csv(self, table: pa.Table) -> None:
        """Append rows as :func:`refundguard.guard.write_scored` writes CSV (``reasons`` as JSON text)."""
        import json

        df = scored_frame(table)
        df["reasons"] = df["reasons"].map(lambda r: json.dumps(list(r), default=str))
        df.to_csv(self._w, index=False, header=self._header)
        self._header = False

    def close(self) -> None:
        if not self.csv and (self.n_pending or not self.rows):
            if not self.pending:
                self.pending = [SCORED_SCHEMA.empty_table()]
            self._flush(self.n_pending)
        if self.csv and self._header:
            self._write_csv(SCORED_SCHEMA.empty_table())
        if self._w is not None:
            self._w.close()
            self._w = None

    def abort(self) -> None:
        """Close without finishing (the caller removes the file)."""
        if self._w is not None:
            try:
                self._w.close()
            except Exception:  # noqa: BLE001 - the file is being discarded anyway
                pass
            self._w = None


_INDEX_CACHE: dict[str, BatchIndex] = {}


def _saved_index(folder: str, complete: bool) -> BatchIndex:
    """The index saved in ``folder``, memory-mapped and loaded once per worker (again once its run parts are
    saved, when ``complete``)."""
    ix = _INDEX_CACHE.get(folder)
    if ix is None or (complete and not ix.has_run_parts):
        _INDEX_CACHE.clear()
        ix = _INDEX_CACHE[folder] = BatchIndex.load(Path(folder))
        _allow_mapped_pages(Path(folder))
    return ix


def _allow_mapped_pages(folder: Path) -> None:
    """Tell loky's leak check (this worker) that the memory-mapped index is not a leak.

    A loky worker with ``psutil`` measures its RSS after its first task and exits as
    "leaking" once it has grown by more than 300 MB. Pages of the memory-mapped index
    count in the RSS as a worker reads them, so without this every worker was replaced
    (a new process: imports and model parsed again, the index mapped again) after a
    few slices, several times a run. The allowance becomes 300 MB plus the index's size;
    nothing else about the check changes.
    """
    try:
        from joblib.externals.loky import process_executor
    except ImportError:  # pragma: no cover - joblib without its vendored loky
        return
    size = 0
    for root, _, files in os.walk(folder):  # (another worker may be renaming a part it just wrote)
        for name in files:
            try:
                size += os.stat(os.path.join(root, name)).st_size
            except OSError:
                pass
    limit = int(3e8) + size
    if isinstance(getattr(process_executor, "_MAX_MEMORY_LEAK_SIZE", None), int):
        process_executor._MAX_MEMORY_LEAK_SIZE = max(process_executor._MAX_MEMORY_LEAK_SIZE, limit)


def _score_saved(folder: str, model: BatchModel, spec: SliceSpec) -> tuple[pa.Table, dict[str, float]]:
    """Worker side: score one slice of the index saved in ``folder``."""
    timings: dict[str, float] = {}
    with arrow_batch_pool():
        table = score_slice(_saved_index(folder, complete=True), model, spec, threads=1, timings=timings)
    return table, timings


def _run_part_saved(folder: str, cfg: ScoreConfig, span: list[tuple[int, int]] | str
                    ) -> tuple[list[dict[str, Any]] | None, dict[str, float]]:
    """Worker side: one run part of the index saved in ``folder``: ``"links"`` (pair rows and cluster
    graph) and ``"store_times"`` are saved into the folder; a segment of spans ``(a, b)`` returns the
    store rows of the decided requests ``q_rows[a:b]`` of each (:func:`_store_segment`)."""
    timings: dict[str, float] = {}
    with arrow_batch_pool():
        ix = _saved_index(folder, complete=False)
        if isinstance(span, str):
            base = Path(folder)
            part = (_links_and_graph if span == "links" else _store_order_part)(ix, timings)
            for name, value in part.items():
                if isinstance(value, ClusterGraph):
                    _save_graph(value, base)
                else:
                    with atomic_target(base / f"{name}.npy") as tmp, open(tmp, "wb") as f:
                        np.save(f, value, allow_pickle=False)
            return None, timings
        return _store_segment(ix, cfg, span, timings), timings


def _save_store_rows(folder: Path, merged: dict[str, Any]) -> None:
    """Add the merged store rows (:func:`_merge_store_blocks`) to the index saved in ``folder``."""
    import json

    for name, value in merged.items():
        if isinstance(value, np.ndarray):
            np.save(folder / f"{name}.npy", value, allow_pickle=False)
    scalars = json.loads((folder / "scalars.json").read_text())
    scalars.update(store_categories=list(merged["store_categories"]), score_config_hash=merged["score_config_hash"])
    (folder / "scalars.json").write_text(json.dumps(scalars))


def _warm(model: BatchModel) -> int:
    """Worker start-up: import the engine and parse the model (while the main process indexes)."""
    _scorer(model)
    return os.getpid()


def warm_workers(model: BatchModel, jobs: int) -> threading.Thread | None:
    """Start ``jobs`` joblib workers and parse the model in each, in a background thread.

    ``joblib.Parallel`` reuses the same workers afterwards, so their start-up
    overlaps the main process's indexing. Join the thread before the next
    ``Parallel`` call.
    """
    if jobs <= 1:
        return None
    from joblib import Parallel, delayed

    def start() -> None:
        try:
            Parallel(n_jobs=jobs, max_nbytes=None)(delayed(_warm)(model) for _ in range(jobs))
        except Exception:  # noqa: BLE001 - only a warm-up: the real run reports errors
            pass

    thread = threading.Thread(target=start, name="refundguard-warm-workers", daemon=True)
    thread.start()
    return thread


def _release_store_inputs(index: BatchIndex) -> None:
    """After the run parts: free the columns only they read (350 MB at 10M orders), now."""
    index.release_store_inputs()
    _give_back_memory()  # (some were views of Arrow's buffers)


#: Guards :func:`arrow_batch_pool`'s switch of Arrow's process-wide default pool.
_POOL_LOCK = threading.Lock()
_POOL_STATE: dict[str, Any] = {"users": 0, "before": None}


@contextlib.contextmanager
def arrow_batch_pool() -> Iterator[None]:
    """Arrow's jemalloc pool as its default pool while a batch run reads, codes and writes.

    Arrow's default on Linux wheels is mimalloc, which kept the read's freed pages
    resident through a 10M-order run; jemalloc hands them back after a short decay
    (and at once on ``release_unused``). The ``--jobs 2`` peak went from 1,937 to
    1,783-1,868 MiB. This switch reaches what pyarrow allocates from Python; Arrow's
    C++ default pool is fixed when pyarrow is imported, so the rest (another ~100 MiB)
    needs ``ARROW_DEFAULT_MEMORY_POOL=jemalloc`` set before Python starts. Nothing
    changes where that variable is set or pyarrow was built without jemalloc; a pool
    set with ``pyarrow.set_memory_pool`` is back once the run ends. Runs in several
    threads at once share the switch: the first sets it, the last restores it.
    Buffers remember their pool, so tables made during the run stay valid after it.
    """
    if os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        yield
        return
    try:
        pool = pa.jemalloc_memory_pool()
    except (NotImplementedError, AttributeError):  # pyarrow built without jemalloc (Windows wheels)
        yield
        return
    with _POOL_LOCK:
        if _POOL_STATE["users"] == 0:
            _POOL_STATE["before"] = pa.default_memory_pool()
            pa.set_memory_pool(pool)
        _POOL_STATE["users"] += 1
    try:
        yield
    finally:
        with _POOL_LOCK:
            _POOL_STATE["users"] -= 1
            if _POOL_STATE["users"] == 0:
                pa.set_memory_pool(_POOL_STATE["before"])
                _POOL_STATE["before"] = None


def _give_back_memory() -> None:
    """Hand what was just freed back to the system: Arrow's pool keeps freed buffers, glibc its heap."""
    pa.default_memory_pool().release_unused()
    _trim_heap()


def _trim_heap() -> None:
    """Hand glibc's free heap memory back to the system (``malloc_trim``; nothing elsewhere).

    Each thread allocates from its own glibc arena, and an arena keeps what a finished
    slice freed: with two threads that was ~400 MB of RSS held for nothing at 10M
    orders. Dask's workers trim the same way.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Any:
    """glibc's ``malloc_trim``, or ``None`` (not glibc: macOS, musl, Windows)."""
    import ctypes

    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    return trim


def _score_timed(index: BatchIndex, model: BatchModel, spec: SliceSpec) -> tuple[pa.Table, dict[str, float]]:
    """One slice and its own stage timings (a thread's, merged by the caller)."""
    timings: dict[str, float] = {}
    table = score_slice(index, model, spec, threads=1, timings=timings)
    _trim_heap()
    return table, timings


def iter_slices_local(index: BatchIndex, model: BatchModel, slices: Sequence[SliceSpec], jobs: int,
                      timings: dict[str, float], warm: threading.Thread | None = None,
                      backend: str = "threads") -> Iterator[pa.Table]:
    """Score ``slices`` in order: in this process (``jobs == 1``), or on ``jobs`` threads or processes.

    ``backend="threads"`` (default): the run parts (:func:`add_run_parts`) and then
    the slices run on ``jobs`` threads of this process, all reading the one index in
    memory: numpy, Arrow and LightGBM release the GIL for their work, and nothing is
    started, saved, mapped or copied.

    ``backend="processes"``: the index is written once to a temporary folder and
    memory-mapped by ``jobs`` joblib (loky) workers; its run parts, if missing, are
    computed by the workers too (the device and address pairs and the graph in one
    task, the stores' sorted order times in another, one task per segment of store-score blocks)
    and saved beside it. Each worker starts Python, imports the engine and parses the
    model, so this pays off only where the threads' share of GIL-held work limits them
    (many cores).

    Either way, results stream back in slice order and are the same bytes.
    """
    cfg = model.score_config
    if not slices:  # nothing to decide: no run parts either
        return
    serial = jobs == 1 or len(slices) <= 1
    if serial or backend == "threads":
        if not index.has_run_parts:
            add_run_parts(index, cfg, threads=jobs, timings=timings)
            _release_store_inputs(index)
        if serial:
            for spec in slices:
                yield score_slice(index, model, spec, threads=1, timings=timings)
            return
        from joblib import Parallel, delayed

        # at most 2 * jobs slices in flight (joblib's pre_dispatch): memory stays bounded
        run = Parallel(n_jobs=jobs, backend="threading", return_as="generator")
        for table, part in run(delayed(_score_timed)(index, model, spec) for spec in slices):
            _add_timings(timings, part)
            yield table
        return
    from joblib import Parallel, delayed

    if warm is not None:
        warm.join()
    folder = Path(tempfile.mkdtemp(prefix="refundguard-batch-"))
    try:
        t = time.perf_counter()
        index.save(folder, threads=jobs)
        segments = _store_segments(index, cfg, workers=jobs - 1) if not index.has_run_parts else None
        del index  # the workers read the saved copy; this process needs nothing more of it
        # some index arrays were zero-copy views of Arrow buffers: Arrow's pool keeps them once
        # freed (~600 MB at 10M orders) unless told to hand them back now
        pa.default_memory_pool().release_unused()
        timings["index"] = timings.get("index", 0.0) + time.perf_counter() - t
        if segments is not None:
            parts = Parallel(n_jobs=jobs, max_nbytes=None)(
                delayed(_run_part_saved)(str(folder), cfg, span) for span in ["links", "store_times", *segments])
            _save_store_rows(folder, _merge_store_blocks([block for seg, _ in parts[2:] for block in seg], cfg))
            for _, own in parts:
                _add_timings(timings, own)
        run = Parallel(n_jobs=jobs, return_as="generator", max_nbytes=None)
        for table, part in run(delayed(_score_saved)(str(folder), model, spec) for spec in slices):
            _add_timings(timings, part)
            yield table
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run_batch(
    source: SourceTables,
    model: BatchModel,
    *,
    start_ns: int | None,
    end_ns: int | None,
    out: Path | None = None,
    rejects_out: Path | None = None,
    published: PublishedScores | None = None,
    jobs: int = 1,
    chunk_days: int = DEFAULT_CHUNK_DAYS,
    progress: bool = False,
    runner: Callable[..., Iterator[pa.Table]] | None = None,
    workers: int | None = None,
) -> tuple[BatchResult, pa.Table | None]:
    """Decide every clean refund requested in ``[start_ns, end_ns)``, slice by slice.

    Parameters
    ----------
    source
        The read, validated, integer-coded tables (:func:`refundguard.sources.read_source`).
    model
        The model and policy.
    start_ns, end_ns
        Half-open bounds on ``requested_at`` (``None``: unbounded).
    out
        Write the scored rows there (``.parquet`` or ``.csv``, atomically); ``None``
        returns them as an Arrow table instead.
    rejects_out
        Write the rejects table there (atomically).
    published
        Published daily store scores to gate on instead of computing them.
    jobs, chunk_days
        Processes and slice length.
    progress
        A progress bar per slice.
    runner
        ``runner(index, model, slices, jobs, timings)`` yielding the scored slices in
        order (default :func:`iter_slices_local`; :mod:`refundguard.dask` passes its own).
    workers
        How many slices the runner decides at once (default ``jobs``), for
        :func:`plan_slices`' cuts.

    Returns
    -------
    (BatchResult, pyarrow.Table or None)
    """
    from tqdm.auto import tqdm

    from refundguard.policy import ACTIONS

    timings: dict[str, float] = {k: float(v) for k, v in source.timings.items()}
    # the run parts (store rows, cluster graph) are left to the runner: the local one
    # computes them in its worker processes when it has several
    index = build_index(source, start_ns, end_ns, config=model.score_config, published=published, threads=jobs,
                        timings=timings, run_parts=False)
    slices = plan_slices(index, chunk_days, start_ns, workers=workers or jobs)
    n_scored_expected = len(index.q_rows)
    runner = runner or iter_slices_local
    source.release()  # the index holds what the slices read
    _give_back_memory()  # the read's freed buffers and temporaries (~120 MB of heap at 10M orders)
    stream = runner(index, model, slices, jobs, timings)
    del index  # the runner holds it now (and may let it go once shared with its workers)
    actions = dict.fromkeys(ACTIONS, 0)
    tables: list[pa.Table] = []
    bar = tqdm(total=n_scored_expected, desc="score", unit="refund", disable=not progress, leave=False)
    written = 0
    try:
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            with atomic_target(out) as tmp:
                writer = _Writer(tmp, csv=out.suffix == ".csv")
                try:
                    for table in stream:
                        tw = time.perf_counter()
                        writer.write(table)
                        timings["write"] = timings.get("write", 0.0) + time.perf_counter() - tw
                        _count_actions(actions, table)
                        written += table.num_rows
                        bar.update(table.num_rows)
                    tw = time.perf_counter()
                    writer.close()
                    timings["write"] = timings.get("write", 0.0) + time.perf_counter() - tw
                except BaseException:
                    writer.abort()
                    raise
        else:
            for table in stream:
                tables.append(table)
                _count_actions(actions, table)
                written += table.num_rows
                bar.update(table.num_rows)
    finally:
        bar.close()
    if written != n_scored_expected:  # pragma: no cover - every slice returns one row per refund
        raise DataError(f"{written} rows scored for {n_scored_expected} refunds; nothing was written.")
    rejected = _rejected_in_period(source, start_ns, end_ns)
    rejects_path = None
    if rejects_out is not None:
        from refundguard.tables import write_table

        write_table(source.rejects, rejects_out)
        rejects_path = rejects_out
    by_table = {name: source.rejected_rows(name) for name in ("orders", "refunds", "reviews", "service")}
    compiled_slices = timings.pop(_COMPILED_SLICES, 0.0)
    result = BatchResult(
        rows_in=n_scored_expected + rejected, scored=written, rejected=rejected, actions=actions,
        rejects=source.rejects, rejected_by_table=by_table, timings=timings, slices=len(slices), jobs=jobs,
        out=out, rejects_path=rejects_path, model_version=model.model_version,
        model_stage="compiled" if compiled_slices else "lightgbm",
    )
    scored = None
    if out is None:
        scored = pa.concat_tables(tables) if tables else SCORED_SCHEMA.empty_table()
    return result, scored


def _count_actions(actions: dict[str, int], table: pa.Table) -> None:
    vc = pc.value_counts(table.column("action"))
    for item in vc.to_pylist():
        actions[item["values"]] = actions.get(item["values"], 0) + int(item["counts"])


def _rejected_in_period(source: SourceTables, start_ns: int | None, end_ns: int | None) -> int:
    """Rejected refund rows requested in ``[start, end)`` or at an unreadable time."""
    t = source.rejected_refund_requested
    inside = t == NAT
    ok = t != NAT
    sel = ok.copy()
    if start_ns is not None:
        sel &= t >= start_ns
    if end_ns is not None:
        sel &= t < end_ns
    return int((inside | sel).sum())


def scored_frame(table: pa.Table) -> pd.DataFrame:
    """A scored Arrow table as the DataFrame :meth:`RefundGuard.score_history` returns.

    Strings become ``str`` columns and ``reasons`` lists of ``{text, feature, value,
    contribution}`` dicts.
    """
    # pandas' default "str" dtype whatever pyarrow's age (before pyarrow 19, to_pandas gave object columns)
    text = pd.StringDtype(na_value=np.nan)
    df = table.drop_columns(["reasons"]).to_pandas(types_mapper={pa.string(): text, pa.large_string(): text}.get)
    df.insert(list(SCORED_COLUMNS).index("reasons"), "reasons", table.column("reasons").to_pylist())
    return df.loc[:, list(SCORED_COLUMNS)]


def history_result(result: BatchResult, table: pa.Table | None, out: Any, return_rejects: bool) -> Any:
    """What ``score_history`` returns: the ``BatchResult`` with ``out``, else the scored frame
    (and the rejects with ``return_rejects``)."""
    if out is not None:
        return result
    scored = scored_frame(table)  # type: ignore[arg-type]
    return (scored, result.rejects) if return_rejects else scored


def score_data(
    model: BatchModel,
    data: Mapping[str, pd.DataFrame] | str | os.PathLike[str],
    start: Any = None,
    end: Any = None,
    *,
    out: str | os.PathLike[str] | None = None,
    rejects: str | os.PathLike[str] | None = None,
    store_scores: pd.DataFrame | str | os.PathLike[str] | None = None,
    jobs: int = 1,
    chunk_days: int = DEFAULT_CHUNK_DAYS,
    validate_tables: bool = True,
    progress: bool = False,
    runner: Callable[..., Iterator[pa.Table]] | None = None,
    owner: str = "score_history",
    backend: str = "threads",
    workers: int | None = None,
) -> tuple[BatchResult, pa.Table | None]:
    """Read, validate and code the input, then :func:`run_batch` (the options of ``score_history``).

    Tables in memory pass through :func:`refundguard.pipeline.canonical_tables` after
    quarantine validation; a folder is read by :func:`refundguard.sources.read_source`.
    """
    from refundguard._time import parameter_ns
    from refundguard.pipeline import canonical_tables
    from refundguard.sources import code_tables, read_published_scores, read_source

    n_jobs = check_jobs(jobs, owner)
    n_days = check_chunk_days(chunk_days, owner)
    lo = parameter_ns(start, "start", owner, optional=True)
    hi = parameter_ns(end, "end", owner, optional=True)
    out_path = None if out is None else Path(out)
    if out_path is not None and out_path.suffix not in (".parquet", ".csv"):
        raise ConfigError.invalid(owner, "out", "a file ending in .parquet or .csv", str(out))
    rejects_path = None if rejects is None else Path(rejects)
    if rejects_path is not None and rejects_path.suffix not in (".parquet", ".csv"):
        raise ConfigError.invalid(owner, "rejects", "a file ending in .parquet or .csv", str(rejects))
    n_backend = check_backend(backend, owner)
    if runner is None:
        # process workers start (import, parse the model: ~2 s of CPU each) while this process reads
        warm = warm_workers(model, n_jobs) if n_backend == "processes" else None
        runner = functools.partial(iter_slices_local, warm=warm, backend=n_backend)
    with arrow_batch_pool():
        if isinstance(data, Mapping):
            source = code_tables(data, validate_tables=validate_tables, canonical=canonical_tables, threads=n_jobs)
        else:
            source = read_source(data, threads=n_jobs)
        published = None
        if store_scores is not None:
            cfg = model.score_config
            published = read_published_scores(store_scores, source.store_ids, cfg)
        return run_batch(source, model, start_ns=lo, end_ns=hi, out=out_path, rejects_out=rejects_path,
                         published=published, jobs=n_jobs, chunk_days=n_days, progress=progress, runner=runner,
                         workers=workers)
