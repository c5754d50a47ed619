"""Importance sampling with the guide of :class:`~pyro_mixflows.models.MixtureVAE`: draws from
the marginal guide, their log-weights, and the importance-sampled log-likelihood.

The public functions here are methods of ``MixtureVAE`` (assigned in its class body, which keeps
the class module short); ``self`` is the model.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import pyro.distributions as dist
import torch

from ._vae_guide import _ComponentDraw, stick_breaking_log_weights

if TYPE_CHECKING:
    from .mixture_vae import MixtureVAE


@torch.no_grad()
def log_weights(
    self: MixtureVAE, x: torch.Tensor, num_samples: int, integrate_sticks: bool = True
) -> torch.Tensor:
    """Importance log-weights of draws from the guide (their mean is an ELBO).

    p(x | v) is linear in the weights π(v) and the sticks are independent, so the sticks
    integrate out exactly: the marginal prior over z is the mixture with the mean weights
    π̄ = E[π(v)] (:meth:`prior_weights`; under q(v) for global sticks, which makes
    E_{q(v)}[p(x | v)] the posterior predictive, under Beta(1, α) for local ones), and the
    marginal guide is the mixture with responsibilities r̄(x) (:meth:`encode`). By default
    (``integrate_sticks=True``) the log-weights are those of these marginals,

    .. math:: \\log p(x \\mid z) + \\log \\sum_c π̄_c\\, p_c(z)
        - \\log \\sum_k \\bar r_k(x)\\, q_k(z \\mid x), \\qquad z \\sim \\bar q(z \\mid x),

    an estimator of the same log p(x) as the joint one with less variance. With
    ``integrate_sticks=False`` the sticks are drawn too: for local sticks the weights are
    log p(x, v, z) - log q(v, z | x), the training objective's terms; for global sticks,
    v ~ q(v) once per draw and the weights are log p(x, z | v) - log q(z | x), without the
    shared stick term log p(v) - log q(v). Finite weights ignore the flag.

    Args:
        x: (N, P).
        num_samples: S >= 1.
        integrate_sticks: see above.

    Returns:
        (S, N).
    """
    self._check_x(x)
    return draw_and_weigh(self, x, num_samples, integrate_sticks)[1]


def draw_and_weigh(
    self: MixtureVAE, x: torch.Tensor, num_samples: int, integrate_sticks: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draws z (S, N, D) from the (marginal) guide and their importance log-weights (S, N)."""
    S, N = num_samples, x.shape[0]
    loc, scale, w = self._encode(x)
    log_pv = log_qv = 0.0
    if self.sticks is None or integrate_sticks:
        log_w_q = self._posterior_log_weights(w, sample=False).expand(S, N, -1)  # (S, N, K)
        log_w_p = self._mean_prior_log_weights()  # (K,)
    elif self.sticks == "global":
        v = self._stick_posterior(self.stick_raw).rsample((S, 1))  # (S, 1, T-1)
        log_w_q = self._posterior_log_weights(w, sample=False).expand(S, N, -1)
        log_w_p = stick_breaking_log_weights(v)  # (S, 1, T)
    else:
        q = self._stick_posterior(w)
        v = q.rsample((S,))  # (S, N, T-1)
        log_qv = q.log_prob(v).sum(-1)
        log_pv = self._stick_prior(x).log_prob(v).sum(-1)
        log_w_q = log_w_p = stick_breaking_log_weights(v)  # (S, N, T)
    if self.num_components == 1:
        k = torch.zeros(S, N, dtype=torch.long, device=x.device)
    else:
        k = dist.Categorical(logits=log_w_q).sample()  # (S, N)
    draw = _ComponentDraw(loc, scale, log_w_q, k, self.flows)
    z = draw.rsample()  # (S, N, D)
    log_qz = torch.logsumexp(log_w_q + draw.component_log_probs(z), -1)
    log_pz = self._prior_log_probs(z, log_w_p)
    log_px = self._likelihood(z).log_prob(x)
    return z, log_px + log_pz + log_pv - log_qz - log_qv


@torch.no_grad()
def importance_log_likelihood(
    self: MixtureVAE,
    x: torch.Tensor,
    num_samples: int = 500,
    batch_size: int = 100,
    integrate_sticks: bool = True,
) -> torch.Tensor:
    """Importance-sampled estimate of log p(x) per point, with the guide as proposal.

    .. math:: \\log \\hat p(x) = \\log \\frac1S \\sum_{s=1}^S
        \\frac{p(x, z_s)}{\\bar q(z_s \\mid x)}, \\qquad z_s \\sim \\bar q(z \\mid x),

    with the sticks integrated out exactly (or drawn as well, see :meth:`log_weights`); for
    global sticks p(x) is the posterior predictive E_{q(v)}[p(x | v)].

    Its expectation is at least the ELBO and increases to log p(x) as S grows
    (Importance Weighted Autoencoders, Burda et al., 2016, arXiv:1509.00519).

    Args:
        x: (N, P).
        num_samples: S >= 1.
        batch_size: draws evaluated at once (memory S_b·N·K·D).
        integrate_sticks: passed to :meth:`log_weights`.

    Returns:
        (N,) estimates.

    Raises:
        ValueError: bad sizes, or a non-finite log-weight (the draw would otherwise be
            dropped and bias the estimate).
    """
    for name, value in (("num_samples", num_samples), ("batch_size", batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"expected {name} to be an int >= 1, got {value!r}")
    self._check_x(x)
    chunks = []
    done = 0
    while done < num_samples:
        s = min(batch_size, num_samples - done)
        lw = log_weights(self, x, s, integrate_sticks)
        if not bool(torch.isfinite(lw).all()):
            bad = (~torch.isfinite(lw)).sum().item()
            raise ValueError(
                f"expected finite importance log-weights, got {bad} non-finite of {lw.numel()}; "
                "check the data and the trained parameters"
            )
        chunks.append(torch.logsumexp(lw, 0))
        done += s
    return torch.logsumexp(torch.stack(chunks), 0) - math.log(num_samples)
