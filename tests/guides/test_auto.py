"""AutoFlowMixture: the stratified ELBO exactly, its reductions, bimodal fits and the autoguide API."""

import math
import warnings
from functools import partial

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.distributions.transforms import affine_autoregressive, iterated
from pyro.infer import SVI, Predictive, Trace_ELBO, TraceEnum_ELBO, config_enumerate
from pyro.infer.autoguide import AutoNormalizingFlow
from pyro.ops.indexing import Vindex

from pyro_mixflows import AutoFlowMixture, FlowMixture
from tests.conftest import perturb


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one thread is faster on a shared CPU."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def loc_scale_model(x, subsample=None):
    loc = pyro.sample("loc", dist.Normal(0.0, 2.0))
    scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
    with pyro.plate("data", len(x), subsample=subsample) as idx:
        pyro.sample("x", dist.Normal(loc, scale), obs=x[idx])


def squared_model(y, prior_loc=0.0, subsample=None):
    """theta ~ N(prior_loc, 3), y_i ~ N(theta^2, 1): modes near +-sqrt(mean y)."""
    theta = pyro.sample("theta", dist.Normal(prior_loc, 3.0))
    with pyro.plate("data", len(y), subsample=subsample) as idx:
        pyro.sample("y", dist.Normal(theta**2, 1.0), obs=y[idx])


def _data(n, loc=2.25, seed=3):
    g = torch.Generator().manual_seed(seed)
    return loc + torch.randn(n, generator=g, dtype=torch.get_default_dtype())


# --- the objective, exactly -----------------------------------------------------------------
def test_stratified_elbo_equals_weighted_sum_over_components(float64):
    x = _data(6, loc=1.0)
    guide = AutoFlowMixture(
        loc_scale_model, num_components=3, flow="affine_coupling", num_layers=2, init_steps=0
    )
    guide(x)
    perturb(guide.components, 0.3)
    with torch.no_grad():
        guide.logits.copy_(torch.tensor([0.3, -0.5, 0.1]))
    elbo = TraceEnum_ELBO(max_plate_nesting=1)

    pyro.set_rng_seed(7)
    loss = elbo.differentiable_loss(loc_scale_model, guide, x)
    grads = torch.autograd.grad(loss, [guide.logits, guide.components.affine.params])

    # By hand: one draw per component, the term of component k weighted by pi_k, and the
    # full mixture density (plus the log-det of exp for the positive site) in the entropy.
    pyro.set_rng_seed(7)
    comps, logits = guide.components, guide.logits
    u = torch.randn(3, 2)  # (K, D)
    z = comps.transform(u.unsqueeze(0))[0][0]  # (K, D)
    loc, log_scale = z[:, 0], z[:, 1]
    scale = log_scale.exp()
    log_p = (
        dist.Normal(0.0, 2.0).log_prob(loc)
        + dist.LogNormal(0.0, 1.0).log_prob(scale)
        + dist.Normal(loc[:, None], scale[:, None]).log_prob(x).sum(-1)
    )  # (K,)
    log_q = FlowMixture(comps, logits=logits).log_prob(z) - log_scale  # constrained density
    expected = -(torch.softmax(logits, -1) * (log_p - log_q)).sum()
    expected_grads = torch.autograd.grad(expected, [logits, comps.affine.params])

    assert torch.allclose(loss, expected, rtol=1e-10)
    for got, want in zip(grads, expected_grads, strict=True):
        assert torch.allclose(got, want, rtol=1e-8, atol=1e-10)


class _OneFlow(dist.TransformModule):
    """Component 0 of a FlowComponents(1, D) as a Pyro transform, for AutoNormalizingFlow."""

    domain = dist.constraints.real_vector
    codomain = dist.constraints.real_vector
    bijective = True

    def __init__(self, comps):
        super().__init__(cache_size=1)
        self.comps = comps

    def _call(self, u):
        return self.comps.transform(u.unsqueeze(-2))[0].squeeze(-2)

    def _inverse(self, x):
        return self.comps.inverse(x.unsqueeze(-2))[0].squeeze(-2)

    def log_abs_det_jacobian(self, u, x):
        return self.comps.transform(u.unsqueeze(-2))[1].squeeze(-1)


