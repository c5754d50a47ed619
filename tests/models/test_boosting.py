import math

import pyro
import pytest
import torch

from pyro_mixflows import FlowComponents, FlowMixture
from pyro_mixflows.flows import ConcatComponents
from pyro_mixflows.models import BoostedFlowMixture
from pyro_mixflows.models._boost_stages import fit_stage
from pyro_mixflows.models._boost_weights import golden_section_max
from pyro_mixflows.models.boosting import (
    boosting_weights,
    fit_mixture_weights,
    rho_objective,
    search_rho,
)
from tests.conftest import perturb

SMALL = dict(num_layers=1, hidden_dims=(8,), num_steps=6, batch_size=64, eval_every=3, seed=0)


def _data(n=120, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randint(2, (n,), generator=g)
    centers = torch.tensor([[-2.0, 0.0], [2.0, 1.0]], dtype=torch.get_default_dtype())
    return centers[z] + 0.5 * torch.randn(n, 2, generator=g, dtype=centers.dtype)


# --- the rho search --------------------------------------------------------------------------
@pytest.mark.parametrize("shift", [-1.0, 0.0, 0.5, 1.5])
def test_search_rho_is_the_grid_maximizer(float64, shift):
    g = torch.Generator().manual_seed(3)
    log_prev = torch.randn(500, generator=g, dtype=torch.float64) - 2
    log_new = log_prev + 2.0 * torch.randn(500, generator=g, dtype=torch.float64) + shift
    rho = search_rho(log_prev, log_new)
    # A coarse grid (step 1e-3), then a fine one (step 1e-6) around its best point.
    coarse = torch.linspace(0, 1, 1001, dtype=torch.float64)
    center = float(coarse[int(rho_objective(coarse, log_prev, log_new).argmax())])
    fine = torch.linspace(max(center - 1e-3, 0), min(center + 1e-3, 1), 2001, dtype=torch.float64)
    values = rho_objective(fine, log_prev, log_new)
    best = float(fine[int(values.argmax())])
    assert 0.0 < best < 1.0  # an interior maximizer: the case where the search matters
    assert abs(rho - best) <= 1.5e-6
    # At least as good as every grid point (up to float64 rounding of the mean).
    assert float(rho_objective(rho, log_prev, log_new)) >= float(values.max()) - 1e-12


def test_search_rho_endpoints(float64):
    log_prev = torch.randn(50, dtype=torch.float64)
    assert search_rho(log_prev, log_prev - 1.0) == 0.0  # the new flow is worse everywhere
    assert search_rho(log_prev, log_prev + 1.0) == 1.0  # better everywhere
    # Densities far below float range are handled in log space.
    assert search_rho(log_prev - 5000.0, log_prev) == 1.0


@pytest.mark.parametrize("peak", [0.0, 0.123456, 0.7, 1.0])
def test_golden_section_finds_the_maximizer(peak):
    # Used for the variational weight, whose Monte Carlo objective need not be concave.
    assert abs(golden_section_max(lambda r: -(abs(r - peak) ** 1.5)) - peak) < 1e-6


def test_search_rho_errors(float64):
    with pytest.raises(ValueError, match="same shape"):
        search_rho(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="NaN"):
        search_rho(torch.tensor([0.0, math.nan]), torch.zeros(2))
    with pytest.raises(ValueError, match="shape \\(N,\\)"):
        search_rho(torch.zeros(2, 2), torch.zeros(2, 2))


# --- the sample weights ----------------------------------------------------------------------
def test_boosting_weights_follow_the_formula(float64):
    G = torch.tensor([0.5, 0.25, 0.125, 2.0], dtype=torch.float64)
    # 1/G = [2, 4, 8, 0.5], mean 3.625: mean-one weights [0.5517, 1.1034, 2.2069, 0.1379].
    raw = torch.tensor([2.0, 4.0, 8.0, 0.5], dtype=torch.float64) / 3.625
    torch.testing.assert_close(boosting_weights(G.log(), clip=(0.0, math.inf)), raw)
    # Clipped to [0.2, 2]: [0.5517, 1.1034, 2, 0.2], then renormalized to mean one.
    clipped = torch.tensor([2.0 / 3.625, 4.0 / 3.625, 2.0, 0.2], dtype=torch.float64)
    torch.testing.assert_close(boosting_weights(G.log(), clip=(0.2, 2.0)), clipped / clipped.mean())


def test_boosting_weights_errors(float64):
    with pytest.raises(ValueError, match="0 <= a <= 1 <= b"):
        boosting_weights(torch.zeros(3), clip=(2.0, 3.0))
    with pytest.raises(ValueError, match="NaN"):
        boosting_weights(torch.tensor([0.0, math.nan]))


def test_model_uses_the_formula_for_its_weights(float64):
    x = _data()
    model = BoostedFlowMixture(2, **SMALL, weight_clip=(0.25, 4.0)).fit(x, 1, x_val=x[:20])
    log_G = model.mixture.log_prob(x).detach()
    expected = (1 / log_G.exp()) / (1 / log_G.exp()).mean()
    expected = expected.clamp(0.25, 4.0)
    torch.testing.assert_close(boosting_weights(log_G, (0.25, 4.0)), expected / expected.mean())


# --- the estimator ---------------------------------------------------------------------------
@pytest.mark.parametrize("weighting", ["loss", "resample"])
def test_frozen_components_are_bit_identical(float64, weighting):
    x = _data()
    model = BoostedFlowMixture(2, **SMALL, weighting=weighting).fit(x, 2)
    before = {k: v.clone() for k, v in model.stages.state_dict().items()}
    model.add_component(x, num_layers=2, hidden_dims=(4, 4))  # a differently sized flow
    after = model.stages.state_dict()
    assert len(model.stages) == 3
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    # ... while the new component did train (it left its initial state).
    assert model.history[-1]["steps"] == SMALL["num_steps"]


def test_rho_is_the_held_out_maximizer_of_the_fitted_model(float64):
    x, x_val = _data(seed=0), _data(60, seed=1)
    model = BoostedFlowMixture(2, **SMALL).fit(x, 1, x_val=x_val)
    model.add_component(x, x_val=x_val, num_layers=2)
    rho, log_w = model.rhos[-1], model.log_weights.clone()
    score = model.score(x_val)
    lp = model.components.component_log_probs(x_val).detach()  # (M, 2)
    # Moving rho either way lowers the held-out log-likelihood (when rho is interior).
    for r in (rho - 1e-3, rho + 1e-3):
        if 0 <= r <= 1:
            w = torch.tensor([1 - r, r], dtype=torch.float64)
            assert float((w.log() + lp).logsumexp(-1).mean()) <= score + 1e-12
    torch.testing.assert_close(log_w.exp(), torch.tensor([1 - rho, rho], dtype=torch.float64))


def test_fixed_rho_gives_equal_weights(float64):
    model = BoostedFlowMixture(2, **SMALL, rho="fixed").fit(_data(), 3)
    assert model.rhos == [1.0, 0.5, 1.0 / 3.0]
    torch.testing.assert_close(model.weights, torch.full((3,), 1 / 3, dtype=torch.float64))


def test_mixture_is_normalized(float64):
    x = _data()
    model = BoostedFlowMixture(2, **SMALL, flow="affine_coupling").fit(x, 1)
    model.add_component(x, flow="spline_coupling", num_layers=2)
    perturb(model.stages, 0.05)
    model.log_weights = torch.tensor([0.3, 0.7], dtype=torch.float64).log()
    mix = model.mixture
    assert isinstance(mix, FlowMixture) and mix.num_components == 2
    # Quadrature on [-10, 10]^2 with a 300 x 300 midpoint grid; the components start as
    # Gaussians at the data's moments (scale < 2), so the mass outside is below 1e-6.
    n, half = 300, 10.0
    h = 2 * half / n
    t = -half + h * (torch.arange(n, dtype=torch.float64) + 0.5)
    grid = torch.stack(torch.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        Z = float(mix.log_prob(grid).exp().sum() * h * h)
    assert abs(Z - 1) < 1e-3


def test_result_works_as_a_flow_mixture(float64):
    x = _data()
    model = BoostedFlowMixture(2, **SMALL).fit(x, 2)
    mix = model.mixture
    assert model.sample((7,)).shape == (7, 2)
    xs, z = mix.sample_with_components((5,))
    assert xs.shape == (5, 2) and z.shape == (5,)
    r = mix.responsibilities(x[:4])
    torch.testing.assert_close(r.sum(-1), torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(model.log_prob(x[:4]), mix.log_prob(x[:4]))
    torch.testing.assert_close(model(x[:4]), mix.log_prob(x[:4]))  # calling it is log_prob
    assert math.isfinite(model.score(x))


def test_calling_an_unfitted_model_says_so():
    with pytest.raises(RuntimeError, match="expected a fitted model"):
        BoostedFlowMixture(2, **SMALL)(torch.zeros(3, 2))


def test_refit_pass_keeps_weights_normalized(float64):
    x = _data()
    model = BoostedFlowMixture(2, **SMALL).fit(x, 2)
    model.log_weights = torch.tensor([0.6, 0.4], dtype=torch.float64).log()
    model.refit(x)
    assert abs(float(model.weights.sum()) - 1) < 1e-12
    assert sum(1 for h in model.history if h.get("refit")) == 2


def test_variational_mode_runs_and_stays_normalized(float64):
    target = FlowMixture(
        FlowComponents(2, 2, flow="affine_coupling", num_layers=0), logits=torch.zeros(2)
    )
    with torch.no_grad():
        target.components.set_affine(torch.tensor([[-2.0, 0.0], [2.0, 0.0]]), torch.ones(2, 2))
    model = BoostedFlowMixture(
        2, flow="affine_coupling", num_layers=1, hidden_dims=(8,), num_steps=30, lr=2e-2, seed=0
    )
    model.fit_variational(target.log_prob, 2, num_samples=64, rho_samples=256)
    assert len(model.stages) == 2 and 0 <= model.rhos[1] <= 1
    assert abs(float(model.weights.sum()) - 1) < 1e-12
    with pytest.raises(ValueError, match="analytically invertible"):
        BoostedFlowMixture(2, flow="maf").fit_variational(target.log_prob, 1)


def test_bad_input_is_refused_before_work(float64):
    model = BoostedFlowMixture(2, **SMALL)
    with pytest.raises(ValueError, match="event size D=2"):
        model.fit(torch.zeros(10, 3))
    with pytest.raises(ValueError, match="finite"):
        model.fit(torch.tensor([[0.0, math.nan]] * 10))
    with pytest.raises(ValueError, match="num_components"):
        model.fit(_data(), 0)
    with pytest.raises(ValueError, match="config keys"):
        model.add_component(_data(), depth=3)
    with pytest.raises(ValueError, match="weighting"):
        BoostedFlowMixture(2, weighting="boost")
    with pytest.raises(ValueError, match="rho"):
        BoostedFlowMixture(2, rho="gradient")
    with pytest.raises(ValueError, match="lr_schedule"):
        BoostedFlowMixture(2, lr_schedule="linear")
    for share in (0, 1, 1.5, True):
        with pytest.raises(ValueError, match="first_share"):
            BoostedFlowMixture(2, first_share=share)
    with pytest.raises(RuntimeError, match="fitted"):
        _ = model.mixture
    assert len(model.stages) == 0


# --- ConcatComponents ------------------------------------------------------------------------
def _parts():
    a = perturb(FlowComponents(2, 2, flow="affine_coupling", num_layers=2, hidden_dims=(8,)))
    b = perturb(FlowComponents(1, 2, flow="spline_coupling", num_layers=3, hidden_dims=(4, 4)))
    return a, b


def test_concat_components_equal_their_parts(float64):
    a, b = _parts()
    comps = ConcatComponents([a, b])
    assert comps.num_components == 3 and comps.dim == 2 and comps.sizes == [2, 1]
    x = torch.randn(4, 5, 2)
    lp = comps.component_log_probs(x)
    assert lp.shape == (4, 5, 3)
    torch.testing.assert_close(
        lp, torch.cat([a.component_log_probs(x), b.component_log_probs(x)], -1)
    )
    u = torch.randn(6, 3, 2)
    xs, ld = comps.transform(u)
    xa, lda = a.transform(u[:, :2])
    xb, ldb = b.transform(u[:, 2:])
    torch.testing.assert_close(xs, torch.cat([xa, xb], -2))
    torch.testing.assert_close(ld, torch.cat([lda, ldb], -1))
    back, ld_inv = comps.inverse(xs)
    torch.testing.assert_close(back, u)
    torch.testing.assert_close(ld_inv, -ld)
    u1, _ = comps.inverse(x[:, :1])  # (4, 1, 2) broadcasts over all K
    assert u1.shape == (4, 3, 2)
    assert comps.rsample((7,)).shape == (7, 3, 2)
    assert comps.rsample_index(torch.tensor([0, 2, 1])).shape == (3, 2)
    assert comps.base_log_prob(u).shape == (6, 3)
    mix = FlowMixture(comps, logits=torch.zeros(3))
    assert mix.log_prob(x).shape == (4, 5)
    assert len(list(comps.parameters())) == len(list(a.parameters())) + len(list(b.parameters()))


def test_concat_components_errors():
    a, _ = _parts()
    with pytest.raises(ValueError, match="at least one"):
        ConcatComponents([])
    with pytest.raises(ValueError, match="same event size"):
        ConcatComponents([a, FlowComponents(1, 3, flow="maf", num_layers=1)])
    with pytest.raises(TypeError, match="Components"):
        ConcatComponents([a, torch.nn.Linear(2, 2)])
    with pytest.raises(ValueError, match="K=2"):
        ConcatComponents([a]).transform(torch.randn(4, 3, 2))


# --- the exact weight re-fit, the greedy start, the mixture objective, the joint pass ----------
def test_fit_mixture_weights_matches_search_rho_for_two(float64):
    g = torch.Generator().manual_seed(4)
    lp = torch.randn(200, 2, generator=g, dtype=torch.float64) * 3
    rho = search_rho(lp[:, 0], lp[:, 1])
    assert 0 < rho < 1
    torch.testing.assert_close(
        fit_mixture_weights(lp, tol=1e-10).exp(),
        torch.tensor([1 - rho, rho], dtype=torch.float64),
        atol=1e-7,
        rtol=0,
    )


def test_fit_mixture_weights_is_the_simplex_maximizer(float64):
    g = torch.Generator().manual_seed(5)
    lp = torch.randn(200, 3, generator=g, dtype=torch.float64) * 3
    lp[:, 2] -= 3.0  # a poor third component: its optimal weight may sit on the boundary
    log_w = fit_mixture_weights(lp, tol=1e-10)
    w = log_w.exp()
    assert abs(float(w.sum()) - 1) < 1e-12

    def f(weights):  # (..., 3) -> (...)
        return (weights.log().unsqueeze(-2) + lp).logsumexp(-1).mean(-1)

    # KKT: s_k = mean_i g_k / G <= 1, with equality where w_k > 0.
    s = (lp - (log_w + lp).logsumexp(-1, keepdim=True)).exp().mean(0)
    assert float(s.max()) <= 1 + 1e-9
    assert bool(((s - 1).abs()[w > 1e-6] <= 1e-8).all())
    # No point of a simplex grid (step 1/200) does better.
    t = torch.linspace(0, 1, 201, dtype=torch.float64)
    a, b = torch.meshgrid(t, t, indexing="ij")
    grid = torch.stack([a, b, 1 - a - b], -1).reshape(-1, 3)
    grid = grid[grid[:, 2] >= -1e-12].clamp(min=0)
    assert float(f(w)) >= float(f(grid).max()) - 1e-12


def test_fit_mixture_weights_errors(float64):
    with pytest.raises(ValueError, match="shape \\(N, C\\)"):
        fit_mixture_weights(torch.zeros(4))
    with pytest.raises(ValueError, match="NaN"):
        fit_mixture_weights(torch.tensor([[0.0, math.nan]]))
    with pytest.raises(ValueError, match="finite log-density"):
        fit_mixture_weights(torch.tensor([[0.0, 0.0], [-math.inf, -math.inf]]))


def test_greedy_start_lands_on_the_region_the_mixture_misses(float64):
    x = _data(400)  # two clusters, at (-2, 0) and (2, 1)
    model = BoostedFlowMixture(2, **SMALL, init="greedy", num_candidates=4)
    # The mixture so far: a narrow Gaussian on the left cluster only.
    log_prev = (
        torch.distributions.Normal(torch.tensor([-2.0, 0.0], dtype=torch.float64), 0.5)
        .log_prob(x)
        .sum(-1)
    )
    loc, scale, rho = model._greedy_start(x, log_prev, 1)
    right = x[x[:, 0] > 0]
    torch.testing.assert_close(loc, right.mean(0))  # exactly the right cluster's moments
    torch.testing.assert_close(scale, right.std(0) + 1e-3 * x.std(0))
    assert abs(rho - right.shape[0] / x.shape[0]) < 0.05  # about its share of the points


@pytest.mark.parametrize("objective", ["weighted", "mixture"])
def test_new_options_keep_frozen_components_and_weights_exact(float64, objective):
    x, x_val = _data(seed=0), _data(60, seed=1)
    opts = dict(init="greedy", num_candidates=4, objective=objective, refit_weights=True)
    model = BoostedFlowMixture(2, **SMALL, **opts).fit(x, 1, x_val=x_val)
    before = {k: v.clone() for k, v in model.stages.state_dict().items()}
    model.fit(x, 2, x_val=x_val)
    after = model.stages.state_dict()
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    if objective == "mixture":
        assert all(0 < h["rho_trained"] < 1 for h in model.history[1:])
    # The weights are the exact held-out maximizer for the fitted components.
    lp = model.components.component_log_probs(x_val).detach()
    torch.testing.assert_close(model.log_weights, fit_mixture_weights(lp))
    assert abs(float(model.weights.sum()) - 1) < 1e-12


def test_train_rho_fixed_holds_the_training_share_and_searches_the_weight(float64):
    x, x_val = _data(seed=0), _data(60, seed=1)
    opts = dict(init="greedy", num_candidates=4, objective="mixture", train_rho="fixed")
    model = BoostedFlowMixture(2, **SMALL, **opts, refit_weights=False).fit(x, 3, x_val=x_val)
    # The share in the training loss stayed at its initial value 1/c ...
    assert [h["rho_trained"] for h in model.history[1:]] == pytest.approx([1 / 2, 1 / 3], abs=1e-12)
    # ... while the last weight is the exact held-out maximizer given G_2 (the first two flows
    # with their weights before the third came).
    lp = model.components.component_log_probs(x_val).detach()
    log_prev = torch.logsumexp(
        lp[:, :2] + model.log_weights[:2] - torch.log1p(-model.weights[2]), -1
    )
    assert model.rhos[2] == pytest.approx(search_rho(log_prev, lp[:, 2]), abs=1e-9)
    with pytest.raises(ValueError, match="train_rho"):
        BoostedFlowMixture(2, train_rho="grid")


@pytest.mark.parametrize("rho", ["search", "fixed"])
def test_finetune_never_lowers_the_held_out_likelihood(float64, rho):
    x, x_val = _data(seed=0), _data(60, seed=1)
    model = BoostedFlowMixture(2, **SMALL, rho=rho).fit(x, 2, x_val=x_val)
    weights, score = model.weights.clone(), model.score(x_val)
    model.finetune(x, 9, x_val=x_val)
    assert model.history[-1]["finetune"] and model.history[-1]["steps"] == 9
    assert model.score(x_val) >= score - 1e-12  # the best held-out state is kept
    if rho == "fixed":
        torch.testing.assert_close(model.weights, weights)  # fixed weights stay fixed
    with pytest.raises(ValueError, match="num_steps"):
        model.finetune(x, 0)
    with pytest.raises(ValueError, match="finetune_steps"):
        model.fit(x, 1, finetune_steps=-1)


def test_fit_weights_gives_a_fixed_schedule_mixture_exact_weights(float64):
    x, x_val = _data(seed=0), _data(60, seed=1)
    model = BoostedFlowMixture(2, **SMALL, rho="fixed").fit(x, 3, x_val=x_val)
    before = model.score(x_val)
    model.fit_weights(x_val)
    lp = model.components.component_log_probs(x_val).detach()
    torch.testing.assert_close(model.log_weights, fit_mixture_weights(lp))
    assert model.score(x_val) >= before - 1e-12  # equal weights are one point of the simplex
    with pytest.raises(RuntimeError, match="fitted"):
        BoostedFlowMixture(2, **SMALL).fit_weights(x_val)


WARM = dict(init="previous", objective="likelihood", lr_schedule="constant", first_share=None)


def test_likelihood_objective_is_the_plain_likelihood_from_a_warm_start(float64):
    x, x_val = _data(seed=0), _data(60, seed=1)
    model = BoostedFlowMixture(2, **SMALL, **WARM).fit(x, 2, x_val=x_val)
    # The same rounds with the 1/G weights clipped to [1, 1] (all one) are bit-identical.
    opts = {**WARM, "objective": "weighted", "weight_clip": (1.0, 1.0)}
    ones = BoostedFlowMixture(2, **SMALL, **opts)
    ones.fit(x, 2, x_val=x_val)
    for (key, value), other in zip(model.stages.state_dict().items(),
                                   ones.stages.state_dict().values(), strict=True):  # fmt: skip
        assert torch.equal(value, other), key
    # The kept state of round 2 is its best held-out mean log-likelihood.
    with torch.no_grad():
        own = float(model.stages[1].component_log_probs(x_val)[:, 0].mean())
    assert model.history[1]["val_objective"] == pytest.approx(own, rel=1e-12)
    with pytest.raises(ValueError, match="objective"):
        BoostedFlowMixture(2, objective="boosted")


def test_warm_start_continues_the_previous_rounds_optimizer(float64):
    x, x_val = _data(seed=0), _data(60, seed=1)
    model = BoostedFlowMixture(2, **SMALL, **WARM).fit(x, 2, x_val=x_val)
    # Adam's step count runs on from round 1 into its copy in round 2: 2 * num_steps updates.
    steps = {float(s["state"][0]["step"]) for s in model._round_state.values()}
    assert steps == {2.0 * SMALL["num_steps"]}
    # A differently built flow cannot continue it: it starts a fresh optimizer.
    model.add_component(x, x_val=x_val, num_layers=2)
    steps = {float(s["state"][0]["step"]) for s in model._round_state.values()}
    assert steps == {float(SMALL["num_steps"])}


def test_fit_splits_its_step_budget_with_a_longer_first_round(float64):
    x, x_val = _data(seed=0), _data(60, seed=1)
    model = BoostedFlowMixture(2, **SMALL).fit(x, 4, x_val=x_val)  # first_share 0.8 of 4 * 6
    assert [h["steps"] for h in model.history] == [18, 2, 2, 2]
    model.fit(x, 2, x_val=x_val)  # a fitted model: every further round gets num_steps
    assert [h["steps"] for h in model.history[4:]] == [6, 6]
    equal = BoostedFlowMixture(2, **SMALL, first_share=None).fit(x, 3, x_val=x_val)
    assert [h["steps"] for h in equal.history] == [6, 6, 6]
    one = BoostedFlowMixture(2, **SMALL).fit(x, 1, x_val=x_val)  # one flow: all its steps
    assert [h["steps"] for h in one.history] == [6]
    torch.testing.assert_close(model.weights.sum(), torch.tensor(1.0, dtype=torch.float64))


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_stage_learning_rate_schedule(float64, schedule):
    # A constant gradient: each Adam update moves the parameter by the step's learning rate
    # (to Adam's eps), so after T steps it has moved by the sum of the schedule.
    def model(x, subsample=None):
        a = pyro.param("a", torch.tensor(0.0))
        return a * torch.ones(x.shape[0])

    lr, T = 0.1, 8
    _, params = fit_stage(
        model, (torch.zeros(5, 2),), None, num_steps=T, lr=lr, batch_size=5, eval_every=4,
        patience=None, seed=0, schedule=schedule,
    )  # fmt: skip
    if schedule == "cosine":  # lr_t = lr_min + (lr - lr_min) (1 + cos(pi t / T)) / 2
        low = 0.01 * lr
        rates = [low + (lr - low) * (1 + math.cos(math.pi * t / T)) / 2 for t in range(T)]
    else:
        rates = [lr] * T
    assert float(params["a"]) == pytest.approx(sum(rates), rel=1e-6)
    with pytest.raises(ValueError, match="schedule"):
        fit_stage(model, (torch.zeros(5, 2),), None, num_steps=1, lr=lr, batch_size=5,
                  eval_every=1, patience=None, seed=0, schedule="step")  # fmt: skip
