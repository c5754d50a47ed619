"""Gradient-boosted normalizing flows (GBNF): components added one at a time, weights fit exactly.

.. math:: G_c(x) = (1 - \\rho_c)\\, G_{c-1}(x) + \\rho_c\\, g_c(x), \\qquad G_1 = g_1

Reference: Gradient Boosted Normalizing Flows (Giaquinto & Banerjee, 2020), arXiv:2002.11896.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .._kmeans import kmeans
from .._validation import check_event, check_finite
from ..distributions.flow_mixture import FlowMixture
from ..flows.components import FLOWS, Components, FlowComponents
from ..flows.concat import ConcatComponents

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
_OBJECTIVES = ("weighted", "mixture")
_TRAIN_RHOS = ("learned", "fixed")
_LOG_RATIO_BOUND = 600.0  # |log g - log G| is clamped here; exp(600) is still finite in float64


# --- the two exact pieces: sample weights and the 1-D weight search ----------------------------
def boosting_weights(
    log_prev: torch.Tensor, clip: tuple[float, float] = (0.1, 10.0)
) -> torch.Tensor:
    """Sample weights of the next boosting component, ``w_i ∝ 1 / G_{c-1}(x_i)``, normalized and clipped.

    .. math:: \\tilde w_i = \\frac{N / G_{c-1}(x_i)}{\\sum_j 1 / G_{c-1}(x_j)}, \\qquad
              w_i = \\frac{\\min(\\max(\\tilde w_i, a), b)}{\\frac1N \\sum_j \\min(\\max(\\tilde w_j, a), b)}

    The raw weights are normalized to mean one (computed in log space, so tiny densities do not
    overflow), clipped to ``[a, b] = clip`` and renormalized to mean one. After the clip the
    largest weight is at most ``b / a`` times the smallest, so a few points that the current
    mixture misses cannot take over a minibatch; ``clip=(0, inf)`` keeps the raw formula.

    Args:
        log_prev: log G_{c-1}(x_i) of every training point, shape (N,).
        clip: bounds (a, b) on the mean-one weights, 0 <= a <= 1 <= b.

    Returns:
        Weights of shape (N,), positive where a > 0, with mean one.

    Raises:
        ValueError: ``log_prev`` is not 1-D and non-empty, holds NaN or +inf, or ``clip`` is invalid.

    Example::

        >>> boosting_weights(torch.tensor([0.0, -1.0, -2.0])).shape
        torch.Size([3])
    """
    if not torch.is_tensor(log_prev) or log_prev.dim() != 1 or log_prev.numel() == 0:
        raise ValueError(f"expected log_prev of shape (N,) with N >= 1, got {log_prev!r:.80}")
    if bool(torch.isnan(log_prev).any()) or bool((log_prev == math.inf).any()):
        raise ValueError("expected log_prev without NaN or +inf entries, got some")
    lo, hi = _check_clip(clip)
    N = log_prev.shape[0]
    log_w = -log_prev.clamp(min=torch.finfo(log_prev.dtype).min / 4)  # zero density: largest
    log_w = log_w - log_w.logsumexp(0) + math.log(N)  # mean one
    w = log_w.exp().clamp(lo, hi)
    return w / w.mean()


def rho_objective(
    rho: float | torch.Tensor, log_prev: torch.Tensor, log_new: torch.Tensor
) -> torch.Tensor:
    """Mean held-out log-likelihood of ``(1 - rho) G + rho g``.

    .. math:: f(\\rho) = \\frac1N \\sum_i \\log\\big((1-\\rho) G(x_i) + \\rho\\, g(x_i)\\big)

    Args:
        rho: scalar in [0, 1], or a tensor of values (...,) for a grid.
        log_prev: log G(x_i), shape (N,).
        log_new: log g(x_i), shape (N,).

    Returns:
        f(rho), shape of ``rho``.
    """
    rho = torch.as_tensor(rho, dtype=log_prev.dtype, device=log_prev.device).unsqueeze(-1)
    with torch.no_grad():
        terms = torch.logaddexp(torch.log1p(-rho) + log_prev, rho.log() + log_new)  # (..., N)
    return terms.mean(-1)


def _rho_derivative(rho: float, d: torch.Tensor) -> float:
    """f'(rho) = mean_i (r_i - 1) / (1 - rho + rho r_i), r_i = exp(d_i), evaluated without overflow."""
    pos = d > 0
    e_neg = torch.exp(-d.abs())  # exp(-|d|) in (0, 1]
    # d > 0: multiply numerator and denominator by exp(-d); d <= 0: use exp(d) directly.
    num = torch.where(pos, 1 - e_neg, e_neg - 1)
    den = torch.where(pos, (1 - rho) * e_neg + rho, (1 - rho) + rho * e_neg)
    return float((num / den).mean())


