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
    from collections.abc import Sequence

    from .mixture_vae import MixtureVAE

DEFAULT_REFIT_STEPS = (500, 1000, 2000)
REFIT_MAX_ROWS = 4096  # the automatic refit uses at most this many rows of x
REFIT_COVARIANCE = "full"  # the refit's EM: full covariances, whose diagonals the prior takes


def check_refit_steps(
    refit_steps: Sequence[int] | None,
    learn_prior: bool,
    num_components: int,
    flow: str | None,
    tied: bool,
) -> tuple[int, ...]:
    """The constructor's ``refit_steps``, checked; None means the default for the model."""
    if refit_steps is None:
        auto = tied and learn_prior and num_components > 1 and flow is None
        return DEFAULT_REFIT_STEPS if auto else ()
    steps = tuple(refit_steps)
    if any(not isinstance(s, int) or isinstance(s, bool) or s < 1 for s in steps):
        raise ValueError(f"expected refit_steps to be ints >= 1, got {steps!r}")
    if steps and not learn_prior:
        raise ValueError(
            f"expected refit_steps=() with a fixed prior (learn_prior=False), got {steps!r}"
        )
    return tuple(sorted(set(steps)))


def count_step_and_refit(self: MixtureVAE, x: torch.Tensor) -> None:
    """Count one training step; at the steps in ``self.refit_steps``, :meth:`refit_prior` on x.

    Called by the guide when gradients are on (a training step; validation losses, Predictive
    and the evaluation methods run without them). x is what the guide was given: the whole
    data set under ``infer.fit`` with minibatches, whatever batch the caller passes under
    ``SVI.step``. At most ``REFIT_MAX_ROWS`` of its rows are used (a fixed random subset).
    """
    self.num_training_steps.add_(1)
    step = int(self.num_training_steps)
    if step not in self.refit_steps:
        return
    if x.shape[0] > REFIT_MAX_ROWS:
        g = torch.Generator().manual_seed(step)
        x = x[torch.randperm(x.shape[0], generator=g)[:REFIT_MAX_ROWS].to(x.device)]
    self.refit_prior(x, seed=step)


def _fit_diagonal_mixture(
    z: torch.Tensor,
    K: int,
    num_restarts: int,
    seed: int,
    iters: int = 200,
    init: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    covariance: str = "diag",
):
    """EM for a K-component Gaussian mixture on z (M, D), k-means++ starts; diagonal result.

    ``init`` = (loc (K, D), variances (K, D), log weights (K,)) is one more start, run first:
    EM never lowers the log-likelihood, so the result is at least as good as ``init`` (in the
    likelihood of the mixture EM fits).

    ``covariance="diag"`` fits diagonal components. ``"full"`` fits full covariances (in
    float64) and returns their diagonals: the partition (responsibilities) is the full mixture's.
    A cluster of codes that is elongated off the axes is one full component; diagonal ones can
    fit it better as two (one of them narrow) while merging two others, a solution that the
    start from the current prior tends to keep.

    Returns loc (K, D), variances (K, D), log weights (K,) and responsibilities (M, K) of the
    start with the highest log-likelihood (of the fitted mixture, diagonal or full).
    """
    if covariance not in ("diag", "full"):
        raise ValueError(f"expected covariance in ('diag', 'full'), got {covariance!r}")
    g = torch.Generator().manual_seed(seed)
    M, D = z.shape
    best, best_ll = None, -math.inf
    floor = 1e-6 * z.var(0).mean() + 1e-12
    starts = [] if init is None else [tuple(t.to(z).clone() for t in init)]
    for _ in range(num_restarts):
        idx = [int(torch.randint(M, (1,), generator=g))]
        for _ in range(1, K):
            d2 = ((z.unsqueeze(1) - z[idx].unsqueeze(0)) ** 2).sum(-1).min(-1).values  # (M,)
            idx.append(int(torch.multinomial(d2 + 1e-30, 1, generator=g)))
        starts.append(
            (z[idx].clone(), z.var(0).expand(K, D).clone(), z.new_full((K,), -math.log(K)))
        )
    if covariance == "full":
        return _fit_full_mixture(z, starts, iters, floor)
    for loc, var, log_w in starts:
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


