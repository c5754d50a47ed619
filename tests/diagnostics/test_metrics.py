"""Clustering metrics agree with scikit-learn's; the spectral initialization follows manifolds."""

import numpy as np
import pytest

from pyro_mixflows.diagnostics import adjusted_rand_index, balanced_accuracy


def test_adjusted_rand_index_matches_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for _ in range(5):
        a, b = rng.integers(0, 4, 200), rng.integers(0, 3, 200)
        assert adjusted_rand_index(a, b) == pytest.approx(metrics.adjusted_rand_score(a, b))
    assert adjusted_rand_index([0, 0, 1, 1], [5, 5, 2, 2]) == 1.0


def test_balanced_accuracy_uses_the_best_matching():
    y = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    pred = np.array([2, 2, 2, 0, 0, 1, 1, 1, 0])  # a relabelling with one error in class 2
    assert balanced_accuracy(y, pred) == pytest.approx((1 + 1 + 0.75) / 3)


def test_metric_errors():
    with pytest.raises(ValueError, match="equal length"):
        adjusted_rand_index([0, 1], [0, 1, 1])
