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
exclude_patterns = ["_build"]
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
_INLINE_LITERAL = re.compile(r"``.*?``|`[^`]*`", re.S)  # may run over a line break


def _escape_shape_stars(text: str) -> str:
    parts, last = [], 0
    for m in _INLINE_LITERAL.finditer(text):
        parts.append(_SHAPE_STAR.sub(r"\\*", text[last : m.start()]))
        parts.append(m.group())
        last = m.end()
    parts.append(_SHAPE_STAR.sub(r"\\*", text[last:]))
    return "".join(parts)


def escape_shape_stars(app, what, name, obj, options, lines: list[str]) -> None:
    """``autodoc-process-docstring`` hook: see ``_SHAPE_STAR``.

    Runs of prose lines are escaped together (an inline literal may span lines); directive
    lines, the indented body of a ``::`` block or directive, and doctest blocks are left as
    they are.
    """
    prose: list[bool] = []
    block_indent = None  # indentation of the line that opened a literal block or directive
    in_doctest = False
    for line in lines:
        stripped = line.lstrip()
        indent = len(line) - len(stripped)
        if block_indent is not None and (not stripped or indent > block_indent):
            prose.append(False)
            continue
        block_indent = None
        if stripped.startswith(">>>"):
            in_doctest = True
        elif not stripped:
            in_doctest = False
        if stripped.endswith("::") or stripped.startswith(".. "):
            block_indent = indent
        prose.append(not in_doctest and not stripped.startswith(".. "))
    out: list[str] = []
    i = 0
    while i < len(prose):
        j = i + 1
        while j < len(prose) and prose[j] == prose[i]:
            j += 1
        run = lines[i:j]
        if prose[i]:
            # one string per line again; a line may itself hold a line break, so keep the count
            escaped = _escape_shape_stars("\x00".join(run)).split("\x00")
            run = escaped if len(escaped) == len(run) else run
        out.extend(run)
        i = j
    lines[:] = out


class CliHelp(SphinxDirective):
    """``.. cli-help::``: the ``--help`` text of ``pyro-mixflows`` and of each subcommand.

    Rendered from :func:`pyro_mixflows.cli.build_parser` at build time, so the page cannot drift
    from the command.
    """

    has_content = False

    def run(self) -> list[nodes.Node]:
        import contextlib
        import io

        from pyro_mixflows.cli import build_parser

        os.environ["COLUMNS"] = "96"  # argparse wraps to the terminal width; fix it
        parser = build_parser()
        out: list[nodes.Node] = [nodes.literal_block(text=parser.format_help())]
        for name in ("fit", "score", "sample"):  # what `pyro-mixflows NAME --help` prints
            text = io.StringIO()
            with contextlib.redirect_stdout(text), contextlib.suppress(SystemExit):
                build_parser().parse_args([name, "--help"])
            out.append(nodes.rubric(text=f"pyro-mixflows {name}"))
            out.append(nodes.literal_block(text=text.getvalue()))
        return out


def setup(app):
    app.add_directive("cli-help", CliHelp)
    # after napoleon (priority 500) has turned the Google sections into reST
    app.connect("autodoc-process-docstring", escape_shape_stars, priority=600)
    return {"parallel_read_safe": True}
