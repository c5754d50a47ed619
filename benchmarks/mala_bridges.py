"""Bridge samples of trained flows: naive sampling vs latent MALA (targets, preconditioners) vs NUTS.

For three 2-D sets (two moons, 8 Gaussians, a two-mode Gaussian mixture with a wide gap) a single
spline flow, ``FlowComponents(1, 2)``, is trained by maximum likelihood (1500 Adam steps); then every
sampler draws from it and is scored against the TRUE data density:

- br<q: "bridge" share, the fraction of samples whose true log-density is below the q-quantile of
  the true log-density over 20000 true samples, for q = 1% and q = 0.1% (so exact sampling of the
  truth gives q); cut: naive share / sampler share (inf when the sampler has none);
- target: the same two bridge shares and the mode error of the kernel's target itself, computed
  without MCMC by self-normalized importance sampling of 200000 flow draws (what a perfectly
  mixed chain would give);
- energy: energy distance to 2000 fresh true samples;
- mode: total-variation distance between sample mode frequencies and the true weights;
- acc / iacc: acceptance rate of the MALA moves / of the independence moves;
- ESS/s: minimum over coordinates of ArviZ bulk ESS of x (all chains) divided by the sampler's
  wall time, warm-up included; R-hat: maximum over coordinates of ArviZ's rank-normalized split
  R-hat of x (``az.rhat``).

MALA rows run ``CHAINS`` batched chains started at exact flow draws (z ~ q_Z), with independence
moves from the base (``independence_prob``) except the "MALA only" and "base" rows. The two
"MCMC(...)" rows are what a user writes: Pyro's ``MCMC(kernel, num_samples=1000,
warmup_steps=400, num_chains=2)`` with one unbatched chain per process, for the kernel's defaults
(``LatentMALA(flow)``) and for the paper's scheme (``LatentMALA.paper(flow)``). NUTS (Pyro) runs
on the same latent targets (the kernel's ``model``), NeuTra-style, chains in turn.
Threads: ``torch.set_num_threads(1)``. Run: ``python -m benchmarks.mala_bridges`` (or name sets:
``python -m benchmarks.mala_bridges moons gap``; ``PYRO_MIXFLOWS_QUICK=1`` for a smoke run).
"""

from __future__ import annotations

import math
import os
import sys
import time
import warnings

import arviz as az
import torch
from pyro.infer import MCMC, NUTS

from pyro_mixflows import FlowComponents, LatentMALA
from pyro_mixflows.datasets import eight_gaussians_log_prob, make_eight_gaussians, make_two_moons

QUICK = os.environ.get("PYRO_MIXFLOWS_QUICK") == "1"
TRAIN_STEPS = 60 if QUICK else 1500
CHAINS, WARMUP, SAMPLES = (16, 50, 50) if QUICK else (32, 200, 1000)
NUTS_CHAINS, NUTS_WARMUP, NUTS_SAMPLES = (2, 20, 20) if QUICK else (2, 60, 60)
USER_WARMUP, USER_SAMPLES = (20, 50) if QUICK else (400, 1000)  # the "MCMC(...)" rows
NAIVE_DRAWS = 4000 if QUICK else 100_000
INDEPENDENCE_PROB = 0.5
QUANTILES = (0.01, 0.001)  # bridge: true log-density below this quantile of it over true draws


# --- true densities and samplers ------------------------------------------------------------
def moons_log_prob(x: torch.Tensor, noise: float = 0.08) -> torch.Tensor:
    t = torch.linspace(0, math.pi, 400, dtype=x.dtype)
    arcs = torch.cat(
        [torch.stack([t.cos(), t.sin()], 1), torch.stack([1 - t.cos(), 0.5 - t.sin()], 1)]
    )  # (800, 2): each moon uniform in t, quadrature over 400 nodes
    sq = (x.unsqueeze(-2) - arcs).square().sum(-1)  # (..., 800)
    lp = -sq / (2 * noise**2) - math.log(2 * math.pi * noise**2)
    return lp.logsumexp(-1) - math.log(arcs.shape[0])


