"""Gradient-boosted flows on 2-D toy sets: held-out mean log-likelihood and fit time.

Rows per data set (all spline-coupling flows, hidden sizes (32, 32), the same optimizer steps per
component):

- ``single small``: one 2-layer flow (the first boosting round);
- ``boosted C=2/4/8``: 2-layer flows added by boosting, rho by the exact held-out search
  (times are cumulative: C=8 includes the rounds before it);
- ``budget (1,8)``, ``(2,4)``, ``(4,2)``: C components of L layers, C * L = 8 layers in total
  ((4,2) is the ``boosted C=4`` run);
- ``fixed rho C=4``: boosted with rho_c = 1/c (equal weights), the reference code's behaviour;
- ``single small, 4x steps``: a control, one 2-layer flow given the optimizer steps of C=4.

Train, validation (rho and early stopping) and test sets are independent draws. Run::

    python -m benchmarks.boosting            # full: 3000 train points, 400 steps per component
    python -m benchmarks.boosting --quick    # a smoke run

Uses one torch thread (``torch.set_num_threads(1)``).
"""

from __future__ import annotations

import argparse
import time

import torch

from pyro_mixflows import datasets
from pyro_mixflows.models import BoostedFlowMixture

SETS = ("eight_gaussians", "checkerboard", "two_spirals", "rings")


def _tensor(name: str, n: int, seed: int) -> torch.Tensor:
    return torch.as_tensor(datasets.make(name, n, seed=seed)[0], dtype=torch.float32)


def run(name: str, args) -> list[tuple[str, float, float]]:
    x, x_val, x_test = (
        _tensor(name, args.n_train, 0),
        _tensor(name, args.n_val, 1),
        _tensor(name, args.n_test, 2),
    )
    common = dict(
        flow="spline_coupling",
        hidden_dims=(32, 32),
        num_steps=args.steps,
        batch_size=256,
        lr=5e-3,
        eval_every=50,
        seed=args.seed,
    )
    rows = []

    def boosted(label_fn, C_values, num_layers, **kw):
        model = BoostedFlowMixture(2, num_layers=num_layers, **common, **kw)
        start = time.perf_counter()
        for c in range(1, max(C_values) + 1):
            model.fit(x, 1, x_val=x_val)
            if c in C_values:
                rows.append((label_fn(c), model.score(x_test), time.perf_counter() - start))
        return model

    model = boosted(
        lambda c: "single small (C=1, L=2)" if c == 1 else f"boosted C={c} (L=2)",
        (1, 2, 4, 8)[: 2 + args.max_power],
        2,
    )
    rows.append(
        ("  rhos of the boosted run: " + " ".join(f"{r:.3f}" for r in model.rhos), 0.0, 0.0)
    )
    boosted(lambda c: "budget (1,8)", (1,), 8)
    boosted(lambda c: "budget (2,4)", (2,), 4)
    boosted(lambda c: f"fixed rho C={c} (L=2)", (4,), 2, rho="fixed")
    # Control: the small flow alone, given the optimizer steps of the C=4 boosted run.
    control = BoostedFlowMixture(2, num_layers=2, **{**common, "num_steps": 4 * args.steps})
    start = time.perf_counter()
    control.fit(x, 1, x_val=x_val)
    rows.append(("single small, 4x steps", control.score(x_test), time.perf_counter() - start))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--n-train", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.n_val, args.n_test, args.max_power = 1000, 5000, 2
    if args.quick:
        args.steps, args.n_train, args.n_val, args.n_test, args.max_power = 20, 500, 200, 500, 1
    torch.set_num_threads(1)
    print(
        f"boosted spline flows, hidden (32, 32), {args.steps} steps per component, "
        f"{args.n_train} train / {args.n_val} val / {args.n_test} test points, 1 torch thread",
        flush=True,
    )
    print(f"{'data set':<16} {'model':<30} {'test mean log-lik':>18} {'fit s':>8}")
    for name in SETS:
        for label, score, seconds in run(name, args):
            if label.startswith("  "):
                print(f"{name:<16} {label}", flush=True)
            else:
                print(f"{name:<16} {label:<30} {score:>18.4f} {seconds:>8.1f}", flush=True)
                if label == "boosted C=4 (L=2)":
                    print(
                        f"{name:<16} {'budget (4,2) = boosted C=4':<30} {score:>18.4f} {seconds:>8.1f}"
                    )


if __name__ == "__main__":
    main()
