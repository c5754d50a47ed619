"""Where the demo's wall clock goes: ``pyro-mixflows fit`` on the demo set, stage by stage.

Runs the command ``make demo`` runs (``fit --force --out DIR``, one torch thread) in this process
and prints, from the report's ``summary.json``, the seconds of the estimator's stages as it
records them (``fit_stats_["seconds"]``: ``prepare`` (standardize, hold out rows), ``starts``
(EM's Gaussian mixture, the covariance choice and the spectral partition), ``gaussians`` (the
Gaussian starts scored as candidates), ``train`` (the flow candidates' race), ``select`` and, where
EM's mixture is kept, ``refit``), every candidate's training steps, the mean time of an update
(``train`` seconds over updates, the held-out evaluations included; the candidates of one capacity
train side by side, so their updates are those of the longest of them), and the command's own
work around the fit (reading the data; scoring, sampling and writing the report and its plots).

    python -m benchmarks.demo_profile [--out DIR] [--demo NAME]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="report directory (default: a temporary one)")
    parser.add_argument("--demo", default=None, help="demo set (default: the command's)")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    import pyro_mixflows
    from pyro_mixflows import cli

    t_import = time.perf_counter() - t0
    out = args.out or tempfile.mkdtemp(prefix="demo-profile-")
    command = ["fit", "--force", "--out", out, "--threads", "1"]  # as `make demo`
    if args.demo is not None:
        command += ["--demo", args.demo]
    print(
        f"package {os.path.dirname(pyro_mixflows.__file__)}; load average {os.getloadavg()[0]:.2f}"
    )
    t0 = time.perf_counter()
    code = cli.main(command)
    wall = time.perf_counter() - t0
    if code != 0:
        raise SystemExit(f"expected pyro-mixflows fit to succeed, got exit code {code}")
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    stats, timings = summary["fit_stats"], summary["timings"]
    seconds = dict(stats["seconds"])
    total = seconds.pop("total")
    print(
        f"imports {t_import:.1f} s; the command {wall:.1f} s; "
        f"load average {os.getloadavg()[0]:.2f}; device {stats['device']}; "
        f"budget {stats['budget']}"
    )
    print(f"\n{'fit stage':>28}: {'s':>7}")
    for name, s in sorted(seconds.items(), key=lambda kv: -kv[1]):
        print(f"{name:>28}: {s:7.2f}")
    print(f"{'fit (all stages)':>28}: {total:7.2f}")
    updates: dict[str, int] = {}  # capacity -> updates of its race
    for c in summary["selection"]["candidates"]:
        capacity = json.dumps(c["capacity"], sort_keys=True)
        updates[capacity] = max(updates.get(capacity, 0), c["steps"])
        print(f"  candidate {c['start']:>10} {capacity:>20}: {c['steps']:5d} steps ({c['stop']})")
    if sum(updates.values()):
        n = sum(updates.values())
        print(f"{n} updates; {1e3 * seconds.get('train', 0.0) / n:.2f} ms an update")
    print(f"\n{'outside the fit':>28}: {'s':>7}")
    print(f"{'read the data':>28}: {timings['read_s']:7.2f}")
    print(f"{'score and sample':>28}: {timings['score_s']:7.2f}")
    print(f"{'write the report, plots':>28}: {timings['write_s']:7.2f}")
    other = wall - timings["read_s"] - timings["fit_s"] - timings["score_s"] - timings["write_s"]
    print(f"{'the rest':>28}: {other:7.2f}")


if __name__ == "__main__":
    main()
