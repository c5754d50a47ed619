"""The compiled hot path of :func:`~pyro_mixflows.infer.fit`: ``torch.compile`` of the flow pass.

Every training step of a flow mixture spends most of its time in ``FlowComponents.component_log_probs``
and its backward: dozens of small elementwise spline operations per layer, each a separate
kernel launch and autograd node in eager mode. ``torch.compile`` (inductor) fuses them into a few
kernels, forward and backward, and gives the same values and gradients up to float rounding.

What is compiled: the ``component_log_probs`` of every ``FlowComponents`` found among the
``nn.Module``s behind the model and guide, for ONE input shape: the training batch (fit's batches
all have the same size: the tail of an epoch is dropped). Calls with another shape (held-out
evaluations, scoring) or without gradients run eagerly, so nothing is recompiled during training.
The compiled function is installed for the duration of the training loop only and is kept per
module, so a second ``fit`` on the same module (pre-training, then training, then refinement)
reuses it instead of compiling again.

Whole-loss kernels: when the loss is a custom callable that names a kernel (a bound method of
an ``nn.Module`` whose function has a ``compiled_kernel`` attribute naming a static method of the
module, e.g. ``VMoNF.exact_loss`` and its ``_loss_kernel``: the component pass plus the
log-sum-exp and the other terms), that static method is compiled instead of the component pass,
by the same rules (training batch shapes only, eager otherwise, kept per module).

Policy (the ``compile`` option of ``fit``):

- ``False`` (fit's default): eager.
- ``True``: compile from the first step.
- ``"auto"``: rent, then buy. Time ``AUTO_PROBE_STEPS`` eager steps (t_step, their median);
  from then on, compile once the eager steps of this ``fit`` call have taken
  ``COMPILE_COST_S[device]`` (at once when this module was compiled before: cost 0), provided
  the planned remaining steps still pay for it, ``remaining * t_step * (1 - 1 / speed-up) >
  cost`` (the speed-up being ``EXPECTED_SPEEDUP`` for the component pass and
  ``EXPECTED_SPEEDUP_KERNEL`` for a whole-loss kernel); once they cannot, stay eager. Planned
  steps alone overstate a fit that stops early (a 64-feature fit planned 4000 steps, compiled
  after the probe and stopped at 350), so the eager time already spent is the trigger: a fit
  pays at most the eager time it would have spent anyway, or twice the compile. A cold first
  compile took ~30-400 s on a loaded 2-core CPU (20-110 s idle; 4-21 s with a warm on-disk
  inductor cache), so on CPU ``"auto"`` compiles only fits that run eagerly for 300 s; the
  demo fit stays eager.

Validation once: the first compiled step runs with Pyro's validation as configured; the later
compiled steps run with it off (``pyro.validation_enabled(False)``): same model, same batch shape,
data checked finite by ``fit`` (it cost about 6 % of a compiled step at the demo's scale). The
non-finite loss/gradient guard of ``fit`` stays on.

Failure: if compiling or the first compiled step raises, a ``RuntimeWarning`` names the error,
the gradients of that step are discarded, and training goes on eagerly (the step is redone).
The wall time of the first compiled step (compile included) is reported as
``FitResult.compile_time``.
"""

from __future__ import annotations

import statistics
import time
import warnings
import weakref
from collections.abc import Callable, Iterable
from typing import Any

import pyro
import torch
from torch import nn

