"""Tests for refundguard.artifacts: round trip, verification before parsing, atomic writes, no pickle."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from refundguard.artifacts import (
    MODEL_FILES,
    LoadedModel,
    build_meta,
    compute_model_version,
    data_fingerprint,
    feature_bins,
    load_model,
    manifest_sha256,
    save_model,
    score_histogram,
    verify_model,
)
from refundguard.errors import ModelError
from refundguard.model import Calibrator, RefundAbuseClassifier


def _data(n: int = 800, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(
        {
            "amount": rng.gamma(2.0, 40.0, n),
            "n_refunds": rng.poisson(1.0, n).astype(float),
            "reason": pd.Series(rng.choice(["quality", "not_received", "other"], n), dtype="str"),
        }
    )
    y = rng.random(n) < 1 / (1 + np.exp(-(-2 + 0.9 * X["n_refunds"] + (X["reason"] == "not_received"))))
    return X, y.to_numpy()


@pytest.fixture(scope="module")
def trained():
    X, y = _data()
    clf = RefundAbuseClassifier(n_estimators=15, num_leaves=7, monotone_constraints={"n_refunds": 1}, n_jobs=1).fit(X, y)
    p = clf.predict_proba(X)[:, 1]
    cal = Calibrator("platt").fit(p, y)
    meta = build_meta(
        clf,
        trained_at="2026-11-21",
        calibration={**cal.to_dict(), "choice": {"chosen": "platt"}},
        thresholds={"intercept": 0.8, "review": 0.4, "intercept_precision": 0.9, "review_precision": 0.5},
        validation_curve={"threshold": [0.1, 0.5], "precision": [0.3, 0.9], "recall": [0.9, 0.2]},
        drift={"feature_bins": feature_bins(X, categories=clf.categories_), "score_histogram": score_histogram(p)},
        gated_share=0.42,
        windows={"train": ["2024-06-01", "2024-09-17"], "valid": ["2024-10-01", "2024-11-01"], "test": None, "gap_days": 14},
        score_config={"window_days": 30},
        metrics={"valid": {"pr_auc": 0.5, "roc_auc": float("nan")}},
        data_fingerprint={"sha256": "0" * 64},
    )
    return clf, X, meta


@pytest.fixture
def saved(tmp_path, trained):
    clf, _, meta = trained
    info = save_model(
        tmp_path / "model", booster_text=clf.booster_.model_to_string(), meta=meta, model_card="# Model {model_version}\n"
    )
    return info


def test_round_trip_predictions_equal(saved, trained):
    clf, X, meta = trained
    loaded = load_model(saved.path, expected_sha256=saved.manifest_sha256)
    assert isinstance(loaded, LoadedModel)
    assert sorted(os.listdir(saved.path)) == sorted([*MODEL_FILES, "MANIFEST"])
    assert loaded.model_version == saved.model_version == loaded.meta["model_version"]
    assert re.fullmatch(r"2026-11-21-[0-9a-f]{12}", loaded.model_version)
    assert loaded.model_card == f"# Model {saved.model_version}\n"
    assert loaded.manifest_sha256 == manifest_sha256(saved.path)
    again = loaded.classifier()
    np.testing.assert_array_equal(again.predict_proba(X)[:, 1], clf.predict_proba(X)[:, 1])
    assert again.categories_ == clf.categories_ and again.monotone_constraints_ == clf.monotone_constraints_
    cal = loaded.calibrator()
    assert cal is not None and cal.method == "platt"
    assert loaded.encoder().features == tuple(X.columns)
    assert loaded.meta["metrics"]["valid"]["roc_auc"] is None  # NaN stored as null
    assert loaded.meta["versions"]["lightgbm"]
    for key in ("drift", "validation_curve", "thresholds", "windows", "gated_share", "score_config", "data_fingerprint"):
        assert loaded.meta[key] == json.loads(json.dumps(meta[key]))


def test_same_inputs_same_artifact(tmp_path, trained):
    clf, _, meta = trained
    text = clf.booster_.model_to_string()
    a = save_model(tmp_path / "a", booster_text=text, meta=meta, model_card="card")
    b = save_model(tmp_path / "b", booster_text=text, meta=meta, model_card="card")
    assert a.manifest_sha256 == b.manifest_sha256 and a.model_version == b.model_version
    c = save_model(tmp_path / "c", booster_text=text, meta={**meta, "gated_share": 0.5}, model_card="card")
    assert c.model_version != a.model_version


def test_model_version_definition(saved):
    text = (saved.path / "model.txt").read_bytes()
    meta = json.loads((saved.path / "meta.json").read_text())
    no_version = {k: v for k, v in meta.items() if k != "model_version"}
    canon = (json.dumps(no_version, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode()
    pre = f"{hashlib.sha256(text).hexdigest()}  model.txt\n{hashlib.sha256(canon).hexdigest()}  meta.json\n"
    assert saved.model_version == "2026-11-21-" + hashlib.sha256(pre.encode()).hexdigest()[:12]
    assert compute_model_version(text, meta) == saved.model_version


def test_manifest_format(saved):
    lines = (saved.path / "MANIFEST").read_text().splitlines()
    assert [ln.split("  ")[1] for ln in lines] == sorted(MODEL_FILES)
    for ln in lines:
        digest, name = ln.split("  ")
        assert digest == hashlib.sha256((saved.path / name).read_bytes()).hexdigest()


# ---------------------------------------------------------------------- tampering


def _expect(problem: str, path: Path, **kw) -> ModelError:
    with pytest.raises(ModelError) as info:
        load_model(path, **kw)
    assert info.value.problem == problem, str(info.value)
    return info.value


def test_flipped_byte_in_model_txt(saved):
    p = saved.path / "model.txt"
    data = bytearray(p.read_bytes())
    pos = len(data) // 2
    data[pos] ^= 0x01
    p.write_bytes(bytes(data))
    err = _expect("hash_mismatch", saved.path)
    assert "model.txt" in str(err)


def test_flipped_byte_in_each_file(tmp_path, trained):
    clf, _, meta = trained
    for name in (*MODEL_FILES, "MANIFEST"):
        info = save_model(tmp_path / name, booster_text=clf.booster_.model_to_string(), meta=meta, model_card="card")
        p = info.path / name
        data = bytearray(p.read_bytes())
        data[3] ^= 0x20
        p.write_bytes(bytes(data))
        with pytest.raises(ModelError):
            load_model(info.path)


def test_missing_file(saved):
    (saved.path / "README.md").unlink()
    assert "README.md" in str(_expect("missing_file", saved.path))


def test_missing_manifest(saved):
    (saved.path / "MANIFEST").unlink()
    _expect("missing_manifest", saved.path)


def test_extra_file_and_folder(saved):
    (saved.path / "model.pkl").write_bytes(b"\x80\x04junk")
    assert "model.pkl" in str(_expect("extra_file", saved.path))
    (saved.path / "model.pkl").unlink()
    (saved.path / "cache").mkdir()
    _expect("extra_file", saved.path)


def test_wrong_expected_sha256(saved):
    _expect("pinned_hash", saved.path, expected_sha256="0" * 64)
    assert load_model(saved.path, expected_sha256=saved.manifest_sha256.upper()).model_version == saved.model_version


def test_not_found(tmp_path):
    _expect("not_found", tmp_path / "nope")


def _rewrite_meta(path: Path, change) -> None:
    """Edit meta.json and re-sign MANIFEST, as a careless (not malicious) tool would."""
    meta = json.loads((path / "meta.json").read_text())
    change(meta)
    (path / "meta.json").write_text(json.dumps(meta, sort_keys=True, indent=2) + "\n")
    lines = []
    for name in sorted(MODEL_FILES):
        lines.append(f"{hashlib.sha256((path / name).read_bytes()).hexdigest()}  {name}\n")
    (path / "MANIFEST").write_text("".join(lines))


def test_bad_format_version(saved):
    _rewrite_meta(saved.path, lambda m: m.update(format_version=99))
    assert "format_version 99 is not supported" in str(_expect("format_version", saved.path))


def test_feature_list_mismatch(saved):
    _rewrite_meta(saved.path, lambda m: m["features"][0].update(name="amount_eur"))
    assert "amount_eur" in str(_expect("feature_list", saved.path))


def test_feature_order_mismatch(saved):
    _rewrite_meta(saved.path, lambda m: m["features"].reverse())
    assert "different order" in str(_expect("feature_list", saved.path))


def test_edited_meta_breaks_model_version(saved):
    _rewrite_meta(saved.path, lambda m: m["thresholds"].update(intercept=0.01))
    _expect("model_version", saved.path)


def test_bad_manifest_lines(saved):
    (saved.path / "MANIFEST").write_text("nonsense\n")
    _expect("manifest_format", saved.path)


def test_feature_list_checked_before_parsing(saved):
    """A model.txt LightGBM cannot parse, correctly signed: the text check still comes first."""
    p = saved.path / "model.txt"
    p.write_text("tree\nversion=v4\nfeature_names=a b c\n")
    _rewrite_meta(saved.path, lambda m: None)
    _expect("feature_list", saved.path)


def test_unparseable_model_text(saved, trained):
    p = saved.path / "model.txt"
    names = " ".join(f["name"] for f in trained[2]["features"])
    p.write_text(f"tree\nversion=v4\nfeature_names={names}\nTree=0\ngarbage\n")

    def refresh(meta):
        meta["model_version"] = compute_model_version(p.read_bytes(), meta)

    _rewrite_meta(saved.path, refresh)
    _expect("parse", saved.path)


# ---------------------------------------------------------------------- atomic writes, no pickle


def test_atomic_replace(tmp_path, trained):
    clf, X, meta = trained
    target = tmp_path / "champion"
    first = save_model(target, booster_text=clf.booster_.model_to_string(), meta=meta, model_card="v1")
    clf2 = RefundAbuseClassifier(n_estimators=3, n_jobs=1).fit(X, clf.predict(X))
    meta2 = build_meta(clf2, trained_at="2026-11-22", calibration=None, thresholds={"intercept": None, "review": None})
    second = save_model(target, booster_text=clf2.booster_.model_to_string(), meta=meta2, model_card="v2")
    assert second.manifest_sha256 != first.manifest_sha256
    loaded = load_model(target, expected_sha256=second.manifest_sha256)
    assert loaded.booster.current_iteration() == 3 and loaded.calibrator() is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["champion"]  # no temp or old folders left


def test_failed_save_leaves_old_model(tmp_path, trained, monkeypatch):
    clf, _, meta = trained
    target = tmp_path / "champion"
    first = save_model(target, booster_text=clf.booster_.model_to_string(), meta=meta, model_card="v1")
    import refundguard.artifacts as art

    real_write = art._write

    def failing_write(path, data):
        if path.name == "MANIFEST":
            raise OSError(28, "No space left on device")
        real_write(path, data)

    monkeypatch.setattr(art, "_write", failing_write)
    with pytest.raises(OSError, match="No space left"):
        save_model(target, booster_text=clf.booster_.model_to_string(), meta={**meta, "gated_share": 0.1}, model_card="v2")
    assert load_model(target, expected_sha256=first.manifest_sha256).model_version == first.model_version
    assert sorted(p.name for p in tmp_path.iterdir()) == ["champion"]


def test_refuses_to_replace_non_model_folder(tmp_path, trained):
    clf, _, meta = trained
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "orders.parquet").write_bytes(b"x")
    with pytest.raises(ModelError, match="not a model folder"):
        save_model(tmp_path / "data", booster_text=clf.booster_.model_to_string(), meta=meta, model_card="")
    assert (tmp_path / "data" / "orders.parquet").exists()


def test_meta_rejects_paths_and_missing_fields(tmp_path, trained):
    clf, _, meta = trained
    text = clf.booster_.model_to_string()
    with pytest.raises(ModelError, match=re.escape("meta.windows.source")) as info:
        save_model(tmp_path / "m", booster_text=text, meta={**meta, "windows": {"source": "/home/me/data"}}, model_card="")
    assert info.value.problem == "meta_path"
    bad = {k: v for k, v in meta.items() if k != "thresholds"}
    with pytest.raises(ModelError, match=re.escape("missing required field(s) ['thresholds']")):
        save_model(tmp_path / "m", booster_text=text, meta=bad, model_card="")
    assert not (tmp_path / "m").exists()


PICKLE_MARKERS = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05", b"cnumpy", b"joblib")


def test_no_pickle_in_model_folder(saved):
    for entry in saved.path.iterdir():
        data = entry.read_bytes()
        assert not data.startswith(b"\x80"), entry.name
        assert not any(m in data for m in PICKLE_MARKERS), entry.name
        data.decode("utf-8")  # text only
    json.loads((saved.path / "meta.json").read_text())
    assert "/" + "tmp" not in (saved.path / "meta.json").read_text()  # no paths


def test_no_pickle_in_source():
    src = Path(__file__).resolve().parents[1] / "refundguard"
    model_modules = sorted(str(p.relative_to(src)) for p in (src / "model").glob("*.py"))
    assert "model/estimator.py" in model_modules
    for name in (*model_modules, "artifacts.py", "policy.py", "evaluation.py"):
        text = (src / name).read_text()
        assert not re.search(r"^\s*(import|from)\s+(pickle|joblib|cloudpickle|dill)\b", text, re.M), name


def test_verify_model_returns_verified_bytes(saved):
    files, meta, digest = verify_model(saved.path)
    assert set(files) == set(MODEL_FILES) and digest == saved.manifest_sha256
    assert meta["model_version"] == saved.model_version


# ---------------------------------------------------------------------- drift and fingerprint helpers


def test_feature_bins():
    X = pd.DataFrame(
        {
            "x": np.r_[np.arange(100, dtype=float), [np.nan] * 10],
            "c": pd.Series(["a"] * 60 + ["b"] * 30 + ["z"] * 10 + [None] * 10, dtype="str"),
            "k": np.ones(110),
        }
    )
    bins = feature_bins(X, n=4, categories={"c": ["a", "b"]})
    assert bins["x"]["kind"] == "numeric" and bins["x"]["edges"] == [24.75, 49.5, 74.25]
    assert bins["x"]["shares"] == pytest.approx([25 / 110] * 4)
    assert bins["x"]["missing_share"] == pytest.approx(10 / 110)
    assert bins["c"] == {
        "kind": "categorical",
        "levels": ["a", "b"],
        "shares": pytest.approx([60 / 110, 30 / 110]),
        "other_share": pytest.approx(10 / 110),
        "missing_share": pytest.approx(10 / 110),
    }
    assert bins["k"]["edges"] == [1.0] and sum(bins["k"]["shares"]) == pytest.approx(1.0)


def test_score_histogram():
    h = score_histogram([0.0, 0.04, 0.05, 0.5, 1.0, np.nan], bins=20)
    assert len(h["edges"]) == 21 and h["n"] == 5 and sum(h["counts"]) == 5
    assert h["counts"][0] == 2 and h["counts"][1] == 1 and h["counts"][-1] == 1


def test_data_fingerprint_order_independent_and_sensitive():
    orders = pd.DataFrame(
        {
            "order_id": pd.Series(["o1", "o2", "o3"], dtype="str"),
            "paid_at": pd.to_datetime(["2024-06-01", "2024-06-02", "2024-06-03"], utc=True),
        }
    )
    a = data_fingerprint({"orders": orders})
    b = data_fingerprint({"orders": orders.iloc[::-1]})
    assert a == b
    c = data_fingerprint({"orders": orders.assign(order_id=pd.Series(["o1", "o2", "o4"], dtype="str"))})
    assert c["sha256"] != a["sha256"]
    assert a["tables"]["orders"]["rows"] == 3
    assert a["tables"]["orders"]["time_spans"]["paid_at"] == ["2024-06-01T00:00:00+00:00", "2024-06-03T00:00:00+00:00"]


def test_saved_folder_respects_umask(saved):
    mask = os.umask(0)
    os.umask(mask)
    assert (saved.path.stat().st_mode & 0o777) == (0o777 & ~mask)


def test_symlinks_and_oversized_files_are_refused_before_reading(tmp_path, saved):
    import os
    import shutil

    folder = tmp_path / "linked"
    shutil.copytree(saved.path, folder)
    real = tmp_path / "elsewhere.txt"
    real.write_bytes((folder / "model.txt").read_bytes())  # same content: the hash alone would pass
    (folder / "model.txt").unlink()
    os.symlink(real, folder / "model.txt")
    with pytest.raises(ModelError) as e:
        load_model(folder)
    assert e.value.problem == "symlink"
    big = tmp_path / "big"
    shutil.copytree(saved.path, big)
    with open(big / "README.md", "r+b") as fh:  # sparse: no disk used
        fh.truncate((1 << 30) + 1)
    with pytest.raises(ModelError) as e:
        load_model(big)
    assert e.value.problem == "too_large"
