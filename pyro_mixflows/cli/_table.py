"""CSV tables and atomic outputs for the ``pyro-mixflows`` command (Python's csv module + NumPy)."""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np


class CLIError(Exception):
    """Bad input to the command: printed as one message on stderr, exit code 2."""


@dataclass
class Table:
    """The numeric part of a CSV file.

    Attributes:
        X: (N, D) float64 values of the numeric columns, in file order.
        columns: the D numeric column names.
        labels: (N,) the label column's cells (stripped; "" = unlabelled), or None.
        ignored: names of the text columns that were left out.
    """

    X: np.ndarray
    columns: list[str]
    labels: list[str] | None = None
    ignored: list[str] = field(default_factory=list)


def _parse(cell: str) -> float | None:
    try:
        return float(cell)
    except ValueError:
        return None


_OTHER_DELIMITERS = {";": "semicolons", "\t": "tabs", "|": "vertical bars"}


def _delimiter_hint(first_line: str, header: list[str]) -> str:
    """A hint when the first line looks separated by something other than commas, else ""."""
    for sep, name in _OTHER_DELIMITERS.items():
        if first_line.count(sep) >= max(1, first_line.count(",")) and len(header) <= 2:
            return (
                f"; the header seems separated by {name} ({sep!r}), and pyro-mixflows reads "
                "comma-separated files: save the table as CSV with commas"
            )
    return ""


def _looks_like_labels(values: list[str]) -> bool:
    """Cells of a numeric column with empty cells that look like class labels: mostly empty, or
    a few distinct integers."""
    filled = [v for v in values if v != ""]
    if len(filled) <= len(values) / 2:
        return True
    numbers = [_parse(v) for v in filled]
    ints = all(x is not None and math.isfinite(x) and float(x).is_integer() for x in numbers)
    return ints and len(set(filled)) <= 20


def read_table(
    path: str,
    *,
    label_column: str | None = None,
    columns: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
) -> Table:
    """Read the numeric columns (and optionally a label column) of a CSV file with a header row.

    A column is numeric when at least one of its cells parses as a number; every other cell of
    a numeric column must then be a finite number. Columns whose cells are all text are left
    out (``Table.ignored``), and so are the columns named in ``exclude``. ``columns`` selects the
    numeric columns by name instead.

    Raises:
        CLIError: a missing or empty file, ragged rows, an unknown label column, no numeric
            columns, a non-numeric, empty or non-finite cell in a numeric column.
    """
    if not os.path.exists(path):
        raise CLIError(f"{path}: no such file")
    if os.path.isdir(path):
        raise CLIError(f"{path}: expected a CSV file, got a directory")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            text = f.read()
    except UnicodeDecodeError:
        raise CLIError(f"{path}: expected a UTF-8 text CSV file, got binary data") from None
    except OSError as err:
        raise CLIError(f"{path}: cannot read: {err.strerror}") from None
    try:
        reader = csv.reader(io.StringIO(text))
        rows = [(reader.line_num, row) for row in reader if any(c.strip() for c in row)]
    except csv.Error as err:
        raise CLIError(f"{path}: not a valid CSV file: {err}") from None
    if not rows:
        raise CLIError(f"{path}: the file is empty; expected a header row and data rows")
    header = [c.strip() for c in rows[0][1]]
    body = rows[1:]
    first_line = text.lstrip("\ufeff").split("\n", 1)[0]
    if header and all(_parse(c) is not None for c in header):
        shown = ", ".join(header[:3]) + (", ..." if len(header) > 3 else "")
        raise CLIError(
            f"{path}: expected a header row of column names, got a first row of numbers "
            f"({shown}); add a header line such as "
            f"{','.join(f'x{j}' for j in range(min(len(header), 3)))}"
            f"{',...' if len(header) > 3 else ''}"
        )
    if not body:
        raise CLIError(f"{path}: expected data rows below the header, got only the header")
    header = [name or f"column{j}" for j, name in enumerate(header)]
    seen = {name for name in header if header.count(name) > 1}
    if seen:
        raise CLIError(f"{path}: expected unique column names, got duplicates {sorted(seen)}")
    for line, row in body:
        if len(row) != len(header):
            raise CLIError(
                f"{path}, line {line}: expected {len(header)} cells (as in the header), got "
                f"{len(row)}" + _delimiter_hint(first_line, header)
            )
    cells = [[c.strip() for c in row] for _, row in body]  # (N, columns)
    lines = [line for line, _ in body]

    labels = None
    if label_column is not None:
        if label_column not in header:
            raise CLIError(f"{path}: unknown label column {label_column!r}; columns are {header}")
        j = header.index(label_column)
        labels = [row[j] for row in cells]

    if columns is not None:
        missing = [c for c in columns if c not in header]
        if missing:
            raise CLIError(f"{path}: expected columns {list(columns)}, missing {missing}")
        chosen = [header.index(c) for c in columns]
        ignored = []
    else:
        chosen, ignored = [], []
        for j, name in enumerate(header):
            if name == label_column or name in exclude:
                continue
            if any(_parse(row[j]) is not None for row in cells):
                chosen.append(j)
            else:
                ignored.append(name)
        if not chosen:
            raise CLIError(
                f"{path}: expected at least one numeric column, got none (columns: {header})"
                + _delimiter_hint(first_line, header)
            )

    X = np.empty((len(cells), len(chosen)), dtype=np.float64)
    for i, row in enumerate(cells):
        for d, j in enumerate(chosen):
            cell = row[j]
            value = _parse(cell)
            where = f"{path}, line {lines[i]}, column {header[j]!r}"
            if cell == "":
                hint = "missing values are not supported, drop or fill the row"
                if label_column is None and columns is None:
                    values = [r[j] for r in cells]
                    if _looks_like_labels(values):
                        empty = sum(v == "" for v in values)
                        hint = (
                            f"{empty} of {len(values)} cells of {header[j]!r} are empty: if it "
                            f"holds class labels (empty = unlabelled), pass --labels {header[j]}; "
                            "otherwise drop or fill the rows"
                        )
                raise CLIError(f"{where}: empty cell; {hint}")
            if value is None:
                raise CLIError(f"{where}: expected a number, got {cell!r}")
            if not math.isfinite(value):
                raise CLIError(f"{where}: expected a finite number, got {cell!r} (NaN/inf)")
            X[i, d] = value
    return Table(X, [header[j] for j in chosen], labels, ignored)


