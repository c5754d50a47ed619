"""Every tutorial notebook runs top to bottom in quick mode (PYRO_MIXFLOWS_QUICK=1)."""

import json
import os
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "tutorials").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_quick_mode(path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("PYRO_MIXFLOWS_QUICK", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    client.execute()
    errors = [
        out
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") == "error"
    ]
    assert not errors
    # The saved copy carries its plots, so a reader sees them without running anything.
    saved = nbformat.read(path, as_version=4)
    assert any(
        "image/png" in out.get("data", {})
        for cell in saved.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
    ), f"{path.name} was saved without its plots"


LOCAL = re.compile(
    r"(/work/|/home/|/root/|/tmp/|/Users/|[A-Za-z]:\\\\|site-packages|dist-packages)"
)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_saved_notebook_is_a_full_run_without_local_paths(path):
    """What a reader sees: outputs of a full run (tutorials/save_notebook.py records the mode),
    with no absolute path of the machine that ran it."""
    nb = json.loads(path.read_text())
    mode = nb["metadata"].get("pyro_mixflows", {}).get("mode")
    assert mode in (None, "full"), f"{path.name} was saved from a {mode} run"
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            text = json.dumps({k: v for k, v in out.items() if k != "data"})
            text += json.dumps(
                {k: v for k, v in out.get("data", {}).items() if k.startswith("text")}
            )
            found = LOCAL.search(text)
            assert found is None, (
                f"{path.name} shows a local path: ...{text[found.start() - 60 : found.end() + 40]}..."
            )


@pytest.mark.parametrize("name", ["latent_mala", "clustering_with_vmonf"])
def test_tutorials_regenerated_here_record_a_full_run(name):
    nb = json.loads((ROOT / "tutorials" / f"{name}.ipynb").read_text())
    assert nb["metadata"].get("pyro_mixflows", {}).get("mode") == "full"
