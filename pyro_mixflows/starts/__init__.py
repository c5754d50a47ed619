"""Starts: where a mixture of flows begins, a Gaussian mixture placed in its components.

A flow mixture trained from scratch lets its components overlap and cut clusters at arbitrary
places; started from a good Gaussian mixture it refines one. ``FlowComponents(..., affine="full")``
with its flow layers at the identity is exactly a full-covariance Gaussian per component, so a
:class:`Start` (means, Cholesky factors, weights and the hard labels of the rows) placed in it makes
the mixture of flows that Gaussian mixture before training:

- :func:`em_start`: EM's maximum-likelihood Gaussian mixture (scikit-learn's ``GaussianMixture``),
  the right start where clusters are roughly elliptical;
- :func:`spectral_start`: the moments of a spectral partition (clusters joined through dense
  regions, e.g. moons, rings, spiral arms, which EM cuts across);
- :func:`kmeans_start`, :func:`partition_start`: the moments of k-means' or any partition.

Example::

    >>> start = spectral_start(x, 2, generator=torch.Generator().manual_seed(0))
    >>> components, logits = start.components(num_layers=4), start.logits
"""

from __future__ import annotations

import torch

from ._em import choose_covariance, choose_num_components, em_start
from ._kmeans import kmeans
from ._partition import (
    INIT_METHODS,
    eigengap_num_clusters,
    initial_labels,
    match_to_classes,
    ncut_per_cluster,
    normalized_cut,
    spectral_labels,
    sweep_bisection,
)
from ._start import Start, partition_start

__all__ = [
    "INIT_METHODS",
    "Start",
    "choose_covariance",
    "choose_num_components",
    "eigengap_num_clusters",
    "em_start",
    "initial_labels",
    "kmeans",
    "kmeans_start",
    "match_to_classes",
    "ncut_per_cluster",
    "normalized_cut",
    "partition_start",
    "spectral_labels",
    "spectral_start",
    "sweep_bisection",
]


def spectral_start(
    x: torch.Tensor, num_components: int, *, generator: torch.Generator | None = None
) -> Start:
    """The Gaussian mixture of the spectral partition of x (N, D) (``spectral_labels``: clusters
    that follow manifolds such as moons and rings)."""
    labels = initial_labels(x, num_components, "spectral", generator=generator)
    return partition_start(x, labels, num_components, name="spectral")


def kmeans_start(
    x: torch.Tensor, num_components: int, *, generator: torch.Generator | None = None
) -> Start:
    """The Gaussian mixture of k-means' partition of x (N, D) (k-means++ with restarts)."""
    labels = initial_labels(x, num_components, "kmeans", generator=generator)
    return partition_start(x, labels, num_components, name="kmeans")
