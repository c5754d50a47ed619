"""Monotonic rational-quadratic splines (Durkan et al., 2019), elementwise and batched."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MIN_BIN_WIDTH = 1e-3
MIN_BIN_HEIGHT = 1e-3
MIN_DERIVATIVE = 1e-3
# softplus(DERIVATIVE_SHIFT) + MIN_DERIVATIVE == 1, so zero parameters give the identity map.
DERIVATIVE_SHIFT = math.log(math.expm1(1.0 - MIN_DERIVATIVE))


def _knots(raw: torch.Tensor, bound: float, min_size: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Bin sizes and knot positions on [-bound, bound] from unnormalized sizes (..., B)."""
    num_bins = raw.shape[-1]
    sizes = min_size + (1.0 - min_size * num_bins) * torch.softmax(raw, dim=-1)
    knots = F.pad(torch.cumsum(sizes, dim=-1), (1, 0)) * (2 * bound) - bound
    # Pin the end knots exactly so that the spline meets the identity tails.
    knots = torch.cat(
        [
            torch.full_like(knots[..., :1], -bound),
            knots[..., 1:-1],
            torch.full_like(knots[..., :1], bound),
        ],
        dim=-1,
    )
    return knots[..., 1:] - knots[..., :-1], knots


def rational_quadratic_spline(
    inputs: torch.Tensor,
    unnormalized_widths: torch.Tensor,
    unnormalized_heights: torch.Tensor,
    unnormalized_derivatives: torch.Tensor,
    *,
    bound: float,
    inverse: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Elementwise monotonic rational-quadratic spline with identity tails outside [-bound, bound].

    .. math:: y = y_k + h_k \\frac{s_k \\theta^2 + d_k \\theta (1-\\theta)}{s_k + (d_{k+1} + d_k - 2 s_k)\\theta(1-\\theta)}

    Args:
        inputs: values, shape (...).
        unnormalized_widths: bin widths before softmax, shape (..., B).
        unnormalized_heights: bin heights before softmax, shape (..., B).
        unnormalized_derivatives: interior knot derivatives before softplus, shape (..., B - 1).
        bound: half-width of the interval on which the spline acts.
        inverse: evaluate the inverse map instead.

    Returns:
        ``(outputs, log_abs_det)``, both shaped like ``inputs``: the elementwise log-derivative
        of the map that was evaluated.
    """
    widths, cumwidths = _knots(unnormalized_widths, bound, MIN_BIN_WIDTH)
    heights, cumheights = _knots(unnormalized_heights, bound, MIN_BIN_HEIGHT)
    derivatives = MIN_DERIVATIVE + F.softplus(unnormalized_derivatives + DERIVATIVE_SHIFT)
    derivatives = F.pad(derivatives, (1, 1), value=1.0)  # slope 1 at the ends meets the tails

    inside = (inputs >= -bound) & (inputs <= bound)
    x = inputs.clamp(-bound, bound)
    knots = cumheights if inverse else cumwidths
    num_bins = widths.shape[-1]
    idx = (x.unsqueeze(-1) >= knots[..., 1:-1]).sum(-1, keepdim=True).clamp(max=num_bins - 1)

    def pick(t: torch.Tensor) -> torch.Tensor:
        return t.gather(-1, idx).squeeze(-1)

    x_k, w_k, y_k, h_k = pick(cumwidths), pick(widths), pick(cumheights), pick(heights)
    d_k, d_k1 = pick(derivatives[..., :-1]), pick(derivatives[..., 1:])
    s_k = h_k / w_k
    curvature = d_k1 + d_k - 2 * s_k

    if inverse:
        dy = x - y_k
        a = h_k * (s_k - d_k) + dy * curvature
        b = h_k * d_k - dy * curvature
        c = -s_k * dy
        disc = (b.square() - 4 * a * c).clamp(min=0)
        theta = (2 * c) / (-b - disc.sqrt())
        out = theta * w_k + x_k
    else:
        theta = (x - x_k) / w_k
        t1mt = theta * (1 - theta)
        out = y_k + h_k * (s_k * theta.square() + d_k * t1mt) / (s_k + curvature * t1mt)
    t1mt = theta * (1 - theta)
    denom = s_k + curvature * t1mt
    log_deriv = (
        2 * torch.log(s_k)
        + torch.log(d_k1 * theta.square() + 2 * s_k * t1mt + d_k * (1 - theta).square())
        - 2 * torch.log(denom)
    )
    if inverse:
        log_deriv = -log_deriv
    outputs = torch.where(inside, out, inputs)
    log_abs_det = torch.where(inside, log_deriv, torch.zeros_like(log_deriv))
    return outputs, log_abs_det
