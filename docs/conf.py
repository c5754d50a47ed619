"""Sphinx configuration of the pyro_mixflows API reference (``make docs``).

The reference is built from the package's Google-style docstrings (autodoc + napoleon). Nothing is
fetched at build time (no intersphinx), so the build works offline; the HTML pages load MathJax
from its CDN when they are viewed.
"""

from __future__ import annotations

import os
import re
import sys

from docutils import nodes
from sphinx.util.docutils import SphinxDirective

# The checkout's package wins over any installed copy.
sys.path.insert(0, os.path.abspath(".."))

import pyro_mixflows  # noqa: E402

project = "pyro_mixflows"
author = "pyro_mixflows contributors"
release = pyro_mixflows.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "README_proposed.md"]
root_doc = "index"

# Google-style docstrings only; "Args:" sections become parameter lists.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_use_ivar = True

autodoc_default_options = {
    "members": True,
    "member-order": "bysource",
}
# Signatures keep their annotations; the descriptions do not repeat them.
autodoc_typehints = "signature"
autoclass_content = "class"
# Optional dependencies that the package imports lazily need nothing here; none is mocked.
autodoc_mock_imports: list[str] = []

# GitHub-style heading anchors in the Markdown pages (benchmarks, layout).
myst_heading_anchors = 3

html_theme = "alabaster"
html_theme_options = {
    "description": "Mixtures of normalizing flows for Pyro",
    "fixed_sidebar": True,
}
html_static_path: list[str] = []


# House style writes shapes as ``(*sample_shape, K, D)`` in plain docstring text, where reST would
# read the star as the start of an emphasis. Escape a star that opens a shape entry, outside
# literal blocks (``::``, math, doctest) and inline literals, so the docstrings stay as written;
# a starred word such as ``(*exact*)`` is left to be emphasis.
_SHAPE_STAR = re.compile(r"(?:(?<=[(\[])|(?<=, ))\*(?=[A-Za-z_])(?![A-Za-z_]\w*\*)")
_INLINE_LITERAL = re.compile(r"``.*?``|`[^`]*`")


def _escape_shape_stars(line: str) -> str:
    parts, last = [], 0
    for m in _INLINE_LITERAL.finditer(line):
        parts.append(_SHAPE_STAR.sub(r"\\*", line[last : m.start()]))
        parts.append(m.group())
        last = m.end()
    parts.append(_SHAPE_STAR.sub(r"\\*", line[last:]))
    return "".join(parts)


def escape_shape_stars(app, what, name, obj, options, lines: list[str]) -> None:
    """``autodoc-process-docstring`` hook: see ``_SHAPE_STAR``."""
    literal_indent = None  # indentation of the line that opened a literal block, if inside one
    for i, line in enumerate(lines):
        stripped = line.lstrip()
        indent = len(line) - len(stripped)
        if literal_indent is not None:
            if not stripped or indent > literal_indent:
                continue
            literal_indent = None
        if stripped.startswith((">>>", "...")):
            continue
        if stripped.endswith("::"):
            literal_indent = indent
        lines[i] = _escape_shape_stars(line)


class CliHelp(SphinxDirective):
    """``.. cli-help::``: the ``--help`` text of ``pyro-mixflows`` and of each subcommand.

    Rendered from :func:`pyro_mixflows.cli.build_parser` at build time, so the page cannot drift
    from the command.
    """

    has_content = False

    def run(self) -> list[nodes.Node]:
        import argparse

        from pyro_mixflows.cli import build_parser

        os.environ["COLUMNS"] = "96"  # argparse wraps to the terminal width; fix it
        parser = build_parser()
        out: list[nodes.Node] = [nodes.literal_block(text=parser.format_help())]
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    out.append(nodes.rubric(text=f"pyro-mixflows {name}"))
                    out.append(nodes.literal_block(text=sub.format_help()))
        return out


def setup(app):
    app.add_directive("cli-help", CliHelp)
    # after napoleon (priority 500) has turned the Google sections into reST
    app.connect("autodoc-process-docstring", escape_shape_stars, priority=600)
    return {"parallel_read_safe": True}
