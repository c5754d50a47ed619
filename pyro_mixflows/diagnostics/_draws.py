"""The draws behind ``diagnostics.to_inference_data``: an MCMC run's, an SVI guide's or
``Predictive``'s draws of the global sites, and the exact marginal log-likelihood per point."""

from __future__ import annotations

import pyro.poutine as poutine
import torch
from pyro.infer import config_enumerate

from ..distributions import FlowMixture


def mixture_of(source):
    """The FlowMixture a source holds, else None: itself, or its ``distribution_`` (the
    estimators' density in data units), ``mixture_`` or ``mixture`` (attribute or method)."""
    if isinstance(source, FlowMixture):
        return source
    for name in ("distribution_", "mixture_", "mixture"):
        held = getattr(source, name, None)
        if callable(held) and not isinstance(held, FlowMixture):
            held = held()
        if isinstance(held, FlowMixture):
            return held
    return None


def plate_frame(site, plate_name):
    for frame in site["cond_indep_stack"]:
        if frame.name == plate_name:
            return frame
    return None


def max_plate_nesting(trace) -> int:
    dims = [
        -f.dim
        for s in trace.nodes.values()
        if s["type"] == "sample"
        for f in s["cond_indep_stack"]
        if f.dim is not None
    ]
    return max(dims, default=0)


def is_enumerated(site) -> bool:
    return not site["is_observed"] and site["infer"].get("enumerate") == "parallel"


def model_sites(model, args, kwargs, plate_name):
    """One run of the model: {name: (value shape, observed, in the data plate, value)} of its
    sample sites, and its plate nesting."""
    with torch.no_grad(), poutine.block():
        trace = poutine.trace(model).get_trace(*args, **kwargs)
    sites = {
        name: (
            tuple(site["value"].shape),
            site["is_observed"],
            plate_frame(site, plate_name) is not None,
            site["value"].detach(),
        )
        for name, site in trace.nodes.items()
        if site["type"] == "sample"
    }
    return sites, max_plate_nesting(trace)


def pointwise_marginal(model, draw, args, kwargs, plate_name, max_plate_nesting):
    """Per-point marginal log-likelihood (N,) and, for one enumerated site, p(site | x) (N, K).

    The draw's global sites are conditioned on; every sample site inside ``plate_name`` must be
    observed or enumerable: the enumerated sites are summed out exactly (parallel enumeration),
    never sampled.
    """
    conditioned = poutine.condition(model, data=draw)
    enumerated = poutine.enum(
        config_enumerate(conditioned, default="parallel"),
        first_available_dim=-max_plate_nesting - 1,
    )
    trace = poutine.trace(enumerated).get_trace(*args, **kwargs)
    trace.compute_log_prob()
    terms, enum_sites, data_dim = [], [], None
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or name in draw:
            continue
        frame = plate_frame(site, plate_name)
        if frame is None:
            continue
        data_dim = frame.dim
        if is_enumerated(site):
            if len(site["cond_indep_stack"]) > 1:
                raise NotImplementedError(
                    f"expected enumerated site {name!r} in the {plate_name!r} plate only, "
                    "got it inside nested plates"
                )
            enum_sites.append(site)
        elif not site["is_observed"]:
            raise ValueError(
                f"expected every latent site in plate {plate_name!r} to be enumerable, got "
                f"{name!r} ({type(site['fn']).__name__}); its log-likelihood would use a "
                "sampled value"
            )
        terms.append(site["log_prob"])
    if not terms:
        return None, None
    total = terms[0]
    for t in terms[1:]:
        total = total + t
    num_enum = max(total.dim() - max_plate_nesting, 0)
    marginal = total.logsumexp(tuple(range(num_enum))) if num_enum else total
    while marginal.dim() < max_plate_nesting:
        marginal = marginal.unsqueeze(0)
    marginal = marginal.movedim(data_dim, 0)
    marginal = marginal.reshape(marginal.shape[0], -1).sum(-1)  # (N,)
    resp = None
    if len(enum_sites) == 1:
        site = enum_sites[0]
        # parallel enumeration puts the K values on the value's leftmost batch dim
        edim = -(site["value"].dim() - site["fn"].event_dim)
        lp = total - total.logsumexp(edim, keepdim=True)
        n = lp.dim()
        lp = lp.movedim((n + data_dim, n + edim), (0, 1))
        resp = lp.reshape(lp.shape[0], lp.shape[1], -1)[..., 0].exp()  # (N, K)
    return marginal, resp


