"""The Dirichlet-process option's start: a held-out number of Gaussian pieces, joined into clusters.

A truncated Dirichlet-process mixture of flows, fitted by maximum likelihood for its components,
keeps adding components while the likelihood gains: it splits clusters, and its count follows the
truncation. So the count comes from held-out rows instead, in two steps that depend on the
truncation T only through the cap on K:

1. ``choose_num_components``: EM's Gaussian mixtures with K = 1 .. max(T, ``MAX_PIECES``)
   pieces compared by cross-validated held-out likelihood; the best K (and if its pieces make more
   than T clusters, the best K up to T).
2. ``ridgeline_groups``: pieces of one cluster (a curved cluster takes several Gaussians) are
   joined where the two-piece mixture has no deep dip along their ridgeline,

   .. math:: x^*(\\alpha) = [(1-\\alpha)\\Sigma_i^{-1} + \\alpha\\Sigma_j^{-1}]^{-1}
             [(1-\\alpha)\\Sigma_i^{-1}\\mu_i + \\alpha\\Sigma_j^{-1}\\mu_j],
             \\quad \\alpha \\in [0, 1],

   the curve through every mode of the pair (Ray & Lindsay, 2005): i and j are joined when the
   lowest density of ``w_i N_i + w_j N_j`` on it is at least ``MERGE_RATIO`` times the lower of
   its two ends, and clusters are the connected sets of that relation.

The flows then start from the clusters' partition (one component each) with Dirichlet-process
weights. Where a cluster took several pieces its Gaussian is the moments of its rows (and a flow
refines it); a cluster of one piece keeps EM's own Gaussian.
"""

from __future__ import annotations

import math

import torch

from ..models.dp import connected_groups
from ..starts import Start, choose_num_components, partition_start
from ..starts._em import COVARIANCES, gaussian_mixture, start_from_gaussian_mixture

# Pieces whose ridgeline dips below this fraction of the lower of its ends are separate clusters.
MERGE_RATIO = 0.3
# The pieces scan goes up to the truncation T, or this many pieces where T is smaller: curved
# clusters take many Gaussian pieces, and the truncation caps the clusters, not the pieces.
MAX_PIECES = 20
# Points on the ridgeline between two pieces.
RIDGE_POINTS = 101
# Pieces of weight below this fraction of 1/K join a cluster (the one of their shallowest ridge)
# but never join two: a small, broad piece has no dip towards anything.
SMALL_PIECE_FRACTION = 0.25


def _log_normal(x: torch.Tensor, loc: torch.Tensor, tril: torch.Tensor) -> torch.Tensor:
    """log N(x; loc, L L^T): x (M, D) -> (M,)."""
    z = torch.linalg.solve_triangular(tril, (x - loc).unsqueeze(-1), upper=False).squeeze(-1)
    D = loc.shape[-1]
    return -0.5 * z.square().sum(-1) - tril.diagonal().log().sum() - 0.5 * D * math.log(2 * math.pi)


def ridgeline_log_dips(start: Start, num_points: int = RIDGE_POINTS) -> torch.Tensor:
    """For every pair of the start's Gaussians, the lowest log-density of their two-piece mixture on
    their ridgeline minus the lower of its two ends: (K, K), 0 on the diagonal (<= 0; 0 where the
    pair is unimodal along the ridgeline)."""
    loc = start.loc.detach().cpu().to(torch.float64)  # K x K small solves: on the CPU
    tril = start.scale_tril.detach().cpu().to(torch.float64)
    log_w = start.weights.detach().cpu().to(torch.float64).clamp_min(1e-300).log()
    K = loc.shape[0]
    precision = torch.cholesky_inverse(tril)  # (K, D, D)
    alpha = torch.linspace(0, 1, num_points, dtype=torch.float64)[:, None, None]  # (M, 1, 1)
    dips = torch.zeros(K, K, dtype=torch.float64)
    for i in range(K):
        for j in range(i + 1, K):
            A = (1 - alpha) * precision[i] + alpha * precision[j]  # (M, D, D)
            b = (1 - alpha) * (precision[i] @ loc[i]).unsqueeze(-1) + alpha * (
                precision[j] @ loc[j]
            ).unsqueeze(-1)
            x = torch.linalg.solve(A, b).squeeze(-1)  # (M, D)
            log_f = torch.logaddexp(
                log_w[i] + _log_normal(x, loc[i], tril[i]),
                log_w[j] + _log_normal(x, loc[j], tril[j]),
            )
            dips[i, j] = dips[j, i] = log_f.min() - torch.minimum(log_f[0], log_f[-1])
    return dips


