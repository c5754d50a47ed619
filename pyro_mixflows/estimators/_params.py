"""The parameter and label checks of ``VariationalFlowMixture`` (run by ``fit``, never by
``__init__``, as scikit-learn asks), with the option lists they check against."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np

from ._init import INIT_METHODS
from .flows import FLOWS
from .infer._compile import check_compile_option
from .models.vmonf import ASSIGNMENTS, WEIGHTS

# Dirichlet-process fits: how over-split components are merged before the final fit.
MERGES = ("density", None)
# How ``fit`` reads ``y`` (see the class docstring).
SEMI_SUPERVISED = ("auto", True, False)
# Starts: "auto" tries EM and the spectral partition; "em" is EM's Gaussian mixture alone.
INITS = ("auto", "em", *INIT_METHODS)
# The keys a capacity may override (plus "weight_decay").
ARCHITECTURE = ("flow", "num_layers", "hidden_dims", "count_bins")
CAPACITY_KEYS = (*ARCHITECTURE, "weight_decay")


def check_params(est) -> None:
    """Check every constructor parameter of ``est`` (called by ``fit``; raises ValueError)."""
    K = est.n_components
    if not isinstance(K, (int, np.integer)) or isinstance(K, bool) or K < 1:
        raise ValueError(f"expected n_components to be an int >= 1, got {K!r}")
    for name, options in (
        ("flow", FLOWS),
        ("weights", WEIGHTS),
        ("assignment", ASSIGNMENTS),
        ("init", INITS),
    ):
        if getattr(est, name) not in options:
            raise ValueError(f"expected {name} in {tuple(options)}, got {getattr(est, name)!r}")
    for name in ("max_steps", "eval_every", "patience"):
        value = getattr(est, name)
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"expected {name} to be an int >= 1, got {value!r}")
    if not isinstance(est.num_layers, (int, np.integer)) or est.num_layers < 0:
        raise ValueError(f"expected num_layers to be an int >= 0, got {est.num_layers!r}")
    dims = est.hidden_dims
    if (
        isinstance(dims, (str, bytes))
        or not isinstance(dims, Sequence)
        or not all(isinstance(h, numbers.Integral) and h >= 1 for h in dims)
    ):
        raise ValueError(
            f"expected hidden_dims to be a sequence of ints >= 1 such as (32, 32), got {dims!r}"
        )
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
    if not isinstance(est.init_steps, (int, np.integer)) or est.init_steps < 0:
        raise ValueError(f"expected init_steps to be an int >= 0, got {est.init_steps!r}")
    if est.batch_size is not None and (
        not isinstance(est.batch_size, (int, np.integer)) or est.batch_size < 1
    ):
        raise ValueError(f"expected batch_size None or an int >= 1, got {est.batch_size!r}")
    if not 0 <= est.validation_fraction < 1:
        raise ValueError(f"expected validation_fraction in [0, 1), got {est.validation_fraction!r}")
    if not est.learning_rate > 0:
        raise ValueError(f"expected learning_rate > 0, got {est.learning_rate!r}")
    factor = est.plateau_lr_factor
    if factor is not None and not 0 < factor < 1:
        raise ValueError(f"expected plateau_lr_factor None or in (0, 1), got {factor!r}")
    if not est.weight_decay >= 0:
        raise ValueError(f"expected weight_decay >= 0, got {est.weight_decay!r}")
    if est.merge not in MERGES:
        raise ValueError(f"expected merge in {MERGES}, got {est.merge!r}")
    if not 0 < est.merge_ratio <= 1:
        raise ValueError(f"expected merge_ratio in (0, 1], got {est.merge_ratio!r}")
    if not isinstance(est.n_init, (int, np.integer)) or est.n_init < 1:
        raise ValueError(f"expected n_init to be an int >= 1, got {est.n_init!r}")
    if not est.reg_covar >= 0:
        raise ValueError(f"expected reg_covar >= 0, got {est.reg_covar!r}")
    if est.capacities is not None:
        caps = list(est.capacities)
        if not caps or not all(isinstance(c, dict) for c in caps):
            raise ValueError(f"expected capacities None or a non-empty list of dicts, got {caps!r}")
        for c in caps:
            bad = set(c) - set(CAPACITY_KEYS)
            if bad:
                raise ValueError(f"expected capacity keys in {CAPACITY_KEYS}, got {sorted(bad)}")
            if c.get("flow", est.flow) not in FLOWS:
                raise ValueError(f"expected flow in {FLOWS}, got {c['flow']!r}")
            layers = c.get("num_layers", 0)
            if not isinstance(layers, (int, np.integer)) or layers < 0:
                raise ValueError(f"expected num_layers to be an int >= 0, got {layers!r}")
            if not c.get("weight_decay", 0) >= 0:
                raise ValueError(f"expected weight_decay >= 0, got {c['weight_decay']!r}")
    check_compile_option(est.compile)


def check_y(est, y, n: int) -> np.ndarray | None:
    """The labels ``fit`` uses: None, or (N,) int64 with -1 for unlabelled rows."""
    if y is None or est.semi_supervised is False:
        if est.semi_supervised is True:
            raise ValueError("expected y (-1 = unlabelled) with semi_supervised=True, got None")
        return None
    y = np.asarray(y)
    if y.shape != (n,):
        raise ValueError(f"expected y of shape ({n},) (one label per row), got {y.shape}")
    if est.semi_supervised == "auto" and not (y.dtype.kind in "iuf" and np.any(y == -1)):
        return None  # no row marked unlabelled: a labelled y from a meta-estimator, ignored
    if y.dtype.kind not in "iu":
        if y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
            y = y.astype(np.int64)
        else:
            raise ValueError(f"expected integer labels in y (-1 = unlabelled), got {y.dtype}")
    bad = (y < -1) | (y >= est.n_components)
    if bad.any():
        raise ValueError(
            f"expected labels in [0, n_components={est.n_components}) or -1 for unlabelled, "
            f"got {np.unique(y[bad]).tolist()}"
        )
    if not (y == -1).any():
        raise ValueError(
            "expected some unlabelled rows (y == -1) with semi_supervised=True, got only "
            "labels; semi-supervised fitting needs both (semi_supervised='auto' ignores a "
            "fully labelled y)"
        )
    return y.astype(np.int64)
