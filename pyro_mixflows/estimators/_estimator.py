"""scikit-learn-style estimators built on the Pyro model, guide and fit loop."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClusterMixin, DensityMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from . import _estimator_params, _pipeline
from ._estimator_params import ARCHITECTURE
from ._pipeline import EFFECTIVE_WEIGHT_THRESHOLD
from .distributions import FlowMixture
from .flows import FlowComponents, RescaledComponents
from .infer._checkpoint import atomic_save
from .models.vmonf import VMoNF, paper_temperature

# /2: full affine maps per component (files of /1 hold elementwise ones and are refused)
_FORMAT = "pyro_mixflows.VariationalFlowMixture/2"


def _plain(value):
    """A NumPy scalar as the Python number it holds; anything else unchanged."""
    return value.item() if isinstance(value, np.generic) else value


def _plain_value(value):
    """Plain Python values for ``torch.load(weights_only=True)``: NumPy scalars unwrapped, in
    sequences (as tuples) and dicts too."""
    if isinstance(value, dict):
        return {k: _plain_value(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return tuple(_plain_value(x) for x in value)
    return _plain(value)


class VariationalFlowMixture(ClusterMixin, DensityMixin, BaseEstimator):
    """A mixture of normalizing flows with the interface of scikit-learn's ``GaussianMixture``.

    Fits VMoNF (Pires & Figueiredo, 2020, arXiv:2009.00585) with this package's Pyro model,
    guide and fit loop. Every component is a full affine map (any full-covariance Gaussian)
    under flow layers that start at the identity, so the mixture contains the Gaussian mixture.
    The fit, in stages: data standardized per feature and ``validation_fraction`` of the rows
    held out; starts (EM's Gaussian mixture with ``n_init`` restarts, and the spectral partition
    where clusters are apart); from every start, its Gaussian mixture as it is and the flows of
    every capacity, trained on the exact ELBO with held-out early stopping; kept: the best on
    the held-out rows, never worse there than the Gaussian start (a kept EM start is then
    refitted on every row, i.e. it is ``GaussianMixture``'s fit). A large gap between training
    and held-out log-likelihood is warned about. ``y`` follows scikit-learn's semi-supervised
    convention (-1 = unlabelled).

    A scikit-learn estimator (``BaseEstimator`` with ``ClusterMixin`` and ``DensityMixin``):
    ``get_params``/``set_params``/``clone``, ``fit_predict``, ``labels_`` (the training rows'
    clusters), ``n_features_in_`` and ``feature_names_in_``; it works in ``Pipeline``,
    ``GridSearchCV`` and ``cross_val_score``. ``score`` is the mean log-density (so model
    selection by default maximizes held-out likelihood); clustering metrics such as
    ``scoring="adjusted_rand_score"`` compare ``predict`` with ``y``.

    **What ``y`` does.** With ``semi_supervised="auto"`` (default) ``y`` follows
    scikit-learn's semi-supervised convention: a ``y`` that marks some rows unlabelled with -1
    pins the labelled rows to their components (labels in [0, n_components)); a ``y`` without
    any -1 (what ``GridSearchCV`` or ``cross_val_score`` pass from a labelled data set) is
    ignored, as by scikit-learn's other clusterers. ``semi_supervised=True`` always uses ``y``
    (it must then hold -1 rows), ``False`` always ignores it.

    Args:
        n_components: K >= 1.
        flow: component flow family, one of ``pyro_mixflows.flows.FLOWS``.
        num_layers, hidden_dims, count_bins: component architecture (see ``FlowComponents``).
        weights: "learned", "uniform", "dirichlet" or "dirichlet_process" (see ``VMoNF``); with
            "dirichlet_process", ``n_components`` is the truncation T and
            ``effective_n_components_`` counts the components with weight >= 1%.
        weight_concentration: Dirichlet / Dirichlet-process concentration.
        merge: Dirichlet-process fits only. "density" (default): the truncation's T components
            are first fitted as Gaussians (a DP mixture of T affine flows from a T-way spectral
            start), components whose points are joined through dense regions of that fit are
            grouped (``pyro_mixflows.models.density_connected_groups``), and the flows are then
            fitted as a DP mixture with one component per group, started at the groups; the
            fitted model has ``n_components_`` = the number of groups. The variational
            Dirichlet-process Gaussian mixture truncated at T (scikit-learn's
            ``BayesianGaussianMixture``; start "em_dp", ``n_components_`` = T) is a candidate
            too: clusters that overlap are joined by density connectivity, and there it
            predicts the held-out rows better. None: one DP fit with T flow components
            (flexible flows tend to split one cluster into several).
        merge_ratio: in (0, 1], the ``ratio`` of ``density_connected_groups``.
        assignment: "enumerate" (z summed out in the model; exact) or "amortized" (the paper's
            q(k | x) network, enumerated in the guide, with ``temperature_schedule``).
        init: the start. "auto" (default): EM's Gaussian mixture (full covariances, or
            diagonal ones when 5-fold cross-validation finds them clearly better), and also the
            spectral partition when its clusters are apart (normalized cut per cluster on the
            10-NN graph below ``_stages.CLEAN_NCUT_PER_CLUSTER``) and differ from EM's
            (adjusted Rand index below ``_pipeline.SAME_START_ARI``); both are tried and compared
            on the held-out rows, and when these cannot tell them apart (within two standard
            errors) the spectral start is kept. "em": EM only. "spectral", "kmeans", "random":
            that initial partition only (moments per cluster, then pre-training on it). With
            labelled rows or Dirichlet-process weights, "auto" and "em" mean "spectral".
        n_init: EM restarts for the Gaussian start (as in ``GaussianMixture``).
        reg_covar: added to the diagonal of EM's covariances (standardized units).
        capacities: flow capacities to try from every start, each a dict overriding any of
            "flow", "num_layers", "hidden_dims", "count_bins", "weight_decay"; e.g.
            ``[{"num_layers": 2, "hidden_dims": (16,)}, {"weight_decay": 1e-3}]``. None: the
            constructor's architecture alone. Every start's Gaussian mixture (no flow layers)
            is a candidate too; the candidate with the best held-out log-likelihood is kept,
            never one below the best Gaussian start, and on a tie (two standard errors) the one
            with fewer flow parameters. Each capacity costs one training per start.
        max_steps: training steps at most; init_steps: hard-assignment pre-training steps.
        batch_size: minibatch size (None: full batch).
        learning_rate: Adam step size.
        weight_decay: Adam's L2 penalty on all parameters (helps many-feature data with few
            points per component, where flows overfit).
        plateau_lr_factor: when the held-out loss stops improving, training goes on once more
            from the best parameters at ``learning_rate * plateau_lr_factor`` with the same
            early stopping (None: stop at the first plateau). A training run whose first
            plateau is still behind a candidate built before it (a Gaussian start, or flows
            from another start or capacity) on the held-out rows is not refined.
        validation_fraction: share of rows held out for early stopping (0 disables it).
        patience: evaluations without improvement before stopping; eval_every: steps between them.
        supervised_scale: weight of the classifier's supervised term (amortized, labelled rows).
        semi_supervised: "auto", True or False: when ``fit`` uses ``y`` (see above).
        random_state: None, an int or a ``numpy.random.RandomState``; the same int gives the
            same fit (a ``RandomState`` gives one seed per ``fit``, drawn from it).
        device: torch device for training and scoring.
        progress_bar: show a tqdm bar while training.
        compile: ``torch.compile`` the flow pass of the training steps: "auto" (default: once
            a training run has spent as long eagerly as a compile is expected to take, 300 s
            on a CPU, and its remaining planned steps pay the compile back, see
            ``pyro_mixflows.infer._compile``; shorter fits, the demo's among them, stay eager),
            True or False.
            The first compiled step's wall time is ``fit_result_.compile_time``.

    Attributes:
        labels_: (N,) component of every training row (``predict`` on the training data).
        distribution_: the fitted density in data units, a ``FlowMixture`` (see its docstring).
        mixture_: the fitted density on the standardized scale.
        weights_: (K,) mixing weights.
        n_components_: components in the fitted model (the groups of a merged DP fit).
        n_features_in_: D, the number of features seen in ``fit``.
        feature_names_in_: the column names of a DataFrame given to ``fit``.
        converged_: whether training stopped on the held-out criterion, not at ``max_steps``.
        n_iter_: training steps taken.
        lower_bound_: the final ELBO per row on the training rows, in data units.
        validation_log_likelihood_: held-out log-likelihood per row of the fitted model.
        start_: the kept start ("em", "spectral", ...).
        capacity_: the kept capacity (``{"num_layers": 0}`` = the Gaussian start itself).
        candidates_: start, capacity, held-out log-likelihood (standardized units) and training
            steps of every candidate tried.

    Example::

        >>> X, y = make_two_moons(500, seed=0)
        >>> model = VariationalFlowMixture(2, random_state=0, max_steps=200).fit(X)
        >>> model.predict(X).shape, model.score_samples(X).shape
        ((500,), (500,))
    """

    def __init__(
        self,
        n_components: int = 1,
        *,
        flow: str = "spline_coupling",
        num_layers: int = 4,
        hidden_dims: Sequence[int] = (32, 32),
        count_bins: int = 8,
        weights: str = "learned",
        weight_concentration: float = 1.0,
        merge: str | None = "density",
        merge_ratio: float = 0.25,
        assignment: str = "enumerate",
        init: str = "auto",
        n_init: int = 5,
        reg_covar: float = 1e-6,
        capacities: Sequence[dict] | None = None,
        max_steps: int = 4000,
        init_steps: int = 300,
        batch_size: int | None = 256,
        learning_rate: float = 5e-4,
        weight_decay: float = 0.0,
        plateau_lr_factor: float | None = 0.1,
        validation_fraction: float = 0.1,
        patience: int = 6,
        eval_every: int = 50,
        temperature_schedule: Callable[[int], float] | None = paper_temperature,
        supervised_scale: float = 1.0,
        semi_supervised: bool | str = "auto",
        random_state: int | np.random.RandomState | None = None,
        device: str | torch.device | None = None,
        progress_bar: bool = False,
        compile: bool | str = "auto",
    ) -> None:
        self.n_components = n_components
        self.flow = flow
        self.num_layers = num_layers
        self.hidden_dims = hidden_dims
        self.count_bins = count_bins
        self.weights = weights
        self.weight_concentration = weight_concentration
        self.merge = merge
        self.merge_ratio = merge_ratio
        self.assignment = assignment
        self.init = init
        self.n_init = n_init
        self.reg_covar = reg_covar
        self.capacities = capacities
        self.max_steps = max_steps
        self.init_steps = init_steps
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.plateau_lr_factor = plateau_lr_factor
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.eval_every = eval_every
        self.temperature_schedule = temperature_schedule
        self.supervised_scale = supervised_scale
        self.semi_supervised = semi_supervised
        self.random_state = random_state
        self.device = device
        self.progress_bar = progress_bar
        self.compile = compile

    # --- configuration ----------------------------------------------------------------------
    def _check_params(self) -> None:
        _estimator_params.check_params(self)

    def _check_y(self, y, n: int) -> np.ndarray | None:
        return _estimator_params.check_y(self, y, n)

    def _seed(self) -> int:
        """One int seed for this fit, so that every stage sees the same validation rows."""
        rs = self.random_state
        if rs is None:
            return int(np.random.SeedSequence().entropy % 2**31)
        if isinstance(rs, np.random.RandomState):
            return int(rs.randint(2**31))
        return int(rs)

    def _validate_X(self, X, reset: bool) -> np.ndarray:
        """X as a C-contiguous float64 (N, D) array (scikit-learn's checks and messages)."""
        try:
            X = validate_data(self, X, reset=reset, dtype=np.float64, ensure_min_samples=1)
        except ValueError as err:  # scikit-learn's message, which its own checks look for
            raise ValueError(
                f"expected X as a finite real array of shape (N, D), got: {err}"
            ) from None
        # torch refuses negative strides (X[::-1]) and warns on read-only arrays: copy those.
        return np.require(X, requirements=["C", "W"])

    # --- fitting ----------------------------------------------------------------------------
    def _tensor(self, X: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(X, dtype=torch.get_default_dtype(), device=self.device)

    def _standardize(self, X: np.ndarray) -> torch.Tensor:
        # Inputs follow the fitted model's dtype, whatever the default dtype is now.
        x = torch.as_tensor(X, dtype=self._mean.dtype, device=self._mean.device)
        return (x - self._mean) / self._scale

    def _architecture(self, capacity: dict | None = None) -> dict:
        """The component architecture: the constructor's, with a capacity's overrides."""
        arch = dict(
            flow=self.flow,
            num_layers=self.num_layers,
            hidden_dims=tuple(self.hidden_dims),
            count_bins=self.count_bins,
        )
        arch.update({k: v for k, v in (capacity or {}).items() if k in ARCHITECTURE})
        return arch

    def _build(self, D: int, K: int | None = None, capacity: dict | None = None) -> VMoNF:
        components = FlowComponents(
            self.n_components if K is None else K, D, affine="full", **self._architecture(capacity)
        )
        return VMoNF(
            components,
            weights=self.weights,
            concentration=self.weight_concentration,
            assignment=self.assignment,
            temperature_schedule=self.temperature_schedule,
            supervised_scale=self.supervised_scale,
        )

    def fit(self, X, y=None) -> VariationalFlowMixture:
        """Fit to X (N, D); ``y`` (N,) as the class docstring says (ignored unless it has -1s).

        The stages (``pyro_mixflows._pipeline``, ``pyro_mixflows._stages``): hold out
        ``validation_fraction`` of the rows; build the starts (EM's Gaussian mixture and, where
        it helps, a spectral partition, see ``init``); for every start, its Gaussian mixture as
        it is, and flows on top of it (each capacity) trained on the ELBO with held-out early
        stopping; keep the candidate with the best held-out log-likelihood, never one below the
        Gaussian start's (``_stages.select``).

        Args:
            X: data, array-like (N, D) (a pandas DataFrame records ``feature_names_in_``).
            y: None or (N,) labels with -1 for unlabelled rows (see "What ``y`` does").

        Returns:
            self, fitted.

        Raises:
            ValueError: a bad parameter, X or y, before any training.
        """
        self._check_params()
        X = self._validate_X(X, reset=True)
        N, D = X.shape
        K = self.n_components
        if self.weights == "dirichlet_process" and K < 2:
            raise ValueError(f"expected n_components (the truncation) >= 2 for a DP, got {K}")
        if N < max(2, K):
            raise ValueError(
                f"expected at least max(2, n_components)={max(2, K)} rows, got {N} sample(s)"
            )
        y = self._check_y(y, N)
        capacities = self._capacities()
        if D < 2 and any(
            a["flow"] != "maf" and a["num_layers"] > 0 for a in map(self._architecture, capacities)
        ):
            raise ValueError(
                f"expected D >= 2 for flow={self.flow!r}, got {D} feature(s); use flow='maf'"
            )
        self._fit_stages(X, y, self._seed(), capacities)
        with torch.no_grad():
            self.labels_ = self._proba(self._standardize(X)).argmax(-1).cpu().numpy()
        return self

    def fit_predict(self, X, y=None) -> np.ndarray:
        """``fit(X, y)``, then the training rows' components ``labels_``: (N, D) -> (N,)."""
        return self.fit(X, y).labels_

    def _fit_stages(
        self, X: np.ndarray, y: np.ndarray | None, seed: int, capacities: list[dict]
    ) -> None:
        """The fit on checked inputs: the DP merge stage when asked, then the stages."""
        K = self.n_components
        self.merge_groups_ = None
        stage_labels = None
        if (
            self.weights == "dirichlet_process"
            and self.merge == "density"
            and (y is None or not bool((y >= 0).any()))
        ):
            stage_labels, K = _pipeline.merge_stage(self, X, seed)
        _pipeline.run(self, X, y, K, stage_labels, seed, capacities)

    def _capacities(self) -> list[dict]:
        """The flow capacities to try from every start ({} = the constructor's architecture)."""
        if self.capacities is None:
            return [{}]
        return [dict(c) for c in self.capacities]

    @property
    def effective_n_components_(self) -> int:
        """Components with weight >= ``EFFECTIVE_WEIGHT_THRESHOLD`` (1%)."""
        return int((self.weights_ >= EFFECTIVE_WEIGHT_THRESHOLD).sum())

    # --- reading the fit --------------------------------------------------------------------
    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "module_")

    def _check_fitted(self) -> None:
        check_is_fitted(self)  # sklearn.exceptions.NotFittedError (a ValueError)

    def _check_X(self, X) -> torch.Tensor:
        """Checked rows on the standardized scale, in the model's dtype: (N, D)."""
        self._check_fitted()
        return self._standardize(self._validate_X(X, reset=False))

    @property
    def mixture_(self) -> FlowMixture:
        """The fitted density on the standardized scale."""
        self._check_fitted()
        return self.module_.mixture()

    @property
    def distribution_(self) -> FlowMixture:
        r"""The fitted density in data units: a ``FlowMixture`` of ``RescaledComponents``.

        Every component ends with the un-standardization :math:`x = \mu + \sigma \odot x_s`
        (:math:`\mu, \sigma` the training mean and standard deviation per feature), so
        ``distribution_.log_prob(x)`` equals ``score_samples(x)``, and its samples,
        responsibilities and ``LatentMALA(est.distribution_)`` draws are in data units.
        """
        self._check_fitted()
        comps = RescaledComponents(self.module_.components, self._mean, self._scale)
        return FlowMixture(comps, logits=self.mixture_.logits)

    @property
    def weights_(self) -> np.ndarray:
        self._check_fitted()
        return self.module_.weight_logits_estimate().exp().cpu().numpy()

    @torch.no_grad()
    def predict_proba(self, X) -> np.ndarray:
        """p(k | x) under the fitted mixture: (N, D) -> (N, K).

        For a Dirichlet-process fit, components below the effective-weight threshold get
        probability 0 and the rest are renormalized, so no point lands on an empty component.
        """
        return self._proba(self._check_X(X)).cpu().numpy()

    def _proba(self, xs: torch.Tensor) -> torch.Tensor:
        """``predict_proba`` on standardized rows: (N, D) -> (N, K)."""
        mixture = self.mixture_
        joint = mixture.logits + mixture.component_log_probs(xs)  # (N, K)
        if self.weights == "dirichlet_process":
            keep = torch.as_tensor(self.weights_ >= EFFECTIVE_WEIGHT_THRESHOLD, device=joint.device)
            joint = joint.masked_fill(~keep, -float("inf"))
        return torch.softmax(joint, -1)

    def predict(self, X) -> np.ndarray:
        """Most probable component of each row: (N, D) -> (N,)."""
        return self.predict_proba(X).argmax(-1)

    @torch.no_grad()
    def score_samples(self, X) -> np.ndarray:
        """log p(x) in the data's own units: (N, D) -> (N,)."""
        xs = self._check_X(X)
        return (self.mixture_.log_prob(xs) - self._scale.log().sum()).cpu().numpy()

    def score(self, X, y=None) -> float:
        """Mean log-density of the rows of X."""
        return float(self.score_samples(X).mean())

    @torch.no_grad()
    def sample(self, n_samples: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``(X, labels)``: (n, D) and (n,)."""
        self._check_fitted()
        if not isinstance(n_samples, (int, np.integer)) or n_samples < 1:
            raise ValueError(f"expected n_samples to be an int >= 1, got {n_samples!r}")
        x, z = self.mixture_.sample_with_components((int(n_samples),))
        x = x * self._scale + self._mean
        return x.cpu().numpy(), z.cpu().numpy()

    def _n_parameters(self) -> int:
        comps = self.module_.components
        n = sum(p.numel() for p in comps.parameters())
        n -= comps.num_components * comps.dim * (comps.dim - 1) // 2  # the unused upper triangle
        return n + (self.n_components_ - 1 if self.weights != "uniform" else 0)

    def bic(self, X) -> float:
        """Bayesian information criterion on X (lower is better): ``-2 N score(X) + p log N``.

        ``p`` counts every trainable number of the components: the full affine maps
        (D + D(D + 1)/2 each, what a full-covariance Gaussian mixture counts), every weight of
        every flow layer's conditioner network, and the K - 1 free mixture weights. Flow layers
        carry thousands of such numbers, far more than their effective degrees of freedom, so
        for flows BIC over-penalizes and prefers small K; to choose K compare held-out
        likelihood instead (``pyro_mixflows.select_n_components``). For a fit that kept its
        Gaussian start (``num_layers_ == 0``) it is the Gaussian mixture's BIC.
        """
        n = len(self._check_X(X))
        return -2 * self.score(X) * n + self._n_parameters() * math.log(n)

    def aic(self, X) -> float:
        """Akaike information criterion on X (lower is better): ``-2 N score(X) + 2 p``, with
        ``p`` counted as in ``bic`` (and with its caveat for flows)."""
        return -2 * self.score(X) * len(self._check_X(X)) + 2 * self._n_parameters()

    # --- persistence ------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write the fitted model to ``path`` atomically (a crash never leaves half a file)."""
        self._check_fitted()
        params = self.get_params()
        if params["temperature_schedule"] is not paper_temperature:
            params["temperature_schedule"] = (
                None if params["temperature_schedule"] is None else "custom"
            )
        else:
            params["temperature_schedule"] = "paper"
        params["device"] = None
        if not isinstance(params["random_state"], (int, np.integer, type(None))):
            params["random_state"] = None  # a RandomState is not a plain value
        # Plain Python values only, so that ``load`` can read the file with weights_only=True.
        params = {k: _plain_value(v) for k, v in params.items()}
        state = {
            "format": _FORMAT,
            "params": params,
            "n_features_in": self.n_features_in_,
            "feature_names": [str(c) for c in getattr(self, "feature_names_in_", [])] or None,
            "n_components": int(self.n_components_),
            "num_layers": int(self.num_layers_),
            "capacity": {k: _plain_value(v) for k, v in self.capacity_.items()},
            "validation_log_likelihood": float(self.validation_log_likelihood_),
            "mean": self._mean.cpu(),
            "scale": self._scale.cpu(),
            "module": {k: v.cpu() for k, v in self.module_.state_dict().items()},
            "converged": self.converged_,
            "n_iter": self.n_iter_,
            "lower_bound": float(self.lower_bound_),
        }
        atomic_save(state, path)

    @classmethod
    def load(cls, path: str | os.PathLike, *, device=None) -> VariationalFlowMixture:
        """Read a model written by ``save``; raises ``ValueError`` on a corrupt or foreign file.

        The file is read with ``torch.load(weights_only=True)``: tensors and plain values only,
        so a crafted file cannot run code.
        """
        try:
            state = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise
        except Exception as err:
            raise ValueError(f"expected a pyro_mixflows model file at {path}: {err}") from None
        if not isinstance(state, dict) or state.get("format") != _FORMAT:
            raise ValueError(f"expected a pyro_mixflows model file at {path}, got another file")
        params = dict(state["params"])
        schedule = params.pop("temperature_schedule")
        params["temperature_schedule"] = paper_temperature if schedule == "paper" else None
        model = cls(**params)
        model.device = device
        model.n_features_in_ = state["n_features_in"]
        if state.get("feature_names"):
            model.feature_names_in_ = np.asarray(state["feature_names"], dtype=object)
        model._mean = state["mean"].to(device)
        model._scale = state["scale"].to(device)
        model.n_components_ = int(state.get("n_components", model.n_components))
        model.num_layers_ = int(state["num_layers"])
        model.capacity_ = dict(state["capacity"])
        model.validation_log_likelihood_ = float(state.get("validation_log_likelihood", math.nan))
        vm = model._build(model.n_features_in_, model.n_components_, model.capacity_)
        vm.load_state_dict(state["module"])
        model.module_ = vm.to(device).eval()
        model.converged_ = state["converged"]
        model.n_iter_ = state["n_iter"]
        model.lower_bound_ = state["lower_bound"]
        return model
