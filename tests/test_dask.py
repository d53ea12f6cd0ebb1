"""refundguard.dask: the slices decided on a real dask.distributed LocalCluster equal the single-process run."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pytest

from refundguard.guard import RefundGuard
from refundguard.simulate import SimulationConfig, simulate_to_parquet

pytestmark = pytest.mark.extras
distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with distributed.Client(cluster) as c:
            yield c


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dask") / "sim"
    simulate_to_parquet(SimulationConfig(n_buyers=2_500, n_stores=80, days=120, seed=31), out)
    return out


def test_dask_local_cluster_equals_single_process(client, folder, tmp_path):
    import refundguard.dask as rgd

    guard = RefundGuard.default()
    assert len(client.scheduler_info()["workers"]) == 2
    a, b = tmp_path / "dask.parquet", tmp_path / "local.parquet"
    res = rgd.score_history(guard, folder, "2024-07-15", "2024-09-25", out=a, client=client, chunk_days=4)
    local = guard.score_history(folder, "2024-07-15", "2024-09-25", out=b, jobs=1, chunk_days=11)
    assert res.jobs == 2 and res.slices > 10
    assert res.scored == local.scored > 500 and res.rows_in == res.scored + res.rejected
    assert res.actions == local.actions
    assert hashlib.sha256(a.read_bytes()).hexdigest() == hashlib.sha256(b.read_bytes()).hexdigest()
    # the slices really ran on the workers
    assert any("slice_task" in str(k) for k in client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.task_prefixes)))
    # in memory, with the current client
    with client.as_current():
        frame = rgd.score_history(guard, folder, "2024-08-01", "2024-08-15", always_score=True)
    pd.testing.assert_frame_equal(frame, guard.score_history(folder, "2024-08-01", "2024-08-15", always_score=True))
