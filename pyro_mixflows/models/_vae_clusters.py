"""The cluster posterior of :class:`~pyro_mixflows.models.MixtureVAE` and the EM refit of its
prior.

The public functions here are methods of ``MixtureVAE`` (assigned in its class body, which keeps
the class module short); ``self`` is the model.
"""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING

import pyro.distributions as dist
import torch

if TYPE_CHECKING:
    from .mixture_vae import MixtureVAE


def _fit_diagonal_mixture(z: torch.Tensor, K: int, num_restarts: int, seed: int, iters: int = 200):
    """EM for a K-component diagonal Gaussian mixture on z (M, D), k-means++ starts.

    Returns loc (K, D), variances (K, D), log weights (K,) and responsibilities (M, K) of the
    restart with the highest log-likelihood.
    """
    g = torch.Generator().manual_seed(seed)
    M, D = z.shape
    best, best_ll = None, -math.inf
    floor = 1e-6 * z.var(0).mean() + 1e-12
    for _ in range(num_restarts):
        idx = [int(torch.randint(M, (1,), generator=g))]
        for _ in range(1, K):
            d2 = ((z.unsqueeze(1) - z[idx].unsqueeze(0)) ** 2).sum(-1).min(-1).values  # (M,)
            idx.append(int(torch.multinomial(d2 + 1e-30, 1, generator=g)))
        loc, var = z[idx].clone(), z.var(0).expand(K, D).clone()
        log_w = z.new_full((K,), -math.log(K))
        for _ in range(iters):
            lp = dist.Normal(loc, var.sqrt()).log_prob(z.unsqueeze(1)).sum(-1) + log_w  # (M, K)
            resp = torch.softmax(lp, -1)
            nk = resp.sum(0) + 1e-10  # (K,)
            loc = (resp.T @ z) / nk.unsqueeze(-1)
            var = ((resp.T @ z**2) / nk.unsqueeze(-1) - loc**2).clamp_min(floor)
            log_w = torch.log(nk / M)
        lp = dist.Normal(loc, var.sqrt()).log_prob(z.unsqueeze(1)).sum(-1) + log_w
        ll = torch.logsumexp(lp, -1).mean().item()
        if ll > best_ll:
            best_ll, best = ll, (loc, var, log_w, torch.softmax(lp, -1))
    return best


def _best_matching(overlap: torch.Tensor) -> list[int]:
    """order[k] = the column matched to row k, maximizing the total overlap (K, K)."""
    K = overlap.shape[0]
    if K <= 7:
        return list(
            max(
                itertools.permutations(range(K)),
                key=lambda p: sum(float(overlap[k, p[k]]) for k in range(K)),
            )
        )
    order, free = [-1] * K, set(range(K))  # greedy, largest overlaps first
    for flat in torch.argsort(overlap.flatten(), descending=True).tolist():
        row, col = divmod(flat, K)
        if order[row] < 0 and col in free:
            order[row] = col
            free.discard(col)
    return order


@torch.no_grad()
def cluster_log_probs(self: MixtureVAE, z: torch.Tensor) -> torch.Tensor:
    """Exact log p(c | z) of the prior's components given a code: z (..., D) -> (..., K).

    .. math:: p(c \\mid z) = \\frac{\\bar w_c\\, \\mathcal{N}(z; μ^0_c, σ^0_c)}
        {\\sum_{c'} \\bar w_{c'}\\, \\mathcal{N}(z; μ^0_{c'}, σ^0_{c'})},

    with w̄ the marginal prior weights (:meth:`prior_weights`; the sticks integrate out
    exactly, so this is the model's own p(c | z)).
    """
    if not isinstance(z, torch.Tensor) or z.dim() < 1 or z.shape[-1] != self.latent_dim:
        shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
        raise ValueError(f"expected z of shape (..., D={self.latent_dim}), got {shape}")
    scale0 = self.prior_log_scale.exp()
    lp = dist.Normal(self.prior_loc, scale0).log_prob(z.unsqueeze(-2)).sum(-1)  # (..., K)
    lp = lp + self._mean_prior_log_weights()
    return lp - torch.logsumexp(lp, -1, keepdim=True)


