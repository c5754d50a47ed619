"""The packed rational-quadratic spline, forward and backward, against an older copy of it.

Times ``packed_rational_quadratic_spline`` (what every spline-coupling layer of
``FlowComponents`` calls) with its gradient with respect to all spline parameters, at the
shapes a coupling layer hands it: K components, M rows, T transformed coordinates, 8 bins. The
variants are timed interleaved round-robin (one torch thread), so they share the machine's load;
reported are medians in ms and the ratio of the medians.

    python -m benchmarks.bench_spline --baseline /tmp/old/pyro_mixflows/flows/_spline.py
    # an older copy: git archive <commit> pyro_mixflows | tar -x -C /tmp/old
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import time

import torch

from pyro_mixflows.flows import _spline

SHAPES = ((2, 256, 1), (4, 512, 1), (4, 4096, 1), (2, 256, 8), (4, 512, 8), (2, 256, 15))
BINS = 8
BOUND = 5.0


def _load(path: str):
    spec = importlib.util.spec_from_file_location("baseline_spline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _step(spline, params: torch.Tensor, y: torch.Tensor, inverse: bool):
    def run() -> None:
        sizes, derivatives = params.split([2 * BINS, BINS - 1], -1)
        out, log_det = spline(
            y, sizes.unflatten(-1, (2, BINS)), derivatives, bound=BOUND, inverse=inverse
        )
        params.grad = None
        (out.sum() + log_det.sum()).backward()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", help="an older copy of pyro_mixflows/flows/_spline.py")
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--inverse", action="store_true", help="time the inverse map")
    args = parser.parse_args()
    torch.set_num_threads(1)
    variants = {"now": _spline.packed_rational_quadratic_spline}
    if args.baseline:
        variants["before"] = _load(args.baseline).packed_rational_quadratic_spline
    print(f"torch {torch.__version__}, one thread, float32, load average {os.getloadavg()[0]:.1f}")
    names = list(variants)
    header = "".join(f"{n:>10}" for n in names)
    print(f"{'K':>3} {'M':>5} {'T':>3}{header}" + ("  before/now" if "before" in names else ""))
    for K, M, T in SHAPES:
        generator = torch.Generator().manual_seed(0)
        params = torch.randn(K, M, T, 3 * BINS - 1, generator=generator).requires_grad_()
        y = 2 * torch.randn(K, M, T, generator=generator)
        runs = {n: _step(f, params, y, args.inverse) for n, f in variants.items()}
        for run in runs.values():  # warm-up
            for _ in range(5):
                run()
        times: dict[str, list[float]] = {n: [] for n in names}
        for _ in range(args.rounds):
            for n, run in runs.items():
                start = time.perf_counter()
                run()
                times[n].append(time.perf_counter() - start)
        medians = {n: 1e3 * statistics.median(v) for n, v in times.items()}
        row = "".join(f"{medians[n]:10.3f}" for n in names)
        ratio = f"  {medians['before'] / medians['now']:10.2f}" if "before" in names else ""
        print(f"{K:>3} {M:>5} {T:>3}{row}{ratio}", flush=True)


if __name__ == "__main__":
    main()
