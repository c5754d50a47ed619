"""Gradient-boosted normalizing flows (GBNF): components added one at a time, weights fit exactly.

.. math:: G_c(x) = (1 - \\rho_c)\\, G_{c-1}(x) + \\rho_c\\, g_c(x), \\qquad G_1 = g_1

Reference: Gradient Boosted Normalizing Flows (Giaquinto & Banerjee, 2020), arXiv:2002.11896.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .._validation import check_event, check_finite
from ..distributions.flow_mixture import FlowMixture
from ..flows.components import FLOWS, Components, FlowComponents
from ..flows.concat import ConcatComponents
from ._boost_refine import Refinement
from ._boost_rounds import BoostingRounds
from ._boost_stages import SCHEDULES
from ._boost_variational import VariationalBoosting
from ._boost_weights import (
    boosting_weights,
    fit_mixture_weights,
    rho_objective,
    search_rho,
)
from ._boost_weights import check_clip as _check_clip

__all__ = [
    "BoostedFlowMixture",
    "boosting_weights",
    "fit_mixture_weights",
    "rho_objective",
    "search_rho",
]

_WEIGHTINGS = ("loss", "resample")
_RHO_MODES = ("search", "fixed")
_INITS = ("moments", "previous", "greedy")
_OBJECTIVES = ("likelihood", "mixture", "weighted")
_TRAIN_RHOS = ("learned", "fixed")


# --- the estimator ------------------------------------------------------------------------------
class BoostedFlowMixture(BoostingRounds, Refinement, VariationalBoosting, nn.Module):
    """A flow mixture grown by gradient boosting: one new flow per round, earlier flows frozen.

    .. math:: G_c = (1 - \\rho_c) G_{c-1} + \\rho_c g_c, \\qquad
              \\rho_c = \\arg\\max_{\\rho \\in [0, 1]} \\sum_{i \\in \\text{held out}}
              \\log\\big((1 - \\rho) G_{c-1}(x_i) + \\rho\\, g_c(x_i)\\big)

    Density estimation (``fit`` / ``add_component``), by default: the first flow is a plain
    maximum-likelihood fit given most of the steps (``first_share``); every later flow g_c starts
    as the best Gaussian to add (``init="greedy"``: among the clusters of k-means with
    k = 1, 2, 4, ..., ``num_candidates`` on the training data, each a Gaussian at its cluster's
    mean and per-axis standard deviation, the one whose exactly searched rho gives the largest
    training log-likelihood of ``(1 - rho) G + rho N``), so it starts on the region the mixture
    fits worst, and, with components 1..c-1 frozen, is trained on the greedy step
    ``sum_i log((1 - rho) G_{c-1}(x_i) + rho g(x_i))`` (``objective="mixture"``; its gradient in g
    is the log-likelihood weighted by the share of each point that g explains, so g specializes
    where G is weak) with the share held at 1/c (``train_rho="fixed"``: the new flow must explain
    a full 1/c of the data). Then rho_c maximizes the held-out log-likelihood of G_c, a concave
    function of rho, found exactly by :func:`search_rho` (``rho="search"``), and all C weights
    are re-fitted to the exact held-out maximizer by :func:`fit_mixture_weights`
    (``refit_weights=True``, the fully corrective step). Every round's learning rate follows one
    cosine from ``lr`` down to ``0.01 lr`` (``lr_schedule="cosine"``), so each flow ends at a
    settled state.

    The step budget: ``fit(x, C)`` on an empty model spends ``C * num_steps`` steps in all, the
    first flow ``first_share`` (0.8) of them and the later rounds equal shares of the rest (a
    fitted model's further rounds, and ``add_component``, get ``num_steps`` each). When to use
    it: a round from a Gaussian start gains where one flow cannot reach (data in separate parts:
    rings, spiral arms, outlines), and its steps are lost to the first flow where one flow fits
    the data well; the long first round keeps that loss small.

    Other choices: ``init="previous"`` starts g_c as a copy of the last flow (with
    ``lr_schedule="constant"`` it also continues that round's Adam state) and ``"moments"`` as a
    Gaussian at the data's mean and standard deviation; ``objective="likelihood"`` trains g_c on
    the plain log-likelihood (with the warm start: the mixture keeps the snapshots of one flow's
    training, weighted exactly) and ``"weighted"`` is the paper's step, the log-likelihood with
    the sample weights ``w_i ∝ 1 / G_{c-1}(x_i)`` of :func:`boosting_weights` (normalized to mean
    one, clipped to ``weight_clip``), as a weighted loss on uniform minibatches
    (``weighting="loss"``) or by drawing minibatches with probabilities w_i
    (``weighting="resample"``); ``train_rho="learned"`` learns the share in the mixture step
    jointly with the flow; ``rho="fixed"`` keeps the reference code's weights, rho_c = 1/c;
    ``first_share=None`` gives every round ``num_steps``. Every training (components, second
    pass, fine-tuning, variational mode) runs through :func:`pyro_mixflows.infer.fit`:
    minibatches, the held-out objective evaluated every ``eval_every`` steps and before the first,
    the best state kept. ``refit`` is the optional second pass: each component in turn is trained
    again against the mixture of the others and its weight searched again. ``finetune`` (or
    ``fit(..., finetune_steps=...)``) trains all components together on the mixture's
    log-likelihood, weights learned too unless ``rho="fixed"``, keeping the best held-out state.

    Variational mode (``fit_variational``): given an unnormalized target log-density
    log p~(x), g_1 maximizes the ELBO ``E_g[log p~ - log g]`` and every later g_c maximizes
    ``E_g[log p~(x) - log G_{c-1}(x)] + lambda H(g)`` with entropy weight lambda, from
    reparameterized draws; rho_c then maximizes a Monte Carlo estimate of the mixture's ELBO
    (grid plus golden-section search, common random numbers). Components must be analytically
    invertible in both directions: affine or spline coupling.

    Every new component is a ``FlowComponents(1, D, ...)`` whose data-side affine map starts at
    the training data's mean and standard deviation, so each flow works on standardized data while
    the mixture stays a density on the original scale. Components may differ in size and type
    (``add_component(..., num_layers=8)``) or be supplied ready-made. The result is an ordinary
    :class:`~pyro_mixflows.FlowMixture` over :class:`~pyro_mixflows.flows.ConcatComponents`
    (``.mixture``), so responsibilities, sampling, latent MALA and ArviZ work on it unchanged.

    Args:
        dim: event size D.
        flow: component flow family, one of ``FLOWS``.
        num_layers, hidden_dims, count_bins, bound, activation: ``FlowComponents`` defaults for
            new components (override per component in ``add_component``).
        num_steps: optimizer steps per component (the most: the best held-out state is kept).
        batch_size: minibatch size.
        lr: Adam learning rate.
        weighting: "loss" or "resample" (see above).
        weight_clip: bounds (a, b) of the mean-one sample weights, 0 <= a <= 1 <= b.
        rho: "search" (exact held-out maximizer) or "fixed" (rho_c = 1/c).
        val_fraction: share of the data held out for rho and early stopping when no
            validation set is given.
        eval_every: steps between held-out evaluations (early stopping keeps the best state).
        patience: stop a component after this many evaluations without improvement (None: never).
        init: how a new flow starts: "greedy" (default: the best Gaussian to add, see above),
            "previous" (a copy of the last component when it has the same architecture, else as
            "moments") or "moments" (a Gaussian at the weighted data's mean and standard
            deviation).
        objective: "mixture" (default: the greedy mixture log-likelihood), "likelihood" (the
            plain log-likelihood) or "weighted" (the 1/G-weighted log-likelihood), see above.
        num_candidates: the largest k of the k-means candidates of ``init="greedy"``.
        train_rho: the share in the ``objective="mixture"`` training loss: "fixed" (default:
            held at 1/c) or "learned" (from the initial value, jointly with the flow). The
            weights are set afterwards by ``rho`` either way.
        refit_weights: re-fit all weights on held-out data after each round (``rho="search"``).
        lr_schedule: "cosine" (default: each round's learning rate falls from ``lr`` to
            ``0.01 lr`` along a cosine) or "constant".
        first_share: share of ``fit``'s budget ``C * num_steps`` given to the first flow when
            ``fit`` starts from an empty model with C >= 2, in (0, 1) (default 0.8); None: every
            round gets ``num_steps``.
        seed: seeds component initialization, the split and the minibatches (None: global RNG).

    Example::

        >>> x = torch.randn(200, 2)
        >>> model = BoostedFlowMixture(2, num_layers=1, hidden_dims=(8,), num_steps=5)
        >>> model.fit(x, num_components=2).mixture.log_prob(x).shape
        torch.Size([200])
    """

    def __init__(
        self,
        dim: int,
        *,
        flow: str = "spline_coupling",
        num_layers: int = 2,
        hidden_dims: Sequence[int] = (32, 32),
        count_bins: int = 8,
        bound: float = 5.0,
        activation: str = "relu",
        num_steps: int = 500,
        batch_size: int = 256,
        lr: float = 5e-3,
        weighting: str = "loss",
        weight_clip: tuple[float, float] = (0.1, 10.0),
        rho: str = "search",
        val_fraction: float = 0.2,
        eval_every: int = 50,
        patience: int | None = None,
        init: str = "greedy",
        objective: str = "mixture",
        num_candidates: int = 16,
        refit_weights: bool = True,
        train_rho: str = "fixed",
        lr_schedule: str = "cosine",
        first_share: float | None = 0.8,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        if lr_schedule not in SCHEDULES:
            raise ValueError(f"expected lr_schedule in {SCHEDULES}, got {lr_schedule!r}")
        if first_share is not None and (isinstance(first_share, bool) or not 0 < first_share < 1):
            raise ValueError(f"expected first_share to be None or in (0, 1), got {first_share!r}")
        self.lr_schedule = lr_schedule
        self.first_share = first_share
        if train_rho not in _TRAIN_RHOS:
            raise ValueError(f"expected train_rho in {_TRAIN_RHOS}, got {train_rho!r}")
        self.train_rho = train_rho
        if init not in _INITS:
            raise ValueError(f"expected init in {_INITS}, got {init!r}")
        if objective not in _OBJECTIVES:
            raise ValueError(f"expected objective in {_OBJECTIVES}, got {objective!r}")
        if (
            not isinstance(num_candidates, int)
            or isinstance(num_candidates, bool)
            or num_candidates < 1
        ):
            raise ValueError(f"expected num_candidates to be an int >= 1, got {num_candidates!r}")
        self.init = init
        self.objective = objective
        self.num_candidates = num_candidates
        self.refit_weights = bool(refit_weights)
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
            raise ValueError(f"expected dim to be an int >= 1, got {dim!r}")
        if flow not in FLOWS:
            raise ValueError(f"expected flow in {FLOWS}, got {flow!r}")
        for name, value, low in (
            ("num_steps", num_steps, 1),
            ("batch_size", batch_size, 1),
            ("eval_every", eval_every, 1),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"expected {name} to be an int >= {low}, got {value!r}")
        if patience is not None and (not isinstance(patience, int) or patience < 1):
            raise ValueError(f"expected patience to be None or an int >= 1, got {patience!r}")
        if not lr > 0:
            raise ValueError(f"expected lr > 0, got {lr!r}")
        if weighting not in _WEIGHTINGS:
            raise ValueError(f"expected weighting in {_WEIGHTINGS}, got {weighting!r}")
        if rho not in _RHO_MODES:
            raise ValueError(f"expected rho in {_RHO_MODES}, got {rho!r}")
        if not 0 < val_fraction < 1:
            raise ValueError(f"expected val_fraction in (0, 1), got {val_fraction!r}")
        self.weight_clip = _check_clip(weight_clip)
        self.dim = dim
        self.component_config = dict(
            flow=flow,
            num_layers=num_layers,
            hidden_dims=tuple(hidden_dims),
            count_bins=count_bins,
            bound=bound,
            activation=activation,
        )
        FlowComponents(1, dim, **self.component_config)  # reject a bad architecture now
        self.num_steps = num_steps
        self.batch_size = batch_size
        self.lr = lr
        self.weighting = weighting
        self.rho_mode = rho
        self.val_fraction = val_fraction
        self.eval_every = eval_every
        self.patience = patience
        self.seed = seed
        self.stages = nn.ModuleList()
        self.register_buffer("log_weights", torch.zeros(0))
        self.rhos: list[float] = []
        self.history: list[dict] = []

    # --- the result -----------------------------------------------------------------------
    @property
    def num_components(self) -> int:
        return len(self.stages)

    @property
    def weights(self) -> torch.Tensor:
        """Mixture weights of the components so far, shape (C,)."""
        return self.log_weights.exp()

    @property
    def components(self) -> ConcatComponents:
        """The fitted flows as one ``Components`` set (C components)."""
        self._check_fitted()
        return ConcatComponents(list(self.stages))

    @property
    def mixture(self) -> FlowMixture:
        """The boosted density G_C as a ``FlowMixture`` (shares this model's parameters)."""
        self._check_fitted()
        return FlowMixture(self.components, logits=self.log_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """log G_C(x), the boosted density: (..., D) -> (...); the same as :meth:`log_prob`.

        Raises:
            RuntimeError: the model has no component yet.
            ValueError: x not of shape (..., D) or not finite.
        """
        return self.mixture.log_prob(self._as_data(x, min_rows=0))

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log G_C(x): (..., D) -> (...); the same as calling the model."""
        return self(x)

    def score(self, x: torch.Tensor) -> float:
        """Mean log-likelihood of the rows of x, shape (N, D)."""
        with torch.no_grad():
            return float(self.log_prob(self._as_data(x)).mean())

    def sample(self, sample_shape: torch.Size | Sequence[int] = ()) -> torch.Tensor:
        """Draws from G_C: (*sample_shape, D)."""
        return self.mixture.sample(torch.Size(sample_shape))

    # --- density estimation ---------------------------------------------------------------
    def fit(
        self,
        x: torch.Tensor,
        num_components: int = 4,
        *,
        x_val: torch.Tensor | None = None,
        refit_passes: int = 0,
        finetune_steps: int = 0,
    ) -> BoostedFlowMixture:
        """Add ``num_components`` flows by boosting (then ``refit_passes`` second passes, then
        ``finetune_steps`` steps of joint training, see ``finetune``).

        Args:
            x: training data, shape (N, D).
            num_components: flows to add, C >= 1 (added to any already fitted).
            x_val: held-out data (M, D) for rho and early stopping; default: a
                ``val_fraction`` split of x, the same split on every call.
            refit_passes: second passes over all components (see ``refit``).
            finetune_steps: joint optimizer steps over all components at the end (0: none).

        Returns:
            self.

        Raises:
            ValueError: bad data shape or values, or bad counts, before any training.
        """
        if not isinstance(num_components, int) or isinstance(num_components, bool):
            raise ValueError(f"expected num_components to be an int >= 1, got {num_components!r}")
        if num_components < 1:
            raise ValueError(f"expected num_components to be an int >= 1, got {num_components}")
        if not isinstance(refit_passes, int) or refit_passes < 0:
            raise ValueError(f"expected refit_passes to be an int >= 0, got {refit_passes!r}")
        if not isinstance(finetune_steps, int) or finetune_steps < 0:
            raise ValueError(f"expected finetune_steps to be an int >= 0, got {finetune_steps!r}")
        x_tr, x_va = self._split(x, x_val)
        for steps in self._round_steps(num_components):
            self._add(x_tr, x_va, None, {}, steps)
        for _ in range(refit_passes):
            self._refit(x_tr, x_va)
        if finetune_steps:
            self._finetune(x_tr, x_va, finetune_steps)
        return self

    def add_component(
        self,
        x: torch.Tensor,
        *,
        x_val: torch.Tensor | None = None,
        components: Components | None = None,
        **config,
    ) -> float:
        """Train one more flow against the frozen mixture and give it its weight.

        Args:
            x: training data, shape (N, D).
            x_val: held-out data (M, D); default: the ``val_fraction`` split of x.
            components: a ready-made ``Components`` with one component over D (used as is,
                trainable), instead of a new ``FlowComponents``.
            **config: ``FlowComponents`` options for this component only (e.g. ``num_layers=8``,
                ``hidden_dims=(16,)``, ``flow="affine_coupling"``).

        Returns:
            rho_c, the new component's share.
        """
        if components is not None:
            if not isinstance(components, Components):
                raise TypeError(
                    f"expected components to be a pyro_mixflows Components, got "
                    f"{type(components).__name__}"
                )
            if components.num_components != 1 or components.dim != self.dim:
                raise ValueError(
                    f"expected components with 1 component over D={self.dim}, got "
                    f"{components.num_components} over D={components.dim}"
                )
            if config:
                raise ValueError(f"expected no config with ready-made components, got {config}")
        unknown = set(config) - set(self.component_config)
        if unknown:
            raise ValueError(
                f"expected config keys among {sorted(self.component_config)}, got {sorted(unknown)}"
            )
        x_tr, x_va = self._split(x, x_val)
        if components is None:
            FlowComponents(1, self.dim, **{**self.component_config, **config})  # check early
        return self._add(x_tr, x_va, components, config)

    # --- data ------------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not len(self.stages):
            raise RuntimeError("expected a fitted model, got none: call fit or add_component first")

    def _as_data(self, x, min_rows: int = 1) -> torch.Tensor:
        if not torch.is_tensor(x):
            x = torch.as_tensor(x, dtype=torch.get_default_dtype())
        check_event(x, self.dim)
        if min_rows and (x.dim() != 2 or x.shape[0] < min_rows):
            raise ValueError(
                f"expected data of shape (N, D={self.dim}) with N >= {min_rows}, got {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            x = x.to(torch.get_default_dtype())
        check_finite(x)
        return x

    def _generator(self, offset: int) -> torch.Generator | None:
        if self.seed is None:
            return None
        return torch.Generator().manual_seed(self.seed * 1000 + offset)

    def _split(self, x, x_val) -> tuple[torch.Tensor, torch.Tensor]:
        x = self._as_data(x, min_rows=2)
        if x_val is not None:
            return x, self._as_data(x_val).to(x.dtype)
        N = x.shape[0]
        M = min(max(1, round(self.val_fraction * N)), N - 1)
        gen = torch.Generator().manual_seed(0 if self.seed is None else self.seed)
        perm = torch.randperm(N, generator=gen)
        return x[perm[M:]], x[perm[:M]]