@torch.no_grad()
def cluster_probs(
    self: MixtureVAE,
    x: torch.Tensor,
    num_samples: int = 100,
    importance: bool = True,
    batch_size: int = 100,
) -> torch.Tensor:
    """The cluster posterior p(c | x): which prior component generated each point.

    This is the way to cluster with the model. c is the prior's component (the mixture
    in the latent space); p(c | z) is exact (:meth:`cluster_log_probs`) and is averaged
    over the posterior of the code,

    .. math:: p(c \\mid x) = \\mathbb{E}_{p(z \\mid x)}[p(c \\mid z)] \\approx
        \\sum_{s=1}^S \\tilde w_s\\, p(c \\mid z_s), \\qquad z_s \\sim \\bar q(z \\mid x),

    with self-normalized importance weights w̃_s ∝ p(x, z_s) / q̄(z_s | x) (the weights of
    :meth:`log_weights`; consistent for the model's exact p(c | x) as S grows) or, with
    ``importance=False``, w̃_s = 1/S (the average over the guide, E_q[p(c | z)]).

    The guide's own responsibilities (:meth:`encode`) are a different thing: with
    ``tie_components=False`` they say how q(z | x) is split among its own components,
    which need not match the prior's; with tied components they are q(c | x), a trained
    approximation of this posterior.

    Args:
        x: (N, P).
        num_samples: S >= 1 draws per point.
        importance: weight the draws by p(x, z) / q(z | x) (default) or not.
        batch_size: draws evaluated at once.

    Returns:
        (N, K) probabilities, rows summing to one.

    Example::

        >>> vae = MixtureVAE(64, 8, num_components=5)
        >>> vae.cluster_probs(torch.rand(3, 64).round(), num_samples=10).shape
        torch.Size([3, 5])
    """
    for name, value in (("num_samples", num_samples), ("batch_size", batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"expected {name} to be an int >= 1, got {value!r}")
    self._check_x(x)
    num = den = None
    done = 0
    while done < num_samples:
        s = min(batch_size, num_samples - done)
        z, lw = self._draw_and_weigh(x, s)  # (s, N, D), (s, N)
        if not importance:
            lw = torch.zeros_like(lw)
        elif not bool(torch.isfinite(lw).all()):
            raise ValueError(
                "expected finite importance log-weights, got non-finite ones; "
                "check the trained parameters or use importance=False"
            )
        chunk_num = torch.logsumexp(lw.unsqueeze(-1) + self.cluster_log_probs(z), 0)
        chunk_den = torch.logsumexp(lw, 0)  # (N,)
        num = chunk_num if num is None else torch.logaddexp(num, chunk_num)
        den = chunk_den if den is None else torch.logaddexp(den, chunk_den)
        done += s
    return (num - den.unsqueeze(-1)).exp()


@torch.no_grad()
def predict(
    self: MixtureVAE, x: torch.Tensor, num_samples: int = 100, importance: bool = True
) -> torch.Tensor:
    """Cluster labels argmax_c p(c | x), (N,) long; see :meth:`cluster_probs`."""
    return self.cluster_probs(x, num_samples, importance).argmax(-1)


@torch.no_grad()
def refit_prior(
    self: MixtureVAE, x: torch.Tensor, num_samples: int = 5, num_restarts: int = 5, seed: int = 0
) -> None:
    """Refit the prior's components to the codes by EM, keeping the guide's index order.

    The prior maximizing the ELBO for a fixed guide is the mixture that best fits the
    aggregate posterior (1/N) Σ_n q(z | x_n); gradient steps approach it slowly and can
    stay in a local optimum (one component over two clusters, two over one). This M-step
    fits a diagonal Gaussian mixture with K components to S draws of q(z | x_n) per point
    by EM (k-means++ starts, ``num_restarts`` restarts, the best log-likelihood kept) and
    sets μ⁰, σ⁰ (and the weights, for ``weights="softmax"``; stick posteriors are left as
    they are) to it, with the new components ordered to overlap most with the guide's
    components, so that tied components stay tied. Use it as a warm start, as for deep
    clustering models: train for part of the steps, call ``refit_prior(x_train)``, train
    on (``benchmarks/vae_clusters.py``: a third, then the rest).

    Args:
        x: (N, P) training data.
        num_samples: S draws of q(z | x) per point.
        num_restarts: EM restarts.
        seed: seeds the k-means++ starts.
    """
    for name, value in (("num_samples", num_samples), ("num_restarts", num_restarts)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"expected {name} to be an int >= 1, got {value!r}")
    self._check_x(x)
    if not self.learn_prior:
        raise ValueError("expected a learnable prior (learn_prior=True), got a fixed one")
    S, K = num_samples, self.num_components
    z = self._draw_and_weigh(x, S)[0]  # (S, N, D)
    loc, var, log_w, resp = _fit_diagonal_mixture(z.reshape(-1, z.shape[-1]), K, num_restarts, seed)
    r_old = self.encode(x)[0].repeat(S, 1)  # (S·N, K), rows in the same order as z's
    order = _best_matching(r_old.T @ resp)  # new component for each old index
    self.prior_loc.copy_(loc[order])
    self.prior_log_scale.copy_(0.5 * var[order].log())
    if self.weights == "softmax":
        self.prior_logits.copy_(log_w[order])
