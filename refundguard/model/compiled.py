"""The batch model stage compiled to native code (the ``fast`` extra's lleaves), bit for bit LightGBM.

One job: :class:`CompiledForest` gives the abuse probabilities of many encoded rows
from a LightGBM model compiled once by lleaves and cached in the user cache folder
(DESIGN.md section 5), and guarantees they are the very floats ``Booster.predict``
returns, or it is not used:

- the trees are compiled as one block (``fblocksize`` = the number of trees), so each
  row's raw score adds the trees in LightGBM's order, starting from 0.0;
- the sigmoid is applied per row with :func:`math.exp` (the C library's ``exp``, the
  one LightGBM's ``std::exp`` calls; NumPy's vectorised ``exp`` differs in the last
  bit on about 2% of rows);
- before first use, probe rows (random values, NaN, and every split threshold of the
  model with its neighbouring floats) must give the same raw scores and
  probabilities as LightGBM, bit for bit; otherwise the model stays on LightGBM and a
  warning says why.

The cache key is the model text's SHA-256, the lleaves and llvmlite versions and the
CPU's name and features; a cached binary is written under a temporary name and
renamed, and a cached binary that fails the probe is deleted and compiled again.
Never in the model folder.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CompiledForest", "compiled_cache_dir", "lleaves_available"]

#: Environment variable naming the cache folder (default: ``$XDG_CACHE_HOME/refundguard``
#: or ``~/.cache/refundguard``).
CACHE_ENV = "REFUNDGUARD_CACHE_DIR"
_PROBE_ROWS = 2048
_LOCK = threading.Lock()


def lleaves_available() -> bool:
    """Whether the ``fast`` extra (lleaves with llvmlite) is installed."""
    try:
        import lleaves  # noqa: F401
        import llvmlite.binding  # noqa: F401
    except ImportError:
        return False
    return True


def compiled_cache_dir() -> Path:
    """The folder compiled models are cached in (:data:`CACHE_ENV`, else the user cache folder)."""
    own = os.environ.get(CACHE_ENV)
    if own:
        return Path(own)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "refundguard"


def _sigmoid_of(objective: str) -> float | None:
    """The sigmoid parameter of a ``binary`` objective string (``"binary sigmoid:1"``), else None."""
    parts = objective.split()
    if not parts or parts[0] != "binary":
        return None
    for p in parts[1:]:
        if p.startswith("sigmoid:"):
            return float(p.split(":", 1)[1])
    return 1.0


def _probe_matrix(dump: dict[str, Any], n_features: int) -> np.ndarray:
    """Rows that reach every split's both sides: random values and NaN, then each feature's
    thresholds and their neighbouring floats (all features at once, shuffled per row)."""
    rng = np.random.default_rng(20261128)
    scale = rng.choice([0.01, 1.0, 100.0, 1e5], size=(_PROBE_ROWS, n_features))
    X = rng.normal(size=(_PROBE_ROWS, n_features)) * scale
    X[rng.random(X.shape) < 0.15] = np.nan
    cuts: list[list[float]] = [[] for _ in range(n_features)]
    stack = [t["tree_structure"] for t in dump.get("tree_info", [])]
    while stack:
        node = stack.pop()
        if "split_feature" not in node:
            continue
        j = int(node["split_feature"])
        thr = node.get("threshold")
        if isinstance(thr, (int, float)):
            t = float(thr)
            cuts[j] += [t, float(np.nextafter(t, -np.inf)), float(np.nextafter(t, np.inf))]
        elif isinstance(thr, str):  # categorical: "1||4||7"
            cuts[j] += [float(c) for c in thr.split("||") if c.strip().lstrip("-").isdigit()]
        stack += [node["left_child"], node["right_child"]]
    at = np.empty((_PROBE_ROWS, n_features))
    for j in range(n_features):
        values = np.asarray(cuts[j] + [0.0, -1.0, 1.0, np.nan], dtype=np.float64)
        at[:, j] = values[rng.integers(0, len(values), size=_PROBE_ROWS)]
    return np.ascontiguousarray(np.vstack([X, at, np.round(np.abs(X) % 7)]))


class CompiledForest:
    """A LightGBM binary model compiled by lleaves: probabilities equal to ``Booster.predict``.

    Use :meth:`load`, which returns ``None`` when lleaves is not installed, the
    objective is not ``binary``, or the compiled model does not reproduce LightGBM bit
    for bit on the probe rows (module docstring).

    Parameters
    ----------
    forest
        The compiled ``lleaves.Model`` (``raw_score=True``).
    sigmoid
        The binary objective's sigmoid parameter.
    path
        The cached binary it was loaded from.
    """

    def __init__(self, forest: Any, sigmoid: float, path: Path) -> None:
        self._forest = forest
        self.sigmoid = float(sigmoid)
        self.path = path

    @classmethod
    def load(cls, booster: Any, model_text: str | None = None, *, cache_dir: str | Path | None = None,
             compile: bool = True) -> CompiledForest | None:
        """The compiled model of ``booster`` (compiled once and cached), or ``None`` (see the class).

        Parameters
        ----------
        booster
            The LightGBM booster.
        model_text
            Its model text (``model.txt``), if at hand (else ``booster.model_to_string()``).
        cache_dir
            Where compiled models are cached (default :func:`compiled_cache_dir`).
        compile
            Compile the model when the cache does not hold it (``False``: ``None`` then).
        """
        if not lleaves_available():
            return None
        dump = booster.dump_model()
        sigmoid = _sigmoid_of(str(dump.get("objective", "")))
        if sigmoid is None or dump.get("average_output") or int(dump.get("num_tree_per_iteration", 1)) != 1:
            return None
        from importlib.metadata import version

        import lleaves
        import llvmlite.binding as llvm

        text = model_text if model_text is not None else booster.model_to_string()
        n_trees = int(booster.num_trees())
        key = hashlib.sha256("\n".join([
            hashlib.sha256(text.encode()).hexdigest(), f"lleaves {version('lleaves')}",
            f"llvmlite {version('llvmlite')}", llvm.get_host_cpu_name(), llvm.get_host_cpu_features().flatten(),
            f"fblocksize {n_trees}",
        ]).encode()).hexdigest()[:32]
        folder = Path(cache_dir) if cache_dir is not None else compiled_cache_dir()
        path = folder / f"lleaves-{key}.so"
        if not compile and not _intact(path):
            return None
        probe = _probe_matrix(dump, int(booster.num_feature()))
        want_raw = booster.predict(probe, raw_score=True, num_threads=1)
        want_p = booster.predict(probe, num_threads=1)
        with _LOCK, tempfile.TemporaryDirectory(prefix="refundguard-lleaves-") as tmp:
            model_file = Path(tmp) / "model.txt"
            model_file.write_text(text, encoding="utf-8")
            for attempt in range(2):
                forest = lleaves.Model(model_file=str(model_file))
                if _intact(path):  # (LLVM aborts the process on a damaged object file: never load one)
                    forest.compile(cache=str(path), raw_score=True, fblocksize=n_trees)
                elif not compile:
                    return None
                else:
                    _remove(path)
                    part = folder / f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp"
                    try:
                        folder.mkdir(parents=True, exist_ok=True)
                        part.touch()
                        part.unlink()
                    except OSError:  # no writable cache folder: compile for this process only
                        part = Path()
                    try:
                        forest.compile(cache=str(part) if part.name else None, raw_score=True, fblocksize=n_trees)
                        if part.name:
                            _publish(part, path)
                    finally:
                        if part.name:
                            part.unlink(missing_ok=True)
                got = cls(forest, sigmoid, path)
                if np.array_equal(got.raw(probe), want_raw, equal_nan=True) and np.array_equal(
                        got.predict(probe), want_p, equal_nan=True):
                    return got
                _remove(path)  # a stale or foreign binary: compile once more
                if attempt or not compile:
                    warnings.warn("The lleaves-compiled model does not reproduce LightGBM bit for bit; "
                                  "the model stage stays on LightGBM.", RuntimeWarning, stacklevel=2)
        return None

    def raw(self, X: np.ndarray, *, n_jobs: int = 1) -> np.ndarray:
        """Raw scores (log-odds), bit for bit ``Booster.predict(X, raw_score=True)``."""
        X = np.ascontiguousarray(X, dtype=np.float64)
        if not len(X):
            return np.zeros(0)
        return np.asarray(self._forest.predict(X, n_jobs=max(1, int(n_jobs))), dtype=np.float64)

    def predict(self, X: np.ndarray, *, n_jobs: int = 1) -> np.ndarray:
        """Probabilities, bit for bit ``Booster.predict(X)``."""
        s = -self.sigmoid
        return np.fromiter((_sigmoid(s * x) for x in self.raw(X, n_jobs=n_jobs).tolist()), dtype=np.float64,
                           count=len(X))


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _intact(path: Path) -> bool:
    """Whether a cached binary exists and matches the SHA-256 written beside it."""
    try:
        return path.with_suffix(".sha256").read_text(encoding="ascii").strip() == _digest(path)
    except OSError:
        return False


def _publish(part: Path, path: Path) -> None:
    """Move a freshly compiled binary into the cache: the binary, then its SHA-256 (each by rename)."""
    side = path.with_suffix(".sha256")
    tmp = side.with_name(f".{side.name}.{part.name}")
    tmp.write_text(_digest(part), encoding="ascii")
    os.replace(part, path)
    os.replace(tmp, side)


def _remove(path: Path) -> None:
    for p in (path.with_suffix(".sha256"), path):
        try:
            p.unlink(missing_ok=True)
        except OSError:  # (not a folder, or not ours to delete: nothing cached to remove)
            pass


def _sigmoid(v: float) -> float:
    """``1 / (1 + exp(v))`` as LightGBM's C++ computes it (``exp`` overflowing to inf gives 0.0)."""
    try:
        return 1.0 / (1.0 + math.exp(v))
    except OverflowError:
        return 0.0
