"""Partitions for starts: spectral labels follow curved clusters, the sweep cuts weak links."""

import pytest
import torch

from pyro_mixflows import datasets
from pyro_mixflows.diagnostics import adjusted_rand_index
from pyro_mixflows.starts import initial_labels, spectral_labels, sweep_bisection


@pytest.mark.parametrize("name, K", [("two_circles", 2), ("two_moons", 2)])
def test_spectral_init_follows_the_clusters_where_kmeans_cuts(name, K):
    X, y = datasets.make(name, 400, seed=0)
    x = torch.tensor((X - X.mean(0)) / X.std(0))
    g = torch.Generator().manual_seed(0)
    spectral = initial_labels(x, K, "spectral", generator=g).numpy()
    assert adjusted_rand_index(y, spectral) > 0.95
    if name == "two_circles":
        kmeans = initial_labels(x, K, "kmeans", generator=g).numpy()
        assert adjusted_rand_index(y, kmeans) < 0.2  # k-means splits rings into half-planes


def test_sweep_bisection_cuts_the_weak_link_and_respects_min_size():
    # Two 6-cliques joined by one weak edge, and a tight pair hanging off the first clique by an
    # even weaker edge: cutting the pair off alone has the least normalized cut.
    W = torch.zeros(14, 14, dtype=torch.float64)
    W[:6, :6] = 1.0
    W[6:12, 6:12] = 1.0
    W[12:, 12:] = 1.0
    W[5, 6] = W[6, 5] = 0.05
    W[0, 12] = W[12, 0] = 1e-4
    W.fill_diagonal_(0.0)
    labels = sweep_bisection(W, min_size=3)
    side = labels[[0, 1, 2, 3, 4, 5, 12, 13]]
    assert (side == side[0]).all() and (labels[6:12] == 1 - side[0]).all()
    pair = sweep_bisection(W, min_size=1)
    assert int((pair == pair[12]).sum()) == 2 and pair[13] == pair[12]


@pytest.mark.parametrize("n, seed", [(600, 2), (900, 5)])
def test_two_way_spectral_labels_find_the_moon_tips(n, seed):
    # Draws where k-means on the spectral embedding (the K > 2 path) gave a moon's tip to the
    # other moon: adjusted Rand index 0.80 and 0.75 before the sweep cut.
    X, y = datasets.make("two_moons", n, seed=seed, noise=0.08)
    x = torch.tensor((X - X.mean(0)) / X.std(0))
    labels = spectral_labels(x, 2, generator=torch.Generator().manual_seed(0)).numpy()
    assert adjusted_rand_index(y, labels) > 0.99


def test_unknown_init_is_refused():
    with pytest.raises(ValueError, match="expected init in"):
        initial_labels(torch.zeros(4, 2), 2, "ward")
