"""DP flow mixture: the enumerated ELBO against hand computations, minibatch scaling, read-outs."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, TraceEnum_ELBO, infer_discrete

from pyro_mixflows import FlowComponents
from pyro_mixflows.models import (
    DPFlowMixtureModel,
    DPStickGuide,
    active_components,
    density_connected_groups,
    effective_components,
    responsibilities,
)

from ..conftest import perturb

T, D, N = 3, 2, 5


def make_components():
    comps = FlowComponents(T, D, flow="affine_coupling", num_layers=2, hidden_dims=(8,))
    comps.set_affine(torch.tensor([[-2.0, 0.0], [0.0, 1.0], [2.0, 0.0]]), torch.full((T, D), 0.8))
    return perturb(comps, 0.1)


def data():
    return torch.tensor([[-2.1, 0.2], [0.1, 0.9], [1.8, -0.3], [0.5, 0.5], [-1.0, 0.4]])


def stick_log_density_by_hand(w, stick_log_prob):
    """log q(w) = sum_t log q(v_t) - sum_t log(1 - sum_{j<t} w_j), v_t = w_t / (1 - sum_{j<t} w_j)."""
    total, rest = torch.zeros(()), torch.ones(())
    for t in range(w.shape[-1] - 1):
        v = w[t] / rest
        total = total + stick_log_prob(t, v) - rest.log()
        rest = rest - w[t]
    return total


def local_terms(comps, w, x):
    """log sum_k w_k p_k(x_n) for each row, (N,)."""
    return (w.log() + comps.component_log_probs(x)).logsumexp(-1)


def elbo():
    return TraceEnum_ELBO(max_plate_nesting=1)


@pytest.mark.parametrize("finite", [False, True])
def test_loss_with_a_point_mass_guide_is_hand_computed(finite, float64):
    comps, x = make_components(), data()
    alpha = 0.7
    model = DPFlowMixtureModel(comps, concentration=alpha, finite=finite)
    w0 = torch.tensor([0.5, 0.3, 0.2])

    def guide(data, subsample=None):
        pyro.sample("w", dist.Delta(w0, event_dim=1))

    def beta(t, v):  # DP sticks Beta(1, alpha); finite sticks Beta(alpha, (T - 1 - t) alpha)
        if finite:
            return dist.Beta(alpha, (T - 1 - t) * alpha).log_prob(v)
        return dist.Beta(1.0, alpha).log_prob(v)

    expected = -(stick_log_density_by_hand(w0, beta) + local_terms(comps, w0, x).sum())
    assert torch.allclose(torch.tensor(elbo().loss(model, guide, x)), expected, rtol=1e-10)
    if finite:  # the finite stick prior is the symmetric Dirichlet
        dirichlet = dist.Dirichlet(torch.full((T,), alpha)).log_prob(w0)
        assert torch.allclose(stick_log_density_by_hand(w0, beta), dirichlet, rtol=1e-10)


@pytest.mark.parametrize("sticks", ["beta", "kumaraswamy"])
def test_loss_with_the_stick_guide_is_hand_computed_at_the_sampled_weights(sticks, float64):
    comps, x = make_components(), data()
    alpha = 1.3
    model = DPFlowMixtureModel(comps, concentration=alpha)
    guide = model.guide(sticks=sticks, init_precision=4.0)
    with torch.no_grad():  # move the sticks off their initial values
        guide.stick_a = torch.tensor([1.5, 0.8])
        guide.stick_b = torch.tensor([2.0, 1.1])
    pyro.set_rng_seed(3)
    w = poutine.trace(guide).get_trace(x).nodes["w"]["value"]
    pyro.set_rng_seed(3)  # the ELBO runs the guide first, so it draws the same w
    loss = elbo().loss(model, guide, x)

    a, b = torch.tensor([1.5, 0.8]), torch.tensor([2.0, 1.1])

    def q(t, v):
        if sticks == "beta":
            return dist.Beta(a[t], b[t]).log_prob(v)
        return a[t].log() + b[t].log() + (a[t] - 1) * v.log() + (b[t] - 1) * (1 - v ** a[t]).log()

    log_p = stick_log_density_by_hand(w, lambda t, v: dist.Beta(1.0, alpha).log_prob(v))
    log_q = stick_log_density_by_hand(w, q)
    expected = -(log_p - log_q + local_terms(comps, w, x).sum())
    assert torch.allclose(torch.tensor(loss), expected, rtol=1e-10)


@pytest.mark.parametrize("concentration", ["lognormal", "delta"])
def test_subsampled_loss_scales_only_the_local_terms(concentration, float64):
    comps, x = make_components(), data()
    model = DPFlowMixtureModel(comps, concentration_prior=(2.0, 3.0))
    guide = model.guide(concentration=concentration, init_concentration=0.6)
    idx = torch.tensor([1, 3])
    pyro.set_rng_seed(5)
    tr = poutine.trace(guide).get_trace(x, subsample=idx)
    alpha, w = tr.nodes["alpha"]["value"], tr.nodes["w"]["value"]
    pyro.set_rng_seed(5)
    loss = elbo().loss(model, guide, x, subsample=idx)

    a, b = guide.stick_a.detach(), guide.stick_b.detach()
    log_p = dist.Gamma(2.0, 3.0).log_prob(alpha) + stick_log_density_by_hand(
        w, lambda t, v: dist.Beta(1.0, alpha).log_prob(v)
    )
    log_q = stick_log_density_by_hand(w, lambda t, v: dist.Beta(a[t], b[t]).log_prob(v))
    if concentration == "lognormal":
        log_q = log_q + dist.LogNormal(torch.tensor(0.6).log(), 0.1).log_prob(alpha)
    else:
        assert torch.allclose(alpha, torch.tensor(0.6))  # a point mass contributes log q = 0
    local = local_terms(comps, w, x[idx]).sum() * N / len(idx)  # N / B = 5 / 2
    assert torch.allclose(torch.tensor(loss), -(log_p - log_q + local), rtol=1e-10)
    # and the full-data loss at the same draws counts every row once
    pyro.set_rng_seed(5)
    full = elbo().loss(model, guide, x)
    local_full = local_terms(comps, w, x).sum()
    assert torch.allclose(torch.tensor(full), -(log_p - log_q + local_full), rtol=1e-10)


def test_gradients_reach_flows_sticks_and_concentration():
    comps, x = make_components(), data()
    model = DPFlowMixtureModel(comps, concentration_prior=(1.0, 1.0))
    guide = model.guide()
    with poutine.trace(param_only=True) as tr:
        elbo().loss_and_grads(model, guide, x, subsample=torch.tensor([0, 2, 4]))
    params = {name: site["value"].unconstrained() for name, site in tr.trace.nodes.items()}
    assert "dp_guide.stick_a" in params and "dp_guide.alpha_loc" in params
    assert any(name.startswith("components$$$") for name in params)
    for name, p in params.items():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_a_few_svi_steps_lower_the_loss():
    comps, x = make_components(), data().repeat(8, 1)
    model = DPFlowMixtureModel(comps, concentration=0.5)
    guide = model.guide()
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 5e-2}), elbo())
    pyro.set_rng_seed(0)
    before = sum(elbo().loss(model, guide, x) for _ in range(5)) / 5
    for _ in range(20):
        svi.step(x, subsample=torch.randperm(len(x))[:16])
    after = sum(elbo().loss(model, guide, x) for _ in range(5)) / 5
    assert after < before - 0.05 * abs(before)


def test_map_labels_by_infer_discrete_are_the_argmax_of_the_joint(float64):
    comps, x = make_components(), data()
    model = DPFlowMixtureModel(comps, concentration=1.0)
    w0 = torch.tensor([0.2, 0.5, 0.3])
    conditioned = poutine.condition(model, data={"w": w0})
    z = infer_discrete(conditioned, first_available_dim=-2, temperature=0)(x)
    expected = (w0.log() + comps.component_log_probs(x)).argmax(-1)
    assert torch.equal(z, expected)


def test_guide_mean_weights_are_exact_and_start_uniform(float64):
    guide = DPStickGuide(4, init_precision=7.0)
    assert torch.allclose(guide.mean_weights(), torch.full((4,), 0.25), rtol=1e-12)
    a, b = guide.stick_a.detach(), guide.stick_b.detach()
    assert torch.allclose(a + b, torch.full((3,), 7.0))
    draws = guide.weights_distribution().sample((50_000,))
    se = draws.std(0) / 50_000**0.5
    assert ((draws.mean(0) - guide.mean_weights()).abs() < 5 * se).all()  # 5 Monte Carlo SE


def test_effective_components_counts_weights_above_the_threshold():
    w = torch.tensor([[0.5, 0.3, 0.15, 0.045, 0.005], [0.96, 0.01, 0.01, 0.01, 0.01]])
    assert effective_components(w).tolist() == [4, 5]
    assert effective_components(w, threshold=0.05).tolist() == [3, 1]
    assert active_components(torch.tensor([0.2] * 5), threshold=0.5).tolist() == [True] * 5


def test_responsibilities_never_use_a_pruned_component(float64):
    comps, x = make_components(), data()
    w = torch.tensor([0.6, 0.395, 0.005])
    r = responsibilities(comps, w, x)
    assert (r[:, 2] == 0).all()
    assert torch.allclose(r.sum(-1), torch.ones(N))
    kept = torch.tensor([0.6, 0.395]) / 0.995
    expected = (kept.log() + comps.component_log_probs(x)[:, :2]).softmax(-1)
    assert torch.allclose(r[:, :2], expected, rtol=1e-12)
    # with threshold 0 nothing is pruned and it is the plain posterior
    plain = (w.log() + comps.component_log_probs(x)).softmax(-1)
    assert torch.allclose(responsibilities(comps, w, x, threshold=0.0), plain, rtol=1e-12)


def test_errors_name_the_problem():
    comps = make_components()
    model = DPFlowMixtureModel(comps)
    with pytest.raises(ValueError, match="site 'x'"):
        elbo().loss(model, model.guide(), torch.randn(4, 3))
    with pytest.raises(ValueError, match="site 'x'"):
        elbo().loss(model, model.guide(), torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(ValueError, match="expected a concentration > 0"):
        DPFlowMixtureModel(comps, concentration=0.0)
    with pytest.raises(ValueError, match="expected concentration_prior"):
        DPFlowMixtureModel(comps, concentration_prior=(1.0, -1.0))
    with pytest.raises(TypeError, match="expected components"):
        DPFlowMixtureModel(object())
    with pytest.raises(ValueError, match="expected truncation to be an int >= 2"):
        DPStickGuide(1)
    with pytest.raises(ValueError, match="expected sticks in"):
        DPStickGuide(4, sticks="gamma")
    with pytest.raises(ValueError, match="expected a threshold"):
        effective_components(torch.ones(3) / 3, threshold=1.5)


def test_guide_starts_at_the_requested_weights(float64):
    w0 = torch.tensor([0.5, 0.25, 0.15, 0.1])
    assert torch.allclose(DPStickGuide(4, init_weights=w0).mean_weights(), w0, rtol=1e-12)
    with pytest.raises(ValueError, match="expected init_weights of shape"):
        DPStickGuide(4, init_weights=torch.tensor([0.5, 0.5, 0.0, 0.0]))


# --- merging over-split components ----------------------------------------------------------
def _pieces():
    """Components 0 and 1 share blob A, 2 sits on blob B, 3 is pruned (weight below 1%)."""
    comps = FlowComponents(4, 2, flow="affine_coupling", num_layers=0)
    loc = torch.tensor([[-4.0, 0.0], [-3.0, 0.0], [4.0, 0.0], [0.0, 0.0]])
    comps.set_affine(loc, torch.ones(4, 2))
    weights = torch.tensor([0.3, 0.3, 0.395, 0.005])
    g = torch.Generator().manual_seed(0)
    x = torch.cat(
        [
            torch.randn(200, 2, generator=g) * torch.tensor([1.0, 0.5]) + torch.tensor([-3.5, 0.0]),
            torch.randn(100, 2, generator=g) + torch.tensor([4.0, 0.0]),
        ]
    )
    return comps, weights, x


def test_density_connected_groups_joins_pieces_of_one_cluster():
    comps, weights, x = _pieces()
    groups = density_connected_groups(comps, weights, x)
    # Groups are numbered by total weight: blob A (0.6) first; the pruned component gets -1.
    assert groups.tolist() == [0, 0, 1, -1]
    # With every pair of points a neighbour, edges cross the gap between the blobs too; the
    # density there is far below the blobs' own, so only an absurdly permissive ratio joins them.
    dense = dict(n_neighbors=len(x) - 1)
    assert density_connected_groups(comps, weights, x, **dense).tolist() == [0, 0, 1, -1]
    assert density_connected_groups(comps, weights, x, ratio=1e-30, **dense).tolist() == [
        0,
        0,
        0,
        -1,
    ]
    # Subsampling keeps the answer on data this clear.
    g = torch.Generator().manual_seed(1)
    groups = density_connected_groups(comps, weights, x, max_points=120, generator=g)
    assert groups.tolist() == [0, 0, 1, -1]


def test_density_connected_groups_errors():
    comps, weights, x = _pieces()
    with pytest.raises(ValueError, match="ratio"):
        density_connected_groups(comps, weights, x, ratio=0.0)
    with pytest.raises(ValueError, match="weights of shape"):
        density_connected_groups(comps, weights[:3], x)
    with pytest.raises(ValueError, match="N >= 2"):
        density_connected_groups(comps, weights, x[:1])
    with pytest.raises(ValueError, match="n_neighbors"):
        density_connected_groups(comps, weights, x, n_neighbors=0)
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError):
        density_connected_groups(comps, weights, bad)
