"""Checkpoints hold tensors and plain values only: loaded with weights_only=True, pickles refused."""

import pickle
import random

import numpy as np
import pyro
import pyro.distributions.constraints as pyro_constraints
import pytest
import torch
from torch.distributions import constraints

from pyro_mixflows.infer import FitResult, load_checkpoint, save_checkpoint
from pyro_mixflows.infer._checkpoint import load_plain

RAN: list[str] = []


def _record(what: str) -> None:
    RAN.append(what)


class _Payload:
    """Unpickling this runs code (a call of ``_record``): a checkpoint must never be unpickled."""

    def __reduce__(self):
        return (_record, ("payload ran",))


def test_checkpoint_round_trips_through_weights_only(float64, tmp_path):
    pyro.param("loc", torch.randn(3))
    pyro.param("scale", torch.rand(2) + 0.5, constraint=constraints.positive)
    pyro.param("probs", torch.ones(3) / 3, constraint=constraints.simplex)
    pyro.param("box", torch.full((2,), 0.5), constraint=constraints.interval(0.0, 2.0))
    pyro.param("vec", torch.ones(2), constraint=constraints.independent(constraints.positive, 1))
    pyro.param("corr", torch.eye(2), constraint=pyro_constraints.corr_cholesky)
    before = {k: pyro.param(k).detach().clone() for k in pyro.get_param_store().keys()}
    history = FitResult(losses=[3.0, 2.0], val_steps=[2], val_losses=[2.5], best_step=2)
    path = tmp_path / "c.pt"
    save_checkpoint(path, step=4, extra={"history": history, "array": np.arange(3)})
    torch.load(path, weights_only=True)  # the raw file is plain: torch's safe loader reads it

    np.random.seed(1)
    random.seed(1)
    expected = (np.random.rand(), random.random())
    pyro.clear_param_store()
    state = load_checkpoint(path)  # restores the generators saved above
    assert state["step"] == 4
    assert state["extra"]["history"] == history
    assert np.array_equal(state["extra"]["array"], np.arange(3))
    store = pyro.get_param_store()
    for name, value in before.items():
        assert torch.allclose(pyro.param(name), value)
    assert store._constraints["scale"] is not constraints.positive  # rebuilt, same kind
    assert type(store._constraints["box"]) is type(constraints.interval(0.0, 2.0))
    assert store._constraints["box"].upper_bound == 2.0
    assert store._constraints["vec"].reinterpreted_batch_ndims == 1
    np.random.seed(1)
    random.seed(1)
    assert (np.random.rand(), random.random()) == expected


def test_a_pickled_payload_is_refused_and_never_run(tmp_path):
    RAN.clear()
    path = tmp_path / "evil.pt"
    torch.save({"format": "pyro_mixflows.checkpoint", "extra": _Payload()}, path)
    with pytest.raises(ValueError, match="never unpickled") as info:
        load_checkpoint(path)
    assert "weights_only=False" not in str(info.value) and "\n" not in str(info.value)
    bare = tmp_path / "bare.pkl"
    with open(bare, "wb") as f:
        pickle.dump(_Payload(), f)
    with pytest.raises(ValueError, match="bare Python pickle"):
        load_checkpoint(bare)
    assert RAN == []
    torch.load(path, weights_only=False)  # the payload is live: unpickling would run it
    assert RAN == ["payload ran"]


@pytest.mark.parametrize(
    "content, match",
    [
        (b"", "the file is empty"),
        (b"a,b\n1,2\n", "text file"),
        (bytes(range(256)) * 8, "binary data"),
    ],
)
def test_load_plain_says_what_the_file_is(tmp_path, content, match):
    path = tmp_path / "f"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match):
        load_plain(path)


def test_load_plain_on_a_truncated_file(tmp_path):
    path = tmp_path / "t.pt"
    torch.save({"x": torch.zeros(1000)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="damaged") as info:
        load_plain(path)
    assert "\n" not in str(info.value)


def test_save_checkpoint_refuses_arbitrary_objects(tmp_path):
    with pytest.raises(TypeError, match="expected tensors and plain values"):
        save_checkpoint(tmp_path / "c.pt", extra={"thing": object()})
    assert not (tmp_path / "c.pt").exists()
