"""The pieces of :func:`pyro_mixflows.infer.fit` that are not the loop: minibatch order, option
checks, moving arguments to a device, parameter snapshots, the custom-loss adapter."""

from __future__ import annotations

import functools
import inspect
import numbers
from collections.abc import Callable
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.optim import PyroOptim
from torch import nn

from . import _distributed

DEFAULT_LR = 1e-3
_ADAM_OPTIONS = frozenset(inspect.signature(torch.optim.Adam).parameters) - {"params"}


class BatchSampler:
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


def check_int(name: str, value: Any, low: int) -> None:
    # Any integral number (a NumPy integer too), never a bool.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"expected {name} to be an int >= {low}, got {value!r}")


def tensors(obj: Any, name: str):
    """(name, tensor) for every tensor in nested tuples / lists / dicts."""
    if torch.is_tensor(obj):
        yield name, obj
    elif isinstance(obj, (tuple, list)):
        for i, item in enumerate(obj):
            yield from tensors(item, f"{name}[{i}]")
    elif isinstance(obj, dict):
        for key, item in obj.items():
            yield from tensors(item, f"{name}[{key!r}]")


def to_device(obj: Any, device: torch.device) -> Any:
    if torch.is_tensor(obj):
        return obj.to(device)
    if isinstance(obj, tuple):
        return tuple(to_device(item, device) for item in obj)
    if isinstance(obj, list):
        return [to_device(item, device) for item in obj]
    if isinstance(obj, dict):
        return {key: to_device(item, device) for key, item in obj.items()}
    return obj


def module_owners(*fns: Callable) -> list[nn.Module]:
    """The nn.Modules behind model and guide (the callables themselves, or a bound method's owner)."""
    found = []
    for fn in fns:
        if isinstance(fn, nn.Module):
            found.append(fn)
        elif inspect.ismethod(fn) and isinstance(fn.__self__, nn.Module):
            found.append(fn.__self__)
    return found


def buffers(modules: list[nn.Module]) -> dict[str, torch.Tensor]:
    """Copies of the modules' buffers by ``"i:name"``, i the module's place among distinct ones.

    Buffers are module state outside the param store (a step counter such as
    ``MixtureVAE.num_training_steps`` or ``VMoNF.step``); fit's checkpoints keep them so that a
    resumed run continues from them instead of from the fresh module's values.
    """
    distinct = list({id(m): m for m in modules}.values())
    return {
        f"{i}:{name}": buffer.detach().clone()
        for i, module in enumerate(distinct)
        for name, buffer in module.named_buffers()
    }


def load_buffers(modules: list[nn.Module], saved: dict[str, torch.Tensor]) -> None:
    """Copy buffers saved by :func:`buffers` back into the modules, in place."""
    current = {f"{i}:{name}": b for i, m in enumerate({id(m): m for m in modules}.values())
               for name, b in m.named_buffers()}  # fmt: skip
    if current.keys() != saved.keys():
        raise ValueError(
            f"expected the checkpoint's module buffers {sorted(saved)}, got a model and guide "
            f"with {sorted(current)}; was the model built with other options?"
        )
    with torch.no_grad():
        for key, value in saved.items():
            if current[key].shape != value.shape:
                raise ValueError(
                    f"expected buffer {key!r} of shape {tuple(current[key].shape)} in the "
                    f"checkpoint, got {tuple(value.shape)}; was the model built with other options?"
                )
            current[key].copy_(value)


def check_keywords(role: str, fn: Callable, keywords: list[str]) -> None:
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


def make_optim(optim: Any) -> PyroOptim:
    """``pyro.optim.Adam`` from None or a dict of Adam options; a ``pyro.optim`` object as it is."""
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
    if isinstance(optim, (torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler)) or (
        isinstance(optim, torch.optim.lr_scheduler.ReduceLROnPlateau)
    ):
        raise TypeError(
            "expected a pyro.optim wrapper (parameters are created lazily, so fit builds the torch "
            "objects itself), got a torch object "
            f"{type(optim).__name__}: pass e.g. pyro.optim.Adam({{'lr': 1e-3}}) or "
            "pyro.optim.ExponentialLR({'optimizer': torch.optim.Adam, 'optim_args': {'lr': 1e-3}, "
            "'gamma': 0.999})"
        )
    raise TypeError(
        "expected optim to be None, a dict of Adam options or a pyro.optim optimizer or "
        f"scheduler (e.g. pyro.optim.ClippedAdam), got {type(optim).__name__}"
    )


def snapshot(params: list[torch.Tensor]) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


def restore(params: list[torch.Tensor], values: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for p, v in zip(params, values, strict=True):
            p.copy_(v)


class CallableLoss:
    """A callable ``loss(model, guide, *args, **kwargs) -> scalar tensor`` with the methods of an
    ELBO that :func:`fit` calls: ``loss``, ``differentiable_loss`` and ``loss(model, guide)``, the
    objective of one step."""

    def __init__(self, fn: Callable[..., torch.Tensor]) -> None:
        self.fn = fn

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        value = self.fn(model, guide, *args, **kwargs)
        if not torch.is_tensor(value) or value.numel() != 1:
            raise TypeError(
                f"expected the loss callable to return a scalar tensor, got {value!r:.80}"
            )
        return value.reshape(())

    def loss(self, model, guide, *args, **kwargs) -> float:
        return float(self.differentiable_loss(model, guide, *args, **kwargs).detach())

    def __call__(self, model, guide) -> Callable[..., torch.Tensor]:
        return functools.partial(self.differentiable_loss, model, guide)

    def __repr__(self) -> str:
        return f"loss {self.fn!r}"


def unconstrained(trace) -> list[torch.Tensor]:
    return [
        site["value"].unconstrained() for site in trace.nodes.values() if site["type"] == "param"
    ]


def has_plate(model, guide, args, kwargs) -> bool:
    with torch.no_grad():
        tr = poutine.trace(poutine.block(model, hide_types=["param"])).get_trace(*args, **kwargs)
    return any(
        f.name == _distributed.DATA_PLATE
        for site in tr.nodes.values()
        if site["type"] == "sample"
        for f in site["cond_indep_stack"]
    )


class ProgressBar:
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
