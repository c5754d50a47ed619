"""Speed of one SVI step of a flow mixture: batched components vs a loop of Pyro flows vs plain torch.

For every (flow family, D, N, K) the script times, interleaved round-robin so that all rows of a
configuration share the same machine load, one optimization step (loss + backward + Adam) of

- ``a``: this project's ``FlowComponents`` in a Pyro model, ``z ~ Categorical(w)`` enumerated in a
  data plate and ``x ~ comps.component(z)``, components registered with ``pyro.module``, run by
  ``SVI(model, guide, pyro.optim.Adam, TraceEnum_ELBO)``;
- ``a_mod``: the same model as a ``PyroModule`` driven through Pyro's torch interface,
  ``loss_fn = TraceEnum_ELBO(...)(model, guide)`` (an ``nn.Module``) and
  ``torch.optim.Adam(loss_fn.parameters())``;
- ``b``: the naive model, a Python list of K Pyro flows built from ``pyro.distributions.transforms``
  with the same architecture (layers, hidden sizes, bins), ``logsumexp`` over a loop of their
  ``log_prob`` in a ``pyro.factor``, run by the same ``SVI`` + ``TraceEnum_ELBO``;
- ``c``: the batched model as a plain PyTorch loss (no Pyro): ``-logsumexp(log w + comps.component_log_probs(x))``
  with ``torch.optim.Adam`` -- the eager floor;
- ``c_comp``: ``c`` with the whole loss (component pass + log-sum-exp) under ``torch.compile``;
- ``a_marg``: the mixture written with its marginal, ``pyro.sample("x", FlowMixture(comps,
  logits), obs=x)`` in the data plate (no discrete site), ``SVI`` + ``Trace_ELBO``: the way to
  write a flow mixture in Pyro when z is not needed;
- ``a_exact``: ``VMoNF(comps, assignment="enumerate")`` trained by ``SVI`` with its closed-form
  loss ``vm.exact_loss`` (the value and gradients of ``TraceEnum_ELBO``, plain PyTorch inside);
- ``a_cand``: the estimator's training loss, ``CandidateMixtures`` (the flows of C starts side by
  side, here C = 1) trained by ``SVI`` with its closed-form loss ``module.loss``;
- ``a_fused``: ``a`` with ``pyro.optim.Adam({"lr": ..., "fused": True})``, torch's fused Adam
  kernel (one kernel per parameter tensor), the estimator's optimizer;
- ``a_before`` (with ``--baseline DIR``, an older checkout or its ``pyro_mixflows`` directory):
  ``a`` with that copy's ``FlowComponents``, e.g. the step as it was before a change
  (``git archive <commit> | tar -x -C /tmp/old``).

The variants are built in ``benchmarks.core_variants``.

``c_comp`` is compiled during the warm-up (its first-call time, compile included, is printed as
"c_comp 1st s"), so the timed rounds are steady state. Every variant has a Pyro param store of its
own (``ParamStoreDict.scope``, entered outside the timed step).

Reported: medians in milliseconds; the ratios a/c, a_mod/c and b/a as medians of the per-round
ratios (the steps of one round run back to back, so slow drifts of the machine's load cancel); the FLOP rate of ``c`` at
N=4096 (batched matmul FLOPs counted analytically: forward + backward = 3x forward) as a fraction
of the same run's rate of a large float32 matmul; and the peak-memory growth of one step of ``a``,
measured as the increase of the peak resident set size (VmHWM, reset through /proc/self/clear_refs)
in a fresh process per point, with glibc's mmap threshold fixed at 64 KiB so that freed tensors
leave the resident set at once, fitted by a line in N*K.

    python -m benchmarks.bench_core             # the full table (~10-15 min on a loaded machine)
    python -m benchmarks.bench_core --quick     # a smoke run (~1 min)
    python -m benchmarks.bench_core --methods a a_cand c c_comp --Ds 2 --Ns 512 --Ks 2 4
    python -m benchmarks.bench_core --device cuda --Ds 16 --Ns 65536 --Ks 32   # on a GPU
    python -m benchmarks.bench_core --baseline /tmp/old --methods a_before a a_cand

One thread (``torch.set_num_threads(1)``) unless ``--threads`` says otherwise; float32. With
``--device cuda`` every variant runs on the GPU, each timed step ends with a synchronize, the
matmul reference is a 4096 x 4096 float32 matmul on the GPU, and the peak memory is
``torch.cuda.max_memory_allocated`` over a step of ``a`` (minus what was allocated before).
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import subprocess
import sys
import time
import warnings

import pyro
import pyro.distributions as dist
import torch

from benchmarks import core_variants
from benchmarks.core_variants import BINS, BOUND, HIDDEN, METHODS, NUM_LAYERS, RATIOS


def matmul_flops_per_step(K: int, N: int, D: int, flow: str) -> float:
    """Batched-matmul FLOPs of one step: forward 2*N*K*sum(in*out) per layer, backward 2x that."""
    half = D // 2
    n_trans = D - half
    per_dim = 3 * BINS - 1 if flow == "spline_coupling" else 2
    sizes = [half, *HIDDEN, n_trans * per_dim]
    macs = sum(a * b for a, b in zip(sizes[:-1], sizes[1:], strict=True))
    return 3 * 2 * N * K * NUM_LAYERS * macs


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(device: torch.device = torch.device("cpu"), reps: int = 5) -> float:
    """Median FLOP/s of an (n, n) @ (n, n) float32 matmul (n = 1024 on CPU, 4096 on a GPU)."""
    n = 4096 if device.type == "cuda" else 1024
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    _sync(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times)


def bench_config(
    flow: str, D: int, N: int, K: int, budget_s: float, methods, device=torch.device("cpu")
) -> dict:
    torch.manual_seed(0)
    x = torch.randn(N, D, device=device)
    store = pyro.get_param_store()
    stores = {m: {"params": {}, "constraints": {}} for m in methods}  # a param store each
    steps = {}
    for m in methods:
        with store.scope(stores[m]):
            steps[m] = METHODS[m](x, K, D, flow)

    def timed(m: str) -> float:
        with store.scope(stores[m]):
            t0 = time.perf_counter()
            steps[m]()
            _sync(device)
            return time.perf_counter() - t0

    first = {m: timed(m) for m in steps}  # warm-up (param store, Adam state, allocator, compile)
    second = {m: timed(m) for m in steps}  # a second warm-up round: the cost of a round
    per_round = sum(second.values())
    reps = int(min(15, max(3, budget_s / max(per_round, 1e-9))))
    times = {m: [] for m in steps}
    for _ in range(reps):
        for m in steps:
            times[m].append(timed(m))
    out = {"reps": reps, **{m: statistics.median(t) for m, t in times.items()}}
    out["compile_s"] = {m: first[m] for m in steps if m.endswith("_comp")}
    if device.type == "cuda" and "a" in steps:  # peak memory of one step of (a)
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        with store.scope(stores["a"]):
            steps["a"]()
        _sync(device)
        out["peak_bytes"] = torch.cuda.max_memory_allocated(device) - before
    # ratios as medians of per-round ratios: the two steps of a round ran back to back
    for num, den in RATIOS:
        if num in times and den in times:
            out[f"{num}/{den}"] = statistics.median(
                p / q for p, q in zip(times[num], times[den], strict=True)
            )
    return out


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_child(N: int, K: int, D: int, flow: str, method: str = "a") -> None:
    """Print the peak resident-memory increase (bytes) over two SVI steps of ``method`` here.

    The peak (VmHWM) is reset after set-up by writing 5 to /proc/self/clear_refs, so import and
    set-up peaks (and, for ``c_comp``, the compile) do not hide the step's own; the increase is
    VmHWM after the steps minus VmRSS before them.
    """
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x = torch.randn(N, D)
    step = METHODS[method](x, K, D, flow)
    step()  # Adam state and param store exist from here on (and the compiled code)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_kib("VmRSS")
    step()
    step()
    after = _status_kib("VmHWM")
    print((after - before) * 1024)


def memory_table(flow: str, D: int, points, method: str = "a") -> None:
    rows = []
    for N, K in points:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks.bench_core",
                "--memory-child",
                str(N),
                str(K),
                str(D),
                flow,
                method,
            ],
            capture_output=True,
            text=True,
            check=True,
            # a fixed mmap threshold: glibc returns every freed large block at once, so the
            # resident peak follows live tensors (the default sliding threshold keeps freed
            # blocks in the heap, and the peak then depends on allocation history)
            env={**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536"},
        )
        rows.append((N, K, int(out.stdout.strip().splitlines()[-1])))
    xs = [float(N * K) for N, K, _ in rows]
    ys = [float(b) for *_, b in rows]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((a - mx) * (b - my) for a, b in zip(xs, ys, strict=True)) / sum(
        (a - mx) ** 2 for a in xs
    )
    icpt = my - slope * mx
    print(
        f"\nPeak memory of one step of ({method}), {flow}, D={D}: increase of peak RSS (VmHWM) in a fresh process"
    )
    print(f"{'N':>6} {'K':>4} {'N*K':>8} {'peak MiB':>9} {'line MiB':>9} {'bytes/(N*K)':>12}")
    for (N, K, b), xv in zip(rows, xs, strict=True):
        print(
            f"{N:>6} {K:>4} {N * K:>8} {b / 2**20:>9.1f} {(icpt + slope * xv) / 2**20:>9.1f}"
            f" {b / xv:>12.0f}"
        )
    print(f"least-squares line: {icpt / 2**20:.1f} MiB + {slope:.0f} bytes * N*K")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: few configurations")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--flows",
        nargs="+",
        default=["spline_coupling"],
        choices=["spline_coupling", "affine_coupling"],
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds of timed rounds per configuration (default 12, quick 2)",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        default=[m for m in METHODS if m != "a_before"],
        choices=list(METHODS),
        metavar="M",
    )
    parser.add_argument("--Ds", nargs="+", type=int, help="dimensions (default 2 16)")
    parser.add_argument("--Ns", nargs="+", type=int, help="rows (default 512 4096)")
    parser.add_argument("--Ks", nargs="+", type=int, help="components (default 1 4 10 32)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--memory-only", action="store_true", help="only the peak-memory table")
    parser.add_argument(
        "--memory-child", nargs=5, metavar=("N", "K", "D", "FLOW", "M"), help=argparse.SUPPRESS
    )
    parser.add_argument(
        "--memory-methods",
        nargs="+",
        default=["a"],
        choices=[m for m in METHODS if m != "a_before"],
        metavar="M",
        help="variants whose peak memory per step is tabulated (default a)",
    )
    parser.add_argument(
        "--baseline",
        metavar="DIR",
        help="an older checkout (or its pyro_mixflows directory), for method a_before",
    )
    args = parser.parse_args()
    if args.baseline:
        from benchmarks.bench_fit_step import load_baseline

        core_variants.BASELINE = load_baseline(os.path.abspath(args.baseline))
    elif "a_before" in args.methods:
        parser.error("method a_before needs --baseline DIR")
    if args.memory_child:
        N, K, D, flow, method = args.memory_child
        memory_child(int(N), int(K), int(D), flow, method)
        return
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("expected a CUDA device for --device cuda, got none")
    torch.set_num_threads(args.threads)
    # (b) has no enumerated site; TraceEnum_ELBO says so every step
    warnings.filterwarnings("ignore", message="TraceEnum_ELBO found no sample sites")
    budget = args.budget if args.budget is not None else (2.0 if args.quick else 12.0)
    Ks = args.Ks or ((1, 10) if args.quick else (1, 4, 10, 32))
    Ns = args.Ns or ((512,) if args.quick else (512, 4096))
    Ds = args.Ds or (2, 16)
    methods = args.methods
    print(
        f"torch {torch.__version__}, pyro {pyro.__version__}, device {device}, "
        f"threads={torch.get_num_threads()}, float32, "
        f"validation={'on' if dist.is_validation_enabled() else 'off'}, "
        f"load average at start {os.getloadavg()[0]:.1f}"
    )
    if device.type == "cuda":
        print(f"GPU: {torch.cuda.get_device_name(device)}")
    print(f"architecture: {NUM_LAYERS} layers, hidden {HIDDEN}, {BINS} bins, bound {BOUND}")
    peak = matmul_rate(device)
    n_mm = 4096 if device.type == "cuda" else 1024
    print(f"float32 {n_mm}x{n_mm} matmul: {peak / 1e9:.1f} GFLOP/s (this run, {device})")
    ratios = [(a, b) for a, b in RATIOS if a in methods and b in methods]
    floor = next((m for m in ("c_comp", "c", "a") if m in methods), methods[0])
    t_start = time.perf_counter()
    for flow in args.flows:
        print(f"\n{flow}: median ms per SVI step (loss + backward + Adam)")
        width = {m: max(9, len(m)) for m in methods}
        width.update({f"{a}/{b}": max(9, len(a) + 1 + len(b)) for a, b in ratios})
        head = f"{'D':>3} {'N':>6} {'K':>3} {'reps':>4}"
        head += "".join(f" {m:>{width[m]}}" for m in methods)
        head += "".join(f" {a + '/' + b:>{width[a + '/' + b]}}" for a, b in ratios)
        head += f" {floor + ' GF/s':>11} {floor + '/mm':>9}"
        comp = [m for m in methods if m.endswith("_comp")]
        head += "".join(f" {m + ' 1st s':>12}" for m in comp)
        if device.type == "cuda":
            head += f" {'a peak MiB':>10} {'B/(N*K)':>8}"
        print(head)
        for D, N, K in [] if args.memory_only else itertools.product(Ds, Ns, Ks):
            r = bench_config(flow, D, N, K, budget, methods, device)
            gf = matmul_flops_per_step(K, N, D, flow) / r[floor]
            line = f"{D:>3} {N:>6} {K:>3} {r['reps']:>4}"
            line += "".join(f" {1e3 * r[m]:>{width[m]}.1f}" for m in methods)
            line += "".join(f" {r[f'{a}/{b}']:>{width[f'{a}/{b}']}.2f}" for a, b in ratios)
            line += f" {gf / 1e9:>11.2f} {gf / peak:>9.3f}"
            line += "".join(f" {r['compile_s'][m]:>12.1f}" for m in comp)
            if "peak_bytes" in r:
                pb = r["peak_bytes"]
                line += f" {pb / 2**20:>10.1f} {pb / (N * K):>8.0f}"
            print(line, flush=True)
        if not args.no_memory and device.type == "cpu":
            points = (
                [(512, 4), (4096, 1)]
                if args.quick
                else [(512, 10), (4096, 1), (4096, 4), (4096, 10), (4096, 32)]
            )
            for method in args.memory_methods:
                memory_table(flow, 16, points, method)
    print(
        f"\nmatmul rate at end: {matmul_rate(device) / 1e9:.1f} GFLOP/s; "
        f"load average at end {os.getloadavg()[0]:.1f}; wall {time.perf_counter() - t_start:.0f} s"
    )


if __name__ == "__main__":
    main()
