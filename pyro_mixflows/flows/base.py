"""The interface of K components and the distribution of x given its component.

Both live here, below ``components.py`` (the flows) and ``distributions/`` (the mixtures), so that
every layer reaches them without an import cycle: ``Components.component(z)`` returns an
``IndexedComponent``, and ``FlowMixture`` checks its argument against ``Components``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pyro.distributions import TorchDistribution, constraints
from pyro.distributions.util import broadcast_shape
from torch import nn

from .._validation import check_event, check_finite, check_index


class Components(nn.Module):
    """K mixture components over R^D behind one interface.

    Calling the module returns the per-component log-densities,

    .. math:: \\text{components}(x)_k = \\log p_k(x), \\qquad (..., D) \\to (..., K),

    so ``components(x)``, ``components.compile()`` and
    ``torch.func.functional_call(components, params, (x,))`` work as for any ``nn.Module``;
    ``component_log_probs(x)`` is the same as ``components(x)``.

    Implementer's checklist: ``num_components`` and ``dim`` set; ``forward`` (or
    ``component_log_probs``, whichever you prefer: each defaults to the other) returns (..., K)
    for x of shape (..., D); ``rsample`` returns one reparameterized draw per component,
    (*S, K, D). Everything else (indexed components, sampling chosen components, mixtures) is
    derived from those two.

    Example::

        >>> class Gaussians(Components):
        ...     def __init__(self, loc):  # (K, D)
        ...         super().__init__()
        ...         self.num_components, self.dim = loc.shape
        ...         self.loc = nn.Parameter(loc)
        ...     def component_log_probs(self, x):  # (..., D) -> (..., K)
        ...         return Normal(self.loc, 1.0).log_prob(x.unsqueeze(-2)).sum(-1)
        >>> Gaussians(torch.zeros(3, 2))(torch.zeros(5, 2)).shape
        torch.Size([5, 3])
    """

    num_components: int
    dim: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Log-density of x under every component: (..., D) -> (..., K).

        The base class calls ``component_log_probs``; a subclass overrides one of the two.

        Raises:
            NotImplementedError: the subclass overrides neither.
        """
        if type(self).component_log_probs is Components.component_log_probs:
            raise NotImplementedError(
                f"expected {type(self).__name__} to implement forward or component_log_probs, "
                "got neither"
            )
        return self.component_log_probs(x)

    def component_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """Log-density of x under every component: (..., D) -> (..., K); the same as ``self(x)``."""
        return self(x)

    def rsample(self, sample_shape: torch.Size | Sequence[int] = ()) -> torch.Tensor:
        """One reparameterized draw from every component: (*sample_shape, K, D)."""
        raise NotImplementedError

    def rsample_index(self, index: torch.Tensor) -> torch.Tensor:
        """A reparameterized draw from component ``index[...]`` for every entry: (...) -> (..., D)."""
        draws = self.rsample(index.shape)  # (..., K, D)
        idx = index.unsqueeze(-1).unsqueeze(-1).expand(*index.shape, 1, self.dim)
        return draws.gather(-2, idx).squeeze(-2)

    def component(self, index: torch.Tensor, validate_args: bool | None = None):
        """The distribution of x given its component ``index`` (broadcasts with enumeration).

        Example::

            with pyro.plate("data", N):
                z = pyro.sample("z", dist.Categorical(weights))
                pyro.sample("x", components.component(z), obs=x)
        """
        return IndexedComponent(self, index, validate_args=validate_args)

    def _check_x(self, x: torch.Tensor) -> None:
        check_event(x, self.dim)

    def extra_repr(self) -> str:
        return f"num_components={self.num_components}, dim={self.dim}"


def _check_components(components) -> None:
    if not isinstance(components, Components):
        raise TypeError(
            "expected components to be a pyro_mixflows Components (FlowComponents or "
            f"DistributionComponents), got {type(components).__name__}"
        )


class _ComponentsDistribution(TorchDistribution):
    """Shared value checks: event size D and finite entries."""

    support = constraints.real_vector
    components: Components

    def _validate_sample(self, value: torch.Tensor) -> None:
        check_event(value, self.components.dim, name="value")
        check_finite(value, name="value")


def _enumerated_dim(index: torch.Tensor, num_components: int) -> int | None:
    """d if ``index`` is ``arange(K)`` laid along its dimension -d (size 1 elsewhere), else None."""
    if num_components < 2 or index.numel() != num_components:
        return None
    sizes = [i for i, size in enumerate(index.shape) if size != 1]
    if len(sizes) != 1:
        return None
    arange = torch.arange(num_components, device=index.device, dtype=index.dtype)
    if not torch.equal(index.reshape(-1), arange):
        return None
    return index.dim() - sizes[0]


class IndexedComponent(_ComponentsDistribution):
    """The distribution of x given its component index: ``log_prob(x) = log p_index(x)``.

    All K log-densities are computed once per ``log_prob`` call, (..., K), and gathered at
    ``index``, which broadcasts against the value's batch dimensions, so an enumerated index of
    shape (K, 1, ..., 1) gives the whole (K, ..., N) table in one pass.

    Args:
        components: K components.
        index: component of each batch entry, an integer tensor; batch shape is its shape.
    """

    arg_constraints: dict = {}
    has_rsample = True

    def __init__(self, components: Components, index: torch.Tensor, validate_args=None) -> None:
        _check_components(components)
        if not torch.is_tensor(index):
            index = torch.as_tensor(index)
        if index.is_floating_point() or index.dtype == torch.bool:
            raise TypeError(f"expected an integer index tensor, got dtype {index.dtype}")
        self.components = components
        self.index = index
        super().__init__(index.shape, torch.Size([components.dim]), validate_args)
        if self._validate_args:
            check_index(index, components.num_components)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(IndexedComponent, _instance)
        batch_shape = torch.Size(batch_shape)
        new.components = self.components
        new.index = self.index.expand(batch_shape)
        super(IndexedComponent, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        lp = self.components(value)  # (..., K)
        batch, K = lp.shape[:-1], lp.shape[-1]
        # Pyro's pure-Python broadcast_shape: light for these few small shapes
        shape = torch.Size(broadcast_shape(self.index.shape, batch))
        dim = _enumerated_dim(self.index, K)
        if dim is not None and (dim > len(batch) or batch[-dim] == 1):
            # Parallel enumeration, index = arange(K) along dim -dim: the answer is the (..., K)
            # table itself with its component axis moved there; no gather, whose backward would
            # materialize an expanded (*shape, K) zero tensor, K times the output.
            lp = lp.reshape((1,) * (len(shape) + 1 - lp.dim()) + lp.shape)  # rank len(shape) + 1
            pos = len(shape) - dim
            return lp.squeeze(pos).movedim(-1, pos).expand(shape)
        idx = self.index.expand(shape).unsqueeze(-1)
        return lp.expand(*shape, K).gather(-1, idx).squeeze(-1)

    def rsample(self, sample_shape=torch.Size()) -> torch.Tensor:
        index = self.index.expand(torch.Size(sample_shape) + self.batch_shape)
        return self.components.rsample_index(index)
