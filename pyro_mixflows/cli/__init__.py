"""The ``pyro-mixflows`` command: fit a flow mixture to a CSV file, score new rows, sample.

::

    pyro-mixflows fit [DATA.csv] [--columns A,B | --drop A,B] [--labels COL] [-k K | --dp] ...
    pyro-mixflows score MODEL DATA.csv [--out FILE]
    pyro-mixflows sample MODEL -n N [--mala [--target fitted|sharpened|tempered]] [--out FILE]

Bad input (a missing, empty, headerless or non-numeric file, one separated by something other
than commas, NaN/inf, a column count that differs from the fit, an unknown column, a feature
named like a target, K < 1, an existing or unwritable output, a file that is not a model) is
refused with one message on stderr and exit code 2, before any work.

Layout: ``_parser`` holds the options and the one table (``ESTIMATOR_OPTIONS``) that maps them
to ``VariationalFlowMixture``'s parameters; ``_fit``, ``_score`` and ``_sample`` run the
subcommands; ``_columns`` chooses the features; ``_table`` reads CSV files and writes outputs
atomically; ``_io`` loads model files; ``_report`` writes the fit's folder.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from . import _fit, _sample, _score
from ._parser import DEMO_ROWS, ESTIMATOR_OPTIONS, build_parser, estimator_options
from ._report import FIT_FILES, PROG
from ._table import CLIError

__all__ = [
    "DEMO_ROWS",
    "ESTIMATOR_OPTIONS",
    "FIT_FILES",
    "build_parser",
    "estimator_options",
    "main",
]

_RUN = {"fit": _fit.run, "score": _score.run, "sample": _sample.run}


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
        return _RUN[args.command](args)
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
