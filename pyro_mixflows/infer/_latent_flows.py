"""K flows sharing one latent space, as latent-space samplers see them (the (..., K, D) layout)."""

from __future__ import annotations

import torch
from pyro.distributions.util import sum_rightmost
from torch.distributions import TransformedDistribution

from ..distributions.flow_mixture import FlowMixture
from ..flows.base import Components


class LatentFlows:
    """K flows sharing one latent space, in the (..., K, D) layout.

    Wraps a ``TransformedDistribution`` (K = 1), a ``Components`` object with
    ``transform`` (K = 1) or a ``FlowMixture`` (any K, with its mixing weights).
    """

    def __init__(self, flow) -> None:
        self.transformed = None
        self.log_weights = None
        if isinstance(flow, FlowMixture):
            if flow.batch_shape != ():
                raise ValueError(
                    f"expected a FlowMixture with batch_shape (), got {tuple(flow.batch_shape)}"
                )
            self.components = flow.components
            self.log_weights = flow.logits.detach()  # (K,)
        elif isinstance(flow, Components):
            if flow.num_components != 1:
                raise ValueError(
                    f"expected components with K=1 (one flow), got K={flow.num_components}; "
                    "wrap them in a FlowMixture to sample the mixture"
                )
            self.components = flow
            self.log_weights = None
        elif isinstance(flow, TransformedDistribution):
            if flow.batch_shape != () or len(flow.event_shape) != 1:
                raise ValueError(
                    "expected a TransformedDistribution with batch_shape () and event shape (D,), "
                    f"got {tuple(flow.batch_shape)} and {tuple(flow.event_shape)}"
                )
            self.components = None
            self.transformed = flow
        else:
            raise TypeError(
                "expected flow to be a FlowMixture, FlowComponents (K=1) or a "
                f"TransformedDistribution, got {type(flow).__name__}"
            )
        if self.transformed is not None:
            self.num_components, self.dim = 1, flow.event_shape[0]
            proto = flow.base_dist.sample()
        else:
            self.num_components, self.dim = self.components.num_components, self.components.dim
            params = list(self.components.parameters())
            proto = params[0] if params else torch.zeros(())
        self.dtype, self.device = proto.dtype, proto.device
        if self.log_weights is None:
            self.log_weights = torch.zeros(1, dtype=self.dtype, device=self.device)

    def push(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Base to data for every component: z (..., K, D) -> x (..., K, D), log|det J_f(z)| (..., K)."""
        if self.transformed is None:
            return self.components.transform(z)
        u = z[..., 0, :]
        log_det = u.new_zeros(u.shape[:-1])
        for t in self.transformed.transforms:
            y = t(u)
            event_dim = 1 - t.codomain.event_dim
            log_det = log_det + sum_rightmost(t.log_abs_det_jacobian(u, y), event_dim)
            u = y
        return u.unsqueeze(-2), log_det.unsqueeze(-1)

    def base_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """Base log-density of every component: z (..., K, D) -> (..., K)."""
        if self.transformed is not None:
            lp = self.transformed.base_dist.log_prob(z[..., 0, :])
            if lp.dim() == z.dim() - 1:  # a base without to_event(1): (..., D)
                lp = lp.sum(-1)
            return lp.unsqueeze(-1)
        if hasattr(self.components, "base_log_prob"):
            return self.components.base_log_prob(z)
        bases = [base for base, _ in self.components._flows()]
        return torch.stack([b.log_prob(z[..., k, :]) for k, b in enumerate(bases)], -1)

    def sample_base(self, shape: torch.Size) -> torch.Tensor:
        """Draws from the (shared) base distribution: (*shape, D)."""
        if self.transformed is not None:
            return self.transformed.base_dist.sample(shape).to(self.dtype)
        if hasattr(self.components, "base_log_prob"):
            return torch.randn(*shape, self.dim, dtype=self.dtype, device=self.device)
        base = self.components._flows()[0][0]
        return base.sample(shape)
