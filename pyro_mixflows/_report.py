"""What ``pyro-mixflows fit`` writes besides the checkpoint: ArviZ InferenceData and PNG plots."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np

MAX_PANELS = 5  # pairwise plots show the first MAX_PANELS columns


def inference_data(
    weights: np.ndarray,
    responsibilities: np.ndarray,
    log_density: np.ndarray,
    X: np.ndarray,
    columns: Sequence[str],
):
    """An ``arviz.InferenceData`` of a point-estimate fit (one chain, one draw).

    Groups: ``posterior`` with ``weights`` (K,) and ``responsibilities`` (N, K);
    ``log_likelihood`` with ``x`` (N,), the *marginal* log p(x_n) (the assignment summed out);
    ``observed_data`` with ``x`` (N, D).
    """
    import arviz as az

    N, K = responsibilities.shape
    coords = {"component": np.arange(K), "row": np.arange(N), "feature": list(columns)}
    posterior = az.dict_to_dataset(
        {"weights": weights[None, None], "responsibilities": responsibilities[None, None]},
        coords=coords,
        dims={"weights": ["component"], "responsibilities": ["row", "component"]},
    )
    log_lik = az.dict_to_dataset({"x": log_density[None, None]}, coords=coords, dims={"x": ["row"]})
    observed = az.dict_to_dataset(
        {"x": X}, coords=coords, dims={"x": ["row", "feature"]}, default_dims=[]
    )
    return az.InferenceData(posterior=posterior, log_likelihood=log_lik, observed_data=observed)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _pairs(D: int) -> int:
    return min(D, MAX_PANELS)


def plot_density(
    path: str,
    X: np.ndarray,
    columns: Sequence[str],
    score: Callable[[np.ndarray], np.ndarray],
    samples: np.ndarray,
) -> None:
    """Density of the fit: a curve (D=1), contours (D=2) or pairwise panels of data vs samples."""
    plt = _pyplot()
    N, D = X.shape
    lo, hi = X.min(0), X.max(0)
    pad = 0.15 * (hi - lo) + 1e-9
    if D <= 2:
        fig, ax = plt.subplots(figsize=(5.5, 4.5))
        if D == 1:
            grid = np.linspace(lo[0] - pad[0], hi[0] + pad[0], 400)
            ax.hist(X[:, 0], bins=40, density=True, color="0.8", label="data")
            ax.plot(grid, np.exp(score(grid[:, None])), color="C0", label="fitted density")
            ax.set_xlabel(columns[0])
            ax.legend()
        else:
            n = 120
            gx = np.linspace(lo[0] - pad[0], hi[0] + pad[0], n)
            gy = np.linspace(lo[1] - pad[1], hi[1] + pad[1], n)
            xx, yy = np.meshgrid(gx, gy)
            dens = np.exp(score(np.stack([xx.ravel(), yy.ravel()], -1))).reshape(n, n)
            ax.contourf(xx, yy, dens, levels=20, cmap="viridis")
            ax.scatter(X[:, 0], X[:, 1], s=2, c="white", alpha=0.4, linewidths=0)
            ax.set_xlabel(columns[0])
            ax.set_ylabel(columns[1])
        ax.set_title("fitted density")
    else:
        P = _pairs(D)
        fig, axes = plt.subplots(P, P, figsize=(2.2 * P, 2.2 * P), squeeze=False)
        for i in range(P):
            for j in range(P):
                ax = axes[i, j]
                if i == j:
                    ax.hist(X[:, i], bins=30, density=True, color="0.6", alpha=0.7)
                    ax.hist(samples[:, i], bins=30, density=True, color="C1", alpha=0.5)
                else:
                    ax.scatter(X[:, j], X[:, i], s=4, c="0.3", alpha=0.5, linewidths=0)
                    ax.scatter(samples[:, j], samples[:, i], s=4, c="C1", alpha=0.4, linewidths=0)
                if i == P - 1:
                    ax.set_xlabel(columns[j])
                if j == 0:
                    ax.set_ylabel(columns[i])
        extra = f" (first {P} of {D} columns)" if D > P else ""
        fig.suptitle(f"data (grey) and samples of the fit (orange){extra}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_clusters(path: str, X: np.ndarray, columns: Sequence[str], labels: np.ndarray) -> None:
    """Rows coloured by their most probable component (pairwise panels for D > 2)."""
    plt = _pyplot()
    N, D = X.shape
    K = int(labels.max()) + 1 if len(labels) else 1
    if D == 1:
        fig, ax = plt.subplots(figsize=(5.5, 4))
        ax.hist([X[labels == k, 0] for k in range(K)], bins=40, stacked=True, label=list(range(K)))
        ax.set_xlabel(columns[0])
        ax.legend(title="component")
    elif D == 2:
        fig, ax = plt.subplots(figsize=(5.5, 4.5))
        sc = ax.scatter(X[:, 0], X[:, 1], c=labels, s=4, cmap="tab10", vmin=0, vmax=9)
        ax.set_xlabel(columns[0])
        ax.set_ylabel(columns[1])
        ax.legend(*sc.legend_elements(), title="component", fontsize=7)
    else:
        P = _pairs(D)
        fig, axes = plt.subplots(P, P, figsize=(2.2 * P, 2.2 * P), squeeze=False)
        for i in range(P):
            for j in range(P):
                ax = axes[i, j]
                if i == j:
                    ax.hist([X[labels == k, i] for k in range(K)], bins=30, stacked=True)
                else:
                    ax.scatter(X[:, j], X[:, i], c=labels, s=2, cmap="tab10", vmin=0, vmax=9)
                if i == P - 1:
                    ax.set_xlabel(columns[j])
                if j == 0:
                    ax.set_ylabel(columns[i])
    fig.suptitle("clusters (most probable component)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_loss(
    path: str,
    losses: Sequence[float],
    val_steps: Sequence[int],
    val_losses: Sequence[float],
    n_train: int,
    n_val: int,
) -> None:
    """Training loss per step and held-out loss per evaluation, both per row (nats)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    steps = np.arange(1, len(losses) + 1)
    ax.plot(steps, np.asarray(losses) / max(n_train, 1), lw=0.8, label="training (per row)")
    if len(val_losses) and n_val:
        ax.plot(val_steps, np.asarray(val_losses) / n_val, "o-", label="held-out (per row)")
    ax.set_xlabel("step")
    ax.set_ylabel("negative ELBO per row (standardized data)")
    ax.set_title("loss trace")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def written(folder: str, names: Sequence[str]) -> list[str]:
    return [n for n in names if os.path.exists(os.path.join(folder, n))]
