"""The documentation (``make docs``) builds without a warning and documents the public API."""

import importlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("sphinx", reason="the docs extra is not installed (pip install -e '.[docs]')")
pytest.importorskip(
    "myst_parser", reason="the docs extra is not installed (pip install -e '.[docs]')"
)

ROOT = Path(__file__).resolve().parents[1]
SUBPACKAGES = ["flows", "distributions", "guides", "models", "infer", "starts", "estimators"]


def test_docs_build_without_warnings(tmp_path):
    out = tmp_path / "html"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "sphinx", "-b", "html", "-j", "1", "-W", "--keep-going", "-q"]
    proc = subprocess.run(
        [*cmd, str(ROOT / "docs"), str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"sphinx-build failed:\n{proc.stdout}\n{proc.stderr}"
    assert "WARNING" not in proc.stderr, proc.stderr

    # every name a subpackage exports has its entry on that subpackage's page
    for sub in SUBPACKAGES:
        page = (out / "api" / f"{sub}.html").read_text(encoding="utf-8")
        module = importlib.import_module(f"pyro_mixflows.{sub}")
        missing = [n for n in module.__all__ if f'id="pyro_mixflows.{sub}.{n}"' not in page]
        assert not missing, f"api/{sub}.html lacks {missing}"
    for page in ["layout.html", "benchmarks.html", "api/cli.html"]:
        assert (out / page).is_file(), page
    assert "pyro-mixflows fit" in (out / "api" / "cli.html").read_text(encoding="utf-8")


def _conf():
    spec = importlib.util.spec_from_file_location("_docs_conf", ROOT / "docs" / "conf.py")
    conf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conf)
    return conf


def test_shape_stars_escaped_only_in_prose():
    # the docstrings' shapes "(*S, K, D)" would start a reST emphasis: conf.py escapes their star
    # in prose, and leaves literal blocks, doctests, directives and inline literals alone
    lines = [
        "A draw (*sample_shape, *batch_shape, D) and (*exact*) emphasis.",
        "Calls ``model(*args,",
        "subsample=idx)`` and returns (*S, K).",
        "Example::",
        "",
        "    f(*a)",
        ">>> g(*b)",
        "(*out, 1)",
        "",
        ".. math:: (*c, d)",
        "   (*e, f)",
        "After (*S, D).",
    ]
    expected = list(lines)
    expected[0] = r"A draw (\*sample_shape, \*batch_shape, D) and (*exact*) emphasis."
    expected[2] = r"subsample=idx)`` and returns (\*S, K)."
    expected[11] = r"After (\*S, D)."
    _conf().escape_shape_stars(None, "function", "f", None, {}, lines)
    assert lines == expected
