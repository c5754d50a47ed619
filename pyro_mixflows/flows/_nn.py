"""Component-batched dense networks: K independent MLPs evaluated as one batched matmul."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {"relu": F.relu, "elu": F.elu, "silu": F.silu, "tanh": torch.tanh, "gelu": F.gelu}


def get_activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"expected activation in {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]


class BatchedLinear(nn.Module):
    """K affine maps with their own weights, ``y[k] = x[k] @ W[k] + b[k]``.

    Args:
        num_components: K.
        in_features: input size.
        out_features: output size.
        mask: optional (in_features, out_features) 0/1 mask applied to every W[k] (MADE).
        zero_init: start at W = 0, b = 0 (used for the last layer, so flows start near identity).
    """

    def __init__(
        self,
        num_components: int,
        in_features: int,
        out_features: int,
        *,
        mask: torch.Tensor | None = None,
        zero_init: bool = False,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_components, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(num_components, 1, out_features))
        if mask is None:
            self.mask = None
        else:
            self.register_buffer("mask", mask.to(self.weight.dtype))
        if zero_init:
            nn.init.zeros_(self.weight)
            nn.init.zeros_(self.bias)
        else:
            # nn.Linear's default, per component; a mask scales the fan-in to what is connected.
            fan_in = in_features if mask is None else max(1.0, float(mask.sum(0).mean()))
            bound = 1.0 / math.sqrt(fan_in)
            nn.init.uniform_(self.weight, -bound, bound)
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(K, M, in) -> (K, M, out)."""
        weight = self.weight if self.mask is None else self.weight * self.mask
        return torch.baddbmm(self.bias, x, weight)


class BatchedMLP(nn.Module):
    """K independent MLPs; the last layer starts at zero."""

    def __init__(
        self,
        num_components: int,
        in_features: int,
        hidden_dims: Sequence[int],
        out_features: int,
        *,
        activation: str = "relu",
        masks: Sequence[torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        sizes = [in_features, *hidden_dims, out_features]
        if masks is not None and len(masks) != len(sizes) - 1:
            raise ValueError(f"expected {len(sizes) - 1} masks, got {len(masks)}")
        self.layers = nn.ModuleList(
            BatchedLinear(
                num_components,
                sizes[i],
                sizes[i + 1],
                mask=None if masks is None else masks[i],
                zero_init=i == len(sizes) - 2,
            )
            for i in range(len(sizes) - 1)
        )
        self.activation_name = activation
        self._activation = get_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(K, M, in) -> (K, M, out)."""
        *hidden, last = self.layers
        for layer in hidden:
            x = self._activation(layer(x))
        return last(x)


def made_masks(dim: int, hidden_dims: Sequence[int], outputs_per_dim: int) -> list[torch.Tensor]:
    """MADE masks (Germain et al., 2015) for the natural order 1..D.

    Output ``j * D + i`` (parameter j of dimension i) depends only on inputs ``< i``.
    """
    in_deg = torch.arange(1, dim + 1)
    max_hidden = max(1, dim - 1)
    degrees = [in_deg]
    for h in hidden_dims:
        degrees.append(torch.arange(h) % max_hidden + 1)
    masks = [
        (degrees[i + 1].unsqueeze(0) >= degrees[i].unsqueeze(1)).float()
        for i in range(len(hidden_dims))
    ]
    out_deg = in_deg.repeat(outputs_per_dim)
    masks.append((out_deg.unsqueeze(0) > degrees[-1].unsqueeze(1)).float())
    return masks
