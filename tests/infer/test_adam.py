"""MultiTensorAdam: the same update as pyro.optim.Adam bit for bit; fit's non-finite check."""

from __future__ import annotations

import pyro
import pytest
import torch

from pyro_mixflows.infer._adam import MultiTensorAdam, all_finite


def _run(make_optim, options, dtype, steps=5):
    pyro.clear_param_store()
    g = torch.Generator().manual_seed(0)
    shapes = [(3, 4), (7,), (2, 2, 5)]
    params = [
        pyro.param(f"p{i}", torch.randn(s, generator=g, dtype=dtype)).unconstrained()
        for i, s in enumerate(shapes)
    ]
    optim = make_optim(options)
    for step in range(steps):
        for i, p in enumerate(params):
            # a parameter without a gradient at step 1: skipped, as in Pyro
            p.grad = (
                None if (step == 1 and i == 1) else torch.randn(p.shape, generator=g, dtype=dtype)
            )
        optim(params)
    return [p.detach().clone() for p in params], optim.get_state()


@pytest.mark.parametrize(
    "options",
    [
        {"lr": 1e-2},
        {"lr": 1e-2, "fused": True, "weight_decay": 0.1},
        {"lr": 1e-2, "amsgrad": True, "betas": (0.8, 0.9)},
        {"lr": 1e-2, "foreach": True, "maximize": True},
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_multi_tensor_adam_equals_pyro_adam_bit_for_bit(options, dtype):
    expected, state_pyro = _run(pyro.optim.Adam, options, dtype)
    got, state_multi = _run(MultiTensorAdam, options, dtype)
    for a, b in zip(expected, got, strict=True):
        assert torch.equal(a, b)
    assert state_pyro.keys() == state_multi.keys()
    for name in state_pyro:
        sa, sb = state_pyro[name]["state"][0], state_multi[name]["state"][0]
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(sa[key], sb[key]), (name, key)


def test_multi_tensor_adam_state_round_trip():
    """A checkpointed state loads into a fresh optimizer and continues identically."""
    options = {"lr": 1e-2, "fused": True}
    _, state = _run(MultiTensorAdam, options, torch.float32, steps=3)
    params = [pyro.get_param_store()[f"p{i}"].unconstrained() for i in range(3)]
    fresh = MultiTensorAdam(options)
    fresh.set_state(state)
    for p in params:
        p.grad = torch.ones_like(p)
    fresh(params)
    # p1 had no gradient at step 1: 3 + 1 updates for p0 and p2, 2 + 1 for p1
    steps = [int(fresh.optim_objs[p].state[p]["step"]) for p in params]
    assert steps == [4, 3, 4]


def test_multi_tensor_adam_callable_options_fall_back_per_tensor():
    def options(name):
        return {"lr": 1e-2 if name == "p0" else 1e-3}

    expected, _ = _run(pyro.optim.Adam, options, torch.float32)
    got, _ = _run(MultiTensorAdam, options, torch.float32)
    for a, b in zip(expected, got, strict=True):
        assert torch.equal(a, b)


def test_multi_tensor_adam_grouped_on_this_torch_and_steps_per_tensor_without_it(monkeypatch):
    """torch 2.13 takes the one-call path; a torch without its pieces steps per optimizer."""
    from pyro_mixflows.infer import _adam

    assert _adam._GROUPED
    calls = []
    monkeypatch.setattr(_adam, "_adam_step", lambda optimizers: calls.append(len(optimizers)))
    _run(MultiTensorAdam, {"lr": 1e-2}, torch.float32, steps=1)
    assert calls == [3]  # one grouped call for the three tensors

    monkeypatch.setattr(_adam, "_GROUPED", False)
    expected, _ = _run(pyro.optim.Adam, {"lr": 1e-2}, torch.float32)
    got, _ = _run(MultiTensorAdam, {"lr": 1e-2}, torch.float32)
    assert calls == [3]  # not called again
    for a, b in zip(expected, got, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_all_finite(bad, dtype):
    grads = [torch.randn(3, 4, dtype=dtype), torch.randn(5, dtype=torch.float64)]
    before = [g.clone() for g in grads]
    assert all_finite(grads)
    grads[0][1, 2] = bad
    assert not all_finite(grads)
    grads[0][1, 2] = before[0][1, 2]
    assert all(torch.equal(a, b) for a, b in zip(grads, before, strict=True))  # unchanged
    grads.append(torch.tensor([1.0 + 1j, complex(bad, 0.0)]))  # complex: the per-tensor check
    assert not all_finite(grads)
    assert all_finite([])