COMPILE_OPTIONS = ("auto", True, False)
# "auto": eager steps timed before deciding
AUTO_PROBE_STEPS = 10
# "auto": the step speed-up assumed for the decision (the Pyro step measured 1.44-1.94x faster
# compiled on CPU: Pyro's own per-step work is not compiled)
EXPECTED_SPEEDUP = 1.5
# "auto": the same for a whole-loss kernel (the estimator's exact-loss step measured 2.1-2.4x
# faster compiled at the demo's scale, medians of per-round ratios; see docs/benchmarks.md)
EXPECTED_SPEEDUP_KERNEL = 2.2
# "auto": the assumed cost of the first compile, seconds. A cold cache on a loaded 2-core CPU
# took ~30-400 s. The cost is fixed while the measured eager step grows with the machine's load,
# so load tilts the decision towards compiling; 300 s keeps the demo (<= 4000 steps) eager up to
# ~200 ms a step. The GPU figure is a guess, not measured here.
COMPILE_COST_S = {"cpu": 300.0, "cuda": 60.0}
# Dynamo keeps compiled entries per code object (one ``component_log_probs``, one
# ``VMoNF._loss_kernel`` for every module of a process) and refuses a 9th shape by default
# (``torch._dynamo.config.recompile_limit`` 8; under ``fullgraph=True`` a hard error, i.e. the
# eager fallback): a process fitting many shapes (K, D, batch sizes, pre-training and training)
# ran into it. The first compiled call of each fit raises it to this for that call only.
RECOMPILE_LIMIT = 64

# the clock of the "auto" policy and of compile_time (tests replace it)
_clock = time.perf_counter
# module -> {method name -> compiled callable}; weak, so a dropped module frees its compiled code
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# module -> names of methods whose compile failed once: eager from then on, no second attempt
_FAILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _failed() -> set[tuple[nn.Module, str]]:
    return {(module, name) for module, names in _FAILED.items() for name in names}


def check_compile_option(value: Any) -> None:
    """Raise ``ValueError`` unless ``value`` is "auto", True or False."""
    if not (value is True or value is False or value == "auto"):
        raise ValueError(f"expected compile to be 'auto', True or False, got {value!r}")


def flow_components(modules: Iterable[nn.Module]) -> list[nn.Module]:
    """The ``FlowComponents`` among ``modules`` and their submodules, each once."""
    from ..flows.components import FlowComponents

    found: dict[int, nn.Module] = {}
    for module in modules:
        for sub in module.modules():
            if isinstance(sub, FlowComponents):
                found.setdefault(id(sub), sub)
    return list(found.values())


class CompiledPass:
    """``component_log_probs`` of one ``FlowComponents``, compiled for the training batch shape.

    Calls with gradients enabled and the input's (shape, dtype, device) equal to ``key`` go
    through ``torch.compile(fullgraph=True, dynamic=False)``; anything else runs the eager method,
    so the compiled code is never re-traced within a fit. ``key`` is the first such call's after
    each ``reset()`` (one per fit call); shapes compiled before stay compiled.

    Args:
        components: a ``FlowComponents``.
    """

    def __init__(self, components: nn.Module) -> None:
        # The module is held weakly and passed in at each call (not closed over), so that the
        # module cache below does not keep dropped modules alive.
        self._components = weakref.ref(components)
        method = type(components).component_log_probs
        self._method = method
        self._compiled = torch.compile(method, fullgraph=True, dynamic=False)
        self.key: tuple | None = None
        self.compiled_keys: set[tuple] = set()  # shapes whose compiled step went through
        self.new_key = False  # the current key has not been compiled yet

    def reset(self) -> None:
        self.key, self.new_key = None, False

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        components = self._components()
        if not torch.is_grad_enabled():
            return self._method(components, x)
        key = (tuple(x.shape), x.dtype, x.device)
        first = self.key is None  # the only call of a fit that may compile
        if first:
            self.key, self.new_key = key, key not in self.compiled_keys
        if key != self.key:
            return self._method(components, x)
        if first:
            with _recompile_limit():
                return self._compiled(components, x)
        return self._compiled(components, x)

    def confirm(self) -> bool:
        """Mark the current key as compiled; True if it was compiled during this fit call."""
        was_new = self.new_key
        if self.key is not None:
            self.compiled_keys.add(self.key)
        self.new_key = False
        return was_new


def _recompile_limit():
    """Dynamo's per-code-object recompile limit raised to ``RECOMPILE_LIMIT`` (a context)."""
    import torch._dynamo

    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    return config.patch(**{name: max(RECOMPILE_LIMIT, getattr(config, name))})


