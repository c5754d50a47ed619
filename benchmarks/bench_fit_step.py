"""One training step of the estimator's default model at the demo's scale, now and before.

The demo's scale: two moons, 1000 rows standardized, 900 training rows (the estimator holds out
10 %), D = 2, K = 2, the estimator's default flows (spline coupling, 4 layers, hidden (32, 32),
8 bins, full affine ends). Variants, each a (rows per step, C candidates) cell:

- ``new full C=1``, ``new full C=2``: the estimator's step now. The flows of C starts train side
  by side as one ``CandidateMixtures`` (C K components in one batched pass) through
  ``pyro_mixflows.infer.fit(module.model, module.guide, x, loss=module.loss,
  optim=pyro.optim.Adam(options))`` with the options the estimator uses (torch's fused Adam, the
  step size of its budget); every training row in each step (its step up to 1024 training rows).
- ``new 256 C=1``, ``new 256 C=2``: the same with ``batch_size=256`` (its step above 1024 rows).
- ``old full C=1``, ``old 256 C=1`` (with ``--baseline DIR``): the same step of an older copy of
  the package, whose estimator trained one ``VMoNF`` per candidate through
  ``fit(vm.model, vm.guide, x, loss=vm.exact_loss, optim=MultiTensorAdam(options),
  batch_size=256)`` (its defaults: step size 5e-4, fused Adam, eager); ``full`` is the same with
  ``batch_size=None``.
- ``old full C=2``, ``old 256 C=2``: that estimator trained its candidates one after another, so
  a step of two candidates is a step of each of two ``VMoNF``: the sums, step for step, of the
  step of the ``C=1`` model and of a second one timed in the same rounds.

A step is timed inside ``fit``: its callback reads the clock after every update, and a step's time
is the interval between two consecutive callbacks (the batch's indices, the loss, backward, the
non-finite guard, Adam, ``fit``'s bookkeeping). The first update of each ``fit`` call, which also
holds ``fit``'s set-up, is not counted; nor are the estimator's held-out evaluations. Rounds
interleave the variants (each runs ``--steps`` updates per round, in one ``fit`` call, on its own
module, optimizer and Pyro param store, kept from round to round), so a change of the machine's
load hits all of them. One torch thread. Weights and flows start where their constructors put
them (the starts' Gaussians change no cost).

Reported per variant: the median, 10th and 90th percentile ms per step; per (rows, C): new / old
as the median over rounds of the ratio of the round's median steps, and as the ratio of the 10th
percentiles (on a shared machine a step that loses its core takes about twice as long: the 10th
percentile estimates the step on a core of its own).

    python -m benchmarks.bench_fit_step                             # the new step alone
    python -m benchmarks.bench_fit_step --baseline /tmp/old         # before and after, one run
    python -m benchmarks.bench_fit_step --baseline /tmp/old --rounds 40 --steps 11

``DIR`` is an older checkout (or its ``pyro_mixflows`` directory), e.g. from
``git archive <commit> | tar -x -C /tmp/old``; it is imported by path as ``pyro_mixflows_before``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyro
import torch

from pyro_mixflows import FlowComponents, VariationalFlowMixture, fit
from pyro_mixflows.datasets import make_two_moons
from pyro_mixflows.estimators._candidates import CandidateMixtures
from pyro_mixflows.estimators._train import adam_options, plan_budget

N_ROWS, N_TRAIN, K, MINIBATCH = 1000, 900, 2, 256
ARCHITECTURE = ("flow", "num_layers", "hidden_dims", "count_bins")


def load_baseline(path: str):
    """Import the ``pyro_mixflows`` package at ``path`` (a package directory or the checkout that
    holds one) as ``pyro_mixflows_before``."""
    if os.path.isfile(os.path.join(path, "pyro_mixflows", "__init__.py")):
        path = os.path.join(path, "pyro_mixflows")
    init = os.path.join(path, "__init__.py")
    if not os.path.isfile(init):
        raise SystemExit(f"expected a pyro_mixflows package directory or checkout, got {path!r}")
    spec = importlib.util.spec_from_file_location(
        "pyro_mixflows_before", init, submodule_search_locations=[path]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["pyro_mixflows_before"] = module
    spec.loader.exec_module(module)
    return module


class StepClock:
    """``fit``'s callback: the seconds between consecutive updates of one ``fit`` call."""

    def __init__(self) -> None:
        self.last: float | None = None
        self.times: list[float] = []

    def __call__(self, step: int, loss: float) -> bool:
        now = time.perf_counter()
        if self.last is not None:
            self.times.append(now - self.last)
        self.last = now
        return False


