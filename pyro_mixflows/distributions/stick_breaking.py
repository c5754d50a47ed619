"""Stick-breaking weights: distributions over the truncated simplex built from T-1 sticks."""

from __future__ import annotations

import numbers

import torch
from pyro.distributions import Beta, Independent, TorchDistribution, constraints
from torch.distributions import Distribution
from torch.distributions.utils import broadcast_all


def sticks_to_weights(sticks: torch.Tensor) -> torch.Tensor:
    """Break a unit stick: (..., T-1) sticks in (0, 1) -> (..., T) weights on the simplex.

    .. math:: \\pi_t = v_t \\prod_{j<t} (1 - v_j), \\quad \\pi_T = \\prod_{j<T} (1 - v_j).

    This is torch's ``StickBreakingTransform`` applied to ``logit(v) + log(T - t)``, written on
    the sticks directly so no precision is lost in a logit/sigmoid round trip.
    """
    remaining = (1 - sticks).cumprod(-1)  # (..., T-1): prod_{j<=t} (1 - v_j)
    ones = sticks.new_ones(sticks.shape[:-1] + (1,))
    return torch.cat([sticks, ones], -1) * torch.cat([ones, remaining], -1)


def weights_to_sticks(weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Invert ``sticks_to_weights``: (..., T) weights -> sticks (..., T-1) and log-remainders.

    The remaining length before stick t is summed from the tail, ``r_t = sum_{j>=t} pi_j``
    (accurate where little is left), and ``v_t = pi_t / r_t``, kept inside (0, 1) so that
    weights that underflowed to zero still get a finite density.

    Returns:
        ``(sticks, log_remaining)``, both (..., T-1); ``log_remaining[..., t] = log r_t``.
    """
    finfo = torch.finfo(weights.dtype)
    remaining = weights.flip(-1).cumsum(-1).flip(-1)[..., :-1]  # (..., T-1)
    # Weights that underflowed to zero (a stick at 1 in floating point) would give 0/0: clamp
    # to the open interval, as torch clamps its own Beta draws. A no-op for ordinary values.
    remaining = remaining.clamp_min(finfo.tiny)
    sticks = (weights[..., :-1] / remaining).clamp(finfo.tiny, 1 - finfo.eps)
    return sticks, remaining.log()


class StickWeights(TorchDistribution):
    """The weights obtained by breaking a unit stick at T-1 random proportions.

    Given any distribution over the sticks v in (0, 1)^(T-1) (independent Beta or Kumaraswamy
    sticks, say), the weights ``pi = sticks_to_weights(v)`` have the density, by change of
    variables through the triangular map v -> (pi_1, ..., pi_{T-1}),

    .. math:: \\log p(\\pi) = \\log p_v(v(\\pi)) - \\sum_{t=1}^{T-1} \\log \\Big(1 - \\sum_{j<t} \\pi_j\\Big).

    Use it as the variational family of stick-breaking weights (a guide's "w" site); the
    Dirichlet-process prior itself is ``StickBreaking``.

    Args:
        sticks: a distribution with event shape (T-1,) and support in (0, 1); its batch shape is
            the batch shape of the weights. ``has_rsample`` follows the sticks.
        validate_args: check that values lie on the simplex.

    Raises:
        TypeError: ``sticks`` is not a torch distribution.
        ValueError: ``sticks`` does not have event shape (T-1,).

    Example::

        >>> sticks = Independent(Beta(torch.ones(4), torch.full((4,), 2.0)), 1)
        >>> StickWeights(sticks).rsample((3,)).shape
        torch.Size([3, 5])
    """

    arg_constraints: dict = {}
    support = constraints.simplex

    def __init__(self, sticks: Distribution, validate_args: bool | None = None) -> None:
        if not isinstance(sticks, Distribution):
            raise TypeError(
                f"expected sticks to be a torch Distribution, got {type(sticks).__name__}"
            )
        if len(sticks.event_shape) != 1:
            raise ValueError(
                "expected sticks with event shape (T-1,) (wrap independent sticks in "
                f"Independent(..., 1)), got event shape {tuple(sticks.event_shape)}"
            )
        self.sticks = sticks
        T = sticks.event_shape[0] + 1
        super().__init__(sticks.batch_shape, torch.Size([T]), validate_args=validate_args)

    @property
    def has_rsample(self) -> bool:  # type: ignore[override]
        return self.sticks.has_rsample

    @property
    def truncation(self) -> int:
        """T, the number of weights."""
        return self.event_shape[0]

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(StickWeights, _instance)
        batch_shape = torch.Size(batch_shape)
        new.sticks = self.sticks.expand(batch_shape)
        super(StickWeights, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def rsample(self, sample_shape=torch.Size()) -> torch.Tensor:
        return sticks_to_weights(self.sticks.rsample(torch.Size(sample_shape)))

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            return sticks_to_weights(self.sticks.sample(torch.Size(sample_shape)))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        sticks, log_remaining = weights_to_sticks(value)
        return self.sticks.log_prob(sticks) - log_remaining.sum(-1)

    @property
    def mean(self) -> torch.Tensor:
        """E[pi_t] = E[v_t] prod_{j<t} E[1 - v_j], exact for independent sticks."""
        return sticks_to_weights(self.sticks.mean)


def _stick_parameters(concentration: torch.Tensor, truncation: int, finite: bool):
    """Beta parameters (a_t, b_t) of the T-1 sticks, each (*batch, T-1)."""
    alpha = concentration.unsqueeze(-1).expand(concentration.shape + (truncation - 1,))
    if not finite:
        return torch.ones_like(alpha), alpha
    # Dirichlet(alpha 1_T) in stick form: v_t ~ Beta(alpha, (T - t) alpha), t = 1..T-1.
    rest = torch.arange(truncation - 1, 0, -1, dtype=alpha.dtype, device=alpha.device)
    return alpha, alpha * rest


class StickBreaking(StickWeights):
    """Truncated stick-breaking weights of a Dirichlet process (or of a symmetric Dirichlet).

    .. math::

        v_t \\sim \\mathrm{Beta}(1, \\alpha), \\; t < T, \\qquad
        \\pi_t = v_t \\prod_{j<t} (1 - v_j), \\qquad \\pi_T = \\prod_{j<T} (1 - v_j),

    the truncated GEM(alpha) distribution of the weights of a Dirichlet-process mixture with T
    components (Ishwaran & James, 2001, "Gibbs sampling methods for stick-breaking priors").
    Small alpha puts most mass on a few weights, so the components a mixture does not need are
    pruned; E[pi_t] = alpha^(t-1) / (1 + alpha)^t for t < T.

    With ``finite=True`` the sticks are Beta(alpha, (T - t) alpha) instead, which is exactly the
    symmetric Dirichlet(alpha 1_T) of a finite mixture, written in stick form.

    ``log_prob`` is exact (change of variables, see ``StickWeights``); ``rsample`` is pathwise
    through Pyro's Beta sticks.

    Args:
        concentration: alpha > 0, a float or a tensor; its shape is the batch shape.
        truncation: T >= 1, the number of weights (T - 1 sticks; the last weight is the rest).
        finite: sticks of the finite symmetric Dirichlet instead of the Dirichlet process.
        validate_args: check alpha > 0 and that values lie on the simplex.

    Raises:
        ValueError: ``truncation`` is not an int >= 1, or (when validating) alpha <= 0.

    Example::

        >>> w = StickBreaking(torch.tensor([0.5, 2.0]), 10)
        >>> w.batch_shape, w.event_shape, w.rsample((4,)).shape
        (torch.Size([2]), torch.Size([10]), torch.Size([4, 2, 10]))
    """

    arg_constraints = {"concentration": constraints.positive}
    has_rsample = True

    def __init__(
        self,
        concentration: torch.Tensor | float,
        truncation: int,
        *,
        finite: bool = False,
        validate_args: bool | None = None,
    ) -> None:
        if (
            not isinstance(truncation, numbers.Integral)
            or isinstance(truncation, bool)
            or truncation < 1
        ):
            raise ValueError(
                f"expected truncation to be an int >= 1 (the number of weights), got {truncation!r}"
            )
        if isinstance(concentration, numbers.Number):
            (concentration,) = broadcast_all(concentration)
        self.concentration = concentration
        self.finite = bool(finite)
        a, b = _stick_parameters(concentration, int(truncation), self.finite)
        # Parameters are checked by the distribution's own arg_constraints below, not by Beta.
        sticks = Independent(Beta(a, b, validate_args=False), 1)
        super().__init__(sticks, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(StickBreaking, _instance)
        batch_shape = torch.Size(batch_shape)
        new.concentration = self.concentration.expand(batch_shape)
        new.finite = self.finite
        super(StickBreaking, new).__init__(self.sticks.expand(batch_shape), validate_args=False)
        new._validate_args = self._validate_args
        return new
