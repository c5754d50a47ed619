"""VMoNF.exact_loss: the closed-form ELBO equals Pyro's on the same parameters and batch.

Values and gradients against ``TraceEnum_ELBO`` (``Trace_ELBO`` for ``model_labelled``) in
float64, full batch and subsampled, with and without labelled rows, both assignments and both
weight kinds it covers; the same parameters reach ``fit``; a fit with it follows the ELBO's fit.
"""

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceEnum_ELBO

from pyro_mixflows import FlowComponents, VMoNF
from pyro_mixflows.infer import fit

from ..conftest import perturb

N, D, K = 20, 2, 3
SUBSAMPLE = torch.tensor([1, 4, 7, 9, 12, 15])
CASES = [
    dict(assignment="enumerate"),
    dict(assignment="enumerate", weights="uniform"),
    dict(assignment="amortized"),
    dict(assignment="amortized", supervised_scale=0.5, temperature_schedule=None),
]


def make(flow="spline_coupling", **kwargs):
    comps = FlowComponents(K, D, flow=flow, num_layers=2, hidden_dims=(8,), affine="full")
    vm = VMoNF(comps, hidden_dims=(8,), **kwargs)
    return perturb(vm, 0.1)  # every parameter off its initial value: a non-trivial check


def loss_and_grads(vm, loss_fn):
    """The loss, its gradients by parameter name, and the param-store names it reached."""
    pyro.clear_param_store()
    vm.zero_grad()
    with poutine.trace(param_only=True) as tr:
        loss = loss_fn()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in vm.named_parameters() if p.grad is not None}
    return loss.detach(), grads, set(tr.trace.nodes)


def assert_same(vm, reference, exact):
    step = vm.step.clone()
    ref_loss, ref_grads, ref_params = loss_and_grads(vm, reference)
    after_reference = vm.step.clone()
    vm.step.copy_(step)
    loss, grads, params = loss_and_grads(vm, exact)
    assert torch.equal(vm.step, after_reference)  # the temperature's step advanced alike
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-10)
    assert grads.keys() == ref_grads.keys() and len(grads) > 0
    for name, g in grads.items():
        torch.testing.assert_close(g, ref_grads[name], rtol=1e-10, atol=1e-12, msg=name)
    assert params == ref_params  # fit trains the parameters the trace reaches: the same ones


@pytest.mark.parametrize("kwargs", CASES, ids=lambda kw: "-".join(map(str, kw.values())))
@pytest.mark.parametrize("labelled", [False, True], ids=["unlabelled", "labelled"])
@pytest.mark.parametrize("subsample", [None, SUBSAMPLE], ids=["full", "subsample"])
def test_exact_loss_equals_trace_enum_elbo(float64, kwargs, labelled, subsample):
    vm = make(**kwargs)
    generator = torch.Generator().manual_seed(0)
    x = 2 * torch.randn(N, D, generator=generator)
    args = (x,)
    if labelled:
        args = (x, torch.randn(5, D, generator=generator), torch.tensor([0, 2, 1, 2, 0]))
    kw = {} if subsample is None else {"subsample": subsample}
    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    assert_same(
        vm,
        lambda: elbo.differentiable_loss(vm.model, vm.guide, *args, **kw),
        lambda: vm.exact_loss(vm.model, vm.guide, *args, **kw),
    )


@pytest.mark.parametrize("kwargs", CASES, ids=lambda kw: "-".join(map(str, kw.values())))
@pytest.mark.parametrize("subsample", [None, SUBSAMPLE], ids=["full", "subsample"])
def test_exact_loss_of_model_labelled_equals_trace_elbo(float64, kwargs, subsample):
    vm = make(**kwargs)
    generator = torch.Generator().manual_seed(1)
    x, y = torch.randn(N, D, generator=generator), torch.randint(0, K, (N,), generator=generator)
    kw = {} if subsample is None else {"subsample": subsample}
    assert_same(
        vm,
        lambda: Trace_ELBO().differentiable_loss(vm.model_labelled, vm.guide_labelled, x, y, **kw),
        lambda: vm.exact_loss(vm.model_labelled, vm.guide_labelled, x, y, **kw),
    )


def test_fit_with_the_exact_loss_follows_the_elbo_fit(float64):
    x = torch.randn(64, D, generator=torch.Generator().manual_seed(2))
    results = []
    for loss in ("elbo", "exact"):
        vm = make(flow="affine_coupling", assignment="enumerate")
        start = {name: p.detach().clone() for name, p in vm.named_parameters()}
        pyro.clear_param_store()
        results.append(
            fit(
                vm.model,
                vm.guide,
                x,
                loss=TraceEnum_ELBO(max_plate_nesting=1) if loss == "elbo" else vm.exact_loss,
                optim={"lr": 0.01},
                num_steps=8,
                batch_size=16,
                seed=0,
                val_args=(x[:10],),
                eval_every=4,
            )  # fmt: skip
        )
    elbo, exact = results
    torch.testing.assert_close(
        torch.tensor(exact.losses), torch.tensor(elbo.losses), rtol=1e-9, atol=0
    )
    torch.testing.assert_close(
        torch.tensor(exact.val_losses), torch.tensor(elbo.val_losses), rtol=1e-9, atol=0
    )
    # it trained every parameter (both fits did the same steps, so the ELBO's fit did too)
    for name, p in vm.named_parameters():
        assert not torch.equal(p, start[name]), name


@pytest.mark.parametrize("weights", ["dirichlet", "dirichlet_process"])
def test_exact_loss_refuses_weights_without_a_closed_form(weights):
    vm = make(weights=weights, assignment="enumerate")
    assert not vm.exact_loss_applies()
    with pytest.raises(ValueError, match="expected weights 'learned' or 'uniform'"):
        vm.exact_loss(vm.model, vm.guide, torch.randn(4, D))


def test_exact_loss_refuses_another_model():
    vm, other = make(), make()
    with pytest.raises(ValueError, match="expected this module's model or model_labelled"):
        vm.exact_loss(other.model, other.guide, torch.randn(4, D))
    with pytest.raises(ValueError, match="expected this module's model or model_labelled"):
        vm.exact_loss(vm.guide, vm.guide, torch.randn(4, D))
