"""VariationalFlowMixture: the scikit-learn contract, exactness of its density, errors, save/load."""

import numpy as np
import pytest
import torch
from sklearn.exceptions import NotFittedError

from pyro_mixflows import VariationalFlowMixture
from pyro_mixflows.datasets import make_two_moons
from pyro_mixflows.diagnostics import adjusted_rand_index

SMALL = dict(
    flow="affine_coupling",
    num_layers=2,
    hidden_dims=(8,),
    max_steps=20,
    batch_size=64,
    init="kmeans",
)


@pytest.fixture(scope="module")
def data():
    X, y = make_two_moons(150, seed=0)
    return X * 3 + 1, y  # off the unit scale, so standardization matters


@pytest.fixture(scope="module")
def fitted(data):
    return VariationalFlowMixture(2, random_state=0, **SMALL).fit(data[0])


def test_contract_shapes_and_dtypes(fitted, data):
    X = data[0]
    proba = fitted.predict_proba(X)
    assert proba.shape == (150, 2) and proba.dtype == np.float32
    assert np.allclose(proba.sum(1), 1, atol=1e-5)
    labels = fitted.predict(X)
    assert labels.shape == (150,) and labels.dtype.kind == "i"
    assert np.array_equal(labels, proba.argmax(1))
    scores = fitted.score_samples(X)
    assert scores.shape == (150,) and np.isfinite(scores).all()
    assert fitted.score(X) == pytest.approx(scores.mean(), rel=1e-6)
    Xs, zs = fitted.sample(7)
    assert Xs.shape == (7, 2) and zs.shape == (7,)
    assert fitted.weights_.shape == (2,) and fitted.weights_.sum() == pytest.approx(1, abs=1e-5)
    assert np.isfinite(fitted.bic(X)) and np.isfinite(fitted.aic(X))
    assert fitted.bic(X) > fitted.aic(X)  # log(150) > 2
    assert isinstance(fitted.converged_, bool) and fitted.n_iter_ >= 1
    assert np.isfinite(fitted.lower_bound_)


def test_density_is_normalized_in_data_units(fitted, data):
    """score_samples integrates to 1 over the data space (grid quadrature)."""
    X = data[0]
    lo, hi = X.min(0) - 6, X.max(0) + 6
    n = 400
    gx = lo[0] + (np.arange(n) + 0.5) * (hi[0] - lo[0]) / n
    gy = lo[1] + (np.arange(n) + 0.5) * (hi[1] - lo[1]) / n
    grid = np.stack(np.meshgrid(gx, gy, indexing="ij"), -1).reshape(-1, 2)
    mass = np.exp(fitted.score_samples(grid)).sum() * np.prod((hi - lo) / n)
    assert mass == pytest.approx(1.0, abs=1e-2)  # float32 scoring, grid of 400^2


def test_lower_bound_is_below_the_log_likelihood(fitted, data):
    assert fitted.lower_bound_ <= fitted.score(data[0]) + 1e-3


def test_same_random_state_same_fit(data):
    a = VariationalFlowMixture(2, random_state=3, **SMALL).fit(data[0])
    b = VariationalFlowMixture(2, random_state=3, **SMALL).fit(data[0])
    assert np.array_equal(a.score_samples(data[0]), b.score_samples(data[0]))


def test_amortized_and_semi_supervised_fit(data):
    X, y = data
    y_partial = np.full_like(y, -1)
    y_partial[:20] = y[:20]
    model = VariationalFlowMixture(2, random_state=0, assignment="amortized", **SMALL)
    model.fit(X, y_partial)
    assert model.predict(X).shape == (150,)
    assert int(model.module_.step) > 0
    # learned weights and z summed out: the candidates train side by side with the labels
    # observed; the Gaussian start is trained too (its components must follow the classes)
    model = VariationalFlowMixture(2, random_state=0, **SMALL).fit(X, y_partial)
    assert [c["steps"] > 0 for c in model.candidates_] == [True, True]
    assert (model.predict(X[:20]) == y[:20]).mean() >= 0.75  # components named by class


