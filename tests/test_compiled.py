"""The batch model stage on the lleaves-compiled forest: LightGBM's probabilities to the last bit.

The rest of the suite runs the batch model stage on LightGBM (conftest sets
``REFUNDGUARD_COMPILED=0``: compiling every model the tests train would cost seconds
each); these tests prove the compiled forest changes nothing: the same floats on the
matrices a run builds and on extreme rows, the same output file byte for byte, and a
damaged cache that is compiled again instead of being loaded.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest

import refundguard.model.compiled as compiled_mod
from refundguard import RefundGuard
from refundguard._time import parameter_ns
from refundguard.batch import _scorer, build_index, plan_slices, score_slice
from refundguard.errors import ConfigError
from refundguard.model.compiled import CACHE_ENV, CompiledForest
from refundguard.simulate import SimulationConfig, simulate_to_parquet
from refundguard.sources import read_source

pytestmark = pytest.mark.extras
pytest.importorskip("lleaves")

PERIOD = ("2024-08-20", "2024-10-19")


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One cache folder for the module: the default model is compiled once (~40 s)."""
    return tmp_path_factory.mktemp("lleaves-cache")


@pytest.fixture(scope="module")
def guard() -> RefundGuard:
    return RefundGuard.default()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("compiled") / "sim"
    simulate_to_parquet(SimulationConfig(n_buyers=2_500, n_stores=80, days=140, seed=41), out)
    return out


@pytest.fixture
def cache_env(cache, monkeypatch) -> Path:
    monkeypatch.setenv(CACHE_ENV, str(cache))
    monkeypatch.delenv("REFUNDGUARD_COMPILED", raising=False)
    return cache


def _run_matrices(guard: RefundGuard, folder: Path) -> np.ndarray:
    """The encoded feature matrix of every refund a run decides (what the model stage predicts)."""
    source = read_source(folder)
    lo, hi = (parameter_ns(x, "period", "test") for x in PERIOD)
    model = guard.batch_model(compiled=False)
    index = build_index(source, lo, hi, config=model.score_config)
    matrices: list[np.ndarray] = []
    for spec in plan_slices(index, 7, lo):
        score_slice(index, model, spec, matrices=matrices)
    return np.ascontiguousarray(np.vstack(matrices))


def test_the_compiled_forest_gives_lightgbms_floats_bit_for_bit(guard, folder, cache_env):
    booster = guard._state.loaded.booster
    forest = CompiledForest.load(booster, cache_dir=cache_env)
    assert forest is not None and forest.path.parent == cache_env
    X = _run_matrices(guard, folder)
    assert len(X) > 1_000
    rng = np.random.default_rng(5)
    wild = rng.normal(size=(20_000, X.shape[1])) * rng.choice([1e-3, 1.0, 1e3, 1e12], size=(20_000, X.shape[1]))
    wild[rng.random(wild.shape) < 0.3] = np.nan
    wild[rng.random(wild.shape) < 0.01] = np.inf
    wild[rng.random(wild.shape) < 0.01] = -np.inf
    for M in (X, wild, X[:1], X[:0]):
        want = booster.predict(M, num_threads=1) if len(M) else np.zeros(0)
        got = forest.predict(M, n_jobs=2)
        assert got.dtype == np.float64 and np.array_equal(got, want), int((got != want).sum())
        assert np.array_equal(forest.raw(M), booster.predict(M, raw_score=True) if len(M) else np.zeros(0))
    # the leaf indices the reasons read (compiled as a multiclass forest of bit-packed indices)
    assert forest.compiled_leaves
    for M in (X, wild, X[:1]):
        want = np.asarray(booster.predict(M, pred_leaf=True, num_threads=1), dtype=np.int64)
        assert np.array_equal(forest.leaves(M, n_jobs=2), want)
    explainer = _scorer(guard.batch_model(compiled=False)).explainer
    assert np.array_equal(explainer.contributions(X, num_threads=1, leaves=forest.leaves),
                          explainer.contributions(X, num_threads=1))


