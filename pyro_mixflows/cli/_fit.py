"""``pyro-mixflows fit``: read the table, build the estimator from the options, hold out rows, fit,
and write the report folder."""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import numpy as np

from . import _columns, _report
from ._parser import DEMO_ROWS, estimator_options
from ._report import EFFECTIVE_WEIGHT, FIT_FILES, PROG
from ._table import CLIError, Table, check_output_dir


def _classes(labels: list[str]) -> list[str]:
    values = sorted({v for v in labels if v != ""})
    try:
        return sorted(values, key=float)
    except ValueError:
        return values


def estimator(args: argparse.Namespace, K: int, D: int):
    """The ``VariationalFlowMixture`` with K components that the options ``args`` ask for, for
    data with D columns (a one-column table gets ``flow="maf"`` unless ``--flow`` says else);
    options the user left out keep the estimator's own defaults."""
    from ..estimators import VariationalFlowMixture
    from ..estimators._params import check_params

    values = vars(args)
    if D < 2:
        if args.flow not in (None, "maf"):
            raise CLIError(f"expected --flow maf for data with one column, got --flow {args.flow}")
        values = {**values, "flow": "maf"}
    est = VariationalFlowMixture(K, **estimator_options(values))
    try:
        check_params(est)
    except ValueError as err:
        raise CLIError(str(err)) from None
    return est


def _load_data(args: argparse.Namespace) -> tuple[Table, np.ndarray | None, str, list[str]]:
    """The table, the demo set's true clusters (or None), where the rows came from, warnings."""
    if args.data is None:
        for option in ("labels", "columns", "drop"):
            if getattr(args, option) is not None:
                raise CLIError(
                    f"--{option} needs a DATA.csv file; the demo set has no label column, "
                    "only x0 and x1"
                )
        from ..datasets import make

        X, y = make(args.demo, DEMO_ROWS, seed=args.seed)
        return Table(X, [f"x{d}" for d in range(X.shape[1])]), y, f"demo:{args.demo}", []
    table, notes = _columns.feature_table(args)
    return table, None, os.path.abspath(args.data), notes


def run(args: argparse.Namespace) -> int:
    """``pyro-mixflows fit``: see ``pyro-mixflows fit --help``."""
    start = time.perf_counter()
    if args.components is not None and args.components < 1:
        raise CLIError(f"expected --components K >= 1, got {args.components}")
    if args.truncation is not None and not args.dp:
        raise CLIError("--truncation needs --dp")
    if args.truncation is not None and args.truncation < 1:
        raise CLIError(f"expected --truncation T >= 1, got {args.truncation}")
    check_output_dir(args.out, args.force, FIT_FILES)

    table, y_true, source, notes = _load_data(args)
    X = table.X
    N, D = X.shape
    classes: list[str] = []
    y = None
    if table.labels is not None:
        classes = _classes(table.labels)
        if not classes:
            print(
                f"note: label column {args.labels!r} is empty; fitting unsupervised",
                file=sys.stderr,
            )
        else:
            index = {c: i for i, c in enumerate(classes)}
            y = np.array([index.get(v, -1) for v in table.labels], dtype=np.int64)
    if table.ignored:
        print(f"note: leaving out non-numeric columns {table.ignored}", file=sys.stderr)
    for note in notes:
        print(f"warning: {note}", file=sys.stderr)

    if args.dp:
        K = args.truncation if args.truncation is not None else 10
    else:
        K = args.components if args.components is not None else max(2, len(classes))
    compared = None  # every row labelled: the labels are compared with the clusters, not fitted
    if y is not None and not (y < 0).any():
        compared, y, fitted_classes = y, None, []
    else:
        fitted_classes = classes
        if len(classes) > K:
            raise CLIError(
                f"expected at least as many components as classes, got K={K} and "
                f"{len(classes)} classes in {args.labels!r}"
            )
    est = estimator(args, K, D)

    # Held-out rows for the reported log-likelihood: unlabelled rows only.
    rng = np.random.default_rng(args.seed)
    unlabelled = np.flatnonzero(y < 0) if y is not None else np.arange(N)
    n_test = min(int(args.test_fraction * N), max(len(unlabelled) - 1, 0))
    test = np.sort(rng.permutation(unlabelled)[:n_test])
    train = np.setdiff1d(np.arange(N), test)
    if len(train) < max(2, K):
        raise CLIError(
            f"expected at least max(2, K)={max(2, K)} training rows, got {len(train)} "
            f"of {N} rows (after holding out {n_test})"
        )
    read_s = time.perf_counter() - start

    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        try:
            est.fit(X[train], None if y is None else y[train])
        except ValueError as err:
            raise CLIError(str(err)) from None
    fit_s = time.perf_counter() - t0
    fit_notes = list(dict.fromkeys(str(w.message) for w in caught))  # e.g. unused components
    for note in fit_notes:
        print(f"warning: {note}", file=sys.stderr)

    t0 = time.perf_counter()
    scores = est.score_samples(X).astype(np.float64)  # (N,)
    proba = est.predict_proba(X).astype(np.float64)  # (N, K)
    labels = proba.argmax(1)
    weights = est.weights_.astype(np.float64)
    samples, _ = est.sample(min(2000, max(500, N)))
    score_s = time.perf_counter() - t0

    summary = _report.summary(
        args, est, table, source, fitted_classes, y, train, test, scores, labels, weights
    )
    from ..diagnostics import adjusted_rand_index

    if y_true is not None:
        summary["demo"] = {
            "name": args.demo,
            "adjusted_rand_index": adjusted_rand_index(y_true, labels),
        }
    if compared is not None:
        summary["label_agreement"] = {
            "column": args.labels,
            "classes": classes,
            "adjusted_rand_index": adjusted_rand_index(compared, labels),
        }
    summary["warnings"] = notes + fit_notes
    summary["timings"] = {"read_s": read_s, "fit_s": fit_s, "score_s": score_s}
    _report.write_fit(
        args.out,
        est,
        table,
        fitted_classes,
        scores,
        proba,
        labels,
        weights,
        samples,
        summary,
        start,
    )
    if not args.quiet:
        _print_fit(args, summary)
    return 0


