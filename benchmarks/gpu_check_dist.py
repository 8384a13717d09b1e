"""benchmarks.gpu_check step on the distributed pieces, each checked against a single-process reference.

    distributed(rec, sz, work)
      NCCL group        a 1-process NCCL group: all_reduce gives the right sum; its latency
      DDP + SyncBN      2 ranks on the one GPU (gloo: NCCL refuses two ranks on one GPU) through
                        trainer.simclr.build_model (SyncBatchNorm + DDP), gradient vs one process
                        holding the whole batch
      gradient caching  trainer.gradcache vs one big batch (BN in eval mode: exact up to rounding)
      identical runs    two loaders: same sample ids and views; two trainer.simclr runs: loss difference

Tolerance of the gradient comparisons: max |g - g_ref| <= GRAD_RTOL x max |g_ref| over all parameters,
float32 with TF32 off (what differs is the order of float32 sums: per rank, per chunk, per kernel).
On the CPU (dry run) SyncBN does not exist (it is the CUDA path of build_model), so the DDP check runs
plain DDP with BN in eval mode there.
"""
from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

from benchmarks.gpu_check_core import NEEDS_CUDA, Record, Sizes, simclr_cfg, sync

GRAD_RTOL = 1e-4


def distributed(rec: Record, sz: Sizes, work: Path) -> None:
    device = torch.device(sz.device)
    rec.run("NCCL group", nccl_group, rec, device, units=("us",))
    rec.run("DDP + SyncBatchNorm", ddp_syncbn, rec, sz, device, work, units=("max rel diff",))
    rec.run("gradient caching", grad_cache, rec, sz, device, units=("max rel diff",))
    rec.run("identical runs", identical_runs, rec, sz, device, work, units=("max abs diff",))


def _fp32(device: torch.device) -> None:
    """Comparisons in true float32: TF32 would round every matmul and convolution to 10 mantissa bits."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


def nccl_group(rec: Record, device: torch.device) -> None:
    """A 1-process group: NCCL on CUDA, gloo as the CPU twin (same calls)."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group(backend, init_method=f"file://{tmp}/store", rank=0, world_size=1)
        try:
            x = torch.arange(1 << 20, dtype=torch.float32, device=device)
            dist.all_reduce(x)
            expected = float((1 << 20) * ((1 << 20) - 1) / 2)
            if float(x.double().sum()) != expected:
                raise RuntimeError("all_reduce over one rank changed the tensor")
            sync(device)
            t0 = time.perf_counter()
            for _ in range(20):
                dist.all_reduce(x[:1])
            sync(device)
            latency = (time.perf_counter() - t0) / 20 * 1e6
        finally:
            dist.destroy_process_group()
    if device.type == "cuda":
        rec.figure("NCCL 1-process group", latency, "us", "all_reduce of one float, sum checked on 4 MiB")
    else:
        rec.figure("NCCL 1-process group", None, "us", f"{NEEDS_CUDA}; gloo twin ran: {latency:.0f} us")


def _views(n: int, image: int, device: torch.device):
    g = torch.Generator().manual_seed(3)
    return (torch.rand(n, 1, image, image, generator=g).to(device),
            torch.rand(n, 1, image, image, generator=g).to(device))


def _grads(net) -> dict:
    return {name: p.grad.detach().float().cpu() for name, p in net.named_parameters() if p.grad is not None}


def _rel_diff(a: dict, b: dict) -> float:
    if a.keys() != b.keys():
        raise RuntimeError(f"gradients of different parameters: {sorted(a.keys() ^ b.keys())[:5]}")
    scale = max(float(v.abs().max()) for v in b.values())
    return max(float((a[k] - b[k]).abs().max()) for k in a) / scale


