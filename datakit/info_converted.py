"""`tlx info` of the kinds `tlx convert` writes: samples, patients and labels per split, rejects, shard diversity.

    info = converted_info(layout, manifest)     # datakit.info.DatasetInfo, as for ct-slices
    info.by_split_label    # split, label, samples (multilabel: positives), patients, and per kind:
                           # missing, uncertain (multilabel); pixels (segmentation)

What a label row counts depends on the kind (docs/finetune.md): image-classification, the
samples of the class; multilabel, the samples where the label is positive (target 1), missing
(NaN: not scored, no gradient) and uncertain in the source; segmentation, the samples
(slices or images) showing the class and its pixels. Shard diversity counts distinct volumes
per shard where samples come from volumes (segmentation), else distinct patients.
"""
from __future__ import annotations

import polars as pl

from datakit.manifest import SPLITS, Layout


def _labels(slices: pl.DataFrame, kind: str, classes: list[str]) -> pl.DataFrame:
    rows = []
    for split in SPLITS:
        part = slices.filter(pl.col("split") == split)
        for c in classes:
            if kind == "multilabel":
                has = part["labels"].list.contains(c)
                row = {"positives": int(has.sum()),
                       "missing": int(part["missing"].list.contains(c).sum()) if "missing" in part.columns else 0,
                       "uncertain": int(part["uncertain"].list.contains(c).sum()) if "uncertain" in part.columns else 0}
            elif kind == "segmentation":
                has = part[f"pixels_{c}"] > 0
                row = {"samples": int(has.sum()), "pixels": int(part[f"pixels_{c}"].sum())}
            else:
                has = part["label"] == c
                row = {"samples": int(has.sum())}
            patients = part.filter(has)["patient"].drop_nulls().n_unique() if "patient" in part.columns else None
            rows.append({"split": split, "label": c, **row, "patients": patients})
    return pl.DataFrame(rows)


def converted_info(layout: Layout, manifest: dict):
    from datakit.info import DatasetInfo, _in_order, _read, shard_diversity

    kind, classes = manifest.get("kind"), manifest["classes"]
    slices = _read(layout.slices, None)
    group = "volume" if "volume" in slices.columns else "patient" if "patient" in slices.columns else "key"
    per_split = [pl.len().alias("samples")] + [pl.col(c).drop_nulls().n_unique().alias(c + "s") for c in
                                               ("volume", "patient") if c in slices.columns]
    by_split = slices.group_by("split").agg(per_split).sort(_in_order("split", SPLITS))
    rejects = (_read(layout.rejects, ["stage", "code"]).group_by("stage", "code").agg(files=pl.len())
               .sort(pl.col("files"), descending=True))
    diversity = shard_diversity(slices.with_columns(pl.col(group).alias("volume"))) \
        .rename({"volumes_min": f"{group}s_min", "volumes_median": f"{group}s_median", "volumes_max": f"{group}s_max",
                 "max_volume_share": f"max_{group}_share"})
    return DatasetInfo(str(layout.root), manifest, _labels(slices, kind, classes), by_split, rejects, diversity)
