"""Toy data generators with known clusters, and loaders for data shipped by installed packages.

Every generator returns ``(X, y)``: X a float64 array (N, D), y an int64 array (N,) of true
cluster labels. ``seed`` makes a draw reproducible; train and test sets are separate draws.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def _rng(seed: int | None) -> np.random.Generator:
    return np.random.default_rng(seed)


def _split_counts(n: int, k: int) -> np.ndarray:
    if not isinstance(n, (int, np.integer)) or n < k:
        raise ValueError(f"expected n >= {k} points, got {n!r}")
    counts = np.full(k, n // k)
    counts[: n % k] += 1
    return counts


def _shuffle(X: np.ndarray, y: np.ndarray, rng: np.random.Generator):
    perm = rng.permutation(len(y))
    return X[perm].astype(np.float64), y[perm].astype(np.int64)


def make_two_moons(n: int = 1000, *, noise: float = 0.08, seed: int | None = None):
    """Two interleaved half circles (as scikit-learn's ``make_moons``), Gaussian noise of sd ``noise``."""
    rng = _rng(seed)
    n0, n1 = _split_counts(n, 2)
    t0, t1 = rng.uniform(0, np.pi, n0), rng.uniform(0, np.pi, n1)
    upper = np.stack([np.cos(t0), np.sin(t0)], 1)
    lower = np.stack([1 - np.cos(t1), 0.5 - np.sin(t1)], 1)
    X = np.concatenate([upper, lower]) + noise * rng.standard_normal((n, 2))
    y = np.repeat([0, 1], [n0, n1])
    return _shuffle(X, y, rng)


def make_pinwheel(
    n: int = 1000,
    *,
    num_arms: int = 5,
    radial_std: float = 0.3,
    tangential_std: float = 0.05,
    rate: float = 0.25,
    seed: int | None = None,
):
    """Pinwheel of ``num_arms`` curved arms (the generator of Johnson et al., 2016, arXiv:1603.06277)."""
    rng = _rng(seed)
    y = np.repeat(np.arange(num_arms), _split_counts(n, num_arms))
    feats = rng.standard_normal((n, 2)) * np.array([radial_std, tangential_std])
    feats[:, 0] += 1.0
    angles = 2 * np.pi * y / num_arms + rate * np.exp(feats[:, 0])
    c, s = np.cos(angles), np.sin(angles)
    X = np.stack([feats[:, 0] * c - feats[:, 1] * s, feats[:, 0] * s + feats[:, 1] * c], 1)
    return _shuffle(X, y, rng)


def make_two_circles(
    n: int = 1000, *, radii: tuple[float, float] = (1.0, 0.5), noise: float = 0.05, seed=None
):
    """Two concentric circles of the given radii, Gaussian noise of sd ``noise``."""
    rng = _rng(seed)
    counts = _split_counts(n, 2)
    y = np.repeat([0, 1], counts)
    t = rng.uniform(0, 2 * np.pi, n)
    r = np.asarray(radii)[y]
    X = np.stack([r * np.cos(t), r * np.sin(t)], 1) + noise * rng.standard_normal((n, 2))
    return _shuffle(X, y, rng)


def make_eight_gaussians(n: int = 1000, *, radius: float = 4.0, std: float = 0.35, seed=None):
    """Eight isotropic Gaussians, equally weighted, centred on a circle of ``radius``."""
    rng = _rng(seed)
    y = np.repeat(np.arange(8), _split_counts(n, 8))
    angle = 2 * np.pi * y / 8
    X = radius * np.stack([np.cos(angle), np.sin(angle)], 1) + std * rng.standard_normal((n, 2))
    return _shuffle(X, y, rng)


def eight_gaussians_log_prob(
    x: np.ndarray, *, radius: float = 4.0, std: float = 0.35
) -> np.ndarray:
    """Exact log-density of ``make_eight_gaussians``: (N, 2) -> (N,)."""
    angle = 2 * np.pi * np.arange(8) / 8
    centers = radius * np.stack([np.cos(angle), np.sin(angle)], 1)
    d2 = ((x[:, None, :] - centers) ** 2).sum(-1) / std**2
    log_comp = -0.5 * d2 - np.log(2 * np.pi * std**2) - np.log(8)
    m = log_comp.max(1, keepdims=True)
    return (m + np.log(np.exp(log_comp - m).sum(1, keepdims=True)))[:, 0]


def make_checkerboard(n: int = 1000, *, seed: int | None = None):
    """Uniform on the 8 dark squares of a 4x4 board on [-4, 4]^2; y is the square's index."""
    rng = _rng(seed)
    squares = [(i, j) for i in range(4) for j in range(4) if (i + j) % 2 == 0]
    y = rng.integers(0, len(squares), n)
    corner = np.array(squares, dtype=float)[y] * 2 - 4
    X = corner + rng.uniform(0, 2, (n, 2))
    return _shuffle(X, y, rng)


def make_two_spirals(n: int = 1000, *, noise: float = 0.1, seed: int | None = None):
    """Two interleaved spirals of 1.5 turns each."""
    rng = _rng(seed)
    y = np.repeat([0, 1], _split_counts(n, 2))
    t = np.sqrt(rng.uniform(0, 1, n)) * 3 * np.pi
    sign = np.where(y == 0, 1.0, -1.0)[:, None]
    X = sign * np.stack([t * np.cos(t), t * np.sin(t)], 1) / np.pi
    X = X + noise * rng.standard_normal((n, 2))
    return _shuffle(X, y, rng)


def make_rings(n: int = 1000, *, radii=(1.0, 2.0, 3.0, 4.0), noise: float = 0.08, seed=None):
    """Concentric rings with points in proportion to circumference."""
    rng = _rng(seed)
    radii = np.asarray(radii, dtype=float)
    y = rng.choice(len(radii), size=n, p=radii / radii.sum())
    t = rng.uniform(0, 2 * np.pi, n)
    X = radii[y, None] * np.stack([np.cos(t), np.sin(t)], 1)
    X = X + noise * rng.standard_normal((n, 2))
    return _shuffle(X, y, rng)


def load_digits(classes=None, *, binarize: bool = False):
    """scikit-learn's 8x8 digits (shipped inside scikit-learn: no download).

    Args:
        classes: keep only these digit classes (e.g. ``range(5)``), relabelled 0..C-1 in order.
        binarize: map pixels >= 8 to 1 and the rest to 0.

    Raises:
        ImportError: scikit-learn is missing (install the ``test`` extra).
    """
    try:
        from sklearn.datasets import load_digits as _load
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "load_digits needs scikit-learn: pip install 'pyro-mixflows[test]'"
        ) from err
    data = _load()
    X, y = data.data.astype(np.float64), data.target.astype(np.int64)
    if classes is not None:
        classes = list(classes)
        keep = np.isin(y, classes)
        X, y = X[keep], np.searchsorted(np.array(sorted(classes)), y[keep])
    if binarize:
        X = (X >= 8).astype(np.float64)
    return X, y


DATASETS: dict[str, Callable] = {
    "two_moons": make_two_moons,
    "pinwheel": make_pinwheel,
    "two_circles": make_two_circles,
    "eight_gaussians": make_eight_gaussians,
    "checkerboard": make_checkerboard,
    "two_spirals": make_two_spirals,
    "rings": make_rings,
}


def make(name: str, n: int = 1000, *, seed: int | None = None, **kwargs):
    """Draw ``n`` points of a named toy set: one of ``DATASETS``."""
    if name not in DATASETS:
        raise ValueError(f"expected a data set in {sorted(DATASETS)}, got {name!r}")
    return DATASETS[name](n, seed=seed, **kwargs)
