"""Data-parallel scaling efficiency: T(1) and T(N) on the same global batch, E(N).

    python -m benchmarks.scaling                                   # gloo/CPU, N = 1, 2, bit-tiny, 32 px
    python -m benchmarks.scaling --ranks 1,2,4 --global-batch 64 --steps 20

T(N) is throughput: images per second of the whole job (global batch / time per optimisation
step) with N ranks, each computing global_batch / N images per step (DDP, SGD, synthetic
input, no loader). The efficiency is the issue's E(N) = T(N) / (N * T(1)): 1.0 is perfect
strong scaling (N ranks finish each step N times faster); with step times t it is
t(1) / (N * t(N)). Each rank gets `--threads` CPU threads, so N ranks use N * threads
cores: on CPU the comparison is N workers against one worker of the same size.
Each point is the best of `--repeats` interleaved runs (a shared machine's noise only
slows); the load average before and after is printed with the table. Writes
benchmarks/out/scaling.json.

Multi-node GPU (one command per node; the same global batch at every N), NCCL:

    torchrun --nnodes 1 --nproc_per_node 1 -m benchmarks.scaling --device cuda --model bit-r50x1 \\
             --image-size 224 --global-batch 256 --out benchmarks/out/scaling_n1.json
    torchrun --nnodes 4 --nproc_per_node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
             -m benchmarks.scaling --device cuda --model bit-r50x1 --image-size 224 --global-batch 256 \\
             --baseline benchmarks/out/scaling_n1.json --out benchmarks/out/scaling_n32.json

Under torchrun the script measures T(WORLD_SIZE) only; with `--baseline` (a T(1) file
from the same model, size and batch) it prints E(N). GPU runs use bf16 autocast and
channels_last.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from benchmarks.loader_throughput import machine, save
from trainer.models import build_encoder


def measure(args: argparse.Namespace, rank: int, world: int, device: torch.device) -> float:
    """Seconds per optimisation step on this job (rank 0's wall clock between barriers)."""
    torch.manual_seed(0)
    model = build_encoder(args.model, num_classes=10).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    ddp = DDP(model, device_ids=[device.index] if device.type == "cuda" else None) if world > 1 else model
    opt = torch.optim.SGD(ddp.parameters(), lr=1e-3, momentum=0.9)
    per_rank = args.global_batch // world
    gen = torch.Generator().manual_seed(rank)
    x = torch.randn(per_rank, 3, args.image_size, args.image_size, generator=gen).to(device)
    y = torch.randint(0, 10, (per_rank,), generator=gen).to(device)
    autocast = torch.autocast("cuda", torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast:
            loss = F.cross_entropy(ddp(x), y)
        loss.backward()
        opt.step()

    for _ in range(args.warmup):
        step()
    _sync(device, world)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    _sync(device, world)
    return (time.perf_counter() - t0) / args.steps


def _sync(device: torch.device, world: int) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    if world > 1:
        dist.barrier()


def _spawned(rank: int, world: int, store: str, args: argparse.Namespace, out: str) -> None:
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    torch.set_num_threads(args.threads)
    if world > 1:   # a file store: no port to pick on a shared machine
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    seconds = measure(args, rank, world, torch.device("cpu"))
    if rank == 0:
        Path(out).write_text(json.dumps(seconds))
    if world > 1:
        dist.destroy_process_group()


def cpu_points(args: argparse.Namespace) -> dict[int, float]:
    """{N: best seconds per step} over interleaved repeats, N gloo processes each."""
    best: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for n in args.ranks:
                out, store = os.path.join(tmp, f"n{n}.json"), os.path.join(tmp, f"store-{repeat}-{n}")
                mp.spawn(_spawned, args=(n, store, args, out), nprocs=n, join=True)
                best[n] = min(best.get(n, float("inf")), json.loads(Path(out).read_text()))
    return best


def with_baseline(seconds: dict[int, float], baseline: str) -> dict[int, float]:
    """T(1)'s seconds per step from a single-rank result file, unless this job measured N = 1 itself."""
    rows = {r["ranks"]: r for r in json.loads(Path(baseline).read_text())["rows"]}
    if 1 not in rows:
        raise SystemExit(f"--baseline {baseline}: no single-rank row (run it with one process first)")
    return {1: rows[1]["seconds_per_step"], **seconds}


def table(args: argparse.Namespace, seconds: dict[int, float]) -> list[dict]:
    """Rows with T(N) = images/s and E(N) = T(N) / (N T(1)) (E only where T(1) is known)."""
    rows = []
    for n, s in sorted(seconds.items()):
        thr = args.global_batch / s
        eff = thr / (n * args.global_batch / seconds[1]) if 1 in seconds else None
        rows.append({"ranks": n, "seconds_per_step": s, "images_per_s": thr, "efficiency": eff})
    return rows


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="bit-tiny")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--global-batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="CPU threads per rank")
    p.add_argument("--ranks", type=lambda s: [int(v) for v in s.split(",")], default=[1, 2])
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--baseline", help="T(1) json of a single-rank run (torchrun mode)")
    p.add_argument("--out", default="benchmarks/out/scaling.json")
    args = p.parse_args(argv)
    worlds = [int(os.environ["WORLD_SIZE"])] if "WORLD_SIZE" in os.environ else args.ranks
    for n in worlds:
        if n < 1 or args.global_batch % n:
            p.error(f"--global-batch {args.global_batch} is not divisible by {n} ranks "
                    f"(the same global batch at every N)")
    load_before = os.getloadavg()
    if "WORLD_SIZE" in os.environ:    # torchrun: this job is one point
        return _torchrun_point(args, load_before)
    seconds = cpu_points(args)
    result = {"machine": machine(torch.device("cpu")), "load_before": load_before, "load_after": os.getloadavg(),
              "args": {k: v for k, v in vars(args).items()}, "rows": table(args, seconds)}
    _print(result)
    return save(result, args.out)


def _torchrun_point(args: argparse.Namespace, load_before) -> dict:
    rank, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    device = torch.device(f"cuda:{local}") if args.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    seconds = {world: measure(args, rank, world, device)}
    if world > 1:
        dist.destroy_process_group()
    if args.baseline:
        seconds = with_baseline(seconds, args.baseline)
    result = {"machine": machine(device), "load_before": load_before, "load_after": os.getloadavg(),
              "args": vars(args), "rows": table(args, seconds)}
    if rank == 0:
        _print(result)
        save(result, args.out)
    return result


def _print(result: dict) -> None:
    print(f"{result['machine']}; load average before {result['load_before'][0]:.2f}, "
          f"after {result['load_after'][0]:.2f}")
    print(f"{'N':>3} {'s/step':>9} {'images/s':>9} {'E(N)':>6}")
    for r in result["rows"]:
        eff = "-" if r["efficiency"] is None else f"{r['efficiency']:.2f}"
        print(f"{r['ranks']:>3} {r['seconds_per_step']:>9.4f} {r['images_per_s']:>9.1f} {eff:>6}")


if __name__ == "__main__":
    main()
