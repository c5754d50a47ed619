"""What ``pyro-mixflows fit`` writes: summary, CSV files, ArviZ InferenceData and PNG plots."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable, Sequence

import numpy as np

from ._table import atomic_dir, format_csv

PROG = "pyro-mixflows"
MAX_PANELS = 5  # pairwise plots show the first MAX_PANELS columns
EFFECTIVE_WEIGHT = 0.01  # a component is "effective" when its weight exceeds 1%
FIT_FILES = (
    "model.pt",
    "clusters.csv",
    "scores.csv",
    "summary.json",
    "posterior.nc",
    "density.png",
    "clusters.png",
    "loss.png",
)


def inference_data(
    weights: np.ndarray,
    responsibilities: np.ndarray,
    log_density: np.ndarray,
    X: np.ndarray,
    columns: Sequence[str],
):
    """An ``arviz.InferenceData`` of a point-estimate fit (one chain, one draw).

    Groups: ``posterior`` with ``weights`` (K,), ``responsibilities`` (N, K) and
    ``log_density`` (N,), the *marginal* log p(x_n) (the assignment summed out);
    ``observed_data`` with ``x`` (N, D). One draw is no posterior sample, so there is no
    ``log_likelihood`` group: ``az.loo``/``az.compare`` stop with "log likelihood not found"
    (as ``diagnostics.to_inference_data`` does for one draw).
    """
    import arviz as az

    N, K = responsibilities.shape
    coords = {"component": np.arange(K), "row": np.arange(N), "feature": list(columns)}
    posterior = az.dict_to_dataset(
        {
            "weights": weights[None, None],
            "responsibilities": responsibilities[None, None],
            "log_density": log_density[None, None],
        },
        coords=coords,
        dims={
            "weights": ["component"],
            "responsibilities": ["row", "component"],
            "log_density": ["row"],
        },
    )
    observed = az.dict_to_dataset(
        {"x": X}, coords=coords, dims={"x": ["row", "feature"]}, default_dims=[]
    )
    return az.InferenceData(posterior=posterior, observed_data=observed)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _pairs(D: int) -> int:
    return min(D, MAX_PANELS)


def _pair_panels(plt, P: int, columns: Sequence[str], diagonal, off_diagonal):
    """A P x P grid of panels for the first P columns: ``diagonal(ax, i)`` on the diagonal,
    ``off_diagonal(ax, i, j)`` (row i, column j) elsewhere; axis labels on the outer panels."""
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

        def diagonal(ax, i):
            ax.hist(X[:, i], bins=30, density=True, color="0.6", alpha=0.7)
            ax.hist(samples[:, i], bins=30, density=True, color="C1", alpha=0.5)

        def off_diagonal(ax, i, j):
            ax.scatter(X[:, j], X[:, i], s=4, c="0.3", alpha=0.5, linewidths=0)
            ax.scatter(samples[:, j], samples[:, i], s=4, c="C1", alpha=0.4, linewidths=0)

        fig = _pair_panels(plt, P, columns, diagonal, off_diagonal)
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
        fig = _pair_panels(
            plt,
            _pairs(D),
            columns,
            lambda ax, i: ax.hist([X[labels == k, i] for k in range(K)], bins=30, stacked=True),
            lambda ax, i, j: ax.scatter(
                X[:, j], X[:, i], c=labels, s=2, cmap="tab10", vmin=0, vmax=9
            ),
        )
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


# --- the output folder ------------------------------------------------------------------------
def _versions() -> dict:
    import arviz
    import pyro
    import torch

    from . import __version__

    return {
        "pyro_mixflows": __version__,
        "pyro": pyro.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "arviz": arviz.__version__,
        "python": platform.python_version(),
    }


def _jsonable(value):
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return getattr(value, "__name__", str(value))


def summary(args, est, table, source, classes, y, train, test, scores, labels, weights) -> dict:
    """The contents of ``summary.json`` (everything but the timings and warnings)."""
    result = est.fit_result_
    n_fit = len(train)
    n_val = min(int(est.validation_fraction * n_fit), n_fit - 1)
    params = {k: _jsonable(v) for k, v in est.get_params().items()}
    return {
        "tool": PROG,
        "format": 1,
        "command": [PROG, *args.argv],
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "data": {
            "source": source,
            "n_rows": int(table.X.shape[0]),
            "n_features": int(table.X.shape[1]),
            "columns": table.columns,
            "ignored_columns": table.ignored,
            "label_column": args.labels,
            "classes": classes,
            "n_labelled": int((y >= 0).sum()) if y is not None else 0,
            "n_train": int(n_fit),
            "n_test": int(len(test)),
            "test_rows": test.tolist(),
        },
        "settings": {"seed": args.seed, "test_fraction": args.test_fraction, "estimator": params},
        "versions": _versions(),
        "training": {
            "loss": [float(v) for v in result.losses],
            "elbo": [-float(v) for v in result.losses],
            "val_steps": [int(v) for v in result.val_steps],
            "val_loss": [float(v) for v in result.val_losses],
            "n_val": int(n_val),
            "n_iter": int(est.n_iter_),
            "converged": bool(est.converged_),
            "stop_reason": result.stop_reason,
            "lower_bound": float(est.lower_bound_),
            "time_s": float(result.time),
        },
        "held_out_log_likelihood": float(scores[test].mean()) if len(test) else None,
        "train_log_likelihood": float(scores[train].mean()),
        "weights": weights.tolist(),
        "effective_components": int((weights > EFFECTIVE_WEIGHT).sum()),
        "effective_weight_threshold": EFFECTIVE_WEIGHT,
        "cluster_sizes": np.bincount(labels, minlength=len(weights)).tolist(),
    }


def write_fit(
    out, est, table, classes, scores, proba, labels, weights, samples, summary, start
) -> None:
    """Write every file of ``FIT_FILES`` into a temporary sibling of ``out``, then rename it
    into place (``atomic_dir``); ``summary.json`` last, with the timings of the writing."""
    N, K = proba.shape
    rows = np.arange(N)
    t0 = time.perf_counter()
    with atomic_dir(out) as tmp:
        est.save(os.path.join(tmp, "model.pt"))
        header = ["row", "label"] + (["class"] if classes else [])
        columns: list = [rows, labels]
        if classes:
            columns.append([classes[k] if k < len(classes) else "" for k in labels])
        header += [f"p_{k}" for k in range(K)]
        columns += [proba[:, k] for k in range(K)]
        _write(os.path.join(tmp, "clusters.csv"), format_csv(header, columns))
        _write(os.path.join(tmp, "scores.csv"), format_csv(["row", "log_density"], [rows, scores]))
        idata = inference_data(weights, proba, scores, table.X, table.columns)
        idata.to_netcdf(os.path.join(tmp, "posterior.nc"))
        plot_density(
            os.path.join(tmp, "density.png"), table.X, table.columns, est.score_samples, samples
        )
        plot_clusters(os.path.join(tmp, "clusters.png"), table.X, table.columns, labels)
        training = summary["training"]
        plot_loss(
            os.path.join(tmp, "loss.png"),
            training["loss"],
            training["val_steps"],
            training["val_loss"],
            summary["data"]["n_train"] - training["n_val"],
            training["n_val"],
        )
        now = time.perf_counter()
        summary["timings"].update(write_s=now - t0, total_s=now - start)
        _write(os.path.join(tmp, "summary.json"), json.dumps(summary, indent=2))


def _write(path: str, text: str) -> None:
    with open(path, "w", newline="") as f:
        f.write(text)