def test_score_history_writes_the_same_bytes_with_the_compiled_forest(guard, folder, cache_env, tmp_path):
    files = {}
    for compiled, jobs, backend, stage in ((False, 1, "threads", "lightgbm"), (True, 1, "threads", "compiled"),
                                           (True, 2, "threads", "compiled"), (None, 2, "processes", "compiled")):
        out = tmp_path / f"scored-{compiled}-{jobs}-{backend}.parquet"
        result = guard.score_history(folder, *PERIOD, out=out, jobs=jobs, compiled=compiled, backend=backend)
        assert result.model_stage == stage and f"model stage: {'compiled forest' if stage == 'compiled' else 'LightGBM'}" in result.to_text()
        files[(compiled, jobs, backend)] = hashlib.sha256(out.read_bytes()).hexdigest()
    assert len(set(files.values())) == 1, files
    assert _scorer(guard.batch_model(compiled=True)).compiled is not None
    assert _scorer(guard.batch_model(compiled=False)).compiled is None


def _small_booster(objective: str = "binary", seed: int = 3) -> lgb.Booster:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(2_000, 6))
    X[rng.random(X.shape) < 0.1] = np.nan
    y = (np.nan_to_num(X[:, 0]) + rng.normal(size=2_000) > 0).astype(float)
    return lgb.train({"objective": objective, "num_leaves": 7, "verbose": -1, "seed": seed},
                     lgb.Dataset(X, y), num_boost_round=15)


def test_a_damaged_cached_binary_is_compiled_again_never_loaded(tmp_path):
    booster = _small_booster()
    first = CompiledForest.load(booster, cache_dir=tmp_path)
    assert first is not None
    binary = first.path
    digest = binary.with_suffix(".sha256").read_text().strip()
    assert digest == hashlib.sha256(binary.read_bytes()).hexdigest()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary files left behind"
    # truncated (LLVM would abort the process on it): the checksum refuses it and the model is compiled again
    binary.write_bytes(binary.read_bytes()[:100])
    again = CompiledForest.load(booster, cache_dir=tmp_path)
    assert again is not None
    assert hashlib.sha256(binary.read_bytes()).hexdigest() == digest
    X = np.random.default_rng(9).normal(size=(500, 6))
    assert np.array_equal(again.predict(X), booster.predict(X))
    # a missing checksum is a damaged cache too
    binary.with_suffix(".sha256").unlink()
    assert CompiledForest.load(booster, cache_dir=tmp_path) is not None
    assert binary.with_suffix(".sha256").read_text().strip() == digest
    # the leaf-index forest's binary likewise
    (leaf_binary,) = [p for p in tmp_path.glob("*.so") if p != binary]
    leaf_binary.write_bytes(b"\x7fELF damaged")
    assert CompiledForest.load(booster, cache_dir=tmp_path, compile=False) is None
    fixed = CompiledForest.load(booster, cache_dir=tmp_path)
    assert fixed is not None and fixed.compiled_leaves
    assert np.array_equal(fixed.leaves(X), np.asarray(booster.predict(X, pred_leaf=True), dtype=np.int64))


def test_auto_takes_the_forest_from_the_cache_and_never_compiles(tmp_path):
    booster = _small_booster(seed=12)
    assert CompiledForest.load(booster, cache_dir=tmp_path, compile=False) is None
    assert not list(tmp_path.iterdir())
    assert CompiledForest.load(booster, cache_dir=tmp_path) is not None
    cached = CompiledForest.load(booster, cache_dir=tmp_path, compile=False)
    assert cached is not None
    cached.path.write_bytes(b"damaged")
    assert CompiledForest.load(booster, cache_dir=tmp_path, compile=False) is None  # refused, not loaded


def test_the_cache_key_follows_the_model(tmp_path):
    a = CompiledForest.load(_small_booster(seed=3), cache_dir=tmp_path)
    b = CompiledForest.load(_small_booster(seed=4), cache_dir=tmp_path)
    assert a is not None and b is not None and a.path != b.path


