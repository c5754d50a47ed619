"""Matplotlib helpers: density contours, clusters, responsibilities and loss traces."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def _axes(ax):
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(4, 4))
    return ax


def _grid(X: np.ndarray, resolution: int, margin: float):
    lo, hi = X.min(0), X.max(0)
    pad = margin * (hi - lo)
    gx = np.linspace(lo[0] - pad[0], hi[0] + pad[0], resolution)
    gy = np.linspace(lo[1] - pad[1], hi[1] + pad[1], resolution)
    xx, yy = np.meshgrid(gx, gy)
    return xx, yy, np.stack([xx.ravel(), yy.ravel()], 1)


def plot_density(
    log_density: Callable[[np.ndarray], np.ndarray],
    X: np.ndarray,
    *,
    ax=None,
    resolution: int = 150,
    margin: float = 0.15,
    levels: int = 12,
    show_points: bool = True,
):
    """Filled contours of exp(log_density) over the box around 2-D points X (N, 2).

    ``log_density`` maps (M, 2) -> (M,), e.g. ``estimator.score_samples``.
    """
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[1] != 2:
        raise ValueError(f"expected 2-D points of shape (N, 2), got {X.shape}")
    ax = _axes(ax)
    xx, yy, pts = _grid(X, resolution, margin)
    dens = np.exp(np.asarray(log_density(pts))).reshape(xx.shape)
    ax.contourf(xx, yy, dens, levels=levels, cmap="viridis")
    if show_points:
        ax.scatter(X[:, 0], X[:, 1], s=2, c="white", alpha=0.4)
    ax.set_aspect("equal", adjustable="box")
    return ax


def plot_clusters(X: np.ndarray, labels: np.ndarray, *, ax=None, title: str | None = None):
    """Scatter of 2-D points coloured by cluster label."""
    X = np.asarray(X)
    ax = _axes(ax)
    ax.scatter(X[:, 0], X[:, 1], c=np.asarray(labels), s=4, cmap="tab10", vmin=0, vmax=9)
    ax.set_aspect("equal", adjustable="box")
    if title:
        ax.set_title(title)
    return ax


def plot_responsibilities(X: np.ndarray, probs: np.ndarray, *, axes: Sequence | None = None):
    """One panel per component: points coloured by p(k | x), probs (N, K)."""
    import matplotlib.pyplot as plt

    X, probs = np.asarray(X), np.asarray(probs)
    K = probs.shape[1]
    if axes is None:
        _, axes = plt.subplots(1, K, figsize=(3 * K, 3), squeeze=False)
        axes = axes[0]
    for k, ax in enumerate(axes):
        ax.scatter(X[:, 0], X[:, 1], c=probs[:, k], s=3, cmap="magma", vmin=0, vmax=1)
        ax.set_title(f"p(k={k} | x)")
        ax.set_aspect("equal", adjustable="box")
    return axes


def plot_loss(losses: Sequence[float], *, val_steps=None, val_losses=None, ax=None):
    """Training loss per step (and held-out loss at its evaluation steps)."""
    ax = _axes(ax)
    ax.plot(np.arange(1, len(losses) + 1), losses, lw=0.8, label="training")
    if val_losses:
        ax.plot(val_steps, val_losses, "o-", ms=3, label="held-out")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (-ELBO)")
    ax.legend()
    return ax