def loss_kernel(loss: Any) -> tuple[nn.Module, str] | None:
    """(module, name) of the whole-loss kernel a custom loss names, or None (see the module
    docstring): ``loss`` is fit's wrapped callable (its ``fn``) or the callable itself."""
    fn = getattr(loss, "fn", loss)
    owner = getattr(fn, "__self__", None)
    name = getattr(fn, "compiled_kernel", None)
    if isinstance(owner, nn.Module) and isinstance(name, str) and callable(getattr(owner, name)):
        return owner, name
    return None


class CompiledKernel:
    """A static method of a module (a whole-loss kernel), compiled for the training shapes.

    Like ``CompiledPass``: calls with gradients enabled whose tensor arguments have the
    (shape, dtype, device) of the first such call after ``reset()`` go through
    ``torch.compile(fullgraph=True, dynamic=False)``; others run the eager function.

    Args:
        function: the plain function (the static method unwrapped).
    """

    def __init__(self, function: Callable[..., Any]) -> None:
        self._method = function
        self._compiled = torch.compile(function, fullgraph=True, dynamic=False)
        self.key: tuple | None = None
        self.compiled_keys: set[tuple] = set()
        self.new_key = False

    reset = CompiledPass.reset
    confirm = CompiledPass.confirm

    @staticmethod
    def _key(args: tuple) -> tuple:
        return tuple(
            (tuple(a.shape), a.dtype, a.device) if torch.is_tensor(a) else type(a).__name__
            for a in args
        )

    def __call__(self, *args: Any) -> Any:
        if not torch.is_grad_enabled():
            return self._method(*args)
        key = self._key(args)
        first = self.key is None  # the only call of a fit that may compile
        if first:
            self.key, self.new_key = key, key not in self.compiled_keys
        if key != self.key:
            return self._method(*args)
        if first:
            with _recompile_limit():
                return self._compiled(*args)
        return self._compiled(*args)


