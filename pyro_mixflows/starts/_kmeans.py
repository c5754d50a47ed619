"""k-means++ with restarts (scikit-learn's ``KMeans``) on torch tensors."""

from __future__ import annotations

import torch


def kmeans(
    x: torch.Tensor,
    num_clusters: int,
    *,
    n_init: int = 5,
    max_iter: int = 100,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's algorithm from k-means++ seeds; the best of ``n_init`` runs by inertia
    (scikit-learn's ``KMeans``; its seed drawn from ``generator``).

    Args:
        x: points, (N, D).
        num_clusters: K <= N.

    Returns:
        ``(centers, labels)``: (K, D) and (N,), on x's device, centers in x's dtype.

    Example::

        >>> centers, labels = kmeans(torch.randn(100, 2), 3, generator=torch.Generator().manual_seed(0))
        >>> centers.shape, labels.shape
        (torch.Size([3, 2]), torch.Size([100]))
    """
    from sklearn.cluster import KMeans

    N = x.shape[0]
    if num_clusters > N:
        raise ValueError(f"expected at most N={N} clusters, got {num_clusters}")
    seed = int(torch.randint(2**31 - 1, (), generator=generator))
    X = x.detach().cpu().to(torch.float64).numpy()
    fitted = KMeans(num_clusters, n_init=n_init, max_iter=max_iter, random_state=seed).fit(X)
    centers = torch.as_tensor(fitted.cluster_centers_, dtype=x.dtype, device=x.device)
    return centers, torch.as_tensor(fitted.labels_, dtype=torch.long, device=x.device)
