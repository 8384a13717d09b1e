"""`tlx show DATA`: a PNG grid of a dataset's samples, per split and label, to see what the shards hold.

    from datakit.show import show_dataset
    shown = show_dataset("data/", "data-train.png", splits=["train"], per_label=4, window=(-1000, 400))
    shown.rows      # [(split, label, [keys])]: what each row of the grid shows
    show_dataset("data/", "one.png", keys=["3f9a0c1e2b4d5a6f-0042"])

Samples are drawn with a seeded generator per (split, label), so the same call shows the same
slices. Grouping uses slices.parquet's `label` column where the kind has one (ct-slices,
image-classification); other kinds (multi-label, segmentation) show one row per split. Int16 CT
pixels are shown through an HU window (`window`), or scaled to each image's own min and max;
RGB images as they are; a segmentation's mask is not drawn (only the image member).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from datakit.errors import DatakitError
from datakit.read import SPLITS, SampleReader, open_dataset
from tlxcore.image_grid import save_grid

MAX_ROWS = 60   # a grid taller than this is unreadable: narrow it with --split or --label


@dataclass
class Shown:
    path: Path
    rows: list[tuple[str, str, list[str]]] = field(default_factory=list)   # (split, label, keys shown)


def to_display(image: np.ndarray, window: tuple[float, float] | None) -> np.ndarray:
    """float [0, 1] (H, W) or (H, W, 3) for imshow: HU through `window`, others by their own range."""
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = np.moveaxis(a, 0, -1)   # (C, H, W) -> (H, W, C)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    a = a.astype(np.float32)
    if window is not None:
        lo, hi = window
        return np.clip((a - lo) / (hi - lo), 0.0, 1.0)
    if a.ndim == 3 and image.dtype == np.uint8:
        return a / 255.0
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def _chosen(data: Path, splits: list[str], labels: list[str] | None, keys: list[str] | None, per_label: int,
            seed: int) -> list[tuple[str, str, list[int], list[str]]]:
    """(split, label, sample ids within the split, keys) per grid row."""
    slices = pl.read_parquet(data / "slices.parquet")
    group = "label" if "label" in slices.columns and slices["label"].dtype == pl.String else None
    if keys is not None:
        unknown = sorted(set(keys) - set(slices["key"].to_list()))
        if unknown:
            raise DatakitError(f"--key {unknown[0]!r} is not a sample of {data} (keys look like "
                               f"{slices['key'][0]!r}); {len(unknown)} of {len(keys)} keys unknown")
    rows = []
    for split in splits:
        part = slices.filter(pl.col("split") == split).with_row_index("sample")
        names = sorted(part[group].unique().to_list()) if group else ["all"]
        for label in names:
            if labels is not None and label not in labels:
                continue
            cell = part.filter(pl.col(group) == label) if group else part
            if keys is not None:
                cell = cell.filter(pl.col("key").is_in(keys))
            elif len(cell) > per_label:
                rng = np.random.default_rng([seed, SPLITS.index(split), sum(map(ord, label))])
                cell = cell[sorted(rng.choice(len(cell), per_label, replace=False).tolist())]
            if len(cell):
                rows.append((split, label, cell["sample"].to_list(), cell["key"].to_list()))
    return rows


def show_dataset(data: str | os.PathLike, out: str | os.PathLike, *, splits: list[str] | None = None,
                 labels: list[str] | None = None, keys: list[str] | None = None, per_label: int = 4,
                 window: tuple[float, float] | None = None, seed: int = 0) -> Shown:
    """Draw the grid to `out` (PNG): one row per (split, label), the key and label under each image."""
    ds = open_dataset(data)
    bad = [s for s in splits or [] if s not in SPLITS]
    if bad:
        raise DatakitError(f"--split {bad[0]!r} is not one of {', '.join(SPLITS)}")
    if window is not None and not window[0] < window[1]:
        raise DatakitError(f"--window {window[0]:g} {window[1]:g}: LOW must be below HIGH")
    known = set(ds.classes)
    if labels is not None and known and (unknown := sorted(set(labels) - known)):
        raise DatakitError(f"--label {unknown[0]!r} is not a class of {data}; its classes: {', '.join(ds.classes)}")
    rows = _chosen(Path(data), splits or [s for s in SPLITS if ds.num_samples(s)], labels, keys, per_label, seed)
    if not rows:
        raise DatakitError(f"nothing to show in {data} for the splits, labels and keys given")
    if len(rows) > MAX_ROWS:
        raise DatakitError(f"{len(rows)} rows of (split, label) would be drawn (at most {MAX_ROWS}); "
                           f"narrow it with --split or --label")
    ext, _ = ds.member("image")
    reader = SampleReader(ds)
    tables = {split: ds.sample_table(split) for split in {r[0] for r in rows}}
    try:
        grid = [[(to_display(reader.read(tables[split], i, ext), window), f"{key}\n{split} / {label}")
                 for i, key in zip(ids, row_keys)] for split, label, ids, row_keys in rows]
    finally:
        reader.close()
    return Shown(save_grid(grid, out), [(split, label, row_keys) for split, label, _, row_keys in rows])
