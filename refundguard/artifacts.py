"""Model artifacts: a folder any reviewer can read, verified before anything is parsed.

A model folder holds exactly four files (DESIGN.md section 5, contract):

``model.txt``
    The LightGBM text model (``Booster.model_to_string``).
``meta.json``
    Everything needed to use and monitor the model, as canonical JSON (UTF-8,
    sorted keys, 2-space indent, no NaN: missing numbers are ``null``).
``README.md``
    The model card (free text; a literal ``{model_version}`` is replaced on save).
``MANIFEST``
    One line ``<sha256 hex>  <file name>`` per other file, sorted by name.

``load_model(dir, expected_sha256=None)`` checks, in this order and before
parsing anything: the folder exists; ``MANIFEST`` exists and is well formed and
lists exactly the three files; the sha256 of ``MANIFEST`` equals
``expected_sha256`` (when given: it pins the whole artifact, since MANIFEST holds
the hashes of every other file); no file is missing; no extra file or folder is
present; every file's hash matches; ``meta.json`` parses and has the required
fields; ``format_version`` is supported; the feature list equals the
``feature_names=`` line of ``model.txt`` (checked on the text); ``model_version``
matches its definition. Only then is the Booster built. Every failure raises
:class:`~refundguard.errors.ModelError` with a ``problem`` code.

``model_version``
    ``"<trained_at date>-<12 hex>"`` where the hex digits start the sha256 of
    the text ``"<sha256(model.txt)>  model.txt\\n<sha256(meta')>  meta.json\\n"``
    and ``meta'`` is the canonical ``meta.json`` **without** its ``model_version``
    key. That is the MANIFEST that the artifact would have if ``meta.json`` did
    not carry its own version (which would be circular), minus the model card
    (documentation only). It changes whenever the model or any metadata changes.

meta.json fields (``format_version`` 1)
    ==========================  ==================================================
    format_version              int, 1
    model_version               str, see above (set by :func:`save_model`)
    trained_at                  ISO date (or date-time) of training, UTC
    features                    ``[{name, dtype, monotone, levels?}]`` in model order;
                                ``levels`` (category levels, code i = level i) only
                                for ``dtype == "category"``
    monotone_constraints        ``{feature: -1 | 0 | 1}``
    classes                     the two labels, abuse class last (default [false, true])
    calibration                 ``Calibrator.to_dict()`` (isotonic x/y, or Platt a/b)
                                and ``choice`` (the selection report), or null
    thresholds                  ``{"intercept": float|null, "review": float|null,
                                "intercept_precision": 0.9, "review_precision": 0.5}``
    validation_curve            ``{"threshold": [...], "precision": [...], "recall": [...]}``
    drift                       ``{"feature_bins": feature_bins(...), "score_histogram":
                                score_histogram(...)}`` at training time
    gated_share                 share of training-period requests behind the store gate
    windows                     training slices: ``{"train": [start, end], "valid": [...],
                                "test": [...] | null, "gap_days": 14, "early_stopping": [...]}``
    score_config                ``ScoreConfig.to_dict()``
    params                      the classifier's parameters (``get_params()``)
    metrics                     ``{"valid": {...}, "test": {...}}`` from evaluation
    versions                    :func:`library_versions` (refundguard, lightgbm,
                                scikit-learn, pandas, numpy, python)
    data_fingerprint            :func:`data_fingerprint` of the training tables
    ==========================  ==================================================

No file paths are stored (a string that looks like an absolute path is refused).
No pickle is used anywhere: text and JSON only.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import re
import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from refundguard.errors import ModelError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import lightgbm as lgb

    from refundguard.model import Calibrator, FeatureEncoder, RefundAbuseClassifier

__all__ = [
    "FORMAT_VERSION",
    "SUPPORTED_FORMAT_VERSIONS",
    "MODEL_FILES",
    "REQUIRED_META_FIELDS",
    "LoadedModel",
    "SavedModel",
    "save_model",
    "load_model",
    "verify_model",
    "manifest_sha256",
    "compute_model_version",
    "build_meta",
    "feature_bins",
    "score_histogram",
    "data_fingerprint",
    "library_versions",
]

FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS: tuple[int, ...] = (1,)
MANIFEST = "MANIFEST"
MODEL_FILES: tuple[str, ...] = ("README.md", "meta.json", "model.txt")
#: No file of a model folder is read if it is larger than this (a model.txt of 1,000 trees x 255 leaves is ~30 MB).
MAX_FILE_BYTES = 1 << 30
REQUIRED_META_FIELDS: tuple[str, ...] = (
    "format_version",
    "model_version",
    "trained_at",
    "features",
    "monotone_constraints",
    "calibration",
    "thresholds",
)
_MANIFEST_LINE = re.compile(r"^([0-9a-f]{64})  ([A-Za-z0-9_.-]+)$")
_ABS_PATH = re.compile(r"^(/[^/\s]+/|~[/\\]|[A-Za-z]:[\\/]|\\\\)")


# ----------------------------------------------------------------------------- JSON helpers


def _jsonable(obj: Any, where: str = "meta") -> Any:
    """Convert numpy/pandas scalars, tuples and NaN to plain JSON values (NaN -> None)."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise ModelError(f"meta keys must be strings; {where} has key {k!r}.", problem="meta_type")
            out[k] = _jsonable(v, f"{where}.{k}")
        return out
    if isinstance(obj, (list, tuple, np.ndarray, pd.Index, pd.Series)):
        return [_jsonable(v, f"{where}[]") for v in list(obj)]
    if isinstance(obj, (set, frozenset)):
        return sorted(_jsonable(v, f"{where}[]") for v in obj)
    if isinstance(obj, (pd.Timestamp, datetime, date)):
        return obj.isoformat()
    if obj is pd.NaT or obj is pd.NA:
        return None
    raise ModelError(
        f"meta values must be JSON data; {where} holds a {type(obj).__name__}.", problem="meta_type"
    )


