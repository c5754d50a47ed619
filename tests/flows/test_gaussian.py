"""Exact checks: with ``affine="full"`` every component can be exactly a full-covariance Gaussian."""

import numpy as np
import pytest
import torch
from sklearn.mixture import GaussianMixture

from pyro_mixflows import FlowComponents, FlowMixture
from pyro_mixflows.flows import FLOWS
from pyro_mixflows.flows.layers import TriangularAffine

from ..conftest import perturb


@pytest.fixture(scope="module")
def gm():
    rng = np.random.default_rng(0)
    A = rng.normal(size=(3, 3))
    X = np.concatenate([rng.normal(size=(80, 3)) @ A + 4 * k for k in range(3)])
    return GaussianMixture(3, covariance_type="full", random_state=0).fit(X), X


@pytest.mark.parametrize("flow", FLOWS)
def test_fresh_flow_layers_are_the_identity_so_components_are_the_gm(flow, gm, float64):
    """K fresh flow components, affine maps set from a GaussianMixture, score exactly as it does."""
    g, X = gm
    comps = FlowComponents(3, 3, flow=flow, num_layers=3, hidden_dims=(8,), affine="full")
    cholesky = torch.linalg.cholesky(torch.as_tensor(g.covariances_))
    comps.set_gaussian(torch.as_tensor(g.means_), cholesky)
    x = torch.as_tensor(X)
    # The fresh flow layers are identities up to fixed coordinate permutations, which leave
    # N(0, I) unchanged: zero log-determinant, same norm.
    v = torch.randn(10, 3, 3)
    w, log_det = FlowComponents(3, 3, flow=flow, num_layers=3, hidden_dims=(8,)).inverse(v)
    assert torch.allclose(log_det, torch.zeros(10, 3), atol=1e-12)
    assert torch.allclose(w.norm(dim=-1), v.norm(dim=-1), atol=1e-12)
    mixture = FlowMixture(comps, probs=torch.as_tensor(g.weights_))
    np.testing.assert_allclose(
        mixture.log_prob(x).detach().numpy(), g.score_samples(X), rtol=0, atol=1e-6
    )


def test_triangular_affine_holds_any_cholesky_factor(float64):
    K, D = 2, 4
    layer = TriangularAffine(K, D)
    assert torch.equal(layer.scale_tril, torch.eye(D).expand(K, D, D))  # identity at start
    A = torch.randn(K, D, D)
    L = torch.linalg.cholesky(A @ A.mT + torch.eye(D))
    loc = torch.randn(K, D)
    layer.set(loc, L)
    assert torch.allclose(layer.scale_tril, L, atol=1e-12)
    u = torch.randn(K, 5, D)
    x, log_det = layer.to_data(u)
    assert torch.allclose(x, loc.unsqueeze(1) + u @ L.mT, atol=1e-12)
    assert torch.allclose(log_det, torch.logdet(L).unsqueeze(-1).expand(K, 5), atol=1e-12)
    assert torch.allclose(layer.to_base(x)[0], u, atol=1e-10)
    with pytest.raises(ValueError, match="positive diagonal"):
        layer.set(loc, -L)
    with pytest.raises(ValueError, match="expected loc"):
        layer.set(loc[:1], L)


def test_set_affine_and_set_gaussian_on_both_affine_kinds(float64):
    full = FlowComponents(2, 2, flow="affine_coupling", num_layers=1, affine="full")
    diag = FlowComponents(2, 2, flow="affine_coupling", num_layers=1)
    loc, scale = torch.tensor([[1.0, 2.0], [-1.0, 0.0]]), torch.tensor([[0.5, 2.0], [1.0, 3.0]])
    full.set_affine(loc, scale)
    diag.set_affine(loc, scale)
    x = torch.randn(7, 2)
    assert torch.allclose(full.component_log_probs(x), diag.component_log_probs(x), atol=1e-12)
    with pytest.raises(ValueError, match="affine='full'"):
        diag.set_gaussian(loc, torch.diag_embed(scale))
    with pytest.raises(ValueError, match="expected affine in"):
        FlowComponents(2, 2, affine="lu")
    perturb(full)  # the unused upper triangle never leaks into the map
    with torch.no_grad():
        full.affine.params[:, 1:].triu_(1).add_(5.0)
    L = full.affine.scale_tril
    assert torch.equal(L, L.tril())
