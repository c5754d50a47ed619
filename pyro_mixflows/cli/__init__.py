"""The ``pyro-mixflows`` command: fit a flow mixture to a CSV file, score new rows, sample.

::

    pyro-mixflows fit [DATA.csv] [--components K | --dp --truncation T] [--out DIR] ...
    pyro-mixflows score MODEL DATA.csv [--out FILE]
    pyro-mixflows sample MODEL -n N [--mala [--target sharpened|fitted|tempered]] [--out FILE]

Bad input (a missing, empty, headerless or non-numeric file, one separated by something other
than commas, NaN/inf, a column count that differs from the fit, an unknown label column, K < 1,
an existing or unwritable output, a file that is not a model) is refused with one message on
stderr and exit code 2, before any work. CSV reading and output checks live in ``_table``, model
files and ``sample --mala`` in ``_io``, the report folder in ``_report``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections.abc import Sequence

import numpy as np

from . import _io, _report
from ._report import EFFECTIVE_WEIGHT, FIT_FILES, PROG
from ._table import (
    CLIError,
    Table,
    check_output_dir,
    check_output_file,
    format_csv,
    read_table,
)

DEMO_ROWS = 1000
THREADS_HELP = "torch CPU threads (default: torch's choice; 1 is fastest on a busy machine)"


# --- argument parsing --------------------------------------------------------------------------
def _int_at_least(low: int, what: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer {what}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected {what} >= {low}, got {value}")
        return value

    return parse


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value}")
    return value


def _capacity(text: str) -> dict:
    """``L[:W,W][:WD]`` -> {"num_layers": L, "hidden_dims": (W, W), "weight_decay": WD}."""
    parts = text.split(":")
    try:
        if not 1 <= len(parts) <= 3:
            raise ValueError
        capacity: dict = {"num_layers": int(parts[0])}
        if len(parts) > 1 and parts[1]:
            capacity["hidden_dims"] = _hidden(parts[1])
        if len(parts) > 2:
            capacity["weight_decay"] = float(parts[2])
        if capacity["num_layers"] < 0 or capacity.get("weight_decay", 0.0) < 0:
            raise ValueError
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(
            f"expected L[:W,W][:WD] such as 2:16 or 4:32,32:1e-3 (L >= 0, WD >= 0), got {text!r}"
        ) from None
    return capacity


def _hidden(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(t) for t in text.split(","))
    except ValueError:
        dims = ()
    if not dims or min(dims) < 1:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive widths such as 32,32, got {text!r}"
        )
    return dims


def _add_runtime_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=_int_at_least(1, "--threads"), help=THREADS_HELP)
    parser.add_argument("--device", help="torch device, e.g. cpu or cuda (default cpu)")


def _add_output_file(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", metavar="FILE", help="output CSV (default: standard output)")
    parser.add_argument("--force", action="store_true", help="replace an existing --out file")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``pyro-mixflows`` and its three subcommands."""
    from ..datasets import DATASETS
    from ..flows import FLOWS

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Fit mixtures of normalizing flows to CSV data, score new rows, sample.",
        epilog="Run 'pyro-mixflows fit' with no file to fit the built-in two-moons demo set.",
    )
    sub = parser.add_subparsers(dest="command", metavar="{fit,score,sample}", required=True)

    fit = sub.add_parser(
        "fit",
        help="fit a flow mixture to a CSV file (or the demo set) and write a report folder",
        description=(
            "Fit a mixture of normalizing flows to the numeric columns of a CSV file with a "
            "header row (text columns are left out). With no file, fit a built-in demo set. "
            f"Writes {', '.join(FIT_FILES)} into --out, atomically."
        ),
    )
    fit.add_argument("data", nargs="?", metavar="DATA.csv", help="CSV file (default: demo set)")
    k = fit.add_mutually_exclusive_group()
    k.add_argument(
        "-k",
        "--components",
        type=int,
        metavar="K",
        help="number of components (default 2, or the number of classes with --labels)",
    )
    k.add_argument(
        "--dp",
        action="store_true",
        help="Dirichlet-process (stick-breaking) weights truncated at --truncation components; "
        "components that split one dense region are merged, so the number fitted is found",
    )
    fit.add_argument("--truncation", type=int, metavar="T", help="DP truncation (default 10)")
    fit.add_argument(
        "--flow", choices=FLOWS, help="component flow (default spline_coupling; maf for 1 column)"
    )
    fit.add_argument(
        "--layers",
        type=_int_at_least(0, "--layers"),
        default=4,
        metavar="L",
        help="flow layers per component on top of its full affine map (4; 0 = Gaussian only)",
    )
    fit.add_argument(
        "--hidden", type=_hidden, default=(32, 32), metavar="W,W", help="hidden widths (32,32)"
    )
    fit.add_argument("--bins", type=_int_at_least(2, "--bins"), default=8, help="spline bins")
    fit.add_argument(
        "--labels",
        metavar="COLUMN",
        help="label column for semi-supervised fitting (empty cell = unlabelled)",
    )
    fit.add_argument(
        "--steps",
        type=_int_at_least(1, "--steps"),
        default=4000,
        help="training steps at most; early stopping usually ends sooner (4000)",
    )
    fit.add_argument(
        "--init-steps",
        type=_int_at_least(0, "--init-steps"),
        default=300,
        help="pre-training steps on the initial clustering (300)",
    )
    fit.add_argument(
        "--batch-size", type=_int_at_least(1, "--batch-size"), default=256, metavar="B"
    )
    fit.add_argument(
        "--init",
        choices=("auto", "em", "spectral", "kmeans", "random"),
        default="auto",
        help="start: auto = EM's Gaussian mixture, plus the spectral partition when its clusters "
        "are apart; the better on held-out rows is kept (auto)",
    )
    fit.add_argument(
        "--capacity",
        action="append",
        type=_capacity,
        metavar="L[:W,W][:WD]",
        help="a flow capacity to try from every start (repeat to try several; the best on "
        "held-out rows is kept, never worse than the Gaussian start): L layers, hidden widths, "
        "weight decay, e.g. --capacity 0 --capacity 2:16 --capacity 4:32,32:1e-3 "
        "(default: --layers/--hidden)",
    )
    fit.add_argument(
        "--weight-decay",
        type=_non_negative_float,
        default=0.0,
        metavar="WD",
        help="Adam's L2 penalty on all parameters (0)",
    )
    fit.add_argument(
        "--restarts",
        type=_int_at_least(1, "--restarts"),
        default=5,
        help="EM restarts of the Gaussian start (5)",
    )
    fit.add_argument("--lr", type=_positive_float, default=5e-4, help="Adam step size (5e-4)")
    fit.add_argument(
        "--test-fraction",
        type=_fraction,
        default=0.1,
        help="share of unlabelled rows held out for the reported log-likelihood (0.1)",
    )
    fit.add_argument(
        "--demo",
        choices=sorted(DATASETS),
        default="two_moons",
        help=f"demo set used when no file is given ({DEMO_ROWS} rows; two_moons)",
    )
    fit.add_argument("--seed", type=int, default=0, help="random seed (0)")
    fit.add_argument("--out", default="mixflows-out", metavar="DIR", help="output folder")
    fit.add_argument("--force", action="store_true", help="replace an earlier output folder")
    fit.add_argument("-q", "--quiet", action="store_true", help="no progress bar, no summary")
    _add_runtime_options(fit)
    fit.set_defaults(run=run_fit)

    score = sub.add_parser(
        "score",
        help="per-row log-density and cluster labels of new rows",
        description=(
            "Score the rows of a CSV file with a fitted model: writes row, log_density "
            "(natural log, in the data's units), label (most probable component), for a "
            "semi-supervised model class, and with --proba the responsibilities."
        ),
    )
    score.add_argument("model", metavar="MODEL", help="model.pt (or the folder fit wrote)")
    score.add_argument("data", metavar="DATA.csv")
    score.add_argument(
        "--proba", action="store_true", help="add the responsibilities p_0..p_K-1 of each row"
    )
    _add_output_file(score)
    _add_runtime_options(score)
    score.set_defaults(run=run_score)

    sample = sub.add_parser(
        "sample",
        help="draw samples from a fitted model (naive or latent MALA)",
        description=(
            "Draw N rows from a fitted model: naive ancestral sampling (exact), or with --mala "
            "latent-space MALA chains, with independence moves from the flows' base so that "
            "chains cross between components. --target sharpened (default) samples the fitted "
            "density squared (fewer rows on low-density bridges; weights of separated components "
            "move toward w^2/sum w^2), fitted the density itself. --mala reports what it samples, "
            "R-hat, ESS and component frequencies next to the fitted weights on stderr."
        ),
    )
    sample.add_argument("model", metavar="MODEL", help="model.pt (or the folder fit wrote)")
    sample.add_argument("-n", "--num-samples", type=_int_at_least(1, "-n"), required=True)
    sample.add_argument("--mala", action="store_true", help="latent-space MALA chains")
    sample.add_argument(
        "--warmup", type=_int_at_least(1, "--warmup"), default=200, help="MALA warm-up (200)"
    )
    sample.add_argument(
        "--chains", type=_int_at_least(1, "--chains"), default=16, help="MALA batched chains (16)"
    )
    sample.add_argument(
        "--target",
        choices=("sharpened", "fitted", "tempered"),
        default="sharpened",
        help="what --mala samples (sharpened)",
    )
    sample.add_argument("--seed", type=int, default=0, help="random seed (0)")
    sample.add_argument("-q", "--quiet", action="store_true", help="no MALA report on stderr")
    _add_output_file(sample)
    _add_runtime_options(sample)
    sample.set_defaults(run=run_sample)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``pyro-mixflows`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a usage error (2), already printed
        return exit_.code if isinstance(exit_.code, int) else 2
    args.argv = list(sys.argv[1:] if argv is None else argv)
    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.device is not None:
        try:
            torch.empty(0, device=args.device)
        except Exception as err:  # torch raises RuntimeError, ValueError or AssertionError
            print(f"{PROG} {args.command}: error: --device {args.device}: {err}", file=sys.stderr)
            return 2
    try:
        return args.run(args)
    except CLIError as err:
        print(f"{PROG} {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted; nothing was written", file=sys.stderr)
        return 130
    except FloatingPointError as err:  # the fit loop's NaN/inf guard: not bad input, a failed fit
        print(
            f"{PROG} {args.command}: training failed: {err}; nothing was written "
            "(try a smaller --lr or another --seed)",
            file=sys.stderr,
        )
        return 1
    except BrokenPipeError:  # e.g. `pyro-mixflows score ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


