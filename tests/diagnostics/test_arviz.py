"""to_inference_data: the log_likelihood group holds the exact marginal log p(x_n), not a sampled-z one."""

import warnings

import arviz as az
import matplotlib
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import HMC, MCMC
from pyro.infer.autoguide import AutoNormal

from pyro_mixflows import FlowComponents, FlowMixture, LatentMALA
from pyro_mixflows.diagnostics import to_inference_data
from tests.conftest import perturb

matplotlib.use("Agg")
N, K = 25, 2


@pytest.fixture
def setup(float64):
    comps = perturb(FlowComponents(K, 2, flow="affine_coupling", num_layers=2, hidden_dims=(8,)))
    comps.set_affine(torch.tensor([[-1.0, 0.0], [1.0, 0.5]]), 0.6 * torch.ones(K, 2))
    x = FlowMixture(comps, probs=torch.tensor([0.3, 0.7])).sample((N,))

    def model(x, subsample=None):
        w = pyro.sample("weights", dist.Dirichlet(torch.ones(K)))
        with pyro.plate("data", x.shape[0], subsample=subsample) as idx:
            z = pyro.sample("z", dist.Categorical(w))
            pyro.sample("x", comps.component(z), obs=x[idx])

    return comps, x, model


def _exact(comps, weights, x):
    mix = FlowMixture(comps, probs=torch.as_tensor(weights))
    return mix.log_prob(x), mix.responsibilities(x)


def test_guide_log_likelihood_is_the_exact_marginal(setup):
    comps, x, model = setup
    guide = AutoNormal(pyro.poutine.block(model, hide=["z"]))
    guide(x)
    idata = to_inference_data(guide, model=model, args=(x,), num_samples=40, include_local=True)
    # 40 independent draws as 2 chains of 20
    w = idata.posterior["weights"].values.reshape(1, 40, K)
    ll = idata.log_likelihood["x"].values.reshape(1, 40, N)
    resp = idata.posterior["responsibilities"].values  # (2, 20, N, K)
    assert resp.shape == (2, 20, N, K) and idata.log_likelihood["x"].shape == (2, 20, N)
    resp = resp.reshape(1, 40, N, K)
    assert len(set(w[0, :, 0].round(8))) == 40  # real posterior draws, not one point
    for s in range(40):
        exact_ll, exact_resp = _exact(comps, w[0, s], x)
        assert torch.allclose(torch.as_tensor(ll[0, s]), exact_ll, rtol=1e-10, atol=1e-10)
        assert torch.allclose(torch.as_tensor(resp[0, s]), exact_resp, atol=1e-10)
    assert (idata.posterior["assignment"].values.reshape(1, 40, N) == resp.argmax(-1)).all()
    assert idata.observed_data["x"].shape == (N, 2)

    # What az.from_pyro would store: log p(x_n | z_n, w) with a sampled z_n. It differs.
    sampled = []
    for s in range(40):
        conditioned = pyro.poutine.condition(model, data={"weights": torch.as_tensor(w[0, s])})
        trace = pyro.poutine.trace(conditioned).get_trace(x)
        sampled.append(trace.nodes["x"]["fn"].log_prob(x))
    sampled = torch.stack(sampled)  # (40, N)
    assert not torch.allclose(sampled, torch.as_tensor(ll[0]), atol=1e-3)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a few draws: Pareto-k warnings are expected
        loo = az.loo(idata)
    assert loo.elpd_loo < 0 and loo.n_data_points == N
    summary = az.summary(idata, var_names=["weights"])
    assert list(summary.index) == ["weights[0]", "weights[1]"]
    axes = az.plot_trace(idata, var_names=["weights"])
    assert axes.shape == (1, 2) and axes[0, 0].lines
    assert az.plot_rank(idata, var_names=["weights"]).size == 2