class HotPath:
    """The compiled training step of one ``fit`` call (see the module docstring).

    Args:
        option: "auto", True or False.
        modules: the ``nn.Module``s behind model and guide.
        num_steps: steps this fit call will run at most.
        device: the training device (None: where the parameters are).
        loss: fit's loss; a custom loss that names a whole-loss kernel (``loss_kernel``) has
            that kernel compiled instead of the component passes.
    """

    def __init__(
        self,
        option: bool | str,
        modules: Iterable[nn.Module],
        num_steps: int,
        device: torch.device | None,
        loss: Any = None,
    ) -> None:
        check_compile_option(option)
        self.option = option
        modules = list(modules)
        self.modules = modules
        # targets: (module, attribute to shadow, factory of the compiled callable)
        self.targets: list[tuple[nn.Module, str, Callable[[], Any]]] = []
        self.speedup = EXPECTED_SPEEDUP
        kernel = loss_kernel(loss) if option is not False else None
        if kernel is not None:
            owner, name = kernel
            function = getattr(type(owner), name)
            self.targets.append((owner, name, lambda: CompiledKernel(function)))
            self.speedup = EXPECTED_SPEEDUP_KERNEL
        elif option is not False:
            for comps in flow_components(modules):
                self.targets.append(
                    (comps, "component_log_probs", lambda comps=comps: CompiledPass(comps))
                )
        found = bool(self.targets)
        self.targets = [t for t in self.targets if (t[0], t[1]) not in _failed()]
        if option is True and not self.targets:
            why = (
                "its compile failed earlier in this process"
                if found
                else "no FlowComponents in the model's or guide's modules, and the loss names "
                "no compiled kernel"
            )
            warnings.warn(
                f"compile=True compiles nothing here ({why}): training runs eagerly",
                RuntimeWarning,
                stacklevel=4,  # HotPath <- fit's _fit <- fit <- the caller
            )
        self.num_steps = num_steps
        self.device_type = device.type if device is not None else self._param_device_type()
        self.installed: list[tuple[nn.Module, str]] = []
        self.decided = option != "auto" or not self.targets
        self.step_times: list[float] = []  # the probe's
        self.t_step: float | None = None  # their median
        self.eager_time = 0.0  # seconds of eager steps while "auto" is undecided
        self.compile_time: float | None = None
        self.pending_first = False
        if option is True and self.targets:
            self._install()

    @property
    def components(self) -> list[nn.Module]:
        """The modules whose methods are compiled (the ``FlowComponents``, or the loss's owner)."""
        return [module for module, _, _ in self.targets]

    def _param_device_type(self) -> str:
        for module, _, _ in self.targets:
            for p in module.parameters():
                return p.device.type
        return "cpu"

    def _install(self) -> None:
        for module, name, factory in self.targets:
            cache = _CACHE.setdefault(module, {})
            compiled = cache.get(name)
            if compiled is None:
                compiled = cache[name] = factory()
            compiled.reset()
            module.__dict__[name] = compiled  # an instance attribute shadows the method
            self.installed.append((module, name))
        self.pending_first = True

    def _uninstall(self) -> None:
        for module, name in self.installed:
            module.__dict__.pop(name, None)
        self.installed = []

    def _compiled(self, module: nn.Module, name: str):
        return _CACHE.get(module, {}).get(name)

    def _already_compiled(self) -> bool:
        return all(
            (c := self._compiled(m, n)) is not None and c.compiled_keys for m, n, _ in self.targets
        )

    def _decide(self, done: int) -> None:
        """The "auto" decision, after every eager step from the probe's end until it is made.

        Compile when the eager steps of this call have taken as long as a compile is expected
        to (``cost``; at once when this module was compiled before) and the planned remaining
        steps still pay it back; give up (stay eager) as soon as they no longer can. Early
        stopping ends most fits well before their planned steps, so a compile is never bought
        on the plan alone: a fit that stops early pays at most the eager time it would have
        spent anyway, a long fit at most twice the compile.
        """
        if self.t_step is None:
            self.t_step = statistics.median(self.step_times)
        remaining = self.num_steps - done
        saving = remaining * self.t_step * (1.0 - 1.0 / self.speedup)
        cost = 0.0 if self._already_compiled() else COMPILE_COST_S.get(self.device_type, 300.0)
        if saving <= cost:
            self.decided = True  # the remaining steps cannot pay for it: eager to the end
        elif self.eager_time >= cost:
            self.decided = True
            self._install()

    def step(self, done: int, run: Callable[..., float], *args: Any) -> float:
        """``run(*args)``, one training step (fit's ``_step``); ``done`` steps of this call so far."""
        if not self.installed:
            t0 = _clock()
            value = run(*args)
            if not self.decided:
                elapsed = _clock() - t0
                self.eager_time += elapsed
                if len(self.step_times) < AUTO_PROBE_STEPS:
                    self.step_times.append(elapsed)
                if len(self.step_times) >= AUTO_PROBE_STEPS:
                    self._decide(done + 1)
            return value
        if not self.pending_first:
            # validation done once: the first compiled step ran with Pyro's checks as configured;
            # the same model, shapes and data follow, so the hot loop skips them
            with pyro.validation_enabled(False):
                return run(*args)
        t0 = _clock()
        try:
            value = run(*args)
        except FloatingPointError:
            raise
        except Exception as err:  # compiling failed: eager from here on
            warnings.warn(
                f"torch.compile of the training step failed ({type(err).__name__}: {err}); "
                "training continues eagerly",
                RuntimeWarning,
                stacklevel=3,
            )
            for module, name in self.installed:
                _CACHE.get(module, {}).pop(name, None)
                _FAILED.setdefault(module, set()).add(name)
            for module in self.modules:  # the failed step's partial gradients
                for p in module.parameters():
                    p.grad = None
            self._uninstall()
            self.decided = True
            return run(*args)
        elapsed = _clock() - t0
        if any([self._compiled(m, n).confirm() for m, n in self.installed]):
            self.compile_time = elapsed
        self.pending_first = False
        return value

    def close(self) -> None:
        """Restore the eager methods (the compiled code stays cached for the next fit)."""
        self._uninstall()
