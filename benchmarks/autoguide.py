"""AutoFlowMixture against Pyro's autoguides on three multimodal posteriors, with NUTS as reference.

Targets (all written as Pyro models):

- ``squared``: theta ~ N(0, 3), y_i ~ N(theta^2, 1), 20 points around 1.5^2: modes at +-1.5,
  mass 1/2 each by symmetry.
- ``gmm``: the two locations of a 2-component Gaussian mixture (weights 1/2, scale 1, prior
  N(0, 5)), 40 points from N(-2, 1) and N(2, 1): label switching, modes (-2, 2) and (2, -2), 1/2 each.
- ``ring``: z ~ N(0, 3 I_2) times exp(-(|z| - 2)^2 / (2 * 0.15^2)): a thin ring, 1/4 of the mass
  in every quadrant by symmetry.

Columns: ELBO (1000 draws; the mixture guide's by TraceEnum_ELBO, the others by Trace_ELBO),
energy distance to the NUTS draws (lower is better), mode-weight error (largest |weight - truth|
over the modes: sign of theta, label order, quadrant; truths from the symmetries), training time.
NUTS runs 2 chains from prior draws; its draws are symmetrized with the known symmetry (random
sign flip / label swap / rotation by a multiple of 90 degrees), because a single chain does
not cross between separated modes.

Run: ``python -m benchmarks.autoguide [--quick]`` (one thread: ``torch.set_num_threads(1)``).
"""

from __future__ import annotations

import argparse
import math
import time
from functools import partial

import pyro
import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from pyro import poutine
from pyro.infer import MCMC, NUTS, SVI, Trace_ELBO, TraceEnum_ELBO
from pyro.infer.autoguide import AutoIAFNormal, AutoNormal, AutoNormalizingFlow, init_to_sample

from pyro_mixflows import AutoFlowMixture


# --- targets ------------------------------------------------------------------------------
def squared_model(y, subsample=None):
    theta = pyro.sample("theta", dist.Normal(0.0, 3.0))
    with pyro.plate("data", len(y), subsample=subsample) as idx:
        pyro.sample("y", dist.Normal(theta**2, 1.0), obs=y[idx])


def gmm_model(x, subsample=None):
    locs = pyro.sample("locs", dist.Normal(0.0, 5.0).expand([2]).to_event(1))  # (..., 2)
    # Batched locs (..., 1, 2) already carry the data plate's slot; unbatched ones get it.
    comp = dist.Normal(locs.unsqueeze(-2) if locs.dim() == 1 else locs, 1.0)  # (..., 1, 2)
    mix = dist.Categorical(torch.full(comp.batch_shape, 0.5))  # batch (..., 1)
    with pyro.plate("data", len(x), subsample=subsample) as idx:
        pyro.sample("x", dist.MixtureSameFamily(mix, comp), obs=x[idx])


def ring_model(subsample=None):
    z = pyro.sample("z", dist.Normal(0.0, 3.0).expand([2]).to_event(1))
    pyro.factor("ring", -((z.norm(dim=-1) - 2.0) ** 2) / (2 * 0.15**2))


def _targets(gen):
    y = 1.5**2 + torch.randn(20, generator=gen)
    x = torch.cat([torch.randn(20, generator=gen) - 2, torch.randn(20, generator=gen) + 2])
    return {
        "squared": (squared_model, (y,), "theta"),
        "gmm": (gmm_model, (x,), "locs"),
        "ring": (ring_model, (), "z"),
    }


def _flat(samples, site):
    v = samples[site]
    return v.reshape(v.shape[0], -1)  # (S, D)


def _symmetrize(name, v, gen):
    S = v.shape[0]
    if name == "squared":
        return v * (2 * torch.randint(0, 2, (S, 1), generator=gen) - 1)
    if name == "gmm":
        swap = torch.randint(0, 2, (S,), generator=gen).bool()
        return torch.where(swap[:, None], v.flip(-1), v)
    k = torch.randint(0, 4, (S,), generator=gen) * (math.pi / 2)
    c, s = k.cos(), k.sin()
    return torch.stack([c * v[:, 0] - s * v[:, 1], s * v[:, 0] + c * v[:, 1]], -1)


def _mode_error(name, v):
    if name == "squared":
        return abs(float((v[:, 0] > 0).double().mean()) - 0.5)
    if name == "gmm":
        return abs(float((v[:, 0] < v[:, 1]).double().mean()) - 0.5)
    quadrant = (v[:, 0] > 0).long() * 2 + (v[:, 1] > 0).long()
    return max(abs(float((quadrant == q).double().mean()) - 0.25) for q in range(4))


