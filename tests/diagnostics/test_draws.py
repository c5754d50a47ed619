"""to_inference_data on the README's Gaussian-mixture model: point-mass guides, per-point
variables kept out of ``az.summary``, ``Predictive`` draws with their plate dims dropped."""

import warnings

import arviz as az
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import HMC, MCMC, Predictive
from pyro.infer.autoguide import AutoDelta, AutoNormal

from pyro_mixflows.diagnostics import to_inference_data
from pyro_mixflows.guides import AutoFlowMixture

N, K, D = 30, 2, 2
GLOBAL_ROWS = ["weights[0]", "weights[1]"] + [f"locs[{i}, {j}]" for i in range(K) for j in range(D)]


def gmm(x):
    """The guide's ArviZ example: a Gaussian mixture, the assignment summed out exactly."""
    w = pyro.sample("weights", dist.Dirichlet(torch.ones(K)))
    locs = pyro.sample("locs", dist.Normal(0.0, 5.0).expand([K, D]).to_event(2))
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Categorical(w), infer={"enumerate": "parallel"})
        pyro.sample("x", dist.Normal(locs[z], 1.0).to_event(1), obs=x)


BLOCKED = pyro.poutine.block(gmm, hide=["z"])


@pytest.fixture
def x(float64):
    g = torch.Generator().manual_seed(0)
    return (
        torch.randn(N, D, generator=g) + torch.tensor([[3.0, 0.0]]) * (torch.arange(N) % 2)[:, None]
    )


def _guide(name, x):
    guide = {
        "AutoNormal": lambda: AutoNormal(BLOCKED),
        "AutoFlowMixture": lambda: AutoFlowMixture(BLOCKED, num_components=2),
        "AutoDelta": lambda: AutoDelta(BLOCKED),
    }[name]()
    guide(x)  # parameters created
    return guide


def _exact_loglik(weights, locs, x):
    """log p(x_n | w, locs) = logsumexp_k log w_k + log N(x_n; locs_k, I)."""
    components = dist.Normal(locs, 1.0).to_event(1).log_prob(x[:, None])  # (N, K)
    return (components + weights.log()).logsumexp(-1)  # (N,)