def _fit_full_mixture(z: torch.Tensor, starts, iters: int, floor: torch.Tensor):
    """EM with full covariances (Σ_k + floor·I) from each start; the best one's diagonals."""
    z64, M, D = z.double(), z.shape[0], z.shape[1]
    eye = torch.eye(D, dtype=torch.float64)
    best, best_ll = None, -math.inf

    def log_probs(loc, cov, log_w):  # (M, K)
        tril = torch.linalg.cholesky(cov)
        diff = (z64.unsqueeze(1) - loc).unsqueeze(-1)  # (M, K, D, 1)
        sol = torch.linalg.solve_triangular(tril, diff, upper=False).squeeze(-1)
        logdet = tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        return log_w - 0.5 * (sol**2).sum(-1) - logdet - 0.5 * D * math.log(2 * math.pi)

    for loc, var, log_w in starts:
        loc, log_w = loc.double(), log_w.double()
        cov = torch.diag_embed(var.double())
        for _ in range(iters):
            resp = torch.softmax(log_probs(loc, cov, log_w), -1)
            nk = resp.sum(0) + 1e-10  # (K,)
            loc = (resp.T @ z64) / nk.unsqueeze(-1)
            diff = z64.unsqueeze(1) - loc  # (M, K, D)
            cov = torch.einsum("mk,mkd,mke->kde", resp, diff, diff) / nk[:, None, None]
            cov = cov + float(floor) * eye
            log_w = torch.log(nk / M)
        lp = log_probs(loc, cov, log_w)
        ll = torch.logsumexp(lp, -1).mean().item()
        if ll > best_ll:
            var = cov.diagonal(dim1=-2, dim2=-1)
            best_ll, best = ll, tuple(t.to(z) for t in (loc, var, log_w, torch.softmax(lp, -1)))
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
    fits a Gaussian mixture with K full-covariance components to S draws of q(z | x_n) per
    point by EM, started from the current prior and from ``num_restarts`` k-means++ seeds (the
    best log-likelihood kept, so never below the current prior's), and sets μ⁰, σ⁰ (the
    diagonals of the covariances) and the weights (for ``weights="softmax"``; stick posteriors
    are left as they are) to it, with the new components ordered to overlap most with the
    guide's components, so that tied components stay tied. Full covariances decide the
    partition: a cluster of codes elongated off the axes is one full component, where a
    diagonal mixture may fit it as two (one narrow) and merge two other clusters. A new
    component whose codes came from another guide component (one that covered two clusters)
    gets a copy of that component's encoder outputs (Gaussian components only), so that the
    guide follows the split. By default the model calls it
    itself at training steps 500, 1000 and 2000 (``refit_steps``); the draws use their own
    random stream (``seed``), so the caller's is left as it was.

    Args:
        x: (N, P) training data.
        num_samples: S draws of q(z | x) per point.
        num_restarts: EM restarts.
        seed: seeds the draws of q(z | x) and the k-means++ starts.
    """
    for name, value in (("num_samples", num_samples), ("num_restarts", num_restarts)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"expected {name} to be an int >= 1, got {value!r}")
    self._check_x(x)
    if not self.learn_prior:
        raise ValueError("expected a learnable prior (learn_prior=True), got a fixed one")
    S, K = num_samples, self.num_components
    devices = [x.device] if x.device.type != "cpu" else []
    kind = x.device.type if devices else None
    with torch.random.fork_rng(devices, device_type=kind):  # the caller's random stream is kept
        torch.manual_seed(seed)
        z = self._draw_and_weigh(x, S)[0]  # (S, N, D)
    current = (self.prior_loc, (2 * self.prior_log_scale).exp(), self._mean_prior_log_weights())
    z = z.reshape(-1, z.shape[-1])
    loc, var, log_w, resp = _fit_diagonal_mixture(
        z, K, num_restarts, seed, init=current, covariance=REFIT_COVARIANCE
    )
    r_old = self.encode(x)[0].repeat(S, 1)  # (S·N, K), rows in the same order as z's
    overlap = r_old.T @ resp  # (K, K): old guide index x new component
    order = _best_matching(overlap)  # new component for each old index
    self.prior_loc.copy_(loc[order])
    self.prior_log_scale.copy_(0.5 * var[order].log())
    if self.weights == "softmax":
        self.prior_logits.copy_(log_w[order])
    overlap = overlap[:, order]  # (K, K): old guide index x new component at its new index
    _split_guide_components(self, overlap)


def _split_guide_components(self: MixtureVAE, overlap: torch.Tensor) -> list[int]:
    """Give each prior component that no guide component follows a copy of the one that does.

    After a refit, prior component k may cover codes that guide component k never produced (k
    was unused, or the refit split a component that covered two clusters). Its guide component
    then never learns to produce them: its responsibility r_k(x) stays near 0. Copying the
    encoder's output rows (location, scale and weight logit) of the guide component j that
    produced most of those codes into k makes q_k(z | x) = q_j(z | x) and r_k = r_j; training
    then sends each point to whichever of j and k has its prior component nearer.

    Args:
        overlap: (K, K), overlap[j, k] = the mass of codes of guide component j that the refitted
            prior assigns to component k.

    Returns:
        The indices k whose guide component was replaced.
    """
    K, D = self.num_components, self.latent_dim
    source = overlap.argmax(0)  # (K,)
    own = overlap.diagonal()
    replaced = [k for k in range(K) if int(source[k]) != k and own[k] < 0.5 * overlap[source[k], k]]
    if not replaced or self.flows is not None:
        return []
    last = self.encoder[-1]
    weight, bias = last.weight.detach().clone(), last.bias.detach().clone()

    def rows(k):
        out = list(range(k * D, (k + 1) * D)) + list(range(K * D + k * D, K * D + (k + 1) * D))
        if self.sticks != "local":  # one weight logit per component
            out.append(2 * K * D + k)
        return out

    for k in replaced:
        to, frm = rows(k), rows(int(source[k]))
        last.weight.data[to] = weight[frm]
        last.bias.data[to] = bias[frm]
    return replaced
