"""Inference: the shared training loop, checkpoints and data-parallel SVI.

``fit(model, guide, *data, ...)`` trains any Pyro model/guide pair whose data plate is
``pyro.plate("data", N, subsample=subsample)``. Under torchrun, ``fit(..., distributed=True)``
trains data-parallel: each rank passes its shard (rows ``shard_range(N)``) and
``DistributedDataParallel`` averages the gradients of Pyro's ``ELBO()(model, guide)`` module.
"""

from ._checkpoint import load_checkpoint, save_checkpoint
from ._distributed import shard_range
from .fit import FitResult, fit

__all__ = ["FitResult", "fit", "load_checkpoint", "save_checkpoint", "shard_range"]
