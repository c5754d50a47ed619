"""The enumeration fast path of the indexed component equals the general gather path."""

import pytest
import torch

from pyro_mixflows import FlowComponents
from pyro_mixflows.flows import base as flow_mixture

from ..conftest import perturb


def _gather(lp, index):
    shape = torch.broadcast_shapes(index.shape, lp.shape[:-1])
    return lp.expand(*shape, lp.shape[-1]).gather(-1, index.expand(shape).unsqueeze(-1))[..., 0]


@pytest.mark.parametrize(
    "index_shape, x_shape",
    [((3, 1), (5, 2)), ((3, 1, 1), (4, 5, 2)), ((3, 1, 1), (5, 2)), ((3, 1, 5), (5, 2))],
)
def test_enumerated_index_matches_gather_with_gradients(index_shape, x_shape, float64):
    comps = perturb(FlowComponents(3, 2, flow="affine_coupling", num_layers=2, hidden_dims=(8,)))
    x = torch.randn(x_shape)
    if index_shape[-1] == 5:  # not an enumeration: per-point indices take the gather path
        index = torch.randint(3, index_shape)
        assert flow_mixture._enumerated_dim(index, 3) is None
    else:
        index = torch.arange(3).reshape(index_shape)
        assert flow_mixture._enumerated_dim(index, 3) == len(index_shape)
    out = comps.component(index).log_prob(x)
    (grad,) = torch.autograd.grad(out.square().sum(), comps.affine.params)
    ref = _gather(comps.component_log_probs(x), index)
    (ref_grad,) = torch.autograd.grad(ref.square().sum(), comps.affine.params)
    assert out.shape == ref.shape
    assert torch.allclose(out, ref, atol=1e-12)
    assert torch.allclose(grad, ref_grad, atol=1e-10)


def test_permuted_index_is_not_taken_for_an_enumeration():
    assert flow_mixture._enumerated_dim(torch.tensor([[1], [0], [2]]), 3) is None
    assert flow_mixture._enumerated_dim(torch.arange(3).reshape(3, 1), 4) is None
