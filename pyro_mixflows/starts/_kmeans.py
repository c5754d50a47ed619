"""k-means++ with restarts, in torch, for placing mixture components before training."""

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
    """Lloyd's algorithm from k-means++ seeds; the best of ``n_init`` runs by inertia.

    Args:
        x: points, (N, D).
        num_clusters: K <= N.

    Returns:
        ``(centers, labels)``: (K, D) and (N,).
    """
    N = x.shape[0]
    if num_clusters > N:
        raise ValueError(f"expected at most N={N} clusters, got {num_clusters}")
    best = None
    for _ in range(n_init):
        first = torch.randint(N, (1,), generator=generator).item()
        centers = x[first : first + 1]
        for _ in range(1, num_clusters):
            d2 = torch.cdist(x, centers).square().min(1).values
            probs = d2 / d2.sum() if d2.sum() > 0 else torch.full_like(d2, 1.0 / N)
            nxt = torch.multinomial(probs.cpu().float(), 1, generator=generator).item()
            centers = torch.cat([centers, x[nxt : nxt + 1]])
        for _ in range(max_iter):
            labels = torch.cdist(x, centers).argmin(1)
            new = torch.stack(
                [
                    x[labels == k].mean(0) if (labels == k).any() else centers[k]
                    for k in range(num_clusters)
                ]
            )
            if torch.allclose(new, centers):
                break
            centers = new
        labels = torch.cdist(x, centers).argmin(1)
        inertia = (x - centers[labels]).square().sum()
        if best is None or inertia < best[0]:
            best = (inertia, centers, labels)
    return best[1], best[2]
