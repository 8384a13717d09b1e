"""benchmarks.gpu_check step on real shards: a synthetic DICOM cohort converted on every core, then the
two-view loaders alone and feeding trainer.simclr's train step, against the synthetic-input ceiling.

    real_data(rec, sz, work)
      tlx synth          files/s on all cores (the input; not a target)
      tlx shard          slices/s end to end (scan + plan + write) on all cores, and per core
      torch / dali loader   two-view samples/s (benchmarks.loader_throughput.loader_rate: views at the
                            model's size, paper recipe), and the DALI loader as a multiple of the ceiling
      training           img/s fed by each loader, as a percentage of synthetic input at the same batch
"""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import torch

from benchmarks.gpu_check_core import Record, Sizes, simclr_rate, synthetic_batches


def real_data(rec: Record, sz: Sizes, work: Path) -> None:
    device = torch.device(sz.device)
    data = rec.run("tlx synth + tlx shard", make_dataset, rec, sz, work, units=("slices/s",))
    if data is None:
        return
    loaders = ("torch", "dali")
    rates = {kind: rec.run(f"{kind} loader", loader_rate, kind, data, sz, device, units=("samples/s",))
             for kind in loaders}
    for kind, rate in rates.items():
        if rate is not None:
            rec.figure(f"{kind} loader", rate, "samples/s",
                       f"two views of {sz.image} px per sample, batch {sz.loader_batch}, {sz.workers} workers"
                       + (f", {sz.dali_threads} DALI threads, DALI on {device.type}" if kind == "dali" else ""))
    base = rec.run("synthetic input", simclr_rate, sz, synthetic_batches(sz.loader_batch, sz.image, device),
                   sz.loader_batch, False, device, units=("img/s",))
    if base is not None:
        rec.figure(f"synthetic input, batch {sz.loader_batch}", base["img_per_s"], "img/s",
                   "the ceiling at the loaders' batch, eager, measured in this step")
        if rates.get("dali") is not None:
            rec.figure("DALI loader / model", rates["dali"] / base["img_per_s"], "x",
                       "two-view samples/s delivered over img/s consumed (target >= 3)")
    for kind in loaders:
        r = rec.run(f"training with {kind} loader", _train_rate, kind, data, sz, device, units=("img/s", "%"))
        if r is None:
            continue
        rec.figure(f"training with {kind} loader", r["img_per_s"], "img/s", f"batch {sz.loader_batch}, eager")
        share = None if base is None else 100 * r["img_per_s"] / base["img_per_s"]
        rec.figure(f"training with {kind} loader", share, "%",
                   "of synthetic input at the same batch (target >= 95 with DALI)" if base else
                   "no synthetic figure to compare with")


def make_dataset(rec: Record, sz: Sizes, work: Path) -> Path:
    """tlx synth, then tlx shard on every core (what a user runs); the figures of both."""
    from datakit.pipeline import shard
    from datakit.plan import PlanConfig
    from datakit.synth.make_cohort import synth_cohort
    from datakit.write_config import RunOptions, WriteConfig

    n = sz.convert_workers
    cohort, data, secret = work / "cohort", work / "data", work / "secret"
    for folder in (cohort, data):
        shutil.rmtree(folder, ignore_errors=True)
    t0 = time.perf_counter()
    made = synth_cohort(cohort, patients=sz.patients, seed=0, matrix=sz.matrix, workers=n)
    t1 = time.perf_counter()
    rec.figure(f"tlx synth, {n} workers", made["files"] / (t1 - t0), "files/s",
               f"{made['files']} files, {sz.patients} patients at {sz.matrix}x{sz.matrix}, {t1 - t0:.1f} s")
    if sz.keep_volumes is not None:
        _keep_volumes(cohort, sz.keep_volumes)
    secret.write_text("tlx-gpu-check-fixed-secret-0123\n")  # fixed: the same splits on every run; 16+ bytes
    t0 = time.perf_counter()
    summary = shard(cohort, data, secret_file=secret, plan_config=PlanConfig(fractions=(0.9, 0.05, 0.05)),
                    write_config=WriteConfig(size=(sz.shard_size, sz.shard_size)), options=RunOptions(workers=n))
    seconds = time.perf_counter() - t0
    slices = summary.write.slices_converted
    rec.figure(f"tlx shard, {n} workers", slices / seconds, "slices/s",
               f"scan + plan + write, {slices} slices converted in {seconds:.1f} s "
               f"({slices / seconds / n:.1f} per core), {sz.shard_size}x{sz.shard_size} zstd-3")
    return data


def _keep_volumes(cohort: Path, n: int) -> None:
    """The dry run's cut: delete every file but those of the cohort's first `n` CT volumes (cohort.json,
    the synthesiser's ground truth, says which file is what), so that sharding takes seconds."""
    import json

    truth = json.loads((cohort / "cohort.json").read_text())
    keep = [s["key"] for s in truth["series"] if s["kind"] == "volume"][:n]
    for f in truth["files"]:
        if f["series"] not in keep:
            (cohort / f["path"]).unlink(missing_ok=True)


def _loader_args(kind: str, data: Path, sz: Sizes) -> argparse.Namespace:
    """benchmarks.loader_throughput's arguments, with the batches the dataset's train split holds checked."""
    from trainer.data.augment import AugmentConfig
    from trainer.data.loader import make_loader

    loader = make_loader("torch", data, "train", global_batch=sz.loader_batch, rank=0, world_size=1, seed=0,
                         aug=AugmentConfig(image_size=sz.image), workers=0, device=torch.device("cpu"))
    have, need = loader.steps_per_epoch, sz.warmup + sz.steps
    loader.close()
    if have < need:
        raise RuntimeError(f"the train split holds {have} batches of {sz.loader_batch}; the {kind} measurement "
                           f"needs {need}: synthesise more patients")
    return argparse.Namespace(image_size=sz.image, blur_p=0.0, threads=sz.dali_threads, batch=sz.loader_batch,
                              workers=sz.workers, steps=sz.steps, warmup=sz.warmup)


def loader_rate(kind: str, data: Path, sz: Sizes, device: torch.device) -> float:
    from benchmarks.loader_throughput import loader_rate as measure

    return measure(kind, data, _loader_args(kind, data, sz), device)


def _train_rate(kind: str, data: Path, sz: Sizes, device: torch.device) -> dict:
    from trainer.data.augment import AugmentConfig
    from trainer.data.loader import make_loader

    _loader_args(kind, data, sz)  # enough batches for warm-up and timed steps inside one epoch
    kw = {"threads": sz.dali_threads} if kind == "dali" else {}
    loader = make_loader(kind, data, "train", global_batch=sz.loader_batch, rank=0, world_size=1, seed=0,
                         aug=AugmentConfig(image_size=sz.image, blur_p=0.0), workers=sz.workers, device=device, **kw)
    it = loader.epoch(0)
    try:
        return simclr_rate(sz, ((b.view1, b.view2) for b in it), sz.loader_batch, False, device)
    finally:
        it.close()
        loader.close()