def _bn_weights_to_one(net) -> None:
    """The trainer zero-initialises the last BN of each residual branch; ones make every layer's gradient count."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.weight is not None:
                m.weight.fill_(1.0)


def _rank(rank: int, world: int, store: str, device: str, model: str, batch: int, image: int, out: str) -> None:
    """One rank of the DDP check (spawned): trainer.simclr.build_model on `world` gloo ranks."""
    from trainer.dist import Dist
    from trainer.simclr import build_model

    dev = torch.device(device)
    _fp32(dev)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        cfg = simclr_cfg(model, batch * world, image)
        wrapped, net = build_model(cfg, Dist(rank, 0, world, dev, "gloo"))
        _bn_weights_to_one(net)
        net.train(dev.type == "cuda")   # SyncBN on CUDA syncs in train mode; CPU BN is exact only in eval mode
        x1, x2 = _views(batch * world, image, dev)
        mine = slice(rank * batch, (rank + 1) * batch)
        loss = wrapped(x1[mine], x2[mine])
        loss.backward()
        if rank == 0:
            sync_bn = sum(isinstance(m, torch.nn.SyncBatchNorm) for m in net.modules())
            torch.save({"grads": _grads(net), "sync_bn_layers": sync_bn, "ddp": type(wrapped).__name__}, out)
    finally:
        dist.destroy_process_group()


def ddp_syncbn(rec: Record, sz: Sizes, device: torch.device, work: Path) -> None:
    import torch.multiprocessing as mp

    from trainer.dist import Dist
    from trainer.simclr import build_model

    world = 2
    with tempfile.TemporaryDirectory() as tmp:
        out = f"{tmp}/rank0.pt"
        # CUDA cannot be forked; on the CPU (dry run) a fork saves each rank importing torch again
        mp.start_processes(_rank, args=(world, f"{tmp}/store", sz.device, sz.dist_model, sz.dist_batch,
                                        sz.dist_image, out), nprocs=world, join=True,
                           start_method="spawn" if device.type == "cuda" else "fork")
        ranks = torch.load(out, weights_only=True)
    _fp32(device)
    _, net = build_model(simclr_cfg(sz.dist_model, sz.dist_batch * world, sz.dist_image), Dist(0, 0, 1, device, None))
    _bn_weights_to_one(net)
    net.train(device.type == "cuda")
    net(*_views(sz.dist_batch * world, sz.dist_image, device)).backward()
    diff = _rel_diff(ranks["grads"], _grads(net))
    verdict = "within" if diff <= GRAD_RTOL else "OUTSIDE"
    what = (f"{ranks['sync_bn_layers']} SyncBatchNorm layers, train mode" if device.type == "cuda"
            else "CPU twin: DDP without SyncBN (CUDA only), BN in eval mode")
    rec.figure("DDP + SyncBatchNorm, 2 ranks vs 1 process", diff, "max rel diff",
               f"{verdict} tolerance {GRAD_RTOL:g}; {what}; {sz.dist_model}, {sz.dist_image} px, "
               f"{sz.dist_batch} per rank, gloo ranks sharing one device")
    if device.type != "cuda":  # the conversion itself runs anywhere; SyncBN's forward needs CUDA
        converted = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
        layers = sum(isinstance(m, torch.nn.SyncBatchNorm) for m in converted.modules())
        rec.figure("SyncBatchNorm on CUDA", None, "max rel diff",
                   f"{NEEDS_CUDA}; build_model converts {layers} BatchNorm layers on CUDA")


def grad_cache(rec: Record, sz: Sizes, device: torch.device) -> None:
    from trainer.dist import Dist
    from trainer.gradcache import grad_cache_step
    from trainer.simclr import build_model

    _fp32(device)
    n = sz.dist_batch
    cfg = simclr_cfg(sz.dist_model, n, sz.dist_image)
    x1, x2 = _views(n, sz.dist_image, device)
    results = {}
    for precision in ("float32", "bf16"):
        if precision == "bf16" and device.type != "cuda":
            rec.figure("gradient caching, bf16", None, "max rel diff", NEEDS_CUDA)
            continue
        autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if precision == "bf16"
                    else torch.autocast(device.type, enabled=False))
        grads = []
        for cached in (False, True):
            _, net = build_model(cfg, Dist(0, 0, 1, device, None))
            _bn_weights_to_one(net)
            net.eval()  # BN in eval mode: the one setting where chunks give the whole batch's gradient exactly
            with autocast:
                if cached:
                    grad_cache_step(net, x1, x2, sz.cache_chunk)
                else:
                    net(x1, x2).backward()
            grads.append(_grads(net))
        results[precision] = _rel_diff(grads[1], grads[0])
    diff = results["float32"]
    rec.figure("gradient caching vs one batch, float32", diff, "max rel diff",
               f"{'within' if diff <= GRAD_RTOL else 'OUTSIDE'} tolerance {GRAD_RTOL:g}; batch {n} in chunks of "
               f"{sz.cache_chunk}, {sz.dist_model}, {sz.dist_image} px, BN in eval mode, TF32 off")
    if "bf16" in results:
        rec.figure("gradient caching, bf16", results["bf16"], "max rel diff",
                   "for information: bf16 rounds each chunk's activations (no tolerance claimed)")


def identical_runs(rec: Record, sz: Sizes, device: torch.device, work: Path) -> None:
    """Same seed twice: the loader's ids and views, then two short trainer.simclr runs' logged losses."""
    from benchmarks.loader_throughput import synthetic
    from trainer.data.augment import AugmentConfig
    from trainer.data.loader import make_loader
    from trainer.simclr import main as pretrain

    for folder in ("identical", "identical-runs"):  # a reused --work folder holds the last run's
        shutil.rmtree(work / folder, ignore_errors=True)
    data = synthetic(work / "identical", sz.run_samples, 256, "zstd")
    kind = "dali" if device.type == "cuda" else "torch"
    batches = []
    for _ in range(2):
        loader = make_loader(kind, data, "train", global_batch=sz.run_batch, rank=0, world_size=1, seed=0,
                             aug=AugmentConfig(image_size=sz.dist_image), workers=sz.run_workers, device=device,
                             **({"threads": sz.dali_threads} if kind == "dali" else {}))
        it = loader.epoch(0)
        batches.append([(b.ids.clone(), b.view1.cpu(), b.view2.cpu()) for _, b in zip(range(sz.run_steps), it)])
        it.close()
        loader.close()
    same_ids = all(torch.equal(a[0], b[0]) for a, b in zip(*batches))
    views = max(float((a[i] - b[i]).abs().max()) for a, b in zip(*batches) for i in (1, 2))
    rec.figure("identical runs: data order", "same" if same_ids else "DIFFERENT", "",
               f"{kind} loader, {sz.run_steps} batches of {sz.run_batch} sample ids compared")
    rec.figure("identical runs: augmented views", views, "max abs diff", f"{kind} loader, pixels in [0, 1]")
    losses = []
    for run in ("a", "b"):
        out = work / "identical-runs" / run
        pretrain(["--data", str(data), "--out", str(out), "--device", device.type, "--model", sz.dist_model,
                  "--image-size", str(sz.dist_image), "--batch-size", str(sz.run_batch), "--epochs", "1",
                  "--max-steps", str(sz.run_steps), "--log-every", "1", "--eval-every", "0", "--loader", kind,
                  "--workers", str(sz.run_workers), "--seed", "0", "--resume", "never"])
        losses.append([json.loads(line)["loss"] for line in (out / "steps.jsonl").read_text().splitlines()])
    if len(losses[0]) != sz.run_steps or len(losses[1]) != sz.run_steps:
        raise RuntimeError(f"steps.jsonl holds {len(losses[0])} and {len(losses[1])} steps, not {sz.run_steps}")
    diff = max(abs(a - b) for a, b in zip(*losses))
    rec.figure("identical runs: loss", diff, "max abs diff",
               f"trainer.simclr twice, {sz.run_steps} steps, {kind} loader, loss ~{losses[0][-1]:.3f}"
               + ("" if device.type == "cuda" else " (CPU: expected 0)"))
    rec.detail("identical runs losses", losses)
