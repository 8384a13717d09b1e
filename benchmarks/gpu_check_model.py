"""benchmarks.gpu_check steps on the model alone: the environment, the SimCLR ceiling on synthetic
input (eager and compiled, per batch size), and the fine-tuning steps (U-Net segmentation, classification).

    environment(rec, sz, work)   # GPU, memory, torch/CUDA/cuDNN/DALI versions, cores, the carried wheels
    ceiling(rec, sz, work)       # trainer.simclr's train step, bf16 + channels_last: img/s and peak memory
    finetune(rec, sz, work)      # trainer.task_heads.TaskModel steps in bf16: img/s and peak memory
"""
from __future__ import annotations

import importlib
import platform
import subprocess
import sys
import time

import torch

from benchmarks.gpu_check_core import (
    NEEDS_CUDA,
    Record,
    Sizes,
    cores,
    peak_memory,
    simclr_rate,
    sync,
    synthetic_batches,
)

# The packages the wheels bring (scripts/gpu_wheels.txt): their versions say the install worked.
CARRIED = ("nvidia.dali", "pydicom", "zstandard", "webdataset", "polars", "nibabel", "pylibjpeg", "jpeg_ls")


def _version(module: str) -> str:
    try:
        mod = importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - a broken install says why in many ways
        return f"not importable ({type(exc).__name__})"
    return str(getattr(mod, "__version__", "installed"))


def _driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def environment(rec: Record, sz: Sizes, work) -> None:
    cuda = torch.cuda.is_available()
    rec.figure("python", platform.python_version(), "")
    rec.figure("torch", torch.__version__, "")
    rec.figure("CUDA (torch built with)", torch.version.cuda, "", "" if torch.version.cuda else "CPU build of torch")
    rec.figure("cuDNN", torch.backends.cudnn.version() if cuda else None, "", "" if cuda else NEEDS_CUDA)
    if cuda:
        props = torch.cuda.get_device_properties(0)
        rec.figure("GPU", props.name, "")
        rec.figure("GPU memory", props.total_memory / 2 ** 30, "GiB")
        rec.figure("multiprocessors", props.multi_processor_count, "")
        rec.figure("driver", _driver(), "")
    else:
        rec.figure("GPU", None, "", NEEDS_CUDA)
    rec.figure("cores (this process may use)", cores(), "")
    for module in CARRIED:
        rec.figure(module, _version(module), "")
    rec.detail("machine", f"{platform.node()} {platform.machine()} {platform.platform()}")
    rec.detail("sys.path head", sys.path[:4])


def ceiling(rec: Record, sz: Sizes, work) -> None:
    """Eager first over every batch size (cheap), then compiled ones while the budget lasts."""
    device = torch.device(sz.device)
    rec.detail("setup", f"{sz.model}, {sz.image} px, SimCLR paper recipe, LARS, "
                        f"{'bf16 autocast + channels_last' if device.type == 'cuda' else 'float32 (CPU)'}, "
                        f"{sz.warmup} warm-up + {sz.steps} timed steps, synthetic input")
    for compiled, batches in ((False, sz.batches), (True, sz.compile_batches)):
        mode = f"compiled ({sz.compile_backend})" if compiled else "eager"
        for batch in batches:
            # A ResNet-50 compile may take a minute or more: start one only with 75 s of budget left.
            r = rec.run(f"{mode} batch {batch}", _one, sz, batch, compiled, device, units=("img/s", "GiB"),
                        need_s=75 if compiled and device.type == "cuda" else 5)
            if r is not None:
                _ceiling_figures(rec, mode, batch, r)


def _one(sz: Sizes, batch: int, compiled: bool, device: torch.device) -> dict:
    try:
        return simclr_rate(sz, synthetic_batches(batch, sz.image, device), batch, compiled, device)
    except torch.cuda.OutOfMemoryError:
        return {"oom": True}


