"""Partitions that follow the data's clusters: spectral clustering, normalized cuts, k-means."""

from __future__ import annotations

import torch

from ..diagnostics import adjusted_rand_index
from ._kmeans import kmeans

INIT_METHODS = ("spectral", "kmeans", "random")
# Spectral clustering builds a dense N x N affinity; above this many points it runs on a random
# subset and the rest take the label of their nearest subset point.
MAX_SPECTRAL_POINTS = 1500


def knn_affinity(x: torch.Tensor, n_neighbors: int) -> torch.Tensor:
    """Symmetric k-NN affinity ``exp(-d_ij^2 / (s_i s_j))``, s_i the distance to the 7th neighbour
    (local scaling, Zelnik-Manor & Perona, 2004): (N, D) -> (N, N)."""
    N = x.shape[0]
    k = min(n_neighbors, N - 1)
    knn_d, knn_i = torch.cdist(x, x).topk(k + 1, largest=False)  # (N, k+1), self first
    scale = knn_d[:, min(7, k)].clamp_min(1e-12)
    affinity = torch.zeros(N, N, dtype=x.dtype, device=x.device)
    weights = torch.exp(-knn_d[:, 1:].square() / (scale[:, None] * scale[knn_i[:, 1:]]))
    affinity.scatter_(1, knn_i[:, 1:], weights)
    return torch.maximum(affinity, affinity.T)


def normalized_cut(affinity: torch.Tensor, labels: torch.Tensor, num_clusters: int) -> float:
    """Ncut = sum_c cut(c, rest) / vol(c) (Shi & Malik, 2000); lower is a cleaner partition."""
    onehot = torch.nn.functional.one_hot(labels, num_clusters).to(affinity.dtype)  # (N, K)
    within = ((affinity @ onehot) * onehot).sum(0)  # (K,)
    volume = (affinity.sum(1, keepdim=True) * onehot).sum(0)
    return float(((volume - within) / volume.clamp_min(1e-12)).sum())


# Below this many rows (or for this many eigenvectors of fewer rows) the dense eigensolver is used.
DENSE_EIGEN_ROWS = 300


def top_eigenvectors(matrix: torch.Tensor, k: int) -> torch.Tensor:
    """The eigenvectors of the k largest eigenvalues of a symmetric k-NN matrix (N, N), sorted
    by ascending eigenvalue: (N, k).

    The matrix is sparse (about ``n_neighbors`` entries a row): Lanczos iterations (ARPACK's
    ``eigsh`` from a fixed start vector, so the result is reproducible) cost a few sparse products
    where the dense solver costs O(N^3); small matrices, and the rare case where Lanczos does not
    converge, use the dense solver.
    """
    N = matrix.shape[0]
    if N <= max(DENSE_EIGEN_ROWS, 4 * k):
        return torch.linalg.eigh(matrix)[1][:, -k:]
    import numpy as np
    import scipy.sparse
    from scipy.sparse.linalg import ArpackNoConvergence, eigsh

    dense = matrix.detach().cpu().to(torch.float64).numpy()
    try:
        values, vectors = eigsh(
            scipy.sparse.csr_matrix(dense), k=k, which="LA", v0=np.ones(N)
        )  # fmt: skip
    except ArpackNoConvergence:
        return torch.linalg.eigh(matrix)[1][:, -k:]
    order = np.argsort(values)
    return torch.as_tensor(vectors[:, order], dtype=matrix.dtype, device=matrix.device)


def _spectral_embedding(affinity: torch.Tensor, num_clusters: int) -> torch.Tensor:
    inv_sqrt_deg = affinity.sum(1).clamp_min(1e-12).rsqrt()
    normalized = inv_sqrt_deg[:, None] * affinity * inv_sqrt_deg[None, :]
    embedding = top_eigenvectors(normalized, num_clusters)
    return embedding / embedding.norm(dim=1, keepdim=True).clamp_min(1e-12)


