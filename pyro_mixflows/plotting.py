"""Matplotlib helpers: density contours, clusters, responsibilities and loss traces.

Axes-level helpers (``plot_density``, ``plot_clusters``, ``plot_responsibilities``,
``plot_loss``) draw into a given (or new) axes and return it; figure-level helpers
(``density_figure``, ``clusters_figure``, ``loss_figure``) build the whole figure for data of any
dimension (for D > 2 on the plane of :func:`projection`, said in the title and axis labels) and
return it. The command line's report (``pyro-mixflows fit``) saves these figures; the tutorials
use the same.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

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
def _point_size(n: int) -> float:
    """Marker area (points^2) that keeps n points readable: large for a few rows, small for many."""
    return float(np.clip(3000.0 / max(n, 1), 6.0, 36.0))


@dataclass(frozen=True)
class Projection:
    r"""A linear map of rows with D > 2 columns to a plane, for pictures: :math:`P = Z B`, where
    :math:`Z = (X - \mu) / \sigma` are the standardized rows (N, D) and B (D, 2) the basis.

    Attributes:
        mean: (D,) column means μ of the data the projection was built on.
        scale: (D,) column standard deviations σ (1 for a constant column).
        basis: (D, 2) directions in the standardized space.
        axis_labels: names of the two axes, e.g. ("LD1", "LD2") or ("PC1 (42 %)", "PC2 (17 %)").
        description: what the axes are, for a title.
    """

    mean: np.ndarray
    scale: np.ndarray
    basis: np.ndarray
    axis_labels: tuple[str, str]
    description: str

    def __call__(self, X: np.ndarray) -> np.ndarray:
        """The projected rows (M, 2) of X (M, D)."""
        return ((np.asarray(X, dtype=np.float64) - self.mean) / self.scale) @ self.basis


def projection(X: np.ndarray, labels: np.ndarray | None = None) -> Projection:
    r"""The plane a user would show for rows X (N, D), D >= 2: the clusters' most separating
    directions when ``labels`` (N,) name two or more clusters, else the principal components.

    On the standardized columns Z: with C >= 3 clusters, the first two linear discriminants of
    Fisher's criterion

    .. math::
        \max_w \frac{w^\top S_B w}{w^\top S_W w}

    (S_B between-cluster, S_W within-cluster scatter; scikit-learn's
    ``LinearDiscriminantAnalysis``), axes "LD1", "LD2"; with C = 2, the one discriminant LD1 and
    the first principal component of Z with LD1 projected out; with one cluster (or no labels),
    the first two principal components, each labelled with its share of the total variance.

    Example:
        >>> X = np.random.default_rng(0).normal(size=(60, 5))
        >>> proj = projection(X, np.repeat([0, 1, 2], 20))
        >>> proj(X).shape, proj.axis_labels
        ((60, 2), ('LD1', 'LD2'))
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] < 2:
        raise ValueError(f"expected rows of shape (N, D) with D >= 2, got {X.shape}")
    mean = X.mean(0)
    scale = X.std(0)
    scale = np.where(scale > 0, scale, 1.0)
    Z = (X - mean) / scale  # (N, D)
    total = float((Z**2).sum()) or 1.0
    classes = np.unique(labels) if labels is not None else np.zeros(1)
    if len(classes) >= 2 and len(Z) > len(classes):
        import warnings

        from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Variables are collinear": the picture is still fine
            lda = LinearDiscriminantAnalysis(solver="svd").fit(Z, np.asarray(labels))
        W = lda.scalings_  # (D, rank)
        if W.shape[1] >= 2:
            basis = W[:, :2]
            return Projection(
                mean, scale, basis, ("LD1", "LD2"), "the clusters' two linear discriminants"
            )
        if W.shape[1] == 1:
            u = W[:, 0] / np.linalg.norm(W[:, 0])
            rest = Z - np.outer(Z @ u, u)  # (N, D), LD1 projected out
            v, share = _principal(rest, 1, total)
            basis = np.stack([W[:, 0], v[:, 0]], 1)
            return Projection(
                mean,
                scale,
                basis,
                ("LD1", f"PC1 across LD1 ({share[0]:.0f} %)"),
                "LD1 of the clusters and PC1 across it",
            )
    V, share = _principal(Z, 2, total)
    return Projection(
        mean,
        scale,
        V,
        (f"PC1 ({share[0]:.0f} %)", f"PC2 ({share[1]:.0f} %)"),
        "the two principal components",
    )


def _principal(Z: np.ndarray, n: int, total: float) -> tuple[np.ndarray, list[float]]:
    """The first n principal directions (D, n) of centred rows Z (N, D) and their shares of the
    total variance ``total`` (sum of squares), in percent."""
    _, sing, Vt = np.linalg.svd(Z - Z.mean(0), full_matrices=False)
    sing = np.concatenate([sing, np.zeros(n)])[:n]
    Vt = np.concatenate([Vt, np.zeros((n, Z.shape[1]))])[:n]
    return Vt.T, [100.0 * float(s**2) / total for s in sing]


