"""Tiny synthetic inputs for the analysis tests: tlx datasets of CT-like volumes and run trees."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import zstandard

from datakit.shards import ShardWriter


def write_ct_dataset(root: Path, volumes: dict[str, np.ndarray], split: str = "train",
                     samples_per_shard: int = 7, seed: int = 0) -> Path:
    """A tlx dataset (format v1) holding `volumes` (id -> (slices, H, W) int16), shuffled over shards."""
    root.mkdir(parents=True, exist_ok=True)
    rows = [(vol, i) for vol, arr in volumes.items() for i in range(len(arr))]
    order = np.random.default_rng(seed).permutation(len(rows))
    shape = next(iter(volumes.values())).shape[1:]
    slices, shards = [], []
    zc = zstandard.ZstdCompressor(level=3)
    for s, start in enumerate(range(0, len(rows), samples_per_shard)):
        rel = f"shards/{split}/{split}-{s:06d}.tar"
        with ShardWriter(root / rel) as w:
            for j in order[start:start + samples_per_shard]:
                vol, i = rows[j]
                key = f"{vol}-s{i:04d}"
                w.write(key, {"hu.zst": zc.compress(volumes[vol][i].astype("<i2").tobytes()), "cls": b"0"})
                slices.append({"key": key, "split": split, "shard": rel, "label": "head", "label_index": 0,
                               "patient": f"p-{vol}", "volume": vol, "slice_index": i})
        shards.append({"split": split, "path": rel, "index": rel[:-4] + ".idx", "samples": w.info.samples,
                       "bytes": w.info.bytes, "sha256": w.info.sha256})
    pl.DataFrame(slices).with_columns(pl.col("slice_index").cast(pl.Int32)).write_parquet(root / "slices.parquet")
    manifest = {
        "format": "tlx-shards", "format_version": 1, "kind": "ct-slices", "tool_version": "test", "config": {},
        "members": {"hu.zst": {"role": "image", "codec": "zstd", "dtype": "int16", "byteorder": "little",
                               "shape": list(shape), "units": "HU"},
                    "cls": {"role": "label", "codec": "ascii-int"}},
        "classes": ["head"], "splits": {split: {"samples": len(rows), "volumes": len(volumes)}}, "shards": shards,
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def smooth_volume(rng: np.random.Generator, slices: int, size: int, correlation: float) -> np.ndarray:
    """CT-like int16 volume: smooth blobs, neighbouring slices alike with the given correlation."""
    def field():
        f = rng.normal(size=(size, size))
        k = np.fft.fftfreq(size)
        spectrum = np.exp(-((k[:, None] ** 2 + k[None, :] ** 2) * 300))
        f = np.real(np.fft.ifft2(np.fft.fft2(f) * spectrum))
        return f / f.std()

    out = [field()]
    for _ in range(slices - 1):
        out.append(correlation * out[-1] + np.sqrt(1 - correlation**2) * field())
    return (np.stack(out) * 300).astype(np.int16)


def write_run(root: Path, task: str, init: str, seed: int, *, setting: str = "finetune", fraction: float = 1.0,
              metrics: dict | None = None, curve: list[dict] | None = None, correct: dict | None = None,
              first_layers: dict | None = None, **config) -> Path:
    """One run directory in the run format (docs/run-format.md); returns it.

    For a pretraining run (setting "pretrain") `init` names its folder, runs/pretrain/<init>/,
    and its config says init "scratch", as trainer.simclr writes it.
    """
    path = root / task / init / setting / f"frac-{fraction:g}" / f"seed-{seed}"
    if setting == "pretrain":
        path, init = root / "pretrain" / init, "scratch"
    path.mkdir(parents=True, exist_ok=True)
    cfg = {"task": task, "init": init, "setting": setting, "fraction": fraction, "seed": seed, **config}
    (path / "config.json").write_text(json.dumps(cfg))
    if curve is not None:
        (path / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in curve))
    if metrics is not None:
        (path / "result.json").write_text(json.dumps({"metrics": metrics, "best_epoch": 1, "epochs": len(curve or [])}))
    if correct is not None:
        pl.DataFrame({"sample": list(correct), "correct": list(correct.values())}).write_parquet(
            path / "predictions.parquet")
    if first_layers is not None:
        np.savez(path / "first_layers.npz", **first_layers)
    return path


def first_layers(rng: np.random.Generator, change: float) -> dict[str, np.ndarray]:
    """first_layers.npz arrays: ResNet-50 shapes, final = init + change * noise."""
    shapes = {"conv1.weight": (64, 3, 7, 7), "layer1.0.conv1.weight": (64, 64, 1, 1),
              "layer1.0.conv2.weight": (64, 64, 3, 3)}
    out = {}
    for name, shape in shapes.items():
        init = rng.normal(size=shape).astype(np.float32)
        out[f"init/{name}"] = init
        out[f"final/{name}"] = (init + change * rng.normal(size=shape)).astype(np.float32)
    return out