def sweep_bisection(affinity: torch.Tensor, min_size: int) -> torch.Tensor:
    """Two-way spectral cut by a sweep (Shi & Malik, 2000): (N, N) -> (N,) long labels in {0, 1}.

    Orders the points by the second generalized eigenvector of ``(D - W) v = lambda D v`` and
    cuts at the threshold of least normalized cut, among cuts that leave at least ``min_size``
    points on each side. Unlike k-means on the spectral embedding, the sweep finds the gap of
    a long curved cluster (the tip of a moon) instead of cutting at the embedding's midpoint.
    """
    N = affinity.shape[0]
    degree = affinity.sum(1).clamp_min(1e-12)
    inv_sqrt_deg = degree.rsqrt()
    vecs = top_eigenvectors(inv_sqrt_deg[:, None] * affinity * inv_sqrt_deg[None, :], 2)
    order = (vecs[:, 0] * inv_sqrt_deg).argsort()
    w = affinity[order][:, order]
    volume = degree[order].cumsum(0)  # (N,) volume of the first i + 1 points
    within = (2 * w.tril(-1).sum(1) + w.diagonal()).cumsum(0)
    cut = volume - within
    ncut = cut / volume + cut / (volume[-1] - volume).clamp_min(1e-12)
    left = torch.arange(1, N + 1, device=affinity.device)
    ncut = torch.where((left >= min_size) & (N - left >= min_size), ncut, torch.inf)
    labels = torch.zeros(N, dtype=torch.long, device=affinity.device)
    labels[order[int(ncut.argmin()) + 1 :]] = 1
    return labels


