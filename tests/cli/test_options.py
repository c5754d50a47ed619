"""The pyro-mixflows command's options: column choice and the target guard, fully labelled
tables, defaults taken from the estimator, help texts, and what `sample --mala` samples."""

import argparse
import inspect
import json
import os

import numpy as np
import pytest

from pyro_mixflows import VariationalFlowMixture
from pyro_mixflows.cli import ESTIMATOR_OPTIONS, build_parser, estimator_options, main
from pyro_mixflows.cli._columns import looks_like_target
from pyro_mixflows.datasets import make_two_moons
from tests.cli.test_cli import TINY, fails, read_csv, write_csv


def numbers(rng, n: int) -> list[str]:
    return [repr(float(v)) for v in rng.normal(size=n)]


@pytest.fixture
def capture_fit(monkeypatch):
    """Stop `fit` at the estimator's fit (exit 2 with "stub"), keeping the rows it was given."""
    seen = {}

    def stub(self, X, y=None):
        seen.update(X=np.asarray(X), y=y)
        raise ValueError("stub: stop before training")

    monkeypatch.setattr(VariationalFlowMixture, "fit", stub)
    return seen


@pytest.fixture
def wine_like(tmp_path):
    """40 rows: measurements a, b, a numeric 3-class column `label` and a 4-level integer
    column `grade` (a class code or a count, each value repeated)."""
    rng = np.random.default_rng(0)
    a, b = numbers(rng, 40), numbers(rng, 40)
    rows = [[a[i], b[i], i % 3, 1 + i % 4] for i in range(40)]
    return write_csv(tmp_path / "wine.csv", ["a", "b", "label", "grade"], rows)


@pytest.mark.parametrize(
    "name", ["label", "Labels", "TARGET", "class", "Class", "y", "Y", "species", "Outcome",
             "diagnosis", "y_true", "class_label", "TargetClass", "wine-class", "true label"],
)  # fmt: skip
def test_names_that_look_like_targets(name):
    assert looks_like_target(name)


@pytest.mark.parametrize(
    "name", ["a", "x0", "yield", "glass", "subclass", "classification", "label_noise_level", "ye"]
)
def test_names_that_look_like_features(name):
    assert not looks_like_target(name)


def test_a_column_named_like_a_target_is_refused(wine_like, tmp_path, capsys, capture_fit):
    out = str(tmp_path / "o")
    err = fails(["fit", wine_like, "--out", out], capsys, "column 'label' looks like a target")
    assert err.count("\n") == 1  # one line
    assert "--drop label" in err and "--labels label" in err
    assert "--columns a,b,label,grade" in err
    assert not capture_fit and not os.path.exists(out)  # refused before any work


def test_drop_and_columns_choose_the_features(wine_like, tmp_path, capsys, capture_fit):
    out = str(tmp_path / "o")
    fails(["fit", wine_like, "--drop", "label", "--out", out], capsys, "stub")
    assert capture_fit["X"].shape == (36, 3)  # a, b, grade; 4 of 40 rows held out
    # --columns keeps a target-like column deliberately, in the order given, without a word.
    err = fails(["fit", wine_like, "--columns", "label,a", "--out", out], capsys, "stub")
    assert capture_fit["X"].shape == (36, 2)
    assert set(capture_fit["X"][:, 0]) == {0.0, 1.0, 2.0}
    assert "warning" not in err
    # --labels takes the column out of the features.
    fails(["fit", wine_like, "--labels", "label", "--drop", "grade", "--out", out], capsys, "stub")
    assert capture_fit["X"].shape[1] == 2 and capture_fit["y"] is None  # every row labelled


def test_a_column_of_few_integers_is_used_with_a_warning(wine_like, tmp_path, capsys, capture_fit):
    err = fails(["fit", wine_like, "--drop", "label", "--out", str(tmp_path / "o")], capsys, "stub")
    (warning,) = [line for line in err.splitlines() if line.startswith("warning:")]
    assert "column 'grade' holds only 4 distinct integers (1, 2, 3, 4) in 40 rows" in warning
    assert "--drop grade" in warning and "--labels grade" in warning
    assert "--columns a,b,grade" in warning
    assert capture_fit["X"].shape[1] == 3  # used all the same


def test_column_options_are_checked(wine_like, tmp_path, capsys):
    out = str(tmp_path / "o")
    fails(["fit", wine_like, "--drop", "colour"], capsys, "unknown 'colour'; columns are a, b")
    fails(["fit", wine_like, "--columns", "a,x"], capsys, "expected column names in --columns")
    fails(["fit", wine_like, "--columns", "a,a", "--out", out], capsys, "got a twice")
    fails(["fit", wine_like, "--columns", "a,"], capsys, "expected comma-separated column names")
    fails(["fit", wine_like, "--columns", "a", "--drop", "b"], capsys, "not allowed with")
    args = ["fit", wine_like, "--columns", "a,label", "--labels", "label", "--out", out]
    fails(args, capsys, "expected the label column 'label' outside --columns")
    assert not os.path.exists(out)