def _canonical(obj: Any) -> bytes:
    return (json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _find_paths(obj: Any, where: str = "meta") -> list[str]:
    if isinstance(obj, str):
        return [where] if _ABS_PATH.match(obj) else []
    if isinstance(obj, Mapping):
        return [p for k, v in obj.items() for p in _find_paths(v, f"{where}.{k}")]
    if isinstance(obj, list):
        return [p for i, v in enumerate(obj) for p in _find_paths(v, f"{where}[{i}]")]
    return []


def _trained_date(meta: Mapping[str, Any]) -> str:
    raw = meta.get("trained_at")
    try:
        return pd.Timestamp(str(raw)).date().isoformat()
    except (ValueError, TypeError) as exc:
        raise ModelError(
            f"meta 'trained_at' must be an ISO date or date-time; got {raw!r}.", problem="meta_field"
        ) from exc


def compute_model_version(booster_text: str | bytes, meta: Mapping[str, Any]) -> str:
    """The ``model_version`` of an artifact (see the module docstring for the definition).

    Parameters
    ----------
    booster_text
        The exact ``model.txt`` content.
    meta
        The metadata (its ``model_version`` key, if any, is ignored).

    Returns
    -------
    str
        ``"YYYY-MM-DD-<12 hex>"``.
    """
    text = booster_text.encode("utf-8") if isinstance(booster_text, str) else booster_text
    clean = {k: v for k, v in _jsonable(meta).items() if k != "model_version"}
    pre_manifest = f"{_sha256(text)}  model.txt\n{_sha256(_canonical(clean))}  meta.json\n"
    return f"{_trained_date(clean)}-{_sha256(pre_manifest.encode('ascii'))[:12]}"


# ----------------------------------------------------------------------------- save


@dataclass(frozen=True)
class SavedModel:
    """What :func:`save_model` wrote.

    Attributes
    ----------
    path
        The model folder.
    model_version
        The artifact's version string.
    manifest_sha256
        sha256 of ``MANIFEST``; pass it to ``load_model(expected_sha256=...)`` to pin the artifact.
    """

    path: Path
    model_version: str
    manifest_sha256: str


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def save_model(path: str | os.PathLike[str], *, booster_text: str, meta: Mapping[str, Any], model_card: str) -> SavedModel:
    """Write a model folder atomically.

    The four files are written to a temporary folder beside the target, synced,
    and renamed into place. An existing target (which must be a model folder: it
    has a MANIFEST, or is empty) is renamed aside, the new folder renamed in, and
    the old one removed; if the second rename fails, the old folder is put back.
    Readers therefore see the old or the new artifact, never a mix (the target
    name is absent for the instant between the two renames).

    Parameters
    ----------
    path
        The model folder to create or replace.
    booster_text
        ``Booster.model_to_string()``.
    meta
        Metadata (see the module docstring); ``model_version`` and, when absent,
        ``format_version`` are filled in.
    model_card
        README.md text; ``{model_version}`` is replaced by the version.

    Returns
    -------
    SavedModel

    Raises
    ------
    ModelError
        If the metadata is incomplete, holds a path, or the target is not a model folder.
    """
    target = Path(path)
    clean = _jsonable(dict(meta))
    clean.setdefault("format_version", FORMAT_VERSION)
    missing = [f for f in REQUIRED_META_FIELDS if f != "model_version" and f not in clean]
    if missing:
        raise ModelError(f"meta is missing required field(s) {missing}.", path=str(target), problem="meta_field")
    paths = _find_paths(clean)
    if paths:
        raise ModelError(
            f"meta must not hold file paths; found absolute path(s) at {paths[:3]}.", path=str(target), problem="meta_path"
        )
    text = booster_text.encode("utf-8")
    _check_feature_line(text, clean, str(target))
    version = compute_model_version(text, clean)
    clean["model_version"] = version
    files = {
        "model.txt": text,
        "meta.json": _canonical(clean),
        "README.md": model_card.replace("{model_version}", version).encode("utf-8"),
    }
    manifest = "".join(f"{_sha256(files[name])}  {name}\n" for name in MODEL_FILES).encode("ascii")

    if target.exists() and not target.is_dir():
        raise ModelError(f"{target} exists and is not a folder; refusing to replace it.", path=str(target), problem="target_not_model")
    if target.is_dir() and any(target.iterdir()) and not (target / MANIFEST).is_file():
        raise ModelError(
            f"{target} is a non-empty folder without a MANIFEST (not a model folder); refusing to replace it.",
            path=str(target),
            problem="target_not_model",
        )
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".{target.name}.tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()  # honours the umask (tempfile.mkdtemp would make it private: 0o700)
    try:
        for name, data in files.items():
            _write(tmp / name, data)
        _write(tmp / MANIFEST, manifest)
        _fsync_dir(tmp)
        if target.exists():
            old = parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(target, old)
            try:
                os.replace(tmp, target)
            except BaseException:
                os.replace(old, target)
                raise
            _fsync_dir(parent)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
            _fsync_dir(parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return SavedModel(path=target, model_version=version, manifest_sha256=_sha256(manifest))


# ----------------------------------------------------------------------------- load


@dataclass(frozen=True)
class LoadedModel:
    """A verified model artifact.

    Attributes
    ----------
    booster
        The LightGBM booster built from ``model.txt``.
    meta
        The parsed ``meta.json``.
    manifest_sha256
        sha256 of ``MANIFEST`` (pins the whole artifact).
    path
        The folder it was loaded from (not stored in the artifact).
    model_card
        The README.md text.
    """

    booster: lgb.Booster
    meta: dict[str, Any]
    manifest_sha256: str
    path: Path
    model_card: str = ""

    @property
    def model_version(self) -> str:
        """The artifact's ``model_version``."""
        return str(self.meta["model_version"])

    @property
    def features(self) -> list[str]:
        """Feature names in model order."""
        return [f["name"] for f in self.meta["features"]]

    @property
    def categories(self) -> dict[str, list[Any]]:
        """Category levels per categorical feature, as stored."""
        return {f["name"]: list(f["levels"]) for f in self.meta["features"] if f.get("dtype") == "category"}

    def encoder(self) -> FeatureEncoder:
        """A :class:`~refundguard.model.FeatureEncoder` from the stored feature list and levels."""
        from refundguard.model import FeatureEncoder

        return FeatureEncoder(self.features, self.categories)

    def classifier(self) -> RefundAbuseClassifier:
        """A fitted :class:`~refundguard.model.RefundAbuseClassifier` around the booster."""
        from refundguard.model import RefundAbuseClassifier

        params = self.meta.get("params") or {}
        known = RefundAbuseClassifier().get_params()
        return RefundAbuseClassifier.from_booster(
            self.booster,
            categories=self.categories,
            dtypes={f["name"]: f.get("dtype", "float64") for f in self.meta["features"]},
            monotone_constraints=self.meta.get("monotone_constraints") or {},
            classes=self.meta.get("classes") or (False, True),
            params={k: v for k, v in params.items() if k in known},
        )

    def calibrator(self) -> Calibrator | None:
        """The stored :class:`~refundguard.model.Calibrator`, or None when the model is uncalibrated."""
        from refundguard.model import Calibrator

        cal = self.meta.get("calibration")
        if not cal:
            return None
        return Calibrator.from_dict({k: v for k, v in cal.items() if k != "choice"})


def manifest_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 (hex) of a model folder's MANIFEST file (what ``expected_sha256`` pins)."""
    p = Path(path) / MANIFEST
    try:
        return _sha256(p.read_bytes())
    except OSError as exc:
        raise ModelError(f"Cannot read {p}: {exc.strerror}.", path=str(path), problem="missing_manifest") from exc


def _feature_line(text: bytes) -> list[str] | None:
    """The ``feature_names=`` line of a LightGBM model text (header only)."""
    for raw in text.split(b"\n", 200)[:200]:
        line = raw.rstrip(b"\r")
        if line.startswith(b"Tree="):
            break
        if line.startswith(b"feature_names="):
            return line[len(b"feature_names="):].decode("utf-8", errors="replace").split(" ")
    return None


def _check_feature_line(text: bytes, meta: Mapping[str, Any], where: str) -> None:
    feats = meta.get("features")
    if not isinstance(feats, list) or not feats or not all(isinstance(f, Mapping) and isinstance(f.get("name"), str) for f in feats):
        raise ModelError("meta 'features' must be a non-empty list of {name, dtype, ...}.", path=where, problem="meta_field")
    names = [f["name"] for f in feats]
    for f in feats:
        if f.get("dtype") == "category" and not isinstance(f.get("levels"), list):
            raise ModelError(
                f"meta feature {f['name']!r} is categorical but has no 'levels' list.", path=where, problem="meta_field"
            )
    in_text = _feature_line(text)
    if in_text is None:
        raise ModelError("model.txt has no 'feature_names=' line in its header.", path=where, problem="feature_list")
    if in_text != names:
        diff = sorted(set(in_text) ^ set(names))
        detail = f"differing names: {diff[:5]}" if diff else "same names in a different order"
        raise ModelError(
            f"The feature list in meta.json ({len(names)} features) does not match model.txt "
            f"({len(in_text)} features): {detail}.",
            path=where,
            problem="feature_list",
        )


def verify_model(path: str | os.PathLike[str], expected_sha256: str | None = None) -> tuple[dict[str, bytes], dict[str, Any], str]:
    """Run every check of :func:`load_model` without building the Booster.

    Returns
    -------
    files : dict
        File name -> bytes (exactly the verified bytes).
    meta : dict
        The parsed meta.json.
    manifest_sha256 : str

    Raises
    ------
    ModelError
        ``problem`` is one of ``not_found``, ``missing_manifest``, ``manifest_format``,
        ``symlink``, ``too_large``, ``pinned_hash``, ``missing_file``, ``extra_file``, ``hash_mismatch``,
        ``meta_parse``, ``meta_field``, ``format_version``, ``feature_list``, ``model_version``.
    """
    folder = Path(path)
    where = str(folder)
    if not folder.is_dir():
        raise ModelError(f"Model folder {folder} does not exist or is not a folder.", path=where, problem="not_found")
    for entry in folder.iterdir():
        if entry.is_symlink():  # a link could point anywhere (another folder, a device, a file that changes)
            raise ModelError(f"{entry} is a symbolic link; a model folder holds regular files only.",
                             path=where, problem="symlink")
        if entry.is_file() and entry.stat().st_size > MAX_FILE_BYTES:
            raise ModelError(f"{entry} is larger than {MAX_FILE_BYTES:,d} bytes; refusing to read it.",
                             path=where, problem="too_large")
    try:
        manifest = (folder / MANIFEST).read_bytes()
    except FileNotFoundError:
        raise ModelError(f"Model folder {folder} has no MANIFEST.", path=where, problem="missing_manifest") from None
    except OSError as exc:
        raise ModelError(f"Cannot read {folder / MANIFEST}: {exc.strerror}.", path=where, problem="missing_manifest") from exc
    m_hash = _sha256(manifest)
    if expected_sha256 is not None and m_hash != str(expected_sha256).lower():
        raise ModelError(
            f"The MANIFEST of {folder} has sha256 {m_hash}, expected {expected_sha256}: this is not the pinned artifact.",
            path=where,
            problem="pinned_hash",
        )
    listed: dict[str, str] = {}
    try:
        lines = manifest.decode("ascii").splitlines()
    except UnicodeDecodeError:
        raise ModelError(f"The MANIFEST of {folder} is not ASCII text.", path=where, problem="manifest_format") from None
    for i, line in enumerate(lines, 1):
        m = _MANIFEST_LINE.match(line)
        if not m or m.group(2) in listed:
            raise ModelError(
                f"MANIFEST line {i} is not '<sha256>  <file>' (or repeats a file): {line[:80]!r}.",
                path=where,
                problem="manifest_format",
            )
        listed[m.group(2)] = m.group(1)
    if sorted(listed) != sorted(MODEL_FILES):
        raise ModelError(
            f"MANIFEST must list exactly {list(MODEL_FILES)}; it lists {sorted(listed)}.", path=where, problem="manifest_format"
        )
    present = {p.name for p in folder.iterdir()}
    missing = sorted(set(MODEL_FILES) - present)
    if missing:
        raise ModelError(f"Model folder {folder} is missing {missing}.", path=where, problem="missing_file")
    extra = sorted(present - set(MODEL_FILES) - {MANIFEST})
    if extra:
        raise ModelError(f"Model folder {folder} has unexpected entries {extra}.", path=where, problem="extra_file")
    files: dict[str, bytes] = {}
    for name in MODEL_FILES:
        fp = folder / name
        if not fp.is_file():
            raise ModelError(f"{fp} is not a regular file.", path=where, problem="extra_file")
        data = fp.read_bytes()
        if _sha256(data) != listed[name]:
            raise ModelError(
                f"{name} in {folder} does not match its MANIFEST hash (corrupted or modified).",
                path=where,
                problem="hash_mismatch",
            )
        files[name] = data
    try:
        meta = json.loads(files["meta.json"].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"meta.json in {folder} is not valid JSON: {exc}.", path=where, problem="meta_parse") from exc
    if not isinstance(meta, dict):
        raise ModelError("meta.json must hold a JSON object.", path=where, problem="meta_parse")
    fv = meta.get("format_version")
    if isinstance(fv, bool) or fv not in SUPPORTED_FORMAT_VERSIONS:
        raise ModelError(
            f"meta.json format_version {fv!r} is not supported (supported: {list(SUPPORTED_FORMAT_VERSIONS)}).",
            path=where,
            problem="format_version",
        )
    missing_fields = [f for f in REQUIRED_META_FIELDS if f not in meta]
    if missing_fields:
        raise ModelError(f"meta.json is missing required field(s) {missing_fields}.", path=where, problem="meta_field")
    _check_feature_line(files["model.txt"], meta, where)
    expected_version = compute_model_version(files["model.txt"], meta)
    if meta["model_version"] != expected_version:
        raise ModelError(
            f"meta.json model_version {meta['model_version']!r} does not match its content ({expected_version!r}).",
            path=where,
            problem="model_version",
        )
    return files, meta, m_hash


def load_model(path: str | os.PathLike[str], expected_sha256: str | None = None) -> LoadedModel:
    """Verify a model folder, then build its Booster.

    Parameters
    ----------
    path
        The model folder.
    expected_sha256
        If given, the sha256 of its MANIFEST must equal it (pins every file).

    Returns
    -------
    LoadedModel

    Raises
    ------
    ModelError
        Naming the problem (see :func:`verify_model`; plus ``parse`` when LightGBM
        rejects the verified text).
    """
    import lightgbm as lgb

    files, meta, m_hash = verify_model(path, expected_sha256)
    try:
        booster = lgb.Booster(model_str=files["model.txt"].decode("utf-8"))
    except (lgb.basic.LightGBMError, UnicodeDecodeError, ValueError) as exc:
        raise ModelError(f"model.txt in {path} cannot be parsed by LightGBM: {exc}.", path=str(path), problem="parse") from exc
    if booster.feature_name() != [f["name"] for f in meta["features"]]:
        raise ModelError("The parsed booster's features differ from meta.json.", path=str(path), problem="feature_list")
    return LoadedModel(
        booster=booster,
        meta=meta,
        manifest_sha256=m_hash,
        path=Path(path),
        model_card=files["README.md"].decode("utf-8", errors="replace"),
    )


# ----------------------------------------------------------------------------- metadata helpers


def library_versions() -> dict[str, str]:
    """Versions of refundguard and the libraries that shape a model."""
    import lightgbm
    import sklearn

    from refundguard._version import __version__

    return {
        "refundguard": __version__,
        "lightgbm": lightgbm.__version__,
        "scikit-learn": sklearn.__version__,
        "pandas": pd.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def feature_bins(
    X: pd.DataFrame, n: int = 10, *, categories: Mapping[str, Sequence[Any]] | None = None
) -> dict[str, dict[str, Any]]:
    """Per-feature bins and shares at training time, for drift (PSI) checks later.

    Parameters
    ----------
    X
        The training feature frame (raw values, not codes).
    n
        Number of quantile bins for numeric features (fewer when values repeat).
    categories
        Categorical feature -> levels (the model's ``categories_``). Other columns are numeric.

    Returns
    -------
    dict
        Numeric: ``{"kind": "numeric", "edges": [e_1..e_{k-1}], "shares": [k values],
        "missing_share"}``, bin ``i`` being ``edges[i-1] <= x < edges[i]`` (open ends).
        Categorical: ``{"kind": "categorical", "levels", "shares", "other_share",
        "missing_share"}``. Shares are over all rows (they sum to 1 with the missing /
        other shares).
    """
    cats = dict(categories or {})
    out: dict[str, dict[str, Any]] = {}
    total = max(len(X), 1)
    for name in X.columns:
        col = X[name]
        missing = col.isna().to_numpy()
        if name in cats:
            levels = list(cats[name])
            idx = pd.Index(levels).get_indexer(col.astype(object) if isinstance(col.dtype, pd.CategoricalDtype) else col)
            counts = np.bincount(idx[idx >= 0], minlength=len(levels))
            other = int(np.count_nonzero((idx < 0) & ~missing))
            out[str(name)] = {
                "kind": "categorical",
                "levels": _jsonable(levels),
                "shares": (counts / total).tolist(),
                "other_share": other / total,
                "missing_share": float(missing.sum()) / total,
            }
        else:
            values = col.to_numpy(dtype=np.float64, na_value=np.nan)
            finite = values[~np.isnan(values)]
            if finite.size:
                qs = np.quantile(finite, np.linspace(0, 1, n + 1)[1:-1])
                edges = np.unique(qs)
            else:
                edges = np.array([], dtype=np.float64)
            bins = np.searchsorted(edges, finite, side="right")
            counts = np.bincount(bins, minlength=len(edges) + 1)
            out[str(name)] = {
                "kind": "numeric",
                "edges": edges.tolist(),
                "shares": (counts / total).tolist(),
                "missing_share": float(missing.sum()) / total,
            }
    return out


def score_histogram(p: Any, bins: int = 20) -> dict[str, Any]:
    """Histogram of predicted probabilities on ``bins`` equal-width bins over [0, 1].

    Returns
    -------
    dict
        ``{"edges": [bins + 1 values], "counts": [...], "shares": [...], "n": int}``.
    """
    probs = np.asarray(p, dtype=np.float64).reshape(-1)
    probs = probs[~np.isnan(probs)]
    edges = np.linspace(0.0, 1.0, int(bins) + 1)
    counts, _ = np.histogram(np.clip(probs, 0.0, 1.0), bins=edges)
    n = int(probs.size)
    return {
        "edges": edges.tolist(),
        "counts": counts.astype(int).tolist(),
        "shares": (counts / max(n, 1)).tolist(),
        "n": n,
    }


_ID_COLUMNS = {"orders": "order_id", "refunds": "refund_id", "reviews": "order_id", "service": "store_id"}


def data_fingerprint(tables: Mapping[str, pd.DataFrame]) -> dict[str, Any]:
    """A cheap fingerprint of the training tables (no data, no paths).

    For each table: rows, sorted column names, min/max of every timestamp column and
    an order-independent hash of its id column (sum of ``pandas.util.hash_pandas_object``
    values mod 2**64). ``sha256`` hashes all of it.

    Returns
    -------
    dict
        ``{"sha256": hex, "tables": {name: {...}}}``.
    """
    summary: dict[str, Any] = {}
    for name in sorted(tables):
        df = tables[name]
        entry: dict[str, Any] = {"rows": int(len(df)), "columns": sorted(str(c) for c in df.columns)}
        spans = {}
        for c in df.columns:
            if pd.api.types.is_datetime64_any_dtype(df[c]):
                col = df[c]
                spans[str(c)] = [_jsonable(col.min()), _jsonable(col.max())]
        entry["time_spans"] = spans
        id_col = _ID_COLUMNS.get(name)
        if id_col in df.columns:
            h = pd.util.hash_pandas_object(df[id_col], index=False).to_numpy(dtype=np.uint64)
            entry["id_hash"] = f"{int(h.sum(dtype=np.uint64)):016x}"
        summary[name] = entry
    return {"sha256": _sha256(_canonical(summary)), "tables": summary}


def _params_json(params: Mapping[str, Any]) -> dict[str, Any]:
    """Estimator parameters as JSON; a value that is not JSON data (e.g. a RandomState) becomes its repr."""
    out = {}
    for k, v in params.items():
        try:
            out[k] = _jsonable(v, f"params.{k}")
        except ModelError:
            out[k] = repr(v)
    return out


def build_meta(
    classifier: RefundAbuseClassifier,
    *,
    trained_at: str | date | datetime,
    calibration: Mapping[str, Any] | None,
    thresholds: Mapping[str, Any],
    validation_curve: Mapping[str, Any] | None = None,
    drift: Mapping[str, Any] | None = None,
    gated_share: float | None = None,
    windows: Mapping[str, Any] | None = None,
    score_config: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    data_fingerprint: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble ``meta.json`` content from a fitted classifier and the training results.

    The classifier gives ``features``, ``monotone_constraints``, ``classes`` and
    ``params``; ``versions`` and ``format_version`` are filled in; the rest is
    passed through (see the field table in the module docstring). ``model_version``
    is added by :func:`save_model`.
    """
    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "trained_at": trained_at.isoformat() if isinstance(trained_at, (date, datetime)) else str(trained_at),
        "features": classifier.feature_spec(),
        "monotone_constraints": {k: int(v) for k, v in classifier.monotone_constraints_.items()},
        "classes": _jsonable(classifier.classes_),
        "params": _params_json(classifier.get_params()),
        "calibration": None if calibration is None else dict(calibration),
        "thresholds": dict(thresholds),
        "validation_curve": None if validation_curve is None else dict(validation_curve),
        "drift": None if drift is None else dict(drift),
        "gated_share": gated_share,
        "windows": None if windows is None else dict(windows),
        "score_config": None if score_config is None else dict(score_config),
        "metrics": None if metrics is None else dict(metrics),
        "versions": library_versions(),
        "data_fingerprint": None if data_fingerprint is None else dict(data_fingerprint),
    }
    for k, v in (extra or {}).items():
        if k in meta:
            raise ModelError(f"build_meta: extra key {k!r} would overwrite a standard field.", problem="meta_field")
        meta[k] = v
    return _jsonable(meta)