def test_one_component_is_a_single_flow_guide(float64):
    x = _data(6, loc=1.0)
    guide = AutoFlowMixture(
        loc_scale_model, num_components=1, flow="affine_coupling", num_layers=3, init_steps=0
    )
    guide(x)
    perturb(guide.components, 0.3)
    single = AutoNormalizingFlow(loc_scale_model, lambda dim: _OneFlow(guide.components))
    single(x)
    for seed in (1, 2, 3):
        pyro.set_rng_seed(seed)
        mixture_loss = TraceEnum_ELBO(max_plate_nesting=1).loss(loc_scale_model, guide, x)
        pyro.set_rng_seed(seed)
        single_loss = Trace_ELBO().loss(loc_scale_model, single, x)
        assert mixture_loss == pytest.approx(single_loss, rel=1e-10)


def _conjugate(n=5):
    """mu ~ N(0, 1), x_i ~ N(mu, 1): exact posterior N(sum x / (n+1), 1/(n+1)) and evidence."""
    x = _data(n, loc=0.7)

    def model(x, subsample=None):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(x), subsample=subsample):
            pyro.sample("x", dist.Normal(mu, 1.0), obs=x)

    cov = torch.eye(n) + torch.ones(n, n)
    log_evidence = dist.MultivariateNormal(torch.zeros(n), cov).log_prob(x)
    post_loc, post_scale = x.sum() / (n + 1), (1.0 / (n + 1)) ** 0.5
    return model, x, log_evidence, post_loc, post_scale


def test_elbo_equals_log_evidence_at_the_exact_posterior(float64):
    model, x, log_evidence, post_loc, post_scale = _conjugate()
    guide = AutoFlowMixture(model, num_components=2, flow="maf", num_layers=1, init_steps=0)
    guide(x)
    guide.components.set_affine(torch.full((2, 1), float(post_loc)), torch.full((2, 1), post_scale))
    with torch.no_grad():
        guide.logits.copy_(torch.tensor([1.0, -1.0]))
    for seed in range(3):
        pyro.set_rng_seed(seed)
        loss = TraceEnum_ELBO(max_plate_nesting=1).loss(model, guide, x)
        assert -loss == pytest.approx(float(log_evidence), rel=1e-10)


def test_elbo_estimate_is_unbiased(float64):
    model, x, log_evidence, post_loc, post_scale = _conjugate()
    guide = AutoFlowMixture(model, num_components=2, flow="maf", num_layers=1, init_steps=0)
    guide(x)
    guide.components.set_affine(torch.tensor([[-0.5], [1.0]]), torch.tensor([[0.3], [0.6]]))
    with torch.no_grad():
        guide.logits.copy_(torch.tensor([0.5, -0.2]))
    # The ELBO by quadrature: q is a mixture of two Gaussians on the line.
    grid = torch.linspace(-8.0, 8.0, 40001)
    q = FlowMixture(guide.components, logits=guide.logits)
    with torch.no_grad():
        log_q = q.log_prob(grid.unsqueeze(-1))
        log_joint = dist.Normal(0.0, 1.0).log_prob(grid) + dist.Normal(
            grid.unsqueeze(-1), 1.0
        ).log_prob(x).sum(-1)
        exact = torch.trapezoid(log_q.exp() * (log_joint - log_q), grid)
    elbo = TraceEnum_ELBO(max_plate_nesting=1, num_particles=500, vectorize_particles=True)
    estimates = torch.tensor([-elbo.loss(model, guide, x) for _ in range(20)])
    standard_error = estimates.std() / math.sqrt(len(estimates))
    assert exact < log_evidence
    # Unbiased: within 4 standard errors of the mean of 20 independent 500-particle estimates.
    assert abs(estimates.mean() - exact) < 4 * standard_error


