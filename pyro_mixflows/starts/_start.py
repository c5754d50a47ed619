"""A start: a full-covariance Gaussian mixture, with hard labels of the rows it was made from."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..flows import FlowComponents

# Partition starts: ridge added to each cluster's covariance (in the data's units; the estimator
# works on standardized data), so that small clusters still give a positive-definite Cholesky
# factor.
LABEL_COVARIANCE_RIDGE = 1e-2


@dataclass
class Start:
    """A Gaussian mixture to start a mixture of flows from, and the partition of the rows it fits.

    ``FlowComponents(..., affine="full")`` with the flow layers at the identity (as built) *is*
    a full-covariance Gaussian per component, so placing a start in them (``components``,
    ``place``) makes the mixture of flows this Gaussian mixture before any training.

    Attributes:
        name: where it came from ("em", "em_diag", "em_dp", "spectral", "kmeans", ...).
        loc: (K, D) means.
        scale_tril: (K, D, D) Cholesky factors of the covariances.
        weights: (K,) mixing weights.
        labels: (N,) long, the component of each row the start was made from.

    Example::

        >>> start = spectral_start(x, 2)
        >>> components = start.components(num_layers=4, hidden_dims=(32, 32))
        >>> components.num_components, start.logits.shape
        (2, torch.Size([2]))
    """

    name: str
    loc: torch.Tensor
    scale_tril: torch.Tensor
    weights: torch.Tensor
    labels: torch.Tensor

    @property
    def num_components(self) -> int:
        return self.loc.shape[0]

    @property
    def logits(self) -> torch.Tensor:
        """log weights, (K,)."""
        return self.weights.clamp_min(1e-12).log()

    def components(
        self,
        *,
        flow: str = "spline_coupling",
        num_layers: int = 4,
        hidden_dims: Sequence[int] = (32, 32),
        **options,
    ) -> FlowComponents:
        """``FlowComponents(K, D, affine="full", ...)`` placed at this start: exactly its
        Gaussian mixture's components until the flow layers are trained. ``options`` go to
        ``FlowComponents`` (e.g. ``count_bins``)."""
        K, D = self.loc.shape
        components = FlowComponents(
            K, D, flow=flow, num_layers=num_layers, hidden_dims=hidden_dims, affine="full",
            **options,
        )  # fmt: skip
        components = components.to(device=self.loc.device, dtype=self.loc.dtype)
        self.place(components)
        return components

    def place(self, components: FlowComponents) -> None:
        """Set the full affine maps of ``components`` (K of them, ``affine="full"``) to this start."""
        if components.num_components != self.num_components:
            raise ValueError(
                f"expected FlowComponents with {self.num_components} components for this start, "
                f"got {components.num_components}"
            )
        components.set_gaussian(self.loc, self.scale_tril)

    def to(self, *args, **kwargs) -> Start:
        """The start on another device or dtype (as ``torch.Tensor.to``; labels stay long)."""
        return Start(
            self.name,
            self.loc.to(*args, **kwargs),
            self.scale_tril.to(*args, **kwargs),
            self.weights.to(*args, **kwargs),
            self.labels.to(device=self.loc.to(*args, **kwargs).device),
        )


def partition_start(
    x: torch.Tensor,
    labels: torch.Tensor,
    num_components: int | None = None,
    name: str = "partition",
) -> Start:
    """The Gaussian mixture of a partition: each cluster's mean and covariance (plus a small
    ridge), weights proportional to the cluster sizes (plus one).

    A cluster with fewer than two rows takes the moments of all rows.

    Args:
        x: rows, (N, D).
        labels: (N,) cluster of each row, in [0, K).
        num_components: K (default: ``labels.max() + 1``).
        name: the start's name.

    Returns:
        A :class:`Start` with x's dtype and device.
    """
    if x.dim() != 2 or labels.shape != x.shape[:1]:
        raise ValueError(
            f"expected x (N, D) and labels (N,), got {tuple(x.shape)} and {tuple(labels.shape)}"
        )
    K = int(labels.max()) + 1 if num_components is None else int(num_components)
    if bool((labels < 0).any()) or bool((labels >= K).any()):
        raise ValueError(f"expected labels in [0, {K}), got values outside it")
    D = x.shape[1]
    x64 = x.detach().to(torch.float64)
    labels = labels.to(x.device)
    eye = torch.eye(D, dtype=x64.dtype, device=x.device)
    locs, covs, counts = [], [], []
    for k in range(K):
        members = x64[labels == k]
        if len(members) < 2:
            members = x64
        locs.append(members.mean(0))
        covs.append(torch.cov(members.T).reshape(D, D) + LABEL_COVARIANCE_RIDGE * eye)
        counts.append(float((labels == k).sum()))
    chol = torch.linalg.cholesky(torch.stack(covs))
    weights = torch.tensor(counts, dtype=x64.dtype, device=x.device) + 1.0
    return Start(
        name,
        torch.stack(locs).to(x.dtype),
        chol.to(x.dtype),
        (weights / weights.sum()).to(x.dtype),
        labels.long(),
    )
