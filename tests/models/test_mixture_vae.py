import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceEnum_ELBO

from pyro_mixflows.models import MixtureVAE
from pyro_mixflows.models._vae_guide import _ComponentDraw
from pyro_mixflows.models.mixture_vae import stick_breaking_log_weights
from tests.conftest import perturb

# --- the plain Gaussian VAE, sharing the mixture VAE's networks ------------------------------


class PlainVAE:
    """Textbook Gaussian VAE: N(0, I) prior, diagonal Gaussian q(z | x), Bernoulli decoder."""

    def __init__(self, encoder, decoder, latent_dim):
        self.encoder, self.decoder, self.D = encoder, decoder, latent_dim

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            prior = dist.Normal(x.new_zeros(self.D), 1.0).to_event(1)
            z = pyro.sample("latent", prior)
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            loc, raw = self.encoder(x).split(self.D, -1)
            scale = torch.nn.functional.softplus(raw) + 1e-4
            pyro.sample("latent", dist.Normal(loc, scale).to_event(1))


def _binary(n, p, seed=3):
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.full((n, p), 0.4, dtype=torch.get_default_dtype()), generator=g)


def test_single_component_is_exactly_a_gaussian_vae(float64):
    x = _binary(7, 6)
    vae = perturb(MixtureVAE(6, 3, num_components=1, hidden_dims=(5,), learn_prior=False), 0.3)
    plain = PlainVAE(vae.encoder, vae.decoder, 3)
    pyro.set_rng_seed(11)
    loss_mix = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(vae.model, vae.guide, x)
    grads_mix = torch.autograd.grad(loss_mix, list(vae.encoder.parameters()))
    pyro.set_rng_seed(11)
    loss_plain = Trace_ELBO().differentiable_loss(plain.model, plain.guide, x)
    grads_plain = torch.autograd.grad(loss_plain, list(vae.encoder.parameters()))
    assert loss_mix.item() == pytest.approx(loss_plain.item(), rel=1e-12)
    for gm, gp in zip(grads_mix, grads_plain, strict=True):
        assert torch.allclose(gm, gp, rtol=1e-10, atol=1e-12)
    # The importance weights reduce too: log p(x|z) + log N(z; 0, I) - log N(z; μ, σ).
    pyro.set_rng_seed(5)
    lw = vae.log_weights(x, 4)
    pyro.set_rng_seed(5)
    loc, raw = vae.encoder(x).split(3, -1)
    q = dist.Normal(loc, torch.nn.functional.softplus(raw) + 1e-4).to_event(1)
    z = q.sample((4,))
    expected = (
        dist.Bernoulli(logits=vae.decoder(z)).to_event(1).log_prob(x)
        + dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
        - q.log_prob(z)
    )
    assert torch.allclose(lw, expected.detach(), rtol=1e-12)


def _separated_vae(weights="softmax", K=3, sticks="global", tie=False):
    """A tiny VAE whose posterior components sit far apart, so I(k; z) under q is large."""
    vae = MixtureVAE(
        5,
        2,
        num_components=K,
        weights=weights,
        sticks=sticks,
        hidden_dims=(4,),
        tie_components=tie,
    )
    perturb(vae, 0.3)
    with torch.no_grad():
        last = vae.encoder[-1]
        last.weight.mul_(0.1)
        last.bias[: 2 * K].copy_(
            4.0 * torch.randn(2 * K, generator=torch.Generator().manual_seed(2))
        )
        last.bias[2 * K : 4 * K].fill_(-1.0)
    return vae


def _joint_elbo_draws(vae, x, num_samples):
    """S one-draw estimates of the training ELBO per point with global sticks sampled, (S,)."""
    loc, scale, w = vae._encode(x)
    q_v = vae._stick_posterior(vae.stick_raw)
    v = q_v.rsample((num_samples,))  # (S, T-1)
    stick_term = (vae._stick_prior(v).log_prob(v) - q_v.log_prob(v)).sum(-1)  # (S,)
    log_r = torch.log_softmax(w, -1).expand(num_samples, *w.shape)  # (S, N, K)
    k = dist.Categorical(logits=log_r).sample()  # (S, N)
    draw = _ComponentDraw(loc, scale, log_r, k)
    z = draw.rsample()  # (S, N, D)
    log_q = torch.logsumexp(log_r + draw.component_log_probs(z), -1)
    log_p = vae._prior_log_probs(z, stick_breaking_log_weights(v).unsqueeze(-2))
    per_point = vae._likelihood(z).log_prob(x) + log_p - log_q  # (S, N)
    return (per_point.sum(-1) + stick_term) / x.shape[0]


STICK_CASES = {
    "softmax": ("softmax", "global"),
    "kumaraswamy": ("kumaraswamy", "global"),
    "beta": ("beta", "global"),
    "kumaraswamy-local": ("kumaraswamy", "local"),
}


