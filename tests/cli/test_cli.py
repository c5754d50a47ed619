"""The pyro-mixflows command: end to end through a subprocess, bad input, files that parse."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from pyro_mixflows import VariationalFlowMixture
from pyro_mixflows.cli import FIT_FILES, main
from pyro_mixflows.cli._table import atomic_dir
from pyro_mixflows.datasets import make_two_moons

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A tiny, fast fit: one affine coupling layer of width 8, a few steps, k-means placement.
TINY = [
    "--steps", "10", "--layers", "1", "--hidden", "8",
    "--flow", "affine_coupling", "--init", "kmeans", "--batch-size", "64", "--quiet",
]  # fmt: skip
TINY_API = dict(
    flow="affine_coupling",
    num_layers=1,
    hidden_dims=(8,),
    max_steps=10,
    init="kmeans",
    batch_size=64,
)


def write_csv(path, header, rows) -> str:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


def read_csv(path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


@pytest.fixture(scope="module")
def moons(tmp_path_factory):
    """120 two-moons rows with a text column and a string label column (every 4th row labelled)."""
    X, y = make_two_moons(120, seed=0)
    X = X * 2 + 1
    names = np.array(["left", "right"])
    rows = [
        [repr(float(a)), repr(float(b)), f"p{i}", names[c] if i % 4 == 0 else ""]
        for i, ((a, b), c) in enumerate(zip(X, y, strict=True))
    ]
    path = tmp_path_factory.mktemp("data") / "moons.csv"
    return write_csv(path, ["a", "b", "name", "side"], rows), X, y


@pytest.fixture(scope="module")
def fitted(moons, tmp_path_factory):
    """An in-process unsupervised fit on every row (no held-out rows), seed 3."""
    out = str(tmp_path_factory.mktemp("fit") / "run")
    args = ["fit", moons[0], *TINY, "--test-fraction", "0", "--seed", "3", "--device", "cpu"]
    assert main([*args, "--out", out]) == 0
    return out


def run_cli(*args, cwd) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run(
        [sys.executable, "-m", "pyro_mixflows", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_end_to_end_subprocess(moons, tmp_path):
    """fit (semi-supervised) -> score -> sample through `python -m pyro_mixflows`."""
    path, X, _ = moons
    args = ["fit", path, *TINY, "--labels", "side", "--threads", "1", "--out", "run"]
    done = run_cli(*args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "leaving out non-numeric columns ['name']" in done.stderr
    out = tmp_path / "run"
    assert sorted(os.listdir(out)) == sorted(FIT_FILES)
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".run")]  # no temporary left

    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"]["columns"] == ["a", "b"]
    assert summary["data"]["classes"] == ["left", "right"]
    assert summary["data"]["n_labelled"] == 30
    assert summary["data"]["n_test"] == 12 and summary["held_out_log_likelihood"] is not None
    assert set(summary["versions"]) >= {"pyro", "torch", "pyro_mixflows"}
    assert len(summary["training"]["elbo"]) == summary["training"]["n_iter"] == 10
    assert sum(summary["weights"]) == pytest.approx(1, abs=1e-5)
    assert set(summary["timings"]) == {"read_s", "fit_s", "score_s", "write_s", "total_s"}

    header, rows = read_csv(out / "clusters.csv")
    assert header == ["row", "label", "class", "p_0", "p_1"] and len(rows) == 120
    model = VariationalFlowMixture.load(out / "model.pt")
    labels = model.predict(X)
    assert [int(r[1]) for r in rows] == labels.tolist()
    assert [r[2] for r in rows] == [["left", "right"][k] for k in labels]
    assert np.allclose([[float(v) for v in r[3:]] for r in rows], model.predict_proba(X), atol=1e-6)
    # Semi-supervised: component k is class k, so the labelled rows mostly land on their class.
    known = [i for i in range(120) if i % 4 == 0]
    side = [moons[2][i] for i in known]
    assert np.mean(labels[known] == np.array(side)) > 0.8

    # score: the CLI's per-row log-density equals the Python API's on the same rows.
    new = write_csv(
        tmp_path / "new.csv", ["b", "a"], [[repr(float(b)), repr(float(a))] for a, b in X[:7]]
    )
    done = run_cli("score", "run", new, "--out", "scored.csv", "--threads", "1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    header, rows = read_csv(tmp_path / "scored.csv")
    assert header == ["row", "log_density", "label", "class"]
    assert np.allclose([float(r[1]) for r in rows], model.score_samples(X[:7]), rtol=1e-6)
    assert [int(r[2]) for r in rows] == labels[:7].tolist()

    done = run_cli(
        "sample", "run/model.pt", "-n", "25", "--seed", "1", "--threads", "1", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    sample_rows = list(csv.reader(done.stdout.splitlines()))
    assert sample_rows[0] == ["a", "b", "component"] and len(sample_rows) == 26
    values = np.array([[float(v) for v in r] for r in sample_rows[1:]])
    assert np.isfinite(values).all() and set(values[:, 2]) <= {0.0, 1.0}


def test_files_parse_and_agree_with_the_api(moons, fitted):
    """Same seed, same rows: the CLI's fit is the estimator's fit."""
    import arviz as az

    _, X, _ = moons
    api = VariationalFlowMixture(2, random_state=3, **TINY_API).fit(X)
    _, rows = read_csv(os.path.join(fitted, "scores.csv"))
    scores = np.array([float(r[1]) for r in rows])
    assert np.allclose(scores, api.score_samples(X), rtol=1e-5, atol=1e-5)
    saved = VariationalFlowMixture.load(os.path.join(fitted, "model.pt"))
    assert np.array_equal(scores, saved.score_samples(X).astype(np.float64))

    idata = az.from_netcdf(os.path.join(fitted, "posterior.nc"))
    assert np.allclose(idata.posterior["log_density"].values[0, 0], scores)
    assert "log_likelihood" not in idata.groups()  # one draw: az.loo says so, not IndexError
    with pytest.raises(TypeError, match="log likelihood not found"):
        az.loo(idata)
    assert idata.posterior["weights"].shape == (1, 1, 2)
    assert np.allclose(idata.posterior["weights"].values[0, 0], saved.weights_, atol=1e-6)
    assert np.allclose(idata.posterior["responsibilities"].values[0, 0], saved.predict_proba(X))
    assert idata.observed_data["x"].shape == (120, 2)

    summary = json.load(open(os.path.join(fitted, "summary.json")))
    assert summary["held_out_log_likelihood"] is None and summary["data"]["n_test"] == 0
    assert summary["train_log_likelihood"] == pytest.approx(scores.mean())
    assert summary["effective_components"] == int((np.array(summary["weights"]) > 0.01).sum())
    for name in ("density.png", "clusters.png", "loss.png"):
        with open(os.path.join(fitted, name), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


# --- bad input: exit code 2 and one clear message, before any work -------------------------------
def fails(args, capsys, match: str) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert match in err, err
    return err


@pytest.fixture
def table(tmp_path):
    def make(text: str, name: str = "data.csv") -> str:
        path = tmp_path / name
        path.write_text(text)
        return str(path)

    return make


@pytest.mark.parametrize(
    "text, match",
    [
        ("", "the file is empty"),
        ("\n\n", "the file is empty"),
        ("a,b\n", "got only the header"),
        ("name,city\nx,y\nz,w\n", "expected at least one numeric column"),
        ("a,b\n1,2\n3,oops\n", "line 3, column 'b': expected a number, got 'oops'"),
        ("a,b\n1,2\n3,\n", "line 3, column 'b': empty cell"),
        ("a,b\n1,nan\n3,4\n", "expected a finite number, got 'nan'"),
        ("a,b\n1,2\n-inf,4\n", "expected a finite number, got '-inf'"),
        ("a,b\n1,2\n3,4,5\n", "expected 2 cells (as in the header), got 3"),
        ("a,a\n1,2\n3,4\n", "duplicates ['a']"),
    ],
)
def test_bad_csv(table, tmp_path, capsys, text, match):
    fails(["fit", table(text), "--out", str(tmp_path / "o")], capsys, match)
    assert not os.path.exists(tmp_path / "o")


def test_bad_fit_arguments(moons, table, tmp_path, capsys):
    data, out = moons[0], str(tmp_path / "o")
    fails(["fit", str(tmp_path / "missing.csv"), "--out", out], capsys, "no such file")
    fails(
        ["fit", data, "--labels", "colour", "--out", out], capsys, "unknown label column 'colour'"
    )
    fails(["fit", data, "-k", "0", "--out", out], capsys, "expected --components K >= 1, got 0")
    fails(["fit", data, "-k", "1", "--labels", "side", "--out", out], capsys, "K=1 and 2 classes")
    fails(["fit", data, "--steps", "0"], capsys, "expected --steps >= 1, got 0")
    fails(["fit", data, "--hidden", "8,x"], capsys, "comma-separated positive widths")
    fails(["fit", data, "--flow", "glow"], capsys, "invalid choice: 'glow'")
    fails(["fit", data, "--device", "banana", "--out", out], capsys, "--device banana")
    fails(["fit", "--labels", "side", "--out", out], capsys, "--labels needs a DATA.csv")
    fails(["fit", "--drop", "x0", "--out", out], capsys, "--drop needs a DATA.csv")
    one = table("a\n1\n2\n3\n", "one.csv")
    fails(["fit", one, "--flow", "affine_coupling", "--out", out], capsys, "--flow maf")
    binary = tmp_path / "bin.csv"
    binary.write_bytes(b"\xff\xfe\x00\x81" * 10)
    fails(["fit", str(binary), "--out", out], capsys, "expected a UTF-8 text CSV file")
    assert not os.path.exists(out)


def test_dp_arguments(moons, tmp_path, capsys, monkeypatch):
    data, out = moons[0], str(tmp_path / "o")
    fails(["fit", data, "--truncation", "5", "--out", out], capsys, "--truncation needs --dp")
    fails(["fit", data, "--dp", "--truncation", "0", "--out", out], capsys, "--truncation T >= 1")
    fails(["fit", data, "--dp", "-k", "3"], capsys, "not allowed with argument --dp")
    fails(["fit", data, "--dp", "--truncation", "1", "--out", out], capsys, "truncation")
    assert not os.path.exists(out)


def test_existing_output_is_never_overwritten(moons, tmp_path, capsys, monkeypatch):
    data = moons[0]
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    fails(["fit", data, "--out", str(out)], capsys, "exists; pass --force")
    fails(["fit", data, "--out", str(out), "--force"], capsys, "did not write (notes.txt)")
    (tmp_path / "afile").write_text("x")
    fails(["fit", data, "--out", str(tmp_path / "afile")], capsys, "is not a folder")
    assert (out / "notes.txt").read_text() == "keep me" and os.listdir(out) == ["notes.txt"]


def test_atomic_dir_leaves_nothing_when_interrupted(tmp_path):
    target = tmp_path / "run"
    target.mkdir()
    (target / "summary.json").write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_dir(str(target)) as tmp:
        with open(os.path.join(tmp, "summary.json"), "w") as f:
            f.write("half")
        raise KeyboardInterrupt
    assert os.listdir(tmp_path) == ["run"] and (target / "summary.json").read_text() == "old"
    with atomic_dir(str(target)) as tmp:
        with open(os.path.join(tmp, "summary.json"), "w") as f:
            f.write("new")
    assert os.listdir(tmp_path) == ["run"] and (target / "summary.json").read_text() == "new"


def test_force_replaces_an_earlier_run(moons, fitted, tmp_path, capsys, monkeypatch):
    """--force swaps a folder holding only pyro-mixflows files, and only after a successful fit."""
    import shutil

    real_fit = VariationalFlowMixture.fit
    out = tmp_path / "again"
    shutil.copytree(fitted, out)
    (out / "model.pt").write_text("stale")

    def no_fit(self, X, y=None):
        raise ValueError("stub: stop before training")

    monkeypatch.setattr(VariationalFlowMixture, "fit", no_fit)
    fails(["fit", moons[0], *TINY, "--out", str(out), "--force"], capsys, "stub: stop")
    assert (out / "model.pt").read_text() == "stale"  # a failed run leaves the old folder alone

    # A successful --force run replaces the folder; the estimator's warnings reach stderr and
    # summary.json.
    def warn_fit(self, X, y=None):
        import warnings

        real_fit(self, X, y)
        warnings.warn("components [1] hold no training points", stacklevel=2)
        return self

    monkeypatch.setattr(VariationalFlowMixture, "fit", warn_fit)
    assert main(["fit", moons[0], *TINY, "--out", str(out), "--force"]) == 0
    assert "warning: components [1] hold no training points" in capsys.readouterr().err
    assert sorted(os.listdir(out)) == sorted(FIT_FILES)
    VariationalFlowMixture.load(out / "model.pt")  # the stale file is gone
    summary = json.loads((out / "summary.json").read_text())
    assert summary["warnings"] == ["components [1] hold no training points"]
    assert os.listdir(tmp_path) == ["again"]


def test_bad_score_and_sample_input(moons, fitted, table, tmp_path, capsys, monkeypatch):
    model = os.path.join(fitted, "model.pt")
    three = table("x,y,z\n1,2,3\n4,5,6\n", "three.csv")  # not the fit's columns a, b
    fails(
        ["score", model, three], capsys, "expected 2 numeric columns as at fit time (a, b), got 3"
    )
    fails(["score", model, str(tmp_path / "nope.csv")], capsys, "no such file")
    fails(["score", str(tmp_path / "nope.pt"), three], capsys, "no such model file")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x80\x04 not a checkpoint")
    fails(["score", str(corrupt), moons[0]], capsys, "not a pyro-mixflows model file")
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    fails(["sample", str(foreign), "-n", "3"], capsys, "not a pyro-mixflows model file")
    fails(["sample", model, "-n", "0"], capsys, "expected -n >= 1, got 0")
    taken = table("x\n", "taken.csv")
    fails(["sample", model, "-n", "3", "--out", taken], capsys, "exists; pass --force")
    fails(["score", model, moons[0], "--out", taken], capsys, "exists; pass --force")
    monkeypatch.setitem(sys.modules, "pyro_mixflows.infer.mala", None)  # kernel not installed
    fails(["sample", model, "-n", "3", "--mala"], capsys, "--mala needs the latent-MALA kernel")
    assert open(taken).read() == "x\n"


def test_score_and_sample_write_files(moons, fitted, tmp_path, capsys):
    model, (_, X, _) = fitted, moons
    out = str(tmp_path / "s.csv")
    args = ["score", model, moons[0], "--out", out, "--proba"]  # label/text columns ignored
    assert main(args) == 0
    header, rows = read_csv(out)
    saved = VariationalFlowMixture.load(os.path.join(fitted, "model.pt"))
    assert header == ["row", "log_density", "label", "p_0", "p_1"] and len(rows) == 120
    assert np.allclose([float(r[1]) for r in rows], saved.score_samples(X), rtol=1e-6)
    proba = np.array([[float(v) for v in r[3:]] for r in rows])
    assert np.allclose(proba, saved.predict_proba(X), atol=1e-7)
    assert [int(r[2]) for r in rows] == proba.argmax(1).tolist()
    assert main(["sample", model, "-n", "40", "--out", out, "--force", "--seed", "2"]) == 0
    header, rows = read_csv(out)
    assert header == ["a", "b", "component"] and len(rows) == 40
    first = open(out).read()
    assert main(["sample", model, "-n", "40", "--out", out, "--force", "--seed", "2"]) == 0
    assert open(out).read() == first  # the seed makes sampling reproducible


@pytest.mark.parametrize("command", [[], ["fit"], ["score"], ["sample"]])
def test_help(command, capsys):
    assert main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: pyro-mixflows") and (not command or command[0] in out)


@pytest.mark.parametrize("target", ["sharpened", "fitted"])
def test_sample_mala_says_what_it_samples_and_reports(fitted, tmp_path, capsys, target):
    out = str(tmp_path / "mala.csv")
    args = ["sample", fitted, "-n", "60", "--mala", "--warmup", "10", "--chains", "4"]
    assert main([*args, "--target", target, "--out", out]) == 0
    err = capsys.readouterr().err
    expected = {"sharpened": "the fitted density squared", "fitted": "the fitted density itself"}
    assert expected[target] in err and f"--target {target}" in err
    assert "R-hat (max over columns)" in err and "bulk ESS (min)" in err
    weights = VariationalFlowMixture.load(os.path.join(fitted, "model.pt")).weights_

    def line(label):
        return next(row for row in err.splitlines() if row.strip().startswith(label))

    assert line("fitted weights").split()[2:] == [f"{w:.3f}" for w in weights]
    header, rows = read_csv(out)
    assert header == ["a", "b", "component"] and len(rows) == 60
    comps = np.array([int(r[2]) for r in rows])
    freq = np.bincount(comps, minlength=2) / 60
    assert line("component frequencies").split()[2:] == [f"{f:.3f}" for f in freq]
    assert len(line("the target's own").split()) == 3 + len(weights)
    values = np.array([[float(v) for v in r[:2]] for r in rows])
    # Back in the data's units: the moons were scaled by 2 and shifted by 1 (mean ~ (2, 1.5)).
    assert np.all(np.abs(values.mean(0) - np.array([2.0, 1.5])) < 1.0)
    assert main([*args, "--target", target, "--out", out, "--force", "-q"]) == 0
    assert capsys.readouterr().err == ""


def test_a_diverging_fit_exits_1_and_writes_nothing(moons, tmp_path, capsys, monkeypatch):
    def diverge(self, X, y=None):
        raise FloatingPointError("non-finite loss at step 7")

    monkeypatch.setattr(VariationalFlowMixture, "fit", diverge)
    out = tmp_path / "o"
    assert main(["fit", moons[0], *TINY, "--out", str(out)]) == 1
    assert "training failed: non-finite loss at step 7" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


@pytest.fixture
def figures(monkeypatch):
    """Figures the report saves, kept open to look at what was drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pyro_mixflows.cli import _report

    kept = {}

    def keep(fig, path):
        fig.savefig(path, dpi=30)
        kept[os.path.basename(path)] = fig

    monkeypatch.setattr(_report, "_save", keep)
    yield kept
    for fig in kept.values():
        plt.close(fig)


