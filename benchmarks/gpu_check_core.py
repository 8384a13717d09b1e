"""What every step of benchmarks.gpu_check shares: the sizes of a full and a dry run, the record a
step writes as it goes, and the SimCLR throughput measurement.

    sz = sizes(dry_run=False)                       # ResNet-50, 256 px, batches 128/256/512 on cuda
    rec = Record(path, "ceiling", deadline=time.monotonic() + 150)
    rec.run("eager batch 256", measure, ...)        # an exception becomes the part's error; the step goes on
    rec.figure("eager batch 256", 2612.0, "img/s")  # saved to `path` at once: a killed step keeps its figures
    rate, peak = simclr_rate(sz, batches, batch=256, compiled=False)
"""
from __future__ import annotations

import contextlib
import gc
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tlxcore.atomic import write_json_atomic

NEEDS_CUDA = "needs CUDA (not measured on this machine)"
NO_BUDGET = "not run: the step's time budget was spent"


@dataclass(frozen=True)
class Sizes:
    """Everything a step sizes; `full` is one H100 within 8 minutes, `dry` one CPU core within seconds."""
    device: str
    model: str
    image: int
    batches: tuple[int, ...]          # per-GPU SimCLR batches of the ceiling
    warmup: int                       # untimed steps before every timed run (compile happens here)
    steps: int                        # timed steps
    compile_backend: str              # torch.compile backend of the ceiling's compiled runs
    compile_batches: tuple[int, ...]  # batches measured compiled, in this order while the budget lasts
    patients: int                     # tlx synth cohort of the real-data step
    matrix: int
    shard_size: int                   # tlx shard --size
    keep_volumes: int | None          # shard only this many of the cohort's CT volumes (None: the whole cohort)
    convert_workers: int              # processes of tlx synth and tlx shard
    loader_batch: int
    workers: int
    dali_threads: int
    dist_model: str
    dist_image: int
    dist_batch: int                   # per rank, and the gradient-caching batch
    cache_chunk: int
    run_samples: int                  # fixture shards of the two identical runs
    run_steps: int
    run_batch: int
    run_workers: int                  # loader workers of the identical runs (fewer start faster)
    seg_batch: int
    cls_batch: int
    bit_model: str                    # the BiT ResNet-v2 of the supervised step (issue 19)
    bit_batch: int
    mi_volumes: int
    mi_slices: int
    mi_size: int
    budgets: dict = field(default_factory=dict)  # step -> seconds


def cores() -> int:
    """The cores this process may use (a container's share, not the host's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def sizes(dry_run: bool) -> Sizes:
    if dry_run:
        # Every step's code at toy sizes, one worker: about 40 s of CPU in all.
        return Sizes(device="cpu", model="resnet-tiny", image=32, batches=(2, 4), warmup=1, steps=1,
                     compile_backend="eager", compile_batches=(2,),
                     patients=1, matrix=32, shard_size=32, keep_volumes=2, convert_workers=1,
                     loader_batch=4, workers=0, dali_threads=1,
                     dist_model="resnet-tiny", dist_image=32, dist_batch=2, cache_chunk=1,
                     run_samples=16, run_steps=2, run_batch=4, run_workers=0,
                     seg_batch=2, cls_batch=2, bit_model="bit-tiny", bit_batch=2,
                     mi_volumes=1, mi_slices=4, mi_size=16,
                     budgets={"environment": 30, "ceiling": 60, "real_data": 120, "distributed": 90,
                              "finetune": 30, "scale_factors": 30})
    # One H100, 16 cores. The budgets add up to 450 s of the run's 465 (each includes its process's start).
    # Compiling a ResNet-50 takes about a minute per batch size, so compiled runs go in order of interest
    # while the ceiling's budget lasts; the fine-tuning step compiles once (its classification row) first.
    # 40 patients give about 4,600 training slices: 18 batches of 256.
    return Sizes(device="cuda", model="resnet50", image=256, batches=(128, 256, 512), warmup=3, steps=10,
                 compile_backend="inductor", compile_batches=(256, 512),
                 patients=40, matrix=512, shard_size=256, keep_volumes=None, convert_workers=cores(),
                 loader_batch=256, workers=min(16, cores()), dali_threads=4,
                 dist_model="resnet50", dist_image=64, dist_batch=16, cache_chunk=4,
                 run_samples=512, run_steps=6, run_batch=64, run_workers=4,
                 seg_batch=64, cls_batch=256, bit_model="bit-r50x1", bit_batch=128,
                 mi_volumes=2, mi_slices=130, mi_size=256,
                 budgets={"environment": 20, "ceiling": 120, "real_data": 120, "distributed": 80,
                          "finetune": 70, "scale_factors": 40})


class Record:
    """One step's results, saved to `path` after every change (the parent reads it even after a kill)."""

    def __init__(self, path: str | os.PathLike, step: str, deadline: float):
        self.path, self.deadline = Path(path), deadline
        self.data = {"step": step, "figures": [], "errors": [], "details": {}}
        self.save()

    def save(self) -> None:
        write_json_atomic(self.data, self.path)

    def time_left(self) -> float:
        return self.deadline - time.monotonic()

    def figure(self, name: str, value, unit: str, note: str = "") -> None:
        """A figure of the table; value None = not measured, and `note` says why."""
        self.data["figures"].append({"name": name, "value": value, "unit": unit, "note": note})
        self.save()

    def detail(self, key: str, value) -> None:
        self.data["details"][key] = value
        self.save()

    def run(self, name: str, fn, *args, units: tuple[str, ...] = (), need_s: float = 0.0, **kwargs):
        """fn(*args, **kwargs), or None when it raised (its error recorded, its figures `units` left open)
        or when less than `need_s` seconds of the budget are left."""
        if self.time_left() < need_s:
            for unit in units:
                self.figure(name, None, unit, NO_BUDGET)
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - a failing part is a result of the check, not its end
            message = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            self.data["errors"].append({"part": name, "error": message[:500],
                                        "trace": traceback.format_exc(limit=6)[-2000:]})
            for unit in units:
                self.figure(name, None, unit, f"failed: {message[:200]}")
            return None
        finally:
            free_memory()


