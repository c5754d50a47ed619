"""Clustering metrics (NumPy only; Hungarian matching through SciPy, which ArviZ requires)."""

from __future__ import annotations

import numpy as np


def _labels(a, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 1:
        raise ValueError(f"expected {name} of shape (N,), got {a.shape}")
    return a


def contingency_table(labels_true, labels_pred) -> np.ndarray:
    """Counts n[i, j] of points with true class i and predicted cluster j."""
    t, p = _labels(labels_true, "labels_true"), _labels(labels_pred, "labels_pred")
    if t.shape != p.shape:
        raise ValueError(f"expected label arrays of equal length, got {t.shape} and {p.shape}")
    _, ti = np.unique(t, return_inverse=True)
    _, pi = np.unique(p, return_inverse=True)
    table = np.zeros((ti.max(initial=-1) + 1, pi.max(initial=-1) + 1), dtype=np.int64)
    np.add.at(table, (ti, pi), 1)
    return table


def adjusted_rand_index(labels_true, labels_pred) -> float:
    """Adjusted Rand index (Hubert & Arabie, 1985): 1 for identical partitions, ~0 for chance."""
    table = contingency_table(labels_true, labels_pred)
    n = table.sum()

    def pairs(v):
        v = np.asarray(v, dtype=np.float64)
        return (v * (v - 1) / 2).sum()

    index = pairs(table)
    a, b, total = pairs(table.sum(1)), pairs(table.sum(0)), n * (n - 1) / 2
    expected = a * b / total if total else 0.0
    maximum = (a + b) / 2
    if maximum == expected:
        return 1.0
    return float((index - expected) / (maximum - expected))


def balanced_accuracy(labels_true, labels_pred) -> float:
    """Mean per-class recall after matching clusters to classes (Hungarian algorithm)."""
    from scipy.optimize import linear_sum_assignment

    table = contingency_table(labels_true, labels_pred).astype(np.float64)
    recall = table / table.sum(1, keepdims=True)  # (classes, clusters)
    rows, cols = linear_sum_assignment(-recall)
    return float(recall[rows, cols].sum() / table.shape[0])


# --- ArviZ conversion ------------------------------------------------------------------------


def _mixture_of(source):
    """The FlowMixture a source holds, else None: itself, or its ``distribution_`` (the
    estimators' density in data units), ``mixture_`` or ``mixture`` (attribute or method)."""
    from .distributions import FlowMixture

    if isinstance(source, FlowMixture):
        return source
    for name in ("distribution_", "mixture_", "mixture"):
        held = getattr(source, name, None)
        if callable(held) and not isinstance(held, FlowMixture):
            held = held()
        if isinstance(held, FlowMixture):
            return held
    return None


def _plate_frame(site, plate_name):
    for frame in site["cond_indep_stack"]:
        if frame.name == plate_name:
            return frame
    return None


def _max_plate_nesting(trace) -> int:
    dims = [
        -f.dim
        for s in trace.nodes.values()
        if s["type"] == "sample"
        for f in s["cond_indep_stack"]
        if f.dim is not None
    ]
    return max(dims, default=0)


def _pointwise_marginal(model, draw, args, kwargs, plate_name, max_plate_nesting):
    """Per-point marginal log-likelihood (N,) and, for one enumerated site, p(site | x) (N, K).

    The draw's global sites are conditioned on; every sample site inside ``plate_name`` must be
    observed or enumerable: the enumerated sites are summed out exactly (parallel enumeration),
    never sampled.
    """
    import pyro.poutine as poutine
    from pyro.infer import config_enumerate

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
        frame = _plate_frame(site, plate_name)
        if frame is None:
            continue
        data_dim = frame.dim
        if site["infer"].get("_enumerate_dim") is not None:
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
        edim = enum_sites[0]["infer"]["_enumerate_dim"]
        lp = total - total.logsumexp(edim, keepdim=True)
        n = lp.dim()
        lp = lp.movedim((n + data_dim, n + edim), (0, 1))
        resp = lp.reshape(lp.shape[0], lp.shape[1], -1)[..., 0].exp()  # (N, K)
    return marginal, resp


def _guide_draws(guide, num_samples, args, kwargs, plate_name):
    import pyro.poutine as poutine

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
                and _plate_frame(site, plate_name) is None
            }
        )
    return draws


