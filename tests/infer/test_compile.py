"""fit's compiled hot path: option checks, the "auto" policy, shape routing and the eager fallback.

The fast tests replace ``torch.compile`` by stand-ins (an identity "compiler", a failing one) so
that they test the policy and plumbing without compiling; the slow ones compile for real and
compare values and gradients with eager.
"""

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceEnum_ELBO
from pyro.infer.util import is_validation_enabled

from pyro_mixflows import FlowComponents
from pyro_mixflows.infer import _compile, fit
from pyro_mixflows.infer._fit_parts import _CallableLoss
from pyro_mixflows.models import VMoNF
from tests.conftest import perturb
from tests.infer.test_fit import D, K, make_data


def make_vm(flow="affine_coupling"):
    with torch.random.fork_rng():
        torch.manual_seed(1)
        comps = FlowComponents(K, D, flow=flow, num_layers=2, hidden_dims=(8,))
    perturb(comps, 0.05)
    return VMoNF(comps, assignment="enumerate")


def run_fit(vm, x, **options):
    pyro.clear_param_store()
    return fit(
        vm.model,
        vm.guide,
        x,
        loss=TraceEnum_ELBO(max_plate_nesting=1),
        optim={"lr": 0.01},
        batch_size=16,
        seed=0,
        **options,
    )


class CountingCompiler:
    """A stand-in for ``torch.compile`` that records its calls and returns the function itself."""

    def __init__(self):
        self.calls = 0
        self.shapes = []
        self.validating = []  # Pyro validation state at each compiled call
        self.arities = []  # number of arguments of each compiled call

    def __call__(self, fn, **options):
        assert options == {"fullgraph": True, "dynamic": False}
        self.calls += 1

        def compiled(*args):
            # the rows: x of the component pass, the batch of a whole-loss kernel
            self.shapes.append(
                next(tuple(a.shape) for a in args if torch.is_tensor(a) and a.dim() == 2)
            )
            self.validating.append(is_validation_enabled())
            self.arities.append(len(args))
            return fn(*args)

        return compiled


@pytest.mark.parametrize("bad", ["yes", None, 1, "True"])
def test_fit_rejects_a_bad_compile_option_before_work(bad):
    vm = make_vm()
    with pytest.raises(ValueError, match="expected compile to be 'auto', True or False"):
        run_fit(vm, make_data(), num_steps=1, compile=bad)
    assert len(pyro.get_param_store()) == 0  # nothing ran


def test_fit_refuses_compile_true_with_distributed():
    vm = make_vm()
    with pytest.raises(ValueError, match="compile 'auto' or False with distributed=True"):
        run_fit(vm, make_data(), num_steps=1, compile=True, distributed=True)


def test_compile_true_routes_training_batches_only_and_restores_the_method(monkeypatch):
    fake = CountingCompiler()
    monkeypatch.setattr(torch, "compile", fake)
    vm = make_vm()
    x = make_data()
    result = run_fit(vm, x, num_steps=6, compile=True, val_args=(x[:10],), eval_every=3)
    assert fake.calls == 1
    # every training step (batch of 16) went through the compiled function; the held-out
    # evaluations (10 rows, no gradients) did not
    assert fake.shapes == [(16, D)] * 6
    assert result.compile_time is not None and result.compile_time > 0
    # validation once: the first compiled step validated, the hot loop not; restored after
    assert fake.validating == [True] + [False] * 5 and is_validation_enabled()
    assert "component_log_probs" not in vm.components.__dict__  # eager again after fit
    # a second fit on the same module reuses the compiled pass: nothing compiled, no time
    again = run_fit(vm, x, num_steps=2, compile=True)
    assert fake.calls == 1 and again.compile_time is None


def test_compile_stand_in_gives_the_eager_fit(monkeypatch):
    x = make_data()
    eager = run_fit(make_vm(), x, num_steps=5, compile=False)
    monkeypatch.setattr(torch, "compile", CountingCompiler())
    through = run_fit(make_vm(), x, num_steps=5, compile=True)
    assert through.losses == eager.losses  # the identity "compiler": the same arithmetic


def test_auto_stays_eager_when_compiling_does_not_pay(monkeypatch):
    fake = CountingCompiler()
    monkeypatch.setattr(torch, "compile", fake)
    result = run_fit(
        make_vm(), make_data(), num_steps=_compile.AUTO_PROBE_STEPS + 5, compile="auto"
    )
    assert fake.calls == 0 and result.compile_time is None