def energy_distance(a, b):
    """2 E|A - B| - E|A - A'| - E|B - B'| (a V-statistic; 0 iff equal in distribution)."""
    return float(2 * torch.cdist(a, b).mean() - torch.cdist(a, a).mean() - torch.cdist(b, b).mean())


# --- guides -------------------------------------------------------------------------------
def _spline_flow(dim, layers=4):
    parts = []
    for _ in range(layers):
        parts.append(
            T.spline(dim, count_bins=8) if dim == 1 else T.spline_coupling(dim, count_bins=8)
        )
        if dim > 1:
            parts.append(T.Permute(torch.arange(dim - 1, -1, -1)))
    return T.ComposeTransformModule(parts)


def _guides(dim):
    mixture_flow = (
        dict(flow="maf", num_layers=1) if dim == 1 else dict(flow="affine_coupling", num_layers=2)
    )
    return {
        "AutoNormal": (lambda m: AutoNormal(m), Trace_ELBO),
        "AutoIAFNormal": (
            lambda m: AutoIAFNormal(m, hidden_dim=[32], num_transforms=2),
            Trace_ELBO,
        ),
        "AutoNormalizingFlow": (
            lambda m: AutoNormalizingFlow(m, partial(_spline_flow, layers=4)),
            Trace_ELBO,
        ),
        "AutoFlowMixture(K=4)": (
            lambda m: AutoFlowMixture(m, num_components=4, hidden_dims=(32,), **mixture_flow),
            TraceEnum_ELBO,
        ),
    }


def _append(rows: list, report, row: dict) -> None:
    rows.append(row)
    if report is not None:
        report(row)


def run(quick: bool = False, seed: int = 0, report=None) -> list[dict]:
    steps = 150 if quick else 400
    nuts_samples, nuts_warmup = (200, 100) if quick else (300, 200)
    num_draws = 500 if quick else 1000
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for name, (model, args, site) in _targets(gen).items():
        pyro.set_rng_seed(seed)
        t0 = time.perf_counter()
        chains = []
        for chain in range(2):
            pyro.set_rng_seed(seed + chain)
            mcmc = MCMC(
                NUTS(model, init_strategy=init_to_sample),
                num_samples=nuts_samples,
                warmup_steps=nuts_warmup,
                disable_progbar=True,
            )
            mcmc.run(*args)
            chains.append(_flat(mcmc.get_samples(), site))
        reference = _symmetrize(name, torch.cat(chains), gen)
        _append(
            rows,
            report,
            dict(
                target=name,
                guide="NUTS (2 chains, symmetrized)",
                elbo=float("nan"),
                energy=float("nan"),
                mode_err=_mode_error(name, reference),
                time=time.perf_counter() - t0,
            ),
        )
        dim = reference.shape[1]
        for gname, (make, elbo_cls) in _guides(dim).items():
            pyro.clear_param_store()
            pyro.set_rng_seed(seed)
            guide = make(model)
            t0 = time.perf_counter()
            guide(*args)  # set up (the mixture also places its components here)
            optim = pyro.optim.ClippedAdam({"lr": 0.01, "lrd": 0.1 ** (1 / steps)})
            svi = SVI(model, guide, optim, elbo_cls(max_plate_nesting=1))
            for _ in range(steps):
                svi.step(*args)
            elapsed = time.perf_counter() - t0
            with torch.no_grad():
                est = elbo_cls(
                    max_plate_nesting=1, num_particles=num_draws, vectorize_particles=True
                )
                elbo = -est.loss(model, guide, *args)
                with pyro.plate("_draws", num_draws, dim=-2):  # the guides need no model here
                    v = poutine.trace(guide).get_trace(*args).nodes[site]["value"]
            v = v.reshape(num_draws, -1)  # (S, D)
            idx = torch.randperm(reference.shape[0], generator=gen)[:num_draws]
            _append(
                rows,
                report,
                dict(
                    target=name,
                    guide=gname,
                    elbo=elbo,
                    energy=energy_distance(v, reference[idx]),
                    mode_err=_mode_error(name, v),
                    time=elapsed,
                ),
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny run (smoke test)")
    parser.add_argument("--seed", type=int, default=0)
    opts = parser.parse_args()
    torch.set_num_threads(1)
    rows = run(quick=opts.quick, seed=opts.seed)
    print(
        f"{'target':8s} {'guide':30s} {'ELBO':>9s} {'energy':>8s} {'mode err':>9s} {'time s':>7s}"
    )
    for r in rows:
        print(
            f"{r['target']:8s} {r['guide']:30s} {r['elbo']:9.3f} {r['energy']:8.4f} "
            f"{r['mode_err']:9.3f} {r['time']:7.1f}"
        )


if __name__ == "__main__":
    main()
