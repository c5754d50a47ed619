"""Atomic checkpoints of Pyro's param store, an optimizer and the random number generators."""

from __future__ import annotations

import os
import tempfile
from typing import Any

import pyro
import pyro.util
import torch
from pyro.optim import PyroOptim

_FORMAT = "pyro_mixflows.checkpoint"
_VERSION = 1


def rng_state() -> dict[str, Any]:
    """The state of every generator a Pyro program draws from: torch (CPU and CUDA), random, numpy."""
    state = pyro.util.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore a state returned by :func:`rng_state`."""
    pyro.util.set_rng_state(state)
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def param_store_state() -> dict[str, Any]:
    """Detached copies of every unconstrained parameter in the param store, with constraints."""
    store = pyro.get_param_store()
    params = {name: store._params[name].detach().clone() for name in store.keys()}
    constraints = {name: store._constraints[name] for name in store.keys()}
    return {"params": params, "constraints": constraints}


def restore_param_store(state: dict[str, Any]) -> None:
    """Put saved unconstrained values back into the param store.

    Parameters that already exist are overwritten *in place* (``copy_``), so ``nn.Module`` s
    registered with ``pyro.module`` keep sharing their tensors with the store and every optimizer
    keeps pointing at live parameters. New names are added unchanged (bit-exact).
    """
    store = pyro.get_param_store()
    fresh_params, fresh_constraints = {}, {}
    for name, value in state["params"].items():
        if name in store:
            current = store._params[name]
            if current.shape != value.shape:
                raise ValueError(
                    f"expected parameter {name!r} of shape {tuple(current.shape)} in the checkpoint, "
                    f"got {tuple(value.shape)}; was the model built with other options?"
                )
            with torch.no_grad():
                current.copy_(value)
        else:
            fresh_params[name] = value.detach().clone().requires_grad_(True)
            fresh_constraints[name] = state["constraints"][name]
    if fresh_params:
        store.set_state({"params": fresh_params, "constraints": fresh_constraints})


def _load_optim_state(optim: PyroOptim, state: dict[str, Any]) -> None:
    """Load per-parameter optimizer states, also into optimizers that already exist."""
    from pyro.optim.optim import _load_state_dict

    store = pyro.get_param_store()
    pending = dict(state)
    for param, optimizer in optim.optim_objs.items():
        name = store.param_name(param)
        if name in pending:
            _load_state_dict(optimizer, pending.pop(name))
    optim.set_state(pending)  # consumed when the optimizer of that parameter is created


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, then ``os.replace`` it onto ``path``.

    A crash while writing leaves the previous file at ``path`` untouched and no temporary file behind.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(path) + "-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def save_checkpoint(
    path: str | os.PathLike,
    *,
    optim: PyroOptim | None = None,
    step: int | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write the param store, an optimizer's state and the RNG states to ``path``, atomically.

    The file is written to a temporary file in the same folder and moved onto ``path`` with
    ``os.replace``, so a half-written checkpoint never replaces a good one.

    Args:
        path: destination file.
        optim: a ``pyro.optim`` optimizer whose per-parameter state (Adam moments, step counts)
            is saved too.
        step: the number of optimization steps taken so far.
        extra: any picklable extra state (the fit loop stores its history here).

    Example::

        >>> pyro.param("loc", torch.zeros(2))
        >>> save_checkpoint("model.pt", step=0)
        >>> load_checkpoint("model.pt")["step"]
        0
    """
    state = {
        "format": _FORMAT,
        "version": _VERSION,
        "param_store": param_store_state(),
        "optim": None if optim is None else optim.get_state(),
        "step": step,
        "rng": rng_state(),
        "extra": extra,
    }
    atomic_save(state, path)


def load_checkpoint(
    path: str | os.PathLike,
    *,
    optim: PyroOptim | None = None,
    map_location: str | torch.device | None = None,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Restore a checkpoint written by :func:`save_checkpoint` (or by :func:`fit`).

    Parameters already in the param store (for instance registered by running the model once, or by
    ``pyro.module``) are overwritten in place, so modules keep sharing their parameters with the
    store; parameters not yet there are added. Call the model once before loading when it registers
    ``nn.Module`` s with ``pyro.module``: a module whose parameters were added by the checkpoint
    first would not see them (``pyro.module`` keeps the module's own tensors by default).

    Only load files you trust: the file is unpickled (``torch.load(weights_only=False)``), since it
    holds constraints and NumPy RNG states.

    Args:
        path: a checkpoint file.
        optim: a ``pyro.optim`` optimizer that receives the saved optimizer state.
        map_location: passed to ``torch.load`` (e.g. ``"cpu"`` to read a GPU checkpoint).
        restore_rng: also restore the torch / random / numpy (and CUDA) generators.

    Returns:
        The checkpoint dict, with keys ``"step"``, ``"extra"``, ``"param_store"``, ``"optim"``
        and ``"rng"``.

    Raises:
        ValueError: if the file is not a checkpoint of this format.
    """
    state = torch.load(os.fspath(path), map_location=map_location, weights_only=False)
    if not isinstance(state, dict) or state.get("format") != _FORMAT:
        raise ValueError(
            f"expected a pyro_mixflows checkpoint in {os.fspath(path)!r}, got something else"
        )
    restore_param_store(state["param_store"])
    if optim is not None and state["optim"] is not None:
        _load_optim_state(optim, state["optim"])
    if restore_rng:
        set_rng_state(state["rng"])
    return state