def to_inference_data(
    source,
    *,
    model=None,
    args: tuple = (),
    kwargs: dict | None = None,
    num_samples: int = 500,
    data=None,
    mixture_fn=None,
    log_likelihood: bool = True,
    plate_name: str = "data",
    coords: dict | None = None,
    dims: dict | None = None,
):
    r"""ArviZ ``InferenceData`` from an MCMC run, an SVI guide or a flow mixture.

    The ``log_likelihood`` group holds the *marginal* per-point log-likelihood

    .. math:: \log p(x_n \mid \theta^{(s)}) = \log \sum_k p(z_n = k \mid \theta^{(s)})\, p(x_n \mid z_n = k, \theta^{(s)}),

    summed exactly over enumerated assignment sites (``az.from_pyro`` instead stores
    :math:`\log p(x_n \mid z_n^{(s)}, \theta^{(s)})` with a *sampled* assignment, which is wrong
    for LOO and WAIC). With one enumerated site the posterior also carries
    ``"responsibilities"`` p(z_n = k | x_n, θ) (chain, draw, point, component) and
    ``"assignment"`` (their argmax).

    Sources:

    - ``pyro.infer.MCMC``: its draws by chain, ``"diverging"`` in ``sample_stats`` when the
      kernel reports divergences; model and data default to the run's.
    - an SVI guide (any callable, e.g. an ``AutoGuide``), with ``model`` and the data in
      ``args``: ``num_samples`` draws of its global sites (one chain; sites in the
      ``plate_name`` plate and auxiliary sites are left out).
    - a ``FlowMixture``, or any object with a ``distribution_``, ``mixture_`` or ``mixture``
      attribute (or method) holding one: a single plug-in draw with ``"weights"``. For the
      project's estimators that is ``distribution_``, the density in data units, so the
      log-densities equal ``score_samples(data)``.
    - with ``mixture_fn(draw) -> FlowMixture`` and ``data`` (N, D), every draw of an MCMC run or
      guide is turned into a mixture: ``"weights"``, responsibilities and the exact
      ``FlowMixture.log_prob(data)`` as log-likelihood.

    Args:
        source: the fit to convert (see above).
        model: the Pyro model (required for a guide; defaults to ``source.kernel.model`` for MCMC).
        args: the model's positional arguments (the data).
        kwargs: the model's keyword arguments.
        num_samples: guide draws S.
        data: observations (N, D) for the mixture path.
        mixture_fn: builds a ``FlowMixture`` from a dict of one draw's sites.
        log_likelihood: compute the log_likelihood group.
        plate_name: the data plate (the project's convention: "data").
        coords: extra ArviZ coordinates.
        dims: extra ArviZ dims.

    **One draw is not a posterior.** LOO and WAIC (``az.loo``, ``az.waic``, ``az.compare``)
    need many draws of the pointwise log-likelihood. With a single draw (a plug-in mixture or
    estimator, ``num_samples=1``) the pointwise log-density goes to
    ``posterior["log_density"]`` (chain, draw, point) instead of a ``log_likelihood`` group, so
    ArviZ's LOO stops at once with "log likelihood not found" rather than inside its Pareto
    smoothing. To compare point-estimate fits, compare held-out log-densities (the estimators'
    ``score``); for LOO, convert an SVI guide (many draws) or an MCMC run.

    Returns:
        ``arviz.InferenceData`` with ``posterior`` (+ ``log_likelihood``, ``observed_data``,
        ``sample_stats`` where available).

    Raises:
        ValueError: a guide without ``model``, or a latent non-enumerable site in the data plate.

    Example::

        >>> idata = to_inference_data(guide, model=model, args=(x,), num_samples=200)
        >>> az.loo(idata)  # doctest: +SKIP
    """
    import arviz as az
    import pyro.poutine as poutine
    import torch
    from pyro.infer import MCMC

    kwargs = dict(kwargs or {})
    posterior, sample_stats, shape = {}, {}, None
    mixture = _mixture_of(source)
    if isinstance(source, MCMC):
        grouped = source.get_samples(group_by_chain=True)
        model = model if model is not None else getattr(source.kernel, "model", None)
        if not args and source._args is not None:
            args, kwargs = tuple(source._args), dict(source._kwargs or {}, **kwargs)
        shape = (source.num_chains, source.num_samples)
        draws = [
            {k: v[c, s] for k, v in grouped.items()}
            for c in range(shape[0])
            for s in range(shape[1])
        ]
        posterior = {k: v.detach().cpu().numpy() for k, v in grouped.items()}
        divergences = source.diagnostics().get("divergences")
        if isinstance(divergences, dict):
            diverging = np.zeros(shape, dtype=bool)
            for c, key in enumerate(sorted(divergences)):
                diverging[c, list(divergences[key])] = True
            sample_stats["diverging"] = diverging
    elif mixture is not None:
        shape, draws = (1, 1), [{}]
        mixture_fn = mixture_fn or (lambda draw: mixture)
    elif callable(source):
        if model is None:
            raise ValueError("expected model= with a guide as source, got model=None")
        if not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"expected num_samples >= 1, got {num_samples!r}")
        with torch.no_grad():
            draws = _guide_draws(source, num_samples, args, kwargs, plate_name)
        shape = (1, num_samples)
        for name in draws[0]:
            posterior[name] = torch.stack([d[name] for d in draws]).cpu().numpy()[None]
    else:
        raise TypeError(
            f"expected an MCMC run, a guide, or a FlowMixture holder, got {type(source).__name__}"
        )

    loglik, resp, weights, observed = {}, [], [], {}
    if mixture_fn is not None:
        x = None if data is None else torch.as_tensor(np.asarray(data))
        lls = []
        with torch.no_grad():
            for draw in draws:
                mix = mixture_fn(draw)
                weights.append(mix.probs.detach())
                if x is not None:
                    x = x.to(mix.logits.dtype)
                    lls.append(mix.log_prob(x))
                    resp.append(mix.responsibilities(x))
        posterior["weights"] = torch.stack(weights).reshape(*shape, -1).cpu().numpy()
        if x is not None:
            observed["x"] = x.cpu().numpy()
            if log_likelihood:
                loglik["x"] = torch.stack(lls).reshape(*shape, -1).cpu().numpy()
    elif model is not None and log_likelihood:
        with torch.no_grad(), poutine.block():
            first = poutine.trace(poutine.condition(model, data=draws[0])).get_trace(
                *args, **kwargs
            )
            observed = {
                name: site["value"].detach().cpu().numpy()
                for name, site in first.nodes.items()
                if site["type"] == "sample"
                and site["is_observed"]
                and name not in draws[0]
                and _plate_frame(site, plate_name) is not None
            }
            if observed:
                nesting = _max_plate_nesting(first)
                lls = []
                for draw in draws:
                    ll, r = _pointwise_marginal(model, draw, args, kwargs, plate_name, nesting)
                    lls.append(ll)
                    if r is not None:
                        resp.append(r)
                name = next(iter(observed)) if len(observed) == 1 else "joint"
                loglik[name] = torch.stack(lls).reshape(*shape, -1).cpu().numpy()
    if resp:
        r = torch.stack(resp).reshape(*shape, *resp[0].shape)
        posterior["responsibilities"] = r.cpu().numpy()
        posterior["assignment"] = r.argmax(-1).cpu().numpy()
    if loglik and shape[0] * shape[1] < 2:  # one draw: LOO/WAIC undefined (see docstring)
        (posterior["log_density"],) = loglik.values()  # one observed site (or "joint")
        loglik = {}
    all_dims = {
        "weights": ["component"],
        "responsibilities": ["point", "component"],
        "assignment": ["point"],
        "log_density": ["point"],
        **{k: ["point"] for k in loglik},
    }
    all_dims.update(dims or {})
    return az.from_dict(
        posterior=posterior,
        log_likelihood=loglik or None,
        observed_data=observed or None,
        sample_stats=sample_stats or None,
        coords=coords,
        dims=all_dims,
    )
