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
  with ``torch.optim.Adam`` -- the floor.

Reported: medians in milliseconds; the ratios a/c, a_mod/c and b/a as medians of the per-round
ratios (the steps of one round run back to back, so slow drifts of the machine's load cancel); the FLOP rate of ``c`` at
N=4096 (batched matmul FLOPs counted analytically: forward + backward = 3x forward) as a fraction
of the same run's rate of a large float32 matmul; and the peak-memory growth of one step of ``a``,
measured as the increase of the peak resident set size (VmHWM, reset through /proc/self/clear_refs)
in a fresh process per point, with glibc's mmap threshold fixed at 64 KiB so that freed tensors
leave the resident set at once, fitted by a line in N*K.

    python -m benchmarks.bench_core             # the full table (~10-15 min on a loaded machine)
    python -m benchmarks.bench_core --quick     # a smoke run (~1 min)

One thread (``torch.set_num_threads(1)``) unless ``--threads`` says otherwise; float32.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import warnings

import pyro
import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from pyro.infer import SVI, TraceEnum_ELBO
from pyro.nn import DenseNN, PyroModule

from pyro_mixflows import FlowComponents

NUM_LAYERS = 4
HIDDEN = (64, 64)
BINS = 8
BOUND = 5.0


def make_components(K: int, D: int, flow: str) -> FlowComponents:
    return FlowComponents(
        K, D, flow=flow, num_layers=NUM_LAYERS, hidden_dims=HIDDEN, count_bins=BINS, bound=BOUND
    )


# --- (a) the batched mixture in SVI ---------------------------------------------------------
def setup_a(x: torch.Tensor, K: int, D: int, flow: str):
    comps = make_components(K, D, flow)

    def model(x):
        pyro.module("a_comps", comps)
        logits = pyro.param("a_logits", torch.zeros(K))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Categorical(logits=logits), infer={"enumerate": "parallel"})
            pyro.sample("x", comps.component(z), obs=x)

    def guide(x):
        pass

    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), TraceEnum_ELBO(max_plate_nesting=1))
    return lambda: svi.step(x)


class _MixtureModel(PyroModule):
    def __init__(self, comps: FlowComponents) -> None:
        super().__init__()
        self.comps = comps  # a plain nn.Module: its parameters are the module's parameters
        self.logits = torch.nn.Parameter(torch.zeros(comps.num_components))

    def forward(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample(
                "z", dist.Categorical(logits=self.logits), infer={"enumerate": "parallel"}
            )
            pyro.sample("x", self.comps.component(z), obs=x)


class _EmptyGuide(PyroModule):
    def forward(self, x):
        pass


def setup_a_mod(x: torch.Tensor, K: int, D: int, flow: str):
    model = _MixtureModel(make_components(K, D, flow))
    loss_fn = TraceEnum_ELBO(max_plate_nesting=1)(model, _EmptyGuide())
    optim = torch.optim.Adam(loss_fn.parameters(), lr=1e-3)

    def step():
        optim.zero_grad()
        loss = loss_fn(x)
        loss.backward()
        optim.step()
        return loss.item()

    return step


# --- (b) the naive model: a Python list of K Pyro flows -------------------------------------
def pyro_flow(D: int, flow: str) -> list:
    """Pyro transforms with the architecture of one ``FlowComponents`` component.

    Coupling layers alternate which half conditions (through a reversing ``T.Permute``), as in
    ``FlowComponents``; the per-component elementwise affine end of ``FlowComponents`` has no
    learnable counterpart among Pyro's transforms and is left out, which only makes ``b`` cheaper.
    """
    half = D // 2
    mods = []
    for i in range(NUM_LAYERS):
        if flow == "spline_coupling":
            n = D - half
            net = DenseNN(half, list(HIDDEN), param_dims=[n * BINS, n * BINS, n * (BINS - 1)])
            # quadratic order + identity on the conditioner half = the NSF coupling layer of
            # FlowComponents (3B - 1 parameters per transformed coordinate)
            mods.append(
                T.SplineCoupling(D, half, net, BINS, BOUND, order="quadratic", identity=True)
            )
        else:
            mods.append(T.affine_coupling(D, hidden_dims=list(HIDDEN)))
        if i < NUM_LAYERS - 1:
            mods.append(T.Permute(torch.arange(D - 1, -1, -1)))
    return mods


def setup_b(x: torch.Tensor, K: int, D: int, flow: str):
    flows = [pyro_flow(D, flow) for _ in range(K)]
    modules = [torch.nn.ModuleList(t for t in f if isinstance(t, torch.nn.Module)) for f in flows]
    base = dist.Normal(torch.zeros(D), torch.ones(D)).to_event(1)

    def model(x):
        logits = pyro.param("b_logits", torch.zeros(K))
        lps = []
        for k, f in enumerate(flows):
            pyro.module(f"b_flow{k}", modules[k])
            # a fresh view: Pyro transforms cache their last inverse by tensor identity
            lps.append(dist.TransformedDistribution(base, f).log_prob(x.view_as(x)))
        lp = torch.logsumexp(torch.stack(lps, -1) + torch.log_softmax(logits, -1), -1)  # (N,)
        with pyro.plate("data", x.shape[0]):
            pyro.factor("x", lp)

    def guide(x):
        pass

    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), TraceEnum_ELBO(max_plate_nesting=1))
    return lambda: svi.step(x)


