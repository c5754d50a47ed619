"""LatentMALA: exact MH ratios, the base target is naive sampling, explicit targets are exact."""

import math
import warnings

import arviz as az
import numpy as np
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import MCMC
from torch.distributions import MultivariateNormal, constraints
from torch.distributions.transforms import Transform

from pyro_mixflows import FlowComponents, FlowMixture
from pyro_mixflows.infer import LatentMALA
from tests.conftest import perturb

PRECONDITIONERS = ["identity", "diagonal", "metric"]


def _flow(K=1, scale=0.1):
    comps = FlowComponents(K, 2, flow="affine_coupling", num_layers=2, hidden_dims=(8, 8))
    return perturb(comps, scale)


def _permutation_pvalue(a, b, num_perm=200):
    """Energy-distance two-sample permutation test (NumPy: one distance matrix, permuted labels)."""
    both = np.concatenate([a.numpy(), b.numpy()])
    dist = np.sqrt(((both[:, None] - both[None]) ** 2).sum(-1))  # (2n, 2n)
    n = len(a)

    def energy(idx):
        i, j = idx[:n], idx[n:]
        return 2 * dist[np.ix_(i, j)].mean() - dist[np.ix_(i, i)].mean() - dist[np.ix_(j, j)].mean()

    rng = np.random.default_rng(0)
    observed = energy(np.arange(len(both)))
    count = sum(energy(rng.permutation(len(both))) >= observed for _ in range(num_perm))
    return (count + 1) / (num_perm + 1)


@pytest.mark.parametrize("preconditioner", PRECONDITIONERS)
def test_base_target_reproduces_naive_sampling(float64, preconditioner):
    comps = _flow()
    kernel = LatentMALA(comps, target="base", preconditioner=preconditioner, num_chains_batched=300)
    out = kernel.run_chains(15, warmup_steps=15)
    # Chains start at q_Z, the target: every draw is exactly q_X-distributed, so the last
    # draw of each chain (independent across chains) is a sample of size 250 from q_X.
    x_mala = out["x"][:, -1]
    x_naive = comps.rsample((250,))[:, 0].detach()
    # Two-sample energy-distance permutation test at level 0.01 (fixed seed).
    assert _permutation_pvalue(x_mala, x_naive) > 0.01
    assert 0.2 < kernel.diagnostics()["acceptance rate"] < 0.95
    assert not torch.allclose(out["z"][:, -1], out["z"][:, 0])  # the chains moved


def test_base_target_on_a_mixture_keeps_the_weights(float64):
    mix = FlowMixture(_flow(K=3), logits=torch.tensor([0.0, 1.0, 2.0]))
    kernel = LatentMALA(mix, target="base", num_chains_batched=400, return_latent=True)
    out = kernel.run_chains(10, warmup_steps=5)
    freq = torch.bincount(out["component"].flatten(), minlength=3) / out["component"].numel()
    # Gibbs draws of c given z under pi = q_Z: c ~ w exactly; 4000 correlated draws, so a
    # binomial standard error below 0.015 even at ESS ~ 1000; tolerance 0.05.
    assert torch.allclose(freq, mix.probs, atol=0.05)
    x_naive = mix.sample((400,))
    assert _permutation_pvalue(out["x"][:, -1], x_naive) > 0.01


def _gaussian_mixture():
    w = torch.tensor([0.35, 0.65])
    locs = torch.tensor([[-0.8, 0.0], [0.8, 0.5]])
    covs = torch.stack([torch.diag(torch.tensor([0.5, 0.7]) ** 2), 0.5**2 * torch.eye(2)])
    comps = [MultivariateNormal(m, c) for m, c in zip(locs, covs, strict=True)]

    def log_prob(x):
        return torch.stack([d.log_prob(x) for d in comps], -1).add(w.log()).logsumexp(-1)

    mean = (w[:, None] * locs).sum(0)
    second = (w[:, None, None] * (covs + locs[:, :, None] * locs[:, None, :])).sum(0)
    return log_prob, mean, second - mean[:, None] * mean[None, :]


