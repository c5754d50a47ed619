"""``fit``: one training loop for any Pyro model/guide pair.

Minibatches through subsampled plates, early stopping on a held-out ELBO, a NaN/inf guard, atomic
checkpoints that resume bit-identically, seeds, device placement, and data-parallel training on
``torch.distributed`` (DDP around Pyro's ``ELBO()(model, guide)`` module, launched with torchrun).
"""

from __future__ import annotations

import inspect
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
from torch import nn

from .._validation import check_finite
from . import _compile, _distributed
from ._checkpoint import (
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)

__all__ = ["FitResult", "fit", "load_checkpoint", "save_checkpoint"]

DEFAULT_LR = 1e-3
_ADAM_OPTIONS = frozenset(inspect.signature(torch.optim.Adam).parameters) - {"params"}


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
        stop_reason: ``"num_steps"`` or ``"patience"``.
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


class _BatchSampler:
    """Row indices for minibatches: a fresh random permutation per epoch, cut into batches.

    Each batch is marginally a uniform random subset of the rows, so the subsampled ELBO is
    unbiased; the incomplete tail of an epoch is dropped so every step has the same scale.
    """

    def __init__(self, n: int, batch_size: int, generator: torch.Generator) -> None:
        self.n, self.batch_size, self.generator = n, batch_size, generator
        self.perm: torch.Tensor | None = None
        self.cursor = 0

    def next(self) -> torch.Tensor:
        if self.perm is None or self.cursor + self.batch_size > self.n:
            self.perm = torch.randperm(self.n, generator=self.generator)  # (N,)
            self.cursor = 0
        batch = self.perm[self.cursor : self.cursor + self.batch_size]  # (B,)
        self.cursor += self.batch_size
        return batch

    def state(self) -> dict[str, Any]:
        perm = None if self.perm is None else self.perm.clone()
        return {"generator": self.generator.get_state(), "perm": perm, "cursor": self.cursor}

    def load(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.perm, self.cursor = state["perm"], state["cursor"]


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"expected {name} to be an int >= {low}, got {value!r}")


def _tensors(obj: Any, name: str):
    """(name, tensor) for every tensor in nested tuples / lists / dicts."""
    if torch.is_tensor(obj):
        yield name, obj
    elif isinstance(obj, (tuple, list)):
        for i, item in enumerate(obj):
            yield from _tensors(item, f"{name}[{i}]")
    elif isinstance(obj, dict):
        for key, item in obj.items():
            yield from _tensors(item, f"{name}[{key!r}]")


def _to(obj: Any, device: torch.device) -> Any:
    if torch.is_tensor(obj):
        return obj.to(device)
    if isinstance(obj, tuple):
        return tuple(_to(item, device) for item in obj)
    if isinstance(obj, list):
        return [_to(item, device) for item in obj]
    if isinstance(obj, dict):
        return {key: _to(item, device) for key, item in obj.items()}
    return obj


def _modules(*fns: Callable) -> list[nn.Module]:
    """The nn.Modules behind model and guide (the callables themselves, or a bound method's owner)."""
    found = []
    for fn in fns:
        if isinstance(fn, nn.Module):
            found.append(fn)
        elif inspect.ismethod(fn) and isinstance(fn.__self__, nn.Module):
            found.append(fn.__self__)
    return found