@pytest.mark.parametrize("case", STICK_CASES.values(), ids=STICK_CASES.keys())
def test_elbo_is_the_full_mixture_entropy_bound(float64, case):
    # TraceEnum_ELBO on model/guide must estimate E_q[log p(x, v, z) - log q(v, z | x)] with the
    # FULL mixture q(z | x); the per-component entropy shortcut would differ by I(k; z) (> 0.5 nats).
    weights, sticks = case
    x = _binary(4, 5)
    vae = _separated_vae(weights, sticks=sticks)
    elbo = TraceEnum_ELBO(max_plate_nesting=1, num_particles=2000, vectorize_particles=True)
    with torch.no_grad():
        value = -elbo.loss(vae.model, vae.guide, x) / 4
        if vae.sticks == "global":  # the sticks are shared: one stick term for the 4 points
            direct = _joint_elbo_draws(vae, x, 20_000).mean().item()
        else:
            direct = vae.log_weights(x, 20_000, integrate_sticks=False).mean().item()
        probs, _ = vae.encode(x)
    entropy_k = -(probs * probs.clamp_min(1e-30).log()).sum(-1).mean().item()
    assert entropy_k > 0.5  # the shortcut would be off by about this much
    assert value == pytest.approx(direct, abs=0.05)  # MC error of both estimates ~0.01


def _tied_elbo_draws(vae, x, num_samples):
    """S one-draw estimates of the tied (DLGMM) ELBO per point, summing c exactly: (S,).

    Σ_c r_c(x) (log p(x | z_c) + log w_c + log N(z_c; μ⁰_c, σ⁰_c) - log r_c(x) - log q_c(z_c | x))
    with z_c ~ q_c(z | x), plus the stick term (per point for local sticks, once for global ones).
    """
    S, N = num_samples, x.shape[0]
    loc, scale, w = vae._encode(x)  # (N, K, D)
    K = loc.shape[-2]
    stick_term = 0.0
    if vae.weights == "softmax":
        log_w = vae._prior_log_weights(x)  # (K,)
        log_r = torch.log_softmax(w, -1)  # (N, K)
    elif vae.sticks == "global":
        q_v = vae._stick_posterior(vae.stick_raw)
        v = q_v.rsample((S,))  # (S, T-1)
        stick_term = (vae._stick_prior(v).log_prob(v) - q_v.log_prob(v)).sum(-1) / N  # (S,)
        log_w = stick_breaking_log_weights(v).unsqueeze(-2)  # (S, 1, K)
        log_r = torch.log_softmax(w, -1)
    else:
        q_v = vae._stick_posterior(w)
        v = q_v.rsample((S,))  # (S, N, T-1)
        stick_term = (vae._stick_prior(v).log_prob(v) - q_v.log_prob(v)).sum(-1).mean(-1)
        log_w = log_r = stick_breaking_log_weights(v)  # (S, N, K)
    z = dist.Normal(loc, scale).rsample((S,))  # (S, N, K, D): one draw per component
    log_q = dist.Normal(loc, scale).log_prob(z).sum(-1)  # (S, N, K)
    log_p0 = dist.Normal(vae.prior_loc, vae.prior_log_scale.exp()).log_prob(z).sum(-1)
    log_px = vae._likelihood(z).log_prob(x.unsqueeze(-2))  # (S, N, K)
    terms = log_px + log_p0 - log_q + log_w - log_r  # (S, N, K)
    per_point = (log_r.exp() * terms).sum(-1)  # (S, N)
    assert per_point.shape == (S, N) and K == vae.num_components
    return per_point.mean(-1) + stick_term


@pytest.mark.parametrize(
    "case",
    [STICK_CASES[k] for k in ("softmax", "kumaraswamy", "kumaraswamy-local")],
    ids=["softmax", "kumaraswamy", "kumaraswamy-local"],
)
def test_tied_elbo_matches_each_component_against_its_prior_component(float64, case):
    # tie_components=True: the guide's index is the model's c, so TraceEnum_ELBO computes
    # Σ_c r_c (E_{q_c}[log p(x, z | c)] - E_{q_c}[log q_c]) + Σ_c r_c log(w_c / r_c).
    weights, sticks = case
    x = _binary(4, 5)
    vae = _separated_vae(weights, sticks=sticks, tie=True)
    elbo = TraceEnum_ELBO(max_plate_nesting=1, num_particles=2000, vectorize_particles=True)
    with torch.no_grad():
        value = -elbo.loss(vae.model, vae.guide, x) / 4
        draws = _tied_elbo_draws(vae, x, 20_000)
        direct = draws.mean().item()
        # 4 standard errors of the 2000-particle estimate (the stick term is heavy-tailed).
        tol = 4 * draws.std().item() / math.sqrt(2000)
        untied = None
        if weights == "softmax":
            untied = vae.log_weights(x, 20_000).mean().item()
        elif sticks == "global":
            untied = _joint_elbo_draws(vae, x, 20_000).mean().item()
    assert value == pytest.approx(direct, abs=tol)
    if untied is not None:  # the tied bound is the looser one (it adds KL(q(c|z,x) ‖ p(c|z)))
        assert untied > value + 0.1


