"""The flows layer sits below the distributions: no module in ``pyro_mixflows/flows`` imports
from ``pyro_mixflows/distributions`` (not even inside a function), so there is no import cycle."""

import ast
import pathlib

import pyro_mixflows.flows

FLOWS_DIR = pathlib.Path(pyro_mixflows.flows.__file__).parent


def _imported_modules(path: pathlib.Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            names.append("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
    return names


def test_flows_never_import_the_distributions_layer():
    offenders = {
        path.name: name
        for path in sorted(FLOWS_DIR.glob("*.py"))
        for name in _imported_modules(path)
        if name.startswith("..distributions") or name.startswith("pyro_mixflows.distributions")
    }
    assert len(list(FLOWS_DIR.glob("*.py"))) >= 5  # the walk saw the package
    assert offenders == {}
