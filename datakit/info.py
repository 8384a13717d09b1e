"""`tlx info`: what a dataset holds, from its manifest and Parquet tables (shards are not read).

    info = dataset_info("data/")
    info.by_split_label     # rows: split, label, slices, volumes, patients
    info.rejects            # rows: stage, code, files
    info.diversity          # per split: shards, distinct volumes per shard (min/median/max),
                            # the largest share one volume has in any shard

Datasets of `tlx convert` (segmentation, multilabel, image-classification) are described by
datakit.info_converted, in the same shape.

Shard diversity is what the global shuffle is for: a shard (and so a loader's shuffle
buffer) should mix slices of many volumes, not hold one volume's neighbouring slices.
"""
from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from datakit.errors import DatakitError
from datakit.manifest import KIND, SPLITS, Layout, read_manifest


@dataclass
class DatasetInfo:
    dataset: str
    manifest: dict
    by_split_label: pl.DataFrame
    by_split: pl.DataFrame
    rejects: pl.DataFrame
    diversity: pl.DataFrame


def _in_order(column: str, values) -> pl.Expr:
    """Sort key: the position of the column's value in `values` (others last)."""
    rank = {v: i for i, v in enumerate(values)}
    return pl.col(column).replace_strict(rank, default=len(rank))


def shard_diversity(slices: pl.DataFrame) -> pl.DataFrame:
    """Per split: shards, distinct volumes per shard (min, median, max), and the largest share
    (0..1) that a single volume has in any one shard."""
    per_shard = (slices.group_by("split", "shard", "volume").len()
                 .group_by("split", "shard")
                 .agg(volumes=pl.len(), samples=pl.col("len").sum(), top=pl.col("len").max())
                 .with_columns(top_share=pl.col("top") / pl.col("samples")))
    return (per_shard.group_by("split")
            .agg(shards=pl.len(), volumes_min=pl.col("volumes").min(), volumes_median=pl.col("volumes").median(),
                 volumes_max=pl.col("volumes").max(), max_volume_share=pl.col("top_share").max())
            .sort(_in_order("split", SPLITS)))


def _read(path, columns: list[str]) -> pl.DataFrame:
    try:
        return pl.read_parquet(path, columns=columns)
    except (pl.exceptions.PolarsError, OSError) as exc:
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DatakitError(f"{path} cannot be read ({why}); `tlx verify {path.parent}` checks the dataset") from exc


def dataset_info(dataset_dir) -> DatasetInfo:
    layout = Layout(dataset_dir)
    manifest = read_manifest(layout.root)
    if manifest.get("kind", KIND) != KIND:  # its tables are the converters' (docs/finetune.md), not tlx shard's
        from datakit.info_converted import converted_info
        return converted_info(layout, manifest)
    slices = _read(layout.slices, ["split", "shard", "label", "patient", "volume"])
    rejects = _read(layout.rejects, ["stage", "code"])
    by_split_label = (slices.group_by("split", "label")
                      .agg(slices=pl.len(), volumes=pl.col("volume").n_unique(),
                           patients=pl.col("patient").n_unique())
                      .sort(_in_order("split", SPLITS), _in_order("label", manifest["classes"])))
    by_split = (slices.group_by("split")
                .agg(slices=pl.len(), volumes=pl.col("volume").n_unique(), patients=pl.col("patient").n_unique())
                .sort(_in_order("split", SPLITS)))
    rejects = (rejects.group_by("stage", "code").agg(files=pl.len())
               .sort(_in_order("stage", ("scan", "plan", "write")), pl.col("files"), descending=[False, True]))
    return DatasetInfo(str(layout.root), manifest, by_split_label, by_split, rejects, shard_diversity(slices))
