"""FlowMixture and the indexed component: exact density, shapes and Pyro enumeration."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Predictive, TraceEnum_ELBO, config_enumerate, infer_discrete
from pyro.optim import Adam

from pyro_mixflows import FlowComponents, FlowMixture

from ..conftest import perturb

K, D = 3, 2


def make_components(flow="affine_coupling"):
    comps = FlowComponents(K, D, flow=flow, num_layers=2, hidden_dims=(8,))
    comps.set_affine(torch.tensor([[-3.0, 0.0], [0.0, 0.0], [3.0, 1.0]]), torch.full((K, D), 0.7))
    return perturb(comps, 0.1)


def test_mixture_log_prob_is_logsumexp(float64):
    comps = make_components()
    logits = torch.tensor([0.2, -0.4, 1.0])
    mix = FlowMixture(comps, logits=logits)
    x = torch.randn(10, D)
    expected = (comps.component_log_probs(x) + logits.log_softmax(-1)).logsumexp(-1)
    assert torch.allclose(mix.log_prob(x), expected)
    same = FlowMixture(comps, probs=logits.softmax(-1))
    assert torch.allclose(same.log_prob(x), expected)


@pytest.mark.parametrize("flow", ["affine_coupling", "maf", "spline_coupling"])
def test_three_component_mixture_normalizes(flow, float64):
    mix = FlowMixture(make_components(flow), logits=torch.tensor([0.5, 0.0, -0.5]))
    lim, n = 10.0, 500
    g = (torch.arange(n) + 0.5) / n * 2 * lim - lim
    pts = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        mass = mix.log_prob(pts).exp().sum() * (2 * lim / n) ** 2
    assert abs(mass.item() - 1) < 1e-3


@pytest.mark.parametrize("sample_shape", [(), (3,), (2, 3)])
@pytest.mark.parametrize("batch_shape", [(), (4,)])
def test_shapes(sample_shape, batch_shape):
    mix = FlowMixture(make_components(), logits=torch.zeros(*batch_shape, K))
    assert mix.batch_shape == batch_shape and mix.event_shape == (D,)
    x = mix.sample(sample_shape)
    assert x.shape == (*sample_shape, *batch_shape, D)
    assert mix.log_prob(x).shape == (*sample_shape, *batch_shape)
    assert mix.component_log_probs(x).shape == (*sample_shape, *batch_shape, K)
    r = mix.responsibilities(x)
    assert r.shape == (*sample_shape, *batch_shape, K)
    assert torch.allclose(r.sum(-1), torch.ones(()))
    x2, z = mix.sample_with_components(sample_shape)
    assert x2.shape == x.shape and z.shape == (*sample_shape, *batch_shape)
    assert z.dtype == torch.long


def test_expand_and_plate():
    mix = FlowMixture(make_components(), logits=torch.zeros(K))
    big = mix.expand((5,))
    assert big.batch_shape == (5,) and big.logits.shape == (5, K)
    x = torch.randn(5, D)
    assert torch.allclose(big.log_prob(x), mix.log_prob(x))

    def model():
        with pyro.plate("data", 6):
            return pyro.sample("x", mix)

    assert model().shape == (6, D)


def test_samples_come_from_their_component(float64):
    comps = FlowComponents(K, D, flow="affine_coupling", num_layers=1, hidden_dims=(4,))
    comps.set_affine(torch.tensor([[-50.0, 0.0], [0.0, 0.0], [50.0, 0.0]]), torch.ones(K, D))
    mix = FlowMixture(comps, probs=torch.tensor([0.2, 0.3, 0.5]))
    x, z = mix.sample_with_components((4000,))
    nearest = (x[:, :1] - torch.tensor([-50.0, 0.0, 50.0])).abs().argmin(-1)
    assert torch.equal(nearest, z)
    # Frequencies within 4 binomial standard errors (sd <= 0.0079 at n=4000).
    freq = torch.bincount(z, minlength=K) / 4000.0
    assert torch.allclose(freq, torch.tensor([0.2, 0.3, 0.5]), atol=0.032)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(), "exactly one of logits or probs, got neither"),
        (dict(logits=torch.zeros(3), probs=torch.ones(3) / 3), "got both"),
        (dict(logits=torch.zeros(4)), r"K=3 entries in the last dimension.*\(4,\)"),
    ],
)
def test_constructor_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FlowMixture(make_components(), **kwargs)


def test_components_type_error():
    with pytest.raises(TypeError, match="expected components"):
        FlowMixture([dist.Normal(0, 1)], logits=torch.zeros(1))


def test_value_errors():
    mix = FlowMixture(make_components(), logits=torch.zeros(K), validate_args=True)
    with pytest.raises(ValueError, match="event size D=2"):
        mix.log_prob(torch.zeros(4, 3))
    bad = torch.zeros(4, D)
    bad[1, 0] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        mix.log_prob(bad)
    bad[1, 0] = float("inf")
    with pytest.raises(ValueError, match="1 NaN/inf"):
        mix.responsibilities(bad)


def test_indexed_component_broadcasts_with_enumeration(float64):
    comps = make_components()
    x = torch.randn(7, D)
    table = comps.component_log_probs(x)  # (N, K)
    z = torch.arange(K).reshape(K, 1)  # enumerated shape (K, 1)
    lp = comps.component(z).log_prob(x)
    assert lp.shape == (K, 7)
    assert torch.equal(lp, table.T)
    zi = torch.randint(K, (7,))
    assert torch.equal(comps.component(zi).log_prob(x), table.gather(-1, zi[:, None]).squeeze(-1))


def test_indexed_component_errors():
    comps = make_components()
    with pytest.raises(ValueError, match=r"values in \[0, 3\)"):
        comps.component(torch.tensor([0, 3]), validate_args=True)
    with pytest.raises(TypeError, match="integer index"):
        comps.component(torch.tensor([0.0, 1.0]))


def enum_model(comps, x, weights, subsample_size=None):
    pyro.module("components", comps)
    with pyro.plate("data", x.shape[0], subsample_size=subsample_size) as idx:
        z = pyro.sample("z", dist.Categorical(weights))
        pyro.sample("x", comps.component(z), obs=x[idx])


def test_enumeration_identity(float64):
    """TraceEnum_ELBO with an empty guide is exactly -sum log FlowMixture(x)."""
    comps = make_components("spline_coupling")
    weights = torch.tensor([0.5, 0.3, 0.2])
    x = torch.randn(20, D) * 2
    model = config_enumerate(enum_model)
    loss = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(
        model, lambda *a, **k: None, comps, x, weights
    )
    expected = -FlowMixture(comps, probs=weights).log_prob(x).sum()
    assert torch.allclose(loss, expected, rtol=1e-6)


def test_infer_discrete_map_is_argmax_of_responsibilities(float64):
    comps = make_components()
    weights = torch.tensor([0.5, 0.3, 0.2])
    x = torch.randn(30, D) * 3
    model = config_enumerate(enum_model)
    decoded = infer_discrete(model, first_available_dim=-2, temperature=0)
    trace = pyro.poutine.trace(decoded).get_trace(comps, x, weights)
    z = trace.nodes["z"]["value"]
    expected = FlowMixture(comps, probs=weights).responsibilities(x).argmax(-1)
    assert torch.equal(z, expected)


def test_compute_marginals_are_responsibilities(float64):
    comps = make_components()
    weights = torch.tensor([0.5, 0.3, 0.2])
    x = torch.randn(12, D) * 3
    model = config_enumerate(enum_model)
    marginals = TraceEnum_ELBO(max_plate_nesting=1).compute_marginals(
        model, lambda *a, **k: None, comps, x, weights
    )
    resp = FlowMixture(comps, probs=weights).responsibilities(x)
    assert torch.allclose(marginals["z"].probs, resp, atol=1e-10)


def test_guide_side_enumeration_gives_exact_sum(float64):
    """An amortized q(k|x) enumerated in the guide: loss = -sum_k q(k|x)[log w_k p_k(x) - log q(k|x)]."""
    comps = make_components()
    weights = torch.tensor([0.5, 0.3, 0.2])
    x = torch.randn(8, D)
    q_logits = torch.randn(8, K)

    def model():
        with pyro.plate("data", 8):
            z = pyro.sample("z", dist.Categorical(weights))
            pyro.sample("x", comps.component(z), obs=x)

    @config_enumerate
    def guide():
        with pyro.plate("data", 8):
            pyro.sample("z", dist.Categorical(logits=q_logits))

    loss = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(model, guide)
    q = q_logits.log_softmax(-1)
    joint = weights.log() + comps.component_log_probs(x)
    expected = -(q.exp() * (joint - q)).sum()
    assert torch.allclose(loss, expected, rtol=1e-10)


def test_subsampled_plate_scales_the_loss(float64):
    comps = make_components()
    weights = torch.tensor([0.5, 0.3, 0.2])
    x = torch.randn(40, D)
    model = config_enumerate(enum_model)
    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    pyro.set_rng_seed(3)
    tr = pyro.poutine.trace(model).get_trace(comps, x, weights, 10)
    idx = tr.nodes["data"]["value"]
    pyro.set_rng_seed(3)
    loss = elbo.differentiable_loss(model, lambda *a: None, comps, x, weights, 10)
    expected = -4.0 * FlowMixture(comps, probs=weights).log_prob(x[idx]).sum()
    assert torch.allclose(loss, expected, rtol=1e-6)


def test_svi_and_predictive_run():
    comps = make_components()
    weights = torch.tensor([0.5, 0.3, 0.2])
    x = torch.randn(25, D)
    model = config_enumerate(enum_model)
    svi = SVI(model, lambda *a: None, Adam({"lr": 1e-2}), TraceEnum_ELBO(max_plate_nesting=1))
    before = {k: v.detach().clone() for k, v in comps.state_dict().items()}
    losses = [svi.step(comps, x, weights) for _ in range(3)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert any(not torch.equal(before[k], v) for k, v in comps.state_dict().items())
    pred = Predictive(model, num_samples=4, return_sites=["z", "x"])(
        comps, torch.zeros(25, D), weights
    )
    assert pred["z"].shape == (4, 25)


def test_gradient_reaches_every_parameter_through_the_mixture():
    comps = make_components("spline_coupling")
    logits = torch.zeros(K, requires_grad=True)
    FlowMixture(comps, logits=logits).log_prob(torch.randn(32, D) * 2).sum().backward()
    assert logits.grad.abs().sum() > 0
    for name, p in comps.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