@pytest.mark.parametrize("guide_name", ["AutoNormal", "AutoFlowMixture"])
def test_summary_lists_only_global_sites_without_a_warning(x, guide_name):
    guide = _guide(guide_name, x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        idata = to_inference_data(guide, model=gmm, args=(x,), num_samples=40)
        summary = az.summary(idata)
    # ArviZ's shape check ("Shape validation failed", at least 2 chains of 4 draws) goes to its
    # own logger and leaves NaN diagnostics behind: every column is finite when it passed.
    assert summary.notna().all().all(), summary
    assert sorted(summary.index) == sorted(GLOBAL_ROWS)
    assert set(idata.posterior.data_vars) == {"weights", "locs"}
    assert idata.posterior["weights"].shape == (2, 20, K)  # 40 independent draws, 2 chains
    assert idata.posterior["locs"].shape == (2, 20, K, D)
    ll = idata.log_likelihood["x"].values  # (chain, draw, N): the marginal log p(x_n)
    assert ll.shape == (2, 20, N)
    w, locs = idata.posterior["weights"].values, idata.posterior["locs"].values
    for c, s in [(0, 0), (1, 19)]:
        exact = _exact_loglik(torch.as_tensor(w[c, s]), torch.as_tensor(locs[c, s]), x)
        torch.testing.assert_close(torch.as_tensor(ll[c, s]), exact, rtol=1e-10, atol=1e-10)


def test_local_variables_only_when_asked(x):
    guide = _guide("AutoNormal", x)
    idata = to_inference_data(guide, model=gmm, args=(x,), num_samples=8, include_local=True)
    resp = idata.posterior["responsibilities"]
    assert resp.dims == ("chain", "draw", "point", "component") and resp.shape == (2, 4, N, K)
    torch.testing.assert_close(torch.as_tensor(resp.values.sum(-1)), torch.ones(2, 4, N))
    assert idata.posterior["assignment"].shape == (2, 4, N)
    one_chain = to_inference_data(guide, model=gmm, args=(x,), num_samples=8, num_chains=1)
    assert one_chain.posterior["weights"].shape == (1, 8, K)
    with pytest.raises(ValueError, match="expected a number of draws that num_chains=3 divides"):
        to_inference_data(guide, model=gmm, args=(x,), num_samples=8, num_chains=3)


def test_point_mass_guide_is_refused_or_one_draw(x):
    guide = _guide("AutoDelta", x)
    with pytest.raises(
        ValueError,
        match=r"expected a guide with a posterior spread \(draws that differ\), got AutoDelta: "
        r"its 200 draws of \['locs', 'weights'\] are identical; a point estimate has no "
        r"posterior draws: use AutoNormal / AutoFlowMixture, or pass num_samples=1",
    ):
        to_inference_data(guide, model=gmm, args=(x,), num_samples=200)
    # Predictive's draws of a point mass: the same refusal
    with pytest.raises(ValueError, match="got samples: its 5 draws of"):
        to_inference_data(Predictive(gmm, guide=guide, num_samples=5)(x), model=gmm, args=(x,))
    point = to_inference_data(guide, model=gmm, args=(x,), num_samples=1)
    assert point.posterior["weights"].shape == (1, 1, K)
    median = guide.median()
    torch.testing.assert_close(
        torch.as_tensor(point.posterior["weights"].values[0, 0]), median["weights"]
    )
    # one draw: the log-density is kept, but no log_likelihood group for LOO to misread
    assert "log_likelihood" not in point.groups()
    exact = _exact_loglik(median["weights"], median["locs"], x)
    torch.testing.assert_close(
        torch.as_tensor(point.posterior["log_density"].values[0, 0]), exact, rtol=1e-10, atol=0
    )


def test_predictive_draws_lose_their_plate_dims(x):
    guide = _guide("AutoNormal", x)
    samples = Predictive(gmm, guide=guide, num_samples=20)(x)
    assert samples["weights"].shape == (20, 1, K)  # Pyro's layout: one 1 per plate dim
    idata = to_inference_data(samples, model=gmm, args=(x,))
    assert idata.posterior["weights"].shape == (2, 10, K)
    assert idata.posterior["locs"].shape == (2, 10, K, D)
    torch.testing.assert_close(
        torch.as_tensor(idata.posterior["weights"].values.reshape(20, K)),
        samples["weights"].reshape(20, K),
    )
    # observed sites: their posterior predictive draws; the sampled z is left out
    assert idata.posterior_predictive["x"].shape == (2, 10, N, D)
    assert "z" not in idata.posterior and "z" not in idata.posterior_predictive
    ll = idata.log_likelihood["x"].values.reshape(20, N)
    exact = _exact_loglik(samples["weights"][7, 0], samples["locs"][7, 0], x)
    torch.testing.assert_close(torch.as_tensor(ll[7]), exact, rtol=1e-10, atol=1e-10)

    # the Predictive itself: its guide and num_samples
    direct = to_inference_data(Predictive(gmm, guide=guide, num_samples=12), args=(x,))
    assert direct.posterior["weights"].shape == (2, 6, K)
    # posterior_samples without plate dims (as mcmc.get_samples() returns them) work too
    flat = {"weights": samples["weights"][:, 0], "locs": samples["locs"][:, 0]}
    from_flat = to_inference_data(Predictive(gmm, posterior_samples=flat), args=(x,))
    assert from_flat.posterior["weights"].shape == (2, 10, K)


def test_sample_shape_errors(x):
    guide = _guide("AutoNormal", x)
    samples = Predictive(gmm, guide=guide, num_samples=4)(x)
    with pytest.raises(
        ValueError, match=r"expected samples of 'weights' shaped \(S, \[1, ...,\] 2\)"
    ):
        to_inference_data({**samples, "weights": torch.ones(4, 3, K) / K}, model=gmm, args=(x,))
    with pytest.raises(ValueError, match="expected samples with one number of draws S"):
        to_inference_data({**samples, "weights": samples["weights"][:3]}, model=gmm, args=(x,))
    with pytest.raises(ValueError, match=r"expected the model's sample sites as keys, got \['w'\]"):
        to_inference_data({"w": samples["weights"]}, model=gmm, args=(x,))
    with pytest.raises(ValueError, match="expected model= with samples"):
        to_inference_data(samples, args=(x,))


def test_mcmc_local_sites_only_when_asked(float64):
    def local_model(x):
        loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(x)):
            u = pyro.sample("u", dist.Normal(loc, 1.0))
            pyro.sample("x", dist.Normal(u, 1.0), obs=x)

    x1 = torch.linspace(-1.0, 1.0, 5)
    kernel = HMC(local_model, step_size=0.1, num_steps=2, adapt_step_size=False)
    mcmc = MCMC(kernel, num_samples=4, warmup_steps=2, num_chains=1, disable_progbar=True)
    mcmc.run(x1)
    idata = to_inference_data(mcmc, args=(x1,))
    assert set(idata.posterior.data_vars) == {"loc"}
    assert idata.log_likelihood["x"].shape == (1, 4, 5)  # given the sampled u of each draw
    assert to_inference_data(mcmc, args=(x1,), include_local=True).posterior["u"].shape == (1, 4, 5)
    with pytest.raises(ValueError, match="expected num_chains=None with an MCMC run"):
        to_inference_data(mcmc, args=(x1,), num_chains=2)
