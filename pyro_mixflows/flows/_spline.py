"""Monotonic rational-quadratic splines (Durkan et al., 2019), elementwise and batched."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MIN_BIN_WIDTH = 1e-3
MIN_BIN_HEIGHT = MIN_BIN_WIDTH  # one minimum for both: widths and heights share a softmax
MIN_DERIVATIVE = 1e-3
# softplus(DERIVATIVE_SHIFT) + MIN_DERIVATIVE == 1 (up to rounding): zero parameters give the identity
# map, and the end knots (parameter 0 by padding) have slope 1, meeting the identity tails.
DERIVATIVE_SHIFT = math.log(math.expm1(1.0 - MIN_DERIVATIVE))


_CONSTANTS: dict = {}


def _constant(name, num_bins: int, dtype: torch.dtype, device: torch.device, make):
    """A small constant tensor of the spline, built once per (name, B, dtype, device)."""
    if torch.compiler.is_compiling():  # a constant of the compiled graph: no cache needed
        return make(num_bins, dtype, device)
    key = (name, num_bins, dtype, device)
    value = _CONSTANTS.get(key)
    if value is None:
        value = _CONSTANTS[key] = make(num_bins, dtype, device)
    return value


def _triangle(num_bins: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The (B, B + 1) 0/1 triangle T[i, j] = [i < j]: ``e @ T`` gives the prefix sums C_0..C_B."""
    return _constant(
        "triangle",
        num_bins,
        dtype,
        device,
        lambda b, dt, dev: torch.ones(b, b + 1, dtype=dt, device=dev).triu(1),
    )


def _knot_starts(num_bins: int, bound: float, dtype, device) -> torch.Tensor:
    """``2 bound m j - bound`` for j = 0..B (m the minimum bin size), formed as in the spline."""
    return _constant(
        ("starts", bound),
        num_bins,
        dtype,
        device,
        lambda b, dt, dev: (
            torch.arange(b + 1, dtype=dt, device=dev) * (2 * bound * MIN_BIN_WIDTH) - bound
        ),
    )


def _gather_offsets(num_bins: int, device) -> torch.Tensor:
    """[0, 1, B]: added to the bin index k and clamped at B, the columns k, k + 1 and B."""
    return _constant(
        "offsets",
        num_bins,
        torch.int64,
        device,
        lambda b, dt, dev: torch.tensor([0, 1, b], dtype=dt, device=dev),
    )


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
    return packed_rational_quadratic_spline(
        inputs,
        torch.stack([unnormalized_widths, unnormalized_heights], dim=-2),
        unnormalized_derivatives,
        bound=bound,
        inverse=inverse,
    )


def packed_rational_quadratic_spline(
    inputs: torch.Tensor,
    unnormalized_sizes: torch.Tensor,
    unnormalized_derivatives: torch.Tensor,
    *,
    bound: float,
    inverse: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``rational_quadratic_spline`` with widths and heights packed as (..., 2, B).

    Only what the element's bin needs is normalized. The softmax numerators' prefix sums
    ``C_0 = 0, ..., C_B`` (the total) come from one small matmul; knot ``j`` of a row is
    ``(m j + (1 - m B) C_j / C_B) 2 bound - bound`` (m the minimum bin size), so after the bin
    search one gather reads the bin's two prefix sums and the total per row, and the knots are
    formed from those three numbers. Likewise the bin's two derivatives are gathered before the
    softplus. The full (..., 2, B) work is the shift, exp and matmul, forward and backward.

    Args:
        inputs: values, shape (...).
        unnormalized_sizes: ``[widths, heights]`` before softmax, shape (..., 2, B).
        unnormalized_derivatives: interior knot derivatives before softplus, shape (..., B - 1).
        bound: half-width of the interval on which the spline acts.
        inverse: evaluate the inverse map instead.
    """
    num_bins = unnormalized_sizes.shape[-1]
    dtype, device = unnormalized_sizes.dtype, unnormalized_sizes.device
    # softmax numerators; the shift by the max keeps exp finite and carries no gradient, since
    # the softmax does not depend on it
    e = (unnormalized_sizes - unnormalized_sizes.detach().amax(-1, keepdim=True)).exp()
    # prefix sums as a matmul with a 0/1 triangle (its backward is a matmul too), and the total
    cums = e @ _triangle(num_bins, dtype, device)  # (..., 2, B + 1): C_0 = 0 exactly, ..., C_B
    # knot j = start_j + scale * C_j, start_j = 2 bound m j - bound, scale = 2 bound (1 - m B) / C_B
    scale_num = 2 * bound * (1.0 - MIN_BIN_WIDTH * num_bins)
    starts = _knot_starts(num_bins, bound, dtype, device)  # (B + 1,)

    inside = (inputs >= -bound) & (inputs <= bound)
    x = inputs.clamp(-bound, bound)
    # bin index in [0, B - 1]: the number of interior knots at or below x on the searched row (no
    # gradient), formed by the same operations as the bin's knots below, so that the bin found
    # holds x between exactly those floating-point knots
    row = cums.detach()[..., 1 if inverse else 0, :]  # (..., B + 1)
    search = starts[1:-1] + (scale_num / row[..., -1:]) * row[..., 1:-1]  # (..., B - 1)
    idx = (x.detach().unsqueeze(-1) >= search).sum(-1, keepdim=True)  # (..., 1)
    # per row, the bin's left and right prefix sums and the total: one gather, (..., 2, 3)
    idx3 = (idx + _gather_offsets(num_bins, device)).clamp_(max=num_bins)  # [k, k + 1, B]
    picked = cums.gather(-1, idx3.unsqueeze(-2).expand(*idx3.shape[:-1], 2, 3))
    prefix, total = picked.split([2, 1], dim=-1)  # (..., 2, 2), (..., 2, 1)
    idx2 = idx3[..., :2]
    # starts[idx2] as arithmetic (same operations as the table): (..., 1, 2)
    start = (idx2.unsqueeze(-2).to(dtype) * (2 * bound * MIN_BIN_WIDTH)) - bound
    # (..., 2, 2): knot 0 is -bound exactly, knot B is bound up to rounding (C_B / C_B)
    knots = start + (scale_num / total) * prefix
    # unbind (not indexing): one stack in the backward instead of a zero-filled copy per index
    x_k, x_k1, y_k, y_k1 = knots.flatten(-2).unbind(-1)
    w_k = x_k1 - x_k
    h_k = y_k1 - y_k
    # the bin's two knot derivatives: softplus of the gathered parameters, padded with zeros,
    # whose softplus gives slope 1 at the end knots (DERIVATIVE_SHIFT), meeting the tails
    padded = F.pad(unnormalized_derivatives, (1, 1))  # (..., B + 1)
    derivatives = MIN_DERIVATIVE + F.softplus(padded.gather(-1, idx2) + DERIVATIVE_SHIFT)
    d_k, d_k1 = derivatives.unbind(-1)  # (...) each
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
        t1mt = theta * (1 - theta)
    else:
        theta = (x - x_k) / w_k
        t1mt = theta * (1 - theta)
        out = y_k + h_k * (s_k * theta.square() + d_k * t1mt) / (s_k + curvature * t1mt)
    denom = s_k + curvature * t1mt
    log_deriv = (
        2 * torch.log(s_k)
        + torch.log(d_k1 * theta.square() + 2 * s_k * t1mt + d_k * (1 - theta).square())
        - 2 * torch.log(denom)
    )
    if inverse:
        log_deriv = -log_deriv
    outputs = torch.where(inside, out, inputs)
    log_abs_det = torch.where(inside, log_deriv, 0.0)
    return outputs, log_abs_det
