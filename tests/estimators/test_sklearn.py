"""VariationalFlowMixture as scikit-learn users hold it: the estimator checks, meta-estimators,
the meaning of ``y``, input idioms, and the fitted density in data units."""

import warnings

import numpy as np
import pyro
import pytest
import torch
from pyro.infer import MCMC
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks
from sklearn.utils.validation import check_is_fitted

from pyro_mixflows import LatentMALA, VariationalFlowMixture
from pyro_mixflows.datasets import make_two_moons

# Small enough that scikit-learn's ~45 checks (about 100 fits) take a few seconds.
TINY = dict(
    flow="affine_coupling",
    num_layers=1,
    hidden_dims=(4,),
    max_steps=5,
    batch_size=None,
    init="kmeans",
    random_state=0,
)
FAST = dict(flow="affine_coupling", max_steps=20, init="kmeans")
# Checks that fail, with the reason; the README lists the same (none today).
EXPECTED_FAILED_CHECKS: dict[str, str] = {}


@pytest.fixture(scope="module")
def moons():
    X, y = make_two_moons(200, seed=0)
    return X * 3 + 1, y


@parametrize_with_checks(
    [VariationalFlowMixture(3, **TINY)],
    expected_failed_checks=lambda est: EXPECTED_FAILED_CHECKS,
)
def test_scikit_learn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # e.g. "components hold no points"
        check(estimator)


def test_meta_estimators_and_fitted_state(moons):
    X, y = moons
    with pytest.raises(NotFittedError):
        check_is_fitted(VariationalFlowMixture(2, **FAST))
    pipe = make_pipeline(StandardScaler(), VariationalFlowMixture(2, random_state=0, **FAST))
    assert pipe.fit(X).predict(X).shape == (200,)
    check_is_fitted(pipe[-1])
    # A labelled y as meta-estimators pass it: scored by the adjusted Rand index of predict.
    search = GridSearchCV(
        VariationalFlowMixture(2, random_state=0, **FAST),
        {"n_components": [1, 2]},
        cv=2,
        scoring="adjusted_rand_score",
    ).fit(X, y)
    assert search.best_params_ == {"n_components": 2}  # one cluster scores an ARI of 0
    scores = cross_val_score(VariationalFlowMixture(2, random_state=0, **FAST), X, y, cv=2)
    assert scores.shape == (2,) and np.isfinite(scores).all()  # held-out mean log-density
    est = VariationalFlowMixture(2, random_state=0, **FAST)
    labels = est.fit_predict(X)
    assert np.array_equal(labels, est.labels_) and np.array_equal(labels, est.predict(X))
    assert "max_steps=20" in repr(est) and "n_components=2" in repr(est)


def test_y_is_used_only_when_it_marks_unlabelled_rows(moons):
    X, y = moons
    plain = VariationalFlowMixture(2, random_state=0, **FAST).fit(X).score_samples(X)
    for kwargs, y_fit in (({}, y), ({"semi_supervised": False}, np.where(y > 0, -1, y))):
        est = VariationalFlowMixture(2, random_state=0, **FAST, **kwargs).fit(X, y_fit)
        assert np.array_equal(est.score_samples(X), plain)  # y ignored
    partial = np.where(np.arange(len(y)) < 20, y, -1)
    semi = VariationalFlowMixture(2, random_state=0, **FAST).fit(X, partial)
    assert not np.array_equal(semi.score_samples(X), plain)  # y used
    with pytest.raises(ValueError, match="semi_supervised=True, got None"):
        VariationalFlowMixture(2, semi_supervised=True, **FAST).fit(X)


@pytest.mark.parametrize(
    "name, value",
    [
        ("random_state", np.int64(0)),
        ("max_steps", np.int64(20)),
        ("batch_size", np.int64(64)),
        ("n_init", np.int64(2)),
        ("learning_rate", np.float32(1e-3)),
    ],
)
def test_numpy_integer_parameters(moons, name, value):
    est = VariationalFlowMixture(2, **{**FAST, "random_state": 0, name: value}).fit(moons[0])
    assert est.fit_stats_["steps"] >= 1  # flows were trained (a Gaussian may be kept)


def test_input_idioms(moons, tmp_path):
    pd = pytest.importorskip("pandas")
    X, _ = moons
    est = VariationalFlowMixture(2, random_state=0, **FAST).fit(X)
    expected = est.predict(X)
    assert np.array_equal(est.predict(X[::-1]), expected[::-1])  # negative strides
    assert np.array_equal(est.predict(np.flipud(X)), expected[::-1])
    # A RandomState draws one seed per fit.
    rs = VariationalFlowMixture(2, **{**FAST, "random_state": np.random.RandomState(0)})
    assert rs.fit(X).fit_stats_["steps"] >= 1
    # Bad hidden_dims are refused by fit, not by the constructor (clone must work).
    bad = VariationalFlowMixture(2, hidden_dims=16)
    with pytest.raises(ValueError, match="hidden_dims"):
        bad.fit(X)
    # Column names are recorded; reordered columns are refused.
    df = pd.DataFrame(X, columns=["a", "b"])
    named = VariationalFlowMixture(2, random_state=0, **FAST).fit(df)
    assert list(named.feature_names_in_) == ["a", "b"] and named.n_features_in_ == 2
    assert np.array_equal(named.predict(df), expected)
    with pytest.raises(ValueError, match="feature names should match"):
        named.predict(df[["b", "a"]])
    named.save(tmp_path / "named.pt")
    loaded = VariationalFlowMixture.load(tmp_path / "named.pt")
    assert list(loaded.feature_names_in_) == ["a", "b"]
    with pytest.raises(ValueError, match="feature names should match"):
        loaded.predict(df[["b", "a"]])


def test_fitted_in_float32_used_in_float64(moons):
    X, _ = moons
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        est = VariationalFlowMixture(2, random_state=0, **FAST).fit(X)
        before = est.score_samples(X)
        torch.set_default_dtype(torch.float64)
        np.testing.assert_array_equal(est.score_samples(X), before)
        assert est.predict_proba(X).shape == (200, 2) and est.sample(3)[0].shape == (3, 2)
    finally:
        torch.set_default_dtype(old)


def test_distribution_in_data_units(moons, float64):
    X, _ = moons
    est = VariationalFlowMixture(2, random_state=0, **FAST).fit(X)
    d = est.distribution_
    x = torch.as_tensor(X)
    with torch.no_grad():
        log_p, resp = d.log_prob(x).numpy(), d.responsibilities(x).numpy()
    np.testing.assert_allclose(log_p, est.score_samples(X), rtol=1e-10)
    np.testing.assert_allclose(resp, est.predict_proba(X), rtol=1e-8)
    assert d.sample((5,)).shape == (5, 2)
    # LatentMALA moves in the flows' latent space: the same chain, reported in data units.
    mean, scale = est.feature_mean_, est.feature_scale_
    draws = {}
    for name, flow in (("data", d), ("standardized", est.mixture_)):
        pyro.set_rng_seed(0)
        kernel = LatentMALA(flow, target="base", num_chains_batched=4)
        mcmc = MCMC(kernel, num_samples=5, warmup_steps=3, disable_progbar=True)
        mcmc.run()
        draws[name] = mcmc.get_samples()["x"].numpy()
    np.testing.assert_allclose(draws["data"], mean + scale * draws["standardized"], rtol=1e-8)
