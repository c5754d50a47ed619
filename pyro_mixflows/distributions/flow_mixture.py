"""FlowMixture: a Pyro distribution over K flow components (the indexed component lives with
the components, in ``flows/base.py``)."""

from __future__ import annotations

import torch
from pyro.distributions import Categorical, constraints
from torch.distributions.utils import lazy_property

from ..flows.base import Components, _check_components, _ComponentsDistribution


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
        return self.components(x)

    def _joint(self, x: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(x)
        return self.logits + self.components(x)  # (..., K)

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