# --- bimodal posterior ----------------------------------------------------------------------
def _mode_weight(y, prior_loc):
    """Posterior mass of theta > 0 by quadrature."""
    grid = torch.linspace(-6.0, 6.0, 60001)
    log_p = dist.Normal(prior_loc, 3.0).log_prob(grid) + dist.Normal(
        grid.unsqueeze(-1) ** 2, 1.0
    ).log_prob(y).sum(-1)
    p = (log_p - log_p.max()).exp()
    return float(torch.trapezoid(p * (grid > 0), grid) / torch.trapezoid(p, grid))


def _fit(model, guide, elbo, *args, steps, lr, final_lr=None):
    lrd = 1.0 if final_lr is None else (final_lr / lr) ** (1.0 / steps)
    svi = SVI(model, guide, pyro.optim.ClippedAdam({"lr": lr, "lrd": lrd}), elbo)
    for _ in range(steps):
        svi.step(*args)


def _bimodal_check(steps, particles):
    y, prior_loc = _data(10), 1.5  # the prior tilts the mass towards theta > 0
    truth = _mode_weight(y, prior_loc)
    assert 0.55 < truth < 0.75  # the case is asymmetric enough to test the weights

    pyro.set_rng_seed(0)
    guide = AutoFlowMixture(
        squared_model, num_components=2, flow="maf", num_layers=1, hidden_dims=(8,)
    )
    train = dict(max_plate_nesting=1, num_particles=particles, vectorize_particles=True)
    fit = partial(_fit, steps=steps, lr=0.05, final_lr=0.001)
    fit(squared_model, guide, TraceEnum_ELBO(**train), y, prior_loc)
    # The same total number of flow layers (2 = K * num_layers), same seed, steps and draws.
    pyro.set_rng_seed(0)
    baseline = AutoNormalizingFlow(
        squared_model, partial(iterated, 2, affine_autoregressive, hidden_dims=[8])
    )
    fit(squared_model, baseline, Trace_ELBO(**train), y, prior_loc)

    locs = guide.components.affine.loc.detach().reshape(2)
    positive = int(torch.argmax(locs))
    weights = guide.weights
    assert abs(float(weights[positive]) - truth) < 0.1
    theta = guide.sample_posterior(4000)["theta"]
    mode = float(y.mean().sqrt())
    assert abs(float((theta > 0).double().mean()) - truth) < 0.1
    assert abs(float(theta[theta > 0].mean()) - mode) < 0.2
    assert abs(float(theta[theta < 0].mean()) + mode) < 0.2

    many = dict(max_plate_nesting=1, num_particles=2000, vectorize_particles=True)
    ours = -TraceEnum_ELBO(**many).loss(squared_model, guide, y, prior_loc)
    theirs = -Trace_ELBO(**many).loss(squared_model, baseline, y, prior_loc)
    # A unimodal fit loses about -log(mass of its mode) >= 0.3 nats; MC error is ~0.01.
    assert ours > theirs + 0.1


_D1_WARNING = "ignore:ConditionalAutoRegressiveNN input_dim = 1"  # the 1-D IAF baseline


@pytest.mark.filterwarnings(_D1_WARNING)
def test_bimodal_posterior_fast(float64):
    _bimodal_check(steps=40, particles=8)


@pytest.mark.slow
@pytest.mark.filterwarnings(_D1_WARNING)
def test_bimodal_posterior(float64):
    _bimodal_check(steps=300, particles=4)


def test_initialization_spreads_components_over_modes(float64):
    y = _data(10)
    guide = AutoFlowMixture(squared_model, num_components=2, flow="maf", num_layers=1)
    guide(y)
    locs = guide.components.affine.loc.detach().reshape(2)
    mode = float(y.mean().sqrt())
    assert sorted(locs.tolist()) == pytest.approx([-mode, mode], abs=0.2)