def moons_mode(x):
    t = torch.linspace(0, math.pi, 400, dtype=x.dtype)
    upper = torch.stack([t.cos(), t.sin()], 1)
    lower = torch.stack([1 - t.cos(), 0.5 - t.sin()], 1)
    du = (x.unsqueeze(-2) - upper).square().sum(-1).min(-1).values
    dl = (x.unsqueeze(-2) - lower).square().sum(-1).min(-1).values
    return (dl < du).long()


GAP_LOCS, GAP_W, GAP_SD = torch.tensor([[-3.0, 0.0], [3.0, 0.0]]), torch.tensor([0.4, 0.6]), 0.5


def gap_log_prob(x):
    lp = torch.distributions.Normal(GAP_LOCS.to(x.dtype), GAP_SD).log_prob(x.unsqueeze(-2)).sum(-1)
    return (lp + GAP_W.log().to(x.dtype)).logsumexp(-1)


def gap_sample(n, seed):
    g = torch.Generator().manual_seed(seed)
    z = torch.multinomial(GAP_W, n, replacement=True, generator=g)
    return GAP_LOCS[z] + GAP_SD * torch.randn(n, 2, generator=g)


def eight_mode(x):
    angle = torch.atan2(x[..., 1], x[..., 0])
    return torch.round(angle / (math.pi / 4)).long() % 8


SETS = {
    "two moons": dict(
        sample=lambda n, seed: torch.as_tensor(make_two_moons(n, seed=seed)[0]).float(),
        log_prob=moons_log_prob,
        mode=moons_mode,
        weights=torch.tensor([0.5, 0.5]),
    ),
    "8 gaussians": dict(
        sample=lambda n, seed: torch.as_tensor(make_eight_gaussians(n, seed=seed)[0]).float(),
        log_prob=lambda x: (
            torch.as_tensor(eight_gaussians_log_prob(x.detach().numpy())).to(x)
            if not x.requires_grad
            else _eight_torch(x)
        ),
        mode=eight_mode,
        weights=torch.full((8,), 1 / 8),
    ),
    "gap mixture": dict(
        sample=gap_sample,
        log_prob=gap_log_prob,
        mode=lambda x: (x[..., 0] > 0).long(),
        weights=GAP_W,
    ),
}


def _eight_torch(x, radius=4.0, std=0.35):
    angles = torch.arange(8, dtype=x.dtype) * (math.pi / 4)
    centers = radius * torch.stack([angles.cos(), angles.sin()], 1)
    lp = torch.distributions.Normal(centers, std).log_prob(x.unsqueeze(-2)).sum(-1)
    return lp.logsumexp(-1) - math.log(8)


# --- training ---------------------------------------------------------------------------------
def train_flow(x: torch.Tensor, seed: int) -> FlowComponents:
    torch.manual_seed(seed)
    comps = FlowComponents(1, 2, flow="spline_coupling", num_layers=4, hidden_dims=(32, 32))
    comps.set_affine(x.mean(0, keepdim=True), x.std(0, keepdim=True))
    opt = torch.optim.Adam(comps.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, TRAIN_STEPS)
    for _ in range(TRAIN_STEPS):
        batch = x[torch.randint(len(x), (512,))]
        loss = -comps.component_log_probs(batch).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    for p in comps.parameters():
        p.requires_grad_(False)
    return comps


# --- scoring ----------------------------------------------------------------------------------
def energy_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    d = lambda u, v: torch.cdist(u.double(), v.double()).mean()  # noqa: E731
    return float(2 * d(a, b) - d(a, a) - d(b, b))


def bridge_and_modes(x, spec, thresholds, weights=None):
    """Bridge shares (per threshold) and mode TV error of draws x (N, 2), optionally weighted."""
    with torch.no_grad():
        lp = spec["log_prob"](x)
        w = torch.full_like(lp, 1.0 / len(lp)) if weights is None else weights
        bridges = [float((w * (lp < t)).sum()) for t in thresholds]
        freq = torch.zeros(len(spec["weights"]), dtype=w.dtype).index_add_(0, spec["mode"](x), w)
        mode_err = float(0.5 * (freq - spec["weights"].to(w)).abs().sum())
    return bridges, mode_err


