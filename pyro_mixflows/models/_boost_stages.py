"""One boosting stage: where a new flow starts, and its objectives trained through ``infer.fit``.

Every objective is a function ``model(*args, subsample=None)`` that registers what it trains
(``pyro.module`` / ``pyro.param``) and returns the per-row objective (B,) to maximize;
:func:`fit_stage` hands it to :func:`pyro_mixflows.infer.fit` with the loss "minus its mean", so
minibatches, held-out early stopping, the NaN guard and seeds are those of the one training loop.
"""

from __future__ import annotations

from collections.abc import Callable

import pyro
import torch
import torch.nn.functional as F
from torch import nn

from ..flows.components import Components
from ..infer.fit import FitResult, fit
from ..starts import kmeans
from ._boost_weights import rho_objective, search_rho

_CLIP_NORM = 100.0  # gradient norm clip of every parameter in training
_LR_FLOOR = 0.01  # the cosine schedule ends at this fraction of lr
SCHEDULES = ("cosine", "constant")


def no_guide(*args, **kwargs) -> None:
    """The boosting objectives have no latent variables: an empty guide."""


def negative_mean(model, guide, *args, **kwargs) -> torch.Tensor:
    """The loss handed to :func:`infer.fit`: minus the mean of the rows' objective."""
    return -model(*args, **kwargs).mean()


def weighted_model(comp: Components, resample: bool, batch: int) -> Callable:
    """Rows' ``w_i log g(x_i)``; with ``draw=True``, ``log g`` at ``batch`` rows drawn ∝ w."""

    def model(x, w, draw, subsample=None):  # (N, D), (N,), bool
        pyro.module("component", comp)
        if draw:  # weighting="resample": the weights are in the draw, the loss is unweighted
            return comp(x[torch.multinomial(w, batch, replacement=True)])[:, 0]
        if subsample is not None:
            x, w = x[subsample], w[subsample]
        return w * comp(x)[:, 0]  # (B,)

    return model


def mixture_model(comp: Components, logit0: float, learned: bool) -> Callable:
    """Rows' ``log((1 - rho) G(x_i) + rho g(x_i))``, rho = sigmoid(a); a is a ``pyro.param``
    when ``learned``, else held at ``logit0``."""

    def model(x, log_prev, subsample=None):  # (N, D), (N,)
        pyro.module("component", comp)
        a = torch.tensor(logit0, dtype=x.dtype, device=x.device)
        if learned:
            a = pyro.param("rho_logit", a)
        if subsample is not None:
            x, log_prev = x[subsample], log_prev[subsample]
        log_g = comp(x)[:, 0]  # (B,)
        return torch.logaddexp(F.logsigmoid(-a) + log_prev, F.logsigmoid(a) + log_g)

    return model


def joint_model(stages: nn.ModuleList, logits0: torch.Tensor, learned: bool) -> Callable:
    """Rows' ``log sum_c w_c g_c(x_i)`` with every stage trained, w = softmax(logits)."""

    def model(x, subsample=None):  # (N, D)
        pyro.module("stages", stages)
        logits = pyro.param("logits", logits0.clone()) if learned else logits0
        if subsample is not None:
            x = x[subsample]
        log_probs = torch.cat([s(x) for s in stages], -1)  # (B, C)
        return (logits.log_softmax(0) + log_probs).logsumexp(-1)

    return model


def variational_model(comp, log_density, log_prev, lam: float, dim: int, dtype) -> Callable:
    """Draws' ``log p~(x) - log g(x)`` (first stage) or ``log p~ - log G_{c-1} - lam log g``."""

    def model(num_samples: int):
        pyro.module("component", comp)
        u = torch.randn(num_samples, 1, dim, dtype=dtype)
        x, log_det = comp.transform(u)  # (S, 1, D), (S, 1)
        x, log_g = x[:, 0], comp.base_log_prob(u[:, 0]) - log_det[:, 0]  # (S, D), (S,)
        if log_prev is None:
            return log_density(x) - log_g
        return log_density(x) - log_prev(x) - lam * log_g

    return model


