"""Matplotlib helpers: density contours, clusters, responsibilities and loss traces.

Axes-level helpers (``plot_density``, ``plot_clusters``, ``plot_responsibilities``,
``plot_loss``) draw into a given (or new) axes and return it; figure-level helpers
(``density_figure``, ``clusters_figure``, ``loss_figure``) build the whole figure for data of any
dimension (pairwise panels of the first ``MAX_PANELS`` columns for D > 2) and return it. The
command line's report (``pyro-mixflows fit``) saves these figures; the tutorials use the same.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

MAX_PANELS = 5  # pairwise figures show the first MAX_PANELS columns
_CMAP = "tab10"


def _axes(ax):
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(4, 4))
    return ax


def _grid(X: np.ndarray, resolution: int, margin: float):
    lo, hi = X.min(0), X.max(0)
    pad = margin * (hi - lo) + 1e-9
    gx = np.linspace(lo[0] - pad[0], hi[0] + pad[0], resolution)
    gy = np.linspace(lo[1] - pad[1], hi[1] + pad[1], resolution)
    xx, yy = np.meshgrid(gx, gy)
    return xx, yy, np.stack([xx.ravel(), yy.ravel()], 1)


def component_names(num_components: int, class_names: Sequence[str] | None = None) -> list[str]:
    """Legend names of K components: the class name of component k when a labelled fit has one
    (component k was trained on class k), else "component k"."""
    names = list(class_names or [])
    return [names[k] if k < len(names) else f"component {k}" for k in range(num_components)]


def _colour(k: int):
    import matplotlib

    return matplotlib.colormaps[_CMAP](k % 10)


def plot_density(
    log_density: Callable[[np.ndarray], np.ndarray],
    X: np.ndarray,
    *,
    ax=None,
    resolution: int = 150,
    margin: float = 0.15,
    levels: int = 12,
    show_points: bool = True,
    colorbar: bool = True,
    columns: Sequence[str] | None = None,
):
    """Filled contours of exp(log_density) over the box around 2-D points X (N, 2), with a
    colour bar of the density values.

    ``log_density`` maps (M, 2) -> (M,), e.g. ``estimator.score_samples``.
    """
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[1] != 2:
        raise ValueError(f"expected 2-D points of shape (N, 2), got {X.shape}")
    ax = _axes(ax)
    xx, yy, pts = _grid(X, resolution, margin)
    dens = np.exp(np.asarray(log_density(pts))).reshape(xx.shape)
    filled = ax.contourf(xx, yy, dens, levels=levels, cmap="viridis")
    if colorbar:
        ax.figure.colorbar(filled, ax=ax, label="density")
    if show_points:
        ax.scatter(X[:, 0], X[:, 1], s=2, c="white", alpha=0.4, linewidths=0)
    if columns is not None:
        ax.set_xlabel(columns[0])
        ax.set_ylabel(columns[1])
    return ax


def plot_clusters(
    X: np.ndarray,
    labels: np.ndarray,
    *,
    ax=None,
    title: str | None = None,
    names: Sequence[str] | None = None,
    legend: bool = True,
):
    """Scatter of 2-D points coloured by cluster label, with a legend of the labels present
    (``names[k]`` for label k, default "component k")."""
    X, labels = np.asarray(X), np.asarray(labels)
    ax = _axes(ax)
    K = int(labels.max()) + 1 if len(labels) else 1
    names = component_names(K, None) if names is None else component_names(K, names)
    for k in np.unique(labels):
        at = labels == k
        ax.scatter(X[at, 0], X[at, 1], s=4, color=_colour(int(k)), label=names[int(k)])
    if legend and len(labels):
        ax.legend(fontsize=7, markerscale=2)
    ax.set_aspect("equal", adjustable="datalim")
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


def plot_loss(
    losses: Sequence[float],
    *,
    val_steps: Sequence[int] | None = None,
    val_losses: Sequence[float] | None = None,
    n_train: int | None = None,
    n_val: int | None = None,
    mark_best: bool = True,
    ax=None,
):
    """Training loss per step and held-out loss at its evaluation steps, with the best
    (lowest held-out) step marked: the parameters a fit with early stopping keeps.

    With ``n_train`` and ``n_val`` (the rows each loss sums over) both curves are per row, so
    they share one scale; without them the raw sums are drawn.
    """
    ax = _axes(ax)
    per_row = n_train is not None and n_val is not None
    train = np.asarray(losses, dtype=float) / (max(n_train, 1) if per_row else 1)
    ax.plot(np.arange(1, len(train) + 1), train, lw=0.8, label="training")
    if val_losses is not None and len(val_losses):
        held = np.asarray(val_losses, dtype=float) / (max(n_val, 1) if per_row else 1)
        ax.plot(val_steps, held, "o-", ms=3, label="held-out")
        if mark_best:
            best = int(np.argmin(held))
            ax.axvline(val_steps[best], color="0.4", ls="--", lw=0.8)
            ax.plot(
                [val_steps[best]],
                [held[best]],
                marker="*",
                ms=12,
                color="C3",
                ls="none",
                label=f"best: step {val_steps[best]}",
            )
    ax.set_xlabel("step")
    ax.set_ylabel("loss (-ELBO) per row" if per_row else "loss (-ELBO)")
    ax.legend()
    return ax


# --- whole figures, for data of any dimension -------------------------------------------------
def _pair_panels(P: int, columns: Sequence[str], diagonal, off_diagonal):
    """A P x P grid of panels for the first P columns: ``diagonal(ax, i)`` on the diagonal,
    ``off_diagonal(ax, i, j)`` (row i, column j) elsewhere; axis labels on the outer panels."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(P, P, figsize=(2.2 * P, 2.2 * P), squeeze=False)
    for i in range(P):
        for j in range(P):
            ax = axes[i, j]
            if i == j:
                diagonal(ax, i)
            else:
                off_diagonal(ax, i, j)
            if i == P - 1:
                ax.set_xlabel(columns[j])
            if j == 0:
                ax.set_ylabel(columns[i])
    return fig


