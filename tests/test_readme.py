"""Every ```python block of README.md runs as written, top to bottom, in one fresh interpreter.

The blocks run as one script in a subprocess (a temporary working folder, ``OMP_NUM_THREADS=1``,
this checkout first on the path), so a block that needs an import or a name from nowhere fails
here as it would for a reader. ``bash`` blocks are not run.

Fast mode: the default test shortens the README's one long training loop by the text
substitutions in ``FAST`` (``num_steps=1000`` runs as ``num_steps=100``); nothing else changes.
The slow test runs the blocks exactly as written and checks what they print.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# Fast mode: (as written, as run), each found exactly once in the README's Python blocks.
FAST = [("num_steps=1000", "num_steps=100")]
# Seconds: the fast script takes about 15 s on one thread, the script as written under a minute.
TIMEOUT_FAST_S = 300
TIMEOUT_AS_WRITTEN_S = 600
# The README's Pyro example starts from the spectral start so that it clusters the moons as the
# estimator does; both print their adjusted Rand index against the true moons.
PYRO_EXAMPLE_MIN_ARI = 0.98

_PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.M | re.S)


def python_blocks(text: str) -> list[str]:
    """The bodies of the ```python blocks of a Markdown text, in order."""
    return _PYTHON_BLOCK.findall(text)


def readme_script(fast: bool) -> str:
    """The README's Python blocks joined into one script (fast mode: ``FAST`` applied)."""
    script = "\n\n".join(python_blocks(README.read_text(encoding="utf-8")))
    if fast:
        for written, run in FAST:
            script = script.replace(written, run)
    return script


def run_script(script: str, cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    path = cwd / "readme_blocks.py"
    path.write_text(script, encoding="utf-8")
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MPLBACKEND": "Agg",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, str(path)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def printed_aris(stdout: str) -> tuple[float, float]:
    """The adjusted Rand indices the README prints: the estimator's and the Pyro example's."""
    estimator = re.search(r"^ARI   flows (\S+)", stdout, re.M)
    pyro_model = re.search(r"^ARI (\S+)  mean log p", stdout, re.M)
    assert estimator and pyro_model, f"expected both ARI lines, got:\n{stdout}"
    return float(estimator.group(1)), float(pyro_model.group(1))


def test_python_blocks_found_and_bash_left_out():
    text = "intro\n```python\na = 1\n```\n```bash\nmake test\n```\n```python\nprint(a)\n```\n"
    assert python_blocks(text) == ["a = 1\n", "print(a)\n"]


def test_fast_mode_substitutions_each_match_once():
    written = "\n\n".join(python_blocks(README.read_text(encoding="utf-8")))
    for old, _ in FAST:
        assert written.count(old) == 1, f"expected {old!r} once in the README's Python blocks"
    assert "VariationalFlowMixture" in written and "spectral_start" in written


def test_readme_python_blocks_run_in_order(tmp_path):
    proc = run_script(readme_script(fast=True), tmp_path, TIMEOUT_FAST_S)
    assert proc.returncode == 0, f"README blocks failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    assert "loaded: same labels True" in proc.stdout and (tmp_path / "moons.pt").is_file()
    # fast mode keeps the 100 steps on the start's partition: the Pyro example's clusters
    # already follow the moons
    assert min(printed_aris(proc.stdout)) >= PYRO_EXAMPLE_MIN_ARI, proc.stdout


@pytest.mark.slow
def test_readme_python_blocks_run_as_written(tmp_path):
    """The blocks as a reader runs them (about a minute): the estimator and the Pyro example
    cluster the moons."""
    proc = run_script(readme_script(fast=False), tmp_path, TIMEOUT_AS_WRITTEN_S)
    assert proc.returncode == 0, f"README blocks failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    assert min(printed_aris(proc.stdout)) >= PYRO_EXAMPLE_MIN_ARI, proc.stdout
