"""FlowMixture and the indexed component: Pyro distributions over K flow components."""

from __future__ import annotations

import torch
from pyro.distributions import Categorical, TorchDistribution, constraints
from torch.distributions.utils import lazy_property

from .._validation import check_event, check_finite, check_index
from ..flows.components import Components


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


class FlowMixture(_ComponentsDistribution):
    """A finite mixture of flows, ``p(x) = sum_k w_k p_k(x)``, with exact log-density.

    .. math:: \\log p(x) = \\operatorname{logsumexp}_k (\\log w_k + \\log p_k(x))

    Use it as an observation distribution with the assignment summed out, or read off
    ``responsibilities`` p(k | x) for clustering. For a model with an explicit assignment site,
    use ``components.component(z)`` instead.

    Args:
        components: K components (``FlowComponents`` or ``DistributionComponents``).
        logits: unnormalized log-weights, shape (..., K); batch shape is ``logits.shape[:-1]``.
        probs: weights, shape (..., K); exactly one of ``logits`` and ``probs``.
        validate_args: check values (event size D, finite) on ``log_prob``.

    Raises:
        ValueError: neither or both of logits and probs, or their last size is not K.

    Example::

        >>> comps = FlowComponents(3, 2)
        >>> mix = FlowMixture(comps, logits=torch.zeros(3))
        >>> mix.sample((4,)).shape, mix.log_prob(torch.zeros(4, 2)).shape
        (torch.Size([4, 2]), torch.Size([4]))
    """

    arg_constraints = {"logits": constraints.real_vector}
    has_rsample = False

    def __init__(
        self,
        components: Components,
        logits: torch.Tensor | None = None,
        probs: torch.Tensor | None = None,
        validate_args: bool | None = None,
    ) -> None:
        _check_components(components)
        if (logits is None) == (probs is None):
            raise ValueError(
                "expected exactly one of logits or probs, got "
                + ("both" if logits is not None else "neither")
            )
        weights = logits if logits is not None else probs
        if not torch.is_tensor(weights) or weights.dim() < 1:
            raise ValueError(f"expected a tensor of shape (..., K), got {weights!r}")
        K = components.num_components
        if weights.shape[-1] != K:
            raise ValueError(
                f"expected {'logits' if logits is not None else 'probs'} with K={K} entries in "
                f"the last dimension (one per component), got shape {tuple(weights.shape)}"
            )
        if probs is not None:
            logits = probs.log()
        self.components = components
        self.logits = logits - logits.logsumexp(-1, keepdim=True)
        super().__init__(self.logits.shape[:-1], torch.Size([components.dim]), validate_args)

    @lazy_property
    def probs(self) -> torch.Tensor:
        return self.logits.exp()

    @property
    def num_components(self) -> int:
        return self.components.num_components

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(FlowMixture, _instance)
        batch_shape = torch.Size(batch_shape)
        new.components = self.components
        new.logits = self.logits.expand(batch_shape + (self.num_components,))
        super(FlowMixture, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def component_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """log p_k(x) for every k: (..., D) -> (..., K)."""
        return self.components.component_log_probs(x)

    def _joint(self, x: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(x)
        return self.logits + self.components.component_log_probs(x)  # (..., K)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return self._joint(value).logsumexp(-1)

    def responsibilities(self, x: torch.Tensor) -> torch.Tensor:
        """p(k | x) = w_k p_k(x) / p(x): (..., D) -> (..., K)."""
        return torch.softmax(self._joint(x), dim=-1)

    def sample_with_components(
        self, sample_shape=torch.Size()
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``(x, z)``: x (*sample_shape, *batch_shape, D) and its component z (*sample_shape, *batch_shape)."""
        with torch.no_grad():
            z = Categorical(logits=self.logits).sample(torch.Size(sample_shape))
            return self.components.rsample_index(z), z

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        return self.sample_with_components(sample_shape)[0]


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
        lp = self.components.component_log_probs(value)  # (..., K)
        batch, K = lp.shape[:-1], lp.shape[-1]
        shape = torch.broadcast_shapes(self.index.shape, batch)
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