def _exact_log_likelihood(vae, x):
    """log p(x) for a 1-D latent by quadrature over z."""
    z = torch.linspace(-15, 15, 30_001).unsqueeze(-1)  # (M, 1)
    log_pz = vae._prior_log_probs(z, vae._prior_log_weights(z))  # (M,)
    log_px = vae._likelihood(z.unsqueeze(1)).log_prob(x)  # (M, N)
    return torch.logsumexp(log_pz.unsqueeze(-1) + log_px, 0) + math.log(z[1, 0] - z[0, 0])


def test_importance_estimate_bounds_elbo_and_converges(float64):
    x = _binary(3, 4)
    vae = perturb(MixtureVAE(4, 1, num_components=2, hidden_dims=(6,)), 0.3)
    with torch.no_grad():
        exact = _exact_log_likelihood(vae, x)
        elbo = vae.log_weights(x, 4000).mean(0)
        is_10 = torch.stack([vae.importance_log_likelihood(x, 10) for _ in range(100)]).mean(0)
        is_big = vae.importance_log_likelihood(x, 8000, batch_size=4000)
    gap_elbo, gap_10, gap_big = exact - elbo, exact - is_10, exact - is_big
    assert (gap_elbo > 0.1).all()  # the guide is not exact, so there is a gap to close
    # E[IS_S] increases with S towards log p(x); Monte Carlo error of each mean here < 0.01.
    assert (is_10 > elbo + 0.05).all() and (gap_10 > -0.02).all()
    assert (gap_big.abs() < 0.1 * gap_elbo).all() and (gap_big.abs() < gap_10).all()


@pytest.mark.parametrize("weights", ["softmax", "kumaraswamy"])
def test_calling_the_module_is_the_mean_importance_log_weight(float64, weights):
    x = _binary(4, 5)
    vae = perturb(MixtureVAE(5, 2, num_components=3, weights=weights, hidden_dims=(6,)), 0.3)
    pyro.set_rng_seed(7)
    expected = vae.log_weights(x, 5).mean(0)
    pyro.set_rng_seed(7)
    elbo = vae(x, num_samples=5)
    assert elbo.shape == (4,) and torch.allclose(elbo, expected)
    elbo.sum().backward()  # differentiable through the reparameterized draws
    assert vae.decoder[0].weight.grad is not None and vae.encoder[0].weight.grad is not None
    with pytest.raises(ValueError, match="expected num_samples to be an int >= 1"):
        vae(x, num_samples=0)


def _component_log_marginals(vae, x):
    """log p_c(x) = log ∫ N(z; μ⁰_c, σ⁰_c) p(x | z) dz for a 1-D latent, by quadrature: (N, K)."""
    z = torch.linspace(-15, 15, 30_001).unsqueeze(-1)  # (M, 1)
    prior = dist.Normal(vae.prior_loc, vae.prior_log_scale.exp())
    log_pc = prior.log_prob(z.unsqueeze(-2)).sum(-1)  # (M, K)
    log_px = vae._likelihood(z.unsqueeze(1)).log_prob(x)  # (M, N)
    dz = math.log(z[1, 0] - z[0, 0])
    return torch.logsumexp(log_pc.unsqueeze(1) + log_px.unsqueeze(-1), 0) + dz


@pytest.mark.parametrize("sticks", ["global", "local"])
def test_mean_stick_weights_match_monte_carlo(float64, sticks):
    # prior_weights() is π(E[v]); it must equal E[π(v)] (independent sticks), here by Monte Carlo.
    vae = perturb(MixtureVAE(4, 1, num_components=4, weights="kumaraswamy", sticks=sticks), 0.5)
    q_v = (
        vae._stick_posterior(vae.stick_raw)
        if sticks == "global"
        else vae._stick_prior(vae.prior_loc)
    )
    with torch.no_grad():
        w = stick_breaking_log_weights(q_v.expand([200_000, 3]).sample()).exp()  # (S, T)
    standard_error = w.std(0) / math.sqrt(len(w))
    assert ((w.mean(0) - vae.prior_weights()).abs() < 5 * standard_error).all()
    if sticks == "local":  # GEM(1) means: 1/2, 1/4, 1/8, 1/8
        assert torch.allclose(vae.prior_weights(), torch.tensor([0.5, 0.25, 0.125, 0.125]))