@pytest.mark.parametrize(
    "preconditioner", ["diagonal", pytest.param("metric", marks=pytest.mark.slow)]
)
def test_explicit_target_has_the_known_moments(float64, preconditioner):
    log_prob, mean, cov = _gaussian_mixture()
    kernel = LatentMALA(
        _flow(),
        target="explicit",
        log_prob_fn=log_prob,
        preconditioner=preconditioner,
        num_chains_batched=100,
    )
    out = kernel.run_chains(40, warmup_steps=40)
    x = out["x"].reshape(-1, 2)
    # 4000 draws from 100 chains, ESS above 1000 (checked: about 1500-2500): the standard
    # error of the mean is below 0.03 and of a covariance entry below 0.03; tolerance 0.1.
    assert torch.allclose(x.mean(0), mean, atol=0.1)
    assert torch.allclose(x.T.cov(), cov, atol=0.1)
    assert 0.4 < kernel.diagnostics()["acceptance rate"] < 0.75  # adapted toward 0.574


def _reference_log_target(comps, target, log_prob_fn):
    def f(z):
        x, ld = comps.transform(z.view(1, 1, 2))
        return x.view(2), ld.view(())

    def log_pi(z):
        x, ld = f(z)
        if target == "tempered":  # q_X(f(z)) through the inverse map: an independent path
            return comps.component_log_probs(x).view(())
        if target == "sharpened":  # beta log q_X(f(z)) + log|det J_f(z)|, beta = 2 (the default)
            return 2.0 * comps.component_log_probs(x).view(()) + ld
        if target == "base":
            return -0.5 * z.square().sum() - math.log(2 * math.pi)
        return log_prob_fn(x) + ld

    return f, log_pi


@pytest.mark.parametrize("target", ["tempered", "sharpened", "base", "explicit"])
@pytest.mark.parametrize("preconditioner", PRECONDITIONERS)
def test_detailed_balance_of_the_mh_step(float64, target, preconditioner):
    comps = _flow(scale=0.2)
    log_prob_fn = _gaussian_mixture()[0] if target == "explicit" else None
    kernel = LatentMALA(
        comps,
        target=target,
        log_prob_fn=log_prob_fn,
        preconditioner=preconditioner,
        num_chains_batched=1,
    )
    kernel.setup(0)
    if preconditioner == "diagonal":
        kernel._mass = torch.tensor([0.7, 1.6])
    gamma = 0.3
    f, log_pi = _reference_log_target(comps, target, log_prob_fn)

    def mass(at):  # reference preconditioner, from an autograd Jacobian
        if preconditioner == "metric":
            J = torch.autograd.functional.jacobian(lambda z: f(z)[0], at)
            return torch.linalg.inv(J.T @ J)
        return torch.diag(kernel._mass)

    def log_q(to, frm):  # reference proposal density, from autograd Jacobians and gradients
        g = torch.autograd.functional.jacobian(log_pi, frm)
        M = mass(frm)
        return MultivariateNormal(frm + gamma * M @ g, 2 * gamma * M).log_prob(to)

    c = torch.zeros(1, dtype=torch.long)
    for z, z_new in [
        (torch.tensor([0.3, -0.5]), torch.tensor([-0.4, 0.2])),
        (torch.tensor([1.2, 0.1]), torch.tensor([0.9, 0.6])),
    ]:
        s = kernel._at(kernel._evaluate(z[None]), c)
        s_new = kernel._at(kernel._evaluate(z_new[None]), c)
        a_fwd = kernel._log_accept_ratio(s, s_new, gamma)[0]
        a_bwd = kernel._log_accept_ratio(s_new, s, gamma)[0]
        lhs = log_pi(z) + log_q(z_new, z) + a_fwd.clamp(max=0)
        rhs = log_pi(z_new) + log_q(z, z_new) + a_bwd.clamp(max=0)
        assert torch.allclose(lhs, rhs, rtol=0, atol=1e-10)
        assert abs(float(a_fwd)) > 1e-3  # a case where the ratio matters

    # The proposal that is drawn is the one whose density enters the ratio.
    n = 40000
    z = torch.tensor([0.3, -0.5])
    s = kernel._at(kernel._evaluate(z.expand(n, 2)), torch.zeros(n, dtype=torch.long))
    draws = kernel._propose(s, gamma)
    g = torch.autograd.functional.jacobian(log_pi, z)
    M = mass(z)
    # Within 5 Monte Carlo standard errors of a Gaussian's sample mean and covariance:
    # sd(mean_i) = sqrt(S_ii / n), sd(cov_ij) = sqrt((S_ii S_jj + S_ij^2) / n), S = 2 gamma M.
    S = 2 * gamma * M
    d = S.diagonal()
    assert ((draws.mean(0) - (z + gamma * M @ g)).abs() <= 5 * (d / n).sqrt()).all()
    cov_se = ((d[:, None] * d[None, :] + S.square()) / n).sqrt()
    assert ((draws.T.cov() - S).abs() <= 5 * cov_se).all()