def test_every_row_labelled_fits_unsupervised_and_reports_agreement(tmp_path, capsys):
    """--labels with no empty cell: the labels are left out of the fit and compared with the
    clusters (adjusted Rand index), said in one line; the clusters are not named by class."""
    X, y = make_two_moons(90, seed=0)
    rows = [
        [repr(float(a)), repr(float(b)), ["left", "right"][c]]
        for (a, b), c in zip(X, y, strict=True)
    ]
    data = write_csv(tmp_path / "moons.csv", ["a", "b", "side"], rows)
    out = tmp_path / "run"
    args = [a for a in TINY if a != "--quiet"]
    assert main(["fit", data, *args, "--labels", "side", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    (line,) = [row for row in printed.splitlines() if "adjusted Rand index" in row]
    summary = json.loads((out / "summary.json").read_text())
    agreement = summary["label_agreement"]
    assert agreement["column"] == "side" and agreement["classes"] == ["left", "right"]
    assert f"against 'side': {agreement['adjusted_rand_index']:.3f}" in line
    assert "every row is labelled, so the fit left the labels out" in line
    assert -1 <= agreement["adjusted_rand_index"] <= 1
    assert len(summary["weights"]) == 2  # K = the number of classes
    assert summary["data"]["n_labelled"] == 0 and summary["data"]["classes"] == []
    assert summary["data"]["columns"] == ["a", "b"] and summary["data"]["n_test"] == 9
    header, _ = read_csv(out / "clusters.csv")
    assert header == ["row", "label", "p_0", "p_1"]  # components are not classes here


# --- defaults and help -------------------------------------------------------------------------
def test_options_left_out_keep_the_estimators_defaults():
    args = build_parser().parse_args(["fit"])
    for dest in ESTIMATOR_OPTIONS:
        if dest not in ("dp", "quiet", "seed"):  # flags, and the command's own seed 0
            assert getattr(args, dest) is None, dest
    assert estimator_options(vars(args)) == {"random_state": 0, "verbose": True}
    given = build_parser().parse_args(["fit", "--steps", "20", "--hidden", "8", "--dp", "-q"])
    assert estimator_options(vars(given)) == {
        "max_steps": 20,
        "hidden_dims": (8,),
        "weights": "dirichlet_process",
        "random_state": 0,
        "verbose": False,
    }


def test_help_shows_the_estimators_own_defaults(capsys):
    assert main(["fit", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    signature = inspect.signature(VariationalFlowMixture).parameters
    for option, parameter in [("--steps", "max_steps"), ("--lr", "learning_rate")]:
        default = signature[parameter].default
        shown = "VariationalFlowMixture's own choice" if default is None else f"default {default}"
        assert shown in text.split(option, 2)[2][:300], option


def test_every_option_has_a_help_text(monkeypatch):
    added = []
    add_argument = argparse.ArgumentParser.add_argument

    def record(self, *names, **kwargs):
        added.append((self.prog, names, kwargs.get("help")))
        return add_argument(self, *names, **kwargs)

    monkeypatch.setattr(argparse.ArgumentParser, "add_argument", record)
    build_parser()
    assert ("pyro-mixflows fit", ("--batch-size",)) in [(p, n) for p, n, _ in added]
    assert [(p, n) for p, n, text in added if not text] == []


# --- sample --mala -----------------------------------------------------------------------------
def test_sample_mala_samples_the_fitted_density_by_default(tmp_path, capsys):
    """The default target is the fitted density: the components of the draws follow the fitted
    weights. For target "base" every component's latent target is the shared base density, so
    the Gibbs step draws each row's component from the weights alone, independently of the chain:
    the counts are multinomial(n, w), and Pearson's statistic sum (n_k - n w_k)^2 / (n w_k) is
    chi-square with K - 1 = 2 degrees of freedom, whose 0.999 quantile is 13.82."""
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0]])
    X = np.concatenate(
        [c + rng.normal(size=(n, 2)) for c, n in zip(centres, (20, 40, 90), strict=True)]
    )
    data = write_csv(tmp_path / "blobs.csv", ["u", "v"], X.tolist())
    assert main(["fit", data, *TINY, "-k", "3", "--out", str(tmp_path / "run")]) == 0
    out = str(tmp_path / "draws.csv")
    n = 300
    args = ["sample", str(tmp_path / "run"), "-n", str(n), "--mala", "--warmup", "10"]
    assert main([*args, "--chains", "4", "--seed", "1", "--out", out]) == 0
    err = capsys.readouterr().err
    assert "the fitted density itself" in err and "--target fitted" in err
    _, rows = read_csv(out)
    counts = np.bincount([int(r[2]) for r in rows], minlength=3)
    weights = VariationalFlowMixture.load(tmp_path / "run" / "model.pt").weights_
    assert weights.min() > 0.05  # three fitted components, so the test has power
    chi2 = float((((counts - n * weights) ** 2) / (n * weights)).sum())
    assert chi2 < 13.82, (counts / n, weights)