@pytest.mark.parametrize("sticks", ["global", "local"])
def test_dp_importance_estimate_converges_to_the_exact_likelihood(float64, sticks):
    # Both stick forms integrate out exactly to the mixture with mean weights (p(x | v) is linear
    # in π(v)); the default estimator uses that marginal, the joint one draws the sticks too.
    x = _binary(3, 4)
    vae = MixtureVAE(4, 1, num_components=3, weights="kumaraswamy", sticks=sticks, hidden_dims=(6,))
    perturb(vae, 0.5 if sticks == "global" else 0.2)

    def mean_is_10(**kwargs):  # E[IS_10] from 100 independent 10-draw estimates, (N,)
        lw = vae.log_weights(x, 1000, **kwargs).reshape(100, 10, -1)
        return (torch.logsumexp(lw, 1) - math.log(10)).mean(0)

    with torch.no_grad():
        log_pc = _component_log_marginals(vae, x)  # (N, K)
        exact = torch.logsumexp(vae.prior_weights().log() + log_pc, -1)  # (N,)
        elbo = vae.log_weights(x, 4000).mean(0)
        is_10, joint_10 = mean_is_10(), mean_is_10(integrate_sticks=False)
        is_big = vae.importance_log_likelihood(x, 10_000, batch_size=5000)
        joint_big = vae.importance_log_likelihood(x, 10_000, 5000, integrate_sticks=False)
    gap_elbo, gap_10, gap_big = exact - elbo, exact - is_10, exact - is_big
    assert (gap_elbo > 0.15).all()  # the guide is not exact
    assert (is_10 > elbo + 0.02).all() and (gap_10 > -0.02).all()  # MC error of the means < 0.01
    if sticks == "global":
        assert (gap_big.abs() < 0.1 * gap_elbo).all() and (gap_big.abs() < gap_10).all()
        # The joint estimator (v ~ q(v) drawn too) targets the same predictive from below.
        assert (joint_10 < joint_big).all() and (joint_big - exact).abs().max() < 0.1
    else:
        # Random local q(v | x) make heavy-tailed weights: at 10^4 draws still ~0.1 below.
        assert (gap_big.abs() < 0.5 * gap_elbo).all() and (gap_big < gap_10).all()
        assert (joint_10 < joint_big).all() and (joint_big < exact + 0.05).all()


def test_importance_estimate_refuses_non_finite_terms(float64):
    vae = MixtureVAE(4, 2, num_components=2, hidden_dims=(3,))
    with torch.no_grad():
        vae.decoder[-1].bias[0] = float("inf")  # p(x_0 = 1 | z) = 1: log p = -inf at x_0 = 0
    with pytest.raises(ValueError, match="expected finite importance log-weights"):
        vae.importance_log_likelihood(_binary(3, 4), num_samples=7, batch_size=3)
    with pytest.raises(ValueError, match="expected num_samples"):
        vae.importance_log_likelihood(_binary(3, 4), num_samples=0)