def test_save_and_load_round_trip(fitted, data, tmp_path):
    path = tmp_path / "model.pt"
    fitted.save(path)
    loaded = VariationalFlowMixture.load(path)
    assert np.array_equal(loaded.score_samples(data[0]), fitted.score_samples(data[0]))
    assert np.array_equal(loaded.predict(data[0]), fitted.predict(data[0]))
    assert loaded.get_params() == fitted.get_params() | {"device": None}
    # every fitted attribute survives, with its type
    for name in ("labels_", "n_components_", "num_layers_", "capacity_", "start_", "candidates_",
                 "converged_", "n_iter_", "lower_bound_", "validation_log_likelihood_",
                 "fit_stats_", "n_features_in_", "merge_groups_"):  # fmt: skip
        a, b = getattr(loaded, name), getattr(fitted, name)
        assert type(a) is type(b), name
        assert np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b, name
    assert loaded.fit_result_.losses == fitted.fit_result_.losses
    assert loaded.fit_result_.num_steps == fitted.fit_result_.num_steps
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temporary file left


class _Payload:
    def __reduce__(self):  # unpickling would call print: a stand-in for arbitrary code
        return (print, ("unpickled code ran",))


def test_load_reads_plain_values_only(data, tmp_path, capsys):
    params = {**SMALL, "max_steps": 10, "hidden_dims": (np.int64(8),)}
    model = VariationalFlowMixture(np.int64(2), random_state=0, **params).fit(data[0])
    model.save(tmp_path / "np.pt")  # NumPy scalars in the parameters are stored as numbers
    assert VariationalFlowMixture.load(tmp_path / "np.pt").get_params()["n_components"] == 2
    torch.save({"format": "x", "payload": _Payload()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="expected a pyro_mixflows model file"):
        VariationalFlowMixture.load(tmp_path / "evil.pt")
    assert "unpickled code ran" not in capsys.readouterr().out


def test_load_refuses_foreign_files(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="expected a pyro_mixflows model file"):
        VariationalFlowMixture.load(bad)
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="got another file"):
        VariationalFlowMixture.load(tmp_path / "other.pt")