def test_step_size_adapts_only_in_warmup(float64):
    kernel = LatentMALA(_flow(), target="tempered", num_chains_batched=50, step_size=2.0)
    kernel.run_chains(10, warmup_steps=30)
    after_warmup = kernel.step_size
    assert after_warmup != 2.0
    kernel.setup(0)  # no warm-up: the step size stays where it starts
    params = kernel.initial_params
    for _ in range(5):
        params = kernel(params)
    assert kernel.step_size == 2.0


@pytest.mark.parametrize("num_chains_batched", [None, 3])
def test_pyro_mcmc_and_arviz_from_pyro_with_two_chains(float64, num_chains_batched):
    kernel = LatentMALA(_flow(), num_chains_batched=num_chains_batched, return_latent=True)
    with warnings.catch_warnings():  # on few CPUs Pyro warns that it runs the chains in turn
        warnings.simplefilter("ignore", UserWarning)
        mcmc = MCMC(kernel, num_samples=20, warmup_steps=10, num_chains=2, disable_progbar=True)
    mcmc.run()
    samples = mcmc.get_samples(group_by_chain=True)
    tail = (2,) if num_chains_batched is None else (3, 2)
    assert samples["x"].shape == (2, 20, *tail) and samples["z"].shape == (2, 20, *tail)
    idata = az.from_pyro(mcmc)
    assert idata.posterior["x"].shape[:2] == (2, 20)
    assert idata.sample_stats["diverging"].shape == (2, 20)
    summary = az.summary(idata, var_names=["x"])
    assert len(summary) == math.prod(tail)
    diag = mcmc.diagnostics()
    assert set(diag["acceptance rate"]) == {"chain 0", "chain 1"}


def test_pyro_flow_and_model_density(float64):
    import pyro.distributions as dist
    from pyro.distributions.transforms import affine_coupling

    base = dist.Normal(torch.zeros(2), torch.ones(2)).to_event(1)
    flow = dist.TransformedDistribution(base, [affine_coupling(2, hidden_dims=[8])])
    kernel = LatentMALA(flow, target="tempered", num_chains_batched=4)
    out = kernel.run_chains(5, warmup_steps=5)
    assert out["x"].shape == (4, 5, 2)
    # The tempered target is q_X(f(z)): check against the flow's own log_prob.
    z = torch.randn(6, 2)
    x = flow.transforms[0](z)
    assert torch.allclose(kernel.log_target(z), flow.log_prob(x.view_as(x)), atol=1e-10)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(target="posterior"), "expected target in"),
        (dict(preconditioner="dense"), "expected preconditioner in"),
        (dict(target="explicit"), "expected log_prob_fn exactly when"),
        (dict(step_size=-1.0), "expected a positive step_size"),
        (dict(num_chains_batched=0), "expected num_chains_batched"),
        (dict(target_accept_prob=1.5), "expected target_accept_prob"),
        (dict(beta=0.0), "expected a positive beta"),
        (dict(independence_prob=1.0), "expected independence_prob in"),
    ],
)
def test_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LatentMALA(_flow(), **kwargs)


def test_refuses_several_components_without_a_mixture():
    with pytest.raises(ValueError, match="expected components with K=1"):
        LatentMALA(_flow(K=2))
    with pytest.raises(TypeError, match="expected flow to be"):
        LatentMALA(torch.zeros(2))