def test_flow_posterior_density_normalizes(float64):
    # q(z | x) with flow components, by change of variables through comps.inverse, sums to 1.
    flow_kwargs = dict(num_layers=2, hidden_dims=(8,))
    vae = MixtureVAE(
        5, 2, num_components=2, hidden_dims=(4,), flow="affine_coupling", flow_kwargs=flow_kwargs
    )
    perturb(vae.encoder, 0.3)
    perturb(vae.flows, 0.1)  # off the identity, yet with its mass inside the grid
    x = _binary(1, 5)
    loc, scale, w = vae._encode(x)
    log_w = torch.log_softmax(w, -1)
    grid = torch.linspace(-40, 40, 801)  # heavy-ish tails: 0.6% of the mass lies beyond 10
    z = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 1, 2)  # (M, 1, 2)
    draw = _ComponentDraw(loc, scale, log_w, torch.zeros(1, dtype=torch.long), vae.flows)
    with torch.no_grad():
        log_q = torch.logsumexp(log_w + draw.component_log_probs(z), -1)  # (M, 1)
    mass = log_q.exp().sum() * (grid[1] - grid[0]) ** 2
    assert mass.item() == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(num_components=3),
        dict(num_components=4, weights="kumaraswamy"),
        dict(num_components=4, weights="kumaraswamy", sticks="local"),
        dict(num_components=4, weights="beta", likelihood="normal"),
        dict(num_components=2, flow="affine_coupling", flow_kwargs=dict(num_layers=2)),
    ],
    ids=["softmax", "kumaraswamy", "kumaraswamy-local", "beta-normal", "flow"],
)
def test_shapes_subsampling_and_gradients(kwargs):
    x = _binary(9, 6).float()
    vae = perturb(MixtureVAE(6, 2, hidden_dims=(8,), **kwargs), 0.05)  # flows start at identity
    K = kwargs["num_components"]
    probs, means = vae.encode(x)
    assert probs.shape == (9, K) and means.shape == (9, K, 2)
    assert torch.allclose(probs.sum(-1), torch.ones(9))
    assert vae.latent_mean(x).shape == (9, 2)
    assert vae.sample(4).shape == (4, 6) and vae.sample(3, component=K - 1).shape == (3, 6)
    assert vae.importance_log_likelihood(x, 6, batch_size=4).shape == (9,)
    subsample = torch.tensor([0, 4, 8])
    loss = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(
        vae.model, vae.guide, x, subsample=subsample
    )
    loss.backward()
    trained = [n for n, p in vae.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not trained, f"no gradient reached {trained}"
    assert torch.allclose(vae.prior_weights().sum(), torch.tensor(1.0))
    if kwargs.get("weights", "softmax") != "softmax":
        kl = vae.stick_kl(x)
        assert kl.shape == ((9,) if vae.sticks == "local" else ()) and (kl >= 0).all()


@pytest.mark.parametrize("flow", [None, "affine_coupling"])
def test_svi_step_updates_every_network(flow):
    # model/guide register the encoder, decoder and flows with Pyro, so SVI's optimizer moves them.
    x = _binary(8, 6).float()
    vae = MixtureVAE(6, 2, num_components=2, hidden_dims=(4,), flow=flow)
    before = {n: p.detach().clone() for n, p in vae.named_parameters()}
    svi = pyro.infer.SVI(
        vae.model, vae.guide, pyro.optim.Adam({"lr": 0.01}), TraceEnum_ELBO(max_plate_nesting=1)
    )
    svi.step(x, subsample=torch.tensor([1, 2, 5]))
    # Identity-initialized flows: only their last layers can move on the first step.
    frozen = [n for n, p in vae.named_parameters() if torch.equal(p, before[n])]
    assert all(n.startswith("flows.") for n in frozen), frozen
    assert not any(n.startswith(("encoder", "decoder", "prior")) for n in frozen)
    if flow is not None:
        assert len(frozen) < sum(1 for n in before if n.startswith("flows."))


def test_stick_breaking_log_weights_sum_to_one(float64):
    v = torch.rand(5, 3)
    w = stick_breaking_log_weights(v).exp()
    assert w.shape == (5, 4) and torch.allclose(w.sum(-1), torch.ones(5))
    assert torch.allclose(w[:, 1], v[:, 1] * (1 - v[:, 0]))


def test_errors_name_what_was_expected():
    with pytest.raises(ValueError, match="expected weights"):
        MixtureVAE(4, 2, weights="dirichlet")
    with pytest.raises(ValueError, match="expected a truncation"):
        MixtureVAE(4, 2, num_components=1, weights="beta")
    with pytest.raises(ValueError, match="expected sticks"):
        MixtureVAE(4, 2, weights="beta", sticks="shared")
    local = MixtureVAE(4, 2, num_components=3, weights="beta", sticks="local")
    with pytest.raises(ValueError, match="expected x"):
        local.stick_kl()
    with pytest.raises(ValueError, match="expected likelihood"):
        MixtureVAE(4, 2, likelihood="poisson")
    with pytest.raises(ValueError, match="expected latent_dim"):
        MixtureVAE(4, 0)
    vae = MixtureVAE(4, 2, num_components=2)
    with pytest.raises(ValueError, match=r"expected x of shape \(N, P=4\)"):
        vae.guide(torch.zeros(3, 5))
    with pytest.raises(TypeError, match="expected x to be a torch.Tensor"):
        vae.model([[0.0] * 4])
    with pytest.raises(ValueError, match="expected a DP model"):
        vae.stick_kl(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="expected component"):
        vae.sample(2, component=2)


# --- clustering: the cluster posterior p(c | x) ------------------------------------------------


@pytest.mark.parametrize("weights", ["softmax", "kumaraswamy"])
def test_cluster_probs_converge_to_the_exact_cluster_posterior(float64, weights):
    # p(c | x) ∝ w̄_c p_c(x), with p_c(x) = ∫ N(z; μ⁰_c, σ⁰_c) p(x | z) dz by quadrature (1-D z).
    x = _binary(4, 4)
    vae = perturb(MixtureVAE(4, 1, num_components=3, weights=weights, hidden_dims=(6,)), 0.5)
    with torch.no_grad():
        vae.prior_loc.copy_(torch.tensor([[-2.0], [0.0], [2.0]]))
        vae.prior_log_scale.fill_(math.log(0.7))
        exact = torch.softmax(vae.prior_weights().log() + _component_log_marginals(vae, x), -1)
        estimate = vae.cluster_probs(x, num_samples=20_000, batch_size=5000)
        plain = vae.cluster_probs(x, num_samples=20_000, importance=False, batch_size=5000)
    assert estimate.shape == (4, 3) and torch.allclose(estimate.sum(-1), torch.ones(4))
    assert (exact.max(-1).values < 0.95).all()  # the points are not trivially assigned
    # Self-normalized importance sampling is consistent: at 20 000 draws within 0.01 here.
    assert (estimate - exact).abs().max() < 0.01
    # The plain average over q(z | x) targets E_q[p(c | z)], which differs for this guide.
    assert (plain - exact).abs().max() > 0.02
    pyro.set_rng_seed(3)
    labels = vae.predict(x, num_samples=20_000)
    assert torch.equal(labels, exact.argmax(-1))


def test_cluster_log_probs_are_bayes_rule_over_the_prior_components(float64):
    vae = perturb(MixtureVAE(6, 2, num_components=3, hidden_dims=(5,)), 0.5)
    z = torch.randn(7, 4, 2)
    log_p = vae.cluster_log_probs(z)
    assert log_p.shape == (7, 4, 3)
    comps = dist.Normal(vae.prior_loc, vae.prior_log_scale.exp()).log_prob(z.unsqueeze(-2)).sum(-1)
    joint = vae.prior_weights().log() + comps
    assert torch.allclose(log_p, joint - torch.logsumexp(joint, -1, keepdim=True))
    with pytest.raises(ValueError, match=r"expected z of shape \(\.\.\., D=2\)"):
        vae.cluster_log_probs(torch.zeros(3, 5))


@pytest.mark.slow
def test_tied_training_ties_the_encoder_index_to_the_prior_component():
    # Two clusters far apart in the data: after a short tied fit, the guide's top component and
    # the cluster posterior agree and both separate the clusters (labels up to a permutation),
    # also after the automatic refit of the prior at step 500 under plain SVI.
    g = torch.Generator().manual_seed(0)
    y = torch.arange(200) % 2
    x = torch.where(
        y.unsqueeze(-1).bool(),
        torch.rand(200, 8, generator=g) < 0.9,
        torch.rand(200, 8, generator=g) < 0.1,
    ).float()
    vae = MixtureVAE(8, 2, num_components=2, hidden_dims=(16,))
    svi = pyro.infer.SVI(
        vae.model, vae.guide, pyro.optim.Adam({"lr": 0.01}), TraceEnum_ELBO(max_plate_nesting=1)
    )
    for _ in range(600):
        svi.step(x)
    assert int(vae.num_training_steps) == 600
    predicted = vae.predict(x, num_samples=20)
    top = vae.encode(x)[0].argmax(-1)
    agree = (predicted == y).float().mean().item()
    assert max(agree, 1 - agree) > 0.95
    assert (predicted == top).float().mean().item() > 0.95


NON_FINITE_ENTRY_POINTS = {
    "svi_step": lambda vae, x: pyro.infer.SVI(
        vae.model, vae.guide, pyro.optim.Adam({"lr": 0.01}), TraceEnum_ELBO(max_plate_nesting=1)
    ).step(x),
    "model": lambda vae, x: vae.model(x),
    "guide": lambda vae, x: vae.guide(x),
    "importance_log_likelihood": lambda vae, x: vae.importance_log_likelihood(x, 4),
    "log_weights": lambda vae, x: vae.log_weights(x, 4),
    "encode": lambda vae, x: vae.encode(x),
    "latent_mean": lambda vae, x: vae.latent_mean(x),
    "cluster_probs": lambda vae, x: vae.cluster_probs(x, 4),
    "predict": lambda vae, x: vae.predict(x, 4),
    "stick_kl": lambda vae, x: vae.stick_kl(x),
}


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("entry", NON_FINITE_ENTRY_POINTS.values(), ids=NON_FINITE_ENTRY_POINTS)
def test_non_finite_data_gets_one_clear_error_at_every_entry_point(entry, bad):
    vae = MixtureVAE(4, 2, num_components=3, weights="beta", sticks="local", hidden_dims=(5,))
    x = _binary(6, 4).float()
    x[1, 2] = bad
    x[4, 0] = bad
    with pytest.raises(ValueError, match=r"expected finite values in x, got 2 NaN/inf entries"):
        entry(vae, x)


def test_em_refit_recovers_a_known_diagonal_mixture_and_matches_indices(float64):
    from pyro_mixflows.models._vae_clusters import _best_matching, _fit_diagonal_mixture

    g = torch.Generator().manual_seed(0)
    loc = torch.tensor([[-4.0, 0.0], [0.0, 4.0], [4.0, -1.0]])
    scale = torch.tensor([[0.5, 1.0], [1.0, 0.3], [0.7, 0.7]])
    labels = torch.arange(3000) % 3
    z = loc[labels] + scale[labels] * torch.randn(3000, 2, generator=g)
    fitted_loc, var, log_w, resp = _fit_diagonal_mixture(z, 3, num_restarts=3, seed=0)
    order = _best_matching(torch.eye(3)[labels].T @ resp)  # match to the true labels
    # 0.1: a few standard errors of a mean/scale estimated from 1000 points.
    assert torch.allclose(fitted_loc[order], loc, atol=0.1)
    assert torch.allclose(var[order].sqrt(), scale, atol=0.1)
    assert torch.allclose(log_w.exp(), torch.full((3,), 1 / 3), atol=0.03)
    overlap = torch.tensor([[0.0, 5.0, 1.0], [4.0, 0.0, 0.0], [0.0, 1.0, 3.0]])
    assert _best_matching(overlap) == [1, 0, 2]


def test_refit_prior_sets_the_prior_and_checks_its_input():
    x = _binary(40, 6).float()
    vae = perturb(MixtureVAE(6, 2, num_components=3, hidden_dims=(8,)), 0.3)
    before = vae.prior_loc.detach().clone()
    vae.refit_prior(x, num_samples=3, num_restarts=2)
    assert not torch.allclose(vae.prior_loc, before)
    assert torch.isfinite(vae.prior_log_scale).all()
    assert torch.allclose(vae.prior_weights().sum(), torch.tensor(1.0))
    with pytest.raises(ValueError, match="expected a learnable prior"):
        MixtureVAE(6, 2, num_components=3, learn_prior=False).refit_prior(x)
    with pytest.raises(ValueError, match="expected num_restarts"):
        vae.refit_prior(x, num_restarts=0)
    x[0, 0] = math.nan
    with pytest.raises(ValueError, match="expected finite values in x"):
        vae.refit_prior(x)


def test_em_started_at_a_given_mixture_never_ends_below_it(float64):
    from pyro_mixflows.models._vae_clusters import _fit_diagonal_mixture

    g = torch.Generator().manual_seed(1)
    loc = torch.tensor([[-3.0, 0.0], [3.0, 0.0]])
    z = loc[torch.arange(400) % 2] + torch.randn(400, 2, generator=g)
    var = torch.ones(2, 2)
    log_w = torch.full((2,), -math.log(2))

    def ll(lc, vr, lw):
        lp = dist.Normal(lc, vr.sqrt()).log_prob(z.unsqueeze(1)).sum(-1) + lw
        return torch.logsumexp(lp, -1).mean()

    fitted = _fit_diagonal_mixture(z, 2, num_restarts=0, seed=0, init=(loc, var, log_w))
    assert ll(*fitted[:3]) >= ll(loc, var, log_w)
    # 0.2: a few standard errors of a mean estimated from 200 points of unit variance.
    assert torch.allclose(fitted[0], loc, atol=0.2)  # EM from the truth stays at the truth


def test_split_copies_the_guide_component_that_produced_the_codes():
    from pyro_mixflows.models._vae_clusters import _split_guide_components

    vae = perturb(MixtureVAE(5, 2, num_components=3, hidden_dims=(4,)), 0.3)
    x = _binary(6, 5).float()
    overlap = torch.tensor([[50.0, 0.0, 0.0], [0.0, 30.0, 40.0], [0.0, 0.0, 2.0]])
    assert _split_guide_components(vae, overlap) == [2]  # component 2's codes came from guide 1
    loc, scale, w = vae._encode(x)
    assert torch.equal(loc[:, 2], loc[:, 1]) and torch.equal(scale[:, 2], scale[:, 1])
    assert torch.equal(w[:, 2], w[:, 1])
    assert not torch.equal(loc[:, 0], loc[:, 1])
    assert _split_guide_components(vae, torch.eye(3)) == []  # every component followed


def test_automatic_refit_runs_at_its_training_steps_only():
    x = _binary(30, 5).float()
    vae = perturb(MixtureVAE(5, 2, num_components=3, hidden_dims=(4,), refit_steps=(2,)), 0.3)
    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 0.0}), elbo)
    start = vae.prior_loc.detach().clone()
    svi.step(x)
    svi.evaluate_loss(x)  # no gradients: not a training step
    assert int(vae.num_training_steps) == 1 and torch.equal(vae.prior_loc, start)
    svi.step(x)  # the refit: the prior moves although the learning rate is 0
    assert int(vae.num_training_steps) == 2 and not torch.equal(vae.prior_loc, start)
    refitted = vae.prior_loc.detach().clone()
    svi.step(x)
    assert torch.equal(vae.prior_loc, refitted)


