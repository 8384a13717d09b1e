"""Run a function on N gloo CPU processes (torch.multiprocessing spawn), as torchrun would set them up."""
import os
import socket

import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world: int, port: int, fn, args):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1", TLX_QUIET="1", CUDA_VISIBLE_DEVICES="")
    import torch
    torch.set_num_threads(1)
    fn(*args)


def run_ranks(fn, *args, world: int = 2) -> None:
    """fn(*args) on `world` processes with RANK/WORLD_SIZE/LOCAL_RANK set; fn must be importable (module level)."""
    mp.spawn(_entry, args=(world, free_port(), fn, args), nprocs=world, join=True)