def _check_keywords(role: str, fn: Callable, keywords: list[str]) -> None:
    """Refuse keywords that ``fn`` cannot take (a misspelt fit option lands in **kwargs)."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # not introspectable: let the call decide
        return
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return
    accepted = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    for key in keywords:
        if key not in accepted:
            hint = (
                "; with batch_size the model and guide take subsample=None and pass it to "
                'pyro.plate("data", N, subsample=subsample)'
                if key == "subsample"
                else " (neither a fit option nor an argument of the model)"
            )
            raise ValueError(f"expected {role} to accept the keyword {key!r}, got {fn!r}{hint}")


def _make_optim(optim: Any) -> PyroOptim:
    if optim is None:
        return pyro.optim.Adam({"lr": DEFAULT_LR})
    if isinstance(optim, PyroOptim):
        return optim
    if isinstance(optim, dict):
        unknown = sorted(set(optim) - _ADAM_OPTIONS)
        if unknown:
            raise ValueError(
                f"expected Adam options among {sorted(_ADAM_OPTIONS)}, got unknown options {unknown}"
            )
        return pyro.optim.Adam(dict(optim))
    raise TypeError(
        "expected optim to be None, a dict of Adam options or a pyro.optim optimizer "
        f"(e.g. pyro.optim.ClippedAdam), got {type(optim).__name__}"
    )


def _snapshot(params: list[torch.Tensor]) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


def _restore(params: list[torch.Tensor], values: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for p, v in zip(params, values, strict=True):
            p.copy_(v)


def fit(
    model: Callable,
    guide: Callable,
    *args: Any,
    loss: ELBO | None = None,
    optim: PyroOptim | dict | None = None,
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

    Defaults: ``TraceEnum_ELBO(max_plate_nesting=1)`` (enumerated discrete sites are summed out
    exactly; no plate-nesting guess) and ``pyro.optim.Adam({"lr": 1e-3})`` (one torch Adam per
    parameter, as in ``SVI``).

    Args:
        model: a Pyro model ``model(*args, subsample=None, **kwargs)``.
        guide: its guide, same signature.
        *args: data and other positional arguments; N is the first dimension of the first tensor.
        loss: a Pyro ``ELBO`` (default ``TraceEnum_ELBO(max_plate_nesting=1)``).
        optim: a ``pyro.optim`` optimizer or a dict of ``torch.optim.Adam`` options.
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
        progress_bar: show a tqdm progress bar with the current loss.
        checkpoint: file to write (atomically) every ``checkpoint_every`` steps and at the end:
            param store, optimizer state, step, RNG states, minibatch order and history.
        checkpoint_every: defaults to ``eval_every``.
        resume: if ``checkpoint`` exists, continue from it: a resumed run reproduces an
            uninterrupted one bit for bit.
        distributed: data-parallel training under torchrun (see :mod:`pyro_mixflows.infer`):
            every rank passes its own shard of the data; gradients are averaged by
            ``DistributedDataParallel`` and the data plate of each rank is scaled by the world size
            so the averaged loss is an unbiased estimate of the full-data ELBO.
        compile: ``torch.compile`` the ``component_log_probs`` of the ``FlowComponents`` inside
            an ``nn.Module`` model/guide (or a bound method's module) for the training steps:
            False (eager), True, or "auto" (compile only when the planned steps pay for the
            compile time); see :mod:`pyro_mixflows.infer._compile`. Held-out evaluations stay
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
    if not isinstance(loss, ELBO):
        raise TypeError(f"expected loss to be a pyro.infer ELBO, got {type(loss).__name__}")
    differentiable = hasattr(loss, "differentiable_loss")
    if distributed and not differentiable:
        raise ValueError(
            f"expected an ELBO with differentiable_loss for distributed=True, got {type(loss).__name__}"
        )
    optim = _make_optim(optim)
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
            resume, distributed, differentiable, compile,
        )  # fmt: skip
    finally:
        if created_group:
            torch.distributed.destroy_process_group()


def _fit(
    model, guide, args, kwargs, loss, optim, num_steps, batch_size, n, val_args, patience,
    eval_every, seed, device, progress_bar, checkpoint, checkpoint_every, resume, distributed,
    differentiable, compile=False,
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
        if best is not None:
            best = [b.to(p.device) for b, p in zip(best, params, strict=True)]
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
            }
            save_checkpoint(checkpoint, optim=optim, step=step, extra={"fit": fit_state})
        if distributed:  # no rank runs ahead (e.g. into a resume) before the file is complete
            torch.distributed.barrier()

    bar = None
    if progress_bar and rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=num_steps, initial=start, desc="fit", unit="step")
    monitor = val_args is not None or patience is not None
    hot = _compile.HotPath(
        compile if not distributed else False, _modules(model, guide), num_steps - start, device
    )
    t0 = time.perf_counter() - elapsed
    step, last_eval = start, (history.val_steps[-1] if history.val_steps else 0)
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
            if bar is not None:
                bar.update(1)
                if step % max(1, num_steps // 100) == 0 or step == num_steps:
                    bar.set_postfix(loss=f"{value:.4g}")
            stop = False
            if monitor and (step % eval_every == 0 or step == num_steps):
                if val_args is not None:
                    metric = val_loss()
                else:
                    metric = sum(history.losses[last_eval:]) / (step - last_eval)
                last_eval = step
                history.val_losses.append(metric)
                history.val_steps.append(step)
                if history.best_loss is None or metric < history.best_loss:
                    history.best_loss, history.best_step = metric, step
                    best, bad_evals = _snapshot(params), 0
                else:
                    bad_evals += 1
                    if patience is not None and bad_evals >= patience:
                        history.stop_reason, history.converged, stop = "patience", True, True
            history.num_steps = step
            if checkpoint is not None and (
                step % checkpoint_every == 0 or stop or step == num_steps
            ):
                save(step)
            if stop:
                break
    finally:
        hot.close()
        history.compile_time = hot.compile_time
        if bar is not None:
            bar.close()
    if best is not None:
        _restore(params, best)
    history.time = time.perf_counter() - t0
    return history


def _unconstrained(trace) -> list[torch.Tensor]:
    return [
        site["value"].unconstrained() for site in trace.nodes.values() if site["type"] == "param"
    ]


def _has_plate(model, guide, args, kwargs) -> bool:
    with torch.no_grad():
        tr = poutine.trace(poutine.block(model, hide_types=["param"])).get_trace(*args, **kwargs)
    return any(
        f.name == _distributed.DATA_PLATE
        for site in tr.nodes.values()
        if site["type"] == "sample"
        for f in site["cond_indep_stack"]
    )


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
    if grads and not bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()):
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