def test_refit_steps_default_and_errors():
    assert MixtureVAE(5, 2, num_components=3).refit_steps == (500, 1000, 2000)
    for options in (
        dict(num_components=1),
        dict(num_components=3, tie_components=False),
        dict(num_components=3, learn_prior=False),
        dict(num_components=3, flow="affine_coupling"),
    ):
        assert MixtureVAE(5, 2, **options).refit_steps == (), options
    assert MixtureVAE(5, 2, refit_steps=[300, 100, 300]).refit_steps == (100, 300)
    with pytest.raises(ValueError, match="expected refit_steps to be ints >= 1"):
        MixtureVAE(5, 2, refit_steps=(0,))
    with pytest.raises(ValueError, match="expected refit_steps=\\(\\) with a fixed prior"):
        MixtureVAE(5, 2, learn_prior=False, refit_steps=(10,))


def test_refit_prior_leaves_the_callers_random_stream_alone():
    x = _binary(20, 5).float()
    vae = perturb(MixtureVAE(5, 2, num_components=3, hidden_dims=(4,)), 0.3)
    torch.manual_seed(3)
    vae.refit_prior(x, num_samples=2, num_restarts=1)
    after = torch.rand(3)
    torch.manual_seed(3)
    assert torch.equal(torch.rand(3), after)


