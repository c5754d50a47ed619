"""``fit``: one training loop for any Pyro model/guide pair.

Minibatches through subsampled plates, early stopping on a held-out ELBO, a NaN/inf guard, atomic
checkpoints that resume bit-identically, seeds, device placement, Pyro's learning-rate schedulers,
a custom loss and a per-step callback, and data-parallel training on ``torch.distributed`` (DDP
around Pyro's ``ELBO()(model, guide)`` module, launched with torchrun). Every model of the package
(the estimators and the boosted flows included) trains through this one loop.
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
from . import _compile, _distributed
from ._adam import all_finite
from ._checkpoint import (
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from ._fit_parts import (
    _BatchSampler,
    _buffers,
    _CallableLoss,
    _check_int,
    _check_keywords,
    _has_plate,
    _load_buffers,
    _make_optim,
    _modules,
    _restore,
    _snapshot,
    _tensors,
    _to,
    _unconstrained,
)

__all__ = ["FitResult", "fit", "load_checkpoint", "save_checkpoint"]

_SCHEDULES = ("step", "eval")


@dataclass
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
        compile_time: wall-clock seconds of the first compiled step, compile included (None when
            nothing was compiled in this call; see ``compile``).
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
    compile_time: float | None = None


def fit(
    model: Callable,
    guide: Callable,
    *args: Any,
    loss: ELBO | Callable[..., torch.Tensor] | None = None,
    optim: PyroOptim | dict | None = None,
    schedule: str = "step",
    callback: Callable[[int, float], bool | None] | None = None,
    eval_initial: bool = False,
    num_steps: int = 1000,
    batch_size: int | None = None,
    val_args: tuple | None = None,
    patience: int | None = None,
    eval_every: int = 100,
    seed: int | None = None,
    device: str | torch.device | None = None,
    progress_bar: bool = False,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    distributed: bool = False,
    compile: bool | str = False,
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
    weighted log-likelihood; the parameters it trains are those it creates or reaches through
    ``pyro.param``/``pyro.module``, and the held-out loss is the same callable on ``val_args``.

    Learning-rate schedules: ``optim`` may be a Pyro scheduler (``pyro.optim.ExponentialLR``,
    ``pyro.optim.StepLR``, ..., a ``PyroLRScheduler``). With ``schedule="step"`` (default) the
    scheduler is stepped after every update, so ``gamma`` of ``ExponentialLR`` is a per-update
    factor; with ``schedule="eval"`` after every evaluation (every ``eval_every`` updates).
    ``pyro.optim.ReduceLROnPlateau`` is stepped at every evaluation with the monitored loss (it
    needs ``val_args`` or ``patience``). The schedulers' state is part of the checkpoint.

    Callback: ``callback(step, loss)`` is called after every update with the number of updates
    done and that step's training loss; returning True stops training (``stop_reason
    "callback"``; the best monitored state is still restored).

    Defaults: ``TraceEnum_ELBO(max_plate_nesting=1)`` (enumerated discrete sites are summed out
    exactly; no plate-nesting guess) and ``pyro.optim.Adam({"lr": 1e-3})`` (one torch Adam per
    parameter, as in ``SVI``, with the updates of all parameters run as one call: a dict of
    options or None gives ``infer._adam.MultiTensorAdam``, the same update bit for bit).

    Args:
        model: a Pyro model ``model(*args, subsample=None, **kwargs)``.
        guide: its guide, same signature.
        *args: data and other positional arguments; N is the first dimension of the first tensor.
        loss: a Pyro ``ELBO`` (default ``TraceEnum_ELBO(max_plate_nesting=1)``) or a callable
            ``loss(model, guide, *args, **kwargs) -> scalar tensor`` (see above).
        optim: a ``pyro.optim`` optimizer or scheduler, or a dict of ``torch.optim.Adam``
            options.
        schedule: when a scheduler ``optim`` is stepped: ``"step"`` (after every update) or
            ``"eval"`` (after every evaluation); ignored for a plain optimizer.
        callback: ``callback(step, loss)`` after every update; True stops training.
        eval_initial: also evaluate ``val_args`` before the first update (step 0), so that a
            warm start which training does not improve is the state kept.
        num_steps: total number of updates (>= 1), counting those before a resume.
        batch_size: rows per step (1 <= B <= N; per rank when distributed); None for full batch.
        val_args: positional arguments of the held-out set (tuple, or one tensor).
        patience: stop after this many evaluations without improvement (None: never stop early).
        eval_every: evaluate (and by default checkpoint) every this many steps.
        seed: seeds ``pyro.set_rng_seed`` and the minibatch order (plus the rank when distributed);
            None keeps the current random state.
        device: move tensor arguments, ``nn.Module`` model/guide (or a bound method's module) and
            the parameters already in the param store to this device. Modules that a function
            model registers with ``pyro.module`` must be put there by the caller.
        progress_bar: show a tqdm progress bar with the training loss per row (the loss divided
            by N, the rows of the first tensor argument) and the held-out loss per row; a string
            names the stage in the bar (``"fit: <name>"``). When training ends the bar is closed
            at the step reached, with why it stopped (step limit, no improvement, or error).
        checkpoint: file to write (atomically) every ``checkpoint_every`` steps and at the end:
            param store, optimizer state, step, RNG states, minibatch order, history, and the
            buffers of an ``nn.Module`` model/guide (or a bound method's module), such as
            ``MixtureVAE.num_training_steps`` (the clock of its prior refits) or ``VMoNF.step``.
            Buffers of modules a function model registers with ``pyro.module`` are not saved.
        checkpoint_every: defaults to ``eval_every``.
        resume: if ``checkpoint`` exists, continue from it: a resumed run reproduces an
            uninterrupted one bit for bit.
        distributed: data-parallel training under torchrun (see :mod:`pyro_mixflows.infer`):
            every rank passes its own shard of the data; gradients are averaged by
            ``DistributedDataParallel`` and the data plate of each rank is scaled by the world size
            so the averaged loss is an unbiased estimate of the full-data ELBO.
        compile: ``torch.compile`` the ``component_log_probs`` of the ``FlowComponents`` inside
            an ``nn.Module`` model/guide (or a bound method's module) for the training steps:
            False (eager), True, or "auto" (compile once this call's eager steps have taken as
            long as a compile is expected to, if the remaining planned steps pay it back); see
            :mod:`pyro_mixflows.infer._compile`. A custom loss that names a
            whole-loss kernel (``VMoNF.exact_loss``) has that kernel compiled instead: the
            component pass and the rest of the loss in one graph. Held-out evaluations stay
            eager; with ``distributed=True`` only False and "auto" (which stays eager) are taken.
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
    # ---- checks, before any work
    _check_int("num_steps", num_steps, 1)
    _check_int("eval_every", eval_every, 1)
    if patience is not None:
        _check_int("patience", patience, 1)
    if checkpoint_every is not None:
        _check_int("checkpoint_every", checkpoint_every, 1)
    if checkpoint is None and (resume or checkpoint_every is not None):
        raise ValueError("expected a checkpoint path with resume or checkpoint_every, got None")
    if seed is not None:
        _check_int("seed", seed, 0)
    _compile.check_compile_option(compile)
    if distributed and compile is True:
        raise ValueError("expected compile 'auto' or False with distributed=True, got True")
    loss = TraceEnum_ELBO(max_plate_nesting=1) if loss is None else loss
    if not isinstance(loss, ELBO) and (not callable(loss) or isinstance(loss, type)):
        raise TypeError(
            "expected loss to be a pyro.infer ELBO or a callable loss(model, guide, *args, "
            f"**kwargs), got {type(loss).__name__}"
        )
    if not isinstance(loss, ELBO):
        loss = _CallableLoss(loss)
    differentiable = hasattr(loss, "differentiable_loss")
    if distributed and (not differentiable or isinstance(loss, _CallableLoss)):
        raise ValueError(
            f"expected an ELBO with differentiable_loss for distributed=True, got {type(loss).__name__}"
        )
    if eval_initial and val_args is None:
        raise ValueError("expected val_args with eval_initial=True, got None")
    if callback is not None and not callable(callback):
        raise TypeError(f"expected callback to be callable, got {type(callback).__name__}")
    if schedule not in _SCHEDULES:
        raise ValueError(f"expected schedule in {_SCHEDULES}, got {schedule!r}")
    optim = _make_optim(optim)
    plateau = isinstance(optim, PyroLRScheduler) and issubclass(
        optim.pt_scheduler_constructor, torch.optim.lr_scheduler.ReduceLROnPlateau
    )
    if plateau and val_args is None and patience is None:
        raise ValueError(
            "expected val_args or patience with pyro.optim.ReduceLROnPlateau (it is stepped with "
            "the monitored loss at each evaluation), got neither"
        )
    if val_args is not None and not isinstance(val_args, (tuple, list)):
        val_args = (val_args,)
    if "subsample" in kwargs and batch_size is not None:
        raise ValueError("expected either batch_size or a subsample keyword argument, got both")
    keywords = [*kwargs, *(["subsample"] if batch_size is not None else [])]
    for role, fn in (("model", model), ("guide", guide)):
        _check_keywords(role, fn, keywords)
    for name, t in [*_tensors(args, "args"), *_tensors(kwargs, "kwargs")]:
        check_finite(t, name)
    for name, t in _tensors(val_args, "val_args"):
        check_finite(t, name)
    first = next((a for a in args if torch.is_tensor(a) and a.dim() >= 1), None)
    n = None if first is None else first.shape[0]
    if batch_size is not None:
        if n is None:
            raise ValueError(
                "expected a tensor argument whose first dimension is N with batch_size"
            )
        _check_int("batch_size", batch_size, 1)
        if batch_size > n:
            raise ValueError(f"expected batch_size <= N = {n}, got {batch_size}")
    device = None if device is None else torch.device(device)

    created_group = False
    if distributed:
        device = _distributed.local_device(device)
        created_group = _distributed.init_process_group(device)
        if device is not None and device.type == "cuda":
            torch.cuda.set_device(device)
    try:
        return _fit(
            model, guide, args, kwargs, loss, optim, num_steps, batch_size, n, val_args, patience,
            eval_every, seed, device, progress_bar, checkpoint, checkpoint_every or eval_every,
            resume, distributed, differentiable, schedule, plateau, callback, eval_initial, compile,
        )  # fmt: skip
    finally:
        if created_group:
            torch.distributed.destroy_process_group()


def _fit(
    model, guide, args, kwargs, loss, optim, num_steps, batch_size, n, val_args, patience,
    eval_every, seed, device, progress_bar, checkpoint, checkpoint_every, resume, distributed,
    differentiable, schedule, plateau, callback, eval_initial, compile=False,
) -> FitResult:  # fmt: skip
    rank, world = (0, 1)
    if distributed:
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    if device is not None:
        args, kwargs, val_args = _to(args, device), _to(kwargs, device), _to(val_args, device)
        for module in _modules(model, guide):
            module.to(device)
        store = pyro.get_param_store()
        with torch.no_grad():
            for name in store.keys():
                p = store._params[name]
                if p.device != device:
                    p.data = p.data.to(device)  # in place: modules sharing it follow
    if seed is not None:
        pyro.set_rng_seed(seed + rank)
    base = seed if seed is not None else int(torch.randint(0, 2**62, ()).item())
    sampler = None
    if batch_size is not None:
        sampler = _BatchSampler(n, batch_size, torch.Generator().manual_seed(base + rank))
    index_device = next((t.device for _, t in _tensors(args, "")), device or torch.device("cpu"))

    run_model, run_guide = model, guide
    if distributed:
        rescale = _distributed.PlateRescale(_distributed.DATA_PLATE, float(world))
        run_model, run_guide = rescale(model), rescale(guide)

    def batch_kwargs(idx: torch.Tensor | None) -> dict:
        return kwargs if idx is None else {**kwargs, "subsample": idx.to(index_device)}

    # ---- one pass without gradients creates every parameter (lazily initialized ones included)
    warm_idx = None if sampler is None else torch.arange(batch_size)
    with poutine.trace(param_only=True) as capture, torch.no_grad():
        loss.loss(run_model, run_guide, *args, **batch_kwargs(warm_idx))
    params = list({id(p): p for p in _unconstrained(capture.trace)}.values())
    if distributed and not _has_plate(run_model, run_guide, args, batch_kwargs(warm_idx)):
        raise ValueError(
            f"expected a plate named {_distributed.DATA_PLATE!r} over the data for "
            "distributed=True (its sites are rescaled by the world size), got none"
        )

    history = FitResult()
    best: list[torch.Tensor] | None = None
    bad_evals, elapsed, start = 0, 0.0, 0
    if resume and checkpoint is not None and os.path.exists(checkpoint):
        state = load_checkpoint(checkpoint, optim=optim, map_location=device, restore_rng=False)
        saved = (state.get("extra") or {}).get("fit")
        if saved is None:
            raise ValueError(f"expected a checkpoint written by fit in {checkpoint!r}, got another")
        if len(saved["rng"]) != world:
            raise ValueError(
                f"expected a checkpoint from {world} process(es), got one from {len(saved['rng'])}"
            )
        start, history = state["step"], saved["history"]
        best, bad_evals, elapsed = saved["best"], saved["bad_evals"], saved["elapsed"]
        if best is not None:  # a parameter loaded under a newer name: its snapshot too
            names = [pyro.get_param_store().param_name(p) for p in params]
            factors = [state["renamed"].get(name, 1.0) for name in names]
            best = [f * b.to(p.device) for b, p, f in zip(best, params, factors, strict=True)]
        if "buffers" in saved:  # checkpoints from before buffers were saved: the module's own
            _load_buffers(_modules(model, guide), saved["buffers"])
        set_rng_state(saved["rng"][rank])
        if sampler is not None:
            sampler.load(saved["sampler"][rank])
    objective = None
    if distributed:
        objective = _distributed.wrap(loss, run_model, run_guide, params, device)
    elif differentiable:
        objective = loss(run_model, run_guide)  # Pyro's ELBOModule

    def val_loss() -> float:
        with torch.no_grad():
            value = torch.tensor(float(loss.loss(run_model, run_guide, *val_args, **kwargs)))
        return float(_distributed.all_mean(value.to(index_device))) if distributed else float(value)

    def save(step: int) -> None:
        local = (rng_state(), None if sampler is None else sampler.state())
        gathered = [local]
        if distributed:
            gathered = [None] * world
            torch.distributed.all_gather_object(gathered, local)
        if rank == 0:
            fit_state = {
                "history": history,
                "best": best,
                "bad_evals": bad_evals,
                "elapsed": time.perf_counter() - t0,
                "rng": [g[0] for g in gathered],
                "sampler": [g[1] for g in gathered],
                "buffers": _buffers(_modules(model, guide)),
            }
            save_checkpoint(checkpoint, optim=optim, step=step, extra={"fit": fit_state})
        if distributed:  # no rank runs ahead (e.g. into a resume) before the file is complete
            torch.distributed.barrier()

    bar = None
    if progress_bar and rank == 0:
        bar = _ProgressBar(progress_bar, num_steps, start, n, val_args)
    monitor = val_args is not None or patience is not None
    scheduler = optim if isinstance(optim, PyroLRScheduler) else None
    hot = _compile.HotPath(
        compile if not distributed else False,
        _modules(model, guide),
        num_steps - start,
        device,
        loss=loss,
    )
    t0 = time.perf_counter() - elapsed
    step, last_eval = start, (history.val_steps[-1] if history.val_steps else 0)
    if eval_initial and start == 0:
        history.best_loss, history.best_step = val_loss(), 0
        history.val_losses.append(history.best_loss)
        history.val_steps.append(0)
        best = _snapshot(params)
    try:
        while step < num_steps:
            idx = None if sampler is None else sampler.next()
            try:
                value = hot.step(step - start, _step, objective, loss, run_model, run_guide,
                                 optim, args, batch_kwargs(idx), distributed)  # fmt: skip
            except FloatingPointError as err:
                history.num_steps, history.time = step, time.perf_counter() - t0
                err.args = (f"at step {step} (after {step} good updates): {err.args[0]}",)
                err.result = history
                raise
            history.losses.append(value)
            step += 1
            if scheduler is not None and not plateau and schedule == "step":
                scheduler.step()
            if bar is not None:
                bar.step(step, value)
            stop = False
            if monitor and (step % eval_every == 0 or step == num_steps):
                if val_args is not None:
                    metric = val_loss()
                else:
                    metric = sum(history.losses[last_eval:]) / (step - last_eval)
                last_eval = step
                if bar is not None and val_args is not None:
                    bar.held_out(metric)
                history.val_losses.append(metric)
                history.val_steps.append(step)
                if history.best_loss is None or metric < history.best_loss:
                    history.best_loss, history.best_step = metric, step
                    best, bad_evals = _snapshot(params), 0
                else:
                    bad_evals += 1
                    if patience is not None and bad_evals >= patience:
                        history.stop_reason, history.converged, stop = "patience", True, True
                if plateau:
                    scheduler.step(metric)
            if scheduler is not None and not plateau and schedule == "eval":
                if step % eval_every == 0 or step == num_steps:
                    scheduler.step()
            if callback is not None and callback(step, value) and not stop:
                history.stop_reason, stop = "callback", True
            history.num_steps = step
            if checkpoint is not None and (
                step % checkpoint_every == 0 or stop or step == num_steps
            ):
                save(step)
            if stop:
                break
    except BaseException as err:
        if bar is not None:
            bar.close(history, step, patience, eval_every, error=err)
            bar = None
        raise
    finally:
        hot.close()
        history.compile_time = hot.compile_time
        if bar is not None:
            bar.close(history, step, patience, eval_every)
    if best is not None:
        _restore(params, best)
    history.time = time.perf_counter() - t0
    return history


class _ProgressBar:
    """The tqdm bar of :func:`fit`: named stage, loss per row, closed with why training stopped."""

    def __init__(self, name, num_steps: int, start: int, n: int | None, val_args) -> None:
        from tqdm import tqdm

        self.n = n or 1
        first = next((a for a in val_args or () if torch.is_tensor(a) and a.dim() >= 1), None)
        self.n_val = 1 if first is None else first.shape[0]
        self.every = max(1, num_steps // 100)
        self.postfix: dict[str, str] = {}
        desc = "fit" if name is True else f"fit: {name}"
        self.bar = tqdm(total=num_steps, initial=start, desc=desc, unit="step")

    def step(self, step: int, value: float) -> None:
        self.bar.update(1)
        if step % self.every == 0:
            self.postfix["loss/row"] = f"{value / self.n:.4g}"
            self.bar.set_postfix(self.postfix, refresh=False)

    def held_out(self, metric: float) -> None:
        self.postfix["held-out/row"] = f"{metric / self.n_val:.4g}"

    def close(self, history, step: int, patience, eval_every: int, error=None) -> None:
        if isinstance(error, FloatingPointError):
            reason = f"non-finite loss or gradient at step {step}"
        elif isinstance(error, KeyboardInterrupt):
            reason = "interrupted"
        elif error is not None:
            reason = f"error: {type(error).__name__}"
        elif history.stop_reason == "patience":
            reason = (
                f"early stop: no improvement in {patience} evaluations "
                f"({patience * eval_every} steps), best at step {history.best_step}"
            )
        elif history.stop_reason == "callback":
            reason = f"stopped by the callback at step {step}"
        else:
            reason = "step limit reached"
        if history.losses:
            self.postfix["loss/row"] = f"{history.losses[-1] / self.n:.4g}"
        self.postfix["stop"] = reason
        self.bar.total = step  # the bar ends where training ended: no stale ETA
        self.bar.set_postfix(self.postfix, refresh=False)
        self.bar.refresh()
        self.bar.close()


def _step(objective, loss, model, guide, optim, args, kwargs, distributed) -> float:
    """One update; raises FloatingPointError (before updating) on a non-finite loss or gradient."""
    with poutine.trace(param_only=True) as capture:
        if objective is not None:
            loss_t = objective(*args, **kwargs)
        else:  # ELBOs without differentiable_loss (e.g. TraceGraph_ELBO)
            value = float(loss.loss_and_grads(model, guide, *args, **kwargs))
    params = list({id(p): p for p in _unconstrained(capture.trace)}.values())
    if objective is not None:
        value_t = _distributed.all_mean(loss_t) if distributed else loss_t.detach()
        value = float(value_t)
        if not math.isfinite(value):
            raise FloatingPointError(f"non-finite loss {value}; no update was applied")
        loss_t.backward()
    elif not math.isfinite(value):
        zero_grads(params)
        raise FloatingPointError(f"non-finite loss {value}; no update was applied")
    grads = [p.grad for p in params if p.grad is not None]
    if grads and not all_finite(grads):
        store = pyro.get_param_store()
        names = [
            store.param_name(p)
            for p in params
            if p.grad is not None and not torch.isfinite(p.grad).all()
        ]
        zero_grads(params)
        raise FloatingPointError(f"non-finite gradient of {names}; no update was applied")
    optim(params)
    zero_grads(params)
    return value