@dataclass
class Variant:
    """One timed model: ``run(clock, num_steps)`` trains it ``num_steps`` updates in one ``fit``
    call in its own param store; ``rounds`` holds each round's step times."""

    name: str
    rows: int
    candidates: int
    run: Callable[[StepClock, int], None]
    rounds: list[list[float]] = field(default_factory=list)


def _in_own_store(train: Callable[[StepClock, int], None]) -> Callable[[StepClock, int], None]:
    """``train`` run in a param store of its own (kept between calls), so that models whose
    parameters have the same names never share them."""
    state = {"params": {}, "constraints": {}}

    def run(clock: StepClock, num_steps: int) -> None:
        with pyro.get_param_store().scope(state):
            train(clock, num_steps)

    return run


def new_step(x: torch.Tensor, C: int, batch_size: int | None) -> Callable:
    """The estimator's training step now: C candidates side by side (``_fit.train_capacity``)."""
    est = VariationalFlowMixture(K)
    arch = {k: est.get_params()[k] for k in ARCHITECTURE}
    components = FlowComponents(C * K, x.shape[1], affine="full", **arch)
    labels = torch.full((C, len(x)), -1, dtype=torch.long)  # EM starts: no hard labels
    module = CandidateMixtures(components, C, torch.zeros(C, K), labels)
    budget = plan_budget(len(x), batch_size=batch_size)
    optim = pyro.optim.Adam(adam_options(budget, x.device))

    def train(clock: StepClock, num_steps: int) -> None:
        fit(module.model, module.guide, x, loss=module.loss, optim=optim, num_steps=num_steps,
            batch_size=budget.batch_size, callback=clock)  # fmt: skip

    return _in_own_store(train)


def old_step(x: torch.Tensor, package, batch_size: int | None) -> Callable:
    """The older copy's estimator step: one ``VMoNF`` on its closed-form loss, ``MultiTensorAdam``
    with its default options (its ``_stages.Schedule.optim``)."""
    params = package.VariationalFlowMixture(K).get_params()
    arch = {k: params[k] for k in ARCHITECTURE}
    components = package.FlowComponents(K, x.shape[1], affine="full", **arch)
    vm = package.VMoNF(components, weights="learned", assignment="enumerate")
    options = {"lr": params["learning_rate"], "weight_decay": params["weight_decay"]}
    optim = package.infer.MultiTensorAdam({**options, "fused": True})

    def train(clock: StepClock, num_steps: int) -> None:
        fit = package.infer.fit
        fit(vm.model, vm.guide, x, loss=vm.exact_loss, optim=optim, num_steps=num_steps,
            batch_size=batch_size, callback=clock, compile=False)  # fmt: skip

    return _in_own_store(train)


def demo_rows() -> torch.Tensor:
    """The demo's training rows: two moons standardized, 900 of 1000 rows drawn with seed 0."""
    X, _ = make_two_moons(N_ROWS, seed=0)
    X = (X - X.mean(0)) / X.std(0)
    rows = np.random.default_rng(0).permutation(N_ROWS)[:N_TRAIN]
    return torch.as_tensor(X[rows], dtype=torch.float32)


def variants(x: torch.Tensor, candidates: list[int], package) -> list[Variant]:
    found = []
    for label, batch in (("full", None), (str(MINIBATCH), MINIBATCH)):
        rows = len(x) if batch is None else batch
        for C in candidates:
            found.append(Variant(f"new {label} C={C}", rows, C, new_step(x, C, batch)))
        if package is not None:  # C old models, one per candidate: 'old ... C=c' sums c of them
            for c in range(max(candidates)):
                found.append(Variant(f"old {label} #{c}", rows, 1, old_step(x, package, batch)))
    return found


