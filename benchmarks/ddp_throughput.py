"""Throughput of ``fit`` with 1 and 2 processes (data-parallel over torch.distributed).

Every configuration runs in its own fresh process(es): the single-process rows run plain
``fit``; the 2-process row is launched with torchrun and runs ``fit(..., distributed=True)`` with
gloo (CPU) or NCCL (``--device cuda``). Strong scaling: the global batch is fixed and split across
ranks, so all rows take the same optimization steps. Each rank reads only its shard of the rows
(``shard_range``). Threads per process are set with ``torch.set_num_threads`` (column "threads").

    python -m benchmarks.ddp_throughput                 # the table (CPU, gloo)
    python -m benchmarks.ddp_throughput --device cuda   # 1 vs 2 GPUs (NCCL)

The worker is also the runnable scale-out example:

    torchrun --standalone --nproc_per_node 2 -m benchmarks.ddp_throughput --worker --distributed
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def worker(args: argparse.Namespace) -> None:
    import pyro
    import pyro.distributions as dist
    import torch
    from pyro.infer import config_enumerate

    from pyro_mixflows import FlowComponents
    from pyro_mixflows.datasets import make_two_moons
    from pyro_mixflows.infer import fit, shard_range

    torch.set_num_threads(args.threads)
    world = int(os.environ.get("WORLD_SIZE", 1)) if args.distributed else 1
    rank = int(os.environ.get("RANK", 0)) if args.distributed else 0
    start, stop = shard_range(args.rows, rank, world)
    X, _ = make_two_moons(args.rows, seed=0)
    x = torch.tensor(X[start:stop], dtype=torch.float32)  # this rank's rows only
    x = (x - torch.tensor([0.5, 0.25])) / torch.tensor([0.87, 0.5])  # roughly standardized

    torch.manual_seed(0)  # the same initial flows on every rank (DDP broadcasts rank 0's anyway)
    comps = FlowComponents(
        args.components, 2, flow="spline_coupling", num_layers=4, hidden_dims=(64, 64)
    )
    logits = torch.zeros(args.components)

    @config_enumerate
    def model(x, subsample=None):
        pyro.module("components", comps)
        with pyro.plate("data", x.shape[0], subsample=subsample) as idx:
            z = pyro.sample("z", dist.Categorical(logits=logits.to(x.device)))
            pyro.sample("x", comps.component(z), obs=x[idx])

    def guide(x, subsample=None):
        pass

    if args.device == "cuda":
        comps.to(torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))))
    rank_batch = args.batch_size // world
    options = dict(batch_size=rank_batch, optim={"lr": 1e-3}, seed=0, device=args.device)
    if args.distributed:
        options["distributed"] = True
        torch.distributed.init_process_group("nccl" if args.device == "cuda" else "gloo")
    fit(model, guide, x, num_steps=3, **options)  # warm-up: lazy initialization, allocator
    result = fit(model, guide, x, num_steps=args.steps, **options)
    if args.distributed:
        torch.distributed.destroy_process_group()
    if rank == 0:
        row = {
            "processes": world,
            "threads": args.threads,
            "rank_batch": rank_batch,
            "global_batch": rank_batch * world,
            "steps": args.steps,
            "seconds": result.time,
            "points_per_s": args.steps * rank_batch * world / result.time,
            "final_loss_per_point": sum(result.losses[-5:]) / 5 / args.rows,
        }
        print("RESULT " + json.dumps(row), flush=True)


def run(cmd: list[str]) -> dict:
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stdout}\n{out.stderr}")
    return json.loads(lines[-1][len("RESULT ") :])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20000, help="data rows N")
    parser.add_argument("--components", type=int, default=4, help="mixture components K")
    parser.add_argument("--batch-size", type=int, default=1024, help="global batch per step")
    parser.add_argument("--steps", type=int, default=30, help="timed steps")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--distributed", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    common = [
        "--worker", "--rows", str(args.rows), "--components", str(args.components), "--batch-size", str(args.batch_size),
        "--steps", str(args.steps), "--device", args.device,
    ]  # fmt: skip
    single = [sys.executable, "-m", "benchmarks.ddp_throughput", *common]
    ddp = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "benchmarks.ddp_throughput", *common, "--distributed", "--threads", "1",
    ]  # fmt: skip
    configs = [("fit", [*single, "--threads", "1"]), ("fit, distributed", ddp)]
    if args.device == "cpu":
        configs.insert(1, ("fit", [*single, "--threads", "2"]))
    rows = []
    for label, cmd in configs:
        t = time.perf_counter()
        rows.append((label, run(cmd), time.perf_counter() - t))
    base = rows[0][1]["points_per_s"]
    print(
        f"two moons N={args.rows}, K={args.components} spline flows (4 layers, 64x64), device {args.device}, "
        f"{args.steps} timed steps after 3 warm-up steps, global batch {args.batch_size}"
    )
    header = f"{'run':<18}{'procs':>6}{'threads':>8}{'batch/rank':>11}{'s':>8}{'points/s':>11}{'speed-up':>9}{'loss/pt':>9}"
    print(header)
    print("-" * len(header))
    for label, r, _ in rows:
        print(
            f"{label:<18}{r['processes']:>6}{r['threads']:>8}{r['rank_batch']:>11}"
            f"{r['seconds']:>8.2f}{r['points_per_s']:>11.0f}{r['points_per_s'] / base:>9.2f}"
            f"{r['final_loss_per_point']:>9.3f}"
        )


if __name__ == "__main__":
    main()
