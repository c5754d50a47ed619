"""Which columns ``pyro-mixflows fit`` uses as features: ``--columns``, ``--drop``, and the guard
that keeps a target column out of the features unless asked for.

A column is taken for a target when its name says so (``label``, ``class``, ``y``, ``species``,
... :func:`looks_like_target`): the fit is refused, since a label fitted as a feature leaks into
the clusters. A numeric column of few distinct integers, each repeated (:func:`few_integers`),
may be a class code or a count: it is used, with a warning. Both name the options that settle it
(``--drop COL``, ``--labels COL``, or ``--columns ...`` to keep it deliberately, which silences
both).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence

import numpy as np

from ._io import header
from ._table import CLIError, Table, read_table

# Whole names (lower case, words joined by "_") and words of a name of at most two words that
# make a column look like a target.
TARGET_NAMES = frozenset({"y", "ytrue", "y_true", "ground_truth", "truth"})
TARGET_WORDS = frozenset(
    {
        "label",
        "labels",
        "target",
        "targets",
        "class",
        "classes",
        "species",
        "outcome",
        "outcomes",
        "diagnosis",
    }
)
FEW_INTEGERS = 10  # a column of at most this many distinct integers, each repeated, ...
MIN_ROWS = 30  # ... in a table of at least this many rows is warned about


def _words(name: str) -> list[str]:
    """The lower-case words of a column name: "TargetClass", "target-class" -> target, class."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name.strip())
    return [w for w in re.split(r"[^0-9a-zA-Z]+", spaced.lower()) if w]


def looks_like_target(name: str) -> bool:
    """Whether a column's name makes it look like a target: ``y``, ``label``, ``Class``,
    ``species``, ``target_class``, ``true_label`` ... (case-insensitive; names of three words or
    more, such as ``label_noise_level``, are taken for features).

    Example:
        >>> [looks_like_target(n) for n in ("Species", "class_label", "y", "yield", "glass")]
        [True, True, True, False, False]
    """
    words = _words(name)
    return "_".join(words) in TARGET_NAMES or (
        len(words) <= 2 and any(w in TARGET_WORDS for w in words)
    )


def few_integers(x: np.ndarray) -> np.ndarray | None:
    """The distinct values of a column x (N,) that holds at most ``FEW_INTEGERS`` distinct
    integers, each at least twice, in at least ``MIN_ROWS`` rows; None for any other column."""
    if len(x) < MIN_ROWS or not np.array_equal(x, np.round(x)):
        return None
    values, counts = np.unique(x, return_counts=True)
    if len(values) > FEW_INTEGERS or counts.min() < 2:
        return None
    return values


def _check_known(path: str, option: str, names: Sequence[str], known: list[str]) -> None:
    if len(set(names)) < len(names):
        twice = sorted({n for n in names if list(names).count(n) > 1})
        raise CLIError(f"expected each column once in {option}, got {', '.join(twice)} twice")
    unknown = [n for n in names if n not in known]
    if known and unknown:
        raise CLIError(
            f"{path}: expected column names in {option}, got unknown {', '.join(map(repr, unknown))}"
            f"; columns are {', '.join(known)}"
        )


def _values(values: np.ndarray) -> str:
    shown = [f"{v:g}" for v in values]
    return ", ".join(shown) if len(shown) <= 5 else f"{shown[0]}..{shown[-1]}"


def feature_table(args: argparse.Namespace) -> tuple[Table, list[str]]:
    """The table ``fit`` reads from ``args.data``: features chosen by ``--columns`` or ``--drop``
    (default: every numeric column), the ``--labels`` column's cells, and warnings to print.

    Raises:
        CLIError: an unknown or repeated name in ``--columns``/``--drop``, the label column among
            ``--columns``, or (without ``--columns``) a feature named like a target.
    """
    path = args.data
    known = header(path)  # [] when unreadable: read_table says why
    if args.columns is not None:
        _check_known(path, "--columns", args.columns, known)
        if args.labels in args.columns:
            raise CLIError(
                f"expected the label column {args.labels!r} outside --columns, got it in both; "
                "a label column is not a feature"
            )
        return read_table(path, label_column=args.labels, columns=args.columns), []
    drop = args.drop or []
    _check_known(path, "--drop", drop, known)
    table = read_table(path, label_column=args.labels, exclude=drop)
    keep = "--columns " + ",".join(table.columns)
    named = [c for c in table.columns if looks_like_target(c)]
    if named:
        listed = ", ".join(map(repr, named))
        it, them = ("it", "it") if len(named) == 1 else ("one", "them")
        raise CLIError(
            f"{path}: column{'s' * (len(named) > 1)} {listed} "
            f"look{'s' * (len(named) == 1)} like a target (by name), not a feature; pass "
            f"--drop {','.join(named)} to leave {them} out, --labels "
            f"{named[0] if len(named) == 1 else 'COLUMN'} to use {it} as class labels, or "
            f"{keep} to keep {them} deliberately"
        )
    warnings = []
    for d, c in enumerate(table.columns):
        values = few_integers(table.X[:, d])
        if values is not None:
            warnings.append(
                f"column {c!r} holds only {len(values)} distinct integers ({_values(values)}) in "
                f"{len(table.X)} rows, like a class code or a count, which a density of "
                f"continuous columns fits poorly; pass --drop {c} to leave it out, --labels {c} "
                f"to use it as class labels, or {keep} to keep it (without this warning)"
            )
    return table, warnings
