"""The model registry: versions side by side, an atomic current pointer, a log, rollback byte for byte."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

import refundguard as rg
from refundguard.cli import main
from refundguard.errors import ModelError
from refundguard.registry import ModelRegistry, is_registry, resolve_model_path
from refundguard.training import promote_if_better

TRAIN_END, VALID_END, TEST_END = "2024-08-20", "2024-09-20", "2024-10-20"


@pytest.fixture(scope="module")
def tables():
    clean, _ = rg.validate(rg.simulate(n_buyers=3_000, n_stores=100, days=140, seed=31))
    return clean


@pytest.fixture(scope="module")
def strong(tables):
    return rg.train(tables, TRAIN_END, VALID_END, TEST_END, validate_tables=False, trained_at="2024-10-20")


@pytest.fixture(scope="module")
def other(tables):
    """Another, different model (shallower trees)."""
    return rg.train(tables, TRAIN_END, VALID_END, TEST_END, validate_tables=False, trained_at="2024-10-20",
                    params={"num_leaves": 7, "n_estimators": 60})


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_promotion_then_rollback_serves_the_first_model_byte_for_byte(tables, strong, other, tmp_path):
    reg = ModelRegistry(tmp_path / "reg")
    first = reg.register(strong)
    reg.promote(first, {"why": "first"})
    served_first = _files(reg.current_path())
    guard = rg.RefundGuard.load(tmp_path / "reg")
    assert guard.model_version == first
    second = reg.register(other)
    assert second != first and reg.versions() == [first, second]
    reg.promote(second)
    assert rg.RefundGuard.load(tmp_path / "reg").model_version == second
    assert reg.rollback() == first
    assert reg.current() == first
    assert _files(reg.current_path()) == served_first  # the first model's folder never changed
    assert rg.RefundGuard.load(tmp_path / "reg").model_version == first
    guard.reload(tmp_path / "reg")
    assert guard.model_version == first
    events = [(e.event, e.version, e.previous) for e in reg.history()]
    assert events == [("register", first, None), ("promote", first, None), ("register", second, first),
                      ("promote", second, first), ("rollback", first, second)]
    with pytest.raises(ModelError, match="no earlier version"):
        reg.rollback()  # the first model replaced nothing


def test_promote_if_better_logs_both_metrics_and_keeps_the_loser(tables, strong, tmp_path):
    reg_path = tmp_path / "reg"
    first = promote_if_better(strong, tables, reg_path, validate_tables=False)
    assert first.promoted and first.previous is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        weak = rg.train(tables, TRAIN_END, VALID_END, TEST_END, validate_tables=False, trained_at="2024-10-21",
                        params={"n_estimators": 2, "num_leaves": 2, "early_stopping_rounds": None})
    second = promote_if_better(weak, tables, reg_path, validate_tables=False)
    assert not second.promoted and second.previous == first.version
    reg = ModelRegistry(reg_path)
    assert reg.current() == first.version and reg.versions() == [first.version, second.version]
    keep = reg.history()[-1]
    assert keep.event == "keep" and keep.detail["champion"] == pytest.approx(second.champion)
    assert keep.detail["challenger"] == pytest.approx(second.challenger)
    assert keep.detail["challenger"] < keep.detail["champion"]
    again = promote_if_better(strong, tables, reg_path, validate_tables=False)  # the same artifact
    assert not again.promoted and again.version == first.version


def test_a_model_folder_is_not_a_registry_and_a_torn_pointer_is_refused(strong, tmp_path):
    strong.save(tmp_path / "model")
    with pytest.raises(ModelError, match="model folder, not a model registry"):
        ModelRegistry(tmp_path / "model")
    assert resolve_model_path(tmp_path / "model") == tmp_path / "model"
    reg = ModelRegistry(tmp_path / "reg")
    assert is_registry(tmp_path / "reg") and reg.current() is None
    with pytest.raises(ModelError, match="no current version"):
        rg.RefundGuard.load(tmp_path / "reg")
    v = reg.register(strong)
    reg.promote(v)
    (tmp_path / "reg" / "current").write_text("2020-01-01-000000000000\n")
    with pytest.raises(ModelError, match="not a registered version"):
        rg.RefundGuard.load(tmp_path / "reg")
    assert not [p for p in (tmp_path / "reg" / "versions").iterdir() if p.name.startswith(".")]


def test_cli_train_with_a_registry_then_rollback(tables, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    for name, df in tables.items():
        df.to_parquet(data / f"{name}.parquet")
    reg = tmp_path / "reg"
    base = ["train", "--data", str(data), "--train-end", TRAIN_END, "--valid-end", VALID_END, "--test-end", TEST_END]
    assert main([*base, "--out", str(tmp_path / "m1"), "--registry", str(reg), "--quiet"]) == 0
    assert "promoted" in capsys.readouterr().out
    first = ModelRegistry(reg).current()
    # a tuned second model: on this data it does not beat the first on the test slice, so it is kept aside
    assert main([*base, "--out", str(tmp_path / "m2"), "--registry", str(reg), "--tune", "2", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "tuning: 2 parameter sets" in out and f"current {first} kept" in out
    registry = ModelRegistry(reg)
    second = registry.versions()[-1]
    assert registry.current() == first and second != first
    assert main(["rollback", "--registry", str(reg)]) == 1  # the first model replaced nothing
    assert "no earlier version" in capsys.readouterr().err
    registry.promote(second, {"why": "an analyst's choice"})
    assert main(["rollback", "--registry", str(reg)]) == 0
    assert f"{first} is current again (was {second})" in capsys.readouterr().out
    assert ModelRegistry(reg).current() == first
