"""One rank of the data-parallel test: run by ``torchrun`` (fresh interpreters), never imported.

Usage: ``torchrun --nproc_per_node 2 tests/infer/_ddp_worker.py OUT_DIR``. Each rank writes
``OUT_DIR/rank{r}.pt`` with its losses and final parameters.
"""

import datetime
import os
import sys

import pyro
import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from pyro_mixflows.infer import fit, shard_range  # noqa: E402
from tests.infer.test_fit import make_data, make_pair  # noqa: E402

# shared with the test that launches this script
N, STEPS, LR, SEED, RANK_BATCH = 48, 6, 0.02, 11, 8
# a rank that waits this long for the other fails instead of hanging (gloo's default is 30 min)
GROUP_TIMEOUT = datetime.timedelta(seconds=60)


def main(out: str) -> None:
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    pyro.enable_validation(True)
    rank = int(os.environ["RANK"])
    dist.init_process_group("gloo", timeout=GROUP_TIMEOUT)
    try:
        start, stop = shard_range(N)
        shard = make_data(N)[start:stop]  # each rank reads only its rows
        results = {}
        for batch_size in (None, RANK_BATCH):
            pyro.clear_param_store()
            _, model, guide = make_pair()
            res = fit(
                model, guide, shard, num_steps=STEPS, batch_size=batch_size, optim={"lr": LR},
                seed=SEED, distributed=True,
            )  # fmt: skip
            store = pyro.get_param_store()
            params = {k: store._params[k].detach().clone() for k in store.keys()}
            results[batch_size] = (res.losses, params)
        # interrupted after 3 steps, resumed from the checkpoint (rank 0 writes it for all ranks)
        path = os.path.join(out, "ckpt.pt")
        for steps, resume in ((3, False), (STEPS, True)):
            pyro.clear_param_store()
            _, model, guide = make_pair(init_seed=1 if not resume else 2)
            res = fit(
                model, guide, shard, num_steps=steps, batch_size=RANK_BATCH, optim={"lr": LR},
                seed=SEED, distributed=True, checkpoint=path, resume=resume,
            )  # fmt: skip
        results["resumed"] = res.losses
        torch.save(results, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
