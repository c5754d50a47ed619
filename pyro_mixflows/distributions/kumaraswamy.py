"""The Kumaraswamy distribution and its series KL divergence to a Beta.

The Kumaraswamy law is a Beta look-alike whose CDF inverts in closed form, so its draws are
reparameterized without implicit gradients; this makes it a convenient posterior for
stick-breaking weights (Stick-Breaking Variational Autoencoders, Nalisnick & Smyth, 2017,
arXiv:1605.06197).
"""

from __future__ import annotations

import torch
from pyro.distributions import TorchDistribution
from torch.distributions import Beta, constraints
from torch.distributions.kl import register_kl
from torch.distributions.utils import broadcast_all

__all__ = ["KL_SERIES_TERMS", "KL_PARAM_RANGE", "Kumaraswamy", "kl_kumaraswamy_beta"]

#: Number of terms M kept from the Taylor series of E[log(1 - v)] in KL(Kumaraswamy || Beta).
#: Every term is positive and the m-th behaves like b Γ(b) a^b m^{-b-1}, so the remainder after
#: M terms is about Γ(b) a^b M^{-b}; with M = 100 this is below 1e-3 for b >= 2, a <= 5, and the
#: whole series term vanishes when the Beta's second parameter is 1.
KL_SERIES_TERMS = 100

#: Both Kumaraswamy parameters are clamped into this range inside the KL, keeping the
#: digamma/log-Beta terms finite for encoder outputs that drift towards 0 or infinity.
KL_PARAM_RANGE = (1e-4, 1e4)

_EULER_GAMMA = 0.5772156649015329  # γ


class Kumaraswamy(TorchDistribution):
    """Kumaraswamy distribution on the unit interval.

    .. math:: p(v \\mid a, b) = a b \\, v^{a-1} (1 - v^a)^{b-1}, \\qquad
        F(v) = 1 - (1 - v^a)^b, \\qquad v = (1 - (1 - u)^{1/b})^{1/a},\\ u \\sim U(0, 1).

    Draws use the inverse CDF above (pathwise gradients in a and b); ``log_prob`` is exact.

    Args:
        concentration1: a > 0, any shape.
        concentration0: b > 0, broadcastable with a.
        validate_args: check parameters and values (Pyro/torch convention).

    Example::

        >>> d = Kumaraswamy(torch.ones(3), 2.0 * torch.ones(3))
        >>> d.rsample((5,)).shape
        torch.Size([5, 3])
    """

    arg_constraints = {
        "concentration1": constraints.positive,
        "concentration0": constraints.positive,
    }
    support = constraints.unit_interval
    has_rsample = True

    def __init__(
        self,
        concentration1: torch.Tensor | float,
        concentration0: torch.Tensor | float,
        validate_args: bool | None = None,
    ) -> None:
        self.concentration1, self.concentration0 = broadcast_all(concentration1, concentration0)
        super().__init__(self.concentration1.shape, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(Kumaraswamy, _instance)
        batch_shape = torch.Size(batch_shape)
        new.concentration1 = self.concentration1.expand(batch_shape)
        new.concentration0 = self.concentration0.expand(batch_shape)
        super(Kumaraswamy, new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def rsample(self, sample_shape=torch.Size()) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        a, b = self.concentration1, self.concentration0
        finfo = torch.finfo(a.dtype)
        u = torch.rand(shape, dtype=a.dtype, device=a.device).clamp(finfo.tiny, 1 - finfo.eps)
        # v^a = 1 - (1 - u)^{1/b}, computed in log space for small b and u near 0 or 1.
        log_va = torch.log(-torch.expm1(torch.log1p(-u) / b))
        return torch.exp(log_va / a).clamp(finfo.tiny, 1 - finfo.eps)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        a, b = self.concentration1, self.concentration0
        log_v = torch.log(value)
        return (
            torch.log(a)
            + torch.log(b)
            + (a - 1) * log_v
            + (b - 1) * torch.log1p(-torch.exp(a * log_v))
        )

    def cdf(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        a, b = self.concentration1, self.concentration0
        return -torch.expm1(b * torch.log1p(-(value**a)))

    @property
    def mean(self) -> torch.Tensor:
        # E[v] = b B(1 + 1/a, b)
        a, b = self.concentration1, self.concentration0
        return torch.exp(torch.log(b) + _log_beta(1 + 1 / a, b))

    @property
    def variance(self) -> torch.Tensor:
        a, b = self.concentration1, self.concentration0
        second = torch.exp(torch.log(b) + _log_beta(1 + 2 / a, b))
        return second - self.mean**2

    def entropy(self) -> torch.Tensor:
        # -E[log q] with E[log v] = (-γ - ψ(b) - 1/b)/a and E[log(1 - v^a)] = -1/b.
        a, b = self.concentration1, self.concentration0
        e_log_v = (-_EULER_GAMMA - torch.digamma(b) - 1 / b) / a
        return -(torch.log(a) + torch.log(b) + (a - 1) * e_log_v - (b - 1) / b)


def _log_beta(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.lgamma(x) + torch.lgamma(y) - torch.lgamma(x + y)


def kl_kumaraswamy_beta(q: Kumaraswamy, p: Beta, num_terms: int = KL_SERIES_TERMS) -> torch.Tensor:
    """KL(Kumaraswamy(a, b) || Beta(α, β)) in series form.

    .. math::
        \\mathrm{KL} = \\frac{a - α}{a}\\Big(-γ - ψ(b) - \\frac1b\\Big) + \\log(ab) + \\log B(α, β)
        - \\frac{b - 1}{b} + (β - 1)\\, b \\sum_{m=1}^{M} \\frac{B(m/a, b)}{m + ab},

    the last sum being the Taylor series of -E[log(1 - v)] truncated after M = ``num_terms``
    terms (Stick-Breaking Variational Autoencoders, Nalisnick & Smyth, 2017, arXiv:1605.06197,
    appendix). a and b are clamped into :data:`KL_PARAM_RANGE` first.

    Args:
        q: Kumaraswamy posterior, batch shape broadcastable with ``p``'s.
        p: Beta prior.
        num_terms: M >= 1 (default :data:`KL_SERIES_TERMS`).

    Returns:
        The KL, of the broadcast batch shape.

    Raises:
        ValueError: ``num_terms`` < 1.
    """
    if not isinstance(num_terms, int) or num_terms < 1:
        raise ValueError(f"expected num_terms to be an int >= 1, got {num_terms!r}")
    lo, hi = KL_PARAM_RANGE
    a = q.concentration1.clamp(lo, hi)
    b = q.concentration0.clamp(lo, hi)
    alpha, beta = p.concentration1, p.concentration0
    a, b, alpha, beta = torch.broadcast_tensors(a, b, alpha, beta)
    e_log_v_times_a = -_EULER_GAMMA - torch.digamma(b) - 1 / b
    m = torch.arange(1, num_terms + 1, dtype=a.dtype, device=a.device)  # (M,)
    ab = (a * b).unsqueeze(-1)
    series = (torch.exp(_log_beta(m / a.unsqueeze(-1), b.unsqueeze(-1))) / (m + ab)).sum(-1)
    return (
        (a - alpha) / a * e_log_v_times_a
        + torch.log(a * b)
        + _log_beta(alpha, beta)
        - (b - 1) / b
        + (beta - 1) * b * series
    )


@register_kl(Kumaraswamy, Beta)
def _kl_kumaraswamy_beta(q: Kumaraswamy, p: Beta) -> torch.Tensor:
    return kl_kumaraswamy_beta(q, p)