def test_auto_compiles_after_the_probe_when_it_pays(monkeypatch):
    fake = CountingCompiler()
    monkeypatch.setattr(torch, "compile", fake)
    monkeypatch.setattr(_compile, "COMPILE_COST_S", {"cpu": 0.0, "cuda": 0.0})
    n = _compile.AUTO_PROBE_STEPS + 5
    result = run_fit(make_vm(), make_data(), num_steps=n, compile="auto")
    assert fake.calls == 1
    assert fake.shapes == [(16, D)] * 5  # the steps after the probe
    assert result.compile_time is not None


class FakeClock:
    """``_compile._clock`` stand-in: every reading is ``tick`` seconds after the previous one,
    so every timed step takes ``tick`` seconds."""

    def __init__(self, tick: float) -> None:
        self.now, self.tick = 0.0, tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


@pytest.mark.parametrize(
    "num_steps, compiled_steps",
    [
        (100, 80),  # eager until the eager steps have taken the compile's cost (20 steps)
        (70, 0),  # after the probe, 60 planned steps could not pay it back: never
        (75, 0),  # the plan pays at the probe's end, no longer after 15 steps: eager
    ],
)
def test_auto_rents_eager_steps_until_they_cost_a_compile(monkeypatch, num_steps, compiled_steps):
    """ "auto" compiles once this fit's eager steps took COMPILE_COST_S and only while the
    remaining planned steps pay it back: remaining * t_step * (1 - 1 / 1.5) > cost."""
    fake = CountingCompiler()
    monkeypatch.setattr(torch, "compile", fake)
    monkeypatch.setattr(_compile, "_clock", FakeClock(0.5))  # 0.5 s a step
    monkeypatch.setattr(_compile, "COMPILE_COST_S", {"cpu": 10.0, "cuda": 10.0})
    assert _compile.EXPECTED_SPEEDUP == 1.5 and _compile.AUTO_PROBE_STEPS == 10
    result = run_fit(make_vm(), make_data(), num_steps=num_steps, compile="auto")
    assert fake.shapes == [(16, D)] * compiled_steps
    assert fake.calls == (1 if compiled_steps else 0)
    assert (result.compile_time is not None) == bool(compiled_steps)


def broken_compile(fn, **options):
    """A ``torch.compile`` stand-in whose compiled function raises when called."""

    def compiled(*args):
        raise RuntimeError("no compiler here")

    return compiled


def test_a_failing_compile_warns_and_trains_eagerly(monkeypatch):
    x = make_data()
    eager = run_fit(make_vm(), x, num_steps=4, compile=False)
    monkeypatch.setattr(torch, "compile", broken_compile)
    vm = make_vm()
    with pytest.warns(RuntimeWarning, match="no compiler here"):
        result = run_fit(vm, x, num_steps=4, compile=True)
    assert result.losses == eager.losses  # the failed step was redone eagerly
    assert result.compile_time is None
    assert "component_log_probs" not in vm.components.__dict__
    # no second attempt on this module, and compile=True says so
    with pytest.warns(RuntimeWarning, match="compile failed earlier"):
        again = run_fit(vm, x, num_steps=1, compile=True)
    assert again.compile_time is None


def test_the_compiled_pass_cache_does_not_keep_modules_alive(monkeypatch):
    import gc
    import weakref

    monkeypatch.setattr(torch, "compile", CountingCompiler())
    vm = make_vm()
    run_fit(vm, make_data(), num_steps=2, compile=True)
    assert vm.components in _compile._CACHE
    ref = weakref.ref(vm.components)
    del vm
    gc.collect()
    assert ref() is None


def test_fit_without_flow_components_warns_that_compile_true_compiles_nothing(monkeypatch):
    fake = CountingCompiler()
    monkeypatch.setattr(torch, "compile", fake)

    def model(x, subsample=None):
        loc = pyro.param("loc", torch.zeros(D))
        with pyro.plate("data", x.shape[0], subsample=subsample):
            pyro.sample("x", pyro.distributions.Normal(loc, 1.0).to_event(1), obs=x)

    def guide(x, subsample=None):
        pass

    with pytest.warns(RuntimeWarning, match="compiles nothing here.*no FlowComponents") as seen:
        result = fit(model, guide, make_data(), loss=Trace_ELBO(), num_steps=3, compile=True)
    assert fake.calls == 0 and result.compile_time is None
    assert seen[0].filename == __file__  # points at the caller's fit
    result = fit(model, guide, make_data(), loss=Trace_ELBO(), num_steps=3, compile="auto")
    assert result.compile_time is None  # "auto" finds nothing to decide: no warning


