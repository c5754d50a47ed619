"""Atomic checkpoints of Pyro's param store, an optimizer and the random number generators.

A checkpoint holds tensors and plain Python values only, so that :func:`load_checkpoint` reads it
with ``torch.load(weights_only=True)`` (no unpickling of arbitrary objects). What is not plain is
written as a tagged dict of plain values and rebuilt on loading from an allow-list: constraints
(classes of ``torch.distributions.constraints`` / ``pyro.distributions.constraints``), NumPy
arrays (as tensors) and :class:`~pyro_mixflows.infer.FitResult`.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import pickle
import re
import tempfile
import warnings
from typing import Any

import numpy as np
import pyro
import pyro.util
import torch
from pyro.optim import PyroOptim
from torch.distributions.constraints import Constraint

_FORMAT = "pyro_mixflows.checkpoint"
_VERSION = 2  # 1: pickled (weights_only=False); 2: tensors and plain values only
_CONSTRAINT_MODULES = ("torch.distributions.constraints", "pyro.distributions.constraints")
_DATACLASSES = {"FitResult": ("pyro_mixflows.infer.fit", "FitResult")}
_TAG = "__pyro_mixflows__"


def _encode(obj: Any) -> Any:
    """``obj`` as tensors and plain values (tagged dicts for constraints, arrays, FitResult)."""
    if obj is None or isinstance(obj, (bool, int, float, str, torch.Tensor)):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return {
            _TAG: "ndarray",
            "dtype": str(obj.dtype),
            "data": torch.from_numpy(obj.astype(np.int64) if obj.dtype.kind == "u" else obj.copy()),
        }
    if isinstance(obj, (list, tuple)):
        return type(obj)(_encode(v) for v in obj)
    if isinstance(obj, dict):
        return {k: _encode(v) for k, v in obj.items()}
    if isinstance(obj, Constraint):
        cls = type(obj)
        if cls.__module__ not in _CONSTRAINT_MODULES:
            raise TypeError(
                f"expected constraints from {_CONSTRAINT_MODULES} in a checkpoint, got "
                f"{cls.__module__}.{cls.__qualname__}"
            )
        state = {k: _encode(v) for k, v in vars(obj).items()}
        return {
            _TAG: "constraint",
            "module": cls.__module__,
            "name": cls.__qualname__,
            "state": state,
        }
    if dataclasses.is_dataclass(obj) and type(obj).__name__ in _DATACLASSES:
        fields = {f.name: _encode(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        return {_TAG: "dataclass", "name": type(obj).__name__, "fields": fields}
    raise TypeError(
        f"expected tensors and plain values (numbers, strings, lists, tuples, dicts) in a "
        f"checkpoint, got {type(obj).__name__}"
    )


def _decode(obj: Any) -> Any:
    """Inverse of :func:`_encode`; classes come only from the allow-lists above."""
    if isinstance(obj, (list, tuple)):
        return type(obj)(_decode(v) for v in obj)
    if not isinstance(obj, dict):
        return obj
    tag = obj.get(_TAG)
    if tag is None:
        return {k: _decode(v) for k, v in obj.items()}
    if tag == "ndarray":
        return obj["data"].numpy().astype(np.dtype(obj["dtype"]))
    if tag == "constraint":
        if obj["module"] not in _CONSTRAINT_MODULES:
            raise ValueError(
                f"expected a constraint from {_CONSTRAINT_MODULES}, got {obj['module']}"
            )
        cls = getattr(importlib.import_module(obj["module"]), obj["name"], None)
        if not (isinstance(cls, type) and issubclass(cls, Constraint)):
            raise ValueError(f"expected a constraint class, got {obj['module']}.{obj['name']}")
        constraint = object.__new__(cls)
        constraint.__dict__.update({k: _decode(v) for k, v in obj["state"].items()})
        return constraint
    if tag == "dataclass" and obj.get("name") in _DATACLASSES:
        module, name = _DATACLASSES[obj["name"]]
        cls = getattr(importlib.import_module(module), name)
        return cls(**{k: _decode(v) for k, v in obj["fields"].items()})
    raise ValueError(f"expected a known tag in a checkpoint, got {tag!r}")


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _file_kind(path: str) -> str:
    """What the first bytes of a file say it is: "zip", "pickle", "text", "empty" or "binary"."""
    with open(path, "rb") as f:
        head = f.read(4096)
    if not head:
        return "empty"
    if head.startswith(b"PK\x03\x04"):
        return "zip"  # torch.save's format
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "pickle"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as err:
        if err.start < len(head) - 4:  # not just a character cut at the end of the sample
            return "binary"
    return "text"


def load_plain(path: str | os.PathLike, *, map_location=None) -> Any:
    """``torch.load(path, weights_only=True)`` with one clean line for files it cannot read.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is empty, text (a CSV?), a bare pickle, not a torch file, truncated,
            or holds Python objects other than tensors and plain values (refused, never
            unpickled); the message is one line without torch's advice to load it unsafely.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError("expected a file, got a folder")
    kind = _file_kind(path)
    reasons = {
        "empty": "the file is empty",
        "text": "a text file (a CSV?), not a torch file",
        "pickle": "a bare Python pickle (or a legacy torch file), never loaded",
        "binary": "binary data that is not a torch file",
    }
    if kind in reasons:
        raise ValueError(reasons[kind])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. torch's note on the pickle protocol
            return torch.load(path, map_location=map_location, weights_only=True)
    except (FileNotFoundError, IsADirectoryError):
        raise
    except pickle.UnpicklingError as err:
        text = _ANSI.sub("", str(err))
        detail = text.split("WeightsUnpickler error:", 1)[-1].strip().splitlines()
        detail = detail[0].strip() if detail else ""
        raise ValueError(
            "it holds Python objects other than tensors and plain values, which are never "
            f"unpickled ({detail or 'refused by torch.load(weights_only=True)'})"
        ) from None
    except Exception as err:  # a truncated or damaged zip archive, an I/O error
        text = _ANSI.sub("", str(err)).strip()
        first = text.splitlines()[0] if text else type(err).__name__
        if "central directory" in first or "zip archive" in first:
            first = "truncated: not a complete zip archive"
        raise ValueError(f"a damaged torch file ({first.rstrip('.')})") from None


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
    params = {name: p.detach().clone() for name, p in store.named_parameters()}
    constraints = store.get_state()["constraints"]
    return {"params": params, "constraints": {name: constraints[name] for name in params}}


