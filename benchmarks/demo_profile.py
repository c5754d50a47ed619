"""Where the demo's wall clock goes: ``pyro-mixflows fit`` on the demo set with stage timers.

Runs the command ``make demo`` runs (``fit --force --out DIR``, one torch thread) in this process,
with wall-clock timers around the estimator's stages (``pyro_mixflows._stages``: the starts,
pre-training, training) and around every training step of ``fit`` (loss, backward, non-finite
guard and optimizer), and prints the totals. What is not in a stage is the command's own work
(reading the data, the report, the plots).

    python -m benchmarks.demo_profile [--out DIR]
    # an older copy of the package: run from the directory that holds it
    cd /tmp/old && PYTHONPATH=. python /path/to/benchmarks/demo_profile.py
"""

from __future__ import annotations

import argparse
import collections
import importlib
import os
import tempfile
import time

STAGES = (
    "covariance_by_cv",
    "em_start",
    "partition_labels",
    "ncut_per_cluster",
    "label_start",
    "pretrain",
    "train",
    "held_out_log_probs",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="report directory (default: a temporary one)")
    args = parser.parse_args()
    t0 = time.perf_counter()
    import pyro_mixflows
    from pyro_mixflows import _stages, cli

    fit_module = importlib.import_module("pyro_mixflows.infer.fit")
    t_import = time.perf_counter() - t0
    total = collections.defaultdict(float)
    calls = collections.defaultdict(int)

    def timed(owner, name: str, label: str) -> None:
        function = getattr(owner, name)

        def wrapper(*a, **k):
            start = time.perf_counter()
            try:
                return function(*a, **k)
            finally:
                total[label] += time.perf_counter() - start
                calls[label] += 1

        setattr(owner, name, wrapper)

    for name in STAGES:
        timed(_stages, name, name)
    timed(fit_module, "_step", "training steps (loss, backward, guard, Adam)")
    out = args.out or tempfile.mkdtemp(prefix="demo-profile-")
    print(
        f"package {os.path.dirname(pyro_mixflows.__file__)}; load average {os.getloadavg()[0]:.1f}"
    )
    t0 = time.perf_counter()
    cli.main(["fit", "--force", "--out", out, "--threads", "1"])
    wall = time.perf_counter() - t0
    print(
        f"\nimports {t_import:.1f} s; the command {wall:.1f} s; load average {os.getloadavg()[0]:.1f}"
    )
    steps = calls["training steps (loss, backward, guard, Adam)"]
    for label in sorted(total, key=lambda k: -total[k]):
        print(f"{label:>46}: {total[label]:7.2f} s  ({calls[label]} calls)")
    step_s = total["training steps (loss, backward, guard, Adam)"]
    if steps:
        print(f"mean training step: {1e3 * step_s / steps:.2f} ms")
    staged = sum(total[s] for s in STAGES if s not in ("pretrain", "train"))
    staged += total["pretrain"] + total["train"]
    print(f"outside the stages (data, report, plots): {wall - staged:.1f} s")


if __name__ == "__main__":
    main()
