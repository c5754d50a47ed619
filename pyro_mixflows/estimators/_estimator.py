"""``VariationalFlowMixture``: the scikit-learn estimator built on the Pyro model and fit loop."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClusterMixin, DensityMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from ..distributions import FlowMixture
from ..flows import RescaledComponents
from ..models.vmonf import VMoNF
from . import _persist
from ._data import Settings
from ._fit import EFFECTIVE_WEIGHT_THRESHOLD, MIN_VALIDATION_ROWS, fit_mixture
from ._params import check_params, check_y

# A component is reported dead when its weight falls below this fraction of 1/K.
DEAD_WEIGHT_FRACTION = 0.01
# Warn when the training log-likelihood per row exceeds the held-out one by more than this many
# nats per feature (beyond two standard errors of the held-out mean).
OVERFIT_GAP_PER_FEATURE = 1.0


class VariationalFlowMixture(ClusterMixin, DensityMixin, BaseEstimator):
    """A mixture of normalizing flows with the interface of scikit-learn's ``GaussianMixture``.

    .. math:: p(x) = \\sum_{k=1}^K w_k\\, p_k(x), \\qquad p_k = \\text{a flow whose last map is a
              full affine map } x = \\mu_k + L_k u,

    fitted as VMoNF (Variational Mixture of Normalizing Flows, Pires & Figueiredo, 2020,
    arXiv:2009.00585) with this package's Pyro model and fit loop. With its flow layers at the
    identity every component is any full-covariance Gaussian, so the mixture contains the Gaussian
    mixture, and the fit starts from one: EM's (``n_init`` restarts) and, where clusters are apart,
    the spectral partition's. From every start, the flows of every capacity train side by side on
    the exact likelihood, with held-out early stopping; a candidate that cannot catch the best
    model so far stops early. Kept: the best on the held-out rows, never worse there than the
    Gaussian start (a kept EM start is refitted on every row, i.e. it is ``GaussianMixture``'s
    fit). Step sizes and budgets follow the data unless set.

    A scikit-learn estimator: ``get_params``/``set_params``/``clone``, ``fit_predict``,
    ``labels_``, ``n_features_in_``, ``feature_names_in_``; it works in ``Pipeline``,
    ``GridSearchCV`` and ``cross_val_score``. ``score`` is the mean log-density, so model selection
    by default maximizes held-out likelihood.

    **What ``y`` does.** With ``semi_supervised="auto"`` (default) a ``y`` that marks some rows
    unlabelled with -1 pins the labelled rows to their components (labels in [0, n_components));
    a ``y`` without any -1 (what ``GridSearchCV`` passes from a labelled data set) is ignored, as
    by scikit-learn's other clusterers. ``True`` always uses ``y`` (it must hold -1 rows),
    ``False`` always ignores it.

    Args:
        n_components: K >= 1 (with ``weights="dirichlet_process"``, the truncation T).
        flow: component flow family, one of ``pyro_mixflows.flows.FLOWS``.
        num_layers: flow layers per component on top of its affine map (0: Gaussian mixture).
        hidden_dims: hidden sizes of each layer's conditioner network.
        count_bins: spline bins ("spline_coupling").
        capacities: flow capacities to try from every start, each a dict overriding any of
            "flow", "num_layers", "hidden_dims", "count_bins", "weight_decay" (Adam's L2 penalty),
            e.g. ``[{"num_layers": 2, "hidden_dims": (16,)}, {"weight_decay": 1e-3}]``; None: the
            constructor's architecture alone. The best on held-out rows is kept; on a tie (two
            standard errors) the one with fewer flow parameters.
        weights: "learned", "uniform", "dirichlet" or "dirichlet_process" (see ``VMoNF``).
        weight_concentration: Dirichlet / Dirichlet-process concentration.
        assignment: "enumerate" (z summed out in the model; exact) or "amortized" (the paper's
            q(k | x) network, enumerated in the guide, with its temperature schedule).
        init: "auto" (EM, plus the spectral partition where its clusters are apart), "em",
            "spectral", "kmeans" or "random". With labelled rows or Dirichlet-process weights,
            "auto" and "em" mean "spectral".
        n_init: EM restarts for the Gaussian start (as in ``GaussianMixture``).
        reg_covar: added to the diagonal of EM's covariances (standardized units).
        max_steps: training steps at most; None: from the number of rows.
        batch_size: rows per step; None: every row up to 1024 training rows, 256 above.
        learning_rate: Adam's step size; None: 2e-3 for full batches, 1e-3 for minibatches.
        validation_fraction: share of rows held out for early stopping and every choice.
        semi_supervised: "auto", True or False: when ``fit`` uses ``y`` (see above).
        random_state: None, an int or a ``numpy.random.RandomState``; an int gives the same fit.
        device: "auto" (CUDA when available, else the CPU), None (the CPU) or a torch device.
        verbose: show a progress bar for every training run.

    Attributes:
        labels_: (N,) component of every training row.
        distribution_: the fitted density in data units, a ``FlowMixture``.
        mixture_: the fitted density on the standardized scale (``module_``: its ``VMoNF``).
        weights_: (K,) mixing weights (``n_components_`` of them).
        start_: the kept start ("em", "em_diag", "spectral", ...).
        capacity_: the kept capacity (``{"num_layers": 0}`` = the Gaussian start itself, with
            ``num_layers_`` flow layers).
        candidates_: start, capacity, held-out log-likelihood (standardized units), training steps
            and why training stopped, for every candidate tried.
        fit_stats_: where the fit's time went: ``{"seconds": {stage: s}, "device": ...,
            "budget": {...}, "steps": total training steps}``.
        fit_result_: the kept candidate's training history (``FitResult``; None when the kept
            model was not trained, e.g. EM's Gaussian mixture).
        clusters_from_: "flows", or "gaussian start" where flows kept from EM's start moved the
            core of a cluster into another component: ``predict`` then reports EM's clusters (with
            a warning); ``core_agreement_`` is the share of EM's confidently assigned training
            rows that the flows keep in their component (NaN where not measured).
        converged_: whether training stopped on the held-out criterion (``n_iter_`` steps).
        lower_bound_: the final log-likelihood (or ELBO) per training row, in data units.
        validation_log_likelihood_: held-out log-likelihood per row of the fitted model.
        feature_mean_: (D,) the per-feature mean of the standardization (and
            ``feature_scale_``, the standard deviation).
        n_features_in_: as in scikit-learn (and ``feature_names_in_``).

    Example::

        >>> X, y = make_two_moons(500, seed=0)
        >>> model = VariationalFlowMixture(2, random_state=0).fit(X)
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
        capacities: Sequence[dict] | None = None,
        weights: str = "learned",
        weight_concentration: float = 1.0,
        assignment: str = "enumerate",
        init: str = "auto",
        n_init: int = 5,
        reg_covar: float = 1e-6,
        max_steps: int | None = None,
        batch_size: int | None = None,
        learning_rate: float | None = None,
        validation_fraction: float = 0.1,
        semi_supervised: bool | str = "auto",
        random_state: int | np.random.RandomState | None = None,
        device: str | torch.device | None = "auto",
        verbose: bool = False,
    ) -> None:
        self.n_components = n_components
        self.flow = flow
        self.num_layers = num_layers
        self.hidden_dims = hidden_dims
        self.count_bins = count_bins
        self.capacities = capacities
        self.weights = weights
        self.weight_concentration = weight_concentration
        self.assignment = assignment
        self.init = init
        self.n_init = n_init
        self.reg_covar = reg_covar
        self.max_steps = max_steps
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.validation_fraction = validation_fraction
        self.semi_supervised = semi_supervised
        self.random_state = random_state
        self.device = device
        self.verbose = verbose

    # --- fitting ----------------------------------------------------------------------------
    def _settings(self) -> Settings:
        """The parameters as the fit's stages read them (checked first)."""
        check_params(self)
        capacities = [{}] if self.capacities is None else [dict(c) for c in self.capacities]
        return Settings(
            n_components=int(self.n_components),
            architecture=dict(
                flow=self.flow,
                num_layers=int(self.num_layers),
                hidden_dims=tuple(int(h) for h in self.hidden_dims),
                count_bins=int(self.count_bins),
            ),
            capacities=capacities,
            weights=self.weights,
            weight_concentration=float(self.weight_concentration),
            assignment=self.assignment,
            init=self.init,
            n_init=int(self.n_init),
            reg_covar=float(self.reg_covar),
            max_steps=self.max_steps,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            validation_fraction=float(self.validation_fraction),
            device=resolve_device(self.device),
            verbose=bool(self.verbose),
        )

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

    def fit(self, X, y=None) -> VariationalFlowMixture:
        """Fit to X (N, D); ``y`` (N,) as the class docstring says (ignored unless it has -1s).

        Args:
            X: data, array-like (N, D) (a pandas DataFrame records ``feature_names_in_``).
            y: None or (N,) labels with -1 for unlabelled rows (see "What ``y`` does").

        Returns:
            self, fitted.

        Raises:
            ValueError: a bad parameter, X or y, before any training.
        """
        settings = self._settings()
        X = self._validate_X(X, reset=True)
        N, D = X.shape
        K = settings.n_components
        if self.weights == "dirichlet_process" and K < 2:
            raise ValueError(f"expected n_components (the truncation) >= 2 for a DP, got {K}")
        if N < max(2, K):
            raise ValueError(
                f"expected at least max(2, n_components)={max(2, K)} rows, got {N} sample(s)"
            )
        y = check_y(y, N, K, self.semi_supervised)
        if D < 2 and any(
            a["flow"] != "maf" and a["num_layers"] > 0
            for a in map(settings.architecture_of, settings.capacities)
        ):
            raise ValueError(
                f"expected D >= 2 for flow={self.flow!r}, got {D} feature(s); use flow='maf'"
            )
        constant = np.flatnonzero(np.ptp(X, axis=0) == 0)
        if len(constant):
            warnings.warn(
                f"feature(s) {constant.tolist()} of X take one value only: every component's "
                "density is a spike there, so any other value scores as nearly impossible; drop "
                "them (or add noise of their recording step, as for rounded data)",
                stacklevel=2,
            )
        outcome = fit_mixture(X, y, settings, self._seed())
        self.module_ = outcome.module
        self._mean, self._scale = outcome.mean, outcome.scale
        self.n_components_ = int(outcome.module.components.num_components)
        self.num_layers_ = outcome.num_layers
        self.capacity_ = outcome.capacity
        self.start_ = outcome.start
        self.candidates_ = outcome.candidates
        self.fit_result_ = outcome.result
        self.converged_ = bool(outcome.converged)
        self.n_iter_ = outcome.n_iter
        self.lower_bound_ = outcome.lower_bound
        self.validation_log_likelihood_ = outcome.validation_log_likelihood
        self.merge_groups_ = outcome.merge_groups
        self.cluster_module_ = outcome.cluster_module
        self.clusters_from_ = "flows" if outcome.cluster_module is None else "gaussian start"
        self.core_agreement_ = outcome.core_agreement
        self.fit_stats_ = {
            "seconds": dict(outcome.seconds),
            "device": str(settings.device),
            "budget": outcome.budget,
            "steps": int(sum(c["steps"] for c in outcome.candidates)),
        }
        with torch.no_grad():
            self.labels_ = self._proba(self._standardize(X)).argmax(-1).cpu().numpy()
        _warn_overfit(*outcome.overfit_gap, D)
        if outcome.flows_untried is not None:
            warnings.warn(
                f"only {outcome.flows_untried} row{'' if outcome.flows_untried == 1 else 's'} held "
                f"out (validation_fraction={self.validation_fraction} of {len(X)}): too few to "
                "tell whether flows predict better than the Gaussian mixture, so none were trained "
                f"and the Gaussian mixture is kept; flows are tried with at least "
                f"{MIN_VALIDATION_ROWS} held-out rows",
                stacklevel=2,
            )
        if self.cluster_module_ is not None:
            warnings.warn(
                f"the flows moved the cores of clusters between components (only "
                f"{self.core_agreement_:.0%} of the rows the Gaussian start assigns confidently "
                "keep their component): predict and predict_proba report the Gaussian start's "
                "clusters (clusters_from_ = 'gaussian start'); score_samples is the flows' "
                "density, and mixture_.responsibilities gives the flows' own clusters",
                stacklevel=2,
            )
        if self.weights != "dirichlet_process":
            _warn_dead_components(self.weights_, self.labels_)
        return self

    def fit_predict(self, X, y=None) -> np.ndarray:
        """``fit(X, y)``, then the training rows' components ``labels_``: (N, D) -> (N,)."""
        return self.fit(X, y).labels_

    # --- reading the fit --------------------------------------------------------------------
    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "module_")

    def _standardize(self, X: np.ndarray) -> torch.Tensor:
        # Inputs follow the fitted model's dtype, whatever the default dtype is now.
        x = torch.as_tensor(X, dtype=self._mean.dtype, device=self._mean.device)
        return (x - self._mean) / self._scale

    def _check_X(self, X) -> torch.Tensor:
        """Checked rows on the standardized scale, in the model's dtype: (N, D)."""
        check_is_fitted(self)
        return self._standardize(self._validate_X(X, reset=False))

    @property
    def effective_n_components_(self) -> int:
        """Components with weight >= ``EFFECTIVE_WEIGHT_THRESHOLD`` (1%)."""
        return int((self.weights_ >= EFFECTIVE_WEIGHT_THRESHOLD).sum())

    @property
    def feature_mean_(self) -> np.ndarray:
        """(D,) the per-feature mean the data were standardized with."""
        check_is_fitted(self)
        return self._mean.cpu().numpy()

    @property
    def feature_scale_(self) -> np.ndarray:
        """(D,) the per-feature standard deviation the data were standardized with."""
        check_is_fitted(self)
        return self._scale.cpu().numpy()

    @property
    def mixture_(self) -> FlowMixture:
        """The fitted density on the standardized scale."""
        check_is_fitted(self)
        return self.module_.mixture()

    @property
    def distribution_(self) -> FlowMixture:
        r"""The fitted density in data units: a ``FlowMixture`` of ``RescaledComponents``.

        Every component ends with the un-standardization :math:`x = \mu + \sigma \odot x_s`, so
        ``distribution_.log_prob(x)`` equals ``score_samples(x)`` and its samples are in data
        units.
        """
        check_is_fitted(self)
        comps = RescaledComponents(self.module_.components, self._mean, self._scale)
        return FlowMixture(comps, logits=self.mixture_.logits)

    @property
    def weights_(self) -> np.ndarray:
        check_is_fitted(self)
        return self.module_.weight_logits_estimate().exp().cpu().numpy()

    @torch.no_grad()
    def predict_proba(self, X) -> np.ndarray:
        """p(k | x) under the fitted mixture: (N, D) -> (N, K).

        Where the kept flows took the core of one cluster into another component
        (``clusters_from_ == "gaussian start"``), these are the Gaussian start's responsibilities
        (its components are the flows' starting points, component for component). For a
        Dirichlet-process fit, components below the effective-weight threshold get
        probability 0 and the rest are renormalized, so no point lands on an empty component.
        """
        return self._proba(self._check_X(X)).cpu().numpy()

    def _proba(self, xs: torch.Tensor) -> torch.Tensor:
        """``predict_proba`` on standardized rows: (N, D) -> (N, K)."""
        cluster_module = getattr(self, "cluster_module_", None)
        mixture = self.mixture_ if cluster_module is None else cluster_module.mixture()
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
        check_is_fitted(self)
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
        carry far more such numbers than their effective degrees of freedom, so for flows BIC
        prefers small K; to choose K compare held-out likelihood instead
        (``pyro_mixflows.select_n_components``). For a kept Gaussian start it is the Gaussian
        mixture's BIC.
        """
        n = len(self._check_X(X))
        return -2 * self.score(X) * n + self._n_parameters() * math.log(n)

    def aic(self, X) -> float:
        """Akaike information criterion on X (lower is better): ``-2 N score(X) + 2 p``, with
        ``p`` counted as in ``bic`` (and with its caveat for flows)."""
        return -2 * self.score(X) * len(self._check_X(X)) + 2 * self._n_parameters()

    # --- persistence ------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write the fitted model, with every fitted attribute, to ``path`` atomically (a crash
        never leaves half a file)."""
        check_is_fitted(self)
        _persist.save(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike, *, device=None) -> VariationalFlowMixture:
        """Read a model written by ``save``; raises ``ValueError`` on a corrupt or foreign file.

        The file is read with ``torch.load(weights_only=True)``: tensors and plain values only,
        so a crafted file cannot run code.
        """
        return _persist.load(cls, path, device)

    def _build(self, D: int, K: int, capacity: dict) -> VMoNF:
        """An unfitted ``VMoNF`` of the fitted model's shape (``load``)."""
        arch = self._settings().architecture_of(capacity)
        from ..flows import FlowComponents

        return VMoNF(
            FlowComponents(K, D, affine="full", **arch),
            weights=self.weights,
            concentration=self.weight_concentration,
            assignment=self.assignment,
        )


