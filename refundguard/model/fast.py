"""The single-row fast path: one encoded row through LightGBM's fast single-row C API.

One job: :class:`FastRowPredictor` gives the abuse probability of one encoded row
on one thread, with a per-thread LightGBM ``FastConfig``, falling back to
``Booster.predict`` when the C API is unavailable or disagrees on a probe row.
"""

from __future__ import annotations

from typing import Any

import lightgbm as lgb
import numpy as np

from refundguard.errors import RequestError

__all__ = ["FastRowPredictor"]


def _fast_api() -> Any | None:
    """LightGBM's C library if it has the fast single-row API, else None.

    ``lightgbm.basic._LIB`` and ``Booster._handle`` are private Python API (the C
    functions themselves are LightGBM's public C API), hence the feature check.
    """
    try:
        from lightgbm.basic import _LIB
    except ImportError:  # pragma: no cover - very old or very new lightgbm
        return None
    needed = ("LGBM_BoosterPredictForMatSingleRowFastInit", "LGBM_BoosterPredictForMatSingleRowFast", "LGBM_FastConfigFree")
    return _LIB if all(hasattr(_LIB, n) for n in needed) else None


class FastRowPredictor:
    """Probability of one encoded row through LightGBM's fast single-row C API.

    One ``FastConfig`` (``num_threads=1``) is created per thread, since LightGBM's
    fast config is not thread-safe. When the API is unavailable, or a probe row
    disagrees with ``booster.predict``, it falls back to
    ``booster.predict(row, num_threads=1)`` (check :attr:`fast`).

    Parameters
    ----------
    booster
        The model; it is kept alive as long as this object.
    """

    def __init__(self, booster: lgb.Booster) -> None:
        import ctypes
        import threading

        self._ctypes = ctypes
        self._booster = booster
        self._n = int(booster.num_feature())
        self._local = threading.local()
        self._lock = threading.Lock()
        self._configs: list[Any] = []
        self._lib = _fast_api()
        self.fast = False
        if self._lib is not None and getattr(booster, "_handle", None) is not None:
            try:
                probe = np.zeros(self._n, dtype=np.float64)
                probe[::2] = np.nan
                for row in (probe, np.ones(self._n)):
                    expected = float(booster.predict(row.reshape(1, -1), num_threads=1)[0])
                    if abs(self._predict_fast(row) - expected) > 1e-12:
                        raise RuntimeError("fast single-row API disagrees with Booster.predict")
                self.fast = True
            except Exception:  # any failure of the private path: use the public one  # noqa: BLE001
                self.fast = False

    def _config(self) -> tuple[Any, Any, Any]:
        state = getattr(self._local, "state", None)
        if state is None:
            ct = self._ctypes
            from lightgbm.basic import _c_str, _safe_call

            handle = ct.c_void_p()
            _safe_call(
                self._lib.LGBM_BoosterPredictForMatSingleRowFastInit(
                    self._booster._handle,
                    ct.c_int(0),  # C_API_PREDICT_NORMAL
                    ct.c_int(0),  # start_iteration
                    ct.c_int(-1),  # all iterations
                    ct.c_int(1),  # C_API_DTYPE_FLOAT64
                    ct.c_int32(self._n),
                    _c_str("num_threads=1"),
                    ct.byref(handle),
                )
            )
            with self._lock:
                self._configs.append(handle)
            state = (handle, ct.c_int64(0), ct.c_double(0.0))
            self._local.state = state
        return state

    def _predict_fast(self, row: np.ndarray) -> float:
        handle, out_len, out = self._config()
        ct = self._ctypes
        rc = self._lib.LGBM_BoosterPredictForMatSingleRowFast(
            handle, ct.c_void_p(row.ctypes.data), ct.byref(out_len), ct.byref(out)
        )
        if rc != 0:
            raise RuntimeError("LGBM_BoosterPredictForMatSingleRowFast failed")
        return out.value

    def predict(self, row: np.ndarray) -> float:
        """Abuse probability of one encoded row (float64, C-contiguous, length n_features)."""
        if row.dtype != np.float64 or row.shape != (self._n,) or not row.flags.c_contiguous:
            row = np.ascontiguousarray(row, dtype=np.float64).reshape(-1)
            if row.shape != (self._n,):
                raise RequestError(f"The encoded row has {row.shape[0]} values; the model expects {self._n}.")
        if self.fast:
            return self._predict_fast(row)
        return float(self._booster.predict(row.reshape(1, -1), num_threads=1)[0])

    def close(self) -> None:
        """Free the C-side configs (also done when the object is garbage-collected)."""
        lib = self._lib
        with self._lock:
            configs, self._configs = self._configs, []
        for handle in configs:
            if lib is not None:
                lib.LGBM_FastConfigFree(handle)
        self._local = __import__("threading").local()

    def __del__(self) -> None:  # pragma: no cover - depends on GC timing
        try:
            self.close()
        except Exception:  # noqa: BLE001 - never raise from a finaliser
            pass

