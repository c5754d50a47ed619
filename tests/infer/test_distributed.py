"""Data-parallel fit: 2 gloo processes against single-process SVI on the same global batch."""

import os
import socket
import subprocess
import sys

import pyro
import pytest
import torch
from pyro.infer import SVI, TraceEnum_ELBO

from pyro_mixflows.infer import fit, shard_range
from pyro_mixflows.infer._fit_parts import BatchSampler
from tests.infer._ddp_worker import LR, RANK_BATCH, SEED, STEPS, N
from tests.infer.test_fit import make_data, make_pair

WORLD = 2
# a fresh interpreter per rank imports torch and Pyro (seconds each); on a loaded 2-core machine
# the whole run takes well under a minute, so a deadlock fails here instead of hanging the suite
LAUNCH_TIMEOUT = 240
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_ddp_worker.py")


def _single_process(batch_size):
    """Pyro's own SVI on the union of the ranks' minibatches (plate size N)."""
    pyro.clear_param_store()
    x = make_data(N)
    _, model, guide = make_pair()
    svi = SVI(model, guide, pyro.optim.Adam({"lr": LR}), TraceEnum_ELBO(max_plate_nesting=1))
    samplers = []
    if batch_size is not None:  # the schedule fit documents: rank r draws with seed + r
        for r in range(WORLD):
            n_r = shard_range(N, r, WORLD)[1] - shard_range(N, r, WORLD)[0]
            samplers.append(BatchSampler(n_r, batch_size, torch.Generator().manual_seed(SEED + r)))
    losses = []
    for _ in range(STEPS):
        if samplers:
            idx = torch.cat(
                [shard_range(N, r, WORLD)[0] + s.next() for r, s in enumerate(samplers)]
            )
            losses.append(svi.step(x, subsample=idx))
        else:
            losses.append(svi.step(x))
    store = pyro.get_param_store()
    return losses, {k: store._params[k].detach().clone() for k in store.keys()}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(out) -> None:
    """Both ranks under ``torchrun`` (the path users take), as a subprocess with a time limit."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(WORLD),
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), WORKER, str(out),
    ]  # fmt: skip
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"torchrun did not finish in {LAUNCH_TIMEOUT} s (deadlock?): {err.stderr}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_two_gloo_ranks_match_single_process(float64, tmp_path):
    references = {b: _single_process(b) for b in (None, RANK_BATCH)}
    _launch(tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    for batch_size in (None, RANK_BATCH):
        (losses0, params0), (losses1, params1) = ranks[0][batch_size], ranks[1][batch_size]
        # every rank ends with the very same parameters and reports the same (global) loss
        assert losses0 == losses1
        assert params0.keys() == params1.keys()
        assert all(torch.equal(params0[k], params1[k]) for k in params0)
        # and both follow single-process SVI on the same global batch; float64 reductions in a
        # different order (two shards summed, then averaged) differ by ~1e-13 relative per step
        ref_losses, ref_params = references[batch_size]
        assert losses0 == pytest.approx(ref_losses, rel=1e-9)
        assert params0.keys() == ref_params.keys()
        for k in ref_params:
            torch.testing.assert_close(params0[k], ref_params[k], rtol=1e-9, atol=1e-9)
        assert losses0[-1] < losses0[0]  # and it trains
    # a distributed run resumed from its checkpoint repeats the uninterrupted one bit for bit
    assert ranks[0]["resumed"] == ranks[0][RANK_BATCH][0]


def test_distributed_needs_a_process_group(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    x = make_data(8)
    _, model, guide = make_pair()
    with pytest.raises(ValueError, match="torchrun"):
        fit(model, guide, x, distributed=True)
    assert shard_range(10, rank=1, world_size=3) == (4, 7)
    assert shard_range(10, rank=2, world_size=3) == (7, 10)
    with pytest.raises(ValueError, match="one row per rank"):
        shard_range(1, rank=0, world_size=2)
