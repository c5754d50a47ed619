"""Real tables: the fit contains its Gaussian mixture and never does worse on held-out rows."""

import math
import warnings

import numpy as np
import pytest
import torch
from sklearn.datasets import load_iris
from sklearn.mixture import GaussianMixture

from pyro_mixflows import VariationalFlowMixture
from pyro_mixflows.estimators._select import Candidate, select

FAST = dict(flow="affine_coupling", num_layers=1, hidden_dims=(8,), max_steps=30)


@pytest.fixture(scope="module")
def iris():
    X, y = load_iris(return_X_y=True)
    return (X - X.mean(0)) / X.std(0), y


def _candidate(lp, start="em", layers=0, trained=False):
    from pyro_mixflows import FlowComponents

    comps = FlowComponents(1, 2, num_layers=layers, hidden_dims=(4,))
    size = sum(p.numel() for p in comps.layers.parameters())
    return Candidate(
        start, {"num_layers": layers}, None, lp, object() if trained else None,
        flow_parameters=size,
    )  # fmt: skip


def test_select_never_goes_below_the_gaussian_start():
    rows = torch.randn(200)
    gaussian = _candidate(rows)
    worse_flow = _candidate(rows - 0.01, layers=2, trained=True)  # tied, but below the Gaussian
    assert select([gaussian, worse_flow], ["em"]) is gaussian
    better_flow = _candidate(rows + 1.0, layers=2, trained=True)
    assert select([gaussian, better_flow], ["em"]) is better_flow


def test_select_ties_prefer_fewer_flow_parameters_then_the_preferred_start():
    generator = torch.Generator().manual_seed(0)
    rows = torch.randn(200, generator=generator)
    noise = 0.1 * torch.randn(200, generator=generator)
    noise = noise - noise.mean()  # mean 0, standard error 0.1 / sqrt(200): a tie
    gaussian = _candidate(rows)
    flow = _candidate(rows + 0.001 + noise, layers=2, trained=True)  # tied, above
    assert select([flow, gaussian], ["em"]) is gaussian
    em = _candidate(rows + 2.0, "em", layers=2, trained=True)
    spectral = _candidate(rows + 2.0 + noise, "spectral", layers=2, trained=True)
    assert select([gaussian, em, spectral], ["spectral", "em"]) is spectral
    assert select([gaussian, em, spectral], ["em", "spectral"]) is em


def test_fit_is_never_below_its_gaussian_start_on_held_out_rows(iris):
    X, _ = iris
    model = VariationalFlowMixture(3, random_state=0, validation_fraction=0.3, **FAST).fit(X)
    summary = model.candidates_
    assert {c["start"] for c in summary} >= {"em"}
    gaussian = max(
        c["validation_log_likelihood"] for c in summary if c["capacity"] == {"num_layers": 0}
    )
    chosen = model.validation_log_likelihood_ + float(np.log(X.std(0, ddof=1)).sum())
    assert chosen >= gaussian - 1e-5
    assert any(c["steps"] > 0 for c in summary)  # flows were trained and compared


def test_a_kept_em_start_is_scikit_learns_gaussian_mixture(iris):
    """When the Gaussian wins, it is EM refitted on every row: GaussianMixture's own fit."""
    X, y = iris
    model = VariationalFlowMixture(3, random_state=0, **FAST).fit(X)
    assert model.start_ == "em" and model.num_layers_ == 0 and model.capacity_ == {"num_layers": 0}
    gm = GaussianMixture(3, n_init=5, random_state=0).fit((X - X.mean(0)) / X.std(0, ddof=1))
    Z = (X - X.mean(0)) / X.std(0, ddof=1)
    expected = gm.score_samples(Z) - np.log(X.std(0, ddof=1)).sum()
    np.testing.assert_allclose(model.score_samples(X), expected, atol=2e-4)
    assert np.array_equal(model.predict(X), gm.predict(Z))


def test_gaussian_only_and_capacity_choice(iris, tmp_path):
    X, _ = iris
    capacities = [{"num_layers": 0}, {"num_layers": 1, "hidden_dims": (4,), "weight_decay": 1e-3}]
    model = VariationalFlowMixture(
        2, random_state=1, init="kmeans", capacities=capacities, **FAST
    ).fit(X)
    starts = {c["start"] for c in model.candidates_}
    assert starts == {"kmeans"} and len(model.candidates_) == 2
    assert model.capacity_ in capacities
    model.save(tmp_path / "m.pt")
    loaded = VariationalFlowMixture.load(tmp_path / "m.pt")
    assert loaded.capacity_ == model.capacity_
    np.testing.assert_allclose(loaded.score_samples(X), model.score_samples(X), rtol=1e-6)


def test_overfitting_is_reported_with_a_hint():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 20))  # about 12 training rows per component in 20 dimensions
    with pytest.warns(UserWarning, match="memorizes the training rows.*PCA"):
        VariationalFlowMixture(
            3, random_state=0, init="kmeans", num_layers=0, validation_fraction=0.3
        ).fit(X)