def search_rho(log_prev: torch.Tensor, log_new: torch.Tensor, tol: float = 1e-10) -> float:
    """The exact maximizer over [0, 1] of the held-out log-likelihood of ``(1 - rho) G + rho g``.

    ``f(rho) = mean_i log((1 - rho) G(x_i) + rho g(x_i))`` is concave in rho
    (``f'' = -mean_i (g_i - G_i)^2 / ((1-rho) G_i + rho g_i)^2 <= 0``), so its maximizer on
    [0, 1] is an endpoint when ``f'`` does not change sign there, and otherwise the root of
    ``f'``, found by bisection (``f'`` is decreasing) to an interval of width ``tol``. The
    derivative is computed in float64 from ``d_i = log g_i - log G_i``, so densities far below
    float range do not overflow.

    Args:
        log_prev: log G(x_i) on held-out points, shape (N,).
        log_new: log g(x_i) on the same points, shape (N,).
        tol: width of the final bracket.

    Returns:
        rho in [0, 1].

    Raises:
        ValueError: shapes differ or are not (N,) with N >= 1, NaN entries, or tol <= 0.

    Example::

        >>> round(search_rho(torch.zeros(4), torch.zeros(4)), 3)  # g == G: every rho is optimal
        0.0
    """
    for name, t in (("log_prev", log_prev), ("log_new", log_new)):
        if not torch.is_tensor(t) or t.dim() != 1 or t.numel() == 0:
            raise ValueError(f"expected {name} of shape (N,) with N >= 1, got {t!r:.80}")
        if bool(torch.isnan(t).any()):
            raise ValueError(f"expected {name} without NaN entries, got some")
    if log_prev.shape != log_new.shape:
        raise ValueError(
            f"expected log_prev and log_new of the same shape, got {tuple(log_prev.shape)} "
            f"and {tuple(log_new.shape)}"
        )
    if not tol > 0:
        raise ValueError(f"expected tol > 0, got {tol}")
    d = (log_new.double() - log_prev.double()).nan_to_num(
        nan=0.0, posinf=_LOG_RATIO_BOUND, neginf=-_LOG_RATIO_BOUND
    )
    d = d.clamp(-_LOG_RATIO_BOUND, _LOG_RATIO_BOUND)
    if _rho_derivative(0.0, d) <= 0:
        return 0.0
    if _rho_derivative(1.0, d) >= 0:
        return 1.0
    lo, hi = 0.0, 1.0
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        if _rho_derivative(mid, d) > 0:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def fit_mixture_weights(
    log_probs: torch.Tensor, tol: float = 1e-8, max_iter: int = 100_000
) -> torch.Tensor:
    """The exact maximizer over the simplex of the mean log-likelihood of a mixture with fixed components.

    .. math:: \\max_{w \\in \\Delta_C}\\; f(w) = \\frac1N \\sum_i \\log \\sum_k w_k\\, g_k(x_i)

    f is concave in w, so a point is the global maximizer exactly when it meets the KKT
    conditions ``s_k(w) = (1/N) sum_i g_k(x_i) / G_w(x_i) <= 1`` for every k, with equality where
    ``w_k > 0``. The EM fixed-point update ``w_k <- w_k s_k(w)`` increases f monotonically from
    the uniform start; it runs (in float64, in log space) until ``max_k s_k - 1 <= tol`` (and
    ``|s_k - 1| <= tol`` where ``w_k > tol``) or ``max_iter`` updates. Used to re-fit all
    boosting weights at once on held-out data (the fully corrective step).

    Args:
        log_probs: log g_k(x_i), shape (N, C).
        tol: tolerance on the KKT conditions.
        max_iter: the most EM updates.

    Returns:
        log w, shape (C,), float64 (``-inf`` for a component whose weight underflows).

    Raises:
        ValueError: ``log_probs`` is not (N, C) with N, C >= 1, holds NaN or +inf, or a row is
            ``-inf`` under every component.

    Example::

        >>> fit_mixture_weights(torch.zeros(5, 2)).exp()  # identical components: any w; EM stays put
        tensor([0.5000, 0.5000], dtype=torch.float64)
    """
    if not torch.is_tensor(log_probs) or log_probs.dim() != 2 or 0 in log_probs.shape:
        raise ValueError(
            f"expected log_probs of shape (N, C) with N, C >= 1, got {log_probs!r:.80}"
        )
    if bool(torch.isnan(log_probs).any()) or bool((log_probs == math.inf).any()):
        raise ValueError("expected log_probs without NaN or +inf entries, got some")
    lp = log_probs.detach().double()
    if not bool(torch.isfinite(lp.max(-1).values).all()):
        raise ValueError("expected every row to have a finite log-density under some component")
    N, C = lp.shape
    log_w = torch.full((C,), -math.log(C), dtype=torch.float64, device=lp.device)
    for _ in range(max_iter):
        log_G = (log_w + lp).logsumexp(-1, keepdim=True)  # (N, 1)
        log_s = (lp - log_G).logsumexp(0) - math.log(N)  # (C,)  log s_k
        s = log_s.exp()
        active = log_w.exp() > tol
        if float(s.max()) - 1 <= tol and bool(((s - 1).abs()[active] <= tol).all()):
            break
        log_w = log_w + log_s
        log_w = log_w - log_w.logsumexp(0)  # exact in theory; removes rounding drift
    return log_w