def density_figure(
    X: np.ndarray,
    columns: Sequence[str],
    log_density: Callable[[np.ndarray], np.ndarray],
    samples: np.ndarray,
):
    """The fitted density: a curve over a histogram (D = 1), contours with a colour bar (D = 2),
    or pairwise panels of data (grey) and samples of the fit (orange) for D > 2."""
    import matplotlib.pyplot as plt

    X = np.asarray(X)
    N, D = X.shape
    if D == 1:
        fig, ax = plt.subplots(figsize=(5.5, 4.5))
        lo, hi = X.min(0), X.max(0)
        pad = 0.15 * (hi - lo) + 1e-9
        grid = np.linspace(lo[0] - pad[0], hi[0] + pad[0], 400)
        ax.hist(X[:, 0], bins=40, density=True, color="0.8", label="data")
        ax.plot(grid, np.exp(log_density(grid[:, None])), color="C0", label="fitted density")
        ax.set_xlabel(columns[0])
        ax.legend()
        ax.set_title("fitted density")
    elif D == 2:
        fig, ax = plt.subplots(figsize=(6, 4.5))
        plot_density(log_density, X, ax=ax, resolution=120, levels=20, columns=columns)
        ax.set_aspect("auto")
        ax.set_title("fitted density")
    else:
        P = min(D, MAX_PANELS)

        def diagonal(ax, i):
            ax.hist(X[:, i], bins=30, density=True, color="0.6", alpha=0.7)
            ax.hist(samples[:, i], bins=30, density=True, color="C1", alpha=0.5)

        def off_diagonal(ax, i, j):
            ax.scatter(X[:, j], X[:, i], s=4, c="0.3", alpha=0.5, linewidths=0)
            ax.scatter(samples[:, j], samples[:, i], s=4, c="C1", alpha=0.4, linewidths=0)

        fig = _pair_panels(P, columns, diagonal, off_diagonal)
        extra = f" (first {P} of {D} columns)" if D > P else ""
        fig.suptitle(f"data (grey) and samples of the fit (orange){extra}")
    fig.tight_layout()
    return fig


def clusters_figure(
    X: np.ndarray,
    columns: Sequence[str],
    labels: np.ndarray,
    class_names: Sequence[str] | None = None,
):
    """Rows coloured by their most probable component, named by ``class_names`` for a labelled
    fit (stacked histogram for D = 1, a scatter for D = 2, pairwise panels with one legend for
    D > 2)."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    X, labels = np.asarray(X), np.asarray(labels)
    N, D = X.shape
    K = int(labels.max()) + 1 if len(labels) else 1
    names = component_names(K, class_names)
    present = [int(k) for k in np.unique(labels)]
    title = "clusters (most probable " + ("class)" if class_names else "component)")
    if D == 1:
        fig, ax = plt.subplots(figsize=(5.5, 4))
        ax.hist(
            [X[labels == k, 0] for k in present],
            bins=40,
            stacked=True,
            color=[_colour(k) for k in present],
            label=[names[k] for k in present],
        )
        ax.set_xlabel(columns[0])
        ax.legend(fontsize=7)
    elif D == 2:
        fig, ax = plt.subplots(figsize=(5.5, 4.5))
        plot_clusters(X, labels, ax=ax, names=names)
        ax.set_aspect("auto")
        ax.set_xlabel(columns[0])
        ax.set_ylabel(columns[1])
    else:
        fig = _pair_panels(
            min(D, MAX_PANELS),
            columns,
            lambda ax, i: ax.hist(
                [X[labels == k, i] for k in present],
                bins=30,
                stacked=True,
                color=[_colour(k) for k in present],
            ),
            lambda ax, i, j: ax.scatter(
                X[:, j], X[:, i], c=[_colour(int(k)) for k in labels], s=2, linewidths=0
            ),
        )
        handles = [
            Line2D([], [], marker="o", ls="none", color=_colour(k), label=names[k]) for k in present
        ]
        fig.legend(handles=handles, loc="upper right", fontsize=7, title="cluster")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def loss_figure(
    losses: Sequence[float],
    val_steps: Sequence[int],
    val_losses: Sequence[float],
    n_train: int,
    n_val: int,
):
    """The loss trace per row (training and held-out on one scale), best step marked."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    plot_loss(
        losses,
        val_steps=val_steps if n_val else None,
        val_losses=val_losses if n_val else None,
        n_train=n_train,
        n_val=max(n_val, 1),
        ax=ax,
    )
    ax.set_ylabel("negative ELBO per row (standardized data)")
    ax.set_title("loss trace")
    fig.tight_layout()
    return fig


def estimator_loss_rows(estimator, n_rows: int) -> tuple[int, int]:
    """(training rows, held-out rows) that a ``VariationalFlowMixture`` fitted on ``n_rows``
    rows sums its training and held-out losses over (for per-row loss plots)."""
    n_val = min(int(estimator.validation_fraction * n_rows), max(n_rows - 1, 0))
    return n_rows - n_val, n_val