def test_too_few_held_out_rows_keep_the_gaussian_mixture_with_a_word():
    # 16 rows hold out 1 at the default validation_fraction: flows trained and judged on that row
    # overfit unseen (held-out log-likelihood far below GaussianMixture's on 8 rows); now the
    # Gaussian mixture is kept and the user is told why
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(size=(8, 2)), rng.normal(size=(8, 2)) + 4])
    with pytest.warns(UserWarning, match="only 1 row held out.*Gaussian mixture is kept"):
        model = VariationalFlowMixture(2, random_state=0).fit(X)
    assert model.num_layers_ == 0 and model.fit_stats_["steps"] == 0
    with warnings.catch_warnings():  # 60 rows hold out 6: flows are tried
        warnings.simplefilter("error", UserWarning)
        X = np.concatenate([rng.normal(size=(30, 2)), rng.normal(size=(30, 2)) + 4])
        model = VariationalFlowMixture(2, random_state=0, max_steps=20).fit(X)
    assert model.fit_stats_["steps"] > 0


def test_a_constant_feature_is_named():
    rng = np.random.default_rng(0)
    X = np.column_stack([rng.normal(size=60), np.zeros(60), rng.normal(size=60)])
    with pytest.warns(UserWarning, match=r"feature\(s\) \[1\] of X take one value only"):
        VariationalFlowMixture(2, random_state=0, num_layers=0).fit(X)


def test_no_overfitting_warning_on_a_well_posed_fit(iris):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        VariationalFlowMixture(3, random_state=0, init="em", num_layers=0).fit(iris[0])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(capacities=[]), "non-empty list of dicts"),
        (dict(capacities=[{"depth": 2}]), "capacity keys"),
        (dict(capacities=[{"num_layers": -1}]), "num_layers to be an int >= 0"),
        (dict(capacities=[{"flow": "glow"}]), "expected flow in"),
        (dict(n_init=0), "n_init"),
        (dict(reg_covar=-1.0), "reg_covar"),
        (dict(init="ward"), "expected init in"),
        (dict(capacities=[{"hidden_dims": 8}]), "hidden_dims to be a sequence"),
        (dict(weight_concentration=0.0), "weight_concentration > 0"),
        (dict(verbose="loud"), "verbose to be a bool"),
    ],
)
def test_new_options_are_checked_before_work(iris, kwargs, match):
    with pytest.raises(ValueError, match=match):
        VariationalFlowMixture(2, **kwargs).fit(iris[0])


def test_validation_log_likelihood_is_in_data_units(iris):
    X, _ = iris
    model = VariationalFlowMixture(3, random_state=0, init="em", num_layers=0).fit(X * 10)
    ref = VariationalFlowMixture(3, random_state=0, init="em", num_layers=0).fit(X)
    shift = X.shape[1] * math.log(10)
    assert model.validation_log_likelihood_ == pytest.approx(
        ref.validation_log_likelihood_ - shift, abs=1e-3
    )


def test_select_n_components_finds_three_blobs_where_bic_counts_everything():
    from pyro_mixflows import select_n_components

    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(size=(60, 2)) + c for c in ([0, 0], [8, 0], [0, 8])])
    best, scores = select_n_components(X, range(1, 6), cv=3, num_layers=0)
    assert best == 3 and set(scores) == {1, 2, 3, 4, 5}
    assert scores[3] > scores[1] and scores[3] > scores[2]
    with pytest.raises(ValueError, match="cv to be an int >= 2"):
        select_n_components(X, [2], cv=1)
    with pytest.raises(ValueError, match="n_components to be non-empty ints >= 1"):
        select_n_components(X, [0, 2])


def test_bic_counts_a_gaussian_fit_as_gaussian_mixture_does(iris):
    X, _ = iris
    model = VariationalFlowMixture(3, random_state=0, init="em", num_layers=0).fit(X)
    gm = GaussianMixture(3, n_init=5, random_state=0).fit(X)
    assert model._n_parameters() == gm._n_parameters()


@pytest.mark.slow
@pytest.mark.parametrize("name, allowed", [("wine", {3}), ("iris", {2, 3})])
def test_dirichlet_process_finds_the_clusters_of_real_sets(name, allowed):
    """The DP option's count on real tables: the classes', the same at truncations 10 and 30, and
    no memorization warning (wine: the training half of a stratified split, all 13 features)."""
    from sklearn.datasets import load_wine
    from sklearn.metrics import adjusted_rand_score
    from sklearn.model_selection import train_test_split

    X, y = (load_iris if name == "iris" else load_wine)(return_X_y=True)
    if name == "wine":
        X, _, y, _ = train_test_split(X, y, test_size=0.5, stratify=y, random_state=0)
    counts = []
    for T in (10, 30):
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            model = VariationalFlowMixture(T, weights="dirichlet_process", random_state=0).fit(X)
        counts.append(model.effective_n_components_)
        assert adjusted_rand_score(y, model.predict(X)) > 0.5
    assert counts[0] == counts[1] and counts[0] in allowed
