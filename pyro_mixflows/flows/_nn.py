"""Component-batched dense networks: K independent MLPs evaluated as one batched matmul."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {"relu": F.relu, "elu": F.elu, "silu": F.silu, "tanh": torch.tanh, "gelu": F.gelu}
# The same, in place, where the backward reads only the result with the same arithmetic (silu and
# gelu read their input; ELU's backward from its result rounds differently)
INPLACE_ACTIVATIONS = {"relu": torch.relu_, "tanh": torch.tanh_}


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
    """K independent MLPs; the last layer starts at zero.

    All weights and biases of the K networks live in ONE parameter tensor ``params`` of shape
    (K, P): layer i is the block ``params[:, o_i : o_i + (in_i + 1) * out_i]`` viewed as
    (K, in_i + 1, out_i), bias in row 0 and weight below. One tensor instead of two per layer keeps
    per-parameter costs (``pyro.module``, Pyro's per-parameter optimizers) small. The
    initialization is ``nn.Linear``'s default per component (a mask scales the fan-in to what is
    connected), drawn in the same order as with separate tensors.

    Args:
        num_components: K.
        in_features: input size.
        hidden_dims: hidden sizes.
        out_features: output size.
        activation: one of "relu", "elu", "silu", "tanh", "gelu".
        masks: optional (in_i, out_i) 0/1 masks, one per layer (MADE).
    """

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
        self.shapes = [(sizes[i], sizes[i + 1]) for i in range(len(sizes) - 1)]
        self.offsets = [0]
        for n_in, n_out in self.shapes:
            self.offsets.append(self.offsets[-1] + (n_in + 1) * n_out)
        K = num_components
        self.params = nn.Parameter(torch.zeros(K, self.offsets[-1]))
        if masks is not None:
            for i, mask in enumerate(masks):
                self.register_buffer(f"mask{i}", mask.to(self.params.dtype))
        with torch.no_grad():
            for i, (n_in, n_out) in enumerate(self.shapes[:-1]):  # the last layer stays at zero
                mask = None if masks is None else masks[i]
                fan_in = n_in if mask is None else max(1.0, float(mask.sum(0).mean()))
                bound = 1.0 / math.sqrt(fan_in)
                block = self._block(i)
                block[:, 1:].copy_(torch.empty(K, n_in, n_out).uniform_(-bound, bound))
                block[:, :1].copy_(torch.empty(K, 1, n_out).uniform_(-bound, bound))
        self.has_masks = masks is not None
        self.activation_name = activation
        self._activation = get_activation(activation)

    def _block(self, i: int) -> torch.Tensor:
        n_in, n_out = self.shapes[i]
        return self.params[:, self.offsets[i] : self.offsets[i + 1]].unflatten(1, (n_in + 1, n_out))

    def weight(self, i: int) -> torch.Tensor:
        """Layer i's weight (masked for MADE), a view of shape (K, in_i, out_i)."""
        w = self._block(i)[:, 1:]
        return w * getattr(self, f"mask{i}") if self.has_masks else w

    def bias(self, i: int) -> torch.Tensor:
        """Layer i's bias, a view of shape (K, 1, out_i)."""
        return self._block(i)[:, :1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(K, M, in) -> (K, M, out)."""
        # split (not slicing): its backward is one concatenation, not a zero-filled copy per slice
        sizes = [b - a for a, b in zip(self.offsets[:-1], self.offsets[1:], strict=True)]
        blocks = self.params.split(sizes, dim=1)
        last = len(self.shapes) - 1
        for i, ((n_in, n_out), block) in enumerate(zip(self.shapes, blocks, strict=True)):
            bias, weight = block.unflatten(1, (n_in + 1, n_out)).split([1, n_in], dim=1)
            if self.has_masks:
                weight = weight * getattr(self, f"mask{i}")
            x = torch.baddbmm(bias, x, weight)  # (K, M, out_i)
            if i < last:
                x = self._activate(x)
        return x

    def _activate(self, x: torch.Tensor) -> torch.Tensor:
        # ReLU (tanh) in place on the fresh baddbmm output (baddbmm's backward needs only its
        # inputs, ReLU's only its result): one (K, M, H) tensor fewer per layer, i.e. fewer fresh
        # allocations, which large batched passes pay for in page faults. Same values.
        inplace = INPLACE_ACTIVATIONS.get(self.activation_name)
        return self._activation(x) if inplace is None else inplace(x)


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
