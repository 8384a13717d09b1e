"""SimCLR training throughput: synthetic in-memory input vs real shards through each loader.

    python -m benchmarks.train_throughput                          # CPU defaults: resnet-tiny, 64 px
    python -m benchmarks.train_throughput --model resnet50 --image-size 256 --batch 256 --steps 30 \\
           --data data/ --workers 8                                 # one H100: bf16, channels_last
    python -m benchmarks.train_throughput --compile ...             # with torch.compile

One process, one device: the same SimCLRModel, LARS and training step as trainer.simclr
(`train_step`), bf16 autocast and channels_last on GPU. `synthetic` feeds the same
random batch every step (no loading at all: the model's own ceiling); `torch` and
`dali` feed real shards through the loaders. Reports images/s (an image = one slice =
two views) and each loader's fraction of the synthetic rate; every input is measured
`--repeats` times, interleaved, and the best kept (a shared machine's noise only slows). Writes
benchmarks/out/train_throughput.json.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.loader_throughput import machine, save, synthetic
from trainer.data.augment import AugmentConfig
from trainer.data.loader import make_loader
from trainer.models import build_encoder
from trainer.models.projector import build_projector
from trainer.models.simclr_model import SimCLRModel
from trainer.optim import LARS, lars_param_groups
from trainer.precision import Precision
from trainer.simclr import train_step


def _model(args, device):
    torch.manual_seed(0)
    enc = build_encoder(args.model)
    net = Precision.of(device).place(SimCLRModel(enc, build_projector("paper", enc.feature_dim), 0.5))
    model = torch.compile(net) if args.compile else net
    return model, LARS(lars_param_groups(net, 1e-6), lr=0.1)


def rate(batches, args, device) -> float:
    model, opt = _model(args, device)
    precision = Precision.of(device)
    autocast, fmt = precision.autocast(), precision.memory_format
    for _ in range(args.warmup):
        b = next(batches)
        train_step(model, opt, b[0], b[1], autocast, fmt)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(args.steps):
        b = next(batches)
        loss = train_step(model, opt, b[0], b[1], autocast, fmt)
    loss.item()  # waits for the GPU
    return args.steps * args.batch / (time.perf_counter() - t)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="a tlx dataset (default: synthetic shards in a temporary folder)")
    p.add_argument("--model", default="resnet-tiny")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--source-size", type=int, default=256, help="synthetic shards: stored slice size")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--inputs", default="synthetic,torch,dali")
    p.add_argument("--repeats", type=int, default=3,
                   help="measure every input this many times, interleaved; keep the best")
    p.add_argument("--json", default="benchmarks/out/train_throughput.json")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    need = (args.steps + args.warmup) * args.batch
    result = {"machine": machine(device), "args": vars(args), "images_per_s": {}}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(args.data) if args.data else synthetic(Path(tmp), need + args.batch, args.source_size, "zstd")
        for kind in [k for _ in range(args.repeats) for k in args.inputs.split(",")]:
            best = result["images_per_s"].get(kind, 0.0)
            if kind == "synthetic":
                x = torch.rand(args.batch, 1, args.image_size, args.image_size, device=device)
                batches = iter(lambda: (x, x.flip(-1)), None)
                result["images_per_s"][kind] = max(best, rate(batches, args, device))
                continue
            loader = make_loader(kind, data, "train", global_batch=args.batch, rank=0, world_size=1, seed=0,
                                 aug=AugmentConfig(image_size=args.image_size), workers=args.workers, device=device)
            if loader.steps_per_epoch < args.steps + args.warmup:
                raise SystemExit(f"--data has {loader.steps_per_epoch} batches per epoch; "
                                 f"need {args.steps + args.warmup}")
            it = loader.epoch(0)
            result["images_per_s"][kind] = max(best, rate((b[:2] for b in it), args, device))
            it.close()
            loader.close()
    base = result["images_per_s"].get("synthetic")
    print(f"machine: {result['machine']}")
    print(f"{args.model}, {args.image_size}px, batch {args.batch}, {args.steps} timed steps, workers {args.workers}, "
          f"device {device}{', compiled' if args.compile else ''}")
    for kind, r in result["images_per_s"].items():
        share = f"  ({r / base:.0%} of synthetic)" if base and kind != "synthetic" else ""
        print(f"  {kind:9s}: {r:9.1f} images/s  ({2 * r:9.1f} views/s){share}")
    return save(result, args.json)


if __name__ == "__main__":
    main()