def _two_way_labels(x: torch.Tensor, neighbors: tuple[int, ...]) -> torch.Tensor:
    """Sweep cuts of k-NN graphs with 5, 6 and ``neighbors`` neighbours; the winner has the least
    normalized cut summed over the ``neighbors`` graphs. Sparse graphs propose cuts that the
    denser ones cannot order (a narrow gap where two clusters nearly touch), but they can also
    split a cluster at a gap of sampling noise, so only the denser graphs judge."""
    judges = [knn_affinity(x, k) for k in neighbors]
    proposers = [knn_affinity(x, k) for k in (5, 6) if k not in neighbors] + judges
    min_size = max(1, x.shape[0] // 20)
    candidates = [sweep_bisection(g, min_size) for g in proposers]
    total = [sum(normalized_cut(g, c, 2) for g in judges) for c in candidates]
    return candidates[min(range(len(candidates)), key=total.__getitem__)]


def spectral_labels(
    x: torch.Tensor,
    num_clusters: int,
    *,
    neighbors: tuple[int, ...] = (7, 10, 15),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Spectral clustering (Ng, Jordan & Weiss, 2002) on locally scaled k-NN graphs.

    For K > 2 the candidates are the spectral partition (k-means on the embedding) for each
    neighbourhood size in ``neighbors`` and plain k-means; the consensus wins (the candidate with
    the highest summed adjusted Rand index to the others). For K = 2 the candidates are the
    sweep cuts (``sweep_bisection``) of these and sparser graphs, and the one with the least
    normalized cut summed over the ``neighbors`` graphs wins. Follows manifolds (moons,
    rings, spiral arms) where k-means cuts them.

    Args:
        x: points, (N, D).
        num_clusters: K.

    Returns:
        labels, (N,) long.
    """
    x = x.detach().to(torch.float64)
    N = x.shape[0]
    if N > MAX_SPECTRAL_POINTS:
        subset = torch.randperm(N, generator=generator)[:MAX_SPECTRAL_POINTS]
        sub_labels = spectral_labels(
            x[subset], num_clusters, neighbors=neighbors, generator=generator
        )
        nearest = torch.cat([torch.cdist(c, x[subset]).argmin(1) for c in x.split(4096)])
        return sub_labels[nearest]
    if num_clusters == 2:
        return _two_way_labels(x, neighbors)
    candidates = [kmeans(x, num_clusters, generator=generator)[1]]
    for k in neighbors:
        embedding = _spectral_embedding(knn_affinity(x, k), num_clusters)
        candidates.append(kmeans(embedding, num_clusters, n_init=10, generator=generator)[1])
    # The consensus candidate: the one that agrees most (adjusted Rand index) with the others.
    agreement = [
        sum(adjusted_rand_index(a.cpu().numpy(), b.cpu().numpy()) for b in candidates if b is not a)
        for a in candidates
    ]
    return candidates[max(range(len(candidates)), key=agreement.__getitem__)]


def eigengap_num_clusters(
    x: torch.Tensor,
    max_clusters: int,
    *,
    n_neighbors: int = 10,
    generator: torch.Generator | None = None,
) -> int:
    """The number of clusters by the eigengap heuristic (von Luxburg, 2007).

    The normalized k-NN affinity has one eigenvalue near 1 per well-separated cluster; the
    count is the k <= ``max_clusters`` before the largest drop in the sorted eigenvalues.
    """
    x = x.detach().to(torch.float64)
    if x.shape[0] > MAX_SPECTRAL_POINTS:
        x = x[torch.randperm(x.shape[0], generator=generator)[:MAX_SPECTRAL_POINTS]]
    affinity = knn_affinity(x, n_neighbors)
    inv_sqrt_deg = affinity.sum(1).clamp_min(1e-12).rsqrt()
    normalized = inv_sqrt_deg[:, None] * affinity * inv_sqrt_deg[None, :]
    values = torch.linalg.eigvalsh(normalized).flip(0)  # descending
    m = min(max_clusters, len(values) - 1)
    gaps = values[:m] - values[1 : m + 1]
    return int(gaps.argmax()) + 1


class _single_thread:
    """Run dense eigensolvers on one intra-op thread (restored after): multithreaded ``eigh``
    on matrices of this size was measured 16x slower on a 2-core machine under load."""

    def __enter__(self):
        self.threads = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        torch.set_num_threads(self.threads)


def initial_labels(
    x: torch.Tensor, num_clusters: int, method: str, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Initial hard assignments by ``method`` in ``INIT_METHODS``: (N, D) -> (N,) long."""
    if method == "spectral":
        with _single_thread():
            labels = spectral_labels(x, num_clusters, generator=generator)
    elif method == "kmeans":
        labels = kmeans(x.detach(), num_clusters, generator=generator)[1]
    elif method == "random":
        labels = torch.randint(num_clusters, (x.shape[0],), generator=generator)
    else:
        raise ValueError(f"expected init in {INIT_METHODS}, got {method!r}")
    return labels.to(x.device)


def ncut_per_cluster(
    x: torch.Tensor, labels: torch.Tensor, K: int, generator: torch.Generator | None = None
) -> float:
    """Normalized cut of a partition of x (N, D) on the 10-NN graph, divided by K (on at most
    ``MAX_SPECTRAL_POINTS`` rows): low when the clusters are apart, separated by gaps of low
    density."""
    if x.shape[0] > MAX_SPECTRAL_POINTS:
        keep = torch.randperm(x.shape[0], generator=generator)[:MAX_SPECTRAL_POINTS]
        x, labels = x[keep.to(x.device)], labels[keep.to(labels.device)]
    affinity = knn_affinity(x.detach().to(torch.float64), 10)
    return normalized_cut(affinity, labels.to(affinity.device), K) / K


def match_to_classes(labels: torch.Tensor, y: torch.Tensor, K: int) -> torch.Tensor:
    """A partition's clusters renamed to the classes of its labelled rows, then overridden there.

    ``labels`` (N,) in [0, K); ``y`` (N,) with -1 for unlabelled rows. Clusters are matched to
    classes by the Hungarian assignment on the labelled rows' contingency table.
    """
    from scipy.optimize import linear_sum_assignment

    known = y >= 0
    if not bool(known.any()):
        return labels
    table = torch.zeros(K, K)
    table.index_put_(
        (y[known].cpu(), labels[known].cpu()), torch.ones(int(known.sum())), accumulate=True
    )
    rows, cols = linear_sum_assignment(-table.numpy())
    mapping = torch.empty(K, dtype=torch.long)
    mapping[torch.as_tensor(cols)] = torch.as_tensor(rows)
    labels = mapping.to(labels.device)[labels]
    return torch.where(known, y.to(labels.device), labels)