def free_memory() -> None:
    """Let the next part start from an empty GPU (an out-of-memory part leaves tensors behind otherwise)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def peak_memory(device: torch.device, out: dict):
    """out["peak_gib"]: the most GPU memory torch allocated inside the block (None on CPU)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    yield
    out["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None


def simclr_cfg(model: str, batch: int, image: int, compiled: bool = False):
    """trainer.simclr's resolved config for a throughput run (paper recipe; the run folders are never made)."""
    from trainer.simclr import SimCLRConfig, resolve

    return resolve(SimCLRConfig(data="-", out="-", model=model, batch_size=batch, image_size=image, workers=0,
                                compile=compiled))


def simclr_trainer(sz: Sizes, batch: int, compiled: bool, device: torch.device, model_name: str | None = None):
    """(model, optimizer, autocast, memory format) as trainer.simclr builds and steps them on one device.
    A compiled run on the CPU (the dry run) uses `sz.compile_backend` instead of the trainer's inductor."""
    from trainer.dist import Dist
    from trainer.optim import LARS, lars_param_groups
    from trainer.precision import Precision
    from trainer.simclr import build_model

    cfg = simclr_cfg(model_name or sz.model, batch, sz.image, compiled and sz.compile_backend == "inductor")
    model, net = build_model(cfg, Dist(0, 0, 1, device, None))
    if compiled and sz.compile_backend != "inductor":
        model = torch.compile(model, backend=sz.compile_backend)
    optimizer = LARS(lars_param_groups(net, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum)
    precision = Precision.of(device, cfg.bf16, cfg.channels_last)
    return model, optimizer, precision.autocast(), precision.memory_format


def simclr_rate(sz: Sizes, batches, batch: int, compiled: bool, device: torch.device) -> dict:
    """SimCLR training images/s (an image = two views) over `sz.steps` timed steps of trainer.simclr.train_step,
    after `sz.warmup` untimed ones; `batches` yields (view1, view2) on `device`. Also the peak GPU memory and
    the seconds of the warm-up (where torch.compile compiles)."""
    from trainer.simclr import train_step

    model, optimizer, autocast, fmt = simclr_trainer(sz, batch, compiled, device)
    out: dict = {}
    with peak_memory(device, out):
        t0 = time.perf_counter()
        for _ in range(sz.warmup):
            x1, x2 = next(batches)
            train_step(model, optimizer, x1, x2, autocast, fmt)
        sync(device)
        t1 = time.perf_counter()
        for _ in range(sz.steps):
            x1, x2 = next(batches)
            loss = train_step(model, optimizer, x1, x2, autocast, fmt)
        loss = loss.item()  # waits for the device
        t2 = time.perf_counter()
    return {"img_per_s": sz.steps * batch / (t2 - t1), "warmup_s": t1 - t0, "peak_gib": out["peak_gib"], "loss": loss}


def synthetic_batches(batch: int, image: int, device: torch.device):
    """The same random pair of views every step: no loading at all (the model's ceiling)."""
    x = torch.rand(batch, 1, image, image, device=device)
    pair = (x, x.flip(-1))
    while True:
        yield pair