def _golden_section_max(fn: Callable[[float], float], grid: int = 101, tol: float = 1e-8) -> float:
    """Maximize fn on [0, 1]: best point of a grid, then golden-section search in its bracket."""
    xs = [i / (grid - 1) for i in range(grid)]
    values = [fn(x) for x in xs]
    best = max(range(grid), key=values.__getitem__)
    a, b = xs[max(best - 1, 0)], xs[min(best + 1, grid - 1)]
    inv_phi = (math.sqrt(5) - 1) / 2
    c, d = b - inv_phi * (b - a), a + inv_phi * (b - a)
    fc, fd = fn(c), fn(d)
    while b - a > tol:
        if fc > fd:
            b, d, fd = d, c, fc
            c = b - inv_phi * (b - a)
            fc = fn(c)
        else:
            a, c, fc = c, d, fd
            d = a + inv_phi * (b - a)
            fd = fn(d)
    candidates = [(values[best], xs[best]), (fn(0.5 * (a + b)), 0.5 * (a + b))]
    return max(candidates)[1]


def _check_clip(clip) -> tuple[float, float]:
    try:
        lo, hi = (float(c) for c in clip)
    except (TypeError, ValueError):
        raise ValueError(f"expected clip to be a pair (a, b), got {clip!r}") from None
    if not (0 <= lo <= 1 <= hi):
        raise ValueError(f"expected clip bounds 0 <= a <= 1 <= b, got {clip!r}")
    return lo, hi


