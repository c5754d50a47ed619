"""The packed parameter layout that keeps per-step bookkeeping small, and the packed spline."""

import math

import pytest
import torch

from pyro_mixflows import FlowComponents
from pyro_mixflows.flows._nn import BatchedMLP, made_masks
from pyro_mixflows.flows._spline import packed_rational_quadratic_spline, rational_quadratic_spline


@pytest.mark.parametrize("flow", ["affine_coupling", "maf", "spline_coupling"])
def test_one_parameter_tensor_per_layer(flow):
    """pyro.module and Pyro's per-parameter optimizers cost per tensor: num_layers + 1 of them."""
    comps = FlowComponents(3, 4, flow=flow, num_layers=3, hidden_dims=(8, 8))
    assert len(list(comps.parameters())) == 3 + 1


def test_mlp_blocks_are_views_with_linear_init():
    K, sizes = 2, (3, 5, 4)
    mlp = BatchedMLP(K, sizes[0], sizes[1:2], sizes[2])
    w0, b0 = mlp.weight(0), mlp.bias(0)
    assert w0.shape == (K, 3, 5) and b0.shape == (K, 1, 5)
    assert w0.data_ptr() != b0.data_ptr() and w0.untyped_storage().data_ptr() == (
        mlp.params.untyped_storage().data_ptr()
    )
    bound = 1.0 / math.sqrt(3)  # nn.Linear's default for fan-in 3
    assert 0 < w0.abs().max() <= bound and 0 < b0.abs().max() <= bound
    assert mlp.weight(1).abs().max() == 0 and mlp.bias(1).abs().max() == 0  # last layer at zero
    x = torch.randn(K, 6, 3)
    expected = torch.relu(x @ w0 + b0) @ mlp.weight(1) + mlp.bias(1)
    with torch.no_grad():
        mlp.params.add_(0.1)  # the output must follow the one tensor
        expected = torch.relu(x @ mlp.weight(0) + mlp.bias(0)) @ mlp.weight(1) + mlp.bias(1)
    assert torch.allclose(mlp(x), expected, atol=1e-6)


def test_made_mask_blocks_gradient_of_masked_weights():
    D, hidden = 3, (6,)
    masks = made_masks(D, hidden, 2)
    mlp = BatchedMLP(2, D, hidden, 2 * D, masks=masks)
    with torch.no_grad():
        mlp.params.add_(0.1)
    mlp(torch.randn(2, 5, D)).square().sum().backward()
    grad = mlp.params.grad
    for i, mask in enumerate(masks):
        n_in, n_out = mlp.shapes[i]
        block = grad[:, mlp.offsets[i] : mlp.offsets[i + 1]].unflatten(1, (n_in + 1, n_out))
        assert block[:, 1:][:, mask == 0].abs().max() == 0
        assert block[:, 1:][:, mask == 1].abs().max() > 0


def _reference_spline(x, w, h, d, bound, inverse):
    """Textbook rational-quadratic spline, bin by bin (Durkan et al., 2019, eqs. 4-8)."""
    min_size, min_d = 1e-3, 1e-3
    B = w.shape[-1]
    widths = min_size + (1 - min_size * B) * torch.softmax(w, -1)
    heights = min_size + (1 - min_size * B) * torch.softmax(h, -1)
    shift = math.log(math.expm1(1.0 - min_d))
    deriv = torch.cat(
        [torch.ones(1), min_d + torch.nn.functional.softplus(d + shift), torch.ones(1)]
    )
    xs = torch.cat([torch.zeros(1), torch.cumsum(widths, -1)]) * 2 * bound - bound
    ys = torch.cat([torch.zeros(1), torch.cumsum(heights, -1)]) * 2 * bound - bound
    if abs(x) > bound:
        return x, 0.0
    knots = ys if inverse else xs
    k = min(int((knots[1:-1] <= x).sum()), B - 1)
    wk, hk = xs[k + 1] - xs[k], ys[k + 1] - ys[k]
    s, dk, dk1 = hk / wk, deriv[k], deriv[k + 1]

    def forward(t):
        return ys[k] + hk * (s * t**2 + dk * t * (1 - t)) / (s + (dk1 + dk - 2 * s) * t * (1 - t))

    if inverse:  # bisection on theta: slow, but independent of the closed-form root
        lo, hi = torch.tensor(0.0), torch.tensor(1.0)
        for _ in range(200):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if forward(mid) < x else (lo, mid)
        t = (lo + hi) / 2
    else:
        t = (x - xs[k]) / wk
    num = s**2 * (dk1 * t**2 + 2 * s * t * (1 - t) + dk * (1 - t) ** 2)
    log_deriv = torch.log(num) - 2 * torch.log(s + (dk1 + dk - 2 * s) * t * (1 - t))
    return (t * wk + xs[k], -log_deriv) if inverse else (forward(t), log_deriv)


