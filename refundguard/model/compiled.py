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

It also gives the leaf index of every tree, which the reasons read
(:meth:`CompiledForest.leaves`, from a second compiled forest; see the class), checked
the same way.

The cache key is the model text's SHA-256, the lleaves and llvmlite versions and the
CPU's name and features. A cached binary is written under a temporary name and
renamed, with its SHA-256 beside it; one whose checksum does not match is never
loaded (LLVM aborts the process on a damaged object file), and one that fails the
probe is deleted; either is compiled again. Never in the model folder.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
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

    A second compiled forest gives the leaf index of every tree (what
    ``Booster.predict(pred_leaf=True)`` returns, for the reasons): the model's trees
    become the classes of a multiclass forest, a few trees per class, whose leaf values
    encode the leaf indices in separate bits of an integer. The sum of a class is that
    integer whatever the order of addition (every partial sum is an integer below
    2**53, exact in float64), so the indices decode exactly; they too are checked
    against LightGBM on the probe rows, and :meth:`leaves` falls back to LightGBM
    when they are not the same.

    Parameters
    ----------
    forest
        The compiled ``lleaves.Model`` (``raw_score=True``).
    sigmoid
        The binary objective's sigmoid parameter.
    path
        The cached binary it was loaded from.
    booster
        The LightGBM booster (the leaf indices' fallback).
    """

    def __init__(self, forest: Any, sigmoid: float, path: Path, booster: Any = None) -> None:
        self._forest = forest
        self.sigmoid = float(sigmoid)
        self.path = path
        self._booster = booster
        self._leaf_forest: Any = None
        self._leaf_code: tuple[int, int, int] = (0, 0, 0)  # bits per tree, trees per class, classes

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
        text = model_text if model_text is not None else booster.model_to_string()
        n_trees = int(booster.num_trees())
        folder = Path(cache_dir) if cache_dir is not None else compiled_cache_dir()
        path = folder / f"lleaves-{_cache_key(text, f'fblocksize {n_trees}')}.so"
        leaf_text, leaf_code = _leaf_index_model(text)
        leaf_path = folder / f"lleaves-{_cache_key(leaf_text, 'leaf indices')}.so"
        if not compile and not (_intact(path) and _intact(leaf_path)):
            return None
        probe = _probe_matrix(dump, int(booster.num_feature()))
        want_raw = booster.predict(probe, raw_score=True, num_threads=1)
        want_p = booster.predict(probe, num_threads=1)
        with _LOCK:
            for attempt in range(2):
                try:
                    forest = _compiled(text, path, compile, fblocksize=n_trees)
                except Exception as exc:  # noqa: BLE001 - lleaves cannot compile this model: stay on LightGBM
                    warnings.warn(f"lleaves could not compile the model ({exc}); the model stage stays on "
                                  "LightGBM.", RuntimeWarning, stacklevel=2)
                    return None
                if forest is None:
                    return None
                got = cls(forest, sigmoid, path, booster)
                if np.array_equal(got.raw(probe), want_raw) and np.array_equal(got.predict(probe), want_p):
                    break
                _remove(path)  # a stale or foreign binary: compile once more
                if attempt or not compile:
                    warnings.warn("The lleaves-compiled model does not reproduce LightGBM bit for bit; "
                                  "the model stage stays on LightGBM.", RuntimeWarning, stacklevel=2)
                    return None
            want_leaves = np.asarray(booster.predict(probe, pred_leaf=True, num_threads=1), dtype=np.int64)
            for _ in range(2):
                try:
                    got._leaf_forest = _compiled(leaf_text, leaf_path, compile)
                except Exception:  # noqa: BLE001 - the leaf indices then come from LightGBM
                    got._leaf_forest = None
                    break
                got._leaf_code = leaf_code
                if got._leaf_forest is None or np.array_equal(got.leaves(probe), want_leaves):
                    break
                got._leaf_forest = None
                _remove(leaf_path)
        return got

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

    @property
    def compiled_leaves(self) -> bool:
        """Whether :meth:`leaves` runs compiled (else it calls LightGBM)."""
        return self._leaf_forest is not None

    def leaves(self, X: np.ndarray, *, n_jobs: int = 1) -> np.ndarray:
        """Leaf index of every row in every tree, int64 ``(n_rows, n_trees)``: ``Booster.predict(X, pred_leaf=True)``."""
        X = np.ascontiguousarray(X, dtype=np.float64)
        if self._leaf_forest is None:
            return np.asarray(self._booster.predict(X, pred_leaf=True, num_threads=max(1, int(n_jobs))),
                              dtype=np.int64).reshape(len(X), -1)
        bits, per, classes = self._leaf_code
        out = np.empty((len(X), per * classes), dtype=np.int64)
        if not len(X):
            return out
        codes = np.asarray(self._leaf_forest.predict(X, n_jobs=max(1, int(n_jobs))), dtype=np.float64)
        codes = codes.reshape(len(X), classes).astype(np.int64)
        mask = (1 << bits) - 1
        tree = np.arange(classes) * per
        for k in range(per):
            out[:, tree + k] = (codes >> (bits * k)) & mask
        return out


def _cache_key(text: str, variant: str) -> str:
    """A cached binary's key: the model text, the compiler's versions, the CPU and the variant."""
    from importlib.metadata import version

    import llvmlite.binding as llvm

    return hashlib.sha256("\n".join([
        hashlib.sha256(text.encode()).hexdigest(), f"lleaves {version('lleaves')}",
        f"llvmlite {version('llvmlite')}", llvm.get_host_cpu_name(), llvm.get_host_cpu_features().flatten(), variant,
    ]).encode()).hexdigest()[:32]


def _compiled(text: str, path: Path, compile: bool, fblocksize: int | None = None) -> Any:
    """The lleaves model of ``text`` (``raw_score=True``), loaded from ``path`` when intact, else compiled
    and cached there (``None`` when it is not cached and ``compile`` is false)."""
    import lleaves

    options: dict[str, Any] = {"raw_score": True}
    if fblocksize is not None:
        options["fblocksize"] = fblocksize
    with tempfile.TemporaryDirectory(prefix="refundguard-lleaves-") as tmp:
        model_file = Path(tmp) / "model.txt"
        model_file.write_text(text, encoding="utf-8")
        forest = lleaves.Model(model_file=str(model_file))
        if _intact(path):  # (LLVM aborts the process on a damaged object file: never load one)
            forest.compile(cache=str(path), **options)
            return forest
        if not compile:
            return None
        _remove(path)
        folder = path.parent
        part = folder / f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            part.touch()
            part.unlink()
        except OSError:  # no writable cache folder: compile for this process only
            forest.compile(cache=None, **options)
            return forest
        try:
            forest.compile(cache=str(part), **options)
            _publish(part, path)
        finally:
            part.unlink(missing_ok=True)
        return forest


def _leaf_index_model(text: str) -> tuple[str, tuple[int, int, int]]:
    """The model text of the leaf-index forest, and its code ``(bits per tree, trees per class, classes)``.

    Tree ``c * per + k`` of the model becomes iteration ``k`` of class ``c``, and its leaf ``l`` gets the
    value ``l * 2**(bits * k)``: class ``c``'s raw score packs the leaf indices of trees ``c * per`` to
    ``c * per + per - 1`` in ``per * bits <= 52`` bits. ``per`` divides the number of trees.
    """
    head, rest = text.split("\nTree=0\n", 1)
    body, tail = rest.split("\nend of trees", 1)
    blocks = ("Tree=0\n" + body).strip("\n").split("\n\n")
    leaves = [int(re.search(r"^num_leaves=(\d+)$", b, re.M).group(1)) for b in blocks]  # type: ignore[union-attr]
    n = len(blocks)
    bits = max(1, (max(leaves) - 1).bit_length())
    per = max(d for d in range(1, n + 1) if n % d == 0 and d * bits <= 52)
    classes = n // per
    out = []
    for k in range(per):
        for c in range(classes):
            i = c * per + k
            values = " ".join(str(leaf << (bits * k)) for leaf in range(leaves[i]))
            b = re.sub(r"^leaf_value=.*$", "leaf_value=" + values, blocks[i], count=1, flags=re.M)
            out.append(re.sub(r"^Tree=\d+$", f"Tree={k * classes + c}", b, count=1, flags=re.M))
    for field, value in (("num_class", str(classes)), ("num_tree_per_iteration", str(classes)),
                         ("objective", f"multiclass num_class:{classes}"),
                         ("tree_sizes", " ".join(str(len(b) + 2) for b in out))):
        head = re.sub(rf"^{field}=.*$", f"{field}={value}", head, count=1, flags=re.M)
    return head + "\n" + "\n\n".join(out) + "\n\n\nend of trees" + tail, (bits, per, classes)


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
