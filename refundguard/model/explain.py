"""Per-feature explanations of one score: path attributions and the reasons built from them.

One job: :class:`PathExplainer` splits a raw score (log-odds) into per-feature
contributions along each tree's decision path, and
:func:`reasons_from_contributions` turns contributions into the reason dicts that
decisions carry. ``RefundGuard.assess`` and
:meth:`RefundAbuseClassifier.top_contributions` both use them, so analysts and
production see the same reasons.
"""

from __future__ import annotations

from typing import Any

import lightgbm as lgb
import numpy as np

from refundguard.model.encoder import FeatureEncoder

__all__ = ["PathExplainer", "reasons_from_contributions"]


def reasons_from_contributions(
    encoder: FeatureEncoder, row: np.ndarray, contributions: np.ndarray, *, k: int = 3
) -> list[dict[str, Any]]:
    """Turn per-feature contributions (log-odds) into up to ``k`` reason dicts.

    Parameters
    ----------
    encoder
        Used to decode category codes back to levels.
    row
        The encoded row.
    contributions
        One contribution per feature (without the bias term).
    k
        Maximum number of reasons; only positive contributions count.

    Returns
    -------
    list of dict
        ``{text, feature, value, contribution}``, largest first; ties broken by feature order.
    """
    order = np.argsort(-contributions, kind="stable")[: max(int(k), 0)]
    out: list[dict[str, Any]] = []
    for j in order:
        c = float(contributions[j])
        if not c > 0:
            break
        name = encoder.features[j]
        value = encoder.decode_value(name, float(row[j]))
        shown = "missing" if value is None else (f"{value:.4g}" if isinstance(value, float) else str(value))
        out.append(
            {
                "text": f"{name} = {shown} raises the abuse risk (+{c:.3f} log-odds)",
                "feature": name,
                "value": value,
                "contribution": c,
            }
        )
    return out


class PathExplainer:
    """Per-feature contributions of a tree ensemble along each tree's decision path.

    For every tree, the change in the node output at each split on the way from the
    root to the row's leaf is credited to the split's feature (Saabas' path
    attribution). Contributions are in log-odds, like LightGBM's SHAP values, and
    sum exactly to the raw score minus :attr:`bias` (the sum of the root outputs).
    The per-leaf contribution vectors are tabulated once from ``dump_model()``, so
    one row costs a ``pred_leaf`` call plus a gather-sum: about 30 us against 1.5 ms
    for ``pred_contrib=True`` (TreeSHAP) on a 200-tree model, which keeps reasons
    inside the online latency budget. Online and batch use this same table.

    Parameters
    ----------
    booster
        The fitted LightGBM booster.
    """

    def __init__(self, booster: lgb.Booster) -> None:
        self._booster = booster
        n_features = int(booster.num_feature())
        tables: list[np.ndarray] = []
        roots: list[float] = []
        for tree in booster.dump_model()["tree_info"]:
            table = np.zeros((int(tree["num_leaves"]), n_features))
            root = tree["tree_structure"]
            roots.append(float(root.get("internal_value", root.get("leaf_value", 0.0))))
            stack: list[tuple[dict[str, Any], np.ndarray]] = [(root, np.zeros(n_features))]
            while stack:
                node, acc = stack.pop()
                if "leaf_index" in node or "split_feature" not in node:
                    table[int(node.get("leaf_index", 0))] = acc
                    continue
                here = float(node["internal_value"])
                for child in (node["left_child"], node["right_child"]):
                    value = float(child["internal_value"] if "split_feature" in child else child["leaf_value"])
                    step = acc.copy()
                    step[int(node["split_feature"])] += value - here
                    stack.append((child, step))
            tables.append(table)
        sizes = np.array([len(t) for t in tables], dtype=np.int64)
        self.table_ = np.vstack(tables) if tables else np.zeros((0, n_features))
        self.offsets_ = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        self.bias = float(sum(roots))

    def contributions(self, X: np.ndarray) -> np.ndarray:
        """Contributions of encoded rows, shape ``(n_rows, n_features)``."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim == 1:
            X = X.reshape(1, -1)
        out = np.zeros((len(X), self.table_.shape[1]))
        if not len(X) or not len(self.offsets_):
            return out
        leaves = np.asarray(self._booster.predict(X, pred_leaf=True, num_threads=1 if len(X) == 1 else 0),
                            dtype=np.int64).reshape(len(X), -1)
        idx = leaves + self.offsets_[None, :]
        for t in range(idx.shape[1]):
            out += self.table_[idx[:, t]]
        return out

    def contributions_one(self, row: np.ndarray) -> np.ndarray:
        """Contributions of one encoded row (online path: one thread)."""
        leaves = np.asarray(
            self._booster.predict(np.asarray(row, dtype=np.float64).reshape(1, -1), pred_leaf=True, num_threads=1),
            dtype=np.int64,
        ).reshape(-1)
        return self.table_[leaves + self.offsets_].sum(axis=0)

