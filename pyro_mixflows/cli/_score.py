"""``pyro-mixflows score``: per-row log-density, cluster labels and responsibilities of new rows
under a fitted model, the fit's columns found by name."""

from __future__ import annotations

import argparse
import sys

import numpy as np

from . import _io
from ._table import CLIError, check_output_file, format_csv, read_table


def run(args: argparse.Namespace) -> int:
    """``pyro-mixflows score``: see ``pyro-mixflows score --help``."""
    check_output_file(args.out, args.force)
    est, meta = _io.load_model(args.model, args.device)
    D = est.n_features_in_
    columns = meta.get("columns")
    label_column = meta.get("label_column")
    if columns is not None:
        # Select the fit's columns by name when they are all present (any order, extra columns
        # such as the label column are ignored); otherwise fall back to the numeric columns.
        if not set(columns) <= set(_io.header(args.data)):
            columns = None
    if columns is not None:
        table = read_table(args.data, columns=columns)
    else:
        table = read_table(
            args.data,
            label_column=label_column if label_column in _io.header(args.data) else None,
        )
    if table.X.shape[1] != D:
        fit_cols = f" ({', '.join(meta['columns'])})" if meta.get("columns") else ""
        raise CLIError(
            f"{args.data}: expected {D} numeric columns as at fit time{fit_cols}, got "
            f"{table.X.shape[1]} ({', '.join(table.columns)})"
        )
    if meta.get("columns") and columns is None:
        print(
            f"note: {args.data} lacks the fit's columns ({', '.join(meta['columns'])}); "
            f"scoring its numeric columns ({', '.join(table.columns)}) in order",
            file=sys.stderr,
        )
    scores = est.score_samples(table.X).astype(np.float64)  # (N,)
    proba = est.predict_proba(table.X).astype(np.float64)  # (N, K)
    labels = proba.argmax(1)
    classes = meta.get("classes") or []
    header = ["row", "log_density", "label"]
    cols: list = [np.arange(len(scores)), scores, labels]
    if classes:
        header.append("class")
        cols.append([classes[k] if k < len(classes) else "" for k in labels])
    if args.proba:
        header += [f"p_{k}" for k in range(proba.shape[1])]
        cols += [proba[:, k] for k in range(proba.shape[1])]
    _io.emit(args.out, format_csv(header, cols))
    return 0
