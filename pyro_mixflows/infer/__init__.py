"""Inference: the shared training loop, checkpoints, data-parallel SVI and latent-space MALA.

``fit(model, guide, *data, ...)`` trains any Pyro model/guide pair whose data plate is
``pyro.plate("data", N, subsample=subsample)``. Under torchrun, ``fit(..., distributed=True)``
trains data-parallel: each rank passes its shard (rows ``shard_range(N)``) and the gradients are
averaged over the ranks. ``LatentMALA`` samples a trained flow (or flow mixture) in its latent
space.
"""

from ._checkpoint import load_checkpoint, save_checkpoint
from ._distributed import shard_range
from .fit import FitResult, fit
from .mala import LatentMALA

__all__ = [
    "FitResult",
    "LatentMALA",
    "fit",
    "load_checkpoint",
    "save_checkpoint",
    "shard_range",
]
