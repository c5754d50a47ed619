"""Does boosting pay for its steps? Boosted C=4 against one flow given the same total steps.

Four 2-D sets that the README's boosting table does not use (``curved_arms``, ``crescents``,
``spiral_band``, ``nested_outlines``, generated here), the README's four (``--sets readme``) and two
further sets that neither list has (``--sets extra``: ``pinwheel``, ``two_moons``). Per set and run
r = 0, 1, 2: 3000 training, 1000 validation and 5000 test points, independent draws seeded by r;
package defaults for the flows (2-layer spline couplings, hidden (32, 32), Adam at lr 5e-3 on a
cosine schedule per round, batch 256, held-out evaluation every 50 steps with the best state kept).

Rows (held-out mean log-likelihood on the test set):

- ``single``: one flow trained alone for ``4 S`` steps (S = 500 by default), the standing control
  (``BoostedFlowMixture(2, num_steps=4 * S).fit(x, 1)``: the first boosting round alone, with
  the package's learning-rate schedule);
- ``single const``: the same with a constant learning rate (``lr_schedule="constant"``), the
  control of the previous default (fitted with ``--const`` or when a variant needs it);
- ``default``: ``BoostedFlowMixture(2, num_steps=S).fit(x, 4)``, the package defaults (the
  first flow 0.8 of the 4 S steps, three rounds from the best Gaussian to add on the greedy
  mixture objective, exact weights);
- further variants named by their options (``--variants``, see ``VARIANTS``: ``previous`` is the
  previous default, warm-started copies on the plain likelihood with a constant learning rate and
  equal rounds; ``mixture``, ``weighted`` and the ``+ft`` variants are on that previous
  setting), each with the same 4 S steps in all.

The summary gives, per set, the median over runs of each row and of its difference to ``single``
(``previous`` and the previous variants: to ``single const``), and the number of sets where the
median difference is positive. Run::

    python -m benchmarks.boosting_budget                      # new sets, 3 runs
    python -m benchmarks.boosting_budget --sets readme        # the README's sets
    python -m benchmarks.boosting_budget --sets extra         # two further sets
    python -m benchmarks.boosting_budget --quick              # a smoke run

Uses one torch thread (``torch.set_num_threads(1)``).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from pyro_mixflows import datasets
from pyro_mixflows.models import BoostedFlowMixture


# --- four sets the README does not use --------------------------------------------------------
def make_curved_arms(n: int, seed: int) -> np.ndarray:
    """Three arms bending away from the origin: along an arc of growing radius, noise 0.12."""
    rng = np.random.default_rng(seed)
    arm = rng.integers(0, 3, n)
    t = rng.uniform(0.0, 1.0, n)
    radius = 0.5 + 3.0 * t
    angle = 2 * np.pi * arm / 3 + 1.6 * t**2
    x = np.stack([radius * np.cos(angle), radius * np.sin(angle)], 1)
    return x + 0.12 * rng.standard_normal((n, 2))


def make_crescents(n: int, seed: int) -> np.ndarray:
    """Three crescents (thin arcs of 200 degrees, radius 1.5) at the corners of a triangle."""
    rng = np.random.default_rng(seed)
    k = rng.integers(0, 3, n)
    centers = 2.6 * np.stack([np.cos(2 * np.pi * k / 3), np.sin(2 * np.pi * k / 3)], 1)
    opening = 2 * np.pi * k / 3 + np.pi  # each crescent opens towards the middle
    angle = opening + rng.uniform(-np.pi * 5 / 9, np.pi * 5 / 9, n) + np.pi
    radius = 1.5 + 0.1 * rng.standard_normal(n)
    return centers + np.stack([radius * np.cos(angle), radius * np.sin(angle)], 1)


def make_spiral_band(n: int, seed: int) -> np.ndarray:
    """One Archimedean spiral over 1.75 turns, a band of width about 0.5 around it."""
    rng = np.random.default_rng(seed)
    t = np.sqrt(rng.uniform(0.04, 1.0, n)) * 3.5 * np.pi  # uniform along the arc length
    radius = 0.35 * t + rng.uniform(-0.25, 0.25, n)
    return np.stack([radius * np.cos(t), radius * np.sin(t)], 1) + 0.03 * rng.standard_normal(
        (n, 2)
    )


def make_nested_outlines(n: int, seed: int) -> np.ndarray:
    """A square outline (side 6) around a triangle outline (circumradius 1.6), noise 0.08."""
    rng = np.random.default_rng(seed)
    outer = rng.uniform(size=n) < 0.6
    out = np.empty((n, 2))
    m = int(outer.sum())
    side, pos = rng.integers(0, 4, m), rng.uniform(-3.0, 3.0, m)
    sq = np.where(
        (side % 2 == 0)[:, None],
        np.stack([pos, np.where(side == 0, -3.0, 3.0)], 1),
        np.stack([np.where(side == 1, -3.0, 3.0), pos], 1),
    )
    out[outer] = sq
    k = n - m
    corners = 1.6 * np.stack(
        [
            np.cos(np.pi / 2 + 2 * np.pi * np.arange(4) / 3),
            np.sin(np.pi / 2 + 2 * np.pi * np.arange(4) / 3),
        ],
        1,
    )
    edge, s = rng.integers(0, 3, k), rng.uniform(size=(k, 1))
    out[~outer] = corners[edge] * (1 - s) + corners[edge + 1] * s
    return out + 0.08 * rng.standard_normal((n, 2))


NEW_SETS = {
    "curved_arms": make_curved_arms,
    "crescents": make_crescents,
    "spiral_band": make_spiral_band,
    "nested_outlines": make_nested_outlines,
}
README_SETS = ("eight_gaussians", "checkerboard", "two_spirals", "rings")
EXTRA_SETS = ("pinwheel", "two_moons")

# name -> (BoostedFlowMixture options, fit options); "+ft": 4 rounds of 0.8 S steps, then 0.8 S
# steps of joint fine-tuning (4 S in all)
PREVIOUS = {"init": "previous", "objective": "likelihood", "refit_weights": False,
            "train_rho": "learned", "lr_schedule": "constant", "first_share": None}  # fmt: skip
VARIANTS = {
    "default": ({}, {}),
    "previous": (PREVIOUS, {}),  # the default before: warm-started copies, plain likelihood
    "mixture": ({**PREVIOUS, "objective": "mixture"}, {}),  # the greedy mixture log-likelihood
    "weighted": ({**PREVIOUS, "objective": "weighted"}, {}),  # the paper's 1/G-weighted step
    "previous+ft": (PREVIOUS, {"finetune": True}),
    "mixture+ft": ({**PREVIOUS, "objective": "mixture"}, {"finetune": True}),
    "weighted+ft": ({**PREVIOUS, "objective": "weighted"}, {"finetune": True}),
    "equal rounds": ({"first_share": None}, {}),  # the default with 4 rounds of S steps
}
CONTROL = {"default": "single", "equal rounds": "single"}  # the others: "single const"


def draw(name: str, n: int, seed: int) -> torch.Tensor:
    if name in NEW_SETS:
        x = NEW_SETS[name](n, seed)
    else:
        x = datasets.make(name, n, seed=seed)[0]
    return torch.as_tensor(x, dtype=torch.float32)


def run(name: str, r: int, args) -> dict[str, float]:
    x, x_val, x_test = (draw(name, n, 1000 * r + i) for i, n in enumerate(args.sizes))
    S = args.steps
    out = {}
    start = time.perf_counter()
    single = BoostedFlowMixture(2, num_steps=4 * S, seed=r).fit(x, 1, x_val=x_val)
    out["single"] = single.score(x_test)
    out["single s"] = time.perf_counter() - start
    if "single const" in args.controls:
        start = time.perf_counter()
        const = BoostedFlowMixture(2, num_steps=4 * S, seed=r, lr_schedule="constant")
        out["single const"] = const.fit(x, 1, x_val=x_val).score(x_test)
        out["single const s"] = time.perf_counter() - start
    for variant in args.variants:
        options, fit_options = VARIANTS[variant]
        start = time.perf_counter()
        if fit_options.get("finetune"):  # 4 rounds of 0.8 S, then 0.8 S joint steps: 4 S in all
            steps = 4 * S // 5
            model = BoostedFlowMixture(2, num_steps=steps, seed=r, **options)
            model.fit(x, 4, x_val=x_val, finetune_steps=steps)
        else:
            model = BoostedFlowMixture(2, num_steps=S, seed=r, **options).fit(x, 4, x_val=x_val)
        out[variant] = model.score(x_test)
        out[f"{variant} s"] = time.perf_counter() - start
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=int, default=500, help="S, steps per component")
    parser.add_argument("--runs", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sets", nargs="+", default=list(NEW_SETS))
    parser.add_argument("--variants", nargs="*", default=["default"], choices=list(VARIANTS))
    parser.add_argument(
        "--const", action="store_true", help="also fit the constant-learning-rate control"
    )
    args = parser.parse_args()
    if args.sets == ["readme"]:
        args.sets = list(README_SETS)
    if args.sets == ["extra"]:
        args.sets = list(EXTRA_SETS)
    known = [*NEW_SETS, *README_SETS, *EXTRA_SETS]
    unknown = set(args.sets) - set(known)
    if unknown:
        parser.error(f"expected sets among {known}, got {sorted(unknown)}")
    args.sizes = (3000, 1000, 5000)
    if args.quick:
        args.steps, args.sizes, args.runs = 10, (300, 100, 300), [0]
    torch.set_num_threads(1)
    print(
        f"boosted C=4 vs one flow, S={args.steps} steps per component, 4S={4 * args.steps} for "
        f"the single flow; {args.sizes[0]} train / {args.sizes[1]} val / {args.sizes[2]} test; "
        f"runs {args.runs}; 1 torch thread",
        flush=True,
    )
    args.controls = ["single"]
    if args.const or any(CONTROL.get(k, "single const") == "single const" for k in args.variants):
        args.controls.append("single const")
    rows = [*args.controls, *args.variants]
    print(f"{'set':<16} {'run':>3} " + " ".join(f"{r:>12}" for r in rows) + "   (fit s)")
    results = {}
    for name in args.sets:
        for r in args.runs:
            out = run(name, r, args)
            results[name, r] = out
            scores = " ".join(f"{out[k]:>12.4f}" for k in rows)
            secs = " ".join(f"{out[k + ' s']:.0f}" for k in rows)
            print(f"{name:<16} {r:>3} {scores}   ({secs})", flush=True)
    print(
        "\nmedian over runs; in brackets the median difference to its control (single for "
        "default and equal rounds, single const for the others) and the runs won"
    )
    print(f"{'set':<16} " + " ".join(f"{k:>12}" for k in args.controls) + " " + " ".join(
        f"{k:>27}" for k in args.variants))  # fmt: skip
    wins = dict.fromkeys(args.variants, 0)
    for name in args.sets:
        med = {k: statistics.median(results[name, r][k] for r in args.runs) for k in rows}
        parts = [f"{med[k]:>12.4f}" for k in args.controls]
        for k in args.variants:
            control = CONTROL.get(k, "single const")
            diffs = [results[name, r][k] - results[name, r][control] for r in args.runs]
            diff = statistics.median(diffs)
            wins[k] += diff > 0
            won = sum(d > 0 for d in diffs)
            parts.append(f"{med[k]:>10.4f} ({diff:+.4f}, {won} of {len(diffs)})")
        print(f"{name:<16} " + " ".join(parts), flush=True)
    print(
        "sets where the median difference is positive: "
        + ", ".join(f"{k} {wins[k]}/{len(args.sets)}" for k in args.variants)
    )


if __name__ == "__main__":
    main()
