"""Data-parallel SVI on ``torch.distributed``: every rank its shard, gradients averaged."""

from __future__ import annotations

import os
from collections.abc import Iterable

import torch
import torch.distributed as dist
from pyro.poutine.messenger import Messenger

DATA_PLATE = "data"


def shard_range(n: int, rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """Rows ``[start, stop)`` of an ``n``-row data set that rank ``rank`` of ``world_size`` reads.

    Contiguous shards whose sizes differ by at most one. ``rank`` and ``world_size`` default to
    the current process group (or torchrun's ``RANK`` / ``WORLD_SIZE``; 0 and 1 without either).

    Example::

        >>> shard_range(10, rank=1, world_size=3)
        (4, 7)
    """
    if rank is None or world_size is None:
        r, w = _rank_and_world()
        rank = r if rank is None else rank
        world_size = w if world_size is None else world_size
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(
            f"expected 0 <= rank < world_size, got rank={rank}, world_size={world_size}"
        )
    if n < world_size:
        raise ValueError(f"expected at least one row per rank, got n={n} for {world_size} ranks")
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def init_process_group(device: torch.device | None) -> bool:
    """Join torchrun's process group (gloo on CPU, NCCL on CUDA); True if this call created it."""
    if not dist.is_available():
        raise RuntimeError("expected a torch build with torch.distributed, got one without it")
    if dist.is_initialized():
        return False
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise ValueError(
            "expected distributed=True to run under torchrun (RANK and WORLD_SIZE set) or inside "
            "an initialized torch.distributed process group, got neither; launch with e.g. "
            "`torchrun --nproc_per_node 2 script.py`"
        )
    backend = "nccl" if device is not None and device.type == "cuda" else "gloo"
    dist.init_process_group(backend)
    return True


def local_device(device: torch.device | None) -> torch.device | None:
    """Pin a bare ``cuda`` device to this process's GPU (``LOCAL_RANK``)."""
    if device is not None and device.type == "cuda" and device.index is None:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device


class PlateRescale(Messenger):
    """Multiply the scale of every sample site inside the plate ``name`` by ``factor``.

    On R ranks that each hold a shard of N_r rows, the subsampled plate scales rank r's minibatch
    of b rows by N_r / b; multiplying by R makes the mean of the R rank losses (what DDP's gradient
    averaging differentiates) an unbiased estimate of the full-data ELBO:

    .. math:: \\frac{1}{R} \\sum_r \\Big[ g + R \\frac{N_r}{b} \\sum_{i \\in B_r} \\ell_i \\Big]
              = g + \\sum_r \\frac{N_r}{b} \\sum_{i \\in B_r} \\ell_i ,

    with g the global (prior) terms counted once. With equal shards this is the single-process
    ELBO of the global batch of R b rows with plate size N.
    """

    def __init__(self, name: str, factor: float) -> None:
        super().__init__()
        self.name = name
        self.factor = factor

    def _process_message(self, msg) -> None:
        if msg["type"] == "sample" and any(f.name == self.name for f in msg["cond_indep_stack"]):
            msg["scale"] = self.factor * msg["scale"]


def broadcast_parameters(params: Iterable[torch.Tensor]) -> None:
    """Give every rank rank 0's values of ``params`` (in place), before the first step."""
    with torch.no_grad():
        for p in params:
            dist.broadcast(p.data, src=0)


def average_gradients(params: Iterable[torch.Tensor]) -> None:
    """Replace every gradient of ``params`` by its mean over the ranks (in place).

    What ``DistributedDataParallel`` does for a module's parameters, here for every parameter a
    step touched: those of ``nn.Module`` s and those of ``pyro.param`` alike.
    """
    world = dist.get_world_size()
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(world)


def all_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over all ranks (a copy; every rank gets the same result)."""
    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / dist.get_world_size()
