"""Crash safety: a SIGKILLed train or store-scores leaves nothing (or the whole result) at its destination;
the rerun is complete and identical.

(Batch scoring's ``score`` has its own SIGKILL test in tests/test_batch.py.)
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

import refundguard as rg
from refundguard.artifacts import load_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("crash") / "data"
    folder.mkdir()
    clean, _ = rg.validate(rg.simulate(n_buyers=2_000, n_stores=60, days=110, seed=77))
    for name, df in clean.items():
        df.to_parquet(folder / f"{name}.parquet")
    return folder


def _run(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "refundguard.cli", *args, "--quiet"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _kill_at(args: list[str], delay: float) -> float | None:
    """Start the command, SIGKILL it after ``delay`` seconds: ``None`` if it was killed, else how long
    the run took (it finished first; a successful exit is asserted)."""
    started = time.perf_counter()
    proc = _run(args)
    try:
        code = proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return None
    assert code == 0, proc.stderr.read().decode()
    return time.perf_counter() - started


def _digest(path: Path) -> str:
    if path.is_dir():
        return hashlib.sha256(b"".join(p.name.encode() + p.read_bytes() for p in sorted(path.iterdir()))).hexdigest()
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("command", ["train", "store-scores"])
def test_sigkill_half_way_leaves_nothing_and_the_rerun_is_identical(data, tmp_path, command):
    if command == "train":
        def args(out: Path) -> list[str]:
            return ["train", "--data", str(data), "--train-end", "2024-08-20", "--valid-end", "2024-09-15",
                    "--out", str(out)]
    else:
        def args(out: Path) -> list[str]:
            return ["store-scores", "--data", str(data), "--history", "2024-07-01", "2024-09-15",
                    "--out", str(out)]
    suffix = "" if command == "train" else ".parquet"
    reference = tmp_path / f"reference{suffix}"
    durations = []
    for _ in range(2):  # the second run is the warm one: kill times are shares of it
        started = time.perf_counter()
        done = _run(args(reference))
        assert done.wait(timeout=600) == 0, done.stderr.read().decode()
        durations.append(time.perf_counter() - started)
    full = min(durations)
    killed = 0
    absent_after_kill: list[bool] = []
    for k, share in enumerate((0.3, 0.55, 0.8)):
        out = tmp_path / f"out{k}{suffix}"
        def same_as_reference() -> None:
            if command == "train":
                assert load_model(out).model_version == load_model(reference).model_version
                assert (out / "model.txt").read_bytes() == (reference / "model.txt").read_bytes()
            else:
                pd.testing.assert_frame_equal(pd.read_parquet(out), pd.read_parquet(reference))

        # On a shared machine a run can be much faster than the reference runs were: when it
        # finishes before the kill, the next try kills at the same share of the time it just took.
        landed = False
        for _attempt in range(5):
            took = _kill_at(args(out), full * share)
            if took is None:
                landed = True
                break
            full = min(full, took)
            same_as_reference()  # it finished whole: the result is right; try again, earlier
            if out.is_dir():
                shutil.rmtree(out)
            else:
                out.unlink()
        if landed:
            killed += 1
            if out.exists():  # killed after the final rename: then it is the whole result, never a part
                same_as_reference()
                partial_or_absent_seen = False
            else:
                partial_or_absent_seen = True
            absent_after_kill.append(partial_or_absent_seen)
        rerun = _run(args(out))
        assert rerun.wait(timeout=600) == 0, rerun.stderr.read().decode()
        same_as_reference()
    assert killed >= 2 and any(absent_after_kill)  # kills landed mid-run, and left nothing at the destination
