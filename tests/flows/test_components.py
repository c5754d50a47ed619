"""Exact contract checks for the component-batched flows, over one registry of cases."""

import pyro
import pytest
import torch
from pyro.distributions import Normal, TorchDistribution, TransformedDistribution, constraints
from pyro.distributions import transforms as T
from pyro.infer import SVI, Trace_ELBO
from torch.distributions import Transform

from pyro_mixflows import DistributionComponents, FlowComponents, FlowMixture
from pyro_mixflows.flows import FLOWS, RescaledComponents
from pyro_mixflows.flows.components import AFFINES

from ..conftest import perturb

# {id: constructor} registry of flow families: (K, D) -> FlowComponents
CASES = {
    "affine_coupling": lambda K, D: FlowComponents(
        K, D, flow="affine_coupling", num_layers=3, hidden_dims=(8, 8)
    ),
    "maf": lambda K, D: FlowComponents(K, D, flow="maf", num_layers=3, hidden_dims=(8, 8)),
    "spline_coupling": lambda K, D: FlowComponents(
        K, D, flow="spline_coupling", num_layers=3, hidden_dims=(8, 8), count_bins=6, bound=3.0
    ),
    # the full affine map (any full-covariance Gaussian) under flow layers, and alone
    "spline_coupling_full": lambda K, D: FlowComponents(
        K, D, flow="spline_coupling", num_layers=2, hidden_dims=(8,), count_bins=6, affine="full"
    ),
    "gaussian_full": lambda K, D: FlowComponents(K, D, flow="maf", num_layers=0, affine="full"),
}


def make(name, K, D):
    comps = CASES[name](K, D)
    perturb(comps, 0.1)
    return comps


def test_registry_covers_every_family():
    built = [CASES[name](2, 2) for name in CASES]
    assert {c.flow for c in built} == set(FLOWS)
    assert {c.config["affine"] for c in built} == set(AFFINES)


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("D", [2, 5])
def test_log_det_matches_autograd_jacobian(name, D, float64):
    K = 3
    comps = make(name, K, D)
    x = 1.5 * torch.randn(4, D)  # spreads points over spline bins and tails
    for n in range(x.shape[0]):
        for k in range(K):

            def to_base(v, k=k):
                return comps.inverse(v.expand(K, D).unsqueeze(0))[0][0, k]

            def to_data(v, k=k):
                u = torch.zeros(1, K, D).index_copy(1, torch.tensor([k]), v.view(1, 1, D))
                return comps.transform(u)[0][0, k]

            jac = torch.autograd.functional.jacobian(to_base, x[n])
            u, log_det = comps.inverse(x[n].expand(1, K, D))
            assert torch.allclose(log_det[0, k], torch.linalg.slogdet(jac)[1], atol=1e-8)
            jac_fwd = torch.autograd.functional.jacobian(to_data, u[0, k])
            _, log_det_fwd = comps.transform(u)
            assert torch.allclose(log_det_fwd[0, k], torch.linalg.slogdet(jac_fwd)[1], atol=1e-8)


@pytest.mark.parametrize("name", CASES)
def test_every_layer_log_det_matches_autograd(name, float64):
    """Each layer on its own, not only their composition."""
    K, D = 2, 4
    comps = make(name, K, D)
    x = torch.randn(K, 3, D)
    for layer in [*comps.layers, comps.affine]:
        for direction in ("to_base", "to_data"):
            fn = getattr(layer, direction)
            out, log_det = fn(x)
            for k in range(K):
                for m in range(3):

                    def one(v, k=k, m=m, fn=fn):
                        y = x.clone()
                        y[k, m] = v
                        return fn(y)[0][k, m]

                    jac = torch.autograd.functional.jacobian(one, x[k, m])
                    assert torch.allclose(log_det[k, m], torch.linalg.slogdet(jac)[1], atol=1e-8)


