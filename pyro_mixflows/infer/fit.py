"""``fit``: the training loop of the package, Pyro's ``SVI`` plus early stopping.

One step is what ``pyro.infer.SVI.step`` does (a loss, its gradients, an optimizer step on every
parameter the model and guide touched); around it: minibatches through subsampled plates, early
stopping on a held-out loss, a NaN/inf guard, atomic checkpoints that resume bit-identically,
seeds, device placement, Pyro's learning-rate schedulers, a custom loss, a per-step callback and
data-parallel training on ``torch.distributed`` (launched with torchrun; gradients averaged over
the ranks, as ``DistributedDataParallel`` does). Every model of the package trains through it.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.infer import TraceEnum_ELBO
from pyro.infer.elbo import ELBO
from pyro.infer.util import zero_grads
from pyro.optim import PyroOptim
from pyro.optim.lr_scheduler import PyroLRScheduler

from .._validation import check_finite
from . import _distributed
from ._checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from ._fit_parts import (
    BatchSampler,
    CallableLoss,
    ProgressBar,
    buffers,
    check_int,
    check_keywords,
    has_plate,
    load_buffers,
    make_optim,
    module_owners,
    restore,
    snapshot,
    tensors,
    to_device,
    unconstrained,
)

__all__ = ["FitResult", "fit", "load_checkpoint", "save_checkpoint"]

_SCHEDULES = ("step", "eval")


@dataclass(repr=False)
class FitResult:
    """What :func:`fit` did.

    Attributes:
        losses: the training loss (negative ELBO estimate, scaled to the full data) of every step.
            Under ``distributed=True`` it is the mean over ranks, i.e. the loss of the global batch.
        val_losses: the monitored loss at each evaluation: the held-out loss on ``val_args``, or,
            without ``val_args`` but with ``patience``, the mean training loss since the last one.
        val_steps: the step count (number of updates done) at each evaluation.
        best_step: step count of the best evaluation, whose parameters were restored (None when
            nothing was monitored).
        best_loss: the monitored loss there.
        converged: True when training stopped because the monitored loss stopped improving for
            ``patience`` evaluations.
        num_steps: the number of updates done (counting those before a resume).
        time: wall-clock seconds spent training (counting those before a resume).
        stop_reason: ``"num_steps"``, ``"patience"`` or ``"callback"``.
    """

    losses: list[float] = field(default_factory=list)
    val_losses: list[float] = field(default_factory=list)
    val_steps: list[int] = field(default_factory=list)
    best_step: int | None = None
    best_loss: float | None = None
    converged: bool = False
    num_steps: int = 0
    time: float = 0.0
    stop_reason: str = "num_steps"

    def __repr__(self) -> str:
        last = f"{self.losses[-1]:.6g}" if self.losses else None
        best = None if self.best_loss is None else f"{self.best_loss:.6g}"
        return (
            f"FitResult(num_steps={self.num_steps}, last_loss={last}, best_loss={best}, "
            f"best_step={self.best_step}, stop_reason={self.stop_reason!r}, "
            f"time={self.time:.2f}s)"
        )


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
    training = _Training(
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


class _Training:
    """One call of :func:`fit`: its checked options, then ``run`` (set-up, the loop, the result)."""

    def __init__(self, model, guide, args, kwargs, *, loss, optim, num_steps, batch_size, val_args,
                 patience, eval_every, eval_initial, schedule, callback, seed, device,
                 progress_bar, checkpoint, checkpoint_every, resume, distributed) -> None:  # fmt: skip
        check_int("num_steps", num_steps, 1)
        check_int("eval_every", eval_every, 1)
        if patience is not None:
            check_int("patience", patience, 1)
        if checkpoint_every is not None:
            check_int("checkpoint_every", checkpoint_every, 1)
        if checkpoint is None and (resume or checkpoint_every is not None):
            raise ValueError("expected a checkpoint path with resume or checkpoint_every, got None")
        if seed is not None:
            check_int("seed", seed, 0)
        loss = TraceEnum_ELBO(max_plate_nesting=1) if loss is None else loss
        if not isinstance(loss, ELBO) and (not callable(loss) or isinstance(loss, type)):
            raise TypeError(
                "expected loss to be a pyro.infer ELBO or a callable loss(model, guide, *args, "
                f"**kwargs), got {type(loss).__name__}"
            )
        if distributed and not (isinstance(loss, ELBO) and hasattr(loss, "differentiable_loss")):
            raise ValueError(
                f"expected an ELBO with differentiable_loss for distributed=True, got {loss!r}"
            )
        if not isinstance(loss, ELBO):
            loss = CallableLoss(loss)
        if eval_initial and val_args is None:
            raise ValueError("expected val_args with eval_initial=True, got None")
        if callback is not None and not callable(callback):
            raise TypeError(f"expected callback to be callable, got {type(callback).__name__}")
        if schedule not in _SCHEDULES:
            raise ValueError(f"expected schedule in {_SCHEDULES}, got {schedule!r}")
        optim = make_optim(optim)
        self.plateau = isinstance(optim, PyroLRScheduler) and issubclass(
            optim.pt_scheduler_constructor, torch.optim.lr_scheduler.ReduceLROnPlateau
        )
        if self.plateau and val_args is None and patience is None:
            raise ValueError(
                "expected val_args or patience with pyro.optim.ReduceLROnPlateau (it is stepped "
                "with the monitored loss at each evaluation), got neither"
            )
        if val_args is not None and not isinstance(val_args, (tuple, list)):
            val_args = (val_args,)
        if "subsample" in kwargs and batch_size is not None:
            raise ValueError("expected either batch_size or a subsample keyword argument, got both")
        keywords = [*kwargs, *(["subsample"] if batch_size is not None else [])]
        for role, fn in (("model", model), ("guide", guide)):
            check_keywords(role, fn, keywords)
        for name, t in [*tensors(args, "args"), *tensors(kwargs, "kwargs")]:
            check_finite(t, name)
        for name, t in tensors(val_args, "val_args"):
            check_finite(t, name)
        first = next((a for a in args if torch.is_tensor(a) and a.dim() >= 1), None)
        self.n = None if first is None else first.shape[0]
        if batch_size is not None:
            if self.n is None:
                raise ValueError(
                    "expected a tensor argument whose first dimension is N with batch_size"
                )
            check_int("batch_size", batch_size, 1)
            if batch_size > self.n:
                raise ValueError(f"expected batch_size <= N = {self.n}, got {batch_size}")
        self.model, self.guide, self.args, self.kwargs = model, guide, args, kwargs
        self.loss, self.optim, self.num_steps, self.batch_size = loss, optim, num_steps, batch_size
        self.val_args, self.patience, self.eval_every = val_args, patience, eval_every
        self.eval_initial, self.schedule, self.callback, self.seed = (
            eval_initial, schedule, callback, seed,
        )  # fmt: skip
        self.device = None if device is None else torch.device(device)
        self.progress_bar, self.checkpoint, self.resume = progress_bar, checkpoint, resume
        self.checkpoint_every = checkpoint_every or eval_every
        self.distributed = distributed

    # --- set-up ---------------------------------------------------------------------------
    def _place(self) -> None:
        """Tensors, modules and the param store's parameters to ``self.device``."""
        if self.device is None:
            return
        device = self.device
        self.args, self.kwargs = to_device(self.args, device), to_device(self.kwargs, device)
        self.val_args = to_device(self.val_args, device)
        for module in module_owners(self.model, self.guide):
            module.to(device)
        with torch.no_grad():
            for _, p in pyro.get_param_store().named_parameters():
                if p.device != device:
                    p.data = p.data.to(device)  # in place: modules sharing it follow

    def _batch_kwargs(self, idx: torch.Tensor | None) -> dict:
        return (
            self.kwargs if idx is None else {**self.kwargs, "subsample": idx.to(self.index_device)}
        )

    def _resume(self, params: list[torch.Tensor], history: FitResult):
        """Continue from ``self.checkpoint``: (first step, history, best, bad evals, elapsed)."""
        state = load_checkpoint(
            self.checkpoint, optim=self.optim, map_location=self.device, restore_rng=False
        )
        saved = (state.get("extra") or {}).get("fit")
        if saved is None:
            raise ValueError(
                f"expected a checkpoint written by fit in {self.checkpoint!r}, got another"
            )
        if len(saved["rng"]) != self.world:
            raise ValueError(
                f"expected a checkpoint from {self.world} process(es), got one from "
                f"{len(saved['rng'])}"
            )
        best = saved["best"]
        if best is not None:
            best = [b.to(p.device) for b, p in zip(best, params, strict=True)]
        load_buffers(module_owners(self.model, self.guide), saved["buffers"])
        set_rng_state(saved["rng"][self.rank])
        if self.sampler is not None:
            self.sampler.load(saved["sampler"][self.rank])
        return state["step"], saved["history"], best, saved["bad_evals"], saved["elapsed"]

    # --- the loop -------------------------------------------------------------------------
    def run(self) -> FitResult:
        self.rank, self.world = (0, 1)
        if self.distributed:
            self.rank = torch.distributed.get_rank()
            self.world = torch.distributed.get_world_size()
        self._place()
        if self.seed is not None:
            pyro.set_rng_seed(self.seed + self.rank)
        base = self.seed if self.seed is not None else int(torch.randint(0, 2**62, ()).item())
        self.sampler = None
        if self.batch_size is not None:
            generator = torch.Generator().manual_seed(base + self.rank)
            self.sampler = BatchSampler(self.n, self.batch_size, generator)
        cpu = torch.device("cpu")
        self.index_device = next((t.device for _, t in tensors(self.args, "")), self.device or cpu)
        model, guide = self.model, self.guide
        if self.distributed:
            rescale = _distributed.PlateRescale(_distributed.DATA_PLATE, float(self.world))
            model, guide = rescale(model), rescale(guide)

        # one pass without gradients creates every parameter (lazily initialized ones included)
        warm_idx = None if self.sampler is None else torch.arange(self.batch_size)
        with poutine.trace(param_only=True) as capture, torch.no_grad():
            self.loss.loss(model, guide, *self.args, **self._batch_kwargs(warm_idx))
        params = list({id(p): p for p in unconstrained(capture.trace)}.values())
        if self.distributed and not has_plate(
            model, guide, self.args, self._batch_kwargs(warm_idx)
        ):
            raise ValueError(
                f"expected a plate named {_distributed.DATA_PLATE!r} over the data for "
                "distributed=True (its sites are rescaled by the world size), got none"
            )
        history, best, bad_evals, elapsed, start = FitResult(), None, 0, 0.0, 0
        if self.resume and self.checkpoint is not None and os.path.exists(self.checkpoint):
            start, history, best, bad_evals, elapsed = self._resume(params, history)
        self.run_model, self.run_guide = model, guide
        if self.distributed:
            _distributed.broadcast_parameters(params)
        if hasattr(self.loss, "differentiable_loss"):
            objective = self.loss(model, guide)  # Pyro's ELBOModule, or the custom loss
        else:  # ELBOs without differentiable_loss (TraceGraph_ELBO, RenyiELBO): as SVI does
            objective = None
        t0 = time.perf_counter() - elapsed
        bar = None
        if self.progress_bar and self.rank == 0:
            bar = ProgressBar(self.progress_bar, self.num_steps, start, self.n, self.val_args)
        monitor = self.val_args is not None or self.patience is not None
        scheduler = self.optim if isinstance(self.optim, PyroLRScheduler) else None
        step, last_eval = start, (history.val_steps[-1] if history.val_steps else 0)
        if self.eval_initial and start == 0:
            history.best_loss, history.best_step = self._val_loss(model, guide), 0
            history.val_losses.append(history.best_loss)
            history.val_steps.append(0)
            best = snapshot(params)
        try:
            while step < self.num_steps:
                idx = None if self.sampler is None else self.sampler.next()
                try:
                    value = self._step(objective, self._batch_kwargs(idx))
                except FloatingPointError as err:
                    history.num_steps, history.time = step, time.perf_counter() - t0
                    err.args = (f"at step {step} (after {step} good updates): {err.args[0]}",)
                    err.result = history
                    raise
                history.losses.append(value)
                step += 1
                if scheduler is not None and not self.plateau and self.schedule == "step":
                    scheduler.step()
                if bar is not None:
                    bar.step(step, value)
                stop = False
                at_eval = step % self.eval_every == 0 or step == self.num_steps
                if monitor and at_eval:
                    if self.val_args is not None:
                        metric = self._val_loss(model, guide)
                    else:
                        metric = sum(history.losses[last_eval:]) / (step - last_eval)
                    last_eval = step
                    if bar is not None and self.val_args is not None:
                        bar.held_out(metric)
                    history.val_losses.append(metric)
                    history.val_steps.append(step)
                    if history.best_loss is None or metric < history.best_loss:
                        history.best_loss, history.best_step = metric, step
                        best, bad_evals = snapshot(params), 0
                    else:
                        bad_evals += 1
                        if self.patience is not None and bad_evals >= self.patience:
                            history.stop_reason, history.converged, stop = "patience", True, True
                    if self.plateau:
                        scheduler.step(metric)
                if scheduler is not None and not self.plateau and self.schedule == "eval":
                    if at_eval:
                        scheduler.step()
                if self.callback is not None and self.callback(step, value) and not stop:
                    history.stop_reason, stop = "callback", True
                history.num_steps = step
                if self.checkpoint is not None and (
                    step % self.checkpoint_every == 0 or stop or step == self.num_steps
                ):
                    self._save(step, history, best, bad_evals, time.perf_counter() - t0)
                if stop:
                    break
        except BaseException as err:
            if bar is not None:
                bar.close(history, step, self.patience, self.eval_every, error=err)
                bar = None
            raise
        finally:
            if bar is not None:
                bar.close(history, step, self.patience, self.eval_every)
        if best is not None:
            restore(params, best)
        history.time = time.perf_counter() - t0
        return history

    def _val_loss(self, model, guide) -> float:
        with torch.no_grad():
            value = torch.tensor(float(self.loss.loss(model, guide, *self.val_args, **self.kwargs)))
        if self.distributed:
            return float(_distributed.all_mean(value.to(self.index_device)))
        return float(value)

    def _save(self, step: int, history: FitResult, best, bad_evals: int, elapsed: float) -> None:
        local = (rng_state(), None if self.sampler is None else self.sampler.state())
        gathered = [local]
        if self.distributed:
            gathered = [None] * self.world
            torch.distributed.all_gather_object(gathered, local)
        if self.rank == 0:
            fit_state = {
                "history": history,
                "best": best,
                "bad_evals": bad_evals,
                "elapsed": elapsed,
                "rng": [g[0] for g in gathered],
                "sampler": [g[1] for g in gathered],
                "buffers": buffers(module_owners(self.model, self.guide)),
            }
            save_checkpoint(self.checkpoint, optim=self.optim, step=step, extra={"fit": fit_state})
        if self.distributed:  # no rank runs ahead (e.g. into a resume) before the file is complete
            torch.distributed.barrier()

    def _step(self, objective, kwargs: dict) -> float:
        """One update; raises FloatingPointError (before updating) on a non-finite loss or
        gradient."""
        with poutine.trace(param_only=True) as capture:
            if objective is None:
                value = float(self.loss.loss_and_grads(self.run_model, self.run_guide,
                                                       *self.args, **kwargs))  # fmt: skip
            else:
                loss_t = objective(*self.args, **kwargs)
        params = list({id(p): p for p in unconstrained(capture.trace)}.values())
        if objective is not None:
            value = float(_distributed.all_mean(loss_t) if self.distributed else loss_t.detach())
        if not math.isfinite(value):
            zero_grads(params)
            raise FloatingPointError(f"non-finite loss {value}; no update was applied")
        if objective is not None:
            loss_t.backward()
        if self.distributed:
            _distributed.average_gradients(params)
        grads = [p.grad for p in params if p.grad is not None]
        # the largest absolute gradient entry: finite exactly when every entry is (NaN included)
        if grads and not bool(torch.nn.utils.get_total_norm(grads, math.inf).isfinite()):
            store = pyro.get_param_store()
            names = [
                store.param_name(p)
                for p in params
                if p.grad is not None and not torch.isfinite(p.grad).all()
            ]
            zero_grads(params)
            raise FloatingPointError(f"non-finite gradient of {names}; no update was applied")
        self.optim(params)
        zero_grads(params)
        return value