def restore_param_store(state: dict[str, Any]) -> None:
    """Put saved unconstrained values back into the param store.

    Parameters that already exist are overwritten *in place* (``copy_``), so ``nn.Module`` s
    registered with ``pyro.module`` keep sharing their tensors with the store and every optimizer
    keeps pointing at live parameters. New names are added unchanged (bit-exact).
    """
    store = pyro.get_param_store()
    current_params = dict(store.named_parameters())
    fresh_params, fresh_constraints = {}, {}
    for name, value in state["params"].items():
        if name in current_params:
            current = current_params[name]
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
    """Load per-parameter optimizer states, also into optimizers that already exist (a torch
    optimizer, or a scheduler saved by Pyro as {"scheduler": ..., "optimizer": ...})."""
    store = pyro.get_param_store()
    pending = dict(state)
    for param, optimizer in optim.optim_objs.items():
        name = store.param_name(param)
        if name in pending:
            saved = pending.pop(name)
            if isinstance(optimizer, torch.optim.Optimizer):
                optimizer.load_state_dict(saved)
            else:
                optimizer.load_state_dict(saved["scheduler"])
                optimizer.optimizer.load_state_dict(saved["optimizer"])
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
        extra: extra state of tensors and plain values (numbers, strings, lists, tuples, dicts;
            also NumPy arrays and ``FitResult``); the fit loop stores its history here.

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
    atomic_save(_encode(state), path)


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

    The file is read with ``torch.load(weights_only=True)``: tensors and plain values only, so a
    crafted file cannot run code; constraints, NumPy arrays and ``FitResult`` are rebuilt from
    allow-listed classes.

    Args:
        path: a checkpoint file.
        optim: a ``pyro.optim`` optimizer that receives the saved optimizer state.
        map_location: passed to ``torch.load`` (e.g. ``"cpu"`` to read a GPU checkpoint).
        restore_rng: also restore the torch / random / numpy (and CUDA) generators.

    Returns:
        The checkpoint dict, with keys ``"step"``, ``"extra"``, ``"param_store"``, ``"optim"``
        and ``"rng"``.

    Raises:
        ValueError: if the file is not a checkpoint of this format (a pickled object, a file
            written by another program, a checkpoint of the older pickled format).
    """
    where = repr(os.fspath(path))
    try:
        state = load_plain(path, map_location=map_location)
    except ValueError as err:
        raise ValueError(f"expected a pyro_mixflows checkpoint in {where}, got {err}") from None
    if not isinstance(state, dict) or state.get("format") != _FORMAT:
        raise ValueError(f"expected a pyro_mixflows checkpoint in {where}, got something else")
    state = _decode(state)
    restore_param_store(state["param_store"])
    if optim is not None and state["optim"] is not None:
        _load_optim_state(optim, state["optim"])
    if restore_rng:
        set_rng_state(state["rng"])
    return state