def guide_draws(guide, num_samples, args, kwargs, plate_name):
    draws = []
    for _ in range(num_samples):
        trace = poutine.trace(guide).get_trace(*args, **kwargs)
        draws.append(
            {
                name: site["value"].detach()
                for name, site in trace.nodes.items()
                if site["type"] == "sample"
                and not site["is_observed"]
                and not site["infer"].get("is_auxiliary")
                and plate_frame(site, plate_name) is None
            }
        )
    return draws


def sample_dict_draws(samples: dict, sites: dict):
    """Draws of the global latent sites and the observed sites' predictive draws (S, *shape).

    ``Predictive`` returns a global site of value shape ``shape`` as (S, 1, ..., 1, *shape), one
    1 per plate dim the site is not in; the model's own value shape says which dims those are.
    """
    unknown = sorted(k for k in samples if k != "_RETURN" and k not in sites)
    if unknown:
        raise ValueError(
            f"expected the model's sample sites as keys, got {unknown}; pass the model the "
            "samples were drawn from as model="
        )
    latent, predictive, sizes = {}, {}, set()
    for name, value in samples.items():
        if name == "_RETURN":
            continue
        shape, observed, local, _ = sites[name]
        if local and not observed:
            continue  # drawn given the globals, not from p(z | x): summed out exactly instead
        v = torch.as_tensor(value)
        k = v.dim() - len(shape)
        if k < 1 or tuple(v.shape[k:]) != shape or any(d != 1 for d in v.shape[1:k]):
            raise ValueError(
                f"expected samples of {name!r} shaped (S, [1, ...,] {', '.join(map(str, shape))})"
                f" (the site's value shape after the draws), got {tuple(v.shape)}"
            )
        sizes.add(v.shape[0])
        (predictive if observed else latent)[name] = v.reshape(v.shape[0], *shape)
    if len(sizes) != 1:
        raise ValueError(
            f"expected samples with one number of draws S for every site, got {sorted(sizes)}"
        )
    (num,) = sizes
    return [{k: v[s] for k, v in latent.items()} for s in range(num)], predictive


def check_spread(draws: list, what: str, hint: str) -> None:
    """Refuse S > 1 draws that are all identical: a point estimate, not a posterior."""
    first = draws[0]
    if len(draws) < 2 or any(not torch.equal(d[k], first[k]) for d in draws[1:] for k in first):
        return
    held = (
        f"its {len(draws)} draws of {sorted(first)} are identical"
        if first
        else "it draws no global latent site (only pyro.param values)"
    )
    raise ValueError(
        f"expected a guide with a posterior spread (draws that differ), got {what}: {held}; a "
        f"point estimate has no posterior draws: use AutoNormal / AutoFlowMixture, or {hint}"
    )


def chain_shape(num: int, num_chains) -> tuple[int, int]:
    """(chains, draws per chain) for ``num`` independent draws."""
    if num_chains is None:
        num_chains = 2 if num % 2 == 0 and num >= 8 else 1
    if isinstance(num_chains, bool) or not isinstance(num_chains, int) or num_chains < 1:
        raise ValueError(f"expected num_chains a positive int or None, got {num_chains!r}")
    if num % num_chains:
        raise ValueError(
            f"expected a number of draws that num_chains={num_chains} divides, got {num}: the "
            "independent draws are split evenly into chains"
        )
    return num_chains, num // num_chains