@pytest.mark.slow
@pytest.mark.parametrize("flow", ["spline_coupling", "affine_coupling"])
def test_compiled_component_pass_equals_eager(flow, float64):
    # float64, so that float32 rounding near a spline's bin edges (relative gradient differences
    # up to ~1e-3 in one element of thousands) does not hide a real mismatch
    comps = perturb(FlowComponents(3, 4, flow=flow, num_layers=2, hidden_dims=(16,)), 0.1)
    x = 2.0 * torch.randn(32, 4)
    compiled = _compile.CompiledPass(comps)
    lp_c = compiled(x)
    grads_c = torch.autograd.grad(lp_c.logsumexp(-1).sum(), list(comps.parameters()))
    lp_e = comps.component_log_probs(x)
    grads_e = torch.autograd.grad(lp_e.logsumexp(-1).sum(), list(comps.parameters()))
    torch.testing.assert_close(lp_c, lp_e, rtol=1e-10, atol=1e-10)
    for gc, ge in zip(grads_c, grads_e, strict=True):
        torch.testing.assert_close(gc, ge, rtol=1e-8, atol=1e-10)


@pytest.mark.slow
def test_fit_compiled_tracks_the_eager_fit():
    x = make_data()
    eager = run_fit(make_vm("spline_coupling"), x, num_steps=5, compile=False)
    compiled = run_fit(make_vm("spline_coupling"), x, num_steps=5, compile=True)
    assert compiled.compile_time is not None and compiled.compile_time > 0
    torch.testing.assert_close(
        torch.tensor(compiled.losses), torch.tensor(eager.losses), rtol=1e-4, atol=1e-4
    )


def test_estimator_checks_its_compile_option_and_passes_it_to_fit(monkeypatch):
    from pyro_mixflows import VariationalFlowMixture

    X = make_data(60).numpy()
    with pytest.raises(ValueError, match="expected compile to be 'auto', True or False"):
        VariationalFlowMixture(2, compile="sometimes").fit(X)
    fake = CountingCompiler()
    monkeypatch.setattr(torch, "compile", fake)
    est = VariationalFlowMixture(
        2, flow="affine_coupling", num_layers=1, hidden_dims=(8,), max_steps=3, init_steps=2,
        batch_size=16, compile=True, random_state=0,
    )  # fmt: skip
    est.fit(X)
    # one compiled loss kernel (the exact loss), shared by the pre-training and the training
    # fits (same batch shape); the component pass is not compiled on its own
    assert fake.calls == 1 and set(fake.shapes) == {(16, D)}
    # VMoNF._loss_kernel's arguments (9 training, 10 pre-training), not (components, x)
    assert fake.arities and set(fake.arities) <= {9, 10}
    # compiled during pre-training, reported in the estimator's result
    assert est.fit_result_.compile_time is not None and est.fit_result_.compile_time > 0


def run_exact_fit(vm, x, **options):
    pyro.clear_param_store()
    return fit(
        vm.model, vm.guide, x, loss=vm.exact_loss, optim={"lr": 0.01}, batch_size=16, seed=0,
        **options,
    )  # fmt: skip


def test_an_exact_loss_has_its_whole_kernel_compiled(monkeypatch):
    fake = CountingCompiler()
    monkeypatch.setattr(torch, "compile", fake)
    vm = make_vm()
    x = make_data()
    eager = run_exact_fit(make_vm(), x, num_steps=6, compile=False)
    result = run_exact_fit(vm, x, num_steps=6, compile=True, val_args=(x[:10],), eval_every=3)
    # the loss kernel, once; training batches only (held-out rows ran eagerly)
    assert fake.calls == 1 and fake.shapes == [(16, D)] * 6
    assert fake.validating == [True] + [False] * 5
    assert result.losses == eager.losses and result.compile_time is not None
    assert "_loss_kernel" not in vm.__dict__ and "component_log_probs" not in vm.components.__dict__
    assert vm.components not in _compile._CACHE  # the component pass was not compiled apart


