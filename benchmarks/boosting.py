"""Gradient-boosted flows on 2-D toy sets: held-out mean log-likelihood and fit time.

Rows per data set (all spline-coupling flows, hidden sizes (32, 32), Adam at the same learning
rate, batch 256, the best held-out state kept, evaluated every 50 steps):

- ``single small``: one 2-layer flow, ``S`` steps (the first boosting round);
- ``boosted C=2/4/8``: 2-layer flows added by boosting with ``S`` steps each, started as the
  best Gaussian to add (``init="greedy"``), trained on the greedy mixture objective
  (``objective="mixture"``) with the share in it held at 1/c (``train_rho="fixed"``), every
  rho then searched exactly on held-out data and all weights re-fitted exactly after each
  round (``refit_weights=True``); times are cumulative;
- ``same C=4 flows, equal weights``: the ``boosted C=4`` flows scored with weights 1/4 each
  (isolates the weights from differences in training);
- ``fixed rho C=4``: the same method with the weights left at rho_c = 1/c (equal weights), the
  reference code's behaviour;
- ``learned rho in training C=4``: the boosted method with the share in the training objective
  learned jointly with the flow (``train_rho="learned"``), started at the greedy Gaussian's share;
- ``same flows, exact weights``: the ``fixed rho C=4`` flows with their weights then fitted
  exactly on the validation set (``fit_weights``), no further training;
- ``paper-style C=4``: the 1/G-weighted objective with a warm start from the previous flow and
  the exact rho search (the method before the options above), for reference;
- ``default C=4 (L=2)``: the package defaults (a warm start from the previous flow, the greedy
  mixture objective with the share learned, the exact rho search), ``S`` steps per component;
- ``single small, 4S steps``: the standing control, one 2-layer flow given the steps of C=4;
- ``budget (C, L)`` for (1, 8), (2, 4), (4, 2): C components of L layers (C * L = 8 layers) under
  one step budget ``4 S + F``: the boosted budgets get ``4 S / C`` steps per component and then
  ``F`` steps of joint fine-tuning of all components and weights (``finetune``); the (1, 8)
  single deep flow gets all ``4 S + F`` steps itself (at least as many parameter updates as any
  component of the mixtures had, with the same early stopping).

Train, validation (rho, weights and early stopping) and test sets are independent draws. Run::

    python -m benchmarks.boosting            # full: 3000 train points, S = 400, F = 800
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
GREEDY = dict(init="greedy", objective="mixture", refit_weights=True, train_rho="fixed")


def _tensor(name: str, n: int, seed: int) -> torch.Tensor:
    return torch.as_tensor(datasets.make(name, n, seed=seed)[0], dtype=torch.float32)


def run(name: str, args) -> list[tuple[str, float, float]]:
    x, x_val, x_test = (
        _tensor(name, args.n_train, 0),
        _tensor(name, args.n_val, 1),
        _tensor(name, args.n_test, 2),
    )
    S, F = args.steps, args.finetune
    common = dict(
        flow="spline_coupling",
        hidden_dims=(32, 32),
        batch_size=256,
        lr=5e-3,
        eval_every=50,
        seed=args.seed,
    )
    rows = []

    def boosted(label_fn, C_values, num_layers, steps, **kw):
        model = BoostedFlowMixture(2, num_layers=num_layers, num_steps=steps, **common, **kw)
        start = time.perf_counter()
        for c in range(1, max(C_values) + 1):
            model.fit(x, 1, x_val=x_val)
            if c in C_values:
                rows.append((label_fn(c), model.score(x_test), time.perf_counter() - start))
            if c == 4 and kw.get("rho", "search") == "search" and label_fn(c).startswith("boosted"):
                # The same four flows with equal weights: the exact weights' gain without
                # any difference in training.
                fitted = model.log_weights.clone()
                model.log_weights = torch.full_like(fitted, -torch.log(torch.tensor(4.0)).item())
                rows.append(("  same C=4 flows, equal weights", model.score(x_test), 0.0))
                model.log_weights = fitted
        return model

    model = boosted(
        lambda c: "single small (C=1, L=2)" if c == 1 else f"boosted C={c} (L=2)",
        (1, 2, 4, 8)[: 2 + args.max_power],
        2,
        S,
        **GREEDY,
    )
    weights = " ".join(f"{w:.3f}" for w in model.weights.tolist())
    rows.append((f"  weights of the boosted C={model.num_components} run: {weights}", 0.0, 0.0))
    fixed = boosted(lambda c: "fixed rho C=4 (L=2)", (4,), 2, S, **{**GREEDY, "rho": "fixed"})
    # The same four flows (trained against the equal-weight schedule), weights then fitted
    # exactly on the validation set: no further training.
    fixed.fit_weights(x_val)
    rows.append(("  same flows, exact weights", fixed.score(x_test), 0.0))
    boosted(
        lambda c: "learned rho in training C=4", (4,), 2, S, **{**GREEDY, "train_rho": "learned"}
    )
    boosted(lambda c: "paper-style C=4 (L=2)", (4,), 2, S, objective="weighted")
    boosted(lambda c: "default C=4 (L=2)", (4,), 2, S)
    control = BoostedFlowMixture(2, num_layers=2, num_steps=4 * S, **common)
    start = time.perf_counter()
    control.fit(x, 1, x_val=x_val)
    rows.append(("single small, 4S steps", control.score(x_test), time.perf_counter() - start))
    deep = BoostedFlowMixture(2, num_layers=8, num_steps=4 * S + F, **common)
    start = time.perf_counter()
    deep.fit(x, 1, x_val=x_val)
    rows.append(("budget (1,8)", deep.score(x_test), time.perf_counter() - start))
    for C, L in ((2, 4), (4, 2)):
        model = BoostedFlowMixture(2, num_layers=L, num_steps=4 * S // C, **common, **GREEDY)
        start = time.perf_counter()
        model.fit(x, C, x_val=x_val, finetune_steps=F)
        rows.append((f"budget ({C},{L})", model.score(x_test), time.perf_counter() - start))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=int, default=400, help="S, steps per small component")
    parser.add_argument("--finetune", type=int, default=800, help="F, joint fine-tuning steps")
    parser.add_argument("--n-train", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS)
    args = parser.parse_args()
    args.n_val, args.n_test, args.max_power = 1000, 5000, 2
    if args.quick:
        args.steps, args.finetune, args.n_train, args.n_val, args.n_test = 20, 20, 500, 200, 500
        args.max_power = 1
    torch.set_num_threads(1)
    print(
        f"boosted spline flows, hidden (32, 32), S={args.steps} steps per small component, "
        f"F={args.finetune} fine-tuning steps, {args.n_train} train / {args.n_val} val / "
        f"{args.n_test} test points, seed {args.seed}, 1 torch thread",
        flush=True,
    )
    print(f"{'data set':<16} {'model':<30} {'test mean log-lik':>18} {'fit s':>8}")
    for name in args.sets:
        for label, score, seconds in run(name, args):
            if label.startswith("  weights"):
                print(f"{name:<16} {label}", flush=True)
            else:
                print(f"{name:<16} {label:<30} {score:>18.4f} {seconds:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