@pytest.mark.parametrize("inverse", [False, True])
def test_packed_spline_matches_bin_by_bin_reference(inverse, float64):
    B, bound = 5, 2.0
    x = torch.tensor([-2.5, -1.9, -0.3, 0.0, 0.7, 1.99, 3.0])
    w, h, d = torch.randn(7, B), torch.randn(7, B), torch.randn(7, B - 1)
    out, log_det = rational_quadratic_spline(x, w, h, d, bound=bound, inverse=inverse)
    for i in range(len(x)):
        ref_out, ref_ld = _reference_spline(x[i], w[i], h[i], d[i], bound, inverse)
        assert torch.allclose(out[i], torch.as_tensor(ref_out), atol=1e-10)
        assert torch.allclose(log_det[i], torch.as_tensor(ref_ld, dtype=x.dtype), atol=1e-10)


@pytest.mark.parametrize("activation", ["relu", "elu", "tanh", "silu", "gelu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("masked", [False, True])
def test_mlp_in_place_activation_keeps_values_and_gradients(activation, dtype, masked):
    """The hidden activations run in place where their backward allows: output and gradients
    equal the out-of-place computation bit for bit."""
    torch.manual_seed(0)
    K, D, hidden = 3, 4, (16, 8)
    masks = made_masks(D, hidden, 2) if masked else None
    mlp = BatchedMLP(K, D, hidden, 2 * D, activation=activation, masks=masks).to(dtype)
    with torch.no_grad():
        mlp.params.normal_()  # the last layer off zero too
    x = torch.randn(K, 7, D, dtype=dtype, requires_grad=True)
    act = {"relu": torch.relu, "elu": torch.nn.functional.elu, "tanh": torch.tanh,
           "silu": torch.nn.functional.silu, "gelu": torch.nn.functional.gelu}[activation]  # fmt: skip
    h = x
    for i in range(3):
        h = torch.baddbmm(mlp.bias(i), h, mlp.weight(i))
        h = act(h) if i < 2 else h
    grads_ref = torch.autograd.grad(h.square().sum(), [x, mlp.params])
    out = mlp(x)
    grads = torch.autograd.grad(out.square().sum(), [x, mlp.params])
    assert torch.equal(out, h)
    for a, b in zip(grads, grads_ref, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("inverse", [False, True])
def test_packed_spline_parameter_gradients(inverse, float64):
    """The spline gathers the bin's prefix sums and derivatives before normalizing them: its
    gradients with respect to every spline parameter match finite differences, with points in
    the first and last bins, on the bound and outside it."""
    torch.manual_seed(1)
    sizes = torch.randn(2, 9, 2, 6, requires_grad=True)
    derivatives = torch.randn(2, 9, 5, requires_grad=True)
    x = torch.tensor([-3.5, -2.99, -1.0, 0.0, 0.4, 1.7, 2.95, 3.0, 4.0]).expand(2, 9)

    def spline(s, d):
        return packed_rational_quadratic_spline(x, s, d, bound=3.0, inverse=inverse)

    assert torch.autograd.gradcheck(spline, (sizes, derivatives))