@pytest.mark.parametrize("target", ["tempered", "sharpened", "base", "explicit"])
def test_detailed_balance_of_the_independence_move(float64, target):
    comps = _flow(scale=0.2)
    log_prob_fn = _gaussian_mixture()[0] if target == "explicit" else None
    kernel = LatentMALA(comps, target=target, log_prob_fn=log_prob_fn, independence_prob=0.5)
    _, log_pi = _reference_log_target(comps, target, log_prob_fn)

    def log_q(z):  # the proposal: the standard normal base, whatever the current state
        return -0.5 * z.square().sum() - math.log(2 * math.pi)

    for z, z_new in [
        (torch.tensor([0.3, -0.5]), torch.tensor([-1.4, 0.2])),
        (torch.tensor([1.2, 0.1]), torch.tensor([0.9, 1.6])),
    ]:
        ev, ev_new = kernel._evaluate(z[None]), kernel._evaluate(z_new[None])
        a_fwd = (kernel._log_importance(ev_new) - kernel._log_importance(ev))[0]
        a_bwd = -a_fwd
        lhs = log_pi(z) + log_q(z_new) + a_fwd.clamp(max=0)
        rhs = log_pi(z_new) + log_q(z) + a_bwd.clamp(max=0)
        assert torch.allclose(lhs, rhs, rtol=0, atol=1e-10)
        if target != "base":
            assert abs(float(a_fwd)) > 1e-3  # a case where the ratio matters
        else:
            assert abs(float(a_fwd)) < 1e-12  # pi = q_Z: always accepted


def test_independence_moves_keep_an_explicit_target(float64):
    log_prob, mean, cov = _gaussian_mixture()
    kernel = LatentMALA(
        _flow(),
        target="explicit",
        log_prob_fn=log_prob,
        independence_prob=0.5,
        num_chains_batched=100,
    )
    out = kernel.run_chains(40, warmup_steps=40)
    x = out["x"].reshape(-1, 2)
    # As test_explicit_target_has_the_known_moments: 4000 draws, ESS above 1000; tolerance 0.1.
    assert torch.allclose(x.mean(0), mean, atol=0.1)
    assert torch.allclose(x.T.cov(), cov, atol=0.1)
    diag = kernel.diagnostics()
    assert 0.4 < diag["acceptance rate"] < 0.75
    assert 0.05 < diag["independence acceptance rate"] < 1.0


def test_independence_moves_on_a_mixture_keep_the_weights(float64):
    mix = FlowMixture(_flow(K=3), logits=torch.tensor([0.0, 1.0, 2.0]))
    kernel = LatentMALA(
        mix, target="base", independence_prob=0.5, num_chains_batched=400, return_latent=True
    )
    out = kernel.run_chains(10, warmup_steps=5)
    assert kernel.diagnostics()["independence acceptance rate"] == 1.0  # pi = q_Z exactly
    freq = torch.bincount(out["component"].flatten(), minlength=3) / out["component"].numel()
    assert torch.allclose(freq, mix.probs, atol=0.05)  # as the test without independence moves
    assert _permutation_pvalue(out["x"][:, -1], mix.sample((400,))) > 0.01


def test_sharpened_target_of_an_affine_flow_is_the_squared_gaussian(float64):
    # An unperturbed flow is the identity; set_affine makes f(z) = loc + scale * z exactly, so
    # q_X = N(loc, scale^2) and q_X^2 (normalized) = N(loc, scale^2 / 2).
    comps = FlowComponents(1, 2, flow="affine_coupling", num_layers=2, hidden_dims=(8, 8))
    loc, scale = torch.tensor([[1.0, -2.0]]), torch.tensor([[0.5, 2.0]])
    comps.set_affine(loc, scale)
    kernel = LatentMALA(
        comps, target="sharpened", beta=2.0, independence_prob=0.3, num_chains_batched=200
    )
    out = kernel.run_chains(30, warmup_steps=30)
    x = out["x"].reshape(-1, 2)
    var = scale[0].square() / 2
    # 6000 draws with ESS above 1500: standard errors sd/39 and var/27 at most; 5 of them.
    assert ((x.mean(0) - loc[0]).abs() <= 5 * (var / 1500).sqrt()).all()
    assert ((x.var(0) / var - 1).abs() <= 5 * math.sqrt(2 / 1500)).all()


