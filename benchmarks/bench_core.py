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
- ``a_comp``: ``a`` with the component pass compiled the way ``fit(compile=True)`` does it
  (``pyro_mixflows.infer._compile.CompiledPass``: ``torch.compile`` of ``component_log_probs``,
  forward and backward, for the batch shape), the rest of the Pyro step eager (Pyro validation
  stays on here, while fit's compiled loop turns it off after its first step);
- ``c_comp``: ``c`` with the whole loss (component pass + log-sum-exp) under ``torch.compile``;
- ``a_marg``: the mixture written with its marginal, ``pyro.sample("x", FlowMixture(comps,
  logits), obs=x)`` in the data plate (no discrete site), ``SVI`` + ``Trace_ELBO``: the way to
  write a flow mixture in Pyro when z is not needed;
- ``a_exact``: ``VMoNF(comps, assignment="enumerate")`` trained by ``SVI`` with its closed-form
  loss ``vm.exact_loss`` (the value and gradients of ``TraceEnum_ELBO``, plain PyTorch inside;
  what the estimator trains with);
- ``a_exact_comp``: ``a_exact`` with the loss kernel compiled whole, as ``fit(compile=True)``
  does it for that loss;
- ``a_mt``: ``a`` with ``pyro_mixflows.infer.MultiTensorAdam({"lr": ..., "fused": True})``
  in place of ``pyro.optim.Adam``: one fused update call for all parameter tensors;
- ``a_before`` (with ``--baseline DIR``, an older copy of the ``pyro_mixflows`` package
  directory): ``a`` with that copy's ``FlowComponents``, e.g. the eager step as it was before a
  change (``git archive <commit> pyro_mixflows | tar -x -C /tmp/old``).

The compiled variants are compiled during the warm-up (their first-call time, compile included,
is printed as "compile s"), so the timed rounds are steady state.

Reported: medians in milliseconds; the ratios a/c, a_mod/c and b/a as medians of the per-round
ratios (the steps of one round run back to back, so slow drifts of the machine's load cancel); the FLOP rate of ``c`` at
N=4096 (batched matmul FLOPs counted analytically: forward + backward = 3x forward) as a fraction
of the same run's rate of a large float32 matmul; and the peak-memory growth of one step of ``a``,
measured as the increase of the peak resident set size (VmHWM, reset through /proc/self/clear_refs)
in a fresh process per point, with glibc's mmap threshold fixed at 64 KiB so that freed tensors
leave the resident set at once, fitted by a line in N*K.

    python -m benchmarks.bench_core             # the full table (~10-15 min on a loaded machine)
    python -m benchmarks.bench_core --quick     # a smoke run (~1 min)
    python -m benchmarks.bench_core --methods a c a_comp c_comp --Ds 2 --Ns 512 --Ks 2 4
    python -m benchmarks.bench_core --device cuda --Ds 16 --Ns 65536 --Ks 32   # on a GPU
    python -m benchmarks.bench_core --baseline /tmp/old/pyro_mixflows --methods a_before a_exact_comp

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
import pyro.distributions.transforms as T
import torch
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO
from pyro.nn import DenseNN, PyroModule

from pyro_mixflows import FlowComponents, FlowMixture, VMoNF
from pyro_mixflows.infer import MultiTensorAdam
from pyro_mixflows.infer._compile import CompiledKernel, CompiledPass

NUM_LAYERS = 4
HIDDEN = (64, 64)
BINS = 8
BOUND = 5.0


def make_components(
    K: int, D: int, flow: str, device: torch.device | None = None, package=None
) -> FlowComponents:
    """``package``: another copy of ``pyro_mixflows`` to take ``FlowComponents`` from."""
    cls = FlowComponents if package is None else package.FlowComponents
    comps = cls(
        K, D, flow=flow, num_layers=NUM_LAYERS, hidden_dims=HIDDEN, count_bins=BINS, bound=BOUND
    )
    return comps if device is None else comps.to(device)


# --- (a) the batched mixture in SVI ---------------------------------------------------------
def setup_a(
    x: torch.Tensor,
    K: int,
    D: int,
    flow: str,
    compiled: bool = False,
    package=None,
    name: str | None = None,
    optim=None,
):
    """``package``: where ``FlowComponents`` comes from (another copy for ``a_before``);
    ``optim``: the Pyro optimizer (default ``pyro.optim.Adam``)."""
    comps = make_components(K, D, flow, x.device, package)
    if compiled:  # what fit(compile=True) installs for its training steps
        comps.component_log_probs = CompiledPass(comps)
    name = name or ("a_comp" if compiled else "a")

    def model(x):
        pyro.module(f"{name}_comps", comps)
        logits = pyro.param(f"{name}_logits", torch.zeros(K, device=x.device))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Categorical(logits=logits), infer={"enumerate": "parallel"})
            pyro.sample("x", comps.component(z), obs=x)

    def guide(x):
        pass

    optim = optim if optim is not None else pyro.optim.Adam({"lr": 1e-3})
    svi = SVI(model, guide, optim, TraceEnum_ELBO(max_plate_nesting=1))
    return lambda: svi.step(x)


def setup_a_mt(x: torch.Tensor, K: int, D: int, flow: str):
    """``a`` with ``MultiTensorAdam`` and torch's fused Adam kernel in place of Pyro's Adam."""
    optim = MultiTensorAdam({"lr": 1e-3, "fused": True})
    return setup_a(x, K, D, flow, optim=optim, name="a_mt")


# set by --baseline: an older copy of the package (bench_fit_step.load_baseline)
BASELINE = None


def setup_a_before(x: torch.Tensor, K: int, D: int, flow: str):
    """``a`` with the baseline copy's ``FlowComponents``."""
    if BASELINE is None:
        raise SystemExit("method a_before needs --baseline DIR")
    return setup_a(x, K, D, flow, package=BASELINE, name="a_before")


def setup_a_comp(x: torch.Tensor, K: int, D: int, flow: str):
    return setup_a(x, K, D, flow, compiled=True)


class _MixtureModel(PyroModule):
    def __init__(self, comps: FlowComponents) -> None:
        super().__init__()
        self.comps = comps  # a plain nn.Module: its parameters are the module's parameters
        self.logits = torch.nn.Parameter(
            torch.zeros(comps.num_components, device=comps.affine.loc.device)
        )

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
    model = _MixtureModel(make_components(K, D, flow, x.device))
    loss_fn = TraceEnum_ELBO(max_plate_nesting=1)(model, _EmptyGuide())
    optim = torch.optim.Adam(loss_fn.parameters(), lr=1e-3)

    def step():
        optim.zero_grad()
        loss = loss_fn(x)
        loss.backward()
        optim.step()
        return loss.item()

    return step


# --- (a_marg) the marginal FlowMixture as the observed site, no discrete latent -------------
def setup_a_marg(x: torch.Tensor, K: int, D: int, flow: str):
    comps = make_components(K, D, flow, x.device)

    def model(x):
        pyro.module("a_marg_comps", comps)
        logits = pyro.param("a_marg_logits", torch.zeros(K, device=x.device))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", FlowMixture(comps, logits=logits), obs=x)

    def guide(x):
        pass

    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
    return lambda: svi.step(x)


# --- (a_exact) VMoNF's closed-form loss, the estimator's training loss -----------------------
def setup_a_exact(x: torch.Tensor, K: int, D: int, flow: str, compiled: bool = False):
    vm = VMoNF(make_components(K, D, flow, x.device), assignment="enumerate").to(x.device)
    vm._pyro_name = "a_exact_comp" if compiled else "a_exact"  # its own param-store names
    if compiled:  # what fit(compile=True) installs for VMoNF.exact_loss: the whole kernel
        vm.__dict__["_loss_kernel"] = CompiledKernel(VMoNF._loss_kernel)
    svi = SVI(vm.model, vm.guide, pyro.optim.Adam({"lr": 1e-3}), vm.exact_loss)
    return lambda: svi.step(x)


def setup_a_exact_comp(x: torch.Tensor, K: int, D: int, flow: str):
    return setup_a_exact(x, K, D, flow, compiled=True)


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
    for m in modules:
        m.to(x.device)
    for f in flows:  # Permute keeps its index tensor outside any module
        for t in f:
            if isinstance(t, T.Permute):
                t.permutation = t.permutation.to(x.device)
    zeros = torch.zeros(D, device=x.device)
    base = dist.Normal(zeros, torch.ones_like(zeros)).to_event(1)

    def model(x):
        logits = pyro.param("b_logits", torch.zeros(K, device=x.device))
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
def setup_c(x: torch.Tensor, K: int, D: int, flow: str, compiled: bool = False):
    comps = make_components(K, D, flow, x.device)
    logits = torch.nn.Parameter(torch.zeros(K, device=x.device))
    optim = torch.optim.Adam([logits, *comps.parameters()], lr=1e-3)

    def loss_fn(x):
        lp = comps.component_log_probs(x) + torch.log_softmax(logits, -1)  # (N, K)
        return -torch.logsumexp(lp, -1).sum()

    if compiled:
        loss_fn = torch.compile(loss_fn, fullgraph=True, dynamic=False)

    def step():
        optim.zero_grad()
        loss = loss_fn(x)
        loss.backward()
        optim.step()
        return loss.item()

    return step


def setup_c_comp(x: torch.Tensor, K: int, D: int, flow: str):
    return setup_c(x, K, D, flow, compiled=True)


METHODS = {
    "a": setup_a,
    "a_mod": setup_a_mod,
    "b": setup_b,
    "c": setup_c,
    "a_comp": setup_a_comp,
    "c_comp": setup_c_comp,
    "a_marg": setup_a_marg,
    "a_exact": setup_a_exact,
    "a_exact_comp": setup_a_exact_comp,
    "a_before": setup_a_before,
    "a_mt": setup_a_mt,
}
RATIOS = (
    ("a", "c"),
    ("a_mod", "c"),
    ("b", "a"),
    ("a", "a_comp"),
    ("c", "c_comp"),
    ("b", "a_comp"),
    ("a_marg", "c"),
    ("a_exact", "c"),
    ("a", "a_exact"),
    ("b", "a_exact"),
    ("a", "a_exact_comp"),
    ("a_exact_comp", "c_comp"),
    ("b", "a_exact_comp"),
    ("a_before", "a"),
    ("a_before", "a_exact"),
    ("a_before", "a_exact_comp"),
    ("a_mt", "c"),
    ("a", "a_mt"),
)


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
    pyro.clear_param_store()
    torch.manual_seed(0)
    x = torch.randn(N, D, device=device)
    steps = {m: METHODS[m](x, K, D, flow) for m in methods}
    first, second = {}, {}
    for m, step in steps.items():  # warm-up (param store, Adam state, allocator, compile)
        t0 = time.perf_counter()
        step()
        _sync(device)
        first[m] = time.perf_counter() - t0
    for m, step in steps.items():  # a second warm-up round: the steady-state cost of a round
        t0 = time.perf_counter()
        step()
        _sync(device)
        second[m] = time.perf_counter() - t0
    per_round = sum(second.values())
    reps = int(min(15, max(3, budget_s / max(per_round, 1e-9))))
    times = {m: [] for m in steps}
    for _ in range(reps):
        for m, step in steps.items():
            t0 = time.perf_counter()
            step()
            _sync(device)
            times[m].append(time.perf_counter() - t0)
    out = {"reps": reps, **{m: statistics.median(t) for m, t in times.items()}}
    out["compile_s"] = {m: first[m] for m in steps if m.endswith("_comp")}
    if device.type == "cuda" and "a" in steps:  # peak memory of one step of (a)
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
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
    set-up peaks (and, for ``a_comp``, the compile) do not hide the step's own; the increase is
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
        choices=["a", "a_comp"],
        help="variants whose peak memory per step is tabulated (default a)",
    )
    parser.add_argument(
        "--baseline",
        metavar="DIR",
        help="an older copy of the pyro_mixflows package directory, for method a_before",
    )
    args = parser.parse_args()
    global BASELINE
    if args.baseline:
        from benchmarks.bench_fit_step import load_baseline

        BASELINE = load_baseline(os.path.abspath(args.baseline))
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
    floor = next((m for m in ("c_comp", "c", "a_comp", "a") if m in methods), methods[0])
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