@pytest.mark.parametrize("name", CASES)
def test_inverse_round_trip(name, float64):
    comps = make(name, 4, 3)
    u = torch.randn(5, 4, 3)
    x, ld_fwd = comps.transform(u)
    u2, ld_inv = comps.inverse(x)
    assert torch.allclose(u2, u, atol=1e-10)
    assert torch.allclose(ld_fwd, -ld_inv, atol=1e-10)


@pytest.mark.parametrize("name", CASES)
def test_component_density_normalizes(name, float64):
    """Each 2-D component integrates to 1 on a grid (midpoint rule)."""
    comps = make(name, 2, 2)
    lim, n = 9.0, 600
    g = (torch.arange(n) + 0.5) / n * 2 * lim - lim
    xx, yy = torch.meshgrid(g, g, indexing="ij")
    pts = torch.stack([xx, yy], -1).reshape(-1, 2)
    with torch.no_grad():
        mass = comps.component_log_probs(pts).exp().sum(0) * (2 * lim / n) ** 2
    assert torch.allclose(mass, torch.ones(2, dtype=mass.dtype), atol=1e-3), mass


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("batch", [(), (3,), (2, 3)])
def test_shapes(name, batch):
    comps = make(name, 4, 2)
    x = torch.randn(*batch, 2)
    assert comps.component_log_probs(x).shape == (*batch, 4)
    assert comps.rsample(batch).shape == (*batch, 4, 2)
    index = torch.randint(4, batch)
    assert comps.rsample_index(index).shape == (*batch, 2)
    u, ld = comps.inverse(x.unsqueeze(-2))
    assert u.shape == (*batch, 4, 2) and ld.shape == (*batch, 4)


@pytest.mark.parametrize("name", CASES)
def test_single_component(name, float64):
    comps = make(name, 1, 2)
    x = torch.randn(6, 2)
    assert comps.component_log_probs(x).shape == (6, 1)
    assert comps.rsample_index(torch.zeros(6, dtype=torch.long)).shape == (6, 2)


def test_maf_works_in_one_dimension(float64):
    comps = perturb(FlowComponents(2, 1, flow="maf", num_layers=2, hidden_dims=(4,)))
    g = torch.linspace(-15, 15, 20001).unsqueeze(-1)
    mass = comps.component_log_probs(g).exp().sum(0) * (30 / 20000)
    assert torch.allclose(mass, torch.ones(2, dtype=mass.dtype), atol=1e-3)


@pytest.mark.parametrize("name", CASES)
def test_gradient_reaches_every_parameter(name):
    comps = make(name, 3, 4)
    lp = comps.component_log_probs(torch.randn(16, 4)).sum() + comps.rsample((2,)).sum()
    lp.backward()
    for pname, p in comps.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", CASES)
def test_components_are_independent(name, float64):
    """Changing component 1's parameters leaves component 0's density untouched."""
    comps = make(name, 2, 3)
    x = torch.randn(5, 3)
    before = comps.component_log_probs(x)
    with torch.no_grad():
        for p in comps.parameters():
            p[1].add_(0.05)
    after = comps.component_log_probs(x)
    assert torch.equal(before[:, 0], after[:, 0])
    assert not torch.allclose(before[:, 1], after[:, 1])


@pytest.mark.parametrize("name", CASES)
def test_state_dict_round_trip(name, tmp_path):
    comps = make(name, 3, 2)
    torch.save(comps.state_dict(), tmp_path / "c.pt")
    fresh = CASES[name](3, 2)
    fresh.load_state_dict(torch.load(tmp_path / "c.pt"))
    x = torch.randn(7, 2)
    assert torch.equal(fresh.component_log_probs(x), comps.component_log_probs(x))


