"""K flows behind one interface: the component-batched path and the heterogeneous fallback."""

from __future__ import annotations

import functools
import math
import numbers
import types
from collections.abc import Sequence

import torch
from torch import nn
from torch.distributions import ComposeTransform, Distribution, Transform, TransformedDistribution

from .._validation import check_index
from .base import Components
from .layers import (
    AffineCoupling,
    BatchedLayer,
    ElementwiseAffine,
    MaskedAutoregressive,
    Permute,
    SplineCoupling,
    TriangularAffine,
)

FLOWS = ("affine_coupling", "maf", "spline_coupling")
# The data-side affine map of every component: per-axis scales or a full lower-triangular matrix.
AFFINES = ("diagonal", "full")
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
# forward evaluates (component, point) rows in chunks of about this many
CHUNK_ROWS = 8192


def standard_normal_log_prob(u: torch.Tensor) -> torch.Tensor:
    """Log-density of N(0, I) summed over the last dimension: (..., D) -> (...)."""
    return -0.5 * u.square().sum(-1) - u.shape[-1] * _HALF_LOG_2PI


class FlowComponents(Components):
    """K independent normalizing flows over R^D, evaluated in one batched pass.

    Component k maps a standard normal draw u through its own layers,
    ``x = A_k(T_{k,L}(... T_{k,1}(u)))``, with A_k a per-component affine map (elementwise, or
    full: ``A_k(v) = loc_k + L_k v`` with L_k lower-triangular), so

    .. math:: \\log p_k(x) = \\log \\mathcal{N}(f_k^{-1}(x); 0, I) + \\log |\\det \\partial f_k^{-1}(x) / \\partial x|.

    Every parameter carries a leading K axis and all K flows run as batched matmuls
    (``torch.baddbmm``), never a Python loop over components. The flow layers start at the
    identity (their conditioners' last layer is zero), so with ``affine="full"`` a fresh
    instance placed by ``set_gaussian`` is exactly a full-covariance Gaussian per component,
    and training refines it from there.

    Args:
        num_components: K >= 1.
        dim: D >= 1 (coupling flows need D >= 2).
        flow: "spline_coupling" (NSF, Durkan et al., 2019, arXiv:1906.04032), "affine_coupling"
            (RealNVP, Dinh et al., 2017, arXiv:1605.08803) or "maf" (Papamakarios et al., 2017,
            arXiv:1705.07057).
        num_layers: flow layers per component.
        hidden_dims: hidden sizes of each layer's conditioner network.
        count_bins: spline bins ("spline_coupling").
        bound: the spline acts on [-bound, bound]; identity tails outside.
        activation: conditioner activation, one of "relu", "elu", "silu", "tanh", "gelu".
        affine: the data-side map A_k: "diagonal" (loc + scale * v, 2D parameters) or "full"
            (loc + L v with L lower-triangular, D + D(D+1)/2 parameters: every component can be
            any full-covariance Gaussian).

    Example::

        >>> comps = FlowComponents(3, 2, flow="affine_coupling")
        >>> comps(torch.randn(5, 2)).shape  # log p_k(x): (N, D) -> (N, K)
        torch.Size([5, 3])
    """

    def __init__(
        self,
        num_components: int,
        dim: int,
        *,
        flow: str = "spline_coupling",
        num_layers: int = 4,
        hidden_dims: Sequence[int] = (64, 64),
        count_bins: int = 8,
        bound: float = 5.0,
        activation: str = "relu",
        affine: str = "diagonal",
    ) -> None:
        super().__init__()
        for name, value in (("num_components", num_components), ("dim", dim)):
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
                raise ValueError(f"expected {name} to be an int >= 1, got {value!r}")
        num_components, dim = int(num_components), int(dim)  # NumPy integers welcome
        if flow not in FLOWS:
            raise ValueError(f"expected flow in {FLOWS}, got {flow!r}")
        if affine not in AFFINES:
            raise ValueError(f"expected affine in {AFFINES}, got {affine!r}")
        if not isinstance(num_layers, numbers.Integral) or num_layers < 0:
            raise ValueError(f"expected num_layers to be an int >= 0, got {num_layers!r}")
        num_layers = int(num_layers)
        hidden_dims = tuple(int(h) for h in hidden_dims)
        if any(h < 1 for h in hidden_dims):
            raise ValueError(f"expected positive hidden_dims, got {hidden_dims}")
        if flow == "spline_coupling" and (count_bins < 2 or bound <= 0):
            raise ValueError(f"expected count_bins >= 2 and bound > 0, got {count_bins}, {bound}")
        self.num_components = num_components
        self.dim = dim
        self.flow = flow
        self.config = dict(
            flow=flow,
            num_layers=num_layers,
            hidden_dims=hidden_dims,
            count_bins=count_bins,
            bound=bound,
            activation=activation,
            affine=affine,
        )
        K, D = num_components, dim
        layers: list[BatchedLayer] = []
        generator = torch.Generator().manual_seed(0)  # fixed, so the architecture is reproducible
        for i in range(num_layers):
            flip = i % 2 == 1
            if flow == "maf":
                layers.append(MaskedAutoregressive(K, D, hidden_dims, activation=activation))
                if D > 1 and i < num_layers - 1:
                    layers.append(Permute(torch.arange(D - 1, -1, -1)))
                continue
            if flow == "affine_coupling":
                layers.append(AffineCoupling(K, D, hidden_dims, flip=flip, activation=activation))
            else:
                layers.append(
                    SplineCoupling(
                        K,
                        D,
                        hidden_dims,
                        flip=flip,
                        activation=activation,
                        count_bins=count_bins,
                        bound=bound,
                    )
                )
            if D > 2 and flip and i < num_layers - 1:
                layers.append(Permute(torch.randperm(D, generator=generator)))
        if flow != "maf" and D < 2 and num_layers > 0:
            raise ValueError(f"expected dim >= 2 for flow={flow!r}, got {dim}; use flow='maf'")
        self.layers = nn.ModuleList(layers)
        # the data-side end of every component
        self.affine = TriangularAffine(K, D) if affine == "full" else ElementwiseAffine(K, D)

    # --- the two directions, in the internal (K, M, D) layout --------------------------------
    def _to_data(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_det = u.new_zeros(u.shape[:-1])
        for layer in self.layers:
            u, ld = layer.to_data(u)
            log_det = log_det + ld
        x, ld = self.affine.to_data(u)
        return x, log_det + ld

    def _to_base(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u, log_det = self.affine.to_base(x)
        for layer in reversed(self.layers):
            u, ld = layer.to_base(u)
            log_det = log_det + ld
        return u, log_det

    def _per_component(self, fn, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply ``fn`` to t of shape (..., K or 1, D) -> ((..., K, D), (..., K))."""
        self._check_x(t)
        if t.dim() < 2 or t.shape[-2] not in (1, self.num_components):
            raise ValueError(
                f"expected shape (..., K={self.num_components}, D={self.dim}), got {tuple(t.shape)}"
            )
        K = self.num_components
        t = t.expand(*t.shape[:-2], K, self.dim)
        batch = t.shape[:-2]
        flat = t.movedim(-2, 0).reshape(K, -1, self.dim)  # (K, M, D)
        out, log_det = fn(flat)
        out = out.reshape(K, *batch, self.dim).movedim(0, -2)
        return out, log_det.reshape(K, *batch).movedim(0, -1)

    # --- public maps ---------------------------------------------------------------------
    def transform(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Base to data for every component: u (..., K, D) -> x (..., K, D), log|det dx/du| (..., K)."""
        return self._per_component(self._to_data, u)

    def inverse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Data to base for every component: x (..., K or 1, D) -> u (..., K, D), log|det du/dx| (..., K)."""
        return self._per_component(self._to_base, x)

    def base_log_prob(self, u: torch.Tensor) -> torch.Tensor:
        """Standard normal base log-density: (..., D) -> (...)."""
        return standard_normal_log_prob(u)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Log-density of x under every component: (..., D) -> (..., K).

        ``component_log_probs(x)`` is the same; calling the module (``comps(x)``) goes through
        torch's hooks, ``comps.compile()`` and ``torch.func.functional_call``.
        """
        self._check_x(x)
        batch = x.shape[:-1]
        K = self.num_components
        flat = x.reshape(1, -1, self.dim).expand(K, -1, -1)  # (K, M, D)
        # Rows in chunks of about CHUNK_ROWS (component, point) pairs, so that every
        # intermediate of a chunk stays in cache (same values; not a loop over components).
        chunk = max(1, CHUNK_ROWS // K)
        lps = []
        for piece in flat.split(chunk, dim=1):
            u, log_det = self._to_base(piece)
            lps.append(standard_normal_log_prob(u) + log_det)  # (K, chunk)
        lp = lps[0] if len(lps) == 1 else torch.cat(lps, dim=1)  # (K, M)
        return lp.transpose(0, 1).reshape(*batch, K)

    def rsample(self, sample_shape=()) -> torch.Tensor:
        sample_shape = torch.Size(sample_shape)
        p = self.affine.loc
        u = torch.randn(
            *sample_shape, self.num_components, self.dim, dtype=p.dtype, device=p.device
        )
        return self.transform(u)[0]

    def rsample_index(self, index: torch.Tensor) -> torch.Tensor:
        """Draw from component ``index``: (...) -> (..., D); one latent per point, all K mapped."""
        check_index(index, self.num_components)
        p = self.affine.loc
        u = torch.randn(*index.shape, 1, self.dim, dtype=p.dtype, device=p.device)
        x = self.transform(u)[0]  # (..., K, D)
        idx = index.unsqueeze(-1).unsqueeze(-1).expand(*index.shape, 1, self.dim)
        return x.gather(-2, idx).squeeze(-2)

    @torch.no_grad()
    def set_affine(self, loc: torch.Tensor, scale: torch.Tensor) -> None:
        """Place component k at ``loc[k]`` with per-axis ``scale[k]``, both (K, D) (e.g. from k-means)."""
        K, D = self.num_components, self.dim
        loc, scale = self._as_param(loc), self._as_param(scale)
        if loc.shape != (K, D) or scale.shape != (K, D):
            raise ValueError(
                f"expected loc and scale of shape ({K}, {D}), got {tuple(loc.shape)} and {tuple(scale.shape)}"
            )
        if not bool((scale > 0).all()):
            raise ValueError("expected a positive scale")
        if isinstance(self.affine, TriangularAffine):
            self.affine.set(loc, torch.diag_embed(scale))
            return
        self.affine.loc.copy_(loc.unsqueeze(1))
        self.affine.log_scale.copy_(scale.log().unsqueeze(1))

    @torch.no_grad()
    def set_gaussian(self, loc: torch.Tensor, scale_tril: torch.Tensor) -> None:
        """Set the full affine maps (``affine="full"``): component k's affine map sends N(0, I)
        to N(loc[k], L_k L_k^T), L_k = ``scale_tril[k]`` (K, D, D), e.g. the Cholesky factors
        of a Gaussian mixture's covariances; loc is (K, D). With the flow layers at the identity
        the components are then exactly those Gaussians."""
        if not isinstance(self.affine, TriangularAffine):
            raise ValueError("expected FlowComponents(..., affine='full') for set_gaussian")
        self.affine.set(self._as_param(loc), self._as_param(scale_tril))

    def _as_param(self, t) -> torch.Tensor:
        p = self.affine.params
        return torch.as_tensor(t, dtype=p.dtype, device=p.device)

    def extra_repr(self) -> str:
        return f"num_components={self.num_components}, dim={self.dim}, flow={self.flow!r}"


# How deep _trainable walks into a distribution's attributes (zuko: ZukoToPyro -> flow ->
# transform -> partial -> bound method -> module is five steps).
_MAX_DEPTH = 8


# How many autograd nodes _viewed_parameter follows from a tensor back to its leaf.
_MAX_VIEW_CHAIN = 16


def _viewed_parameter(t: torch.Tensor) -> nn.Parameter | None:
    """``t`` itself if it is a Parameter, the Parameter that ``t`` is a view of, or None.

    A view made with gradients on reaches its Parameter through a chain of one-input autograd
    nodes ending at the Parameter's gradient accumulator, and shares its storage; a value
    computed from a Parameter (``2 * param``) reaches it too but has storage of its own.
    """
    if isinstance(t, nn.Parameter):
        return t
    node = t.grad_fn
    for _ in range(_MAX_VIEW_CHAIN):
        if node is None:
            return None
        leaf = getattr(node, "variable", None)  # an AccumulateGrad node holds its leaf tensor
        if leaf is not None:
            same = leaf.untyped_storage().data_ptr() == t.untyped_storage().data_ptr()
            return leaf if same and isinstance(leaf, nn.Parameter) else None
        inputs = [fn for fn, _ in node.next_functions if fn is not None]
        if len(inputs) != 1:
            return None
        node = inputs[0]
    return None


def _trainable(obj, modules: dict, params: dict, seen: set, depth: int = 0) -> None:
    """Collect the ``nn.Module``s and free ``nn.Parameter``s reachable from ``obj``.

    Walks a distribution's attributes, its transforms and base distribution, containers,
    ``functools.partial``s, bound methods and closures (zuko's lazy transforms hold their
    hyper-networks that way), without entering a module (its parameters come with it).
    """
    if depth > _MAX_DEPTH or id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, nn.Module):
        modules[id(obj)] = obj
        return
    if torch.is_tensor(obj):
        # A Parameter, or a view of one (``Normal(param, 1.0)`` stores broadcast views).
        param = _viewed_parameter(obj)
        if param is not None:
            params[id(param)] = param
        return
    if isinstance(obj, (list, tuple, set, frozenset)):
        children = list(obj)
    elif isinstance(obj, dict):
        children = list(obj.values())
    elif isinstance(obj, functools.partial):
        children = [obj.func, *obj.args, *obj.keywords.values()]
    elif isinstance(obj, types.MethodType):
        children = [obj.__self__, obj.__func__]
    elif isinstance(obj, types.FunctionType):
        children = [cell.cell_contents for cell in obj.__closure__ or ()]
    elif isinstance(obj, (Distribution, Transform)):
        children = list(vars(obj).values())
    else:
        return
    for child in children:
        _trainable(child, modules, params, seen, depth + 1)


class DistributionComponents(Components):
    """Any K Pyro distributions with event shape (D,) as mixture components, evaluated by a loop.

    The flexible fallback: Pyro's own flows (``TransformedDistribution`` with transform
    modules), zuko flows through ``pyro.contrib.zuko.ZukoToPyro``, distributions that hold an
    ``nn.Module``, or plain distributions. Every ``nn.Module`` and ``nn.Parameter`` reachable
    from a distribution (its attributes, transforms, base distribution, and the partials, bound
    methods and closures through which zuko's transforms call their networks) is registered
    here, so ``parameters()`` and ``pyro.module`` see them and SVI trains them; so is the
    Parameter behind a view of one (``Normal(param, 1.0)`` stores a broadcast view). Tensors that
    are neither (e.g. values computed from parameters when the distribution was built) are not:
    build such components inside the model at every step instead. ``torch.func.functional_call``
    swaps the parameters of the registered modules only: a free Parameter is held by its
    distribution, which keeps using it.

    Args:
        distributions: K distributions, each with ``batch_shape == ()`` and ``event_shape == (D,)``.
    """

    def __init__(self, distributions: Sequence) -> None:
        super().__init__()
        distributions = list(distributions)
        if not distributions:
            raise ValueError("expected at least one component distribution, got none")
        shapes = {tuple(d.event_shape) for d in distributions}
        if len(shapes) != 1 or len(next(iter(shapes))) != 1:
            raise ValueError(f"expected every distribution to have event shape (D,), got {shapes}")
        if any(tuple(d.batch_shape) != () for d in distributions):
            raise ValueError("expected every component distribution to have batch_shape ()")
        self.distributions = distributions
        modules: dict = {}
        params: dict = {}
        seen: set = set()
        for d in distributions:
            _trainable(d, modules, params, seen)
        self.modules_ = nn.ModuleList(modules.values())
        self.params_ = nn.ParameterList(params.values())
        self.num_components = len(distributions)
        self.dim = next(iter(shapes))[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Log-density of x under every component: (..., D) -> (..., K), one call per component."""
        self._check_x(x)
        # A fresh view defeats the identity-keyed caches of Pyro transforms, which would
        # otherwise return a stale inverse for the same data tensor after a parameter update.
        return torch.stack([d.log_prob(x.view_as(x)) for d in self.distributions], dim=-1)

    def rsample(self, sample_shape=()) -> torch.Tensor:
        sample_shape = torch.Size(sample_shape)
        draws = [
            d.rsample(sample_shape) if d.has_rsample else d.sample(sample_shape)
            for d in self.distributions
        ]
        return torch.stack(draws, dim=-2)

    def _flows(self):
        for d in self.distributions:
            if not isinstance(d, TransformedDistribution):
                raise NotImplementedError(
                    "transform/inverse need every component to be a TransformedDistribution"
                )
        return [(d.base_dist, ComposeTransform(list(d.transforms))) for d in self.distributions]

    def transform(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Base to data per component: u (..., K, D) -> x (..., K, D), log|det dx/du| (..., K)."""
        xs, lds = [], []
        for k, (_, t) in enumerate(self._flows()):
            uk = u[..., k, :]
            xk = t(uk)
            xs.append(xk)
            lds.append(t.log_abs_det_jacobian(uk, xk))
        return torch.stack(xs, -2), torch.stack(lds, -1)

    def inverse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Data to base per component: x (..., K or 1, D) -> u (..., K, D), log|det du/dx| (..., K)."""
        us, lds = [], []
        for k, (_, t) in enumerate(self._flows()):
            xk = x[..., min(k, x.shape[-2] - 1), :].view_as(x[..., 0, :])
            uk = t.inv(xk)
            us.append(uk)
            lds.append(-t.log_abs_det_jacobian(uk, xk))
        return torch.stack(us, -2), torch.stack(lds, -1)
