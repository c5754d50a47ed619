"""K components followed by one shared elementwise affine map: a fit in other units."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .components import Components


class RescaledComponents(Components):
    r"""Components ``inner`` pushed through one elementwise affine map shared by all K.

    .. math:: x = \mu + \sigma \odot y, \quad y \sim p_k, \qquad
        \log p^{x}_k(x) = \log p_k\big((x - \mu) / \sigma\big) - \textstyle\sum_d \log \sigma_d.

    Use it to read a fit made on standardized data in the data's own units (the estimator's
    ``distribution_``): ``FlowMixture(RescaledComponents(comps, mean, std), logits)``. The
    latent (base) space is the inner components' own, so ``LatentMALA`` on such a mixture moves
    in the same latent space and reports draws in data units.

    ``transform``, ``inverse`` and ``base_log_prob`` delegate to ``inner`` (``FlowComponents``
    has all three).

    Args:
        inner: K components over R^D (e.g. ``FlowComponents``).
        loc: :math:`\mu`, shape (D,).
        scale: :math:`\sigma`, shape (D,), positive.

    Raises:
        ValueError: ``loc`` or ``scale`` not of shape (D,), or a non-positive scale.

    Example::

        >>> comps = FlowComponents(2, 3, flow="affine_coupling")
        >>> data_units = RescaledComponents(comps, torch.zeros(3), torch.full((3,), 2.0))
        >>> data_units(torch.zeros(5, 3)).shape
        torch.Size([5, 2])
    """

    def __init__(self, inner: Components, loc: torch.Tensor, scale: torch.Tensor) -> None:
        super().__init__()
        if not isinstance(inner, Components):
            raise TypeError(f"expected inner to be Components, got {type(inner).__name__}")
        D = inner.dim
        loc, scale = torch.as_tensor(loc), torch.as_tensor(scale)
        if loc.shape != (D,) or scale.shape != (D,):
            raise ValueError(
                f"expected loc and scale of shape ({D},), got {tuple(loc.shape)} and "
                f"{tuple(scale.shape)}"
            )
        if not bool((scale > 0).all()):
            raise ValueError("expected a positive scale, got an entry <= 0")
        self.inner = inner
        self.register_buffer("loc", loc.detach().clone())
        self.register_buffer("scale", scale.detach().clone())
        self.num_components = inner.num_components
        self.dim = D

    def _log_scale(self) -> torch.Tensor:
        return self.scale.log().sum()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Log-density of x (data units) under every component: (..., D) -> (..., K)."""
        self._check_x(x)
        return self.inner((x - self.loc) / self.scale) - self._log_scale()

    def rsample(self, sample_shape: torch.Size | Sequence[int] = ()) -> torch.Tensor:
        return self.loc + self.scale * self.inner.rsample(sample_shape)  # (*S, K, D)

    def rsample_index(self, index: torch.Tensor) -> torch.Tensor:
        return self.loc + self.scale * self.inner.rsample_index(index)  # (..., D)

    def transform(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Base to data units per component: u (..., K, D) -> x (..., K, D), log|det| (..., K)."""
        y, log_det = self.inner.transform(u)
        return self.loc + self.scale * y, log_det + self._log_scale()

    def inverse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Data units to base per component: x (..., K or 1, D) -> u (..., K, D), log|det| (..., K)."""
        u, log_det = self.inner.inverse((x - self.loc) / self.scale)
        return u, log_det - self._log_scale()

    def base_log_prob(self, u: torch.Tensor) -> torch.Tensor:
        """The inner components' base log-density: (..., D) -> (...)."""
        return self.inner.base_log_prob(u)

    def extra_repr(self) -> str:
        return f"num_components={self.num_components}, dim={self.dim}"