def format_csv(header: Sequence[str], columns: Sequence[Sequence]) -> str:
    """CSV text with ``header`` and the given columns (floats written with repr precision)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for row in zip(*columns, strict=True):
        writer.writerow([repr(float(v)) if isinstance(v, (float, np.floating)) else v for v in row])
    return out.getvalue()


def write_text_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary sibling file and ``os.replace``."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".csv")
    try:
        with os.fdopen(fd, "w", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def check_writable_folder(folder: str, what: str) -> None:
    """Refuse, before any work, a folder where nothing can be created.

    ``folder`` (or, when it does not exist yet, its nearest existing ancestor, in which the
    missing folders would be made) must be a folder in which a sub-folder can actually be created:
    the check makes and removes an empty hidden folder there, so it also catches read-only file
    systems and pseudo file systems such as /proc, where permission bits say nothing.
    """
    folder = os.path.abspath(folder)
    existing = folder
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise CLIError(f"{what}: cannot write there: {existing} is a file, not a folder")
    try:
        probe = tempfile.mkdtemp(dir=existing, prefix=".pyro-mixflows-probe-")
        os.rmdir(probe)
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise CLIError(f"{what}: cannot create anything in {existing} ({reason})") from None


def check_output_file(path: str | None, force: bool) -> None:
    """Refuse an existing output file (unless ``force``), a missing or unwritable parent folder,
    before work."""
    if path is None:
        return
    if os.path.isdir(path):
        raise CLIError(f"{path}: expected an output file name, got a directory")
    if os.path.exists(path) and not force:
        raise CLIError(f"{path} exists; pass --force to replace it")
    parent = os.path.dirname(os.path.abspath(path))
    check_writable_folder(parent, path)
    if not os.path.isdir(parent):
        raise CLIError(f"{path}: the folder {parent} does not exist")


def check_output_dir(path: str, force: bool, owned: Sequence[str]) -> None:
    """Refuse an output folder that exists, unless ``force`` and it holds only ``owned`` files.

    So ``--force`` replaces an earlier run's output but never deletes anything else. The folder
    that will hold ``path`` must be writable (:func:`check_writable_folder`).
    """
    check_writable_folder(os.path.dirname(os.path.abspath(path)), path)
    if not os.path.lexists(path):
        return
    if not os.path.isdir(path) or os.path.islink(path):
        raise CLIError(f"{path} exists and is not a folder; choose another --out")
    if not force:
        raise CLIError(f"output folder {path} exists; pass --force to replace it")
    foreign = sorted(set(os.listdir(path)) - set(owned))
    if foreign:
        raise CLIError(
            f"refusing to replace {path}: it holds files pyro-mixflows did not write "
            f"({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}); choose another --out"
        )


@contextlib.contextmanager
def atomic_dir(path: str) -> Iterator[str]:
    """Yield a temporary sibling folder; on success it replaces ``path`` in one rename.

    If the body raises (or the process is interrupted), the temporary folder is removed and
    ``path`` is left as it was.
    """
    path = os.path.abspath(path)
    parent, name = os.path.split(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{name}.tmp-")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; an ordinary folder follows the umask
    try:
        yield tmp
        if os.path.lexists(path):
            old = tempfile.mkdtemp(dir=parent, prefix=f".{name}.old-")
            os.rmdir(old)
            os.rename(path, old)
            try:
                os.rename(tmp, path)
            except BaseException:
                os.rename(old, path)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, path)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