# --- the autoguide surface ------------------------------------------------------------------
def test_median_quantiles_samples_and_predictive(float64):
    x = _data(8, loc=1.0)
    guide = AutoFlowMixture(loc_scale_model, num_components=2, num_layers=1, init_steps=5)
    _fit(loc_scale_model, guide, TraceEnum_ELBO(max_plate_nesting=1), x, steps=3, lr=0.01)
    median = guide.median(x)
    assert set(median) == {"loc", "scale"} and median["scale"].shape == ()
    assert median["scale"] > 0
    q = guide.quantiles([0.1, 0.5, 0.9], x)
    assert q["loc"].shape == (3,) and bool((q["loc"].diff() > 0).all())
    assert torch.equal(q["scale"][1], median["scale"])
    draws = guide.sample_posterior(50)
    assert draws["loc"].shape == (50,) and bool((draws["scale"] > 0).all())
    pred = Predictive(loc_scale_model, guide=guide, num_samples=30)(x)
    assert pred["loc"].shape[0] == 30 and pred["x"].shape == (30, 8)
    assert guide.get_posterior().event_shape == (2,)


def test_subsampled_plate(float64):
    x = _data(20, loc=1.0)
    guide = AutoFlowMixture(loc_scale_model, num_components=2, num_layers=1, init_steps=0)
    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    svi = SVI(loc_scale_model, guide, pyro.optim.Adam({"lr": 0.01}), elbo)
    loss = svi.step(x, subsample=torch.arange(5))
    assert math.isfinite(loss)
    # The subsampled data term is scaled by N / batch: a single point's loss is large.
    pyro.set_rng_seed(0)
    full = elbo.loss(loc_scale_model, guide, x)
    pyro.set_rng_seed(0)
    sub = elbo.loss(loc_scale_model, guide, x, subsample=torch.arange(20))
    assert sub == pytest.approx(full, rel=1e-10)


def test_first_call_inside_vectorized_particles_batches_candidates_left_of_them(float64):
    # The initial fits batch their candidates in a plate left of the model's plates and of the
    # ELBO's particle plate around the guide's first call (which a dim clash would refuse).
    x = _data(6, loc=1.0)
    guide = AutoFlowMixture(loc_scale_model, num_components=2, num_layers=1, init_steps=3)
    elbo = TraceEnum_ELBO(max_plate_nesting=1, num_particles=3, vectorize_particles=True)
    assert math.isfinite(elbo.loss(loc_scale_model, guide, x))
    assert guide.batch_safe


def _gmm(x, subsample=None):
    locs = pyro.sample("locs", dist.Normal(0.0, 5.0).expand([2]).to_event(1))
    with pyro.plate("data", len(x), subsample=subsample) as idx:
        z = pyro.sample("z", dist.Categorical(torch.ones(2) / 2))
        pyro.sample("x", dist.Normal(Vindex(locs)[..., z], 1.0), obs=x[idx])


def test_enumerated_and_blocked_discrete_sites(float64):
    x = torch.cat([_data(6, loc=-2.0), _data(6, loc=2.0, seed=4)])
    model = config_enumerate(_gmm)
    guide = AutoFlowMixture(model, num_components=2, num_layers=1, init_steps=20)
    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), elbo)
    assert math.isfinite(svi.step(x))
    assert guide.latent_dim == 2
    # The initial components sit near the two label orders (-2, 2) and (2, -2).
    locs = guide.components.affine.loc.detach().reshape(2, 2)
    assert bool((locs[:, 0] * locs[:, 1] < 0).all()) and float(locs[0, 0] * locs[1, 0]) < 0

    blocked = AutoFlowMixture(
        poutine.block(model, hide=["z"]), num_components=2, num_layers=1, init_steps=0
    )
    svi = SVI(model, blocked, pyro.optim.Adam({"lr": 0.01}), elbo)
    assert math.isfinite(svi.step(x))


def test_errors():
    with pytest.raises(ValueError, match="expected num_components to be an int >= 1, got 0"):
        AutoFlowMixture(loc_scale_model, num_components=0)
    with pytest.raises(ValueError, match="expected flow in"):
        AutoFlowMixture(loc_scale_model, num_components=2, flow="glow")
    with pytest.raises(ValueError, match="expected init_scale > 0"):
        AutoFlowMixture(loc_scale_model, num_components=2, init_scale=0.0)
    y = _data(4)
    with pytest.raises(ValueError, match="expected a latent of size D >= 2"):
        AutoFlowMixture(squared_model, num_components=2, flow="affine_coupling")(y)
    with pytest.raises(ValueError, match="discrete sample site 'z'"):
        AutoFlowMixture(_gmm, num_components=2)(y)