def old_sums(found: list[Variant], candidates: list[int]) -> list[Variant]:
    """'old ROWS C=c': the step of the first c old models, summed step for step."""
    out = []
    for label in ("full", str(MINIBATCH)):
        models = [v for v in found if v.name.startswith(f"old {label} #")]
        for C in candidates:
            rounds = [
                [sum(steps) for steps in zip(*(m.rounds[r] for m in models[:C]), strict=True)]
                for r in range(len(models[0].rounds))
            ]
            out.append(Variant(f"old {label} C={C}", models[0].rows, C, None, rounds))
    return out


def _pct(times: list[float], q: int) -> float:
    return statistics.quantiles(times, n=10, method="inclusive")[q - 1]


def report(table: list[Variant]) -> None:
    print(f"\n{'variant':>14} {'rows':>5} {'C':>2} {'median ms':>10} {'p10 ms':>8} {'p90 ms':>8}")
    for v in table:
        t = [s for r in v.rounds for s in r]
        print(
            f"{v.name:>14} {v.rows:>5} {v.candidates:>2} {1e3 * statistics.median(t):>10.2f} "
            f"{1e3 * _pct(t, 1):>8.2f} {1e3 * _pct(t, 9):>8.2f}"
        )
    by_cell = {(v.name.split()[0], v.rows, v.candidates): v for v in table}
    cells = [(rows, C) for who, rows, C in by_cell if who == "new" and ("old", rows, C) in by_cell]
    if not cells:
        return
    print(f"\n{'new/old':>14} {'rows':>5} {'C':>2} {'median':>10} {'p10':>8}")
    for rows, C in cells:
        new, old = by_cell["new", rows, C], by_cell["old", rows, C]
        per_round = [
            statistics.median(a) / statistics.median(b)
            for a, b in zip(new.rounds, old.rounds, strict=True)
        ]
        flat_new = [s for r in new.rounds for s in r]
        flat_old = [s for r in old.rounds for s in r]
        print(
            f"{'':>14} {rows:>5} {C:>2} {statistics.median(per_round):>10.2f} "
            f"{_pct(flat_new, 1) / _pct(flat_old, 1):>8.2f}"
        )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20, help="interleaved rounds (20)")
    parser.add_argument(
        "--steps", type=int, default=6, help="updates per variant and round, the first not timed"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1)")
    parser.add_argument(
        "--candidates", type=int, nargs="+", default=[1, 2], help="C values (1 2)", metavar="C"
    )
    parser.add_argument(
        "--baseline", metavar="DIR", help="an older checkout (or its pyro_mixflows directory)"
    )
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.steps < 2 or min(args.candidates) < 1:
        parser.error(
            f"expected --rounds >= 1, --steps >= 2 and C >= 1, got {args.rounds}, {args.steps} "
            f"and {args.candidates}"
        )
    torch.set_num_threads(args.threads)
    package = load_baseline(os.path.abspath(args.baseline)) if args.baseline else None
    x = demo_rows()
    arch = {k: VariationalFlowMixture(K).get_params()[k] for k in ARCHITECTURE}
    print(
        f"torch {torch.__version__}, pyro {pyro.__version__}, threads={torch.get_num_threads()}, "
        f"validation {'on' if pyro.distributions.is_validation_enabled() else 'off'}; "
        f"load average at start {os.getloadavg()[0]:.2f}\n"
        f"two moons: {len(x)} training rows, D={x.shape[1]}, K={K}, {arch}"
    )
    if package is not None:
        print(f"old: {os.path.dirname(package.__file__)}")
    found = variants(x, args.candidates, package)
    for v in found:  # warm: lazy set-up, allocator, Adam state
        v.run(StepClock(), 3)
    t0 = time.perf_counter()
    for _ in range(args.rounds):
        for v in found:
            clock = StepClock()
            v.run(clock, args.steps)
            v.rounds.append(clock.times)
    table = [v for v in found if "#" not in v.name]
    if package is not None:
        table += old_sums(found, args.candidates)
    report(table)
    print(
        f"\n{args.rounds} rounds x {args.steps - 1} timed steps in {time.perf_counter() - t0:.0f} s; "
        f"load average at end {os.getloadavg()[0]:.2f}"
    )


if __name__ == "__main__":
    main()