# --- (c) plain PyTorch ----------------------------------------------------------------------
def setup_c(x: torch.Tensor, K: int, D: int, flow: str):
    comps = make_components(K, D, flow)
    logits = torch.nn.Parameter(torch.zeros(K))
    optim = torch.optim.Adam([logits, *comps.parameters()], lr=1e-3)

    def step():
        optim.zero_grad()
        lp = comps.component_log_probs(x) + torch.log_softmax(logits, -1)  # (N, K)
        loss = -torch.logsumexp(lp, -1).sum()
        loss.backward()
        optim.step()
        return loss.item()

    return step


METHODS = {"a": setup_a, "a_mod": setup_a_mod, "b": setup_b, "c": setup_c}


def matmul_flops_per_step(K: int, N: int, D: int, flow: str) -> float:
    """Batched-matmul FLOPs of one step: forward 2*N*K*sum(in*out) per layer, backward 2x that."""
    half = D // 2
    n_trans = D - half
    per_dim = 3 * BINS - 1 if flow == "spline_coupling" else 2
    sizes = [half, *HIDDEN, n_trans * per_dim]
    macs = sum(a * b for a, b in zip(sizes[:-1], sizes[1:], strict=True))
    return 3 * 2 * N * K * NUM_LAYERS * macs


def matmul_rate(n: int = 1024, reps: int = 5) -> float:
    """Median FLOP/s of an (n, n) @ (n, n) float32 matmul on this thread budget."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times)


def bench_config(flow: str, D: int, N: int, K: int, budget_s: float, methods) -> dict:
    pyro.clear_param_store()
    torch.manual_seed(0)
    x = torch.randn(N, D)
    steps = {m: METHODS[m](x, K, D, flow) for m in methods}
    first = {}
    for m, step in steps.items():  # warm-up (param store, Adam state, allocator); timed once
        t0 = time.perf_counter()
        step()
        first[m] = time.perf_counter() - t0
    per_round = sum(first.values())
    reps = int(min(15, max(3, budget_s / max(per_round, 1e-9))))
    times = {m: [] for m in steps}
    for _ in range(reps):
        for m, step in steps.items():
            t0 = time.perf_counter()
            step()
            times[m].append(time.perf_counter() - t0)
    out = {"reps": reps, **{m: statistics.median(t) for m, t in times.items()}}
    # ratios as medians of per-round ratios: the two steps of a round ran back to back
    for num, den in (("a", "c"), ("a_mod", "c"), ("b", "a")):
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


def memory_child(N: int, K: int, D: int, flow: str) -> None:
    """Print the peak resident-memory increase (bytes) over two SVI steps of ``a`` in this process.

    The peak (VmHWM) is reset after set-up by writing 5 to /proc/self/clear_refs, so import and
    set-up peaks do not hide the step's own; the increase is VmHWM after the steps minus VmRSS
    before them.
    """
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x = torch.randn(N, D)
    step = setup_a(x, K, D, flow)
    step()  # Adam state and param store exist from here on
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_kib("VmRSS")
    step()
    step()
    after = _status_kib("VmHWM")
    print((after - before) * 1024)


def memory_table(flow: str, D: int, points) -> None:
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
        f"\nPeak memory of one step of (a), {flow}, D={D}: increase of peak RSS (VmHWM) in a fresh process"
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
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument(
        "--memory-child", nargs=4, metavar=("N", "K", "D", "FLOW"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.memory_child:
        N, K, D, flow = args.memory_child
        memory_child(int(N), int(K), int(D), flow)
        return
    torch.set_num_threads(args.threads)
    # (b) has no enumerated site; TraceEnum_ELBO says so every step
    warnings.filterwarnings("ignore", message="TraceEnum_ELBO found no sample sites")
    budget = args.budget if args.budget is not None else (2.0 if args.quick else 12.0)
    Ks = (1, 10) if args.quick else (1, 4, 10, 32)
    Ns = (512,) if args.quick else (512, 4096)
    Ds = (2, 16)
    methods = list(METHODS)
    print(
        f"torch {torch.__version__}, pyro {pyro.__version__}, threads={torch.get_num_threads()}, "
        f"float32, validation={'on' if dist.is_validation_enabled() else 'off'}, "
        f"load average at start {os.getloadavg()[0]:.1f}"
    )
    print(f"architecture: {NUM_LAYERS} layers, hidden {HIDDEN}, {BINS} bins, bound {BOUND}")
    peak = matmul_rate()
    print(
        f"float32 1024x1024 matmul: {peak / 1e9:.1f} GFLOP/s (this run, {args.threads} thread(s))"
    )
    t_start = time.perf_counter()
    for flow in args.flows:
        print(f"\n{flow}: median ms per SVI step (loss + backward + Adam)")
        head = (
            f"{'D':>3} {'N':>5} {'K':>3} {'reps':>4} {'a':>9} {'a_mod':>9} {'b':>9} {'c':>9}"
            f" {'a/c':>5} {'amod/c':>6} {'b/a':>6} {'c GF/s':>7} {'c/mm':>5}"
        )
        print(head)
        for D in Ds:
            for N in Ns:
                for K in Ks:
                    r = bench_config(flow, D, N, K, budget, methods)
                    gf = matmul_flops_per_step(K, N, D, flow) / r["c"]
                    print(
                        f"{D:>3} {N:>5} {K:>3} {r['reps']:>4}"
                        + "".join(f" {1e3 * r[m]:>9.1f}" for m in methods)
                        + f" {r['a/c']:>5.2f} {r['a_mod/c']:>6.2f}"
                        + f" {r['b/a']:>6.2f} {gf / 1e9:>7.2f} {gf / peak:>5.2f}",
                        flush=True,
                    )
        if not args.no_memory:
            points = (
                [(512, 4), (4096, 1)]
                if args.quick
                else [(512, 10), (4096, 1), (4096, 4), (4096, 10), (4096, 32)]
            )
            memory_table(flow, 16, points)
    print(
        f"\nmatmul rate at end: {matmul_rate() / 1e9:.1f} GFLOP/s; "
        f"load average at end {os.getloadavg()[0]:.1f}; wall {time.perf_counter() - t_start:.0f} s"
    )


if __name__ == "__main__":
    main()
