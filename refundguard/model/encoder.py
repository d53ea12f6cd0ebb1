"""The model's input encoder: DataFrame (batch) or dict (one request) to a float64 matrix.

One job: :class:`FeatureEncoder` builds the model input **from the stored feature
list and category levels**. It never re-infers category codes (a batch missing one
level would otherwise shift every code, DESIGN.md section 9) and never trusts
column order. Training, batch scoring and the online path all encode through it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from refundguard.errors import ConfigError, RequestError, SchemaError

__all__ = ["FeatureEncoder"]


def _python_scalar(value: Any) -> Any:
    """Turn a numpy scalar into the equivalent Python scalar (JSON friendly)."""
    return value.item() if isinstance(value, np.generic) else value


class FeatureEncoder:
    """Map model input to a float64 matrix in the stored feature order.

    Parameters
    ----------
    features
        Feature names in model (booster) order.
    categories
        For each categorical feature, its levels as seen at fit time; level ``i``
        is encoded as the float ``i``. Missing values and levels not in the list
        become NaN, which LightGBM sends down the "other" branch.

    Notes
    -----
    Columns are looked up by name, so their order in the input never matters;
    extra columns are ignored; missing columns raise :class:`SchemaError` (batch)
    or :class:`RequestError` (one row) naming them.
    """

    def __init__(self, features: Sequence[str], categories: Mapping[str, Sequence[Any]] | None = None) -> None:
        self.features: tuple[str, ...] = tuple(str(f) for f in features)
        cats = dict(categories or {})
        unknown = sorted(set(cats) - set(self.features))
        if unknown:
            raise ConfigError(
                f"The 'categories' of FeatureEncoder name features that are not in the feature list: {unknown}.",
                owner="FeatureEncoder",
                field="categories",
                value=unknown,
            )
        self.categories: dict[str, list[Any]] = {f: [_python_scalar(v) for v in cats[f]] for f in self.features if f in cats}
        self._index = {f: pd.Index(levels) for f, levels in self.categories.items()}
        # Plain dict lookups for the single-row path.
        self._plan: list[tuple[str, dict[Any, float] | None]] = [
            (f, {lvl: float(i) for i, lvl in enumerate(self.categories[f])} if f in self.categories else None)
            for f in self.features
        ]

    @property
    def n_features(self) -> int:
        """Number of features."""
        return len(self.features)

    def is_categorical(self, feature: str) -> bool:
        """Whether ``feature`` is categorical."""
        return feature in self.categories

    def transform(self, X: pd.DataFrame) -> tuple[np.ndarray, dict[str, int]]:
        """Encode a DataFrame (batch path).

        Parameters
        ----------
        X
            One row per request with (at least) every feature as a column.

        Returns
        -------
        matrix : ndarray of shape (n_rows, n_features), float64, C order
        unseen : dict
            Feature -> number of non-missing values whose level was not seen at fit
            (only features with at least one).

        Raises
        ------
        SchemaError
            If columns are missing, or a numeric column holds non-numeric values.
        """
        if not isinstance(X, pd.DataFrame):
            raise SchemaError(f"FeatureEncoder.transform expects a pandas DataFrame; got {type(X).__name__}.")
        missing = [f for f in self.features if f not in X.columns]
        if missing:
            raise SchemaError(
                f"The model input is missing {len(missing)} feature column(s): {missing}.",
                column=missing[0],
                rule="required",
                n_bad=len(missing),
                values=missing,
            )
        out = np.empty((len(X), len(self.features)), dtype=np.float64)
        unseen: dict[str, int] = {}
        for j, name in enumerate(self.features):
            col = X[name]
            if isinstance(col, pd.DataFrame):
                raise SchemaError(f"The model input has duplicate column {name!r}.", column=name, rule="unique")
            if name in self.categories:
                codes, n_unseen = self._encode_categorical(name, col)
                out[:, j] = codes
                if n_unseen:
                    unseen[name] = n_unseen
            else:
                out[:, j] = self._encode_numeric(name, col)
        return out, unseen

    def _encode_categorical(self, name: str, col: pd.Series) -> tuple[np.ndarray, int]:
        index = self._index[name]
        # Map each distinct batch value once (via the batch's own categories or factorize),
        # then gather by row code: the stored levels decide every code, the batch's never do.
        if isinstance(col.dtype, pd.CategoricalDtype):
            batch_levels = col.cat.categories
            raw = col.cat.codes.to_numpy()
        else:
            raw, batch_levels = pd.factorize(col, use_na_sentinel=True)
        level_map = index.get_indexer(batch_levels).astype(np.float64)
        level_map[level_map < 0] = np.nan
        present = raw >= 0
        codes = np.full(raw.shape[0], np.nan)
        if level_map.size:
            codes[present] = level_map[raw[present]]
        n_unseen = int(np.count_nonzero(present & np.isnan(codes)))
        return codes, n_unseen

    @staticmethod
    def _encode_numeric(name: str, col: pd.Series) -> np.ndarray:
        try:
            return col.to_numpy(dtype=np.float64, na_value=np.nan)
        except (TypeError, ValueError) as exc:
            numeric = pd.to_numeric(col, errors="coerce")
            bad = col[numeric.isna() & col.notna()]
            raise SchemaError(
                f"Feature column {name!r} must be numeric; {len(bad)} value(s) are not, e.g. {bad.head(3).tolist()}.",
                column=name,
                rule="type",
                n_bad=len(bad),
                values=bad.head(5).tolist(),
            ) from exc

    def encode_row(self, row: Mapping[str, Any], *, unseen: list[str] | None = None) -> np.ndarray:
        """Encode one request (online path, plain Python, no pandas).

        Parameters
        ----------
        row
            Feature name -> value. ``None`` or NaN means missing.
        unseen
            If a list is given, the names of categorical features whose (non-missing)
            level was not seen at fit time are appended to it.

        Returns
        -------
        ndarray of shape (n_features,), float64

        Raises
        ------
        RequestError
            If a feature is absent from ``row`` or a numeric value is not a number.
        """
        out = np.empty(len(self._plan), dtype=np.float64)
        for j, (name, lookup) in enumerate(self._plan):
            try:
                value = row[name]
            except KeyError:
                raise RequestError(f"The request has no feature {name!r}.", field=name) from None
            if value is None:
                out[j] = math.nan
            elif lookup is not None:
                try:
                    code = lookup.get(value)
                except TypeError:
                    raise RequestError(
                        f"Feature {name!r} must be a category level (str); got {value!r}.", field=name, value=value
                    ) from None
                if code is None:
                    out[j] = math.nan
                    if unseen is not None and value == value:  # NaN is missing, not unseen
                        unseen.append(name)
                else:
                    out[j] = code
            else:
                try:
                    out[j] = float(value)
                except (TypeError, ValueError):
                    raise RequestError(
                        f"Feature {name!r} must be a number; got {value!r}.", field=name, value=value
                    ) from None
        return out

    def decode_value(self, feature: str, encoded: float) -> Any:
        """The original value of one encoded cell (the level for categoricals, None for missing)."""
        if encoded != encoded:
            return None
        levels = self.categories.get(feature)
        if levels is None:
            return float(encoded)
        return levels[int(encoded)]

