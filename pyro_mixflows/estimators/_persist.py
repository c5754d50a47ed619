"""Saving and loading a fitted ``VariationalFlowMixture``: tensors and plain values only."""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np
import torch

from ..infer import FitResult
from ..infer._checkpoint import atomic_save

# /3: every fitted attribute (/2 held the model and a few of them; /1 elementwise affine maps)
FORMAT = "pyro_mixflows.VariationalFlowMixture/3"


def plain(value):
    """Plain Python values for ``torch.load(weights_only=True)``: NumPy scalars unwrapped, arrays
    as tensors, sequences as tuples, dicts by value."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return tuple(plain(x) for x in value)
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    if isinstance(value, np.generic):
        return value.item()
    return value


def save(est, path: str | os.PathLike) -> None:
    params = est.get_params()
    params["device"] = None  # the file loads onto the device ``load`` names
    if not isinstance(params["random_state"], (int, np.integer, type(None))):
        params["random_state"] = None  # a RandomState is not a plain value
    result = est.fit_result_
    state = {
        "format": FORMAT,
        "params": plain(params),
        "n_features_in": int(est.n_features_in_),
        "feature_names": [str(c) for c in getattr(est, "feature_names_in_", [])] or None,
        "mean": est._mean.cpu(),
        "scale": est._scale.cpu(),
        "module": {k: v.cpu() for k, v in est.module_.state_dict().items()},
        "cluster_module": None
        if est.cluster_module_ is None
        else {k: v.cpu() for k, v in est.cluster_module_.state_dict().items()},
        "fitted": plain(
            {
                "n_components_": int(est.n_components_),
                "num_layers_": int(est.num_layers_),
                "capacity_": est.capacity_,
                "start_": est.start_,
                "candidates_": est.candidates_,
                "converged_": bool(est.converged_),
                "n_iter_": int(est.n_iter_),
                "lower_bound_": float(est.lower_bound_),
                "validation_log_likelihood_": float(est.validation_log_likelihood_),
                "labels_": est.labels_,
                "merge_groups_": est.merge_groups_,
                "clusters_from_": est.clusters_from_,
                "core_agreement_": float(est.core_agreement_),
                "fit_stats_": est.fit_stats_,
                "fit_result_": None if result is None else dataclasses.asdict(result),
            }
        ),
    }
    atomic_save(state, path)


def _unplain(value):
    """Tuples back to lists where the estimator keeps lists, tensors back to arrays."""
    if isinstance(value, torch.Tensor):
        return value.numpy()
    if isinstance(value, dict):
        return {k: _unplain(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_unplain(v) for v in value]
    return value


def load(cls, path: str | os.PathLike, device=None):
    try:
        state = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:
        raise ValueError(f"expected a pyro_mixflows model file at {path}: {err}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"expected a pyro_mixflows model file at {path}, got another file")
    params = dict(state["params"])
    params["hidden_dims"] = tuple(params["hidden_dims"])
    if params.get("capacities") is not None:
        params["capacities"] = [dict(c) for c in params["capacities"]]
    model = cls(**params)
    model.device = device
    model.n_features_in_ = state["n_features_in"]
    if state.get("feature_names"):
        model.feature_names_in_ = np.asarray(state["feature_names"], dtype=object)
    model._mean = state["mean"].to(device)
    model._scale = state["scale"].to(device)
    fitted = state["fitted"]
    for name, value in fitted.items():
        if name in ("fit_result_", "capacity_", "fit_stats_"):
            continue
        setattr(model, name, _unplain(value))
    model.capacity_ = {
        k: tuple(v) if k == "hidden_dims" else v for k, v in fitted["capacity_"].items()
    }
    model.fit_stats_ = _unplain(fitted["fit_stats_"])
    result = fitted["fit_result_"]
    model.fit_result_ = None if result is None else FitResult(**_unplain(result))
    model.lower_bound_ = float(fitted.get("lower_bound_", math.nan))
    vm = model._build(model.n_features_in_, model.n_components_, model.capacity_)
    vm.load_state_dict(state["module"])
    model.module_ = vm.to(device).eval()
    model.cluster_module_ = None
    if state.get("cluster_module") is not None:  # the Gaussian start whose clusters it reports
        gaussian = model._build(model.n_features_in_, model.n_components_, {"num_layers": 0})
        gaussian.load_state_dict(state["cluster_module"])
        model.cluster_module_ = gaussian.to(device).eval()
    return model
