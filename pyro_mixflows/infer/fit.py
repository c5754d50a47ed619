"""``fit``: the training loop of the package, Pyro's ``SVI`` plus early stopping.

One step is what ``pyro.infer.SVI.step`` does (a loss, its gradients, an optimizer step on every
parameter the model and guide touched); around it: minibatches through subsampled plates, early
stopping on a held-out loss, a NaN/inf guard, atomic checkpoints that resume bit-identically,
seeds, device placement, Pyro's learning-rate schedulers, a custom loss, a per-step callback and
data-parallel training on ``torch.distributed`` (launched with torchrun; gradients averaged over
the ranks, as ``DistributedDataParallel`` does). Every model of the package trains through it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
from pyro.infer.elbo import ELBO
from pyro.optim import PyroOptim

from . import _distributed
from ._checkpoint import load_checkpoint, save_checkpoint
from ._result import FitResult
from ._training import Training

__all__ = ["FitResult", "fit", "load_checkpoint", "save_checkpoint"]


def fit(
    model: Callable,
    guide: Callable,
    *args: Any,
    loss: ELBO | Callable[..., torch.Tensor] | None = None,
    optim: PyroOptim | dict | None = None,
    num_steps: int = 1000,
    batch_size: int | None = None,
    val_args: tuple | None = None,
    patience: int | None = None,
    eval_every: int = 100,
    eval_initial: bool = False,
    schedule: str = "step",
    callback: Callable[[int, float], bool | None] | None = None,
    seed: int | None = None,
    device: str | torch.device | None = None,
    progress_bar: bool | str = False,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    distributed: bool = False,
    **kwargs: Any,
) -> FitResult:
    """Fit the parameters of a model/guide pair by stochastic variational inference.

    Each step minimizes a Monte Carlo estimate of the negative ELBO,

    .. math:: \\mathcal{L}(\\phi) = -\\mathbb{E}_{q_\\phi}\\Big[\\log p(\\theta)
              + \\frac{N}{B} \\sum_{i \\in \\text{batch}} \\log p(x_i, z_i \\mid \\theta)
              - \\log q_\\phi(\\cdot)\\Big],

    where a minibatch of B of the N rows enters through the plate ``pyro.plate("data", N,
    subsample=subsample)``: the loop calls ``model(*args, subsample=idx, **kwargs)`` and
    ``guide(*args, subsample=idx, **kwargs)`` with ``idx`` a LongTensor of B row indices (B rows
    of a fresh random permutation per epoch). Without ``batch_size`` no ``subsample`` keyword is
    passed (full batch), so any model works.

    Early stopping: with ``val_args``, the held-out loss ``loss.loss(model, guide, *val_args,
    **kwargs)`` is evaluated every ``eval_every`` steps (and after the last); the parameters of the
    best evaluation are kept and restored when training ends, and training stops after
    ``patience`` evaluations in a row without improvement. With ``patience`` but no ``val_args``
    the monitored loss is the mean training loss over each window of ``eval_every`` steps.

    NaN/inf guard: a non-finite loss or gradient raises ``FloatingPointError`` naming the step,
    before the update, so the parameters keep the values of the last good step (the exception
    carries the partial :class:`FitResult` as ``err.result``).

    Custom loss: instead of an ELBO, ``loss`` may be any callable ``loss(model, guide, *args,
    **kwargs)`` returning a differentiable scalar tensor (the convention of Pyro's ``SVI``), e.g. a
    closed-form ELBO; the parameters it trains are those it creates or reaches through
    ``pyro.param``/``pyro.module``, and the held-out loss is the same callable on ``val_args``.

    Learning-rate schedules: ``optim`` may be a Pyro scheduler (``pyro.optim.ExponentialLR``, ...).
    With ``schedule="step"`` (default) it is stepped after every update, with ``schedule="eval"``
    after every evaluation. ``pyro.optim.ReduceLROnPlateau`` is stepped at every evaluation with the
    monitored loss (it needs ``val_args`` or ``patience``). Schedulers are part of the checkpoint.

    Args:
        model: a Pyro model ``model(*args, subsample=None, **kwargs)``.
        guide: its guide, same signature.
        *args: data and other positional arguments; N is the first dimension of the first tensor.
        loss: a Pyro ``ELBO`` (default ``TraceEnum_ELBO(max_plate_nesting=1)``: enumerated discrete
            sites are summed out exactly) or a callable ``loss(model, guide, *args, **kwargs)``.
        optim: a ``pyro.optim`` optimizer or scheduler, or a dict of ``torch.optim.Adam`` options
            for ``pyro.optim.Adam`` (default ``{"lr": 1e-3}``).
        num_steps: total number of updates (>= 1), counting those before a resume.
        batch_size: rows per step (1 <= B <= N; per rank when distributed); None for full batch.
        val_args: positional arguments of the held-out set (tuple, or one tensor).
        patience: stop after this many evaluations without improvement (None: never stop early).
        eval_every: evaluate (and by default checkpoint) every this many steps.
        eval_initial: also evaluate ``val_args`` before the first update (step 0), so that a warm
            start which training does not improve is the state kept.
        schedule: when a scheduler ``optim`` is stepped: ``"step"`` or ``"eval"``.
        callback: ``callback(step, loss)`` after every update with the number of updates done and
            that step's training loss; returning True stops training (``stop_reason
            "callback"``; the best monitored state is still restored).
        seed: seeds ``pyro.set_rng_seed`` and the minibatch order (plus the rank when distributed);
            None keeps the current random state.
        device: move tensor arguments, ``nn.Module`` model/guide (or a bound method's module) and
            the parameters already in the param store to this device.
        progress_bar: a tqdm bar with the training and held-out loss per row; a string names the
            stage (``"fit: <name>"``); closed with why training stopped.
        checkpoint: file to write atomically every ``checkpoint_every`` steps and at the end: param
            store, optimizer state, step, RNG states, minibatch order, history and the buffers of an
            ``nn.Module`` model/guide (or a bound method's module).
        checkpoint_every: defaults to ``eval_every``.
        resume: if ``checkpoint`` exists, continue from it: a resumed run reproduces an
            uninterrupted one bit for bit.
        distributed: data-parallel training under torchrun (see :mod:`pyro_mixflows.infer`): every
            rank passes its own shard; the gradients are averaged over the ranks
            (``torch.distributed.all_reduce``, what ``DistributedDataParallel`` does) and the data
            plate is scaled by the world size, so the averaged loss is an unbiased estimate of the
            full-data ELBO.
        **kwargs: keyword arguments of model and guide.

    Returns:
        A :class:`FitResult`.

    Raises:
        ValueError: bad options or non-finite data, before any work.
        FloatingPointError: a non-finite loss or gradient during training.

    Example::

        >>> result = fit(model, guide, x, num_steps=200, batch_size=64, seed=0)
        >>> len(result.losses)
        200
    """
    training = Training(
        model, guide, args, kwargs, loss=loss, optim=optim, num_steps=num_steps,
        batch_size=batch_size, val_args=val_args, patience=patience, eval_every=eval_every,
        eval_initial=eval_initial, schedule=schedule, callback=callback, seed=seed, device=device,
        progress_bar=progress_bar, checkpoint=checkpoint, checkpoint_every=checkpoint_every,
        resume=resume, distributed=distributed,
    )  # fmt: skip
    created_group = False
    if distributed:
        training.device = _distributed.local_device(training.device)
        created_group = _distributed.init_process_group(training.device)
        if training.device is not None and training.device.type == "cuda":
            torch.cuda.set_device(training.device)
    try:
        return training.run()
    finally:
        if created_group:
            torch.distributed.destroy_process_group()
