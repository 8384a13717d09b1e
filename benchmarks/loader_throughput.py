"""Two-view loader throughput: DALI path vs torch path, same shards, same augmentations, one run.

    python -m benchmarks.loader_throughput                       # synthetic 256 px CT shards (zstd and raw)
    python -m benchmarks.loader_throughput --data data/ --batch 256 --workers 8 --steps 50
    python -m benchmarks.loader_throughput --device cuda ...     # DALI on the GPU (default: cuda if present)
    python -m benchmarks.loader_throughput --kind rgb            # synthetic RGB JPEGs (tlx synth --kind natural)

Reports two-view samples/s per loader (after warm-up batches), and, to show what the
zstd decision costs, single-core read + decode rates of one slice for each codec. The
DALI path runs in its CPU-only mode without a GPU. Every figure is the best of
`--repeats` interleaved measurements. Prints a table and writes JSON
(benchmarks/out/loader_throughput.json).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from datakit.read import SampleReader, open_dataset
from trainer.data.augment import AugmentConfig
from trainer.data.loader import make_loader


def synthetic(root: Path, samples: int, size: int, codec: str) -> Path:
    from tests.fixtures.datasets import make_ct_dataset  # the test fixture: real ShardWriter shards
    return make_ct_dataset(root / codec, splits={"train": samples}, shard_size=128, image_size=size, codec=codec)


def synthetic_rgb(root: Path, samples: int, size: int) -> Path:
    """JPEGs of `tlx synth --kind natural` through `tlx convert class-folder` (80 % of them train)."""
    from tests.fixtures.datasets import make_natural_dataset
    return make_natural_dataset(root / "jpeg", per_class=max(1, round(samples / 8)), size=size)


def machine(device: torch.device) -> str:
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "no GPU"
    return f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {gpu}"


def save(result: dict, path: str) -> dict:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(result, indent=2) + "\n")
    return result


def decode_rate(data: Path, n: int = 300) -> float:
    """Slices/s read + decoded on one core (what one DALI external-source worker does per sample)."""
    ds = open_dataset(data)
    ext, _ = ds.member("image")
    table, reader = ds.sample_table("train"), SampleReader(ds)
    n = min(n, len(table))
    t = time.perf_counter()
    for i in range(n):
        reader.read(table, i, ext)
    return n / (time.perf_counter() - t)


def loader_rate(kind: str, data: Path, args, device: torch.device) -> float:
    aug = AugmentConfig(image_size=args.image_size, blur_p=args.blur_p)  # the loader sets rgb per dataset
    kw = {"threads": args.threads} if kind == "dali" else {}
    loader = make_loader(kind, data, "train", global_batch=args.batch, rank=0, world_size=1, seed=0, aug=aug,
                         workers=args.workers, device=device, **kw)
    steps = min(args.steps + args.warmup, loader.steps_per_epoch)
    it = loader.epoch(0)
    for _ in range(args.warmup):
        next(it)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps - args.warmup):
        batch = next(it)
    if device.type == "cuda":
        torch.cuda.synchronize()
    rate = (steps - args.warmup) * args.batch / (time.perf_counter() - t)
    assert batch.view1.shape == (args.batch, loader.channels, args.image_size, args.image_size)
    it.close()
    loader.close()
    return rate


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="a tlx dataset (default: synthetic shards in a temporary folder)")
    p.add_argument("--kind", choices=("ct", "rgb"), default="ct",
                   help="synthetic data: ct (int16 slices, zstd and raw) or rgb (JPEG, the natural-image path)")
    p.add_argument("--samples", type=int, default=640, help="synthetic: training samples")
    p.add_argument("--source-size", type=int, default=256, help="synthetic: stored slice size")
    p.add_argument("--image-size", type=int, default=256, help="view size")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=8, help="timed batches per loader")
    p.add_argument("--warmup", type=int, default=2, help="untimed batches first (worker start-up)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--threads", type=int, default=2, help="DALI operator threads")
    p.add_argument("--blur-p", type=float, default=0.5, help="0 = paper recipe, 0.5 = simclr recipe")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--loaders", default="torch,dali")
    p.add_argument("--repeats", type=int, default=3,
                   help="measure every loader this many times, interleaved; keep the best")
    p.add_argument("--json", default="benchmarks/out/loader_throughput.json")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    result = {"machine": machine(device), "args": vars(args), "loaders": {}, "decode_per_core": {}}
    with tempfile.TemporaryDirectory() as tmp:
        if args.data:
            datasets = {"given": Path(args.data)}
        elif args.kind == "rgb":
            datasets = {"jpeg": synthetic_rgb(Path(tmp), args.samples, args.source_size)}
        else:
            datasets = {c: synthetic(Path(tmp), args.samples, args.source_size, c) for c in ("zstd", "raw")}
        main_data = next(iter(datasets.values()))
        for _ in range(args.repeats):
            for name, data in datasets.items():
                result["decode_per_core"][name] = max(result["decode_per_core"].get(name, 0.0), decode_rate(data))
            for kind in args.loaders.split(","):
                result["loaders"][kind] = max(result["loaders"].get(kind, 0.0),
                                              loader_rate(kind, main_data, args, device))
    print(f"machine: {result['machine']}")
    print(f"{args.data or args.kind}: batch {args.batch}, views {args.image_size}px from {args.source_size}px, "
          f"workers {args.workers}, blur p {args.blur_p}, device {device}")
    for kind, rate in result["loaders"].items():
        print(f"  {kind:6s} loader: {rate:9.1f} two-view samples/s")
    for name, rate in result["decode_per_core"].items():
        print(f"  read+decode {name:5s}: {rate:9.1f} slices/s on one core")
    return save(result, args.json)


if __name__ == "__main__":
    main()