def score(name, x_chains, seconds, diag, spec, thresholds, fresh, naive_bridges, exact=None):
    """x_chains: (C, S, 2), or (N, 2) for independent draws; exact: the target's IS values."""
    flat = x_chains.reshape(-1, 2)
    bridges, mode_err = bridge_and_modes(flat, spec, thresholds)
    idx = torch.randperm(len(flat))[:2000]
    row = dict(
        sampler=name,
        bridge=[100 * b for b in bridges],
        cut=[nb / b if b > 0 else math.inf for nb, b in zip(naive_bridges, bridges, strict=True)],
        exact=exact,
        energy=energy_distance(flat[idx], fresh),
        mode_err=mode_err,
        acc=diag.get("acceptance rate", float("nan")),
        iacc=diag.get("independence acceptance rate", float("nan")),
        ess_s=float("nan"),
        rhat=float("nan"),
        sec=seconds,
    )
    if x_chains.dim() == 3:
        idata = az.from_dict(posterior={"x": x_chains.numpy()})
        row["ess_s"] = float(az.ess(idata)["x"].min()) / seconds
        row["rhat"] = float(az.rhat(idata)["x"].max())
    return row


def target_exact(kernel, spec, thresholds, n=200_000):
    """Bridge share and mode error of the kernel's target itself (no MCMC error): self-normalized
    importance sampling with n flow draws, weights π(z) / q_Z(z)."""
    with torch.no_grad():
        z = torch.randn(n, 2)
        ev = {"z": z, "lt": kernel._component_log_targets(z.unsqueeze(-2))[0]}
        x = kernel.flows.push(z.unsqueeze(-2))[0][:, 0]
        lw = kernel._log_importance(ev)
        w = (lw - lw.logsumexp(0)).exp()
    bridges, mode_err = bridge_and_modes(x, spec, thresholds, weights=w)
    return [100 * b for b in bridges], mode_err