def resolve_device(device) -> torch.device:
    """ "auto": CUDA when available, else the CPU; None: the CPU; anything else as torch reads it."""
    if device is None:
        return torch.device("cpu")
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _warn_overfit(gap: float, se: float, D: int) -> None:
    """Warn when the training rows score far above the held-out rows: ``gap`` nats per row
    above ``OVERFIT_GAP_PER_FEATURE`` * D by more than two standard errors ``se`` of the
    held-out mean."""
    if gap - 2 * se > OVERFIT_GAP_PER_FEATURE * D:
        warnings.warn(
            f"the held-out log-likelihood per row is {gap:.1f} nats below the training one "
            f"({gap / D:.2f} per feature): the model memorizes the training rows. Try fewer or "
            "smaller flow layers (num_layers, hidden_dims, or capacities to choose among, with "
            "a weight_decay), fewer components, or reducing the dimension (PCA) first",
            stacklevel=3,
        )


def _warn_dead_components(weights: np.ndarray, labels: np.ndarray) -> None:
    """Warn about components that hold no training rows."""
    K = len(weights)
    hits = np.bincount(labels, minlength=K)
    dead = [k for k in range(K) if weights[k] < DEAD_WEIGHT_FRACTION / K or hits[k] == 0]
    if dead:
        warnings.warn(
            f"components {dead} hold no training points (weights "
            f"{np.round(weights[dead], 4).tolist()}); consider fewer components or another init",
            stacklevel=3,
        )
