"""A truncated Dirichlet-process mixture of flows: the model, a global guide, and read-outs."""

from __future__ import annotations

import math
import numbers

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import config_enumerate
from pyro.nn import PyroModule, PyroParam
from torch.distributions import constraints

from .._validation import check_event, check_finite
from ..distributions import FlowMixture, StickBreaking, StickWeights, weights_to_sticks
from ..flows.components import Components

DEFAULT_THRESHOLD = 0.01
"""Weight below which a component counts as pruned (1%, the convention of the benchmarks)."""


def _check_threshold(threshold: float) -> None:
    if not isinstance(threshold, numbers.Real) or not 0 <= threshold < 1:
        raise ValueError(f"expected a threshold in [0, 1), got {threshold!r}")


class DPFlowMixtureModel:
    """Dirichlet-process mixture of T flows, truncated at T = ``components.num_components``.

    .. math::

        \\alpha \\sim \\mathrm{Gamma}(a_0, b_0) \\text{ (optional)}, \\quad
        w \\sim \\mathrm{StickBreaking}(\\alpha, T), \\quad
        z_n \\sim \\mathrm{Cat}(w), \\quad x_n \\sim p_{z_n}(x_n),

    with sites "alpha", "w", "z" (enumerated in parallel: run it with ``TraceEnum_ELBO``, never a
    score-function estimator) and "x". The flows are point estimates: they are registered with
    ``pyro.module("components", ...)`` and trained as parameters of the model. The weights are
    global, so under a subsampled plate of B rows the local terms are scaled by N/B while
    log p(w) and log p(alpha) are counted once, which is the correct minibatch ELBO.

    Small alpha makes the stick prior prune components the data do not need; the number left is
    read off with ``effective_components``. Pair it with ``DPStickGuide`` (``model.guide()``).

    Args:
        components: T flow components (``FlowComponents`` or ``DistributionComponents``).
        concentration: alpha > 0, fixed (ignored if ``concentration_prior`` is given).
        concentration_prior: ``(shape, rate)`` of a Gamma prior on alpha (site "alpha").
        finite: use the finite symmetric Dirichlet(alpha) in stick form instead of the DP.

    Raises:
        TypeError: ``components`` is not a ``Components``.
        ValueError: a non-positive concentration or prior parameter.

    Example::

        >>> comps = FlowComponents(6, 2, flow="affine_coupling", num_layers=2)
        >>> model = DPFlowMixtureModel(comps, concentration=0.5)
        >>> guide = model.guide()
        >>> svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), TraceEnum_ELBO(max_plate_nesting=1))
        >>> loss = svi.step(torch.randn(10, 2), subsample=torch.arange(4))
        >>> guide.mean_weights().shape, int(effective_components(guide.mean_weights()))
        (torch.Size([6]), 6)
    """

    def __init__(
        self,
        components: Components,
        *,
        concentration: float = 1.0,
        concentration_prior: tuple[float, float] | None = None,
        finite: bool = False,
    ) -> None:
        if not isinstance(components, Components):
            raise TypeError(
                "expected components to be a pyro_mixflows Components (FlowComponents or "
                f"DistributionComponents), got {type(components).__name__}"
            )
        if not isinstance(concentration, numbers.Real) or concentration <= 0:
            raise ValueError(f"expected a concentration > 0, got {concentration!r}")
        if concentration_prior is not None:
            if len(concentration_prior) != 2 or min(concentration_prior) <= 0:
                raise ValueError(
                    "expected concentration_prior = (shape, rate), both > 0, got "
                    f"{concentration_prior!r}"
                )
            concentration_prior = (float(concentration_prior[0]), float(concentration_prior[1]))
        self.components = components
        self.concentration = float(concentration)
        self.concentration_prior = concentration_prior
        self.finite = bool(finite)

    @property
    def truncation(self) -> int:
        """T, the number of components."""
        return self.components.num_components

    def _check_data(self, data: torch.Tensor) -> None:
        check_event(data, self.components.dim, name="data (site 'x')")
        if data.dim() != 2:
            raise ValueError(f"expected data of shape (N, D) for site 'x', got {tuple(data.shape)}")
        check_finite(data, name="data (site 'x')")

    @config_enumerate
    def __call__(self, data: torch.Tensor, subsample: torch.Tensor | None = None) -> torch.Tensor:
        """Run the model on data (N, D); ``subsample`` (B,) picks the rows of this step."""
        self._check_data(data)
        pyro.module("components", self.components)
        param = next(self.components.parameters(), data)
        like = torch.zeros((), dtype=param.dtype, device=param.device)
        if self.concentration_prior is None:
            alpha = like + self.concentration
        else:
            shape, rate = self.concentration_prior
            alpha = pyro.sample("alpha", dist.Gamma(like + shape, like + rate))
        w = pyro.sample("w", StickBreaking(alpha, self.truncation, finite=self.finite))  # (T,)
        N = data.shape[0]
        with pyro.plate("data", N, subsample=subsample) as idx:
            x = data if subsample is None else data[idx]  # (B, D)
            z = pyro.sample("z", dist.Categorical(probs=w))
            pyro.sample("x", self.components.component(z), obs=x)
        return z

    def guide(self, **kwargs) -> DPStickGuide:
        """A ``DPStickGuide`` that matches this model (truncation, alpha site); kwargs pass on."""
        kwargs.setdefault("concentration", "lognormal" if self.concentration_prior else None)
        return DPStickGuide(self.truncation, **kwargs)