def test_batched_and_heterogeneous_paths_agree(float64):
    """Every component of a FlowComponents, wrapped as K separate distributions, gives the same numbers."""
    comps = make("spline_coupling", 3, 2)

    class OneComponent(torch.distributions.Distribution):
        arg_constraints = {}
        support = torch.distributions.constraints.real_vector
        has_rsample = True

        def __init__(self, k):
            self.k = k
            super().__init__(torch.Size(), torch.Size([2]), validate_args=False)

        def log_prob(self, x):
            return comps.component_log_probs(x)[..., self.k]

        def rsample(self, sample_shape=torch.Size()):
            return comps.rsample(sample_shape)[..., self.k, :]

    hetero = DistributionComponents([OneComponent(k) for k in range(3)])
    x = torch.randn(9, 2)
    assert torch.allclose(hetero.component_log_probs(x), comps.component_log_probs(x), atol=1e-12)


def test_heterogeneous_pyro_flows_match_manual_loop(float64):
    flows = [T.spline_coupling(2, count_bins=4) for _ in range(2)]
    for f in flows:
        perturb(f, 0.1)
    base = Normal(torch.zeros(2), torch.ones(2)).to_event(1)
    dists = [TransformedDistribution(base, [f]) for f in flows]
    hetero = DistributionComponents(dists)
    assert len(list(hetero.parameters())) == sum(len(list(f.parameters())) for f in flows)
    x = torch.randn(6, 2)
    expected = torch.stack([d.log_prob(x) for d in dists], -1)
    assert torch.allclose(hetero.component_log_probs(x), expected)
    u, ld = hetero.inverse(x.unsqueeze(-2))
    x2, ld2 = hetero.transform(u)
    assert torch.allclose(x2, x.unsqueeze(-2).expand(6, 2, 2), atol=1e-8)
    assert torch.allclose(ld, -ld2, atol=1e-8)


def test_heterogeneous_path_is_not_fooled_by_transform_caches(float64):
    """Pyro caches a transform's last inverse by tensor identity; a parameter update must show."""
    flow = T.spline_coupling(2, count_bins=4)
    base = Normal(torch.zeros(2), torch.ones(2)).to_event(1)
    hetero = DistributionComponents([TransformedDistribution(base, [flow])])
    x = torch.randn(5, 2)
    before = hetero.component_log_probs(x)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.2)
    after = hetero.component_log_probs(x)
    assert not torch.allclose(before, after)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_components=0, dim=2), "num_components to be an int >= 1"),
        (dict(num_components=2, dim=0), "dim to be an int >= 1"),
        (dict(num_components=2, dim=2, flow="glow"), "expected flow in"),
        (dict(num_components=2, dim=1, flow="affine_coupling"), "dim >= 2"),
        (dict(num_components=2, dim=2, activation="swish"), "expected activation"),
    ],
)
def test_constructor_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FlowComponents(**kwargs)


def test_wrong_event_size_is_refused():
    comps = FlowComponents(2, 3, flow="maf")
    with pytest.raises(ValueError, match=r"event size D=3.*got shape \(4, 2\)"):
        comps.component_log_probs(torch.randn(4, 2))


def test_heterogeneous_errors():
    with pytest.raises(ValueError, match="at least one"):
        DistributionComponents([])
    a = Normal(torch.zeros(2), 1.0).to_event(1)
    b = Normal(torch.zeros(3), 1.0).to_event(1)
    with pytest.raises(ValueError, match="event shape"):
        DistributionComponents([a, b])


def test_set_affine_places_components(float64):
    comps = FlowComponents(2, 2, flow="affine_coupling")
    comps.set_affine(torch.tensor([[5.0, 0.0], [-5.0, 0.0]]), torch.full((2, 2), 0.5))
    lp = comps.component_log_probs(torch.tensor([[5.0, 0.0], [-5.0, 0.0]]))
    assert lp[0, 0] > lp[0, 1] and lp[1, 1] > lp[1, 0]
    with pytest.raises(ValueError, match="shape"):
        comps.set_affine(torch.zeros(3, 2), torch.ones(3, 2))


