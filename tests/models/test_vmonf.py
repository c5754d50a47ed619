"""VMoNF model/guide: the exact ELBO identities, the supervised term's sign, the temperature."""

import math

import pyro
import pytest
import torch
from pyro.infer import SVI, TraceEnum_ELBO

import pyro_mixflows
from pyro_mixflows import FlowComponents, FlowMixture, VMoNF

from ..conftest import perturb


def make(**kwargs):
    comps = FlowComponents(3, 2, flow="affine_coupling", num_layers=2, hidden_dims=(8,))
    comps.set_affine(torch.tensor([[-2.0, 0.0], [0.0, 1.0], [2.0, 0.0]]), torch.ones(3, 2))
    perturb(comps, 0.1)
    return VMoNF(comps, **kwargs)


def test_amortized_elbo_is_the_exact_sum_over_k(float64):
    vm = make(temperature_schedule=None)
    x = torch.randn(12, 2)
    loss = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(vm.model, vm.guide, x)
    log_q = vm.classifier_logits(x).log_softmax(-1)
    joint = vm.weight_logits.log_softmax(-1) + vm.components.component_log_probs(x)
    expected = -(log_q.exp() * (joint - log_q)).sum()
    assert torch.allclose(loss, expected, rtol=1e-10)
    # ELBO = log p(x) - KL(q || p(k|x)) <= log p(x)
    assert loss >= -vm.mixture().log_prob(x).sum() - 1e-9


def test_enumerated_model_loss_is_minus_log_likelihood(float64):
    vm = make(assignment="enumerate")
    x = torch.randn(12, 2)
    loss = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(vm.model, vm.guide, x)
    assert torch.allclose(loss, -vm.mixture().log_prob(x).sum(), rtol=1e-6)


@pytest.mark.parametrize("weights", ["learned", "uniform", "dirichlet", "dirichlet_process"])
def test_calling_the_module_is_the_fitted_log_likelihood(float64, weights):
    vm = make(weights=weights, assignment="enumerate")
    x = torch.randn(6, 2)
    lp = vm(x)
    assert lp.shape == (6,)
    assert torch.allclose(lp, vm.mixture().log_prob(x), rtol=1e-12)
    # differentiable in the components' parameters
    lp.sum().backward()
    assert all(p.grad is not None for p in vm.components.parameters())
    with pytest.raises(ValueError, match=r"expected x of shape \(N, 2\)"):
        vm(torch.zeros(2))


def test_uniform_weights_are_fixed(float64):
    vm = make(weights="uniform", assignment="enumerate")
    x = torch.randn(5, 2)
    expected = FlowMixture(vm.components, probs=torch.full((3,), 1 / 3)).log_prob(x).sum()
    loss = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(vm.model, vm.guide, x)
    assert torch.allclose(loss, -expected)


def test_supervised_term_pulls_q_towards_the_labels():
    vm = make(temperature_schedule=None, supervised_scale=5.0)
    x = torch.randn(20, 2)
    x_lab = torch.randn(30, 2)
    y_lab = torch.randint(3, (30,))

    def log_q_y():
        with torch.no_grad():
            return vm.classifier_logits(x_lab).log_softmax(-1).gather(-1, y_lab[:, None]).mean()

    before = log_q_y()
    svi = SVI(
        vm.model, vm.guide, pyro.optim.Adam({"lr": 1e-2}), TraceEnum_ELBO(max_plate_nesting=1)
    )
    for _ in range(40):
        svi.step(x, x_lab, y_lab)
    # Random labels on random points: only the supervised term can raise log q(y|x) this much.
    assert log_q_y() > before + 0.1


def test_supervised_factor_enters_the_loss_with_a_negative_sign(float64):
    vm = make(temperature_schedule=None, supervised_scale=2.0)
    x, x_lab, y_lab = torch.randn(4, 2), torch.randn(6, 2), torch.tensor([0, 1, 2, 0, 1, 2])
    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    with_term = elbo.differentiable_loss(vm.model, vm.guide, x, x_lab, y_lab)
    vm.supervised_scale = 0.0
    without = elbo.differentiable_loss(vm.model, vm.guide, x, x_lab, y_lab)
    log_q = vm.classifier_logits(x_lab).log_softmax(-1).gather(-1, y_lab[:, None]).sum()
    assert torch.allclose(with_term - without, -2.0 * log_q)


def test_temperature_follows_the_paper_schedule():
    vm = make()
    x = torch.randn(8, 2)
    svi = SVI(
        vm.model, vm.guide, pyro.optim.Adam({"lr": 1e-3}), TraceEnum_ELBO(max_plate_nesting=1)
    )
    for _ in range(5):
        svi.step(x)
    assert int(vm.step) == 5
    assert vm.temperature == pytest.approx(math.exp(-5e-3))
    with torch.no_grad():
        TraceEnum_ELBO(max_plate_nesting=1).loss(vm.model, vm.guide, x)
    assert int(vm.step) == 5  # evaluation does not advance the schedule


def test_dirichlet_weights_have_a_variational_posterior():
    vm = make(weights="dirichlet", assignment="enumerate", concentration=0.5)
    x = torch.randn(10, 2)
    trace = pyro.poutine.trace(vm.guide).get_trace(x)
    assert "weights" in trace.nodes
    loss = TraceEnum_ELBO(max_plate_nesting=1).loss(vm.model, vm.guide, x)
    assert math.isfinite(loss)
    assert torch.allclose(vm.weight_logits_estimate().exp().sum(), torch.tensor(1.0))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(weights="beta"), "expected weights in"),
        (dict(assignment="sampled"), "expected assignment in"),
        (dict(concentration=0.0), "concentration > 0"),
        (dict(supervised_scale=-1.0), "supervised_scale >= 0"),
    ],
)
def test_constructor_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make(**kwargs)


def test_label_errors_name_the_problem():
    vm = make()
    x = torch.randn(4, 2)
    with pytest.raises(ValueError, match=r"values in \[0, 3\)"):
        vm.model(x, x, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="both x_labelled and y_labelled"):
        vm.model(x, x)
    with pytest.raises(ValueError, match="event size D=2"):
        vm.model(torch.randn(4, 3))


def test_dirichlet_process_weights_model_and_guide(float64):
    vm = make(weights="dirichlet_process", assignment="enumerate", concentration=0.7)
    x = torch.randn(10, 2)
    pyro.set_rng_seed(5)
    w = pyro.poutine.trace(vm.guide).get_trace(x).nodes["weights"]["value"]
    assert w.shape == (3,) and torch.allclose(w.sum(), torch.tensor(1.0, dtype=w.dtype))
    pyro.set_rng_seed(5)  # the loss's guide run draws the same weights
    loss = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(vm.model, vm.guide, x)
    prior = pyro_mixflows.StickBreaking(torch.tensor(0.7), 3).log_prob(w)
    posterior = vm._stick_posterior().log_prob(w)
    likelihood = FlowMixture(vm.components, probs=w).log_prob(x).sum()
    assert torch.allclose(loss, -(prior - posterior + likelihood), rtol=1e-8)
    assert torch.allclose(vm.weight_logits_estimate().exp().sum(), torch.tensor(1.0))
    with pytest.raises(ValueError, match="truncation K >= 2"):
        VMoNF(FlowComponents(1, 2, flow="affine_coupling"), weights="dirichlet_process")