# --- models that are not batch-safe, plate-local latents --------------------------------------
def product_model(y):
    """A latent vector read by position: not batch-safe (a batch dim on the left breaks t[0])."""
    t = pyro.sample("t", dist.Normal(0.0, 2.0).expand([2]).to_event(1))
    with pyro.plate("obs", len(y)):
        pyro.sample("y", dist.Normal(t[0] * t[1], 0.5), obs=y)


def test_sequential_enumeration_is_the_same_objective(float64):
    # The fallback for models that are not batch-safe: TraceEnum_ELBO runs the model once per
    # component and weights each run by pi_k. On a batch-safe model both estimate the same ELBO
    # (20000 vectorized particles: standard error ~0.01 nats).
    x = _data(6, loc=1.0)
    guide = AutoFlowMixture(loc_scale_model, num_components=3, num_layers=0, init_steps=0)
    guide(x)
    assert guide.batch_safe is True
    locs = torch.tensor([[0.5, -0.2], [1.0, 0.1], [3.0, 0.3]])
    guide.components.set_affine(locs, torch.full_like(locs, 0.05))
    elbo = TraceEnum_ELBO(max_plate_nesting=1, num_particles=20000, vectorize_particles=True)
    losses = {}
    for logits in ((2.0, -2.0, 0.0), (0.0, 0.0, 0.0)):
        with torch.no_grad():
            guide.logits.copy_(torch.tensor(logits))
        guide.batch_safe = True
        parallel = elbo.loss(loc_scale_model, guide, x)
        guide.batch_safe = False
        losses[logits] = (parallel, elbo.loss(loc_scale_model, guide, x))
    for parallel, sequential in losses.values():
        assert sequential == pytest.approx(parallel, abs=0.05)
    # ... and the weights matter far more than that tolerance.
    assert abs(losses[(2.0, -2.0, 0.0)][0] - losses[(0.0, 0.0, 0.0)][0]) > 1.0


@pytest.mark.parametrize("elbo", [TraceEnum_ELBO(max_plate_nesting=1), Trace_ELBO()])
def test_latent_vector_indexed_by_position(float64, elbo):
    y = _data(40, loc=1.0)
    guide = AutoFlowMixture(product_model, num_components=2, num_layers=1, init_steps=10)
    svi = SVI(product_model, guide, pyro.optim.Adam({"lr": 0.02}), elbo)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Trace_ELBO: "enumerate" is not used
        losses = [svi.step(y) for _ in range(30)]
    assert guide.batch_safe is False and all(math.isfinite(v) for v in losses)
    t = guide.sample_posterior(200)["t"]
    assert t.shape == (200, 2)
    # The start ascends the log joint, so draws already explain the data: t0 * t1 near mean(y).
    assert float((t[:, 0] * t[:, 1]).median()) == pytest.approx(float(y.mean()), abs=0.3)


def eight_schools(y, sigma):
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("school", len(y)):
        theta = pyro.sample("theta", dist.Normal(mu, tau))
        pyro.sample("obs", dist.Normal(theta, sigma), obs=y)


def test_sample_posterior_with_plate_local_latents(float64):
    y = torch.tensor([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
    sigma = torch.tensor([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])
    guide = AutoFlowMixture(eight_schools, num_components=2, num_layers=1, init_steps=5)
    svi = SVI(eight_schools, guide, pyro.optim.Adam({"lr": 0.01}), TraceEnum_ELBO(1))
    svi.step(y, sigma)
    draws = guide.sample_posterior(10)
    assert draws["mu"].shape == (10,) and draws["theta"].shape == (10, 8)
    assert bool((draws["tau"] > 0).all())
    # The same unpacking as the guide's own sites: replaying a draw gives the same values.
    pyro.set_rng_seed(5)
    z = guide.get_posterior().sample((3,))
    unpacked = guide._unpack_constrained(z)
    for s in range(3):
        one = guide._unpack_constrained(z[s])
        assert all(torch.equal(one[k], unpacked[k][s]) for k in one)
