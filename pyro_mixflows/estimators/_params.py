"""The parameter and label checks of ``VariationalFlowMixture`` (run by ``fit``, never by
``__init__``, as scikit-learn asks), with the option lists they check against."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np

from ..flows import FLOWS
from ..models.vmonf import ASSIGNMENTS, WEIGHTS
from ..starts import INIT_METHODS

# How ``fit`` reads ``y`` (see the class docstring).
SEMI_SUPERVISED = ("auto", True, False)
# Starts: "auto" tries EM and the spectral partition; "em" is EM's Gaussian mixture alone.
INITS = ("auto", "em", *INIT_METHODS)
# The keys a capacity may override.
ARCHITECTURE = ("flow", "num_layers", "hidden_dims", "count_bins")
CAPACITY_KEYS = (*ARCHITECTURE, "weight_decay")


def _int_at_least(name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"expected {name} to be an int >= {low}, got {value!r}")


def _hidden_dims(dims) -> None:
    if (
        isinstance(dims, (str, bytes))
        or not isinstance(dims, Sequence)
        or not all(isinstance(h, numbers.Integral) and h >= 1 for h in dims)
    ):
        raise ValueError(
            f"expected hidden_dims to be a sequence of ints >= 1 such as (32, 32), got {dims!r}"
        )


def check_params(est) -> None:
    """Check every constructor parameter of ``est`` (called by ``fit``; raises ValueError)."""
    _int_at_least("n_components", est.n_components, 1)
    for name, options in (
        ("flow", FLOWS),
        ("weights", WEIGHTS),
        ("assignment", ASSIGNMENTS),
        ("init", INITS),
    ):
        if getattr(est, name) not in options:
            raise ValueError(f"expected {name} in {tuple(options)}, got {getattr(est, name)!r}")
    _int_at_least("num_layers", est.num_layers, 0)
    _int_at_least("count_bins", est.count_bins, 2)
    _int_at_least("n_init", est.n_init, 1)
    _hidden_dims(est.hidden_dims)
    for name in ("max_steps", "batch_size"):
        if getattr(est, name) is not None:
            _int_at_least(name, getattr(est, name), 1)
    lr = est.learning_rate
    if lr is not None and not (isinstance(lr, numbers.Real) and lr > 0):
        raise ValueError(f"expected learning_rate None or > 0, got {lr!r}")
    if est.semi_supervised not in SEMI_SUPERVISED or not isinstance(
        est.semi_supervised, (str, bool)
    ):
        raise ValueError(
            f"expected semi_supervised in {SEMI_SUPERVISED}, got {est.semi_supervised!r}"
        )
    rs = est.random_state
    if not (
        rs is None
        or (isinstance(rs, numbers.Integral) and not isinstance(rs, bool) and rs >= 0)
        or isinstance(rs, np.random.RandomState)
    ):
        raise ValueError(
            f"expected random_state None, an int >= 0 or a numpy.random.RandomState, got {rs!r}"
        )
    if not 0 <= est.validation_fraction < 1:
        raise ValueError(f"expected validation_fraction in [0, 1), got {est.validation_fraction!r}")
    if not est.weight_concentration > 0:
        raise ValueError(f"expected weight_concentration > 0, got {est.weight_concentration!r}")
    if not est.reg_covar >= 0:
        raise ValueError(f"expected reg_covar >= 0, got {est.reg_covar!r}")
    if not isinstance(est.verbose, (bool, numbers.Integral)):
        raise ValueError(f"expected verbose to be a bool or an int, got {est.verbose!r}")
    check_device(est.device)
    if est.capacities is not None:
        check_capacities(est.capacities, est.flow)


def check_device(device) -> None:
    """``device`` is "auto", None or anything ``torch.device`` takes that exists here."""
    if device is None or device == "auto":
        return
    import torch

    try:
        torch.empty(0, device=device)
    except Exception as err:  # torch raises RuntimeError, ValueError or AssertionError
        raise ValueError(
            f"expected device 'auto' or a usable torch device, got {device!r}: {err}"
        ) from None


def check_capacities(capacities, flow: str) -> None:
    caps = list(capacities) if isinstance(capacities, (list, tuple)) else None
    if not caps or not all(isinstance(c, dict) for c in caps):
        raise ValueError(
            f"expected capacities None or a non-empty list of dicts, got {capacities!r}"
        )
    for c in caps:
        bad = set(c) - set(CAPACITY_KEYS)
        if bad:
            raise ValueError(f"expected capacity keys in {CAPACITY_KEYS}, got {sorted(bad)}")
        if c.get("flow", flow) not in FLOWS:
            raise ValueError(f"expected flow in {FLOWS}, got {c['flow']!r}")
        _int_at_least("num_layers", c.get("num_layers", 0), 0)
        if "hidden_dims" in c:
            _hidden_dims(c["hidden_dims"])
        if "count_bins" in c:
            _int_at_least("count_bins", c["count_bins"], 2)
        wd = c.get("weight_decay", 0.0)
        if not (isinstance(wd, numbers.Real) and wd >= 0):
            raise ValueError(f"expected weight_decay >= 0, got {wd!r}")


def check_y(y, n: int, n_components: int, semi_supervised) -> np.ndarray | None:
    """The labels ``fit`` uses: None, or (N,) int64 with -1 for unlabelled rows."""
    if y is None or semi_supervised is False:
        if semi_supervised is True:
            raise ValueError("expected y (-1 = unlabelled) with semi_supervised=True, got None")
        return None
    y = np.asarray(y)
    if y.shape != (n,):
        raise ValueError(f"expected y of shape ({n},) (one label per row), got {y.shape}")
    if semi_supervised == "auto" and not (y.dtype.kind in "iuf" and np.any(y == -1)):
        return None  # no row marked unlabelled: a labelled y from a meta-estimator, ignored
    if y.dtype.kind not in "iu":
        if y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
            y = y.astype(np.int64)
        else:
            raise ValueError(f"expected integer labels in y (-1 = unlabelled), got {y.dtype}")
    bad = (y < -1) | (y >= n_components)
    if bad.any():
        raise ValueError(
            f"expected labels in [0, n_components={n_components}) or -1 for unlabelled, "
            f"got {np.unique(y[bad]).tolist()}"
        )
    if not (y == -1).any():
        raise ValueError(
            "expected some unlabelled rows (y == -1) with semi_supervised=True, got only "
            "labels; semi-supervised fitting needs both (semi_supervised='auto' ignores a "
            "fully labelled y)"
        )
    return y.astype(np.int64)