def test_a_failing_kernel_compile_trains_eagerly(monkeypatch):
    x = make_data()
    eager = run_exact_fit(make_vm(), x, num_steps=3, compile=False)
    monkeypatch.setattr(torch, "compile", broken_compile)
    vm = make_vm()
    with pytest.warns(RuntimeWarning, match="no compiler here"):
        result = run_exact_fit(vm, x, num_steps=3, compile=True)
    assert result.losses == eager.losses and result.compile_time is None
    assert "_loss_kernel" not in vm.__dict__
    with pytest.warns(RuntimeWarning, match="compile failed earlier"):  # no retry
        assert run_exact_fit(vm, x, num_steps=1, compile=True).compile_time is None


def test_auto_uses_the_kernel_speedup(monkeypatch):
    monkeypatch.setattr(torch, "compile", CountingCompiler())
    vm = make_vm()
    hot = _compile.HotPath("auto", [vm], 100, None, loss=_CallableLoss(vm.exact_loss))
    assert hot.speedup == _compile.EXPECTED_SPEEDUP_KERNEL and hot.components == [vm]
    hot = _compile.HotPath("auto", [vm], 100, None, loss=TraceEnum_ELBO())
    assert hot.speedup == _compile.EXPECTED_SPEEDUP and hot.components == [vm.components]


@pytest.mark.slow
@pytest.mark.parametrize("assignment", ["enumerate", "amortized"])
def test_compiled_loss_kernel_equals_eager(float64, assignment):
    vm = make_vm("spline_coupling")
    vm = VMoNF(vm.components, assignment=assignment, hidden_dims=(8,))
    x = make_data(64).double()
    idx = torch.arange(16)
    kernel = _compile.CompiledKernel(VMoNF._loss_kernel)
    params = list(vm.parameters())

    def value_and_grads(install):
        if install:
            vm.__dict__["_loss_kernel"] = kernel
        try:
            loss = vm.exact_loss(
                vm.model, vm.guide, x, x[:5], torch.tensor([0, 1, 0, 1, 1]), subsample=idx
            )
        finally:
            vm.__dict__.pop("_loss_kernel", None)
        return loss, torch.autograd.grad(loss, params, allow_unused=True)

    vm.train(False)  # the temperature step stays put between the two calls
    loss_c, grads_c = value_and_grads(True)
    loss_e, grads_e = value_and_grads(False)
    assert kernel.confirm()  # it went through the compiled function
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-10, atol=1e-10)
    for gc, ge in zip(grads_c, grads_e, strict=True):
        if ge is not None:
            torch.testing.assert_close(gc, ge, rtol=1e-8, atol=1e-10)


def test_the_first_compiled_call_of_a_fit_may_recompile_past_dynamos_limit(monkeypatch):
    """Dynamo refuses a 9th shape per code object by default (a hard error under fullgraph);
    the first compiled call of each fit runs with the limit raised, the later ones as configured."""
    import torch._dynamo

    limits = []

    def spy(module, x):
        limits.append(torch._dynamo.config.recompile_limit)
        return x.sum(-1, keepdim=True)

    monkeypatch.setattr(torch, "compile", lambda fn, **kw: spy)
    default = torch._dynamo.config.recompile_limit
    compiled = _compile.CompiledPass(FlowComponents(1, D))
    x = torch.randn(5, D)
    with torch.enable_grad():
        compiled(x), compiled(x)
        compiled.reset()
        compiled(x)
    assert limits == [max(default, _compile.RECOMPILE_LIMIT), default, limits[0]]
    assert torch._dynamo.config.recompile_limit == default


@pytest.mark.slow
def test_a_kernel_compiles_for_more_shapes_than_dynamos_default_limit():
    """Ten fits of different batch shapes in one process: each compiles, none falls back."""

    def kernel(a, b):
        return (a * b).sum()

    compiled = _compile.CompiledKernel(kernel)
    for n in range(1, 11):
        compiled.reset()
        a = torch.randn(n, 3, requires_grad=True)
        value = compiled(a, torch.ones(n, 3))
        value.backward()
        assert torch.equal(a.grad, torch.ones(n, 3))