class _NetNormal(TorchDistribution):
    """A Pyro distribution backed by an nn.Module it holds: N(net.bias, I)."""

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, dim):
        self.net = torch.nn.Linear(1, dim)
        super().__init__(torch.Size(), torch.Size([dim]), validate_args=False)

    def log_prob(self, x):
        return Normal(self.net.bias, 1.0).to_event(1).log_prob(x)

    def rsample(self, sample_shape=torch.Size()):
        return Normal(self.net.bias, 1.0).to_event(1).rsample(sample_shape)


class _Hyper(torch.nn.Module):
    """zuko-style: the transform calls this network each time it is used."""

    def __init__(self, dim):
        super().__init__()
        self.shift = torch.nn.Parameter(torch.zeros(dim))

    def forward(self, context):
        return self.shift + context


class _LazyShift(Transform):
    """x = u + meta(); ``meta`` a functools.partial over a bound method, as zuko builds them."""

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    def __init__(self, meta):
        super().__init__()
        self.meta = meta

    def _call(self, u):
        return u + self.meta()

    def _inverse(self, x):
        return x - self.meta()

    def log_abs_det_jacobian(self, u, x):
        return torch.zeros(u.shape[:-1], dtype=u.dtype)


def test_distribution_components_register_reachable_modules_and_svi_trains_them(float64):
    import functools

    from pyro.contrib.zuko import ZukoToPyro

    hyper = _Hyper(2)
    base = Normal(torch.zeros(2), torch.ones(2)).to_event(1)
    zuko_like = ZukoToPyro(
        TransformedDistribution(base, [_LazyShift(functools.partial(hyper, torch.zeros(2)))])
    )
    free = torch.nn.Parameter(torch.zeros(2))
    dists = [_NetNormal(2), zuko_like, Normal(free, 1.0).to_event(1)]
    comps = DistributionComponents(dists)
    expected = [*dists[0].net.parameters(), hyper.shift, free]
    got = list(comps.parameters())
    assert len(got) == len(expected) and all(any(p is q for q in got) for p in expected)

    x = torch.randn(60, 2) + torch.tensor([2.0, -1.0])

    def model(x):
        pyro.module("comps", comps)
        with pyro.plate("data", len(x)):
            pyro.sample("x", FlowMixture(comps, logits=torch.zeros(3)), obs=x)

    used = [dists[0].net.bias, hyper.shift, free]  # (the Linear's weight plays no part)
    before = [p.detach().clone() for p in used]
    svi = SVI(model, lambda x: None, pyro.optim.Adam({"lr": 0.1}), Trace_ELBO())
    for _ in range(20):
        svi.step(x)
    assert all(not torch.equal(b, p) for b, p in zip(before, used, strict=True))


def test_rescaled_components_change_of_variables(float64):
    inner = perturb(FlowComponents(2, 2, flow="affine_coupling", num_layers=2, hidden_dims=(8,)))
    loc, scale = torch.tensor([1.0, -2.0]), torch.tensor([3.0, 0.5])
    comps = RescaledComponents(inner, loc, scale)
    x = torch.randn(5, 2)
    expected = inner.component_log_probs((x - loc) / scale) - scale.log().sum()
    assert torch.allclose(comps.component_log_probs(x), expected, rtol=1e-12)
    u = torch.randn(5, 2, 2)  # (N, K, D)
    x2, log_det = comps.transform(u)
    u2, log_det_inv = comps.inverse(x2)
    assert torch.allclose(u2, u, atol=1e-10) and torch.allclose(log_det, -log_det_inv, atol=1e-10)
    # log p_k(x) = log N(u) - log|det dx/du| at x = f_k(u), for each k.
    lp = comps.component_log_probs(x2)  # (N, K, K): every x2[:, j] under every component k
    diag = lp.diagonal(dim1=-2, dim2=-1)  # (N, K)
    assert torch.allclose(diag, comps.base_log_prob(u) - log_det, atol=1e-10)
    assert comps.rsample_index(torch.tensor([0, 1, 1])).shape == (3, 2)
    with pytest.raises(ValueError, match="positive scale"):
        RescaledComponents(inner, loc, -scale)
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        RescaledComponents(inner, loc[:1], scale)
