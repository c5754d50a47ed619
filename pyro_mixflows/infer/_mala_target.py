r"""The latent targets of :class:`~pyro_mixflows.infer.LatentMALA`, per component, and the Pyro
site distribution that carries the unnormalized target.

For a flow x = f(z) with base density q_Z and :math:`\ell(z) = \log|\det J_f(z)|`:

.. math::
    \text{base: } \log q_Z(z), \qquad \text{tempered: } \log q_Z(z) - \ell(z), \qquad
    \text{sharpened: } \beta \log q_Z(z) - (\beta - 1)\, \ell(z), \qquad
    \text{explicit: } \log p_X(f(z)) + \ell(z).
"""

from __future__ import annotations

from collections.abc import Callable

import pyro.distributions as dist
import torch

from ._latent_flows import LatentFlows

TARGETS = ("tempered", "sharpened", "base", "explicit")


def component_log_targets(
    flows: LatentFlows,
    zK: torch.Tensor,
    target: str,
    beta: float = 2.0,
    log_prob_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """log t_k(z) of every component (see the module docstring).

    Args:
        flows: the K flows sharing one latent space.
        zK: (..., K, D) latent points, one per component.
        target: one of ``TARGETS``.
        beta: the power of the "sharpened" target.
        log_prob_fn: the unnormalized log p_X of the "explicit" target, (..., D) -> (...).

    Returns:
        log t (..., K), x = f_k(z) (..., K, D) and log|det J_f(z)| (..., K).
    """
    x, log_det = flows.push(zK)
    if target == "base":
        lt = flows.base_log_prob(zK)
    elif target == "tempered":
        lt = flows.base_log_prob(zK) - log_det
    elif (
        target == "sharpened"
    ):  # beta log q_X(f(z)) + log|det J| = beta log q_Z - (beta-1) log|det J|
        lt = beta * flows.base_log_prob(zK) - (beta - 1.0) * log_det
    else:
        lt = log_prob_fn(x) + log_det
    return lt, x, log_det


class UnnormalizedTarget(dist.TorchDistribution):
    """An unnormalized log π(z) as a site's distribution; event shape = the site's.

    ``log_prob`` sums log π over the batched chains; ``sample`` draws N(0, I), a start only.

    Args:
        log_target: log π, (..., D) -> (...) (or (..., C) for C batched chains).
        zeros: a tensor of the site's shape, (D,) or (C, D), that gives dtype and device.
    """

    arg_constraints: dict = {}
    has_rsample = False

    def __init__(self, log_target: Callable, zeros: torch.Tensor) -> None:
        self.log_target = log_target
        self.zeros = zeros
        super().__init__(torch.Size(), zeros.shape, validate_args=False)

    @property
    def support(self):
        return dist.constraints.independent(dist.constraints.real, self.zeros.dim())

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        return torch.randn(torch.Size(sample_shape) + self.zeros.shape).to(self.zeros)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        lt = self.log_target(value)  # (..., [C])
        return lt.reshape(*value.shape[: value.dim() - self.zeros.dim()], -1).sum(-1)
