"""Steady-state training step of ``VariationalFlowMixture`` at the demo's scale, eager vs compiled.

The estimator trains through ``pyro_mixflows.infer.fit``: one step is ``fit``'s ``_step`` (the
``TraceEnum_ELBO`` loss of ``VMoNF.model`` with z enumerated, backward, the non-finite guard and
the per-parameter Pyro Adam) on a minibatch of 256 of 810 rows (the demo: two moons, 1000 rows,
10% test and 10% validation held out), K = 2 spline-coupling components, D = 2, the estimator's
architecture (4 layers, hidden (32, 32), 8 bins). Variants, timed interleaved round-robin so that
they share the machine's load:

- ``eager``: today's step (``fit(compile=False)``), Pyro validation on (Pyro's default);
- ``compiled``: the same step with the component pass compiled as ``fit(compile=True)`` does it;
- ``eager_nv``, ``compiled_nv``: the same two with Pyro validation off (what validation costs);
- ``exact``, ``exact_comp``: the step the estimator takes now, with the closed-form loss
  ``VMoNF.exact_loss`` (same values and gradients as the ELBO, no Pyro tracing or enumeration)
  and its optimizer (fused Adam, all parameter tensors in one call), eager and with the whole loss compiled as ``fit(compile=True)`` does it;
- ``plain``: the floor without Pyro: ``-logsumexp(log w + component_log_probs(x))`` and one
  ``torch.optim.Adam``, eager;
- ``plain_comp``: ``plain`` with the whole loss under ``torch.compile``.

- ``before`` (with ``--baseline DIR``): the eager step of an older copy of the package.

Every variant has its own module and parameter names, so none shares the param store. Reported:
median and 10th-percentile ms per step, ratios as medians of the per-round ratios and as ratios of
the 10th percentiles, and the first-call (compile) time of the compiled variants. On a shared
machine a step that loses its core to another process takes about twice as long, so the step
times are bimodal there; the 10th percentile estimates the step on a core of its own.

    python -m benchmarks.bench_fit_step            # 60 rounds
    python -m benchmarks.bench_fit_step --rounds 200 --threads 1
    # an older copy of the package (e.g. from `git archive`), its eager step as variant "before":
    python -m benchmarks.bench_fit_step --baseline /tmp/old/pyro_mixflows
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import statistics
import sys
import time
from functools import partial

import pyro
import torch
from pyro.infer import TraceEnum_ELBO

from pyro_mixflows import VariationalFlowMixture
from pyro_mixflows.datasets import make_two_moons
from pyro_mixflows.infer.fit import _step

BATCH = 256


def load_baseline(path: str):
    """Import the ``pyro_mixflows`` package directory ``path`` (an older copy) as another name."""
    init = os.path.join(path, "__init__.py")
    if not os.path.isfile(init):
        raise SystemExit(f"expected a pyro_mixflows package directory, got {path!r}")
    spec = importlib.util.spec_from_file_location(
        "pyro_mixflows_before", init, submodule_search_locations=[path]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["pyro_mixflows_before"] = module
    spec.loader.exec_module(module)
    return module


def setup_fit_step(
    x: torch.Tensor,
    compiled: bool,
    validate: bool = True,
    name: str = "",
    package=None,
    exact: bool = False,
):
    if package is None:
        est, run = VariationalFlowMixture(2), _step
    else:  # the baseline copy's estimator and fit step
        est = package.VariationalFlowMixture(2)
        run = importlib.import_module(package.__name__ + ".infer.fit")._step
    vm = est._build(x.shape[1])
    vm._pyro_name = name  # its own parameter names: variants never share the param store
    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    if exact:  # the closed-form loss the estimator trains with, as fit wraps a callable loss
        from pyro_mixflows.infer._fit_parts import _CallableLoss

        elbo = _CallableLoss(vm.exact_loss)
    options = {"lr": est.learning_rate}
    optim = pyro.optim.Adam(options)
    if exact:  # the estimator's optimizer now: fused Adam, all tensors in one call
        from pyro_mixflows.infer._adam import MultiTensorAdam

        optim = MultiTensorAdam({**options, "fused": True})
    objective = elbo(vm.model, vm.guide)
    if compiled:  # imported here, so that the eager variants also run on older checkouts
        from pyro_mixflows.infer import _compile

        hot = _compile.HotPath(True, [vm], 10**9, None, loss=elbo if exact else None)
        run = partial(hot.step, 1, run)
    generator = torch.Generator().manual_seed(0)

    def step():
        idx = torch.randperm(len(x), generator=generator)[:BATCH]
        with pyro.validation_enabled(validate):
            return run(objective, elbo, vm.model, vm.guide, optim, (x,), {"subsample": idx}, False)

    return step


def setup_plain(x: torch.Tensor, compiled: bool):
    comps = VariationalFlowMixture(2)._build(x.shape[1]).components
    logits = torch.nn.Parameter(torch.zeros(2))
    optim = torch.optim.Adam([logits, *comps.parameters()], lr=5e-4)
    generator = torch.Generator().manual_seed(0)

    def loss_fn(xb):
        lp = comps.component_log_probs(xb) + torch.log_softmax(logits, -1)  # (B, K)
        return -torch.logsumexp(lp, -1).sum()

    if compiled:
        loss_fn = torch.compile(loss_fn, fullgraph=True, dynamic=False)

    def step():
        idx = torch.randperm(len(x), generator=generator)[:BATCH]
        optim.zero_grad()
        loss = loss_fn(x[idx])
        loss.backward()
        optim.step()
        return loss.item()

    return step


VARIANTS = {
    "eager": lambda x: setup_fit_step(x, False, name="eager"),
    "compiled": lambda x: setup_fit_step(x, True, name="compiled"),
    "eager_nv": lambda x: setup_fit_step(x, False, validate=False, name="eager_nv"),
    "compiled_nv": lambda x: setup_fit_step(x, True, validate=False, name="compiled_nv"),
    "exact": lambda x: setup_fit_step(x, False, name="exact", exact=True),
    "exact_comp": lambda x: setup_fit_step(x, True, name="exact_comp", exact=True),
    "plain": lambda x: setup_plain(x, False),
    "plain_comp": lambda x: setup_plain(x, True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument(
        "--baseline",
        metavar="DIR",
        help="an older copy of the pyro_mixflows package directory: its eager estimator step "
        "is timed as variant 'before', interleaved with the others",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pyro.set_rng_seed(0)
    X, _ = make_two_moons(1000, seed=0)
    X = (X - X.mean(0)) / X.std(0)
    x = torch.as_tensor(X[:810], dtype=torch.float32)
    print(
        f"torch {torch.__version__}, pyro {pyro.__version__}, threads={torch.get_num_threads()}, "
        f"load average at start {os.getloadavg()[0]:.1f}"
    )
    steps = {}
    if args.baseline:
        package = load_baseline(os.path.abspath(args.baseline))
        steps["before"] = setup_fit_step(x, False, name="before", package=package)
    steps.update({name: VARIANTS[name](x) for name in args.variants})
    first = {}
    for name, step in steps.items():
        t0 = time.perf_counter()
        step()
        first[name] = time.perf_counter() - t0
    for step in steps.values():  # allocator and Adam state warm
        for _ in range(3):
            step()
    times = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t0)
    p10 = {name: statistics.quantiles(t, n=10)[0] for name, t in times.items()}
    print(f"{'variant':>11} {'median ms':>10} {'p10 ms':>7} {'first call s':>13}")
    for name, t in times.items():
        print(
            f"{name:>11} {1e3 * statistics.median(t):>10.2f} {1e3 * p10[name]:>7.2f} "
            f"{first[name]:>13.1f}"
        )
    print("ratios: median of per-round ratios, and ratio of the 10th percentiles")
    for num, den in (
        ("before", "eager"),
        ("before", "compiled"),
        ("eager", "compiled"),
        ("eager", "eager_nv"),
        ("compiled", "compiled_nv"),
        ("eager", "compiled_nv"),
        ("eager", "exact"),
        ("eager", "exact_comp"),
        ("exact", "exact_comp"),
        ("exact", "plain"),
        ("exact_comp", "plain_comp"),
        ("before", "exact"),
        ("before", "exact_comp"),
        ("eager", "plain"),
        ("compiled", "plain_comp"),
        ("plain", "plain_comp"),
    ):
        if num in times and den in times:
            ratio = statistics.median(a / b for a, b in zip(times[num], times[den], strict=True))
            print(f"{num}/{den}: {ratio:.2f}  (p10: {p10[num] / p10[den]:.2f})")
    print(f"load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