# --- the estimator ------------------------------------------------------------------------------
class BoostedFlowMixture(nn.Module):
    """A flow mixture grown by gradient boosting: one new flow per round, earlier flows frozen.

    .. math:: G_c = (1 - \\rho_c) G_{c-1} + \\rho_c g_c, \\qquad
              g_c = \\arg\\max_g \\sum_i w_i \\log g(x_i), \\quad w_i \\propto 1 / G_{c-1}(x_i)

    Density estimation (``fit`` / ``add_component``): the first flow is a plain maximum-likelihood
    fit. Every later flow g_c is trained with components 1..c-1 frozen, on the weighted
    log-likelihood with the weights of :func:`boosting_weights` (normalized to mean one and
    clipped to ``weight_clip``), either as a weighted loss on uniform minibatches
    (``weighting="loss"``) or by drawing minibatches with probabilities w_i
    (``weighting="resample"``). Then rho_c maximizes the held-out log-likelihood of G_c, a
    concave function of rho, found exactly by :func:`search_rho` (``rho="search"``);
    ``rho="fixed"`` keeps the reference code's behaviour instead, rho_c = 1/c (every component
    the same weight). ``refit`` is the optional second pass: each component in turn is trained
    again against the mixture of the others and its weight searched again.

    Four further options (all off by default) make the boosted mixture a stronger density
    estimator. ``objective="mixture"`` trains g_c on the exact greedy objective
    ``sum_i log((1 - rho) G_{c-1}(x_i) + rho g(x_i))`` jointly in g and rho (G frozen; its
    gradient in g is the log-likelihood weighted by the share of each point that g explains,
    whose small-rho limit is the 1/G weighting above), before the exact held-out rho search.
    ``init="greedy"`` starts g_c as the best Gaussian to add: among the clusters of k-means
    with k = 1, 2, 4, ..., ``num_candidates`` on the training data (each a Gaussian at its
    cluster's mean and per-axis standard deviation), the one whose exactly searched rho gives
    the largest training log-likelihood of ``(1 - rho) G + rho N``; so a new flow starts on
    the region the mixture fits worst. With ``objective="mixture"``, ``train_rho="fixed"``
    holds the share in that objective at its initial value 1/c instead of learning it, so
    every new flow is trained to explain a full 1/c of the data (a wider role than the small
    share a learned rho settles on); its weight is still searched exactly afterwards.
    ``refit_weights=True`` (with ``rho="search"``) re-fits
    all C weights after every round by :func:`fit_mixture_weights` on the held-out data (the
    fully corrective step; the objective is concave, the result its exact maximizer). And
    ``finetune`` (or ``fit(..., finetune_steps=...)``) trains all components together on the
    mixture's log-likelihood, weights learned too unless ``rho="fixed"``, keeping the best
    held-out state.

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
        num_steps: optimizer steps per component.
        batch_size: minibatch size.
        lr: Adam learning rate.
        weighting: "loss" or "resample" (see above).
        weight_clip: bounds (a, b) of the mean-one sample weights, 0 <= a <= 1 <= b.
        rho: "search" (exact held-out maximizer) or "fixed" (rho_c = 1/c).
        val_fraction: share of the data held out for rho and early stopping when no
            validation set is given.
        eval_every: steps between held-out evaluations (early stopping keeps the best state).
        patience: stop a component after this many evaluations without improvement (None: never).
        init: how a new flow starts: "previous" (a copy of the last component when it has the
            same architecture, else as "moments"; the warm start refines what the mixture
            already has) or "moments" (a Gaussian at the weighted data's mean and standard
            deviation) or "greedy" (the best Gaussian to add, see above).
        objective: "weighted" (the 1/G-weighted log-likelihood) or "mixture" (the greedy
            mixture log-likelihood, see above).
        num_candidates: the largest k of the k-means candidates of ``init="greedy"``.
        train_rho: the share in the ``objective="mixture"`` training loss: "learned" (from the
            initial value, jointly with the flow) or "fixed" (held at 1/c). The weights are
            set afterwards by ``rho`` either way.
        refit_weights: re-fit all weights on held-out data after each round (``rho="search"``).
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
        init: str = "previous",
        objective: str = "weighted",
        num_candidates: int = 16,
        refit_weights: bool = False,
        train_rho: str = "learned",
        seed: int | None = None,
    ) -> None:
        super().__init__()
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

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log G_C(x): (..., D) -> (...)."""
        return self.mixture.log_prob(self._as_data(x, min_rows=0))

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
        for _ in range(num_components):
            self._add(x_tr, x_va, None, {})
        for _ in range(refit_passes):
            self._refit(x_tr, x_va)
        if finetune_steps:
            self._finetune(x_tr, x_va, finetune_steps)
        return self

    def fit_weights(self, x_val: torch.Tensor) -> BoostedFlowMixture:
        """Set all C weights to the exact maximizer of the log-likelihood of ``x_val``, flows fixed.

        Uses :func:`fit_mixture_weights` whatever ``rho`` is, so a mixture boosted with the fixed
        schedule (``rho="fixed"``: every flow trained against equal weights) can be given exact
        weights at the end.

        Args:
            x_val: held-out data (M, D), M >= 1.

        Returns:
            self.
        """
        self._check_fitted()
        self._set_exact_weights(self._as_data(x_val))
        return self

    def finetune(
        self, x: torch.Tensor, num_steps: int, *, x_val: torch.Tensor | None = None
    ) -> BoostedFlowMixture:
        """Train all components together on the mixture's log-likelihood; keep the best held-out state.

        .. math:: \\max_{\\theta_1..\\theta_C,\\, w}\\; \\sum_i \\log \\sum_c w_c\\, g_c(x_i; \\theta_c)

        Adam (``lr``) on ``batch_size`` minibatches; the weights w are learned too (as logits)
        unless ``rho="fixed"``, and with ``refit_weights`` they are re-fitted exactly on the
        held-out data at the end. The held-out log-likelihood is evaluated every ``eval_every``
        steps and the best state kept (``patience`` stops early).

        Args:
            x: training data (N, D).
            num_steps: optimizer steps, >= 1.
            x_val: held-out data (M, D); default: the ``val_fraction`` split of x.

        Returns:
            self.
        """
        self._check_fitted()
        if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1:
            raise ValueError(f"expected num_steps to be an int >= 1, got {num_steps!r}")
        x_tr, x_va = self._split(x, x_val)
        self._finetune(x_tr, x_va, num_steps)
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

    def refit(self, x: torch.Tensor, *, x_val: torch.Tensor | None = None) -> BoostedFlowMixture:
        """Second pass: re-train each component against the mixture of the others, re-weight it.

        For component c, ``G_{-c} = (G - w_c g_c) / (1 - w_c)``; g_c is trained further with
        weights ∝ 1 / G_{-c}(x_i) (others frozen) and its share rho searched again, giving weights
        ``(1 - rho) w_j / (1 - w_c)`` for j != c and ``rho`` for c.
        """
        self._check_fitted()
        x_tr, x_va = self._split(x, x_val)
        self._refit(x_tr, x_va)
        return self

    # --- variational mode -------------------------------------------------------------------
    def fit_variational(
        self,
        log_density: Callable[[torch.Tensor], torch.Tensor],
        num_components: int = 4,
        *,
        entropy_weight: float = 1.0,
        num_samples: int = 256,
        rho_samples: int = 4096,
        init_loc: torch.Tensor | None = None,
        init_scale: torch.Tensor | None = None,
    ) -> BoostedFlowMixture:
        """Fit the boosted mixture to an unnormalized target density by variational boosting.

        .. math:: g_c = \\arg\\max_g\\; \\mathbb E_g[\\log \\tilde p(x) - \\log G_{c-1}(x)] + \\lambda\\, \\mathbb H(g)

        Args:
            log_density: log p~(x) up to a constant, (S, D) -> (S,), differentiable.
            num_components: flows to add, C >= 1.
            entropy_weight: lambda > 0 (g_1 always uses 1, the ELBO).
            num_samples: reparameterized draws per step.
            rho_samples: draws from G_{c-1} and from g_c for the rho search.
            init_loc, init_scale: where new components start, shape (D,) each (default 0, 1).

        Returns:
            self.

        Raises:
            ValueError: non-coupling flows (their sampling direction is not analytic in one
                pass), bad counts or bad initial placement.
        """
        if self.component_config["flow"] not in ("affine_coupling", "spline_coupling"):
            raise ValueError(
                "expected an analytically invertible flow ('affine_coupling' or "
                f"'spline_coupling') for the variational mode, got {self.component_config['flow']!r}"
            )
        if not callable(log_density):
            raise ValueError(f"expected a callable log_density, got {type(log_density).__name__}")
        if not isinstance(num_components, int) or num_components < 1:
            raise ValueError(f"expected num_components to be an int >= 1, got {num_components!r}")
        if not entropy_weight > 0:
            raise ValueError(f"expected entropy_weight > 0, got {entropy_weight!r}")
        for name, value in (("num_samples", num_samples), ("rho_samples", rho_samples)):
            if not isinstance(value, int) or value < 2:
                raise ValueError(f"expected {name} to be an int >= 2, got {value!r}")
        dtype = torch.get_default_dtype()
        loc = torch.zeros(self.dim, dtype=dtype) if init_loc is None else torch.as_tensor(init_loc)
        scale = (
            torch.ones(self.dim, dtype=dtype) if init_scale is None else torch.as_tensor(init_scale)
        )
        if loc.shape != (self.dim,) or scale.shape != (self.dim,) or not bool((scale > 0).all()):
            raise ValueError(
                f"expected init_loc and a positive init_scale of shape ({self.dim},), got "
                f"{tuple(loc.shape)} and {tuple(scale.shape)}"
            )
        for _ in range(num_components):
            self._add_variational(
                log_density,
                entropy_weight,
                num_samples,
                rho_samples,
                loc.to(dtype),
                scale.to(dtype),
            )
        return self

    # --- internals --------------------------------------------------------------------------
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

    def _new_component(self, config: dict, like: torch.Tensor) -> FlowComponents:
        cfg = {**self.component_config, **config}
        c = len(self.stages)
        if self.seed is None:
            comp = FlowComponents(1, self.dim, **cfg)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed * 1000 + c)
                comp = FlowComponents(1, self.dim, **cfg)
        return comp.to(dtype=like.dtype, device=like.device)

    def _stage_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """log g_c(x) of every component: (N, D) -> (N, C)."""
        return torch.cat([s.component_log_probs(x) for s in self.stages], -1)

    @torch.no_grad()
    def _log_mix(self, x: torch.Tensor, exclude: int | None = None) -> torch.Tensor:
        """log of the mixture (renormalized without component ``exclude``) at x (N, D) -> (N,)."""
        log_w = self.log_weights.to(x.dtype)
        lp = self._stage_log_probs(x)  # (N, C)
        if exclude is not None:
            keep = [j for j in range(len(self.stages)) if j != exclude]
            log_w, lp = log_w[keep], lp[:, keep]
            log_w = log_w - log_w.logsumexp(0)
        return (log_w + lp).logsumexp(-1)

    def _train(self, comp, x_tr, w_tr, x_va, w_va, index: int, mix=None) -> dict:
        """Train comp's parameters only; keep the best held-out state.

        Without ``mix``: maximize sum_i w_i log g(x_i). With ``mix = (log G(x_tr), log G(x_va),
        rho0)``: maximize sum_i log((1 - rho) G(x_i) + rho g(x_i)), rho = sigmoid(a) learned from
        rho0 unless ``rho="fixed"`` or ``train_rho="fixed"``.
        """
        params = [p for p in comp.parameters() if p.requires_grad]
        a = None
        if mix is not None:
            lG_tr, lG_va, rho0 = mix
            rho0 = min(max(rho0, 1e-4), 1 - 1e-4)
            a = torch.tensor(math.log(rho0 / (1 - rho0)), dtype=x_tr.dtype, device=x_tr.device)
            if self.rho_mode == "search" and self.train_rho == "learned":
                a.requires_grad_(True)
                params = params + [a]
        opt = torch.optim.Adam(params, lr=self.lr)
        gen = self._generator(index + 1)
        N = x_tr.shape[0]
        B = min(self.batch_size, N)
        w_va = w_va / w_va.sum()

        def mix_ll(lG, lg):  # mean log((1 - rho) G + rho g) from log G, log g: (n,), (n,)
            return torch.logaddexp(F.logsigmoid(-a) + lG, F.logsigmoid(a) + lg).mean()

        def held_out() -> float:
            with torch.no_grad():
                lg = comp.component_log_probs(x_va)[:, 0]
                if mix is not None:
                    return float(-mix_ll(lG_va, lg))
                return float(-(w_va * lg).sum())

        def state():
            return copy.deepcopy(comp.state_dict()), None if a is None else a.detach().clone()

        best, best_state, bad, steps = held_out(), state(), 0, 0
        for step in range(self.num_steps):
            if self.weighting == "resample" and mix is None:
                idx = torch.multinomial(w_tr, B, replacement=True, generator=gen)
                loss = -comp.component_log_probs(x_tr[idx])[:, 0].mean()
            else:
                idx = torch.randint(N, (B,), generator=gen)
                lg = comp.component_log_probs(x_tr[idx])[:, 0]
                loss = -mix_ll(lG_tr[idx], lg) if mix is not None else -(w_tr[idx] * lg).mean()
            if not bool(torch.isfinite(loss)):
                break  # keep the best finite state found so far
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(params, 100.0)
            opt.step()
            steps = step + 1
            if steps % self.eval_every == 0 or steps == self.num_steps:
                value = held_out()
                if value < best:
                    best, best_state, bad = value, state(), 0
                else:
                    bad += 1
                    if self.patience is not None and bad >= self.patience:
                        break
        comp.load_state_dict(best_state[0])
        info = {"steps": steps, "val_objective": -best}
        if a is not None:
            info["rho_trained"] = float(torch.sigmoid(best_state[1]))
        return info

    def _candidates(self, x_tr: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Gaussians (loc (D,), scale (D,)) of the k-means clusters of x_tr, k = 1, 2, 4, ...,
        ``num_candidates``; cached for the last training set (they do not depend on G)."""
        cache = getattr(self, "_candidate_cache", None)
        if cache is not None and cache[0].shape == x_tr.shape and torch.equal(cache[0], x_tr):
            return cache[1]
        top = min(self.num_candidates, x_tr.shape[0])
        ks = sorted({min(2**j, top) for j in range(top.bit_length() + 1)})
        gen = self._generator(500)
        floor = 1e-3 * x_tr.std(0).clamp(min=1e-12)  # (D,)
        out = []
        with torch.no_grad():
            for k in ks:
                if k == 1:
                    labels = torch.zeros(x_tr.shape[0], dtype=torch.long, device=x_tr.device)
                else:
                    labels = kmeans(x_tr, k, n_init=3, generator=gen)[1]
                for j in range(k):
                    members = x_tr[labels == j]
                    if members.shape[0] >= 2:
                        out.append((members.mean(0), members.std(0) + floor))
        self._candidate_cache = (x_tr, out)
        return out

    def _greedy_start(self, x_tr: torch.Tensor, log_prev: torch.Tensor, c: int):
        """The best Gaussian to add to G among ``_candidates``, each scored by
        max_rho mean_i log((1 - rho) G(x_i) + rho N(x_i; loc, scale)) on the training data.

        Returns ``(loc (D,), scale (D,), rho)`` of the best candidate.
        """
        best = None
        with torch.no_grad():
            for loc, scale in self._candidates(x_tr):
                log_n = torch.distributions.Normal(loc, scale).log_prob(x_tr).sum(-1)  # (N,)
                rho = search_rho(log_prev, log_n)
                value = float(rho_objective(rho, log_prev, log_n))
                if best is None or value > best[0]:
                    best = (value, loc, scale, rho)
        if best is None:  # no cluster with two points: the data's moments
            return x_tr.mean(0), x_tr.std(0).clamp(min=1e-6), 1.0 / (c + 1)
        return best[1], best[2], best[3]

    def _freeze(self, requires_grad: bool = False) -> None:
        """Freeze (or, with True, release) every fitted component's parameters."""
        for p in self.stages.parameters():
            p.requires_grad_(requires_grad)

    def _add(self, x_tr, x_va, comp, config) -> float:
        start = time.perf_counter()
        c = len(self.stages)
        self._freeze()
        mix = None
        if c == 0:
            w_tr = torch.ones(x_tr.shape[0], dtype=x_tr.dtype)
            w_va = torch.ones(x_va.shape[0], dtype=x_va.dtype)
        else:
            lG_tr, lG_va = self._log_mix(x_tr), self._log_mix(x_va)
            w_tr = boosting_weights(lG_tr, self.weight_clip)
            w_va = boosting_weights(lG_va, self.weight_clip)
        rho0 = 1.0 / (c + 1)
        if comp is None:
            comp = self._new_component(config, x_tr)
            previous = self.stages[-1] if c else None
            if c and self.init == "greedy":
                loc, scale, rho_g = self._greedy_start(x_tr, lG_tr, c)
                comp.set_affine(loc.unsqueeze(0), scale.unsqueeze(0))
                if self.rho_mode == "search" and self.train_rho == "learned":
                    rho0 = rho_g
            elif (
                self.init == "previous"
                and isinstance(previous, FlowComponents)
                and previous.config == comp.config
            ):
                comp.load_state_dict(previous.state_dict())  # a copy: the frozen one is untouched
            else:  # the weighted data's mean and standard deviation
                p = (w_tr / w_tr.sum()).unsqueeze(-1)  # (N, 1)
                mean = (p * x_tr).sum(0)
                std = (p * (x_tr - mean).square()).sum(0).sqrt().clamp(min=1e-6)
                comp.set_affine(mean.unsqueeze(0), std.unsqueeze(0))
        else:
            comp = comp.to(dtype=x_tr.dtype, device=x_tr.device)
        if c and self.objective == "mixture":
            mix = (lG_tr, lG_va, rho0)
        info = self._train(comp, x_tr, w_tr, x_va, w_va, c, mix)
        with torch.no_grad():
            if c == 0:
                rho = 1.0
            elif self.rho_mode == "fixed":
                rho = 1.0 / (c + 1)
            else:
                rho = search_rho(lG_va, comp.component_log_probs(x_va)[:, 0])
        self._append(comp, rho)
        self._freeze(True)
        if self.refit_weights:
            self._refit_weights(x_va)
        info.update(
            component=c,
            rho=rho,
            val_log_likelihood=float(self._log_mix(x_va).mean()),
            seconds=time.perf_counter() - start,
        )
        self.history.append(info)
        return rho

    @torch.no_grad()
    def _refit_weights(self, x_va: torch.Tensor) -> None:
        """Exact re-fit of all weights on held-out data (``rho="search"`` only)."""
        if self.rho_mode != "search" or len(self.stages) < 2:
            return
        self._set_exact_weights(x_va)

    @torch.no_grad()
    def _set_exact_weights(self, x_va: torch.Tensor) -> None:
        """All C weights = the exact maximizer of the log-likelihood of x_va, flows fixed."""
        self.log_weights = fit_mixture_weights(self._stage_log_probs(x_va)).to(
            self.log_weights.dtype
        )

    def _finetune(self, x_tr, x_va, num_steps: int) -> None:
        """Joint training of all components (and the weights, unless rho is fixed)."""
        start = time.perf_counter()
        self._freeze(True)
        learn_w = self.rho_mode == "search" and len(self.stages) > 1
        logits = self.log_weights.clamp(min=-30.0).clone().to(x_tr.dtype).requires_grad_(learn_w)
        params = list(self.stages.parameters()) + ([logits] if learn_w else [])
        opt = torch.optim.Adam(params, lr=self.lr)
        gen = self._generator(900)
        N = x_tr.shape[0]
        B = min(self.batch_size, N)

        def log_mix(x):
            return (logits.log_softmax(0) + self._stage_log_probs(x)).logsumexp(-1)

        def held_out() -> float:
            with torch.no_grad():
                return float(log_mix(x_va).mean())

        def state():
            return copy.deepcopy(self.stages.state_dict()), logits.detach().clone()

        best, best_state, bad, steps = held_out(), state(), 0, 0
        for step in range(num_steps):
            idx = torch.randint(N, (B,), generator=gen)
            loss = -log_mix(x_tr[idx]).mean()
            if not bool(torch.isfinite(loss)):
                break
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(params, 100.0)
            opt.step()
            steps = step + 1
            if steps % self.eval_every == 0 or steps == num_steps:
                value = held_out()
                if value > best:
                    best, best_state, bad = value, state(), 0
                else:
                    bad += 1
                    if self.patience is not None and bad >= self.patience:
                        break
        self.stages.load_state_dict(best_state[0])
        with torch.no_grad():
            self.log_weights = best_state[1].log_softmax(0).to(self.log_weights.dtype)
        if self.refit_weights:
            self._refit_weights(x_va)
        self.history.append(
            {
                "finetune": True,
                "steps": steps,
                "val_log_likelihood": float(self._log_mix(x_va).mean()),
                "seconds": time.perf_counter() - start,
            }
        )

    def _append(self, comp, rho: float) -> None:
        with torch.no_grad():
            lw = self.log_weights
            new = torch.tensor([math.log(rho) if rho > 0 else -math.inf], dtype=lw.dtype)
            old = lw + (math.log1p(-rho) if rho < 1 else -math.inf)
            self.log_weights = torch.cat([old, new])
        self.stages.append(comp)
        self.rhos.append(rho)

    def _refit(self, x_tr, x_va) -> None:
        for c in range(len(self.stages)):
            w_c = float(self.log_weights[c].exp())
            if len(self.stages) < 2 or w_c >= 1.0:
                continue
            start = time.perf_counter()
            self._freeze()
            comp = self.stages[c]
            for p in comp.parameters():
                p.requires_grad_(True)
            w_tr = boosting_weights(self._log_mix(x_tr, exclude=c), self.weight_clip)
            w_va = boosting_weights(self._log_mix(x_va, exclude=c), self.weight_clip)
            info = self._train(comp, x_tr, w_tr, x_va, w_va, 100 + c)
            self._freeze(True)
            with torch.no_grad():
                if self.rho_mode == "fixed":
                    rho = w_c
                else:
                    rho = search_rho(
                        self._log_mix(x_va, exclude=c), comp.component_log_probs(x_va)[:, 0]
                    )
                keep = [j for j in range(len(self.stages)) if j != c]
                lw = self.log_weights.clone()
                lw[keep] = (
                    lw[keep] - math.log1p(-w_c) + (math.log1p(-rho) if rho < 1 else -math.inf)
                )
                lw[c] = math.log(rho) if rho > 0 else -math.inf
                self.log_weights = lw
            info.update(
                component=c,
                rho=rho,
                refit=True,
                val_log_likelihood=float(self._log_mix(x_va).mean()),
                seconds=time.perf_counter() - start,
            )
            self.history.append(info)
        if self.refit_weights:
            self._refit_weights(x_va)

    def _add_variational(self, log_density, lam, S, rho_S, loc, scale) -> float:
        start = time.perf_counter()
        c = len(self.stages)
        comp = self._new_component({}, loc)
        comp.set_affine(loc.unsqueeze(0), scale.unsqueeze(0))
        self._freeze()
        params = list(comp.parameters())
        opt = torch.optim.Adam(params, lr=self.lr)
        gen = self._generator(c + 1)
        dtype = loc.dtype
        for _ in range(self.num_steps):
            u = torch.randn(S, 1, self.dim, generator=gen, dtype=dtype)
            x, log_det = comp.transform(u)  # (S, 1, D), (S, 1)
            x, log_g = x[:, 0], comp.base_log_prob(u[:, 0]) - log_det[:, 0]  # (S, D), (S,)
            if c == 0:
                objective = log_density(x) - log_g
            else:
                log_prev = self._log_mix_grad(x)
                objective = log_density(x) - log_prev - lam * log_g
            loss = -objective.mean()
            if not bool(torch.isfinite(loss)):
                raise FloatingPointError(
                    f"non-finite variational loss for component {c}; lower lr or check log_density"
                )
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(params, 100.0)
            opt.step()
        if c == 0:
            rho = 1.0
        elif self.rho_mode == "fixed":
            rho = 1.0 / (c + 1)
        else:
            rho = self._variational_rho(comp, log_density, rho_S, gen, dtype)
        self._append(comp, rho)
        self._freeze(True)
        self.history.append(
            {
                "component": c,
                "rho": rho,
                "steps": self.num_steps,
                "seconds": time.perf_counter() - start,
            }
        )
        return rho

    def _log_mix_grad(self, x: torch.Tensor) -> torch.Tensor:
        """log G_{c-1}(x) with gradients flowing to x (frozen parameters): (S, D) -> (S,)."""
        return (self.log_weights.to(x.dtype) + self._stage_log_probs(x)).logsumexp(-1)

    @torch.no_grad()
    def _variational_rho(self, comp, log_density, S, gen, dtype) -> float:
        """Maximize the ELBO of (1 - rho) G + rho g with fixed draws from G and from g."""
        draws_G = self.mixture.sample((S,)).to(dtype)  # (S, D)
        u = torch.randn(S, 1, self.dim, generator=gen, dtype=dtype)
        draws_g = comp.transform(u)[0][:, 0]  # (S, D)
        stats = []
        for x in (draws_G, draws_g):
            stats.append(
                (
                    log_density(x).double(),
                    self._log_mix(x).double(),
                    comp.component_log_probs(x)[:, 0].double(),
                )
            )

        def elbo(rho: float) -> float:
            total = 0.0
            for share, (lp, lG, lg) in zip((1 - rho, rho), stats, strict=True):
                if share == 0:
                    continue
                log_mix = torch.logaddexp(
                    (math.log1p(-rho) if rho < 1 else -math.inf) + lG,
                    (math.log(rho) if rho > 0 else -math.inf) + lg,
                )
                total += share * float((lp - log_mix).mean())
            return total

        return _golden_section_max(elbo)
