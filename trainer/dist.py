"""Distributed setup: read what torchrun put in the environment, start the process group.

    from trainer.dist import init_dist, close_dist, loader_workers
    env = init_dist("auto")        # Dist(rank, local_rank, world_size, device, backend)
    ...                            # env.is_main: rank 0, the one that writes and draws
    close_dist(env)

Launched by `torchrun`, the environment holds RANK, WORLD_SIZE and LOCAL_RANK (and the
rendezvous address); launched by plain `python`, none of them is set and this is a
single process (rank 0 of 1) with no process group. GPUs talk NCCL, CPUs talk gloo.
A rank that cannot meet its peers within $TLX_DIST_TIMEOUT seconds (default 300) raises
TrainerError saying which rank waited for what (trainer/dist_join.py).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from tlxcore.runtime import default_workers
from trainer.config import opt
from trainer.dist_join import join_process_group, join_timeout_s
from trainer.errors import TrainerError

DEVICES = ("auto", "cuda", "cpu")
# More loader processes per rank than this buy little (benchmarks/RESULTS.md: one or two cores decode the
# 1,500 zstd slices/s a GPU takes) and each holds its prefetched batches in memory.
MAX_LOADER_WORKERS = 8


@dataclass(frozen=True)
class Dist:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    backend: str | None  # None: a single process, no process group

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_dist(device: str = "auto") -> Dist:
    """Pick the device (`auto` = cuda when available) and join torchrun's process group if any."""
    if device not in DEVICES:
        raise TrainerError(f"--device {device!r} is not one of {', '.join(DEVICES)}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise TrainerError("--device cuda but no CUDA GPU is visible; use --device cpu")
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if device == "cuda":
        torch.cuda.set_device(local_rank)  # before init_process_group, so NCCL binds the right GPU
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    backend = None
    if world_size > 1:
        backend = "nccl" if device == "cuda" else "gloo"
        # One token per torchrun round, agreed through the store, and a deadline for meeting the
        # peers: see trainer/dist_join.py for why and how.
        join_process_group(backend, dev, rank, world_size, join_timeout_s())
    return Dist(rank, local_rank, world_size, dev, backend)


def close_dist(env: Dist) -> None:
    if env.backend is not None and dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def loader_workers() -> int:
    """The default of the trainers' --workers: the cores this rank may use, that is the cores of the
    process's affinity mask (tlxcore.runtime.default_workers: a SLURM task's share, or the machine)
    divided among the ranks torchrun started on this node (LOCAL_WORLD_SIZE), at least 1 and at
    most MAX_LOADER_WORKERS."""
    ranks_here = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    return max(1, min(MAX_LOADER_WORKERS, default_workers() // ranks_here))


def workers_flag():
    """The `--workers` field of a trainer's config dataclass (None until resolved by loader_workers)."""
    return opt(None, "data loading processes per rank, 0: in the training process [default: the cores this "
                     f"rank may use (its affinity mask over the ranks on its node), at most {MAX_LOADER_WORKERS}]")


def gather_floats(value: float) -> list[float]:
    """Every rank's `value`, in rank order (a collective: every rank calls it); [value] in one process."""
    if not is_distributed():
        return [float(value)]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, float(value))
    return out


def rank_share(per_rank: list[float] | None, fallback: float, env: Dist) -> float:
    """This rank's entry of what gather_floats saved in a checkpoint (e.g. its running loss sum).

    Resumed on another number of ranks, every rank carries the saved ranks' mean, so that the mean
    over ranks at the end of the epoch is still right. `fallback` (a checkpoint written before the
    per-rank list existed held rank 0's value only) is used when there is no list.
    """
    if not per_rank:
        return fallback
    return per_rank[env.rank] if len(per_rank) == env.world_size else sum(per_rank) / len(per_rank)


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Every rank takes rank 0's buffers (BatchNorm running statistics); a no-op in one process.

    DDP copies rank 0's buffers at the start of every training forward, not after the last one, so
    without this each rank would evaluate its share with statistics of its own, and not the model
    that rank 0 saves (best.pt, last.pt), which is also what a resumed run starts from.
    """
    if is_distributed():
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def all_reduce_mean(value: float | torch.Tensor, device: torch.device | None = None) -> float:
    """The mean of a scalar over all ranks (the scalar itself in a single process)."""
    if device is None and is_distributed() and dist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())  # NCCL reduces GPU tensors only
    t = torch.as_tensor(value, dtype=torch.float64, device=device).detach().clone()
    if is_distributed():
        dist.all_reduce(t)
        t /= dist.get_world_size()
    return float(t)