class DPStickGuide(PyroModule):
    """Global-only guide for ``DPFlowMixtureModel``: independent variational sticks for "w".

    .. math:: q(w) = \\mathrm{StickWeights}\\big(\\textstyle\\prod_{t<T} q(v_t)\\big), \\quad
        q(v_t) = \\mathrm{Beta}(a_t, b_t) \\text{ or } \\mathrm{Kumaraswamy}(a_t, b_t),

    and, when the model puts a prior on alpha, q(alpha) = LogNormal(m, s) or a point mass
    (``Delta``, a MAP estimate of alpha). The assignments "z" are not in the guide: the model
    enumerates them. The flows have no guide site (they are the model's parameters). Both stick
    families are reparameterized, so the ELBO gradient is pathwise.

    Parameters are created at construction; the Beta sticks start at the means that give
    ``init_weights`` (uniform weights by default, E[v_t] = 1 / (T - t + 1)), with
    a_t + b_t = ``init_precision``.

    Args:
        truncation: T >= 2, the number of weights.
        sticks: "beta" or "kumaraswamy".
        concentration: None (alpha is fixed in the model), "lognormal" or "delta".
        init_concentration: initial alpha (median of the LogNormal, or the point mass).
        init_precision: a_t + b_t at the start; larger means less noise in early steps.
        init_weights: initial E_q[w], (T,) on the simplex with positive entries (default uniform).
        name: prefix of the guide's parameters in Pyro's param store.

    Example::

        >>> guide = DPStickGuide(5)
        >>> guide(torch.randn(3, 2)).shape, guide.mean_weights().shape
        (torch.Size([5]), torch.Size([5]))
    """

    def __init__(
        self,
        truncation: int,
        *,
        sticks: str = "beta",
        concentration: str | None = None,
        init_concentration: float = 1.0,
        init_precision: float = 10.0,
        init_weights: torch.Tensor | None = None,
        name: str = "dp_guide",
    ) -> None:
        super().__init__(name)
        if not isinstance(truncation, int) or isinstance(truncation, bool) or truncation < 2:
            raise ValueError(f"expected truncation to be an int >= 2, got {truncation!r}")
        if sticks not in ("beta", "kumaraswamy"):
            raise ValueError(f"expected sticks in ('beta', 'kumaraswamy'), got {sticks!r}")
        if concentration not in (None, "lognormal", "delta"):
            raise ValueError(
                f"expected concentration in (None, 'lognormal', 'delta'), got {concentration!r}"
            )
        if init_concentration <= 0 or init_precision <= 0:
            raise ValueError(
                "expected init_concentration > 0 and init_precision > 0, got "
                f"{init_concentration!r}, {init_precision!r}"
            )
        T = truncation
        if init_weights is None:
            init_weights = torch.full((T,), 1.0 / T)
        init_weights = torch.as_tensor(init_weights, dtype=torch.get_default_dtype())
        if (
            init_weights.shape != (T,)
            or not bool((init_weights > 0).all())
            or abs(float(init_weights.sum()) - 1) > 1e-6
        ):
            raise ValueError(
                f"expected init_weights of shape ({T},), positive and summing to one, "
                f"got {init_weights!r}"
            )
        self.truncation = T
        self.sticks = sticks
        self.concentration = concentration
        mean = weights_to_sticks(init_weights)[0]  # (T-1,), E[v_t] of the Beta sticks
        self.stick_a = PyroParam(init_precision * mean, constraint=constraints.positive)
        self.stick_b = PyroParam(init_precision * (1 - mean), constraint=constraints.positive)
        if concentration == "lognormal":
            self.alpha_loc = PyroParam(torch.tensor(float(init_concentration)).log())
            self.alpha_scale = PyroParam(torch.tensor(0.1), constraint=constraints.positive)
        elif concentration == "delta":
            self.alpha_map = PyroParam(
                torch.tensor(float(init_concentration)), constraint=constraints.positive
            )

    def weights_distribution(self) -> StickWeights:
        """q(w), a ``StickWeights`` over the T-simplex."""
        a, b = self.stick_a, self.stick_b
        family = dist.Beta if self.sticks == "beta" else dist.Kumaraswamy
        return StickWeights(dist.Independent(family(a, b), 1))

    def forward(self, data: torch.Tensor | None = None, subsample=None) -> torch.Tensor:
        if self.concentration == "lognormal":
            pyro.sample("alpha", dist.LogNormal(self.alpha_loc, self.alpha_scale))
        elif self.concentration == "delta":
            pyro.sample("alpha", dist.Delta(self.alpha_map))
        return pyro.sample("w", self.weights_distribution())

    @torch.no_grad()
    def mean_weights(self) -> torch.Tensor:
        """E_q[w], (T,): exact for independent sticks."""
        return self.weights_distribution().mean

    @torch.no_grad()
    def concentration_estimate(self) -> torch.Tensor | None:
        """The median of q(alpha) (LogNormal) or its point mass; None when alpha is fixed."""
        if self.concentration == "lognormal":
            return self.alpha_loc.exp()
        if self.concentration == "delta":
            return self.alpha_map.detach().clone()
        return None


