"""The latent of :class:`~pyro_mixflows.guides.AutoFlowMixture` given its component, scored so
that the guide's density per trace is the mixture density."""

from __future__ import annotations

import torch
from pyro.distributions import constraints
from pyro.distributions.torch_distribution import TorchDistribution

from ..flows import FlowComponents


def enumerated_dim(index: torch.Tensor, num_components: int) -> int | None:
    """The dim along which ``index`` runs through 0..K-1 (constant elsewhere), or None."""
    for j in range(index.dim()):
        if index.shape[j] != num_components:
            continue
        shape = (num_components,) + (1,) * (index.dim() - j - 1)
        ar = torch.arange(num_components, device=index.device).reshape(shape)
        if torch.equal(index, ar.expand_as(index)):
            return j
    return None


class ComponentLatent(TorchDistribution):
    """The unconstrained latent given its component k, scored so a guide's total is log q(z).

    ``rsample`` draws z from component ``index`` (reparameterized). ``log_prob`` returns

    .. math:: \\log q_k(z) - \\log q(k \\mid z) = \\log \\sum_j \\pi_j q_j(z) - \\log \\pi_k,

    so that together with the ``Categorical(pi)`` site that chose k, the guide's log-density of a
    trace is the mixture density log q(z): the auxiliary-variable bound with the exact
    responsibilities q(k | z), which equals the marginal ELBO.
    """

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(
        self, components: FlowComponents, logits: torch.Tensor, index: torch.Tensor
    ) -> None:
        self.components = components
        self.logits = logits  # (K,)
        self.index = index
        super().__init__(index.shape, torch.Size([components.dim]), validate_args=False)

    def expand(self, batch_shape, _instance=None):
        return ComponentLatent(
            self.components, self.logits, self.index.expand(torch.Size(batch_shape))
        )

    def rsample(self, sample_shape=torch.Size()) -> torch.Tensor:
        comps = self.components
        K, D = comps.num_components, comps.dim
        shape = torch.Size(sample_shape) + self.batch_shape
        index = self.index.expand(shape)
        p = self.logits
        j = enumerated_dim(index, K)
        if j is not None:  # parallel enumeration: one draw per component, no wasted work
            rest = shape[:j] + shape[j + 1 :]
            u = torch.randn(*rest, K, D, dtype=p.dtype, device=p.device)
            x = comps.transform(u)[0]  # (*rest, K, D)
            return x.movedim(-2, j)  # (*shape, D)
        u = torch.randn(*shape, 1, D, dtype=p.dtype, device=p.device)
        x = comps.transform(u)[0]  # (*shape, K, D)
        idx = index.unsqueeze(-1).unsqueeze(-1).expand(*shape, 1, D)
        return x.gather(-2, idx).squeeze(-2)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        log_pi = torch.log_softmax(self.logits, -1)  # (K,)
        joint = self.components(value) + log_pi  # (..., K)
        return torch.logsumexp(joint, -1) - log_pi[self.index]
