"""The options of ``pyro-mixflows`` and the one table that maps them to the estimator's parameters."""

from __future__ import annotations

import argparse
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from ._report import FIT_FILES, PROG
from ._sample import MALA_TARGETS

DEMO_ROWS = 1000
THREADS_HELP = "torch CPU threads (default: torch's choice; 1 is fastest on a busy machine)"

# The options of `fit` that set VariationalFlowMixture's parameters: argparse dest -> parameter,
# or (parameter, convert) when the option's value is converted first. An option whose value
# (converted) is None is not passed, so the estimator's own default applies; help texts read those
# defaults from the estimator's signature. No other place names the estimator's parameters
# (n_components, from -k/--dp/--truncation and --labels, excepted).
ESTIMATOR_OPTIONS: dict[str, str | tuple[str, Callable[[Any], Any]]] = {
    "flow": "flow",
    "layers": "num_layers",
    "hidden": "hidden_dims",
    "bins": "count_bins",
    "dp": ("weights", lambda dp: "dirichlet_process" if dp else None),
    "init": "init",
    "restarts": "n_init",
    "capacity": "capacities",
    "steps": "max_steps",
    "batch_size": "batch_size",
    "lr": "learning_rate",
    "seed": "random_state",
    "device": "device",
    "quiet": ("verbose", lambda quiet: not quiet),
}


def estimator_options(values: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of ``VariationalFlowMixture`` that the options ``values`` (argparse
    dest -> value) set through ``ESTIMATOR_OPTIONS``; options left at None are not passed."""
    options = {}
    for dest, parameter in ESTIMATOR_OPTIONS.items():
        name, convert = (parameter, None) if isinstance(parameter, str) else parameter
        value = values.get(dest)
        if value is not None and convert is not None:
            value = convert(value)
        if value is not None:
            options[name] = value
    return options


def _default(dest: str, extra: str = "") -> str:
    """ " (default V[; extra])" with V the estimator's own default for the option ``dest``, read
    from ``VariationalFlowMixture``'s signature (V left out when it has no such parameter)."""
    from ..estimators import VariationalFlowMixture

    parameter = ESTIMATOR_OPTIONS[dest]
    name = parameter if isinstance(parameter, str) else parameter[0]
    found = inspect.signature(VariationalFlowMixture).parameters.get(name)
    parts = []
    if found is not None and found.default is not inspect.Parameter.empty:
        value = found.default
        if value is None:
            value = ": VariationalFlowMixture's own choice"
        elif isinstance(value, (tuple, list)):
            value = " " + ",".join(str(v) for v in value)
        else:
            value = f" {value}"
        parts.append(f"default{value}")
    if extra:
        parts.append(extra)
    return f" ({'; '.join(parts)})" if parts else ""


# --- argument types ----------------------------------------------------------------------------
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


def _names(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(
            f"expected comma-separated column names such as a,b,c, got {text!r}"
        )
    return names


# --- the parser --------------------------------------------------------------------------------
def _add_runtime_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=_int_at_least(1, "--threads"), help=THREADS_HELP)
    parser.add_argument("--device", help="torch device, e.g. cpu or cuda (default cpu)")


def _add_output_file(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", metavar="FILE", help="output CSV (default: standard output)")
    parser.add_argument("--force", action="store_true", help="replace an existing --out file")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``pyro-mixflows`` and its three subcommands."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Fit mixtures of normalizing flows to CSV data, score new rows, sample.",
        epilog="Run 'pyro-mixflows fit' with no file to fit the built-in two-moons demo set.",
    )
    sub = parser.add_subparsers(dest="command", metavar="{fit,score,sample}", required=True)
    _add_fit(sub)
    _add_score(sub)
    _add_sample(sub)
    return parser


def _add_fit(sub) -> None:
    from ..datasets import DATASETS
    from ..flows import FLOWS

    fit = sub.add_parser(
        "fit",
        help="fit a flow mixture to a CSV file (or the demo set) and write a report folder",
        description=(
            "Fit a mixture of normalizing flows to the numeric columns of a CSV file with a "
            "header row (text columns are left out; choose columns with --columns or --drop). "
            "A column named like a target (label, class, y, ...) is refused and a numeric column "
            "of few distinct integers is warned about, unless --columns names it. With no file, "
            f"fit a built-in demo set. Writes {', '.join(FIT_FILES)} into --out, atomically."
        ),
    )
    fit.add_argument("data", nargs="?", metavar="DATA.csv", help="CSV file (default: demo set)")
    columns = fit.add_mutually_exclusive_group()
    columns.add_argument(
        "--columns",
        type=_names,
        metavar="A,B,...",
        help="use only these columns as features, as named (also one named like a target)",
    )
    columns.add_argument(
        "--drop", type=_names, metavar="A,B,...", help="leave these columns out of the features"
    )
    fit.add_argument(
        "--labels",
        metavar="COLUMN",
        help="class label column, left out of the features. With some cells empty (unlabelled "
        "rows), a semi-supervised fit in which component k is class k; with every row labelled, "
        "an unsupervised fit whose clusters are compared with the labels (adjusted Rand index)",
    )
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
        "the number of clusters is found on held-out rows (Gaussian pieces compared by "
        "cross-validation, pieces of one cluster joined), at most the truncation",
    )
    fit.add_argument("--truncation", type=int, metavar="T", help="DP truncation (default 10)")
    fit.add_argument(
        "--flow", choices=FLOWS, help="component flow" + _default("flow", "maf for 1 column")
    )
    fit.add_argument(
        "--layers",
        type=_int_at_least(0, "--layers"),
        metavar="L",
        help="flow layers per component on top of its full affine map; 0 = Gaussian only"
        + _default("layers"),
    )
    fit.add_argument(
        "--hidden", type=_hidden, metavar="W,W", help="hidden widths" + _default("hidden")
    )
    fit.add_argument(
        "--bins",
        type=_int_at_least(2, "--bins"),
        metavar="B",
        help="spline bins" + _default("bins"),
    )
    fit.add_argument(
        "--steps",
        type=_int_at_least(1, "--steps"),
        metavar="N",
        help="training steps at most; early stopping usually ends sooner" + _default("steps"),
    )
    fit.add_argument(
        "--batch-size",
        type=_int_at_least(1, "--batch-size"),
        metavar="B",
        help="rows per training step, the minibatch size" + _default("batch_size"),
    )
    fit.add_argument(
        "--init",
        choices=("auto", "em", "spectral", "kmeans", "random"),
        help="start: auto = EM's Gaussian mixture, plus the spectral partition when its clusters "
        "are apart; the better on held-out rows is kept" + _default("init"),
    )
    fit.add_argument(
        "--capacity",
        action="append",
        type=_capacity,
        metavar="L[:W,W][:WD]",
        help="a flow capacity to try from every start (repeat to try several; the best on "
        "held-out rows is kept, never worse than the Gaussian start): L layers, hidden widths, "
        "weight decay (Adam's L2 penalty), e.g. --capacity 0 --capacity 2:16 --capacity "
        "4:32,32:1e-3 (default: --layers/--hidden)",
    )
    fit.add_argument(
        "--restarts",
        type=_int_at_least(1, "--restarts"),
        metavar="R",
        help="EM restarts of the Gaussian start" + _default("restarts"),
    )
    fit.add_argument(
        "--lr", type=_positive_float, metavar="LR", help="Adam step size" + _default("lr")
    )
    fit.add_argument(
        "--test-fraction",
        type=_fraction,
        default=0.1,
        metavar="F",
        help="share of unlabelled rows held out for the reported log-likelihood (default 0.1)",
    )
    fit.add_argument(
        "--demo",
        choices=sorted(DATASETS),
        default="two_moons",
        help=f"demo set used when no file is given ({DEMO_ROWS} rows; default two_moons)",
    )
    fit.add_argument(
        "--seed", type=int, default=0, help="random seed of the held-out rows and the fit (0)"
    )
    fit.add_argument(
        "--out", default="mixflows-out", metavar="DIR", help="output folder (mixflows-out)"
    )
    fit.add_argument("--force", action="store_true", help="replace an earlier output folder")
    fit.add_argument("-q", "--quiet", action="store_true", help="no progress bar, no summary")
    _add_runtime_options(fit)