def effective_components(
    weights: torch.Tensor, threshold: float = DEFAULT_THRESHOLD
) -> torch.Tensor:
    """The number of components whose weight is at least ``threshold``.

    The default threshold, 1% of the mass, is the convention of the benchmarks: a component that
    explains fewer than one point in a hundred is counted as pruned by the stick prior.

    Args:
        weights: mixture weights on the simplex, (..., T).
        threshold: in [0, 1).

    Returns:
        A long tensor of shape (...).
    """
    _check_threshold(threshold)
    return (weights >= threshold).sum(-1)


def active_components(weights: torch.Tensor, threshold: float = DEFAULT_THRESHOLD) -> torch.Tensor:
    """Mask (..., T) of components with weight >= ``threshold``; the heaviest is always kept."""
    _check_threshold(threshold)
    heaviest = weights == weights.max(-1, keepdim=True).values
    return (weights >= threshold) | heaviest


def responsibilities(
    components: Components,
    weights: torch.Tensor,
    x: torch.Tensor,
    threshold: float = DEFAULT_THRESHOLD,
) -> torch.Tensor:
    """p(k | x) under the fitted weights, never assigning a point to an empty component.

    Components with weight below ``threshold`` are removed and the remaining weights
    renormalized before Bayes' rule, so a pruned flow, which the data no longer constrain and
    whose density can be anything, cannot claim a point:

    .. math:: r_{nk} \\propto \\mathbb{1}[w_k \\ge \\tau] \\, w_k \\, p_k(x_n).

    Args:
        components: the T components.
        weights: fitted weights (T,) (e.g. ``DPStickGuide.mean_weights()``).
        x: points (..., D).
        threshold: the pruning threshold tau (see ``effective_components``).

    Returns:
        (..., T), zero on pruned components, rows summing to one.
    """
    return _pruned_mixture(components, weights, threshold).responsibilities(x)


def _pruned_mixture(components: Components, weights: torch.Tensor, threshold: float) -> FlowMixture:
    """The mixture with the components below ``threshold`` removed (weights renormalized)."""
    keep = active_components(weights, threshold)  # (T,)
    logits = torch.where(keep, weights.log(), torch.full_like(weights, -torch.inf))
    return FlowMixture(components, logits=logits)


def connected_groups(
    joined: torch.Tensor, weights: torch.Tensor, keep: torch.Tensor | None = None
) -> torch.Tensor:
    """The connected sets of a symmetric relation between T components (single linkage).

    Args:
        joined: (T, T) bool, the pairs joined.
        weights: (T,) the components' weights.
        keep: (T,) bool, the components taking part (default all).

    Returns:
        (T,) long: the group of each component, numbered 0, 1, ... by decreasing total weight,
        and -1 for components not kept.
    """
    T = joined.shape[0]
    keep = torch.ones(T, dtype=torch.bool) if keep is None else keep.cpu()
    parent = list(range(T))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in joined.nonzero().tolist():
        if keep[i] and keep[j]:
            parent[root(i)] = root(j)
    roots = [root(i) if keep[i] else -1 for i in range(T)]
    mass: dict[int, float] = {}
    for i, r in enumerate(roots):
        if r >= 0:
            mass[r] = mass.get(r, 0.0) + float(weights[i])
    order = sorted(mass, key=lambda r: -mass[r])
    number = {r: g for g, r in enumerate(order)}
    return torch.tensor([number.get(r, -1) for r in roots], dtype=torch.long)


