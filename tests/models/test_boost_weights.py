"""The pure pieces of boosting: weight mathematics (``_boost_weights``) and one stage's training
through ``infer.fit`` (``_boost_stages``)."""

import math

import pyro
import pytest
import torch

from pyro_mixflows import FlowComponents
from pyro_mixflows.models._boost_stages import (
    best_gaussian_to_add,
    fit_stage,
    mixture_model,
    weighted_model,
)
from pyro_mixflows.models._boost_weights import (
    boosting_weights,
    check_clip,
    fit_mixture_weights,
    golden_section_max,
    rho_objective,
    search_rho,
)


# --- weights -----------------------------------------------------------------------------------
def test_golden_section_finds_the_global_peak_of_a_two_peaked_function():
    # Peaks at 0.2 (height 1) and 0.8 (height 2): the grid brackets the higher one.
    def fn(r):
        return math.exp(-(((r - 0.2) / 0.05) ** 2)) + 2 * math.exp(-(((r - 0.8) / 0.05) ** 2))

    assert abs(golden_section_max(fn) - 0.8) < 1e-6
    assert golden_section_max(lambda r: r) == pytest.approx(1.0, abs=1e-8)  # an endpoint
    with pytest.raises(ValueError, match="grid to be an int >= 3"):
        golden_section_max(fn, grid=2)
    with pytest.raises(ValueError, match="tol > 0"):
        golden_section_max(fn, tol=0.0)


def test_fit_mixture_weights_meets_the_kkt_conditions(float64):
    g = torch.Generator().manual_seed(0)
    log_probs = torch.randn(300, 4, generator=g, dtype=torch.float64) * 2.0
    log_probs[:, 3] -= 20.0  # a component no point wants: its weight goes to zero
    w = fit_mixture_weights(log_probs, tol=1e-10).exp()
    s = (log_probs - (w.log() + log_probs).logsumexp(-1, keepdim=True)).exp().mean(0)  # s_k(w)
    assert float(s.max()) <= 1 + 1e-8
    active = w > 1e-6
    torch.testing.assert_close(s[active], torch.ones_like(s[active]), rtol=0, atol=1e-8)
    assert float(w[3]) < 1e-6 and abs(float(w.sum()) - 1) < 1e-12


def test_boosting_weights_are_shift_invariant_and_favour_zero_density(float64):
    log_prev = torch.tensor([0.0, -1.0, -3.0, -math.inf], dtype=torch.float64)
    w = boosting_weights(log_prev, clip=(0.0, math.inf))
    assert int(w.argmax()) == 3 and abs(float(w.mean()) - 1) < 1e-12
    # A zero-density point takes (almost) all the weight; normalized to mean one it is N.
    assert float(w[3]) == pytest.approx(4.0)
    finite = log_prev[:3]
    torch.testing.assert_close(boosting_weights(finite + 50.0), boosting_weights(finite))


def test_search_rho_agrees_in_float32_and_float64():
    g = torch.Generator().manual_seed(1)
    log_prev = torch.randn(400, generator=g, dtype=torch.float64)
    log_new = log_prev + torch.randn(400, generator=g, dtype=torch.float64) + 0.3
    rho64 = search_rho(log_prev, log_new)
    rho32 = search_rho(log_prev.float(), log_new.float())
    assert 0 < rho64 < 1 and abs(rho32 - rho64) < 1e-5  # float32 rounding of the inputs
    # The derivative vanishes at the interior maximizer: f(rho) beats its neighbours.
    f = [float(rho_objective(r, log_prev, log_new)) for r in (rho64 - 1e-3, rho64, rho64 + 1e-3)]
    assert f[1] >= max(f[0], f[2])


@pytest.mark.parametrize("clip", [(0.5, 0.9), (-0.1, 2.0), (1.0,), "ab"])
def test_check_clip_refuses_bad_bounds(clip):
    with pytest.raises(ValueError, match="clip"):
        check_clip(clip)


# --- one stage through infer.fit -----------------------------------------------------------------
def _stage(seed=0):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return FlowComponents(1, 2, flow="affine_coupling", num_layers=1, hidden_dims=(8,))


def _run(model, args, val_args, **kw):
    options = dict(num_steps=20, lr=1e-2, batch_size=16, eval_every=5, patience=None, seed=0)
    return fit_stage(model, args, val_args, **{**options, **kw})


def test_fit_stage_trains_in_a_private_param_store(float64):
    pyro.param("user_param", torch.ones(2))
    comp, x = _stage(), torch.randn(64, 2)
    before = [p.detach().clone() for p in comp.parameters()]
    result, learned = _run(weighted_model(comp, False, 16), (x, torch.ones(64), False),
                           (x, torch.ones(64), False))  # fmt: skip
    assert list(pyro.get_param_store().keys()) == ["user_param"]  # the user's store is untouched
    assert learned == {}  # a module trained in place; no pyro.param of its own
    assert any(not torch.equal(p, b) for p, b in zip(comp.parameters(), before, strict=True))
    # The state kept is the best held-out one, evaluated before the first step too.
    assert result.val_steps[0] == 0 and result.best_loss == min(result.val_losses)
    with torch.no_grad():
        held_out = -float(comp.component_log_probs(x)[:, 0].mean())
    assert held_out == pytest.approx(result.best_loss, rel=1e-12)


def test_weighted_objective_is_the_formula(float64):
    comp, x = _stage(), torch.randn(10, 2)
    w = torch.linspace(0.1, 2.0, 10)
    with torch.no_grad():
        terms = weighted_model(comp, False, 4)(x, w, False, subsample=torch.tensor([1, 3]))
        expected = w[[1, 3]] * comp.component_log_probs(x[[1, 3]])[:, 0]
    torch.testing.assert_close(terms, expected)


def test_mixture_stage_learns_its_share_and_stops_on_non_finite_loss(float64):
    comp, x = _stage(), torch.randn(64, 2)
    log_prev = torch.distributions.Normal(3.0, 1.0).log_prob(x).sum(-1)  # G misses the data
    result, learned = _run(mixture_model(comp, 0.0, True), (x, log_prev), (x, log_prev),
                           num_steps=30)  # fmt: skip
    assert float(torch.sigmoid(learned["rho_logit"])) > 0.5  # g explains most of the data
    # A NaN in the objective after a few steps: training stops at the last good state.
    calls = []

    def broken(x, subsample=None):
        pyro.module("component", comp)
        calls.append(1)
        out = comp.component_log_probs(x if subsample is None else x[subsample])[:, 0]
        return out * math.nan if len(calls) > 4 else out

    result, _ = _run(broken, (x,), None)
    assert result.stop_reason == "non-finite loss" and result.num_steps == 3


def test_best_gaussian_to_add_without_candidates_uses_the_moments(float64):
    x = torch.randn(50, 2) * torch.tensor([1.0, 3.0]) + 2.0
    loc, scale, rho = best_gaussian_to_add(x, torch.zeros(50), [], 0.25)
    torch.testing.assert_close(loc, x.mean(0))
    torch.testing.assert_close(scale, x.std(0))
    assert rho == 0.25
