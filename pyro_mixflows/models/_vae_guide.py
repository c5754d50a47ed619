"""Pieces of :class:`~pyro_mixflows.models.MixtureVAE`'s guide: stick-breaking weights, the
networks and the distribution of the code given the posterior component."""

from __future__ import annotations

from collections.abc import Sequence

import pyro.distributions as dist
import torch
from torch import nn
from torch.distributions import constraints


def stick_breaking_log_weights(v: torch.Tensor) -> torch.Tensor:
    """Log weights of truncated stick-breaking: v (..., T-1) -> log π (..., T).

    .. math:: π_t = v_t \\prod_{j<t} (1 - v_j),\\ t < T, \\qquad π_T = \\prod_{j<T} (1 - v_j).
    """
    log_v = torch.log(v)
    log_rest = torch.log1p(-v)
    cum = torch.cumsum(log_rest, -1)  # (..., T-1): log prod_{j<=t}(1 - v_j)
    before = torch.cat([torch.zeros_like(cum[..., :1]), cum[..., :-1]], -1)
    return torch.cat([log_v + before, cum[..., -1:]], -1)


def _mlp(sizes: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(nn.Softplus())
    return nn.Sequential(*layers)


class _ComponentDraw(dist.TorchDistribution):
    """z | k for the guide of :class:`MixtureVAE`.

    ``rsample`` draws z from posterior component k (reparameterized). With ``marginal=True``
    (untied components) ``log_prob`` returns

    .. math:: \\log q(z \\mid x) - \\log π_k(x) = \\log \\sum_j π_j(x) q_j(z \\mid x) - \\log π_k(x),

    so that together with the enumerated site k, whose log-density is log π_k(x), the guide's
    log-density at (k, z) is the marginal log q(z | x). This is not the normalized density of
    z given k; it is what turns TraceEnum_ELBO's guide-side enumeration into the stratified
    mixture ELBO (see :class:`MixtureVAE`). With ``marginal=False`` (tied components) it is the
    normalized density log q_k(z | x) of component k.

    Args:
        loc: (..., N, K, D) base locations of the K posterior components.
        scale: (..., N, K, D) base scales.
        log_weights: (..., N, K) log π(x).
        index: (...) long, broadcastable with (..., N): the component k.
        flows: optional :class:`FlowComponents` g_k applied after the affine base draw.
        marginal: see above.
    """

    arg_constraints = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(
        self, loc, scale, log_weights, index, flows=None, marginal=True, validate_args=None
    ):
        self.loc, self.scale, self.log_weights, self.flows = loc, scale, log_weights, flows
        self.marginal = marginal
        batch = torch.broadcast_shapes(index.shape, loc.shape[:-2], log_weights.shape[:-1])
        self.index = index.expand(batch)
        super().__init__(batch, loc.shape[-1:], validate_args=False)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        return _ComponentDraw(
            self.loc,
            self.scale,
            self.log_weights,
            self.index.expand(batch_shape),
            self.flows,
            self.marginal,
        )

    def _gather(self, t: torch.Tensor) -> torch.Tensor:
        K, D = t.shape[-2:]
        t = t.expand(*self.batch_shape, K, D)
        idx = self.index.unsqueeze(-1).unsqueeze(-1).expand(*self.batch_shape, 1, D)
        return t.gather(-2, idx).squeeze(-2)  # (..., D)

    def rsample(self, sample_shape=torch.Size()):
        if sample_shape != torch.Size():
            raise ValueError(f"expected an empty sample_shape, got {tuple(sample_shape)}")
        u = dist.Normal(self._gather(self.loc), self._gather(self.scale)).rsample()  # (..., D)
        if self.flows is None:
            return u
        K = self.loc.shape[-2]
        z_all, _ = self.flows.transform(u.unsqueeze(-2).expand(*u.shape[:-1], K, u.shape[-1]))
        return self._gather(z_all)

    def component_log_probs(self, z: torch.Tensor) -> torch.Tensor:
        """log q_j(z | x) for every j: z (..., D) -> (..., K)."""
        return _posterior_component_log_probs(self.loc, self.scale, self.flows, z)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        log_qk = self.component_log_probs(z)  # (..., K)
        if not self.marginal:
            return log_qk.gather(-1, self.index.unsqueeze(-1)).squeeze(-1)
        log_q = torch.logsumexp(self.log_weights + log_qk, -1)
        log_w = self.log_weights.expand(*self.batch_shape, self.log_weights.shape[-1])
        return log_q - log_w.gather(-1, self.index.unsqueeze(-1)).squeeze(-1)


def _posterior_component_log_probs(loc, scale, flows, z):
    if flows is None:
        u, log_det = z.unsqueeze(-2), 0.0
    else:
        u, log_det = flows.inverse(z.unsqueeze(-2))  # (..., K, D), (..., K)
    return dist.Normal(loc, scale).log_prob(u).sum(-1) + log_det