def ridgeline_groups(start: Start, ratio: float = MERGE_RATIO) -> torch.Tensor:
    """The clusters of the start's Gaussians: (K,) long, numbered by decreasing total weight.

    Pieces i and j are joined when ``ridgeline_log_dips`` is at least log(ratio), and clusters are
    the connected sets of that relation among the pieces of weight at least
    ``SMALL_PIECE_FRACTION`` / K; each smaller piece then joins the cluster of its shallowest
    ridge among them (or stays alone), so it cannot chain two clusters together.
    """
    K = start.num_components
    dips = ridgeline_log_dips(start)
    small = start.weights.detach().cpu() < SMALL_PIECE_FRACTION / K
    if bool(small.all()):
        small = torch.zeros_like(small)
    joined = (dips >= math.log(ratio)) & ~small[:, None] & ~small[None, :]
    targets = (~small).nonzero().flatten()
    for i in small.nonzero().flatten().tolist():  # each small piece: one edge at most
        best = targets[dips[i, targets].argmax()]
        if dips[i, best] >= math.log(ratio):
            joined[i, best] = True
    return connected_groups(joined, start.weights.detach().cpu())


def dp_starts(x: torch.Tensor, settings, seed: int) -> tuple[list[Start], object]:
    """The Dirichlet-process fit's starts on training rows x (N, D) (see the module docstring): the
    clusters' partition (at least 2 components for the truncation; the second empty when one
    cluster is found), named "merge"; EM's mixture with as many components (a Gaussian candidate);
    and the pieces' groups (K,) as a NumPy array."""
    T = settings.n_components
    for cap in dict.fromkeys((max(T, MAX_PIECES), T)):  # more clusters than T: pieces up to T
        K, covariance = choose_num_components(
            x, cap, n_init=settings.n_init, reg_covar=settings.reg_covar, random_state=seed
        )
        gm = gaussian_mixture(
            x, K, covariance=covariance, n_init=settings.n_init, reg_covar=settings.reg_covar,
            random_state=seed,
        )  # fmt: skip
        pieces = start_from_gaussian_mixture(gm, x, COVARIANCES[covariance])
        groups = ridgeline_groups(pieces).to(x.device)
        G = int(groups.max()) + 1
        if G <= T:
            break
    start = partition_start(x, groups[pieces.labels], max(2, G), name="merge")
    loc, tril = start.loc.clone(), start.scale_tril.clone()
    for g in range(G):
        members = (groups == g).nonzero().flatten()
        if len(members) == 1:  # a cluster of one piece: EM's own Gaussian
            loc[g], tril[g] = pieces.loc[members[0]], pieces.scale_tril[members[0]]
        elif covariance == "diag":  # the covariance type EM was chosen with
            tril[g] = torch.diag_embed(tril[g].square().sum(-1).sqrt())
    merged = Start("merge", loc, tril, start.weights, start.labels)
    # EM's own mixture with as many components: a Gaussian candidate beside the joined clusters
    gm = gaussian_mixture(
        x, max(2, G), covariance=covariance, n_init=settings.n_init,
        reg_covar=settings.reg_covar, random_state=seed,
    )  # fmt: skip
    return [
        merged,
        start_from_gaussian_mixture(gm, x, COVARIANCES[covariance]),
    ], groups.cpu().numpy()
