"""Several component sets joined along the component axis, so differently built flows form one mixture."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .components import Components, standard_normal_log_prob


class ConcatComponents(Components):
    """The components of several ``Components`` sets, one after the other: K = K_1 + ... + K_P.

    .. math:: \\log p_k(x) = \\log p^{(j)}_{k - o_j}(x), \\quad o_j = K_1 + \\dots + K_{j-1} \\le k < o_j + K_j

    Each part keeps its own architecture, size and parameters (a 2-layer spline flow beside an
    8-layer affine coupling flow, say), and each part is still evaluated in its own batched pass;
    only the P parts are looped over. Use it when components are built or trained separately, as
    in gradient boosting, and must then act as one mixture:
    ``FlowMixture(ConcatComponents([a, b]), logits=...)``.

    ``transform`` / ``inverse`` / ``base_log_prob`` (used by latent-space samplers) are available
    when every part has them and every part uses the standard normal base; a part without them
    raises ``NotImplementedError`` when they are called.

    Args:
        parts: P >= 1 ``Components`` sets with the same event size D. Their parameters are
            registered as submodules, in order.

    Raises:
        TypeError: a part is not a ``Components``.
        ValueError: no parts, or parts with different D.

    Example::

        >>> from pyro_mixflows import FlowComponents
        >>> a = FlowComponents(2, 2, flow="affine_coupling", num_layers=2)
        >>> b = FlowComponents(1, 2, flow="spline_coupling", num_layers=4, hidden_dims=(8,))
        >>> comps = ConcatComponents([a, b])
        >>> comps.num_components, comps(torch.zeros(5, 2)).shape
        (3, torch.Size([5, 3]))
    """

    def __init__(self, parts: Sequence[Components]) -> None:
        super().__init__()
        parts = list(parts)
        if not parts:
            raise ValueError("expected at least one Components part, got none")
        for i, part in enumerate(parts):
            if not isinstance(part, Components):
                raise TypeError(
                    f"expected every part to be a pyro_mixflows Components, got "
                    f"{type(part).__name__} at position {i}"
                )
        dims = [part.dim for part in parts]
        if len(set(dims)) != 1:
            raise ValueError(f"expected every part to have the same event size D, got {dims}")
        self.parts = nn.ModuleList(parts)
        self.sizes = [part.num_components for part in parts]
        self.num_components = sum(self.sizes)
        self.dim = dims[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Log-density of x under every component: (..., D) -> (..., K)."""
        self._check_x(x)
        return torch.cat([part(x) for part in self.parts], dim=-1)

    def rsample(self, sample_shape: torch.Size | Sequence[int] = ()) -> torch.Tensor:
        """One reparameterized draw from every component: (*sample_shape, K, D)."""
        return torch.cat([part.rsample(sample_shape) for part in self.parts], dim=-2)

    def _split(self, t: torch.Tensor) -> list[torch.Tensor]:
        """Split (..., K or 1, D) into the parts' (..., K_j or 1, D) blocks."""
        self._check_x(t)
        if t.dim() < 2 or t.shape[-2] not in (1, self.num_components):
            raise ValueError(
                f"expected shape (..., K={self.num_components}, D={self.dim}) or (..., 1, D), "
                f"got {tuple(t.shape)}"
            )
        if t.shape[-2] == 1:
            return [t] * len(self.parts)
        return list(t.split(self.sizes, dim=-2))

    def _map(self, name: str, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outs, log_dets = [], []
        for part, block in zip(self.parts, self._split(t), strict=True):
            fn = getattr(part, name, None)
            if fn is None:
                raise NotImplementedError(
                    f"{name} needs every part to provide it; {type(part).__name__} does not"
                )
            out, log_det = fn(block.expand(*block.shape[:-2], part.num_components, self.dim))
            outs.append(out)
            log_dets.append(log_det)
        return torch.cat(outs, dim=-2), torch.cat(log_dets, dim=-1)

    def transform(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Base to data for every component: u (..., K or 1, D) -> x (..., K, D), log|det dx/du| (..., K)."""
        return self._map("transform", u)

    def inverse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Data to base for every component: x (..., K or 1, D) -> u (..., K, D), log|det du/dx| (..., K)."""
        return self._map("inverse", x)

    def base_log_prob(self, u: torch.Tensor) -> torch.Tensor:
        """Standard normal base log-density, shared by every part: (..., D) -> (...)."""
        for part in self.parts:
            if not hasattr(part, "base_log_prob"):
                raise NotImplementedError(
                    f"base_log_prob needs every part to provide it; {type(part).__name__} does not"
                )
        return standard_normal_log_prob(u)

    def extra_repr(self) -> str:
        return f"num_components={self.num_components}, dim={self.dim}, sizes={self.sizes}"
