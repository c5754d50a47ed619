"""One call of :func:`~pyro_mixflows.infer.fit`: its checked options, set-up, the loop and the result."""

from __future__ import annotations

import math
import os
import time

import pyro
import torch
from pyro import poutine
from pyro.infer import TraceEnum_ELBO
from pyro.infer.elbo import ELBO
from pyro.infer.util import zero_grads
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
from ._result import FitResult

_SCHEDULES = ("step", "eval")


class Training:
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