def _ceiling_figures(rec: Record, mode: str, batch: int, r: dict) -> None:
    name = f"{mode} batch {batch}"
    if r.get("oom"):
        rec.figure(name, None, "img/s", "out of GPU memory at this batch")
        rec.figure(name, None, "GiB", "out of GPU memory at this batch")
        return
    rec.figure(name, r["img_per_s"], "img/s", f"{2 * r['img_per_s']:.0f} views/s")
    rec.figure(name, r["peak_gib"], "GiB",
               "peak allocated" if r["peak_gib"] is not None else NEEDS_CUDA)
    if mode != "eager":
        rec.figure(name, r["warmup_s"], "s", "the warm-up steps, compilation included")


def finetune(rec: Record, sz: Sizes, work) -> None:
    """The fine-tuning steps: U-Net segmentation and classification eager, classification compiled (trainer.finetune
    --compile), and the supervised step of a BiT ResNet-v2 (issue 19: GroupNorm and weight standardisation)."""
    device = torch.device(sz.device)
    gpu = device.type == "cuda"
    # the compiled row first: it needs most of the step's budget, the eager rows a few seconds each
    rows = (("classification", sz.cls_batch, 7, sz.model, True), ("segmentation", sz.seg_batch, 3, sz.model, False),
            ("classification", sz.cls_batch, 7, sz.model, False),
            ("classification", sz.bit_batch, 7, sz.bit_model, False))
    for kind, batch, classes, model, compiled in rows:
        name = f"{kind}{' ' + model if model != sz.model else ''}{' compiled' if compiled else ''} batch {batch}"
        # a compile may take a minute: start one only with 55 s of the budget left
        r = rec.run(name, _task_rate, sz, kind, batch, classes, device, model, compiled, units=("img/s", "GiB"),
                    need_s=55 if compiled and gpu else 0)
        if r is None:
            continue
        what = "U-Net decoder" if kind == "segmentation" else "linear head"
        mode = f", compiled ({sz.compile_backend})" if compiled else ""
        rec.figure(name, r["img_per_s"], "img/s", f"{model} + {what}, {sz.image} px, AdamW{mode}, "
                   + ("bf16 + channels_last" if gpu else "float32 (CPU)"))
        rec.figure(name, r["peak_gib"], "GiB", "peak allocated" if r["peak_gib"] is not None else NEEDS_CUDA)


def _task_rate(sz: Sizes, kind: str, batch: int, classes: int, device: torch.device, model_name: str,
               compiled: bool) -> dict:
    """A fine-tuning step as trainer.finetune's train_epoch takes it, on random images and labels; `compiled`:
    the module torch.compile'd with `sz.compile_backend`, as trainer.finetune --compile does with inductor."""
    from trainer.models import build_encoder
    from trainer.optim import lars_param_groups
    from trainer.precision import Precision
    from trainer.task_heads import TaskModel, task_loss

    torch.manual_seed(0)
    precision = Precision.of(device)   # trainer.finetune's defaults: bf16 and channels_last on GPU
    model = precision.place(TaskModel(build_encoder(model_name), kind, classes))
    optimizer = torch.optim.AdamW(lars_param_groups(model, 1e-4), lr=1e-4)
    step = torch.compile(model, backend=sz.compile_backend) if compiled else model
    x = precision.inputs(torch.rand(batch, 3, sz.image, sz.image))
    shape = (batch, sz.image, sz.image) if kind == "segmentation" else (batch,)
    y = torch.randint(0, classes, shape, device=device)
    weights = torch.ones(classes, device=device)
    model.train()
    out: dict = {}
    with peak_memory(device, out):
        for i in range(sz.warmup + sz.steps):
            if i == sz.warmup:
                sync(device)
                t0 = time.perf_counter()
            with precision.autocast():
                loss = task_loss(kind, step(x), y, weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        loss.item()
        t1 = time.perf_counter()
    return {"img_per_s": sz.steps * batch / (t1 - t0), "peak_gib": out["peak_gib"]}