def _points(ax) -> int:
    return sum(len(c.get_offsets()) for c in ax.collections)


@pytest.mark.parametrize(
    "K, axes",
    [(3, ("LD1", "LD2")), (2, ("LD1", "PC1 across LD1 (")), (1, ("PC1 (", "PC2 ("))],
)
def test_figures_for_more_than_two_columns_show_a_projection(K, axes):
    """D = 6: every row on one plane (the clusters' discriminants, or principal components for
    one cluster), said in the axis labels and the title; the legend outside the axes, titled
    with the title's word."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pyro_mixflows import plotting

    rng = np.random.default_rng(0)
    labels = np.arange(90) % K
    X = rng.normal(size=(90, 6)) + 3 * np.eye(6)[labels]  # cluster k shifted along column k
    samples = rng.normal(size=(40, 6))
    cols = list("abcdef")
    clusters = plotting.clusters_figure(X, cols, labels, ["setosa", "virginica"][:K])
    density = plotting.density_figure(X, cols, lambda x: -x.sum(1), samples, labels)
    for fig in (clusters, density):
        (ax,) = fig.axes
        assert ax.get_xlabel().startswith(axes[0]) and ax.get_ylabel().startswith(axes[1])
        projected = {3: "two linear discriminants", 2: "LD1 of the clusters", 1: "principal"}[K]
        assert "6 columns projected on" in ax.get_title() and projected in ax.get_title()
    assert _points(clusters.axes[0]) == 90 and _points(density.axes[0]) == 90 + 40
    for fig in (clusters, density):  # points of a few pixels or more, not ~1 px
        assert min(c.get_sizes().min() for c in fig.axes[0].collections) >= 6
    (legend,) = clusters.legends  # a figure legend: outside the axes, not squeezing them
    names = ["setosa", "virginica", "component 2"][:K]  # a third cluster has no class name
    assert [t.get_text() for t in legend.get_texts()] == names
    assert "most probable class" in clusters.axes[0].get_title()
    assert legend.get_title().get_text() == "class"
    unlabelled = plotting.clusters_figure(X, cols, labels)
    assert "most probable component" in unlabelled.axes[0].get_title()
    assert unlabelled.legends[0].get_title().get_text() == "component"
    plt.close("all")


def test_projection_separates_the_clusters_and_explains_its_axes():
    from pyro_mixflows.plotting import projection

    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1, 2], 50)
    X = rng.normal(size=(150, 5)) * [1, 1, 1, 5, 5]  # the clusters differ in columns 0 and 1 only
    X[:, :2] += 4 * np.array([[0, 0], [1, 0], [0, 1]])[labels]
    P = projection(X, labels)(X)  # (N, 2)
    means = np.stack([P[labels == k].mean(0) for k in range(3)])
    spread = max(P[labels == k].std(0).max() for k in range(3))
    gaps = [np.linalg.norm(means[i] - means[j]) for i, j in ((0, 1), (0, 2), (1, 2))]
    assert min(gaps) > 3 * spread  # LDA finds columns 0 and 1 despite the wide columns 3, 4
    pca = projection(X)
    assert pca.axis_labels[0].startswith("PC1 (") and pca.axis_labels[0].endswith(" %)")
    share = float(pca.axis_labels[0][5:-3])
    assert share == pytest.approx(100 / 5, abs=12)  # standardized columns: about 1/D each
    with pytest.raises(ValueError, match=r"expected rows of shape \(N, D\) with D >= 2"):
        projection(X[:, :1])


def test_density_plot_has_a_colour_bar_and_loss_plot_marks_the_best_step():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pyro_mixflows import plotting

    X = np.random.default_rng(0).normal(size=(40, 2))
    fig = plotting.density_figure(X, ["u", "v"], lambda x: -0.5 * (x**2).sum(1), X)
    assert len(fig.axes) == 2 and fig.axes[1].get_ylabel() == "density"  # the colour bar
    assert (fig.axes[0].get_xlabel(), fig.axes[0].get_ylabel()) == ("u", "v")
    losses = [90.0, 80.0, 70.0, 72.0, 75.0, 71.0]  # sums over 9 training rows
    fig = plotting.loss_figure(losses, [2, 4, 6], [30.0, 25.0, 27.0], n_train=9, n_val=3)
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert np.allclose(lines["training"].get_ydata(), np.array(losses) / 9)  # per row
    assert np.allclose(lines["held-out"].get_ydata(), [10.0, 25 / 3, 9.0])  # per row
    (best,) = [line for label, line in lines.items() if label.startswith("best")]
    assert best.get_label() == "best: step 4" and list(best.get_xdata()) == [4]
    assert "best: step 4" in [t.get_text() for t in ax.get_legend().get_texts()]
    plt.close("all")


def test_a_labelled_fit_names_its_clusters_by_class(moons, tmp_path, figures):
    out = str(tmp_path / "run")
    assert main(["fit", moons[0], *TINY, "--labels", "side", "--out", out]) == 0
    (ax,) = figures["clusters.png"].axes
    (legend,) = figures["clusters.png"].legends
    names = {t.get_text() for t in legend.get_texts()}
    assert names <= {"left", "right"} and names
    # The title and the legend use the same word.
    assert "most probable class" in ax.get_title() and legend.get_title().get_text() == "class"
    assert any(a.get_ylabel() == "density" for a in figures["density.png"].axes)
    labels = [line.get_label() for line in figures["loss.png"].axes[0].get_lines()]
    assert any(label.startswith("best: step") for label in labels)


def _one_line(err: str) -> str:
    """stderr must be one clean line: no traceback, no ANSI codes, no advice to unpickle."""
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert "\x1b" not in err and "weights_only" not in err and "Traceback" not in err, err
    return err


def test_unwritable_out_is_refused_before_any_work(moons, tmp_path, capsys, monkeypatch):
    def no_fit(self, X, y=None):
        raise AssertionError("the fit must not start")

    monkeypatch.setattr(VariationalFlowMixture, "fit", no_fit)
    monkeypatch.setattr("pyro_mixflows.cli._columns.read_table", no_fit)  # nor the data be read
    (tmp_path / "afile").write_text("x")
    cases = [
        (str(tmp_path / "afile" / "run"), "is a file, not a folder"),
        (str(tmp_path / "afile" / "deeper" / "run"), "is a file, not a folder"),
    ]
    if os.path.isdir("/proc/self"):  # a pseudo file system: no folder can be made there
        cases.append(("/proc/pyro-mixflows-x", "cannot create anything in /proc"))
    for out, match in cases:
        _one_line(fails(["fit", moons[0], *TINY, "--out", out], capsys, match))
        _one_line(fails(["sample", str(tmp_path), "-n", "3", "--out", out], capsys, match))
    assert os.listdir(tmp_path) == ["afile"]


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0,
    reason="root may write in any folder whatever its permission bits",
)
def test_out_in_a_folder_without_write_permission(moons, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        out = str(locked / "run")
        _one_line(fails(["fit", moons[0], *TINY, "--out", out], capsys, "Permission denied"))
    finally:
        locked.chmod(0o700)


def test_the_write_probe_reports_what_the_os_says(tmp_path, monkeypatch):
    """The check that catches missing permissions as a non-root user, forced here (tests run
    as root): whatever refuses the probe folder is reported with the OS's reason, exit 2."""
    import tempfile

    from pyro_mixflows.cli._table import CLIError, check_output_dir

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    with pytest.raises(CLIError, match=r"cannot create anything in .* \(Permission denied\)"):
        check_output_dir(str(tmp_path / "run"), False, FIT_FILES)
    monkeypatch.undo()
    check_output_dir(str(tmp_path / "new" / "run"), False, FIT_FILES)  # missing folders are fine
    assert os.listdir(tmp_path) == []  # the probe leaves nothing behind


