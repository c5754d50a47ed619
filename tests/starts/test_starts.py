"""Public starts: a Gaussian mixture placed in flow components is exactly that mixture."""

import numpy as np
import pytest
import torch
from sklearn.mixture import GaussianMixture

from pyro_mixflows import FlowMixture
from pyro_mixflows.datasets import make_two_moons
from pyro_mixflows.diagnostics import adjusted_rand_index
from pyro_mixflows.starts import (
    Start,
    choose_covariance,
    em_start,
    kmeans_start,
    partition_start,
    spectral_start,
)
from pyro_mixflows.starts._partition import knn_affinity, top_eigenvectors


@pytest.fixture
def blobs():
    rng = np.random.default_rng(0)
    X = np.concatenate(
        [rng.normal(size=(80, 3)) @ np.diag([1, 2, 0.5]), rng.normal(size=(60, 3)) + 5]
    )
    return torch.as_tensor(X)


@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_em_start_placed_in_flows_is_scikit_learns_mixture(blobs, float64, covariance):
    start = em_start(blobs, 2, covariance=covariance, random_state=0)
    assert isinstance(start, Start) and start.name == {"full": "em", "diag": "em_diag"}[covariance]
    gm = GaussianMixture(2, covariance_type=covariance, n_init=5, random_state=0).fit(blobs.numpy())
    components = start.components(num_layers=2, hidden_dims=(8,))  # flow layers at the identity
    mixture = FlowMixture(components, logits=start.logits)
    with torch.no_grad():
        np.testing.assert_allclose(mixture.log_prob(blobs).numpy(), gm.score_samples(blobs.numpy()),
                                   rtol=1e-8)  # fmt: skip
    assert np.array_equal(start.labels.numpy(), gm.predict(blobs.numpy()))


def test_spectral_start_follows_the_moons(float64):
    X, y = make_two_moons(400, seed=0)
    x = torch.as_tensor((X - X.mean(0)) / X.std(0))
    start = spectral_start(x, 2, generator=torch.Generator().manual_seed(0))
    assert adjusted_rand_index(y, start.labels.numpy()) > 0.95
    km = kmeans_start(x, 2, generator=torch.Generator().manual_seed(0))
    assert km.name == "kmeans" and adjusted_rand_index(y, km.labels.numpy()) < 0.6
    # the start's Gaussians are the clusters' moments (plus the ridge)
    members = x[start.labels == 0]
    torch.testing.assert_close(start.loc[0], members.mean(0))
    assert start.weights.sum().item() == pytest.approx(1.0)


def test_partition_start_errors(blobs):
    with pytest.raises(ValueError, match=r"expected labels in \[0, 2\)"):
        partition_start(blobs, torch.full((len(blobs),), 2), 2)
    with pytest.raises(ValueError, match=r"expected x \(N, D\) and labels \(N,\)"):
        partition_start(blobs, torch.zeros(3, dtype=torch.long))
    start = partition_start(blobs, torch.zeros(len(blobs), dtype=torch.long), 3)
    with pytest.raises(ValueError, match="expected FlowComponents with 3 components"):
        start.place(em_start(blobs, 2, random_state=0).components(num_layers=0))


def test_covariance_choice(blobs):
    # elliptical clusters with plenty of rows: full covariances, settled by BIC alone
    assert choose_covariance(blobs, 2, random_state=0) == "full"
    rng = np.random.default_rng(1)  # few rows in 12 independent dimensions: diagonal covariances
    X = np.concatenate([rng.normal(size=(60, 12)), rng.normal(size=(60, 12)) + 3.0])
    assert choose_covariance(torch.as_tensor(X), 2, random_state=0) == "diag"


def test_covariance_choice_does_not_trust_bic_on_nearly_singular_components():
    # 200 dequantized 8 x 8 digits in 5 components: ~40 rows per full 64-D covariance. The full
    # fit's training likelihood is nearly unbounded and wins under BIC, yet predicts held-out rows
    # far worse than diagonal covariances.
    from sklearn.datasets import load_digits

    X = load_digits(n_class=5).data
    X = (X + np.random.default_rng(0).uniform(size=X.shape))[:200]
    X = (X - X.mean(0)) / X.std(0)
    options = dict(n_init=1, reg_covar=1e-6, random_state=0)
    full = GaussianMixture(5, covariance_type="full", **options).fit(X)
    diag = GaussianMixture(5, covariance_type="diag", **options).fit(X)
    assert full.bic(X) <= diag.bic(X)  # the screen alone would say "full"
    assert choose_covariance(torch.as_tensor(X), 5, n_init=1, random_state=0) == "diag"


def test_covariance_choice_with_too_few_rows_to_cross_validate():
    rng = np.random.default_rng(0)
    # 16 rows in 11 dimensions: 8 rows per full 11-D covariance, singular; diagonal ones
    X = np.concatenate([rng.normal(size=(8, 11)), rng.normal(size=(8, 11)) + 3.0])
    assert choose_covariance(torch.as_tensor(X), 2, random_state=0) == "diag"
    # 18 rows in 2 dimensions: 9 rows per full 2-D covariance, enough: full, as before
    X = np.concatenate([rng.normal(size=(9, 2)), rng.normal(size=(9, 2)) + 3.0])
    assert choose_covariance(torch.as_tensor(X), 2, random_state=0) == "full"


def test_sparse_eigenvectors_match_the_dense_solver(float64):
    X, _ = make_two_moons(500, seed=1)
    W = knn_affinity(torch.as_tensor(X), 10)
    d = W.sum(1).rsqrt()
    M = d[:, None] * W * d[None, :]
    dense = torch.linalg.eigh(M)[1][:, -3:]
    sparse = top_eigenvectors(M, 3)
    for k in range(3):  # equal up to sign
        assert abs(float(dense[:, k] @ sparse[:, k])) == pytest.approx(1.0, abs=1e-6)


def test_number_of_components_by_held_out_likelihood():
    from pyro_mixflows.starts import choose_num_components

    rng = np.random.default_rng(0)
    centers = np.array([[0, 0], [8, 0], [0, 8]])
    X = np.concatenate([rng.normal(size=(80, 2)) + c for c in centers])
    K, covariance = choose_num_components(torch.as_tensor(X), 8, random_state=0)
    assert K == 3 and covariance in ("full", "diag")
    assert choose_num_components(torch.as_tensor(X), 2, random_state=0)[0] == 2  # the cap holds