@torch.no_grad()
def density_connected_groups(
    components: Components,
    weights: torch.Tensor,
    x: torch.Tensor,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    n_neighbors: int = 10,
    num_points: int = 8,
    ratio: float = 0.25,
    max_points: int = 2000,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Group the active components whose points are joined through dense regions of the mixture.

    A truncated DP mixture of flexible flows tends to cut one cluster into several components:
    the stick prior charges little for a component and flows gain likelihood from the cut. Two
    pieces of one cluster touch inside it, two clusters meet only across a low-density gap, so
    the fitted density tells them apart. Each point goes to its most probable active component;
    for every k-NN edge between points of components i and j, the edge's level is the lowest
    mixture log-density on the segment (its ends and ``num_points`` inner points). Components i
    and j are joined when their best edge's level is at least ``log(ratio)`` above the median
    log-density of the points of the sparser of the two, and groups are the connected sets of
    that relation (single linkage).

    Args:
        components: the T components.
        weights: the fitted weights (T,) (pruned below ``threshold``).
        x: data (N, D) on the scale of the fit (N >= 2); a random subset of ``max_points`` rows
            is used when N is larger.
        threshold: weight below which a component is pruned (see ``effective_components``).
        n_neighbors: k of the k-NN graph.
        num_points: inner points per edge at which the density is evaluated.
        ratio: in (0, 1]; a bridge must be at least this fraction of the sparser component's
            median density.
        max_points: subsample size for the k-NN graph.
        generator: for the subsample.

    Returns:
        (T,) long: the group of each component, numbered 0, 1, ... by decreasing total weight,
        and -1 for pruned components.

    Example::

        >>> comps = FlowComponents(3, 2, flow="affine_coupling", num_layers=0)
        >>> comps.set_affine(torch.tensor([[-4.0, 0], [-3.0, 0], [4.0, 0]]), torch.ones(3, 2))
        >>> x = torch.cat([torch.randn(200, 2) * 0.5 + torch.tensor([-3.5, 0]), torch.randn(100, 2) + 4])
        >>> density_connected_groups(comps, torch.tensor([0.3, 0.3, 0.4]), x).tolist()
        [0, 0, 1]
    """
    _check_threshold(threshold)
    check_finite(x, "x")
    if x.dim() != 2 or x.shape[0] < 2:
        raise ValueError(f"expected x of shape (N >= 2, D), got {tuple(x.shape)}")
    for name, value in (("n_neighbors", n_neighbors), ("num_points", num_points)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"expected {name} to be an int >= 1, got {value!r}")
    if not 0 < ratio <= 1:
        raise ValueError(f"expected ratio in (0, 1], got {ratio!r}")
    T = components.num_components
    if weights.shape != (T,):
        raise ValueError(f"expected weights of shape ({T},), got {tuple(weights.shape)}")
    if x.shape[0] > max_points:
        x = x[torch.randperm(x.shape[0], generator=generator)[:max_points].to(x.device)]
    weights = weights.to(device=x.device, dtype=x.dtype)
    keep = active_components(weights, threshold)
    mixture = _pruned_mixture(components, weights, threshold)
    labels = mixture.responsibilities(x).argmax(-1)  # (N,)
    log_p = mixture.log_prob(x)  # (N,)
    k = min(n_neighbors, x.shape[0] - 1)
    neighbors = torch.cdist(x, x).topk(k + 1, largest=False).indices[:, 1:]  # (N, k), self first
    a = torch.arange(x.shape[0], device=x.device).repeat_interleave(k)
    b = neighbors.reshape(-1)
    cross = labels[a] != labels[b]
    a, b = a[cross], b[cross]
    # Median log-density of each component's points (-inf for components that got none).
    median = torch.full((T,), -torch.inf, dtype=x.dtype, device=x.device)
    for c in labels.unique().tolist():
        median[c] = log_p[labels == c].median()
    best = torch.full((T * T,), -torch.inf, dtype=x.dtype, device=x.device)
    if len(a):
        t = torch.linspace(0, 1, num_points + 2, dtype=x.dtype, device=x.device)[1:-1]
        inner = x[a].unsqueeze(1) + t.unsqueeze(-1) * (x[b] - x[a]).unsqueeze(1)  # (E, m, D)
        level = mixture.log_prob(inner).min(-1).values
        level = torch.minimum(level, torch.minimum(log_p[a], log_p[b]))  # (E,)
        best.scatter_reduce_(0, labels[a] * T + labels[b], level, "amax")
    best = best.reshape(T, T)
    best = torch.maximum(best, best.T)
    joined = best - torch.minimum(median[:, None], median[None, :]) >= math.log(ratio)
    return connected_groups(joined, weights, keep)
