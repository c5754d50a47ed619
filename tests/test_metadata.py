"""Install metadata: every third-party package the code imports is declared, within bounds that
hold the versions the suite runs against, and the license file the metadata names exists."""

import ast
import configparser
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# import name -> distribution name, where they differ (used when the distribution is not installed)
DISTRIBUTION_OF = {"sklearn": "scikit-learn", "pyro": "pyro-ppl"}


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _config() -> configparser.ConfigParser:
    config = configparser.ConfigParser(interpolation=None)
    config.read(ROOT / "setup.cfg", encoding="utf-8")
    return config


def _requirements() -> dict[str, str]:
    """install_requires as {normalized distribution name: version specifier}."""
    lines = _config()["options"]["install_requires"].strip().splitlines()
    out = {}
    for line in lines:
        match = re.fullmatch(r"\s*([A-Za-z0-9._-]+)\s*(.*?)\s*", line)
        out[_normalized(match[1])] = match[2]
    return out


def _imported_top_level() -> set[str]:
    """Top-level names of every absolute import in pyro_mixflows/, lazy ones included."""
    names = set()
    for path in (ROOT / "pyro_mixflows").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def _third_party_distributions() -> dict[str, str]:
    """{normalized distribution: import name} of the third-party packages the code imports."""
    installed = importlib.metadata.packages_distributions()
    out = {}
    for name in _imported_top_level() - set(sys.stdlib_module_names) - {"pyro_mixflows"}:
        dist = installed.get(name, [DISTRIBUTION_OF.get(name, name)])[0]
        out[_normalized(dist)] = name
    return out


def test_every_imported_package_is_declared_and_nothing_else():
    imported, declared = _third_party_distributions(), _requirements()
    assert "scikit-learn" in imported and "pyro-ppl" in imported  # the name mapping is used
    missing = {dist: name for dist, name in imported.items() if dist not in declared}
    assert not missing, f"imported but not in install_requires: {missing}"
    unused = sorted(set(declared) - set(imported))
    assert not unused, f"declared in install_requires but never imported: {unused}"


def test_bounds_hold_the_tested_versions_and_stop_before_untested_lines():
    specifiers = pytest.importorskip("packaging.specifiers")
    version = pytest.importorskip("packaging.version")
    declared = _requirements()
    for dist, spec in declared.items():
        bounds = specifiers.SpecifierSet(spec)
        assert any(s.operator == ">=" for s in bounds), f"{dist}: no floor in {spec!r}"
        assert any(s.operator == "<" for s in bounds), f"{dist}: no ceiling in {spec!r}"
        installed = importlib.metadata.version(dist)
        # a local build tag (torch's "+cpu") is not part of the release compared
        release = version.Version(installed).public
        assert release in bounds, f"{dist} {installed} here is outside {spec!r}"
    # a plain `pip install` must not pull an untested torch or ArviZ 1.x (a rewrite, never tried)
    assert "2.14.0" not in specifiers.SpecifierSet(declared["torch"])
    assert "1.0.0" not in specifiers.SpecifierSet(declared["arviz"])


def test_license_file_is_the_one_the_metadata_names():
    metadata = _config()["metadata"]
    assert metadata["license"] == "Apache-2.0"
    assert metadata["license_files"].split() == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