def _add_score(sub) -> None:
    score = sub.add_parser(
        "score",
        help="per-row log-density and cluster labels of new rows",
        description=(
            "Score the rows of a CSV file with a fitted model: writes row, log_density "
            "(natural log, in the data's units), label (most probable component), for a "
            "semi-supervised model class, and with --proba the responsibilities. The fit's "
            "columns are found by name; other columns are ignored."
        ),
    )
    score.add_argument("model", metavar="MODEL", help="model.pt (or the folder fit wrote)")
    score.add_argument("data", metavar="DATA.csv", help="CSV file of the rows to score")
    score.add_argument(
        "--proba", action="store_true", help="add the responsibilities p_0..p_K-1 of each row"
    )
    _add_output_file(score)
    _add_runtime_options(score)


def _add_sample(sub) -> None:
    sample = sub.add_parser(
        "sample",
        help="draw samples from a fitted model (naive or latent MALA)",
        description=(
            "Draw N rows from a fitted model: naive ancestral sampling (exact), or with --mala "
            "latent-space MALA chains, with independence moves from the flows' base so that "
            "chains cross between components. --mala samples the fitted density itself unless "
            "--target says otherwise, and reports what it samples, R-hat, ESS and component "
            "frequencies next to the fitted weights on stderr."
        ),
    )
    sample.add_argument("model", metavar="MODEL", help="model.pt (or the folder fit wrote)")
    sample.add_argument(
        "-n", "--num-samples", type=_int_at_least(1, "-n"), required=True, help="rows to draw"
    )
    sample.add_argument("--mala", action="store_true", help="latent-space MALA chains")
    sample.add_argument(
        "--warmup", type=_int_at_least(1, "--warmup"), default=200, help="MALA warm-up (200)"
    )
    sample.add_argument(
        "--chains", type=_int_at_least(1, "--chains"), default=16, help="MALA batched chains (16)"
    )
    sample.add_argument(
        "--target",
        choices=tuple(MALA_TARGETS),
        default="fitted",
        help="what --mala samples: fitted = the fitted density p itself (default; component "
        "frequencies match the fitted weights); sharpened = p squared, renormalized (fewer rows "
        "on low-density bridges, but separated components' weights move toward w^2 / sum w^2); "
        "tempered = the paper's q_Z(z) / |det J_f(z)| (fewer bridge rows, weights may shift)",
    )
    sample.add_argument("--seed", type=int, default=0, help="random seed (0)")
    sample.add_argument("-q", "--quiet", action="store_true", help="no MALA report on stderr")
    _add_output_file(sample)
    _add_runtime_options(sample)