def test_concurrent_first_loads_share_one_compilation(tmp_path):
    booster = _small_booster(seed=6)
    got: list[CompiledForest | None] = []
    threads = [threading.Thread(target=lambda: got.append(CompiledForest.load(booster, cache_dir=tmp_path)))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 3 and all(g is not None for g in got)
    assert len(list(tmp_path.glob("*.so"))) == 2  # the forest and its leaf-index twin, compiled once each


def test_only_binary_models_are_compiled(tmp_path):
    assert CompiledForest.load(_small_booster("regression"), cache_dir=tmp_path) is None
    assert not list(tmp_path.glob("*.so"))


def test_an_unwritable_cache_folder_compiles_for_the_process_only(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    booster = _small_booster(seed=8)
    forest = CompiledForest.load(booster, cache_dir=blocker / "cache")
    assert forest is not None
    X = np.random.default_rng(1).normal(size=(300, 6))
    assert np.array_equal(forest.predict(X), booster.predict(X))
    assert np.array_equal(forest.leaves(X), np.asarray(booster.predict(X, pred_leaf=True), dtype=np.int64))


def test_asking_for_the_compiled_forest_without_the_extra_is_a_config_error(guard, folder, monkeypatch, tmp_path):
    monkeypatch.setattr(compiled_mod, "lleaves_available", lambda: False)
    with pytest.raises(ConfigError, match="fast extra") as err:
        guard.score_history(folder, *PERIOD, out=tmp_path / "x.parquet", compiled=True)
    assert err.value.field == "compiled" and err.value.value is True
    assert not (tmp_path / "x.parquet").exists()
    monkeypatch.setenv("REFUNDGUARD_COMPILED", "maybe")
    with pytest.raises(ConfigError, match="REFUNDGUARD_COMPILED"):
        guard.score_history(folder, *PERIOD, out=tmp_path / "x.parquet")


def test_the_score_command_takes_the_compiled_option(folder, cache_env, tmp_path, capsys):
    from refundguard.cli import main
    from refundguard.guard import default_model_path

    digests = {}
    for choice, stage in (("no", "LightGBM"), ("yes", "compiled forest"), ("auto", "compiled forest")):
        out = tmp_path / f"scored-{choice}.parquet"
        assert main(["score", "--data", str(folder), "--model", str(default_model_path()), "--out", str(out),
                     "--from", PERIOD[0], "--to", PERIOD[1], "--compiled", choice, "--quiet"]) == 0
        assert f"model stage: {stage})" in capsys.readouterr().out
        digests[choice] = hashlib.sha256(out.read_bytes()).hexdigest()
    assert len(set(digests.values())) == 1
    with pytest.raises(SystemExit) as usage:
        main(["score", "--data", str(folder), "--model", str(default_model_path()), "--out",
              str(tmp_path / "x.parquet"), "--compiled", "maybe"])
    assert usage.value.code == 2 and "invalid choice: 'maybe'" in capsys.readouterr().err
    assert not (tmp_path / "x.parquet").exists()


def test_auto_loads_the_cached_forest_on_the_first_slice_not_before(guard, folder, cache_env, tmp_path):
    """The run parts, which set a run's peak, run before LLVM and the forests are loaded."""
    from refundguard.batch import _NOT_LOADED

    assert CompiledForest.load(guard._state.loaded.booster, cache_dir=cache_env) is not None  # cached now
    model = guard.batch_model()  # auto
    assert _scorer(model).forest is _NOT_LOADED and _scorer(model).stage == "lightgbm"
    result = guard.score_history(folder, *PERIOD, out=tmp_path / "auto.parquet")
    assert result.model_stage == "compiled" and "slices_on_compiled_forest" not in result.timings
    assert _scorer(guard.batch_model(compiled=True)).forest is not _NOT_LOADED  # True: loaded (or compiled) first


def test_the_process_that_builds_the_model_reads_the_environment_once_for_all_workers(guard, monkeypatch, tmp_path):
    """Workers (loky processes started earlier, Dask workers elsewhere) follow the run's choice, not their own
    environment: the choice and the cache folder travel in the BatchModel."""
    monkeypatch.setenv("REFUNDGUARD_COMPILED", "0")
    off = guard.batch_model()
    assert off.compiled is False and off.cache_dir == ""
    monkeypatch.delenv("REFUNDGUARD_COMPILED")
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    auto = guard.batch_model()
    assert auto.compiled is None and auto.cache_dir == str(tmp_path)
    monkeypatch.setenv("REFUNDGUARD_COMPILED", "0")  # a worker's own environment no longer matters
    assert _scorer(auto).cache_dir == str(tmp_path)