# --- fit ---------------------------------------------------------------------------------------
def _classes(labels: list[str]) -> list[str]:
    values = sorted({v for v in labels if v != ""})
    try:
        return sorted(values, key=float)
    except ValueError:
        return values


def _estimator(args: argparse.Namespace, K: int, D: int):
    from ..estimators import VariationalFlowMixture

    flow = args.flow or ("spline_coupling" if D >= 2 else "maf")
    if flow != "maf" and D < 2:
        raise CLIError(f"expected --flow maf for data with one column, got --flow {flow}")
    options = dict(
        flow=flow,
        num_layers=args.layers,
        hidden_dims=args.hidden,
        count_bins=args.bins,
        max_steps=args.steps,
        init_steps=args.init_steps,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        weight_decay=args.weight_decay,
        init=args.init,
        n_init=args.restarts,
        capacities=args.capacity,
        random_state=args.seed,
        device=args.device,
        progress_bar=not args.quiet,
    )
    if args.dp:
        options["weights"] = "dirichlet_process"
    est = VariationalFlowMixture(K, **options)
    try:
        est._check_params()
    except ValueError as err:
        if args.dp:
            raise CLIError(
                "--dp needs VariationalFlowMixture(weights='dirichlet_process'), which this "
                f"installation does not offer ({err}); use --components K instead"
            ) from None
        raise CLIError(str(err)) from None
    return est


