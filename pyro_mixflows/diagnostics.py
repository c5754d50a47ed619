"""Clustering metrics (NumPy only; Hungarian matching through SciPy, which ArviZ requires)."""

from __future__ import annotations

import numpy as np


def _labels(a, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 1:
        raise ValueError(f"expected {name} of shape (N,), got {a.shape}")
    return a


def contingency_table(labels_true, labels_pred) -> np.ndarray:
    """Counts n[i, j] of points with true class i and predicted cluster j."""
    t, p = _labels(labels_true, "labels_true"), _labels(labels_pred, "labels_pred")
    if t.shape != p.shape:
        raise ValueError(f"expected label arrays of equal length, got {t.shape} and {p.shape}")
    _, ti = np.unique(t, return_inverse=True)
    _, pi = np.unique(p, return_inverse=True)
    table = np.zeros((ti.max(initial=-1) + 1, pi.max(initial=-1) + 1), dtype=np.int64)
    np.add.at(table, (ti, pi), 1)
    return table


def adjusted_rand_index(labels_true, labels_pred) -> float:
    """Adjusted Rand index (Hubert & Arabie, 1985): 1 for identical partitions, ~0 for chance."""
    table = contingency_table(labels_true, labels_pred)
    n = table.sum()

    def pairs(v):
        v = np.asarray(v, dtype=np.float64)
        return (v * (v - 1) / 2).sum()

    index = pairs(table)
    a, b, total = pairs(table.sum(1)), pairs(table.sum(0)), n * (n - 1) / 2
    expected = a * b / total if total else 0.0
    maximum = (a + b) / 2
    if maximum == expected:
        return 1.0
    return float((index - expected) / (maximum - expected))


def balanced_accuracy(labels_true, labels_pred) -> float:
    """Mean per-class recall after matching clusters to classes (Hungarian algorithm)."""
    from scipy.optimize import linear_sum_assignment

    table = contingency_table(labels_true, labels_pred).astype(np.float64)
    recall = table / table.sum(1, keepdims=True)  # (classes, clusters)
    rows, cols = linear_sum_assignment(-recall)
    return float(recall[rows, cols].sum() / table.shape[0])
