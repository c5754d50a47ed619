"""Data generators: shapes, labels, reproducibility, and the closed-form density of 8 Gaussians."""

import numpy as np
import pytest

from pyro_mixflows import datasets

CASES = {name: fn for name, fn in datasets.DATASETS.items()}
NUM_CLASSES = {
    "two_moons": 2,
    "pinwheel": 5,
    "two_circles": 2,
    "eight_gaussians": 8,
    "checkerboard": 8,
    "two_spirals": 2,
    "rings": 4,
}


@pytest.mark.parametrize("name", CASES)
def test_shapes_labels_and_seeds(name):
    X, y = datasets.make(name, 101, seed=3)
    assert X.shape == (101, 2) and X.dtype == np.float64
    assert y.shape == (101,) and y.dtype == np.int64
    assert set(np.unique(y)) <= set(range(NUM_CLASSES[name]))
    X2, y2 = datasets.make(name, 101, seed=3)
    assert np.array_equal(X, X2) and np.array_equal(y, y2)
    X3, _ = datasets.make(name, 101, seed=4)
    assert not np.array_equal(X, X3)


def test_circles_have_the_requested_radii():
    X, y = datasets.make_two_circles(4000, radii=(1.0, 0.5), noise=0.0, seed=0)
    r = np.linalg.norm(X, axis=1)
    assert np.allclose(r[y == 0], 1.0) and np.allclose(r[y == 1], 0.5)


def test_eight_gaussians_log_prob_normalizes():
    g = np.linspace(-7, 7, 701)
    pts = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    mass = np.exp(datasets.eight_gaussians_log_prob(pts)).sum() * (g[1] - g[0]) ** 2
    assert mass == pytest.approx(1.0, abs=1e-3)


def test_digits_subset_and_binarize():
    X, y = datasets.load_digits(range(5), binarize=True)
    assert X.shape[1] == 64 and set(np.unique(y)) == set(range(5))
    assert set(np.unique(X)) <= {0.0, 1.0}


def test_errors():
    with pytest.raises(ValueError, match="expected a data set in"):
        datasets.make("swiss_roll", 10)
    with pytest.raises(ValueError, match="expected n >= 8"):
        datasets.make_eight_gaussians(3)