def _load_data(args: argparse.Namespace) -> tuple[Table, np.ndarray | None, str]:
    if args.data is None:
        if args.labels is not None:
            raise CLIError("--labels needs a DATA.csv file; the demo set has no label column")
        from ..datasets import make

        X, y = make(args.demo, DEMO_ROWS, seed=args.seed)
        return Table(X, [f"x{d}" for d in range(X.shape[1])]), y, f"demo:{args.demo}"
    return read_table(args.data, label_column=args.labels), None, os.path.abspath(args.data)


def run_fit(args: argparse.Namespace) -> int:
    """``pyro-mixflows fit``: see ``pyro-mixflows fit --help``."""
    start = time.perf_counter()
    if args.components is not None and args.components < 1:
        raise CLIError(f"expected --components K >= 1, got {args.components}")
    if args.truncation is not None and not args.dp:
        raise CLIError("--truncation needs --dp")
    if args.truncation is not None and args.truncation < 1:
        raise CLIError(f"expected --truncation T >= 1, got {args.truncation}")
    check_output_dir(args.out, args.force, FIT_FILES)

    table, y_true, source = _load_data(args)
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

    if args.dp:
        K = args.truncation if args.truncation is not None else 10
    else:
        K = args.components if args.components is not None else max(2, len(classes))
    if len(classes) > K:
        raise CLIError(
            f"expected at least as many components as classes, got K={K} and "
            f"{len(classes)} classes in {args.labels!r}"
        )
    est = _estimator(args, K, D)
    if y is not None and not (y < 0).any():
        raise CLIError(
            f"expected some unlabelled rows (empty cells in {args.labels!r}), got {N} labelled "
            "rows; semi-supervised fitting needs both"
        )

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
    notes = list(dict.fromkeys(str(w.message) for w in caught))  # e.g. unused components
    for note in notes:
        print(f"warning: {note}", file=sys.stderr)

    t0 = time.perf_counter()
    scores = est.score_samples(X).astype(np.float64)  # (N,)
    proba = est.predict_proba(X).astype(np.float64)  # (N, K)
    labels = proba.argmax(1)
    weights = est.weights_.astype(np.float64)
    samples, _ = est.sample(min(2000, max(500, N)))
    score_s = time.perf_counter() - t0

    summary = _report.summary(
        args, est, table, source, classes, y, train, test, scores, labels, weights
    )
    if y_true is not None:
        from ..diagnostics import adjusted_rand_index

        summary["demo"] = {
            "name": args.demo,
            "adjusted_rand_index": adjusted_rand_index(y_true, labels),
        }
    summary["warnings"] = notes
    summary["selection"] = {"start": est.start_, "capacity": est.capacity_}
    summary["timings"] = {"read_s": read_s, "fit_s": fit_s, "score_s": score_s}
    _report.write_fit(
        args.out, est, table, classes, scores, proba, labels, weights, samples, summary, start
    )
    if not args.quiet:
        _print_fit(args, summary)
    return 0