def test_normal_decoder_log_scale_is_the_scaled_parameter():
    from pyro_mixflows.models.mixture_vae import NOISE_SPEED

    vae = MixtureVAE(5, 2, likelihood="normal")
    with torch.no_grad():
        vae.decoder_log_scale_unit.fill_(-0.1)
    assert torch.allclose(vae.decoder_log_scale, torch.full((5,), -0.1 * NOISE_SPEED))
    assert vae._likelihood(torch.zeros(2)).base_dist.scale[0].item() == pytest.approx(
        math.exp(-0.1 * NOISE_SPEED)
    )


def test_fit_resume_continues_the_refit_schedule(tmp_path):
    # num_training_steps (the refits' clock) is a buffer, saved in fit's checkpoint: a run
    # stopped at step 2 and resumed refits at step 3 as the uninterrupted run does, and ends
    # with the same parameters (the refit draws are seeded by the step).
    from pyro_mixflows.infer import fit

    x = torch.randn(40, 5, generator=torch.Generator().manual_seed(2))
    options = {"eval_every": 2, "seed": 0, "loss": TraceEnum_ELBO(max_plate_nesting=1)}

    def make():
        torch.manual_seed(0)  # the same initial networks each time
        return perturb(
            MixtureVAE(
                5, 2, num_components=3, hidden_dims=(4,), likelihood="normal", refit_steps=(3,)
            ),
            0.3,
        )

    full_vae = make()
    full = fit(full_vae.model, full_vae.guide, x, num_steps=6, **options)
    full_state = {k: v.clone() for k, v in full_vae.state_dict().items()}
    assert int(full_vae.num_training_steps) == 6

    pyro.clear_param_store()
    path = str(tmp_path / "vae.pt")
    part_vae = make()
    fit(part_vae.model, part_vae.guide, x, num_steps=2, checkpoint=path, **options)
    pyro.clear_param_store()
    resumed_vae = make()  # a fresh model: its counter starts at 0
    resumed = fit(
        resumed_vae.model, resumed_vae.guide, x, num_steps=6, checkpoint=path, resume=True,
        **options,
    )  # fmt: skip
    assert int(resumed_vae.num_training_steps) == 6
    assert resumed.losses == full.losses
    for key, value in resumed_vae.state_dict().items():
        assert torch.equal(value, full_state[key]), key