def _print_fit(args: argparse.Namespace, summary: dict) -> None:
    data = summary["data"]
    est = summary["settings"]["estimator"]
    source = data["source"]
    if source.startswith("demo:"):
        source = f"demo set {source[5:]}"
    kept, stats = summary["selection"], summary["fit_stats"]
    ll = summary["held_out_log_likelihood"]
    K = len(summary["weights"])
    what = (
        f"a Gaussian mixture of {K} components"
        if kept["gaussian_mixture"]
        else f"{K} {est['flow']} flows"
    )
    trained = [c for c in kept["candidates"] if c["steps"] > 0]
    steps = f"{len(trained)} candidates trained {stats['steps']} steps in all"
    if len(trained) == 1:
        steps = f"1 candidate trained {stats['steps']} steps"
    lines = [
        f"fitted {what} to {data['n_rows']} rows x {data['n_features']} columns ({source})",
        f"  {kept['description']}",
        f"  fit in {summary['timings']['fit_s']:.1f} s on {stats['device']}"
        + (f"; {steps}" if trained else ""),
        "  held-out log-likelihood: "
        + (
            f"{ll:.3f} per row ({data['n_test']} rows)"
            if ll is not None
            else "none (no rows held out)"
        ),
        "  weights: "
        + " ".join(f"{w:.3f}" for w in summary["weights"])
        + f"  ({summary['effective_components']} above {EFFECTIVE_WEIGHT:.0%})",
    ]
    if "demo" in summary:
        lines.append(
            f"  adjusted Rand index against the true clusters: "
            f"{summary['demo']['adjusted_rand_index']:.3f}"
        )
    if "label_agreement" in summary:
        agreement = summary["label_agreement"]
        lines.append(
            f"  adjusted Rand index of the clusters against {agreement['column']!r}: "
            f"{agreement['adjusted_rand_index']:.3f} (every row is labelled, so the fit left the "
            "labels out)"
        )
    lines.append(f"wrote {args.out}/: {' '.join(FIT_FILES)}")
    lines.append(f"score new rows: {PROG} score {os.path.join(args.out, 'model.pt')} DATA.csv")
    print("\n".join(lines))
