"""Every Components set and every flow layer follows torch's call convention."""

import math

import pytest
import torch
from pyro.distributions import Normal, TransformedDistribution
from pyro.distributions import transforms as T
from torch import nn

from pyro_mixflows import DistributionComponents, FlowComponents, FlowMixture
from pyro_mixflows.flows import Components, ConcatComponents, RescaledComponents
from pyro_mixflows.flows.layers import (
    AffineCoupling,
    ElementwiseAffine,
    MaskedAutoregressive,
    Permute,
    SplineCoupling,
    TriangularAffine,
)

from ..conftest import perturb

K, D = 3, 2


def _flows(flow="affine_coupling", num_components=K):
    comps = FlowComponents(num_components, D, flow=flow, num_layers=2, hidden_dims=(8,))
    return perturb(comps, 0.1)


class _OnlyComponentLogProbs(Components):
    """A user's components, written the pre-torch way: ``component_log_probs`` only."""

    def __init__(self, loc: torch.Tensor) -> None:  # (K, D)
        super().__init__()
        self.num_components, self.dim = loc.shape
        self.loc = nn.Parameter(loc)

    def component_log_probs(self, x):  # (..., D) -> (..., K)
        return Normal(self.loc, 1.0).log_prob(x.unsqueeze(-2)).sum(-1)


class _OnlyForward(_OnlyComponentLogProbs):
    forward = _OnlyComponentLogProbs.component_log_probs
    component_log_probs = Components.component_log_probs


class _Neither(Components):
    num_components, dim = 1, D


# {id: constructor} registry of every Components kind of the package: () -> Components
CASES = {
    "flow_affine_coupling": lambda: _flows("affine_coupling"),
    "flow_maf": lambda: _flows("maf"),
    "flow_spline_coupling": lambda: _flows("spline_coupling"),
    "distributions": lambda: DistributionComponents(
        [
            TransformedDistribution(
                Normal(torch.zeros(D), torch.ones(D)).to_event(1),
                [perturb(T.spline_coupling(D, count_bins=4), 0.1)],
            )
            for _ in range(K)
        ]
    ),
    "rescaled": lambda: RescaledComponents(_flows(), torch.ones(D), torch.full((D,), 2.0)),
    "concat": lambda: ConcatComponents([_flows(num_components=1), _flows("maf", K - 1)]),
    "only_component_log_probs": lambda: _OnlyComponentLogProbs(torch.randn(K, D)),
    "only_forward": lambda: _OnlyForward(torch.randn(K, D)),
}


def test_distribution_components_with_free_parameters_are_called_like_modules(float64):
    # Normal(param, 1.0) holds a view of param, not a module attribute: calling works, but
    # torch.func.functional_call cannot swap such a parameter (see DistributionComponents)
    free = [nn.Parameter(torch.full((D,), float(k))) for k in range(K)]
    comps = DistributionComponents([Normal(p, 1.0).to_event(1) for p in free])
    x = torch.randn(5, D)
    assert torch.equal(comps(x), comps.component_log_probs(x))
    assert torch.equal(comps(x)[:, 1], Normal(free[1], 1.0).to_event(1).log_prob(x))


@pytest.mark.parametrize("name", CASES)
def test_calling_the_module_is_component_log_probs(name, float64):
    comps = CASES[name]()
    x = torch.randn(4, 5, D)
    lp = comps(x)
    assert lp.shape == (4, 5, K)
    assert torch.equal(lp, comps.component_log_probs(x))
    assert torch.equal(lp, comps.forward(x))


@pytest.mark.parametrize("name", CASES)
def test_functional_call_uses_the_parameters_it_is_given(name, float64):
    comps = CASES[name]()
    x = torch.randn(6, D)
    params = dict(comps.named_parameters())
    same = torch.func.functional_call(comps, params, (x,))
    assert torch.allclose(same, comps(x), atol=1e-12)
    zeros = {k: torch.zeros_like(v) for k, v in params.items()}
    other = torch.func.functional_call(comps, zeros, (x,))
    assert other.shape == (6, K) and not torch.allclose(other, same)
    # the module's own parameters are untouched
    assert all(torch.equal(p, params[k]) for k, p in comps.named_parameters())


def test_functional_call_gives_gradients_in_the_passed_parameters(float64):
    comps = _flows("spline_coupling")
    params = {k: v.detach().clone().requires_grad_(True) for k, v in comps.named_parameters()}
    lp = torch.func.functional_call(comps, params, (torch.randn(6, D),))
    grads = torch.autograd.grad(lp.sum(), list(params.values()), allow_unused=True)
    assert all(g is not None for g in grads)
    assert all(p.grad is None for p in comps.parameters())


def test_a_subclass_with_component_log_probs_only_works_in_a_mixture(float64):
    comps = _OnlyComponentLogProbs(torch.randn(K, D))
    x = torch.randn(7, D)
    mixture = FlowMixture(comps, logits=torch.zeros(K))
    expected = torch.logsumexp(comps.component_log_probs(x), -1) - math.log(K)
    assert torch.allclose(mixture.log_prob(x), expected)
    z = torch.arange(K).reshape(K, 1)  # an enumerated index, as TraceEnum_ELBO passes it
    assert torch.equal(comps.component(z).log_prob(x), comps(x).T)


def test_a_subclass_with_neither_method_raises_instead_of_recursing():
    comps = _Neither()
    with pytest.raises(NotImplementedError, match="implement forward or component_log_probs"):
        comps(torch.zeros(2, D))
    with pytest.raises(NotImplementedError, match="implement forward or component_log_probs"):
        comps.component_log_probs(torch.zeros(2, D))


def test_compiled_module_matches_the_eager_one(float64):
    # torch's own nn.Module.compile; the "eager" backend traces with dynamo but generates no
    # code, so the check takes a second or two (the inductor backend is exercised on the GPU)
    comps = _flows("affine_coupling")
    x = torch.randn(9, D)
    expected = comps(x)
    comps.compile(backend="eager", fullgraph=True)
    assert torch.allclose(comps(x), expected, atol=1e-12)
    mixture = FlowMixture(comps, logits=torch.zeros(K))  # goes through the compiled call
    assert torch.allclose(mixture.log_prob(x), expected.logsumexp(-1) - math.log(K))


# {id: constructor} registry of the layers: (K, D) -> layer
LAYERS = {
    "elementwise_affine": lambda K, D: ElementwiseAffine(K, D),
    "triangular_affine": lambda K, D: TriangularAffine(K, D),
    "permute": lambda K, D: Permute(torch.arange(D - 1, -1, -1)),
    "affine_coupling": lambda K, D: AffineCoupling(K, D, (8,), flip=False, activation="relu"),
    "spline_coupling": lambda K, D: SplineCoupling(
        K, D, (8,), flip=True, activation="relu", count_bins=4, bound=3.0
    ),
    "maf": lambda K, D: MaskedAutoregressive(K, D, (8,), activation="relu"),
}


@pytest.mark.parametrize("name", LAYERS)
def test_calling_a_layer_is_to_base(name, float64):
    layer = perturb(LAYERS[name](K, 3), 0.1)
    x = torch.randn(K, 5, 3)  # (K, M, D)
    u, log_det = layer(x)
    u2, log_det2 = layer.to_base(x)
    assert u.shape == (K, 5, 3) and log_det.shape == (K, 5)
    assert torch.equal(u, u2) and torch.equal(log_det, log_det2)
    back, _ = layer.to_data(u)
    assert torch.allclose(back, x, atol=1e-8)
