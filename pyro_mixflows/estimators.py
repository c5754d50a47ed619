"""scikit-learn-style estimators built on the Pyro model, guide and fit loop."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import pyro
import torch
from pyro.infer import Trace_ELBO, TraceEnum_ELBO

from ._init import INIT_METHODS, initial_labels
from .distributions import FlowMixture
from .flows import FLOWS, FlowComponents
from .infer import FitResult
from .infer import fit as _fit
from .infer._checkpoint import atomic_save
from .infer._compile import check_compile_option
from .models.dp import density_connected_groups, responsibilities
from .models.vmonf import ASSIGNMENTS, WEIGHTS, VMoNF, paper_temperature

_FORMAT = "pyro_mixflows.VariationalFlowMixture/1"
# A component is reported dead when its weight falls below this fraction of 1/K.
DEAD_WEIGHT_FRACTION = 0.01
# Dirichlet-process fits: components with at least this weight are "effective"; the others get
# no points in predict/predict_proba.
EFFECTIVE_WEIGHT_THRESHOLD = 0.01
# Dirichlet-process fits: how over-split components are merged before the final fit.
MERGES = ("density", None)


def _as_2d(X, name: str = "X") -> np.ndarray:
    try:
        X = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"expected {name} to be a numeric array of shape (N, D): {err}") from None
    if X.ndim != 2:
        raise ValueError(f"expected {name} of shape (N, D), got shape {X.shape}")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"expected a non-empty {name}, got shape {X.shape}")
    if not np.isfinite(X).all():
        bad = int((~np.isfinite(X)).sum())
        raise ValueError(f"expected finite values in {name}, got {bad} NaN/inf entries")
    return X


def _plain(value):
    """A NumPy scalar as the Python number it holds; anything else unchanged."""
    return value.item() if isinstance(value, np.generic) else value


def _chain_results(first: FitResult, second: FitResult) -> FitResult:
    """One ``FitResult`` for two consecutive ``fit`` calls (steps of the second shifted)."""
    shift = first.num_steps
    best_second = second.best_loss is not None and (
        first.best_loss is None or second.best_loss <= first.best_loss
    )
    best = second if best_second else first
    return FitResult(
        losses=first.losses + second.losses,
        val_losses=first.val_losses + second.val_losses,
        val_steps=first.val_steps + [s + shift for s in second.val_steps],
        best_step=(second.best_step + shift) if best_second else first.best_step,
        best_loss=best.best_loss,
        converged=second.converged,
        num_steps=first.num_steps + second.num_steps,
        time=first.time + second.time,
        stop_reason=second.stop_reason,
        compile_time=first.compile_time if first.compile_time is not None else second.compile_time,
    )


class VariationalFlowMixture:
    """A mixture of normalizing flows with the interface of scikit-learn's ``GaussianMixture``.

    Fits VMoNF (Pires & Figueiredo, 2020, arXiv:2009.00585) with this package's Pyro model,
    guide and fit loop: data standardized per feature, components placed by an initial
    clustering (spectral by default, so that no component starts across several clusters),
    pre-trained on those hard assignments, then trained on the exact ELBO with held-out early
    stopping. ``y`` follows scikit-learn's semi-supervised convention (-1 = unlabelled).

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
            fitted model has ``n_components_`` = the number of groups. None: one DP fit with
            T flow components (flexible flows tend to split one cluster into several).
        merge_ratio: in (0, 1], the ``ratio`` of ``density_connected_groups``.
        assignment: "enumerate" (z summed out in the model; exact) or "amortized" (the paper's
            q(k | x) network, enumerated in the guide, with ``temperature_schedule``).
        init: "spectral", "kmeans" or "random" initial assignments.
        max_steps: training steps at most; init_steps: hard-assignment pre-training steps.
        batch_size: minibatch size (None: full batch).
        learning_rate: Adam step size.
        weight_decay: Adam's L2 penalty on all parameters (helps many-feature data with few
            points per component, where flows overfit).
        plateau_lr_factor: when the held-out loss stops improving, training goes on once more
            from the best parameters at ``learning_rate * plateau_lr_factor`` with the same
            early stopping (None: stop at the first plateau).
        validation_fraction: share of rows held out for early stopping (0 disables it).
        patience: evaluations without improvement before stopping; eval_every: steps between them.
        supervised_scale: weight of the classifier's supervised term (amortized, labelled rows).
        random_state: seed; the same seed gives the same fit.
        device: torch device for training and scoring.
        progress_bar: show a tqdm bar while training.
        compile: ``torch.compile`` the flow pass of the training steps: "auto" (default: only
            when the planned steps pay for the compile time, see
            ``pyro_mixflows.infer._compile``; the demo-sized fits stay eager), True or False.
            The first compiled step's wall time is ``fit_result_.compile_time``.

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
        init: str = "spectral",
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
        random_state: int | None = None,
        device: str | torch.device | None = None,
        progress_bar: bool = False,
        compile: bool | str = "auto",
    ) -> None:
        self.n_components = n_components
        self.flow = flow
        self.num_layers = num_layers
        self.hidden_dims = tuple(hidden_dims)
        self.count_bins = count_bins
        self.weights = weights
        self.weight_concentration = weight_concentration
        self.merge = merge
        self.merge_ratio = merge_ratio
        self.assignment = assignment
        self.init = init
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
        self.random_state = random_state
        self.device = device
        self.progress_bar = progress_bar
        self.compile = compile

    # --- configuration ----------------------------------------------------------------------
    def get_params(self, deep: bool = True) -> dict:
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params) -> VariationalFlowMixture:
        for name, value in params.items():
            if name not in self._param_names():
                raise ValueError(f"expected a parameter in {self._param_names()}, got {name!r}")
            setattr(self, name, value)
        return self

    @staticmethod
    def _param_names() -> list[str]:
        import inspect

        sig = inspect.signature(VariationalFlowMixture.__init__)
        return [p for p in sig.parameters if p != "self"]

    def _check_params(self) -> None:
        K = self.n_components
        if not isinstance(K, (int, np.integer)) or isinstance(K, bool) or K < 1:
            raise ValueError(f"expected n_components to be an int >= 1, got {K!r}")
        for name, options in (
            ("flow", FLOWS),
            ("weights", WEIGHTS),
            ("assignment", ASSIGNMENTS),
            ("init", INIT_METHODS),
        ):
            if getattr(self, name) not in options:
                raise ValueError(
                    f"expected {name} in {tuple(options)}, got {getattr(self, name)!r}"
                )
        for name in ("max_steps", "eval_every", "patience"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"expected {name} to be an int >= 1, got {value!r}")
        if not isinstance(self.init_steps, (int, np.integer)) or self.init_steps < 0:
            raise ValueError(f"expected init_steps to be an int >= 0, got {self.init_steps!r}")
        if self.batch_size is not None and (
            not isinstance(self.batch_size, (int, np.integer)) or self.batch_size < 1
        ):
            raise ValueError(f"expected batch_size None or an int >= 1, got {self.batch_size!r}")
        if not 0 <= self.validation_fraction < 1:
            raise ValueError(
                f"expected validation_fraction in [0, 1), got {self.validation_fraction!r}"
            )
        if not self.learning_rate > 0:
            raise ValueError(f"expected learning_rate > 0, got {self.learning_rate!r}")
        factor = self.plateau_lr_factor
        if factor is not None and not 0 < factor < 1:
            raise ValueError(f"expected plateau_lr_factor None or in (0, 1), got {factor!r}")
        if not self.weight_decay >= 0:
            raise ValueError(f"expected weight_decay >= 0, got {self.weight_decay!r}")
        if self.merge not in MERGES:
            raise ValueError(f"expected merge in {MERGES}, got {self.merge!r}")
        if not 0 < self.merge_ratio <= 1:
            raise ValueError(f"expected merge_ratio in (0, 1], got {self.merge_ratio!r}")
        check_compile_option(self.compile)

    def _check_y(self, y, n: int) -> np.ndarray | None:
        if y is None:
            return None
        y = np.asarray(y)
        if y.shape != (n,):
            raise ValueError(f"expected y of shape ({n},) (one label per row), got {y.shape}")
        if y.dtype.kind not in "iu":
            if y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
                y = y.astype(np.int64)
            else:
                raise ValueError(f"expected integer labels in y (-1 = unlabelled), got {y.dtype}")
        bad = (y < -1) | (y >= self.n_components)
        if bad.any():
            raise ValueError(
                f"expected labels in [0, n_components={self.n_components}) or -1 for unlabelled, "
                f"got {np.unique(y[bad]).tolist()}"
            )
        return y.astype(np.int64)

    # --- fitting ----------------------------------------------------------------------------
    def _tensor(self, X: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(X, dtype=torch.get_default_dtype(), device=self.device)

    def _standardize(self, X: np.ndarray) -> torch.Tensor:
        return (self._tensor(X) - self._mean) / self._scale

    def _build(self, D: int, K: int | None = None, num_layers: int | None = None) -> VMoNF:
        components = FlowComponents(
            self.n_components if K is None else K,
            D,
            flow=self.flow,
            num_layers=self.num_layers if num_layers is None else num_layers,
            hidden_dims=self.hidden_dims,
            count_bins=self.count_bins,
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
        """Fit to X (N, D); ``y`` (N,) optional labels with -1 for unlabelled rows."""
        self._check_params()
        X = _as_2d(X)
        N, D = X.shape
        K = self.n_components
        if self.weights == "dirichlet_process" and K < 2:
            raise ValueError(f"expected n_components (the truncation) >= 2 for a DP, got {K}")
        if N < max(2, K):
            raise ValueError(f"expected at least max(2, n_components)={max(2, K)} rows, got {N}")
        y = self._check_y(y, N)
        if self.flow != "maf" and D < 2 and self.num_layers > 0:
            raise ValueError(f"expected D >= 2 for flow={self.flow!r}, got D={D}; use flow='maf'")

        self.merge_groups_ = None
        seed = self.random_state
        if seed is None:  # one draw, so that every stage below sees the same validation rows
            seed = int(np.random.SeedSequence().entropy % 2**31)
        if (
            self.weights == "dirichlet_process"
            and self.merge == "density"
            and (y is None or not bool((y >= 0).any()))
        ):
            stage_labels, K = self._merge_stage(X, seed)
            self._fit(X, y, K, stage_labels, seed, self.num_layers)
            if self.num_layers > 0:
                # The same groups with Gaussian components; keep whichever predicts the
                # held-out rows better (flexible flows overfit clusters that are Gaussian).
                flows = self._fitted_state()
                self._fit(X, y, K, stage_labels, seed, 0)
                if not self.validation_log_likelihood_ > flows["validation_log_likelihood_"]:
                    self.__dict__.update(flows)
            return self
        return self._fit(X, y, K, None, seed, self.num_layers)

    _FITTED = (
        "module_",
        "n_components_",
        "num_layers_",
        "fit_result_",
        "n_features_in_",
        "converged_",
        "n_iter_",
        "lower_bound_",
        "validation_log_likelihood_",
        "_mean",
        "_scale",
    )

    def _fitted_state(self) -> dict:
        return {name: getattr(self, name) for name in self._FITTED}

    def _fit(self, X, y, K: int, stage_labels, seed: int, num_layers: int):
        """One training run of K components (the body of ``fit``)."""
        N, D = X.shape
        self.num_layers_ = num_layers
        pyro.set_rng_seed(seed)
        generator = torch.Generator().manual_seed(int(torch.randint(2**31, ()).item()))
        pyro.clear_param_store()
        x_all = self._tensor(X)
        self._mean = x_all.mean(0)
        scale = x_all.std(0) if N > 1 else torch.ones(D)
        self._scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        xs = (x_all - self._mean) / self._scale

        # Held-out rows for early stopping (unlabelled rows only).
        perm = torch.randperm(N, generator=generator).to(xs.device)
        labelled = torch.zeros(N, dtype=torch.bool, device=xs.device)
        y_t = None
        if y is not None:
            y_t = torch.as_tensor(y, device=xs.device)
            labelled = y_t >= 0
        n_val = int(self.validation_fraction * N)
        candidates = perm[~labelled[perm]]
        n_val = min(n_val, max(0, len(candidates) - 1))
        val_idx = candidates[:n_val]
        train_mask = torch.ones(N, dtype=torch.bool, device=xs.device)
        train_mask[val_idx] = False
        x_train = xs[train_mask]

        if stage_labels is not None:
            labels = stage_labels(x_train)
        else:
            labels = self._initial_labels(
                x_train, None if y_t is None else y_t[train_mask], generator
            )
        if self.weights == "dirichlet_process" and y_t is None:
            # Largest initial cluster first: the stick prior expects weights to fall with index.
            counts = torch.bincount(labels, minlength=K)
            rank = torch.empty_like(counts)
            rank[counts.argsort(descending=True, stable=True)] = torch.arange(
                K, device=counts.device
            )
            labels = rank[labels]
        vm = self._build(D, K, num_layers).to(xs.device)
        loc = torch.stack([self._cluster_stat(x_train, labels, k, "mean") for k in range(K)])
        spread = torch.stack([self._cluster_stat(x_train, labels, k, "std") for k in range(K)])
        vm.components.set_affine(loc, spread.clamp_min(0.05))
        if self.weights == "learned":
            counts = torch.bincount(labels, minlength=K).to(xs.dtype) + 1.0
            with torch.no_grad():
                vm.weight_logits.copy_(counts.log())
        elif self.weights == "dirichlet_process":
            # q(v) starts at the sticks' conjugate posterior given the initial labels,
            # Beta(1 + n_k, alpha + n_{k+1} + ... + n_K), instead of at the prior: a small alpha
            # puts the prior's sticks so close to 1 that float32 draws and their gradients break.
            counts = torch.bincount(labels, minlength=K).to(xs.dtype)
            after = counts.flip(0).cumsum(0).flip(0)[1:]  # n_{k+1} + ... + n_K for k < K
            vm.stick_a = 1.0 + counts[:-1]
            vm.stick_b = (self.weight_concentration + after).clamp_min(1.0)
        optim = pyro.optim.Adam({"lr": self.learning_rate, "weight_decay": self.weight_decay})
        batch = self.batch_size if self.batch_size and self.batch_size < len(x_train) else None
        common = dict(optim=optim, batch_size=batch, seed=None, progress_bar=self.progress_bar)
        common["compile"] = self.compile
        elbo = TraceEnum_ELBO(max_plate_nesting=1)
        pre = FitResult()
        if self.init_steps > 0:
            pre = _fit(
                vm.model_labelled,
                vm.guide_labelled,
                x_train,
                labels,
                loss=Trace_ELBO(),
                num_steps=self.init_steps,
                **common,
            )

        train_lab = labelled[train_mask]
        x_unl = x_train[~train_lab]
        extra: tuple = ()
        if bool(train_lab.any()):
            extra = (x_train[train_lab], y_t[train_mask][train_lab])
        if len(x_unl) == 0:
            raise ValueError("expected at least one unlabelled or held-out row; got only labels")
        batch = self.batch_size if self.batch_size and self.batch_size < len(x_unl) else None
        common["batch_size"] = batch
        val_args = (xs[val_idx],) if n_val > 0 else None
        result = _fit(
            vm.model,
            vm.guide,
            x_unl,
            *extra,
            loss=elbo,
            num_steps=self.max_steps,
            val_args=val_args,
            patience=self.patience,
            eval_every=self.eval_every,
            **common,
        )
        if val_args is not None and self.plateau_lr_factor and result.converged:
            lr = self.learning_rate * self.plateau_lr_factor
            common["optim"] = pyro.optim.Adam({"lr": lr, "weight_decay": self.weight_decay})
            before = {k: v.detach().clone() for k, v in vm.state_dict().items()}
            refined = _fit(
                vm.model,
                vm.guide,
                x_unl,
                *extra,
                loss=elbo,
                num_steps=max(self.max_steps - result.num_steps, self.patience * self.eval_every),
                val_args=val_args,
                patience=self.patience,
                eval_every=self.eval_every,
                **common,
            )
            if refined.best_loss > result.best_loss:  # no evaluation improved: keep the first
                with torch.no_grad():
                    vm.load_state_dict(before)
            result = _chain_results(result, refined)
        self.module_ = vm.eval()
        self.n_components_ = int(K)
        if result.compile_time is None:  # compiled during pre-training: reported here
            result.compile_time = pre.compile_time
        self.fit_result_ = result
        self.n_features_in_ = D
        self.converged_ = bool(result.converged)
        self.n_iter_ = int(result.num_steps)
        with torch.no_grad():
            per_point = -float(elbo.loss(vm.model, vm.guide, x_train)) / len(x_train)
            self.lower_bound_ = per_point - float(self._scale.log().sum())
            self.validation_log_likelihood_ = float("nan")
            if n_val > 0:
                held_out = vm.mixture().log_prob(xs[val_idx]).mean()
                self.validation_log_likelihood_ = float(held_out) - float(self._scale.log().sum())
        if self.weights != "dirichlet_process":
            self._warn_dead_components(x_train)
        return self

    @property
    def effective_n_components_(self) -> int:
        """Components with weight >= ``EFFECTIVE_WEIGHT_THRESHOLD`` (1%)."""
        return int((self.weights_ >= EFFECTIVE_WEIGHT_THRESHOLD).sum())

    def _merge_stage(self, X: np.ndarray, seed: int):
        """DP fit of Gaussian components, then their density-connected groups.

        Returns a function from standardized rows to group labels, and the number of components
        for the final fit (the number of groups, at least 2 for the truncation).
        """
        params = {**self.get_params(), "num_layers": 0, "merge": None, "random_state": seed}
        stage = VariationalFlowMixture(**params).fit(X)
        generator = torch.Generator().manual_seed(seed)
        weights = torch.as_tensor(stage.weights_, dtype=torch.get_default_dtype())
        groups = density_connected_groups(
            stage.module_.components,
            weights,
            stage._standardize(X),
            threshold=EFFECTIVE_WEIGHT_THRESHOLD,
            ratio=self.merge_ratio,
            generator=generator,
        )
        self.merge_groups_ = groups.cpu().numpy()

        @torch.no_grad()
        def labels(x: torch.Tensor) -> torch.Tensor:
            comps = stage.module_.components
            r = responsibilities(comps, weights.to(x.device), x, EFFECTIVE_WEIGHT_THRESHOLD)
            return groups.to(x.device)[r.argmax(-1)]

        return labels, max(2, int(groups.max()) + 1)

    def _initial_labels(self, x, y, generator) -> torch.Tensor:
        K = self.n_components
        labels = initial_labels(x, K, self.init, generator=generator)
        if y is None or not bool((y >= 0).any()):
            return labels
        # Match clusters to classes on the labelled rows, then let the labels override.
        known = y >= 0
        table = torch.zeros(K, K)
        table.index_put_(
            (y[known].cpu(), labels[known].cpu()), torch.ones(int(known.sum())), accumulate=True
        )
        from scipy.optimize import linear_sum_assignment

        rows, cols = linear_sum_assignment(-table.numpy())
        mapping = torch.empty(K, dtype=torch.long)
        mapping[torch.as_tensor(cols)] = torch.as_tensor(rows)
        labels = mapping.to(labels.device)[labels]
        return torch.where(known, y, labels)

    @staticmethod
    def _cluster_stat(x, labels, k, stat):
        members = x[labels == k]
        if len(members) < 2:
            return x.mean(0) if stat == "mean" else x.std(0)
        return members.mean(0) if stat == "mean" else members.std(0)

    def _warn_dead_components(self, x) -> None:
        K = self.n_components
        w = self.weights_
        hits = np.bincount(
            self.module_.mixture().responsibilities(x).argmax(-1).cpu().numpy(), minlength=K
        )
        dead = [k for k in range(K) if w[k] < DEAD_WEIGHT_FRACTION / K or hits[k] == 0]
        if dead:
            warnings.warn(
                f"components {dead} hold no training points (weights {np.round(w[dead], 4).tolist()}); "
                "consider fewer components or another init",
                stacklevel=3,
            )

    # --- reading the fit --------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "module_"):
            raise ValueError("this VariationalFlowMixture is not fitted yet: call fit(X) first")

    def _check_X(self, X) -> torch.Tensor:
        self._check_fitted()
        X = _as_2d(X)
        if X.shape[1] != self.n_features_in_:
            raise ValueError(
                f"expected X with {self.n_features_in_} columns (as at fit time), got {X.shape[1]}"
            )
        return self._standardize(X)

    @property
    def mixture_(self) -> FlowMixture:
        """The fitted density on the standardized scale."""
        self._check_fitted()
        return self.module_.mixture()

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
        mixture = self.mixture_
        joint = mixture.logits + mixture.component_log_probs(self._check_X(X))  # (N, K)
        if self.weights == "dirichlet_process":
            keep = torch.as_tensor(self.weights_ >= EFFECTIVE_WEIGHT_THRESHOLD, device=joint.device)
            joint = joint.masked_fill(~keep, -float("inf"))
        return torch.softmax(joint, -1).cpu().numpy()

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
        n = sum(p.numel() for p in self.module_.components.parameters())
        return n + (self.n_components_ - 1 if self.weights != "uniform" else 0)

    def bic(self, X) -> float:
        """Bayesian information criterion on X (lower is better)."""
        n = len(_as_2d(X))
        return -2 * self.score(X) * n + self._n_parameters() * math.log(n)

    def aic(self, X) -> float:
        """Akaike information criterion on X (lower is better)."""
        return -2 * self.score(X) * len(_as_2d(X)) + 2 * self._n_parameters()

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
        # Plain Python values only, so that ``load`` can read the file with weights_only=True.
        params = {
            k: tuple(_plain(x) for x in v) if isinstance(v, (tuple, list)) else _plain(v)
            for k, v in params.items()
        }
        state = {
            "format": _FORMAT,
            "params": params,
            "n_features_in": self.n_features_in_,
            "n_components": int(self.n_components_),
            "num_layers": int(self.num_layers_),
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
        model._mean = state["mean"].to(device)
        model._scale = state["scale"].to(device)
        model.n_components_ = int(state.get("n_components", model.n_components))
        model.num_layers_ = int(state.get("num_layers", model.num_layers))
        model.validation_log_likelihood_ = float(state.get("validation_log_likelihood", math.nan))
        vm = model._build(model.n_features_in_, model.n_components_, model.num_layers_)
        vm.load_state_dict(state["module"])
        model.module_ = vm.to(device).eval()
        model.converged_ = state["converged"]
        model.n_iter_ = state["n_iter"]
        model.lower_bound_ = state["lower_bound"]
        return model