@pytest.mark.parametrize("target_accept_prob", [0.35, 0.8])
def test_step_size_adaptation_reaches_the_target_acceptance(float64, target_accept_prob):
    kernel = LatentMALA(
        _flow(), target="tempered", target_accept_prob=target_accept_prob, num_chains_batched=100
    )
    kernel.run_chains(20, warmup_steps=60)
    # 2000 post-warm-up accept/reject draws: a binomial standard error below 0.012; the frozen
    # dual-averaging step size lands within 0.07 of the aim (the default 0.574 is checked by
    # test_explicit_target_has_the_known_moments).
    assert abs(kernel.diagnostics()["acceptance rate"] - target_accept_prob) < 0.07


class _Split(Transform):
    """x = z + a tanh(b z) per coordinate: a flow with two modes per coordinate (near +-a) and a
    stretched, low-density bridge at x = 0, where |dx/dz| = 1 + a b is largest."""

    domain = constraints.real
    codomain = constraints.real
    bijective = True

    def __init__(self, a: float = 3.0, b: float = 4.0) -> None:
        super().__init__()
        self.a, self.b = a, b

    def _call(self, z):
        return z + self.a * torch.tanh(self.b * z)

    def log_abs_det_jacobian(self, z, x):
        return torch.log1p(self.a * self.b / torch.cosh(self.b * z) ** 2)


def _bimodal_flow():
    base = dist.Normal(torch.zeros(2), 1.0).to_event(1)
    return dist.TransformedDistribution(base, [_Split()])


def test_defaults_mix_and_cut_bridges_on_a_multimodal_flow(float64):
    flow = _bimodal_flow()
    kernel = LatentMALA(flow, num_chains_batched=16)  # the defaults a user gets
    assert (kernel.target, kernel.beta, kernel.independence_prob) == ("sharpened", 2.0, 0.5)
    x = kernel.run_chains(300, warmup_steps=150)["x"]  # (16, 300, 2)
    naive = flow.sample((20000,))

    def bridge(v):  # share of draws with a coordinate in the low-density bridge |x_d| < 1
        return float((v.abs() < 1.0).any(-1).double().mean())

    # Naive sampling puts about 12% of its draws there; the sharpened target about 2%.
    assert bridge(x.reshape(-1, 2)) < 0.5 * bridge(naive)
    # Every chain visits both modes of each coordinate with the target's (symmetric) weights.
    per_chain = (x > 0).double().mean(1)  # (16, 2)
    assert ((per_chain - 0.5).abs() < 0.25).all()
    rhat = az.rhat(az.from_dict(posterior={"x": x.numpy()}))["x"].values
    assert (rhat < 1.05).all()


def test_local_moves_only_warn_and_the_paper_scheme_is_available_by_name():
    with pytest.warns(UserWarning, match="set independence_prob > 0"):
        LatentMALA(_flow(), target="tempered", independence_prob=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        paper = LatentMALA.paper(_flow(), num_chains_batched=3)
        LatentMALA(_flow(), target="base", independence_prob=0.0)  # naive sampling: no warning
    assert (paper.target, paper.independence_prob, paper.num_chains_batched) == ("tempered", 0, 3)
    with pytest.raises(ValueError, match="expected no 'target' for LatentMALA.paper"):
        LatentMALA.paper(_flow(), target="base")


def test_component_site_holds_integers(float64):
    mix = FlowMixture(_flow(K=3), logits=torch.tensor([0.0, 1.0, 2.0]))
    kernel = LatentMALA(mix, num_chains_batched=4, return_latent=True)
    component = kernel.run_chains(5, warmup_steps=2)["component"]
    assert component.dtype == torch.int64 and component.shape == (4, 5)
    assert np.bincount(component.numpy().ravel(), minlength=3).sum() == 20
    # Through Pyro's MCMC (float storage, as its diagnostics and arviz.from_pyro need): whole
    # numbers in 0..K-1, which .long() turns into the same integers.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        mcmc = MCMC(kernel, num_samples=6, warmup_steps=2, num_chains=2, disable_progbar=True)
    mcmc.run()
    values = mcmc.get_samples()["component"]
    assert torch.equal(values, values.round()) and set(values.long().unique().tolist()) <= {0, 1, 2}
    assert az.from_pyro(mcmc).posterior["component"].shape == (2, 6, 4)