def test_full_covariance_em_keeps_elongated_clusters_whole(float64):
    # Two long clusters off the axes and a round one: the full-covariance EM (that of the
    # refits) recovers the partition and returns the diagonals of the true covariances.
    from pyro_mixflows.models._vae_clusters import _best_matching, _fit_diagonal_mixture

    g = torch.Generator().manual_seed(0)
    loc = torch.tensor([[-4.0, 0.0], [4.0, 0.0], [0.0, 5.0]])
    rot = torch.tensor([[1.0, 1.0], [-1.0, 1.0]]) / math.sqrt(2)
    tril = torch.stack([rot @ torch.diag(torch.tensor([2.0, 0.2])), rot.T @ torch.diag(
        torch.tensor([2.0, 0.2])), 0.5 * torch.eye(2)])  # fmt: skip
    labels = torch.arange(3000) % 3
    z = loc[labels] + (tril[labels] @ torch.randn(3000, 2, 1, generator=g)).squeeze(-1)
    fitted_loc, var, _, resp = _fit_diagonal_mixture(z, 3, 3, seed=0, covariance="full")
    order = _best_matching(torch.eye(3)[labels].T @ resp)
    assert (resp[:, order].argmax(-1) == labels).double().mean() > 0.98
    true_var = (tril @ tril.mT).diagonal(dim1=-2, dim2=-1)
    assert torch.allclose(var[order], true_var, rtol=0.1)
    assert torch.allclose(fitted_loc[order], loc, atol=0.15)
    with pytest.raises(ValueError, match="expected covariance in"):
        _fit_diagonal_mixture(z, 3, 1, seed=0, covariance="spherical")