@pytest.mark.parametrize(
    "kwargs, X_fn, y_fn, match",
    [
        (dict(n_components=0), None, None, "n_components to be an int >= 1"),
        (dict(flow="glow"), None, None, "expected flow in"),
        (dict(init="ward"), None, None, "expected init in"),
        (dict(batch_size=0), None, None, "batch_size"),
        (dict(capacities=[{"weight_decay": -1.0}]), None, None, "weight_decay >= 0"),
        (dict(learning_rate=0.0), None, None, "learning_rate None or > 0"),
        (dict(max_steps=0), None, None, "max_steps to be an int >= 1"),
        (dict(device="tpu:9"), None, None, "expected device 'auto' or a usable torch device"),
        (
            dict(),
            lambda X: np.where(np.arange(X.size).reshape(X.shape) == 5, np.nan, X),
            None,
            "finite",
        ),
        (dict(), lambda X: X[:, :1].ravel(), None, r"shape \(N, D\)"),
        (dict(), lambda X: X[:0], None, r"0 sample\(s\)"),
        (dict(), None, lambda y: y[:-1], r"one label per row"),
        (
            dict(semi_supervised=True),
            None,
            lambda y: np.where(np.arange(len(y)) == 0, 2, np.where(np.arange(len(y)) % 2, -1, y)),
            r"labels in \[0, n_components=2\)",
        ),
        (dict(semi_supervised=True), None, lambda y: y, "expected some unlabelled rows"),
        (dict(semi_supervised="yes"), None, None, "expected semi_supervised in"),
        (dict(hidden_dims=16), None, None, "expected hidden_dims to be a sequence of ints"),
        (dict(random_state=-1), None, None, "expected random_state"),
        (dict(), lambda X: X + 1j, None, "Complex data not supported"),
    ],
)
def test_bad_input_is_refused_before_training(data, kwargs, X_fn, y_fn, match):
    X, y = data
    X = X_fn(X) if X_fn else X
    y = y_fn(y) if y_fn else None
    params = {**SMALL, "random_state": 0, "n_components": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        VariationalFlowMixture(**params).fit(X, y)


def test_em_starts_are_not_pretrained(monkeypatch):
    """EM placed the Gaussians of its starts (full or diagonal covariances): flows trained from
    them start there, without a pre-fit to hard labels; partition starts are pre-trained."""
    from pyro_mixflows.estimators import _capacity

    pretrained = []
    real_race = _capacity.race

    def race(module, x_train, x_val, budget, rivals, pretrain, *args):
        pretrained.append(list(pretrain))
        return real_race(module, x_train, x_val, budget, rivals, pretrain, *args)

    monkeypatch.setattr(_capacity, "race", race)
    rng = np.random.default_rng(0)  # few rows in 12 independent dimensions: diagonal covariances
    X = np.concatenate([rng.normal(size=(60, 12)), rng.normal(size=(60, 12)) + 3.0])
    model = VariationalFlowMixture(2, random_state=0, **{**SMALL, "init": "em"}).fit(X)
    assert [c["start"] for c in model.candidates_] == ["em_diag", "em_diag"]
    assert pretrained == [[0]]
    VariationalFlowMixture(2, random_state=0, **{**SMALL, "init": "kmeans"}).fit(X)
    assert pretrained[1][0] > 0


def test_fit_stats_say_where_the_time_went(fitted):
    stats = fitted.fit_stats_
    assert {"prepare", "starts", "train", "total"} <= set(stats["seconds"])
    assert all(v >= 0 for v in stats["seconds"].values())
    assert stats["seconds"]["total"] >= stats["seconds"]["train"]
    assert stats["device"] == "cpu" and stats["budget"]["max_steps"] == SMALL["max_steps"]
    assert stats["steps"] == sum(c["steps"] for c in fitted.candidates_) > 0
    trained = [c for c in fitted.candidates_ if c["steps"] > 0]
    assert all(c["stop"] in ("patience", "cannot win", "max_steps") for c in trained)


def test_scoring_errors(fitted, data):
    with pytest.raises(
        ValueError, match="X has 3 features, but VariationalFlowMixture is expecting 2"
    ):
        fitted.predict(np.zeros((3, 3)))
    with pytest.raises(NotFittedError, match="not fitted"):
        VariationalFlowMixture(2).predict(data[0])
    with pytest.raises(NotFittedError):
        _ = VariationalFlowMixture(2).distribution_
    with pytest.raises(ValueError, match="n_samples"):
        fitted.sample(0)
    with pytest.raises(ValueError, match="Invalid parameter 'colour'"):
        VariationalFlowMixture(2).set_params(colour="red")


def test_dirichlet_process_option(data):
    X = data[0]
    model = VariationalFlowMixture(
        6, weights="dirichlet_process", weight_concentration=0.5, random_state=0, **SMALL
    ).fit(X)
    w = model.weights_
    assert model.merge_groups_.shape == (6,) and w.shape == (model.n_components_,)
    assert w.sum() == pytest.approx(1.0, abs=1e-5)
    assert 1 <= model.effective_n_components_ <= model.n_components_
    proba = model.predict_proba(X)
    empty = w < 0.01
    assert np.all(proba[:, empty] == 0)
    assert np.allclose(proba.sum(1), 1, atol=1e-5)
    assert np.isfinite(model.score_samples(X)).all()
    with pytest.raises(ValueError, match="truncation"):
        VariationalFlowMixture(1, weights="dirichlet_process").fit(X)


def _blobs(n=150, seed=0):
    """Two round clusters far apart, each wide enough for several components."""
    rng = np.random.default_rng(seed)
    X = np.concatenate([rng.normal(0, 1, (n, 2)), rng.normal(0, 1, (n, 2)) + [12.0, 0.0]])
    return X, np.repeat([0, 1], n)


def test_dirichlet_process_merge_finds_the_clusters_and_round_trips(tmp_path):
    X, y = _blobs()
    fits = [
        VariationalFlowMixture(T, weights="dirichlet_process", random_state=0, **SMALL).fit(X)
        for T in (4, 8)
    ]
    model = fits[0]
    groups = model.merge_groups_  # the cluster of every Gaussian piece the held-out rows chose
    assert set(groups.tolist()) == {0, 1}
    assert model.n_components_ == 2 and model.weights_.shape == (2,)
    assert model.effective_n_components_ == 2
    assert model.num_layers_ in (0, SMALL["num_layers"])
    assert np.isfinite(model.validation_log_likelihood_)
    assert adjusted_rand_index(y, model.predict(X)) == 1.0
    # the truncation caps the pieces, it does not set their number
    assert np.array_equal(fits[1].merge_groups_, groups)
    assert np.array_equal(fits[1].predict(X), model.predict(X))
    model.save(tmp_path / "dp.pt")
    loaded = VariationalFlowMixture.load(tmp_path / "dp.pt")
    assert loaded.n_components_ == 2 and loaded.num_layers_ == model.num_layers_
    np.testing.assert_allclose(loaded.score_samples(X), model.score_samples(X), rtol=1e-6)
    # Labels given: the labels define the clusters, no merge stage.
    labelled = VariationalFlowMixture(6, weights="dirichlet_process", random_state=0, **SMALL).fit(
        X, np.where(np.arange(len(y)) % 10 == 0, y, -1)
    )
    assert labelled.merge_groups_ is None and labelled.n_components_ == 6


def test_fit_leaves_the_callers_param_store_and_random_state_alone(data):
    import pyro

    pyro.param("mine", torch.ones(3))
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    VariationalFlowMixture(2, random_state=0, **SMALL).fit(data[0])
    assert list(pyro.get_param_store().keys()) == ["mine"]
    assert torch.equal(pyro.param("mine"), torch.ones(3))
    assert torch.equal(torch.rand(3), expected)  # the fit drew from its own random state


def test_core_agreement_of_flows_with_their_gaussian_start(float64):
    from pyro_mixflows import FlowComponents
    from pyro_mixflows.estimators._fit import core_agreement
    from pyro_mixflows.models import VMoNF

    def mixture(locs):
        comps = FlowComponents(2, 1, flow="maf", num_layers=0, affine="full")
        comps.set_gaussian(torch.tensor(locs).unsqueeze(-1), 0.5 * torch.ones(2, 1, 1))
        return VMoNF(comps, assignment="enumerate")

    x = torch.linspace(-3, 3, 61).unsqueeze(-1)
    start = mixture([-2.0, 2.0])
    assert core_agreement(mixture([-2.1, 1.9]), start, x) == 1.0  # a refinement
    assert core_agreement(mixture([2.0, -2.0]), start, x) == 0.0  # components swapped their cores


def test_flows_that_move_cores_report_the_em_clusters(data, monkeypatch, tmp_path):
    from pyro_mixflows.estimators import _fit

    monkeypatch.setattr(_fit, "CORE_AGREEMENT", 1.01)  # every kept flow "moves a core"
    X = data[0]
    params = {**SMALL, "init": "em", "capacities": [{"num_layers": 2}]}
    with pytest.warns(UserWarning, match="predict and predict_proba report the Gaussian start"):
        model = VariationalFlowMixture(2, random_state=0, **params).fit(X)
    if model.num_layers_ == 0:
        pytest.skip("the Gaussian start was kept: nothing to fall back from")
    assert model.clusters_from_ == "gaussian start" and 0 <= model.core_agreement_ <= 1
    em = model.cluster_module_.mixture()
    xs = model._standardize(X)
    with torch.no_grad():
        np.testing.assert_allclose(
            model.predict_proba(X), em.responsibilities(xs).numpy(), rtol=1e-5
        )
        assert not torch.equal(model.mixture_.log_prob(xs), em.log_prob(xs))  # density: flows
    model.save(tmp_path / "m.pt")
    loaded = VariationalFlowMixture.load(tmp_path / "m.pt")
    assert loaded.clusters_from_ == "gaussian start"
    np.testing.assert_allclose(loaded.predict_proba(X), model.predict_proba(X), rtol=1e-6)
