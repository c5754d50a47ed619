"""Gradient-boosted flows on 2-D toy sets: held-out mean log-likelihood and fit time.

Rows per data set (all 2-layer spline-coupling flows, hidden sizes (32, 32), Adam at the same
learning rate, batch 256, the best held-out state kept, evaluated every 50 steps; the package
defaults otherwise, including the cosine learning-rate schedule of every round):

- ``single small (C=1)``: one flow, ``S`` steps;
- ``boosted C=2/4/8``: ``BoostedFlowMixture(2, num_steps=S).fit(x, C)``, the package defaults
  (the first flow 0.8 of the C S steps, then rounds from the best Gaussian to add on the greedy
  mixture objective, every weight exact), each fitted from scratch with C S steps in all;
- ``single, same steps (C S)``: the standing control of each boosted row, one flow trained alone
  for the same C S steps;
- ``  same C=4 flows, equal weights``: the ``boosted C=4`` flows scored with weights 1/4 each
  (isolates the weights from differences in training);
- ``fixed rho C=4``: the default with the weights left at rho_c = 1/c (``rho="fixed"``, the
  reference code's behaviour, so no re-fit either); ``  same flows, exact weights``: those flows
  with their weights then fitted exactly on the validation set (``fit_weights``);
- ``equal rounds C=4``: the default with 4 rounds of S steps (``first_share=None``);
- ``previous default C=4``: warm-started copies of the last flow on the plain likelihood with a
  constant learning rate and equal rounds (the default before); ``paper-style C=4``: the paper's
  1/G-weighted step on that setting; ``single, same steps, constant lr``: their control.
- with ``--budgets``: ``budget (C, L)`` for (1, 8), (2, 4), (4, 2): C components of L layers
  (C * L = 8 layers) under one budget of ``4 S + F`` steps: the boosted budgets get ``4 S`` steps
  of boosting and then ``F`` steps of joint fine-tuning of all components and weights
  (``finetune``); the (1, 8) single deep flow gets all ``4 S + F`` steps itself.

Train, validation (rho, weights and early stopping) and test sets are independent draws. Run::

    python -m benchmarks.boosting            # 3000 training points, S = 400
    python -m benchmarks.boosting --budgets  # with the deep-flow budget rows (F = 800)
    python -m benchmarks.boosting --quick    # a smoke run

Uses one torch thread (``torch.set_num_threads(1)``).
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from pyro_mixflows import datasets
from pyro_mixflows.models import BoostedFlowMixture

SETS = ("eight_gaussians", "checkerboard", "two_spirals", "rings")
PREVIOUS = dict(
    init="previous",
    objective="likelihood",
    refit_weights=False,
    train_rho="learned",
    lr_schedule="constant",
    first_share=None,
)


def _tensor(name: str, n: int, seed: int) -> torch.Tensor:
    return torch.as_tensor(datasets.make(name, n, seed=seed)[0], dtype=torch.float32)


def run(name: str, args) -> list[tuple[str, float, float]]:
    x, x_val, x_test = (
        _tensor(name, args.n_train, 0),
        _tensor(name, args.n_val, 1),
        _tensor(name, args.n_test, 2),
    )
    S, F = args.steps, args.finetune
    common = dict(hidden_dims=(32, 32), batch_size=256, lr=5e-3, eval_every=50, seed=args.seed)
    rows = []

    def fitted(C, num_steps, num_layers=2, finetune_steps=0, **options):
        model = BoostedFlowMixture(
            2, num_layers=num_layers, num_steps=num_steps, **common, **options
        )
        start = time.perf_counter()
        model.fit(x, C, x_val=x_val, finetune_steps=finetune_steps)
        return model, time.perf_counter() - start

    model, seconds = fitted(1, S)
    rows.append(("single small (C=1)", model.score(x_test), seconds))
    for C in args.components:
        model, seconds = fitted(C, S)
        rows.append((f"boosted C={C}", model.score(x_test), seconds))
        control, seconds = fitted(1, C * S)
        rows.append((f"single, same steps ({C * S})", control.score(x_test), seconds))
        weights = " ".join(f"{w:.3f}" for w in model.weights.tolist())
        rows.append((f"  weights of boosted C={C}: {weights}", 0.0, 0.0))
        if C == 4:  # the same four flows with equal weights: what the exact weights add
            model.log_weights = torch.full_like(model.log_weights, -math.log(4))
            rows.append(("  same C=4 flows, equal weights", model.score(x_test), 0.0))
    fixed, seconds = fitted(4, S, rho="fixed")
    rows.append(("fixed rho C=4", fixed.score(x_test), seconds))
    fixed.fit_weights(x_val)  # the same flows, weights then fitted exactly: no further training
    rows.append(("  same flows, exact weights", fixed.score(x_test), 0.0))
    model, seconds = fitted(4, S, first_share=None)
    rows.append(("equal rounds C=4", model.score(x_test), seconds))
    model, seconds = fitted(4, S, **PREVIOUS)
    rows.append(("previous default C=4", model.score(x_test), seconds))
    model, seconds = fitted(4, S, **{**PREVIOUS, "objective": "weighted"})
    rows.append(("paper-style C=4", model.score(x_test), seconds))
    control, seconds = fitted(1, 4 * S, lr_schedule="constant")
    rows.append(("single, same steps, constant lr", control.score(x_test), seconds))
    if args.budgets:
        deep, seconds = fitted(1, 4 * S + F, num_layers=8)
        rows.append(("budget (1,8)", deep.score(x_test), seconds))
        for C, L in ((2, 4), (4, 2)):
            model, seconds = fitted(C, 4 * S // C, num_layers=L, finetune_steps=F)
            rows.append((f"budget ({C},{L})", model.score(x_test), seconds))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=int, default=400, help="S, steps per small component")
    parser.add_argument("--budgets", action="store_true", help="add the deep-flow budget rows")
    parser.add_argument("--finetune", type=int, default=800, help="F, joint fine-tuning steps")
    parser.add_argument("--n-train", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS)
    args = parser.parse_args()
    args.n_val, args.n_test, args.components = 1000, 5000, (2, 4, 8)
    if args.quick:
        args.steps, args.finetune, args.n_train, args.n_val, args.n_test = 20, 20, 500, 200, 500
        args.components = (2, 4)
    torch.set_num_threads(1)
    print(
        f"boosted spline flows, hidden (32, 32), S={args.steps} steps per small component, "
        f"{args.n_train} train / {args.n_val} val / {args.n_test} test points, seed {args.seed}, "
        "1 torch thread",
        flush=True,
    )
    print(f"{'data set':<16} {'model':<34} {'test mean log-lik':>18} {'fit s':>8}")
    for name in args.sets:
        for label, score, seconds in run(name, args):
            if label.startswith("  weights"):
                print(f"{name:<16} {label}", flush=True)
            else:
                print(f"{name:<16} {label:<34} {score:>18.4f} {seconds:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