def fit_stage(
    model: Callable,
    args: tuple,
    val_args: tuple | None,
    *,
    num_steps: int,
    lr: float,
    batch_size: int,
    eval_every: int,
    patience: int | None,
    seed: int | None,
    batch: bool = True,
    carry: dict | None = None,
    schedule: str = "constant",
) -> tuple[FitResult, dict[str, torch.Tensor]]:
    """Train what ``model`` registers (``pyro.module`` / ``pyro.param``) with :func:`infer.fit`.

    ``model(*args, subsample=None)`` returns the per-row objective (N,) that is maximized (its
    mean): Adam at ``lr`` with each parameter's gradient norm clipped at 100, minibatches of
    ``batch_size`` rows of ``args[0]`` (``batch=True``; else full batch), the held-out objective
    on ``val_args`` evaluated every ``eval_every`` steps and before the first, the best state
    kept, ``patience``. It runs in a private param store, so the user's store is untouched. A
    non-finite loss stops training at the last good state (``stop_reason "non-finite loss"``).

    ``schedule``: ``"constant"`` keeps the learning rate at ``lr``; ``"cosine"`` anneals it over
    the ``num_steps`` updates from ``lr`` to ``0.01 lr``,
    ``lr_t = lr_min + (lr - lr_min) (1 + cos(pi t / num_steps)) / 2``, so the stage ends at a
    settled state instead of wherever the last noisy updates left it (Adam starts fresh then:
    ``carry`` is emptied, not used).

    ``carry``: Adam states keyed by parameter name (``"component$$$..."``) to start from, e.g.
    those of the previous round when the new flow is its copy, so the warm start continues the
    optimizer too (a fresh Adam's first updates move every parameter by about ``lr``); replaced
    in place by this stage's final states.

    Returns:
        The :class:`~pyro_mixflows.infer.FitResult` and ``{name: value}`` of the ``pyro.param``s
        (the modules' parameters are trained in place).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"expected schedule in {SCHEDULES}, got {schedule!r}")
    n = args[0].shape[0] if batch else None
    if schedule == "cosine":
        optim = pyro.optim.CosineAnnealingLR(
            {"optimizer": torch.optim.Adam, "optim_args": {"lr": lr}, "T_max": num_steps,
             "eta_min": _LR_FLOOR * lr},
            {"clip_norm": _CLIP_NORM},
        )  # fmt: skip
        if carry is not None:
            carry.clear()
    else:
        optim = pyro.optim.Adam({"lr": lr}, {"clip_norm": _CLIP_NORM})
    if carry:
        optim.set_state(dict(carry))
    with pyro.get_param_store().scope():
        try:
            result = fit(
                model, no_guide, *args, loss=negative_mean, optim=optim,
                num_steps=num_steps, batch_size=None if n is None else min(batch_size, n),
                val_args=val_args, patience=patience if val_args else None,
                eval_every=eval_every, eval_initial=val_args is not None, seed=seed,
            )  # fmt: skip
        except FloatingPointError as err:  # keep the last good state
            result = err.result
            result.stop_reason = "non-finite loss"
        store = pyro.get_param_store()
        learned = {k: store[k].detach().clone() for k in store.keys() if "$$$" not in k}
        if carry is not None and schedule == "constant":
            carry.clear()
            carry.update({k: v for k, v in optim.get_state().items() if "$$$" in k})
    return result, learned


def gaussian_candidates(
    x: torch.Tensor, num_candidates: int, generator: torch.Generator | None = None
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Gaussians (loc (D,), scale (D,)) at the k-means clusters of x (N, D), k = 1, 2, 4, ...,
    ``num_candidates``: each cluster's mean and per-axis standard deviation (plus 1e-3 of the
    data's, so a scale is never zero); clusters with fewer than two points are skipped."""
    top = min(num_candidates, x.shape[0])
    ks = sorted({min(2**j, top) for j in range(top.bit_length() + 1)})
    floor = 1e-3 * x.std(0).clamp(min=1e-12)  # (D,)
    out = []
    with torch.no_grad():
        for k in ks:
            if k == 1:
                labels = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
            else:
                labels = kmeans(x, k, n_init=3, generator=generator)[1]
            for j in range(k):
                members = x[labels == j]
                if members.shape[0] >= 2:
                    out.append((members.mean(0), members.std(0) + floor))
    return out


def best_gaussian_to_add(
    x: torch.Tensor,
    log_prev: torch.Tensor,
    candidates: list[tuple[torch.Tensor, torch.Tensor]],
    default_rho: float,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The candidate N(loc, diag(scale^2)) that most raises the mixture's log-likelihood of x.

    .. math:: \\max_{\\rho}\\; \\frac1N \\sum_i \\log\\big((1 - \\rho) G(x_i) + \\rho\\,
              \\mathcal N(x_i; \\mu, \\sigma^2)\\big)

    with rho found exactly by :func:`search_rho`. Without candidates, the data's moments and
    ``default_rho``.

    Returns:
        ``(loc (D,), scale (D,), rho)`` of the best candidate.
    """
    best = None
    with torch.no_grad():
        for loc, scale in candidates:
            log_n = torch.distributions.Normal(loc, scale).log_prob(x).sum(-1)  # (N,)
            rho = search_rho(log_prev, log_n)
            value = float(rho_objective(rho, log_prev, log_n))
            if best is None or value > best[0]:
                best = (value, loc, scale, rho)
    if best is None:  # no cluster with two points: the data's moments
        return x.mean(0), x.std(0).clamp(min=1e-6), default_rho
    return best[1], best[2], best[3]
