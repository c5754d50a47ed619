"""Model files and outputs for ``pyro-mixflows score`` and ``sample``: load a fitted model with one
clean message for anything that is not one, read a CSV header, write a CSV to a file or stdout."""

from __future__ import annotations

import csv
import json
import os
import sys

from ._report import PROG
from ._table import CLIError, write_text_atomic


def load_model(path: str, device: str | None = None):
    """The fitted estimator at ``path`` (a model.pt file or the folder fit wrote) and fit metadata.

    Anything that is not a model file written by ``fit`` (a CSV, a truncated file, random bytes,
    a pickle, another torch file) is refused with one line; pickles are never unpickled.
    """
    from ..estimators import VariationalFlowMixture
    from ..infer._checkpoint import load_plain

    if os.path.isdir(path):
        path = os.path.join(path, "model.pt")
    if not os.path.exists(path):
        raise CLIError(f"{path}: no such model file")
    try:
        state = load_plain(path, map_location="cpu")
    except ValueError as err:
        raise CLIError(f"{path}: not a pyro-mixflows model file: {err}") from None
    except OSError as err:
        raise CLIError(f"{path}: cannot read: {err.strerror or err}") from None
    if not isinstance(state, dict) or not str(state.get("format", "")).startswith("pyro_mixflows"):
        raise CLIError(
            f"{path}: not a pyro-mixflows model file: a torch file written by another program"
        )
    try:
        est = VariationalFlowMixture.load(path, device=device)
    except Exception as err:  # the right format, broken contents
        text = str(err).strip().splitlines()
        raise CLIError(
            f"{path}: a corrupt pyro-mixflows model file ({text[0] if text else type(err).__name__})"
        ) from None
    meta = {}
    summary = os.path.join(os.path.dirname(os.path.abspath(path)), "summary.json")
    try:
        with open(summary) as f:
            found = json.load(f)
        if found.get("tool") == PROG and len(found["data"]["columns"]) == est.n_features_in_:
            meta = found["data"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return est, meta


def header(path: str) -> list[str]:
    """The header row of a CSV file ([] when it cannot be read; read_table says why)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            return [c.strip() for c in next(csv.reader(f), [])]
    except (OSError, UnicodeDecodeError, csv.Error):
        return []


def emit(out: str | None, text: str) -> None:
    """Write ``text`` to ``out`` atomically, or to standard output when ``out`` is None."""
    if out is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        write_text_atomic(out, text)
