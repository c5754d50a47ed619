"""Candidates trained together: the batched loss is each candidate's own, exactly."""

import math

import pyro
import pytest
import torch
from pyro.infer import TraceEnum_ELBO

from pyro_mixflows import FlowComponents, FlowMixture
from pyro_mixflows.estimators._candidates import CandidateMixtures, component_subset
from pyro_mixflows.estimators._train import _slice_optim_state
from tests.conftest import perturb

C, K, D, N = 3, 2, 2, 12


def _module(labels=None):
    torch.manual_seed(0)
    comps = perturb(
        FlowComponents(C * K, D, flow="affine_coupling", num_layers=2, hidden_dims=(4,))
    )
    logits = torch.randn(C, K)
    labels = torch.full((C, N), -1) if labels is None else labels
    return CandidateMixtures(comps, C, logits, labels)


def test_loss_is_the_enumerated_elbo_and_each_candidates_mixture(float64):
    module = _module()
    x = torch.randn(N, D)
    elbo = TraceEnum_ELBO(max_plate_nesting=2).differentiable_loss(module.model, module.guide, x)
    exact = module.loss(module.model, module.guide, x)
    assert exact.item() == pytest.approx(elbo.item(), rel=1e-10)
    # candidate c is the mixture of its own K components with its own weights
    per_candidate = module(x)  # (N, C)
    for c in range(C):
        comps = component_subset(module.components, module.component_index([c]))
        mixture = FlowMixture(comps, logits=module.logits[c].detach())
        torch.testing.assert_close(per_candidate[:, c], mixture.log_prob(x))
    assert module.candidate_losses.sum().item() == pytest.approx(exact.item(), rel=1e-12)


def test_gradients_of_one_candidate_do_not_depend_on_the_others(float64):
    x = torch.randn(N, D)
    module = _module()
    module.loss(None, None, x).backward()
    together = {n: p.grad.clone() for n, p in module.named_parameters()}
    alone = module.subset([1])
    alone.loss(None, None, x).backward()
    rows = module.component_index([1])
    for name, p in alone.components.named_parameters():
        torch.testing.assert_close(p.grad, together[f"components.{name}"][rows])
    torch.testing.assert_close(alone.logits.grad[0], together["logits"][1])


def test_observed_labels_and_minibatch_scaling(float64):
    labels = torch.full((C, N), -1)
    labels[1, :4] = torch.tensor([0, 1, 1, 0])
    module = _module(labels)
    x = torch.randn(N, D)
    idx = torch.tensor([0, 2, 5, 7])
    joint = module.joint(x[idx])  # (B, C, K)
    expected = joint.logsumexp(-1)
    expected[0, 1], expected[1, 1] = joint[0, 1, 0], joint[1, 1, 1]  # rows 0 and 2 observed
    value = module.loss(None, None, x, subsample=idx)
    assert value.item() == pytest.approx(-(N / 4) * expected.sum().item(), rel=1e-12)


def test_subset_and_candidate_state_round_trip(float64):
    module = _module()
    x = torch.randn(N, D)
    kept = module.subset([2, 0])
    torch.testing.assert_close(kept(x), module(x)[:, [2, 0]])
    state = module.candidate_state(0)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(1.0)
    module.load_candidate_state(0, state)
    torch.testing.assert_close(module(x)[:, 0], kept(x)[:, 1])


def test_adam_state_follows_the_kept_candidates(float64):
    module = _module()
    x = torch.randn(N, D)
    optim = pyro.optim.Adam({"lr": 0.01})
    from pyro_mixflows.infer import fit

    fit(module.model, module.guide, x, loss=module.loss, optim=optim, num_steps=3)
    sliced = _slice_optim_state(optim.get_state(), module, [1])
    full = optim.get_state()
    name = next(n for n in full if n.endswith("logits"))
    torch.testing.assert_close(
        sliced[name]["state"][0]["exp_avg"], full[name]["state"][0]["exp_avg"][[1]]
    )
    comp = next(n for n in full if not n.endswith("logits"))
    rows = module.component_index([1])
    torch.testing.assert_close(
        sliced[comp]["state"][0]["exp_avg_sq"], full[comp]["state"][0]["exp_avg_sq"][rows]
    )


def test_structure_errors():
    comps = FlowComponents(5, D, num_layers=0)
    with pytest.raises(ValueError, match="expected C K components for C = 2"):
        CandidateMixtures(comps, 2, torch.zeros(2, 2), torch.full((2, N), -1))
    comps = FlowComponents(4, D, num_layers=0)
    with pytest.raises(ValueError, match=r"expected logits of shape \(2, 2\)"):
        CandidateMixtures(comps, 2, torch.zeros(2, 3), torch.full((2, N), -1))


class _Poisoned(CandidateMixtures):
    """Candidate 1's training loss turns NaN at the ``at``-th call (its parameters stay finite)."""

    at = 3

    def loss(self, model, guide, x, *, subsample=None):
        value = super().loss(model, guide, x, subsample=subsample)
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls >= self.at and self.num_candidates == C:
            self.candidate_losses[1] = float("nan")
            return value + float("nan")
        return value

    def subset(self, keep):
        plain = super().subset(keep)
        plain.__class__ = CandidateMixtures
        return plain


def test_a_candidate_whose_loss_is_not_finite_stops_and_the_race_goes_on():
    from pyro_mixflows.estimators._train import plan_budget, race

    torch.manual_seed(0)
    comps = FlowComponents(C * K, D, flow="affine_coupling", num_layers=2, hidden_dims=(4,))
    module = _Poisoned(comps, C, torch.zeros(C, K), torch.full((C, N), -1))
    x, x_val = torch.randn(N, D), torch.randn(6, D)
    budget = plan_budget(N, max_steps=60)
    entries = race(module, x, x_val, budget, [], [0] * C, torch.full((C, N), -1))
    assert entries[1].stop == "non-finite" and 1 <= entries[1].steps < _Poisoned.at
    assert entries[1].best_state is not None and math.isfinite(entries[1].best_mean)
    assert all(torch.isfinite(v).all() for v in entries[1].best_state.values())
    for e in (entries[0], entries[2]):  # trained on past the failed step
        assert e.stop != "non-finite" and e.steps > _Poisoned.at