def test_files_that_are_not_models_give_one_clean_line(moons, fitted, tmp_path, capsys):
    import pickle

    model = os.path.join(fitted, "model.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(open(model, "rb").read()[:300])
    noise = tmp_path / "noise.pt"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    pickled = tmp_path / "pickled.pt"
    with open(pickled, "wb") as f:
        pickle.dump({"weights": [1, 2]}, f)
    smuggled = tmp_path / "smuggled.pt"  # a torch file holding an arbitrary Python object
    torch.save({"format": "pyro_mixflows.estimator", "x": np.random.default_rng(0)}, smuggled)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    cases = [
        (moons[0], "a text file (a CSV?)"),
        (str(truncated), "truncated"),
        (str(noise), "binary data that is not a torch file"),
        (str(pickled), "a bare Python pickle"),
        (str(smuggled), "never unpickled"),
        (str(empty), "the file is empty"),
    ]
    for path, match in cases:
        err = _one_line(fails(["score", path, moons[0]], capsys, "not a pyro-mixflows model file"))
        assert match in err, err
        _one_line(fails(["sample", path, "-n", "2"], capsys, match))


@pytest.mark.parametrize(
    "text, match",
    [
        ("1185.610,2.5\n1,2\n3,4\n", "got a first row of numbers (1185.610, 2.5)"),
        ("a;b\n1;2\n3;4\n", "separated by semicolons (';')"),
        ("a;b\n1,5;2,3\n3,1;4,2\n", "separated by semicolons (';')"),
        ("a\tb\n1\t2\n3\t4\n", "separated by tabs"),
        ("a,b,y\n1,2,\n3,4,1\n5,6,\n7,8,\n", "pass --labels y"),
        ("a,b,y\n1,2,0\n3,4,\n5,6,1\n7,8,2\n", "pass --labels y"),
    ],
)
def test_csv_shapes_that_are_detected(table, tmp_path, capsys, text, match):
    _one_line(fails(["fit", table(text), "--out", str(tmp_path / "o")], capsys, match))
    assert not os.path.exists(tmp_path / "o")


def test_an_empty_cell_in_a_measurement_column_does_not_suggest_labels(table, tmp_path, capsys):
    text = "a,b\n1.5,2.25\n3.125,\n5.5,6.75\n7.25,8.5\n"
    err = fails(["fit", table(text), "--out", str(tmp_path / "o")], capsys, "empty cell")
    assert "--labels" not in err and "drop or fill the row" in err


def test_fit_progress_bars_name_the_stages(moons, tmp_path, capsys):
    args = [a for a in TINY if a != "--quiet"]
    assert main(["fit", moons[0], *args, "--out", str(tmp_path / "run")]) == 0
    captured = capsys.readouterr()
    bars = captured.err.replace("\r", "\n")
    assert "fit: 1 affine_coupling layers (8,) from kmeans" in bars
    assert "loss/row=" in bars and "stop=" in bars
    assert "held-out log-likelihood" in captured.out


def test_capacity_options(moons, tmp_path, capsys):
    data, out = moons[0], tmp_path / "cap"
    fails(["fit", data, "--capacity", "2:8:-1"], capsys, "expected L[:W,W][:WD]")
    fails(["fit", data, "--capacity", "two"], capsys, "expected L[:W,W][:WD]")
    fails(["fit", data, "--restarts", "0"], capsys, "expected --restarts >= 1")
    args = [*TINY, "--init", "em", "--capacity", "0", "--capacity", "1:8:1e-3"]
    args += ["--restarts", "2"]
    assert main(["fit", data, *args, "--out", str(out)]) == 0
    with open(out / "summary.json") as f:
        selection = json.load(f)["selection"]
    assert selection["start"] == "em"
    assert selection["capacity"] in (
        {"num_layers": 0},
        {"num_layers": 1, "hidden_dims": [8], "weight_decay": 1e-3},
    )
    assert main(["fit", data, *TINY, "--layers", "0", "--out", str(tmp_path / "g")]) == 0
