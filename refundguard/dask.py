"""The batch engine on a Dask cluster: the same per-slice function, run by ``dask.distributed`` workers.

Needs the ``dask`` extra (``pip install 'refundguard[dask]'``). Everything but the
slices runs in this process, exactly as :meth:`refundguard.RefundGuard.score_history`
does: the input is read, validated (quarantine) and coded into the integer index
once; the index and the portable model (:class:`refundguard.batch.BatchModel`:
model text, meta and policy, no file path) are scattered to every worker once;
then each time slice is one task running :func:`refundguard.batch.score_slice`
and returning an Arrow table. Results are gathered in slice order and written as
they arrive, so the output is the single-process output, byte for byte.

Usage::

    from dask.distributed import Client
    import refundguard as rg
    import refundguard.dask as rgd

    client = Client("tcp://scheduler:8786")          # or Client(LocalCluster(n_workers=4))
    guard = rg.RefundGuard.load("models/2026-11")
    result = rgd.score_history(guard, "data/", "2026-09-01", "2026-11-01",
                               out="scored.parquet", client=client)
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pandas as pd
import pyarrow as pa

from refundguard.batch import (
    DEFAULT_CHUNK_DAYS,
    BatchIndex,
    BatchModel,
    SliceSpec,
    _add_timings,
    _release_store_inputs,
    add_run_parts,
    history_result,
    score_data,
    score_slice,
)
from refundguard.guard import RefundGuard

__all__ = ["score_history", "slice_task"]


def slice_task(index: BatchIndex, model: BatchModel, spec: SliceSpec) -> tuple[pa.Table, dict[str, float]]:
    """One Dask task: decide one slice (one LightGBM thread) and time its stages."""
    timings: dict[str, float] = {}
    return score_slice(index, model, spec, threads=1, timings=timings), timings


def _runner(client: Any) -> Any:
    def run(index: BatchIndex, model: BatchModel, slices: Sequence[SliceSpec], jobs: int,
            timings: dict[str, float]) -> Iterator[pa.Table]:
        if not slices:
            return
        if not index.has_run_parts:  # the run parts, once, here: every task reads them
            add_run_parts(index, model.score_config, threads=1, timings=timings)
            _release_store_inputs(index)  # (nor are they sent to the workers)
        index_f = client.scatter(index, broadcast=True)
        model_f = client.scatter(model, broadcast=True)
        futures = [client.submit(slice_task, index_f, model_f, spec, pure=False) for spec in slices]
        try:
            for fut in futures:
                table, part = fut.result()
                _add_timings(timings, part)
                yield table
        finally:
            client.cancel(futures)
            client.cancel([index_f, model_f])

    return run


def score_history(
    guard: RefundGuard,
    data: Mapping[str, pd.DataFrame] | str | os.PathLike[str],
    start: Any = None,
    end: Any = None,
    *,
    client: Any = None,
    out: str | os.PathLike[str] | None = None,
    rejects: str | os.PathLike[str] | None = None,
    store_scores: pd.DataFrame | str | os.PathLike[str] | None = None,
    chunk_days: int = DEFAULT_CHUNK_DAYS,
    always_score: bool = False,
    explain: bool = False,
    validate_tables: bool = True,
    progress: bool = False,
    return_rejects: bool = False,
    compiled: bool | None = False,
) -> Any:
    """:meth:`RefundGuard.score_history` with the slices decided on a Dask cluster.

    Parameters
    ----------
    guard
        The model and policy.
    client
        A ``dask.distributed.Client``; ``None`` uses the current one
        (``distributed.get_client()``).
    data, start, end, out, rejects, store_scores, chunk_days, always_score, explain, validate_tables, progress, return_rejects
        As in :meth:`RefundGuard.score_history`.
    compiled
        As in :meth:`RefundGuard.score_history`, but ``False`` by default: every worker
        machine would compile the model once (~50 s for the default model) into its own
        cache folder; pass ``None`` or ``True`` where the workers have the ``fast`` extra.

    Returns
    -------
    As :meth:`RefundGuard.score_history`; the rows equal its single-process output.
    """
    if client is None:
        from distributed import get_client

        client = get_client()
    model = guard.batch_model(always_score=always_score, explain=explain, compiled=compiled)
    workers = client.scheduler_info().get("workers", {})
    # (the slices are cut for the cluster's threads: at least two per thread, plan_slices)
    threads = sum(int(w.get("nthreads", 1) or 1) for w in workers.values()) or 1
    result, table = score_data(
        model, data, start, end, out=out, rejects=rejects, store_scores=store_scores, jobs=1,
        chunk_days=chunk_days, validate_tables=validate_tables, progress=progress, runner=_runner(client),
        owner="refundguard.dask.score_history", workers=threads,
    )
    result.jobs = len(workers) or 1
    return history_result(result, table, out, return_rejects)