def density_figure(
    X: np.ndarray,
    columns: Sequence[str],
    log_density: Callable[[np.ndarray], np.ndarray],
    samples: np.ndarray,
    labels: np.ndarray | None = None,
):
    """The fitted density: a curve over a histogram (D = 1), contours with a colour bar (D = 2),
    or for D > 2 the data (grey) and samples of the fit (orange) on one plane, the
    :func:`projection` of the data (the clusters' most separating directions when ``labels`` (N,)
    are given, else the principal components), said in the title and axis labels."""
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
        fig.tight_layout()
    elif D == 2:
        fig, ax = plt.subplots(figsize=(6, 4.5))
        plot_density(log_density, X, ax=ax, resolution=120, levels=20, columns=columns)
        ax.set_aspect("auto")
        ax.set_title("fitted density")
        fig.tight_layout()
    else:
        samples = np.asarray(samples)
        proj = projection(X, labels)
        P, Q = proj(X), proj(samples)  # (N, 2), (S, 2)
        fig, ax = plt.subplots(figsize=(7.5, 5.5), layout="constrained")
        ax.scatter(
            P[:, 0], P[:, 1], s=_point_size(N), c="0.3", alpha=0.5, linewidths=0,
            label=f"data ({N} rows)",
        )  # fmt: skip
        ax.scatter(
            Q[:, 0], Q[:, 1], s=_point_size(len(Q)), c="C1", alpha=0.5, linewidths=0,
            label=f"samples of the fit ({len(Q)})",
        )  # fmt: skip
        ax.set_xlabel(proj.axis_labels[0])
        ax.set_ylabel(proj.axis_labels[1])
        ax.set_title(f"data and samples of the fit\n{D} columns projected on {proj.description}")
        fig.legend(loc="outside right upper", markerscale=1.5, fontsize=8)
    return fig


def clusters_figure(
    X: np.ndarray,
    columns: Sequence[str],
    labels: np.ndarray,
    class_names: Sequence[str] | None = None,
):
    """Rows coloured by their most probable component, named by ``class_names`` for a labelled
    fit: a stacked histogram (D = 1), a scatter (D = 2), or for D > 2 a scatter on the clusters'
    two most separating directions (:func:`projection`), said in the title and axis labels. The
    legend, outside the axes, is titled with the same word as the title ("class" for a labelled
    fit, else "component")."""
    import matplotlib.pyplot as plt

    X, labels = np.asarray(X), np.asarray(labels)
    N, D = X.shape
    K = int(labels.max()) + 1 if len(labels) else 1
    names = component_names(K, class_names)
    present = [int(k) for k in np.unique(labels)]
    word = "class" if class_names else "component"
    title = f"clusters (most probable {word})"
    fig, ax = plt.subplots(figsize=(7.5 if D > 2 else 6.5, 5.5), layout="constrained")
    if D == 1:
        ax.hist(
            [X[labels == k, 0] for k in present],
            bins=40,
            stacked=True,
            color=[_colour(k) for k in present],
            label=[names[k] for k in present],
        )
        ax.set_xlabel(columns[0])
    else:
        if D == 2:
            P, axis_labels = X, (columns[0], columns[1])
        else:
            proj = projection(X, labels)
            P, axis_labels = proj(X), proj.axis_labels
            title += f"\n{D} columns projected on {proj.description}"
        for k in present:
            at = labels == k
            ax.scatter(
                P[at, 0], P[at, 1], s=_point_size(N), color=_colour(k), alpha=0.8, linewidths=0,
                label=names[k],
            )  # fmt: skip
        ax.set_xlabel(axis_labels[0])
        ax.set_ylabel(axis_labels[1])
    fig.legend(loc="outside right upper", title=word, fontsize=8, markerscale=1.5)
    ax.set_title(title)
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


def candidates_figure(candidates: Sequence[dict], kept: dict, title: str):
    """The held-out log-likelihood per row of every trained candidate against its steps, with the
    kept model's level as a dashed line (a ``VariationalFlowMixture``'s ``candidates_``)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for i, c in enumerate(candidates):
        curve = c.get("curve") or {}
        if curve.get("steps"):
            layers = c["capacity"].get("num_layers", "default")
            label = f"{c['start']} start, flows ({layers} layers): stopped, {c['stop']}"
            ax.plot(curve["steps"], curve["validation_log_likelihood"], "o-", ms=3,
                    color=f"C{i % 10}", label=label)  # fmt: skip
    ax.axhline(kept["validation_log_likelihood"], color="0.2", ls="--", lw=1.0,
               label=f"kept: {kept['start']} start, Gaussian mixture")  # fmt: skip
    ax.set_xlabel("training step")
    ax.set_ylabel("held-out log-likelihood per row\n(standardized data)")
    ax.set_title("\n".join(textwrap.wrap(title, 70)), fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def estimator_loss_rows(estimator, n_rows: int) -> tuple[int, int]:
    """(training rows, held-out rows) that a ``VariationalFlowMixture`` fitted on ``n_rows``
    rows sums its training and held-out losses over (for per-row loss plots)."""
    n_val = min(int(estimator.validation_fraction * n_rows), max(n_rows - 1, 0))
    return n_rows - n_val, n_val
