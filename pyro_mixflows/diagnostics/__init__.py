"""Clustering metrics (NumPy only; Hungarian matching through SciPy) and the ArviZ conversion."""

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


def to_inference_data(
    source,
    *,
    model=None,
    args: tuple = (),
    kwargs: dict | None = None,
    num_samples: int = 500,
    num_chains: int | None = None,
    data=None,
    mixture_fn=None,
    log_likelihood: bool = True,
    include_local: bool = False,
    plate_name: str = "data",
    coords: dict | None = None,
    dims: dict | None = None,
):
    r"""ArviZ ``InferenceData`` from an MCMC run, an SVI guide, ``Predictive`` draws or a flow mixture.

    The ``log_likelihood`` group holds the *marginal* per-point log-likelihood

    .. math:: \log p(x_n \mid \theta^{(s)}) = \log \sum_k p(z_n = k \mid \theta^{(s)})\, p(x_n \mid z_n = k, \theta^{(s)}),

    summed exactly over enumerated assignment sites (``az.from_pyro`` instead stores
    :math:`\log p(x_n \mid z_n^{(s)}, \theta^{(s)})` with a *sampled* assignment, which is wrong
    for LOO and WAIC). The ``posterior`` group holds the global sites only, so ``az.summary``
    lists one row per global coordinate; with ``include_local=True`` it also carries the
    per-point ``"responsibilities"`` p(z_n = k | x_n, θ) (chain, draw, point, component) and
    ``"assignment"`` (their argmax) of one enumerated site, and an MCMC run's sites in the data
    plate.

    Sources:

    - ``pyro.infer.MCMC``: its draws by chain, ``"diverging"`` in ``sample_stats`` when the
      kernel reports divergences; the model defaults to the run's, the data go in ``args``.
    - an SVI guide (any callable, e.g. an ``AutoGuide``), with ``model`` and the data in
      ``args``: S = ``num_samples`` independent draws of its global sites (sites in the
      ``plate_name`` plate and auxiliary sites are left out), split into ``num_chains`` chains.
      A guide whose draws are all identical (``AutoDelta``, a guide of ``pyro.param`` values
      only) is a point estimate: refused for S > 1, one draw for S = 1.
    - samples as ``Predictive(model, guide=guide, num_samples=S)(*args)`` or
      ``mcmc.get_samples()`` return them, with ``model``: a site of value shape ``shape`` may come
      as (S, *shape) or with Predictive's plate dims, (S, 1, ..., 1, *shape); the model's value
      shape says which dims to drop. Global latent sites go to ``posterior``, observed sites to
      ``posterior_predictive``; latent sites in the data plate are left out (``Predictive`` draws
      them given the globals, not from p(z | x)). A ``Predictive`` itself is read the same way:
      its guide (and ``num_samples``) or its ``posterior_samples``.
    - a ``FlowMixture``, or any object with a ``distribution_``, ``mixture_`` or ``mixture``
      attribute (or method) holding one: a single plug-in draw with ``"weights"``. For the
      project's estimators that is ``distribution_``, the density in data units, so the
      log-densities equal ``score_samples(data)``.
    - with ``mixture_fn(draw) -> FlowMixture`` and ``data`` (N, D), every draw of an MCMC run or
      guide is turned into a mixture: ``"weights"`` (K,), responsibilities and the exact
      ``FlowMixture.log_prob(data)`` as log-likelihood.

    **Chains of independent draws.** Guide and sample draws are independent, so splitting S of
    them into chains changes no estimate; two chains (the default when S is even and at least 8)
    let ArviZ report R-hat (about 1) and ESS (about S) without its one-chain warning.

    Args:
        source: the fit to convert (see above).
        model: the Pyro model (required for a guide or samples; defaults to the run's or the
            ``Predictive``'s model).
        args: the model's positional arguments (the data).
        kwargs: the model's keyword arguments.
        num_samples: guide draws S in all.
        num_chains: chains the S independent draws are split into (S must be a multiple);
            ``None``: 2 when S is even and >= 8, else 1. Not for an MCMC run (its own chains).
        data: observations (N, D) for the mixture path.
        mixture_fn: builds a ``FlowMixture`` from a dict of one draw's sites.
        log_likelihood: compute the log_likelihood group.
        include_local: also keep the per-point variables in ``posterior`` (see above).
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
        ``posterior_predictive``, ``sample_stats`` where available).

    Raises:
        ValueError: a guide or samples without ``model``, a point-mass guide with S > 1, samples
            whose shapes do not end in the model's value shapes, or a latent non-enumerable site
            in the data plate.
        TypeError: an unknown source, or an MCMC run of a model that needs its data in ``args``.

    Example::

        >>> idata = to_inference_data(guide, model=model, args=(x,), num_samples=200)
        >>> idata.posterior["weights"].shape  # doctest: +SKIP
        (2, 100, 2)
        >>> az.loo(idata)  # doctest: +SKIP
    """
    import arviz as az
    import torch
    from pyro.infer import MCMC, Predictive

    from ._draws import (
        chain_shape,
        check_spread,
        guide_draws,
        mixture_of,
        model_sites,
        pointwise_marginal,
        sample_dict_draws,
    )

    kwargs = dict(kwargs or {})
    if isinstance(source, Predictive):
        model = source.model if model is None else model
        if source.guide is not None:
            source, num_samples = source.guide, source.num_samples
        else:
            source = source.posterior_samples
    mixture = None if isinstance(source, (MCMC, dict)) else mixture_of(source)
    if isinstance(source, MCMC):
        kind = "mcmc"
    elif mixture is not None:
        kind = "mixture"
    elif isinstance(source, dict):
        kind = "samples"
    elif callable(source):
        kind = "guide"
    else:
        raise TypeError(
            "expected an MCMC run, a guide, Predictive samples or a FlowMixture holder, got "
            f"{type(source).__name__}"
        )
    if kind in ("guide", "samples") and model is None:
        raise ValueError(
            f"expected model= with {'a guide' if kind == 'guide' else 'samples'} "
            "as source, got model=None"
        )
    if kind == "guide" and (
        isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1
    ):
        raise ValueError(f"expected num_samples >= 1, got {num_samples!r}")
    if kind in ("mcmc", "mixture") and num_chains is not None:
        raise ValueError(
            f"expected num_chains=None with {'an MCMC run' if kind == 'mcmc' else 'a mixture'} "
            f"(its draws keep their own chains), got {num_chains!r}"
        )
    if kind == "mcmc":
        model = model if model is not None else getattr(source.kernel, "model", None)

    sites, nesting = {}, 0
    if model is not None:
        try:
            sites, nesting = model_sites(model, args, kwargs, plate_name)
        except TypeError as error:
            if args or kwargs or kind != "mcmc":
                raise
            raise TypeError(
                f"expected the run's data as args= (and kwargs=), got none: {error}"
            ) from error

    posterior, predictive, sample_stats = {}, {}, {}
    if kind == "mcmc":
        grouped = source.get_samples(group_by_chain=True)
        shape = (source.num_chains, source.num_samples)
        draws = [
            {k: v[c, s] for k, v in grouped.items()}
            for c in range(shape[0])
            for s in range(shape[1])
        ]
        posterior = {
            k: v for k, v in grouped.items() if include_local or not sites.get(k, (0, 0, 0))[2]
        }
        divergences = source.diagnostics().get("divergences")
        if isinstance(divergences, dict):
            diverging = np.zeros(shape, dtype=bool)
            for c, key in enumerate(sorted(divergences)):
                diverging[c, list(divergences[key])] = True
            sample_stats["diverging"] = diverging
    elif kind == "mixture":
        shape, draws = (1, 1), [{}]
        mixture_fn = mixture_fn or (lambda draw: mixture)
    else:
        if kind == "guide":
            with torch.no_grad():
                draws = guide_draws(source, num_samples, args, kwargs, plate_name)
            what = getattr(source, "__name__", None) or type(source).__name__  # function or class
            hint = "pass num_samples=1 to get the point estimate as one draw"
        else:
            draws, predictive = sample_dict_draws(source, sites)
            what, hint = "samples", "pass one draw to get the point estimate"
        check_spread(draws, what, hint)
        shape = chain_shape(len(draws), num_chains)
        posterior = {k: torch.stack([d[k] for d in draws]) for k in draws[0]}
        posterior = {k: v.reshape(*shape, *v.shape[1:]) for k, v in posterior.items()}
        predictive = {k: v.reshape(*shape, *v.shape[1:]) for k, v in predictive.items()}
    posterior = {k: torch.as_tensor(v).detach().cpu().numpy() for k, v in posterior.items()}
    predictive = {k: v.detach().cpu().numpy() for k, v in predictive.items()}

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
        observed = {
            name: value.cpu().numpy()
            for name, (_, is_observed, local, value) in sites.items()
            if is_observed and local and name not in draws[0]
        }
        if observed:
            lls = []
            with torch.no_grad():
                for draw in draws:
                    ll, r = pointwise_marginal(model, draw, args, kwargs, plate_name, nesting)
                    lls.append(ll)
                    if r is not None:
                        resp.append(r)
            name = next(iter(observed)) if len(observed) == 1 else "joint"
            loglik[name] = torch.stack(lls).reshape(*shape, -1).cpu().numpy()
    if resp and include_local:
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
        posterior_predictive=predictive or None,
        log_likelihood=loglik or None,
        observed_data=observed or None,
        sample_stats=sample_stats or None,
        coords=coords,
        dims=all_dims,
    )
