"""The bundled default model: small, verified, current, and reproduced by its own command."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import lightgbm as lgb

import refundguard as rg
from refundguard.artifacts import load_model
from refundguard.features import FEATURE_NAMES
from refundguard.guard import default_model_path

ROOT = Path(__file__).resolve().parents[1]


def test_default_model_is_small_verified_and_current():
    path = default_model_path()
    assert path == ROOT / "models" / "default"
    files = sorted(p.name for p in path.iterdir())
    assert files == ["MANIFEST", "README.md", "meta.json", "model.txt"]
    assert sum(p.stat().st_size for p in path.iterdir()) < 5 * 1024 * 1024
    loaded = load_model(path)
    assert loaded.features == list(FEATURE_NAMES)
    windows = loaded.meta["windows"]
    assert windows["train"][0] < "2024-08-09" < windows["test"][1]  # the data spans the gate date
    card = (path / "README.md").read_text()
    assert loaded.model_version in card and "scripts/train_default.py" in card
    for p in path.iterdir():
        assert not p.read_bytes().startswith(b"\x80"), f"{p.name} looks like a pickle"
    guard = rg.RefundGuard.default()
    assert guard.model_version == loaded.model_version


def test_train_default_script_reproduces_model_txt(tmp_path: Path):
    spec = importlib.util.spec_from_file_location("train_default", ROOT / "scripts" / "train_default.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.build(tmp_path / "default")
    meta = json.loads((default_model_path() / "meta.json").read_text())
    if lgb.__version__ == meta["versions"]["lightgbm"]:
        committed = (default_model_path() / "model.txt").read_bytes()
        rebuilt = (tmp_path / "default" / "model.txt").read_bytes()
        assert rebuilt == committed, "scripts/train_default.py no longer reproduces models/default/model.txt: rerun it"
    else:  # another LightGBM (the dependency floors) grows other trees: the same model quality, not the same bytes
        again = json.loads((tmp_path / "default" / "meta.json").read_text())
        for metric in ("pr_auc", "roc_auc"):
            assert abs(again["metrics"]["test"]["overall"][metric] - meta["metrics"]["test"]["overall"][metric]) < 0.01