def test_mcmc_on_an_enumerated_model(setup):
    comps, x, model = setup
    kernel = HMC(model, step_size=0.05, num_steps=3, adapt_step_size=False, max_plate_nesting=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        mcmc = MCMC(kernel, num_samples=8, warmup_steps=4, num_chains=2, disable_progbar=True)
    mcmc.run(x)
    with pytest.raises(TypeError, match="expected the run's data as args="):
        to_inference_data(mcmc)  # the run's data are not public: the model needs them
    idata = to_inference_data(mcmc, args=(x,))
    assert idata.posterior["weights"].shape == (2, 8, K)
    assert idata.sample_stats["diverging"].shape == (2, 8)
    w, ll = idata.posterior["weights"].values, idata.log_likelihood["x"].values
    for c in range(2):
        for s in range(8):
            exact_ll, _ = _exact(comps, w[c, s], x)
            assert torch.allclose(torch.as_tensor(ll[c, s]), exact_ll, rtol=1e-10, atol=1e-10)
    assert az.summary(idata, var_names=["weights"]).shape[0] == K
    assert az.from_pyro(mcmc).posterior["weights"].shape == (2, 8, K)


def test_flow_mixture_and_holders(setup):
    comps, x, _ = setup
    mix = FlowMixture(comps, probs=torch.tensor([0.4, 0.6]))

    class Holder:
        mixture_ = mix

    for source in (mix, Holder()):
        idata = to_inference_data(source, data=x)
        assert idata.posterior["weights"].shape == (1, 1, K)
        # One plug-in draw: the log-density is kept in the posterior group, not log_likelihood.
        ll = torch.as_tensor(idata.posterior["log_density"].values[0, 0])
        assert torch.allclose(ll, mix.log_prob(x), rtol=1e-12)
        assert "log_likelihood" not in idata.groups()


def test_estimator_inference_data_is_in_data_units_and_loo_says_why_not():
    from pyro_mixflows import VariationalFlowMixture
    from pyro_mixflows.datasets import make_two_moons

    X = make_two_moons(120, seed=0)[0] * 3 + 1  # off the unit scale
    fast = dict(flow="affine_coupling", max_steps=20, init="kmeans")
    est = VariationalFlowMixture(2, random_state=0, **fast).fit(X)
    idata = to_inference_data(est, data=X, include_local=True)
    log_density = idata.posterior["log_density"].values[0, 0]
    assert log_density.shape == (120,)
    np.testing.assert_allclose(log_density, est.score_samples(X), rtol=1e-6)
    np.testing.assert_allclose(
        idata.posterior["responsibilities"].values[0, 0], est.predict_proba(X), atol=1e-6
    )
    other = to_inference_data(VariationalFlowMixture(1, random_state=0, **fast).fit(X), data=X)
    with pytest.raises(TypeError, match="log likelihood not found"):  # not an IndexError
        az.loo(idata)
    with pytest.raises(TypeError, match="ELPD computation"):
        az.compare({"two": idata, "one": other})


def test_loo_and_compare_on_svi_fits(setup):
    comps, x, model = setup
    fits = {}
    for name, init_scale in (("narrow", 0.05), ("wide", 0.5)):
        guide = AutoNormal(pyro.poutine.block(model, hide=["z"]), init_scale=init_scale)
        guide(x)
        fits[name] = to_inference_data(guide, model=model, args=(x,), num_samples=50)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Pareto k warnings on 50 draws
        loo = az.loo(fits["narrow"])
        table = az.compare(fits)
    assert loo.n_data_points == N and np.isfinite(loo.elpd_loo)
    assert set(table.index) == {"narrow", "wide"}


def test_mixture_fn_over_guide_draws(setup):
    comps, x, model = setup
    guide = AutoNormal(pyro.poutine.block(model, hide=["z"]))
    guide(x)
    idata = to_inference_data(
        guide,
        model=model,
        args=(x,),
        num_samples=5,
        data=x,
        mixture_fn=lambda draw: FlowMixture(comps, probs=draw["weights"]),
    )
    w, ll = idata.posterior["weights"].values, idata.log_likelihood["x"].values
    assert torch.allclose(torch.as_tensor(ll[0, 3]), _exact(comps, w[0, 3], x)[0], rtol=1e-12)


def test_latent_mala_run(float64):
    comps = perturb(FlowComponents(1, 2, flow="affine_coupling", num_layers=2, hidden_dims=(8,)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        mcmc = MCMC(LatentMALA(comps), num_samples=15, warmup_steps=5, num_chains=2)
    mcmc.run()
    idata = to_inference_data(mcmc)
    assert idata.posterior["x"].shape == (2, 15, 2)
    assert idata.sample_stats["diverging"].shape == (2, 15)
    assert "log_likelihood" not in idata.groups()
    # az.from_pyro too: the kernel's target is the latent site's own density, no observed site.
    groups = az.from_pyro(mcmc).groups()
    assert "log_likelihood" not in groups and "observed_data" not in groups


def test_errors(setup):
    comps, x, model = setup
    guide = AutoNormal(pyro.poutine.block(model, hide=["z"]))
    with pytest.raises(ValueError, match="expected model= with a guide"):
        to_inference_data(guide)

    def local_model(x, subsample=None):
        with pyro.plate("data", x.shape[0]):
            u = pyro.sample("u", dist.Normal(0.0, 1.0))
            pyro.sample(
                "x", dist.Normal(u.unsqueeze(-1), 1.0).expand([x.shape[0], 2]).to_event(1), obs=x
            )

    def empty_guide(x, subsample=None):
        pass

    with pytest.raises(ValueError, match="expected every latent site in plate 'data'"):
        to_inference_data(empty_guide, model=local_model, args=(x,), num_samples=1)
    with pytest.raises(ValueError, match="got empty_guide: it draws no global latent site"):
        to_inference_data(empty_guide, model=local_model, args=(x,), num_samples=2)
    with pytest.raises(TypeError, match="expected an MCMC run"):
        to_inference_data(3.0)