def _print_fit(args: argparse.Namespace, summary: dict) -> None:
    data, training = summary["data"], summary["training"]
    est = summary["settings"]["estimator"]
    source = data["source"]
    if source.startswith("demo:"):
        source = f"demo set {source[5:]}"
    stop = "early stopping" if training["converged"] else "step limit"
    ll = summary["held_out_log_likelihood"]
    lines = [
        f"fitted {len(summary['weights'])} {est['flow']} flows to {data['n_rows']} rows x "
        f"{data['n_features']} columns ({source})",
        f"  {training['n_iter']} steps ({stop}) in {summary['timings']['fit_s']:.1f} s",
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
    lines.append(f"wrote {args.out}/: {' '.join(FIT_FILES)}")
    lines.append(f"score new rows: {PROG} score {os.path.join(args.out, 'model.pt')} DATA.csv")
    print("\n".join(lines))


# --- score and sample --------------------------------------------------------------------------
def run_score(args: argparse.Namespace) -> int:
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


def run_sample(args: argparse.Namespace) -> int:
    """``pyro-mixflows sample``: see ``pyro-mixflows sample --help``."""
    import pyro

    check_output_file(args.out, args.force)
    LatentMALA = None
    if args.mala:
        try:
            from ..infer.mala import LatentMALA
        except ImportError:
            raise CLIError(
                "--mala needs the latent-MALA kernel (pyro_mixflows.infer.mala.LatentMALA), "
                "which this installation does not have; sample without --mala"
            ) from None
    est, meta = _io.load_model(args.model, args.device)
    columns = meta.get("columns") or [f"x{d}" for d in range(est.n_features_in_)]
    pyro.set_rng_seed(args.seed)
    n = args.num_samples
    if LatentMALA is None:
        X, z = est.sample(n)
    else:
        X, z, _ = _io.sample_mala(
            LatentMALA, est, n, args.warmup, args.chains, args.target, args.quiet
        )
    cols = [X[:, d].astype(np.float64) for d in range(X.shape[1])] + [z]
    _io.emit(args.out, format_csv([*columns, "component"], cols))
    return 0
