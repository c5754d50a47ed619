"""The training steps that ``benchmarks.bench_core`` times (see its docstring for the list).

Every ``setup_*(x, K, D, flow)`` builds one model on the rows x (N, D) and returns a function that
takes one optimization step (loss + backward + Adam); ``METHODS`` names them and ``RATIOS`` lists
the ratios the table reports.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO
from pyro.nn import DenseNN, PyroModule

from pyro_mixflows import FlowComponents, FlowMixture, VMoNF
from pyro_mixflows.estimators._candidates import CandidateMixtures

NUM_LAYERS = 4
HIDDEN = (64, 64)
BINS = 8
BOUND = 5.0

# set by bench_core --baseline: an older copy of the package (bench_fit_step.load_baseline)
BASELINE = None


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
    package=None,
    name: str = "a",
    optim_args: dict | None = None,
):
    """``package``: where ``FlowComponents`` comes from (another copy for ``a_before``);
    ``optim_args``: the options of ``pyro.optim.Adam`` (default ``{"lr": 1e-3}``)."""
    comps = make_components(K, D, flow, x.device, package)

    def model(x):
        pyro.module(f"{name}_comps", comps)
        logits = pyro.param(f"{name}_logits", torch.zeros(K, device=x.device))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Categorical(logits=logits), infer={"enumerate": "parallel"})
            pyro.sample("x", comps.component(z), obs=x)

    def guide(x):
        pass

    optim = pyro.optim.Adam(optim_args or {"lr": 1e-3})
    svi = SVI(model, guide, optim, TraceEnum_ELBO(max_plate_nesting=1))
    return lambda: svi.step(x)


def setup_a_fused(x: torch.Tensor, K: int, D: int, flow: str):
    """``a`` with torch's fused Adam kernel (one kernel per parameter tensor), as the estimator."""
    return setup_a(x, K, D, flow, name="a_fused", optim_args={"lr": 1e-3, "fused": True})


def setup_a_before(x: torch.Tensor, K: int, D: int, flow: str):
    """``a`` with the baseline copy's ``FlowComponents``."""
    if BASELINE is None:
        raise SystemExit("method a_before needs --baseline DIR")
    return setup_a(x, K, D, flow, package=BASELINE, name="a_before")


class _MixtureModel(PyroModule):
    def __init__(self, comps: FlowComponents) -> None:
        super().__init__()
        self.comps = comps  # a plain nn.Module: its parameters are the module's parameters
        device = next(comps.parameters()).device
        self.logits = torch.nn.Parameter(torch.zeros(comps.num_components, device=device))

    def forward(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample(
                "z", dist.Categorical(logits=self.logits), infer={"enumerate": "parallel"}
            )
            pyro.sample("x", self.comps.component(z), obs=x)


class _EmptyGuide(PyroModule):
    def forward(self, x):
        pass


def _torch_step(loss_fn, optim: torch.optim.Optimizer, x: torch.Tensor):
    """One plain torch step of ``loss_fn(x)`` under ``optim``, as a closure returning the loss."""

    def step():
        optim.zero_grad()
        loss = loss_fn(x)
        loss.backward()
        optim.step()
        return loss.item()

    return step


def setup_a_mod(x: torch.Tensor, K: int, D: int, flow: str):
    model = _MixtureModel(make_components(K, D, flow, x.device))
    loss_fn = TraceEnum_ELBO(max_plate_nesting=1)(model, _EmptyGuide())
    optim = torch.optim.Adam(loss_fn.parameters(), lr=1e-3)

    return _torch_step(loss_fn, optim, x)


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


# --- (a_exact) VMoNF's closed-form loss ------------------------------------------------------
def setup_a_exact(x: torch.Tensor, K: int, D: int, flow: str):
    vm = VMoNF(make_components(K, D, flow, x.device), assignment="enumerate").to(x.device)
    svi = SVI(vm.model, vm.guide, pyro.optim.Adam({"lr": 1e-3}), vm.exact_loss)
    return lambda: svi.step(x)


# --- (a_cand) the estimator's training loss: CandidateMixtures with one candidate -------------
def setup_a_cand(x: torch.Tensor, K: int, D: int, flow: str):
    labels = torch.full((1, x.shape[0]), -1, dtype=torch.long, device=x.device)
    logits = torch.zeros(1, K, device=x.device)
    module = CandidateMixtures(make_components(K, D, flow, x.device), 1, logits, labels)
    svi = SVI(module.model, module.guide, pyro.optim.Adam({"lr": 1e-3}), module.loss)
    return lambda: svi.step(x)


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

    return _torch_step(loss_fn, optim, x)


def setup_c_comp(x: torch.Tensor, K: int, D: int, flow: str):
    return setup_c(x, K, D, flow, compiled=True)


METHODS = {
    "a": setup_a,
    "a_mod": setup_a_mod,
    "b": setup_b,
    "c": setup_c,
    "c_comp": setup_c_comp,
    "a_marg": setup_a_marg,
    "a_exact": setup_a_exact,
    "a_cand": setup_a_cand,
    "a_fused": setup_a_fused,
    "a_before": setup_a_before,
}
RATIOS = (
    ("a", "c"),
    ("a_mod", "c"),
    ("b", "a"),
    ("c", "c_comp"),
    ("a_marg", "c"),
    ("a_exact", "c"),
    ("a_cand", "c"),
    ("a", "a_exact"),
    ("a", "a_cand"),
    ("a", "a_fused"),
    ("b", "a_cand"),
    ("a_cand", "c_comp"),
    ("a_before", "a"),
    ("a_before", "a_cand"),
)
