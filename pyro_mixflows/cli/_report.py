"""What ``pyro-mixflows fit`` writes: summary, CSV files, ArviZ InferenceData and PNG plots."""

from __future__ import annotations

import json
import os
import platform
import textwrap
import time
from collections.abc import Sequence

import numpy as np

from ._table import atomic_dir, format_csv

PROG = "pyro-mixflows"
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


def _save(fig, path: str) -> None:
    plt = _pyplot()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# --- the output folder ------------------------------------------------------------------------
def _versions() -> dict:
    import arviz
    import pyro
    import torch

    from .. import __version__

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


START_NAMES = {
    "em": "EM start, full covariances",
    "em_diag": "EM start, diagonal covariances",
    "em_dp": "Dirichlet-process Gaussian mixture",
    "spectral": "spectral start",
    "kmeans": "k-means start",
    "random": "random start",
    "merge": "merged Dirichlet-process components",
}


def selection(est) -> dict:
    """What the fit kept, in numbers and in one sentence (``summary.json``'s "selection")."""
    gaussian = est.num_layers_ == 0
    start = START_NAMES.get(est.start_, f"{est.start_} start")
    flows = [c for c in est.candidates_ if c["steps"] > 0 and c["capacity"].get("num_layers") != 0]
    if gaussian:
        why = (
            "flows did not improve the held-out likelihood"
            if flows
            else "no flows were trained (num_layers 0)"
        )
        text = f"kept the Gaussian mixture ({start}): {why}"
    else:
        text = f"kept the flows from the {start}: better than the Gaussian mixture on held-out rows"
    return {
        "start": est.start_,
        "capacity": est.capacity_,
        "gaussian_mixture": gaussian,
        "description": text,
        "candidates": est.candidates_,
    }


def summary(args, est, table, source, classes, y, train, test, scores, labels, weights) -> dict:
    """The contents of ``summary.json`` (everything but the timings and warnings)."""
    result = est.fit_result_
    if result is None:  # the kept model was not trained (EM's Gaussian mixture)
        from ..infer import FitResult

        result = FitResult(converged=True, stop_reason="not trained: EM's Gaussian mixture")
    from ..plotting import estimator_loss_rows

    n_fit = len(train)
    n_val = estimator_loss_rows(est, n_fit)[1]
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
        "selection": selection(est),
        "fit_stats": est.fit_stats_,
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
        _pyplot()
        from .. import plotting

        X, cols = table.X, table.columns
        figure = plotting.density_figure(X, cols, est.score_samples, samples, labels)
        _save(figure, f"{tmp}/density.png")
        _save(plotting.clusters_figure(X, cols, labels, classes), f"{tmp}/clusters.png")
        training, kept = summary["training"], summary["selection"]
        n_train = summary["data"]["n_train"] - training["n_val"]
        if est.fit_result_ is None:  # an untrained Gaussian: what the flow candidates reached
            chosen = max(
                (c for c in kept["candidates"] if c["start"] == kept["start"] and not c["steps"]),
                key=lambda c: c["validation_log_likelihood"],
            )
            figure = plotting.candidates_figure(kept["candidates"], chosen, kept["description"])
        else:
            figure = plotting.loss_figure(
                training["loss"],
                training["val_steps"],
                training["val_loss"],
                n_train,
                training["n_val"],
            )
            title = f"loss of the kept model ({kept['description'][5:]})"
            figure.axes[0].set_title("\n".join(textwrap.wrap(title, 70)), fontsize=9)
        _save(figure, f"{tmp}/loss.png")
        now = time.perf_counter()
        summary["timings"].update(write_s=now - t0, total_s=now - start)
        _write(os.path.join(tmp, "summary.json"), json.dumps(summary, indent=2))


def _write(path: str, text: str) -> None:
    with open(path, "w", newline="") as f:
        f.write(text)
