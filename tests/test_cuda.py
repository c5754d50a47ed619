"""The core, the fit loop and latent MALA on a GPU (skipped without CUDA, see conftest)."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import config_enumerate
from torch import nn

from pyro_mixflows import FlowComponents, FlowMixture
from pyro_mixflows.flows import FLOWS
from pyro_mixflows.infer import fit, load_checkpoint
from tests.conftest import perturb

pytestmark = pytest.mark.cuda
DEVICE = torch.device("cuda")


@pytest.mark.parametrize("flow", FLOWS)
def test_component_log_probs_follow_device_and_dtype(flow):
    comps = perturb(FlowComponents(3, 2, flow=flow, num_layers=2, hidden_dims=(16,)))
    x = torch.randn(10, 2)
    expected = comps.component_log_probs(x)  # (N, K) on the CPU
    comps.to(DEVICE)
    got = comps.component_log_probs(x.to(DEVICE))
    assert got.device.type == "cuda" and got.shape == (10, 3)
    # float32 on two devices: kernels differ in summation order only
    torch.testing.assert_close(got.cpu(), expected, rtol=1e-4, atol=1e-4)
    comps.double()
    assert comps.component_log_probs(x.to(DEVICE, torch.float64)).dtype == torch.float64
    u, logdet = comps.inverse(x.to(DEVICE, torch.float64).unsqueeze(-2))
    assert u.device.type == "cuda" and logdet.shape == (10, 3)


def test_flow_mixture_samples_and_scores_on_cuda():
    comps = perturb(FlowComponents(3, 2, num_layers=2, hidden_dims=(16,))).to(DEVICE)
    mix = FlowMixture(comps, logits=torch.zeros(3, device=DEVICE))
    x, z = mix.sample_with_components((50,))
    assert x.shape == (50, 2) and z.shape == (50,)
    assert x.device.type == "cuda" and z.device.type == "cuda"
    assert torch.isfinite(mix.log_prob(x)).all()
    resp = mix.responsibilities(x)  # (N, K)
    torch.testing.assert_close(resp.sum(-1), torch.ones(50, device=DEVICE))
    assert mix.sample((4, 5)).shape == (4, 5, 2)


class _Mixture(nn.Module):
    def __init__(self):
        super().__init__()
        self.comps = perturb(FlowComponents(2, 2, flow="affine_coupling", hidden_dims=(8,)), 0.05)

    def model(self, x, subsample=None):
        pyro.module("components", self.comps)
        logits = pyro.param("logits", lambda: x.new_zeros(2))
        with pyro.plate("data", x.shape[0], subsample=subsample) as idx:
            z = pyro.sample("z", dist.Categorical(logits=logits), infer={"enumerate": "parallel"})
            pyro.sample("x", self.comps.component(z), obs=x[idx])

    def guide(self, x, subsample=None):
        pass


def test_fit_on_cuda(tmp_path):
    x = torch.randn(64, 2)  # on the CPU: fit moves it
    mixture = _Mixture()  # on the CPU: fit moves the module behind the bound methods
    result = fit(
        mixture.model, mixture.guide, x, num_steps=20, batch_size=16, val_args=(x[:16],),
        eval_every=5, optim={"lr": 0.01}, seed=0, device="cuda", checkpoint=tmp_path / "c.pt",
    )  # fmt: skip
    assert len(result.losses) == 20 and all(map(torch.isfinite, torch.tensor(result.losses)))
    assert all(p.device.type == "cuda" for p in mixture.parameters())
    store = pyro.get_param_store()
    assert all(store._params[k].device.type == "cuda" for k in store.keys())

    @config_enumerate
    def model(x, subsample=None):  # a function model with a module the caller placed
        pyro.module("c", mixture.comps)
        with pyro.plate("data", x.shape[0], subsample=subsample) as idx:
            z = pyro.sample("z", dist.Categorical(logits=x.new_zeros(2)))
            pyro.sample("x", mixture.comps.component(z), obs=x[idx])

    fit(model, lambda x, subsample=None: None, x, num_steps=3, device="cuda")
    pyro.clear_param_store()
    state = load_checkpoint(tmp_path / "c.pt", map_location="cpu", restore_rng=False)
    assert state["step"] == 20 and pyro.param("logits").device.type == "cpu"


@pytest.mark.parametrize("preconditioner", ["identity", "diagonal"])
def test_latent_mala_runs_on_cuda(preconditioner):
    from pyro_mixflows import LatentMALA

    comps = perturb(FlowComponents(2, 2, num_layers=2, hidden_dims=(16,))).to(DEVICE)
    mix = FlowMixture(comps, logits=torch.zeros(2, device=DEVICE))
    kernel = LatentMALA(mix, target="tempered", preconditioner=preconditioner, num_chains_batched=4)
    x = kernel.run_chains(10, warmup_steps=10)["x"]
    assert x.shape == (4, 10, 2) and x.device.type == "cuda"
    assert torch.isfinite(x).all()


def test_dirichlet_process_merge_on_cuda():
    import numpy as np

    from pyro_mixflows import VariationalFlowMixture

    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(0, 1, (150, 2)), rng.normal(0, 1, (150, 2)) + [12.0, 0.0]])
    small = dict(flow="affine_coupling", num_layers=2, hidden_dims=(8,), max_steps=60)
    model = VariationalFlowMixture(
        6, weights="dirichlet_process", init="kmeans", random_state=0, device="cuda", **small
    ).fit(X)
    assert model.n_components_ == 2 and model.effective_n_components_ == 2
    assert next(model.module_.parameters()).device.type == "cuda"
    assert np.isfinite(model.score_samples(X)).all()


def test_the_estimator_trains_its_candidates_on_cuda_by_default(tmp_path):
    import numpy as np

    from pyro_mixflows import VariationalFlowMixture
    from pyro_mixflows.datasets import make_two_moons

    X, _ = make_two_moons(400, seed=0)
    model = VariationalFlowMixture(2, random_state=0, max_steps=60).fit(X)  # device="auto"
    assert model.fit_stats_["device"].startswith("cuda")
    assert next(model.module_.parameters()).device.type == "cuda"
    assert sum(c["steps"] for c in model.candidates_) > 0
    assert np.isfinite(model.score_samples(X)).all() and model.predict(X).shape == (400,)
    model.save(tmp_path / "m.pt")
    on_cpu = VariationalFlowMixture.load(tmp_path / "m.pt", device="cpu")
    np.testing.assert_allclose(
        on_cpu.score_samples(X), model.score_samples(X), rtol=1e-4, atol=1e-4
    )