def run_nuts(kernel, comps, seed):
    """Pyro's NUTS on the kernel's latent target (its ``model``), chains in turn."""
    torch.manual_seed(seed)
    nuts = NUTS(kernel.model, max_tree_depth=6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        mcmc = MCMC(nuts, NUTS_SAMPLES, NUTS_WARMUP, num_chains=NUTS_CHAINS, disable_progbar=True)
    t0 = time.perf_counter()
    mcmc.run()
    seconds = time.perf_counter() - t0
    z = mcmc.get_samples(group_by_chain=True)["z"]  # (chains, S, 2)
    with torch.no_grad():
        x = comps.transform(z.reshape(-1, 1, 2))[0].reshape(*z.shape)
    return x, seconds


def run_user(kernel, seed):
    """Pyro's MCMC as a user writes it: 2 chains (processes), one unbatched chain each."""
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        mcmc = MCMC(
            kernel,
            num_samples=USER_SAMPLES,
            warmup_steps=USER_WARMUP,
            num_chains=2,
            disable_progbar=True,
            mp_context="spawn",
        )
        t0 = time.perf_counter()
        mcmc.run()
    seconds = time.perf_counter() - t0
    diag = mcmc.diagnostics()
    rates = [v for k, v in diag.get("acceptance rate", {}).items()]
    return (
        mcmc.get_samples(group_by_chain=True)["x"],
        seconds,
        {"acceptance rate": sum(rates) / len(rates) if rates else float("nan")},
    )


def run_set(set_name, spec, seed):
    x_train = spec["sample"](4000, seed)
    fresh = spec["sample"](2000, seed + 100).double()
    truth = spec["sample"](20000, seed + 200)
    lp_truth = spec["log_prob"](truth)
    thresholds = [float(torch.quantile(lp_truth, q)) for q in QUANTILES]
    t0 = time.perf_counter()
    comps = train_flow(x_train, seed)
    train_s = time.perf_counter() - t0
    with torch.no_grad():
        nll = -float(comps.component_log_probs(fresh.float()).mean())
    rows = []
    t0 = time.perf_counter()
    with torch.no_grad():
        naive = comps.rsample((NAIVE_DRAWS,))[:, 0]
    seconds = time.perf_counter() - t0
    naive_bridges = bridge_and_modes(naive, spec, thresholds)[0]
    rows.append(score("naive", naive, seconds, {}, spec, thresholds, fresh, naive_bridges))
    ind = dict(independence_prob=INDEPENDENCE_PROB)
    configs = [
        ("base", dict(target="base")),
        ("tempered (paper), MALA only", dict(target="tempered", independence_prob=0.0)),
        ("tempered", dict(target="tempered", **ind)),
        ("sharpened b=1.5", dict(target="sharpened", beta=1.5, **ind)),
        ("sharpened b=2 (default)", dict(target="sharpened", beta=2.0, **ind)),
        ("sharpened b=2 / metric", dict(target="sharpened", preconditioner="metric", **ind)),
        ("explicit (true p)", dict(target="explicit", log_prob_fn=spec["log_prob"], **ind)),
    ]
    for name, kw in configs:
        torch.manual_seed(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the MALA-only row warns, on purpose
            kernel = LatentMALA(comps, num_chains_batched=CHAINS, **kw)
        exact = target_exact(kernel, spec, thresholds)
        t0 = time.perf_counter()
        out = kernel.run_chains(SAMPLES, warmup_steps=WARMUP)
        seconds = time.perf_counter() - t0
        diag = kernel.diagnostics()
        rows.append(
            score(name, out["x"], seconds, diag, spec, thresholds, fresh, naive_bridges, exact)
        )
    for name, kernel in [
        ("MCMC(LatentMALA(flow))", LatentMALA(comps)),
        ("MCMC(LatentMALA.paper(flow))", LatentMALA.paper(comps)),
    ]:
        x, seconds, diag = run_user(kernel, seed)
        rows.append(score(name, x, seconds, diag, spec, thresholds, fresh, naive_bridges))
    for name, kw in [
        ("NUTS tempered (Pyro)", dict(target="tempered")),
        ("NUTS sharpened b=2 (Pyro)", dict(target="sharpened", beta=2.0)),
    ]:
        x, seconds = run_nuts(LatentMALA(comps, **kw), comps, seed)
        rows.append(score(name, x, seconds, {}, spec, thresholds, fresh, naive_bridges))
    return rows, train_s, nll


def main() -> None:
    torch.set_num_threads(1)
    print(
        f"MALA: {CHAINS} batched chains x ({WARMUP} warm-up + {SAMPLES} draws), independence "
        f"proposals with probability {INDEPENDENCE_PROB} per step (except 'MALA only' and "
        f"'base'); MCMC(...) rows: Pyro MCMC, 2 chains x ({USER_WARMUP}+{USER_SAMPLES}); "
        f"naive: {NAIVE_DRAWS} draws; NUTS {NUTS_CHAINS} chains x ({NUTS_WARMUP}+"
        f"{NUTS_SAMPLES}); flows trained {TRAIN_STEPS} steps; threads=1; float32"
    )
    q = [f"{100 * v:g}%" for v in QUANTILES]
    header = (
        f"{'sampler':30s} {'br<' + q[0]:>7s} {'cut':>5s} {'br<' + q[1]:>8s} {'cut':>5s} "
        f"{'target':>13s} {'energy':>7s} {'mode':>6s} {'acc':>5s} {'iacc':>5s} "
        f"{'ESS/s':>7s} {'R-hat':>6s} {'sec':>6s}"
    )
    chosen = sys.argv[1:] or list(SETS)  # e.g. `python -m benchmarks.mala_bridges moons`
    for i, (set_name, spec) in enumerate(SETS.items()):
        if not any(c in set_name for c in chosen):
            continue
        rows, train_s, nll = run_set(set_name, spec, seed=i)
        print(f"\n== {set_name}: flow trained in {train_s:.0f}s, held-out NLL {nll:.3f} ==")
        print(header)
        for r in rows:
            ex = r["exact"]
            exact = "" if ex is None else f"{ex[0][0]:.2f}/{ex[0][1]:.3f}/{ex[1]:.3f}"
            print(
                f"{r['sampler']:30s} {r['bridge'][0]:7.2f} {r['cut'][0]:5.1f} "
                f"{r['bridge'][1]:8.3f} {r['cut'][1]:5.1f} {exact:>13s} {r['energy']:7.4f} "
                f"{r['mode_err']:6.3f} {r['acc']:5.2f} {r['iacc']:5.2f} {r['ess_s']:7.1f} "
                f"{r['rhat']:6.3f} {r['sec']:6.1f}"
            )


if __name__ == "__main__":
    main()
