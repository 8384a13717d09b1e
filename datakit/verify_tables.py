"""`tlx verify`, table side: slices/volumes/rejects.parquet against the manifest and the shards.

    kind = KINDS["segmentation"]
    tables = read_tables(layout, kind, classes, problems)     # None when a table is missing or lacks columns
    check_keys(...); check_counts(...); check_leaks(...)

What each dataset kind holds (docs/dataset-format.md, docs/finetune.md) decides what is
checked: the member roles it needs, the slices.parquet columns, whether volumes.parquet
exists, and how the manifest's `by_label` counts samples. The ct-slices-only checks
(kept + rejected = found, rejects per code, pixel hashes) run for ct-slices only.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import polars as pl

from datakit.manifest import SPLITS, Layout

KEY_PATTERN = re.compile(r"^[A-Za-z0-9_-]+$")
CT_SLICE_COLUMNS = ("key", "split", "shard", "label", "label_index", "patient", "volume", "slice_index", "z",
                    "pixel_spacing_row", "pixel_spacing_col", "slice_thickness", "label_rule", "label_keyword",
                    "label_field", "coverage", "pixel_hash")
VOLUME_COLUMNS = ("volume", "patient", "split", "slices_kept", "kept", "reason")
REJECT_COLUMNS = ("path", "volume", "stage", "code", "reason")


@dataclass(frozen=True)
class Kind:
    name: str
    roles: tuple[str, ...]           # member roles every sample must carry (exactly one image)
    columns: tuple[str, ...]         # slices.parquet columns (segmentation adds pixels_<class>)
    volumes: bool                    # volumes.parquet is part of the dataset
    by_label: str                    # how the manifest counts by_label: label, labels, pixels
    optional: tuple[str, ...] = ()   # roles a sample may carry besides (segmentation: a field-of-view mask)


KINDS = {k.name: k for k in (
    Kind("ct-slices", ("image", "label"), CT_SLICE_COLUMNS, True, "label"),
    Kind("segmentation", ("image", "mask"), ("key", "split", "shard", "patient", "volume", "slice_index"), True,
         "pixels", optional=("fov",)),
    Kind("multilabel", ("image", "labels"), ("key", "split", "shard", "labels"), False, "labels"),
    Kind("image-classification", ("image", "label"), ("key", "split", "shard", "label", "label_index"), False,
         "label"),
)}


def read_tables(layout: Layout, kind: Kind, classes: list[str], p: list):
    """(slices, volumes or None, rejects), or None after reporting what is missing."""
    wanted = [(layout.slices, kind.columns + (tuple(f"pixels_{c}" for c in classes)
                                                if kind.by_label == "pixels" else ()))]
    if kind.volumes:
        wanted.append((layout.volumes, VOLUME_COLUMNS + (("files",) if kind.name == "ct-slices" else ())))
    wanted.append((layout.rejects, REJECT_COLUMNS))
    tables = []
    for path, cols in wanted:
        if not path.exists():
            p.append(f"{path.name}: missing")
            return None
        try:
            frame = pl.read_parquet(path)
        except (pl.exceptions.PolarsError, OSError) as exc:
            why = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            p.append(f"{path.name}: not a readable Parquet file ({why})")
            return None
        missing = [c for c in cols if c not in frame.columns]
        if missing:
            p.append(f"{path.name}: lacks columns {', '.join(missing)}")
            return None
        tables.append(frame)
    slices, rejects = tables[0], tables[-1]
    return slices, (tables[1] if kind.volumes else None), rejects


def check_keys(shards: list[dict], results: dict, slices: pl.DataFrame, classes: list[str], p: list) -> None:
    """Keys well formed, unique, equal in content and order to slices.parquet's; each shard's rows in
    its split; labels in the shards equal to the table's."""
    all_keys = [k for e in shards for k in results[e["path"]]["keys"]]
    bad = [k for k in all_keys if not KEY_PATTERN.match(k)]
    if bad:
        p.append(f"{len(bad)} keys do not match [A-Za-z0-9_-]+ (e.g. {bad[0]!r})")
    repeated = [k for k, n in Counter(all_keys).items() if n > 1]
    if repeated:
        p.append(f"{len(repeated)} keys occur more than once across shards (e.g. {repeated[0]!r})")
    by_shard = {s: g for (s,), g in slices.group_by("shard", maintain_order=True)}
    for e in shards:
        r, rows = results[e["path"]], by_shard.get(e["path"])
        if rows is None:
            p.append(f"slices.parquet has no rows for {e['path']}")
            continue
        if rows["key"].to_list() != r["keys"]:
            p.append(f"{e['path']}: keys differ from slices.parquet's (in content or order)")
        if set(rows["split"].unique()) != {e["split"]}:
            p.append(f"{e['path']}: slices.parquet puts its samples in splits {sorted(rows['split'].unique())}")
        if "label_index" in rows.columns and len(r["cls"]) == len(rows) and rows["label_index"].to_list() != r["cls"]:
            p.append(f"{e['path']}: cls members differ from slices.parquet's label_index")
        for column in ("labels", "missing"):
            if column in rows.columns and len(r[column]) == len(rows):
                want = [sorted(classes.index(c) for c in labs if c in classes) for labs in rows[column].to_list()]
                if want != r[column]:
                    p.append(f"{e['path']}: labels members differ from slices.parquet's {column}")
        if r.get("fov_pixels") and "fov_pixels" in rows.columns and len(r["fov_pixels"]) == len(rows) \
                and rows["fov_pixels"].to_list() != r["fov_pixels"]:
            p.append(f"{e['path']}: decoded field-of-view masks differ from slices.parquet's fov_pixels")
        if r["hashes"] and len(r["hashes"]) == len(rows) and rows["pixel_hash"].to_list() != r["hashes"]:
            p.append(f"{e['path']}: decoded pixels differ from slices.parquet's pixel_hash")
        if r["mask_pixels"] and len(r["mask_pixels"]) == len(rows):
            want = rows.select([f"pixels_{c}" for c in classes]).rows()
            if [list(w) for w in want] != r["mask_pixels"]:
                p.append(f"{e['path']}: decoded masks differ from slices.parquet's pixels_<class> counts")
    unknown = set(slices["shard"].unique()) - {e["path"] for e in shards}
    if unknown:
        p.append(f"slices.parquet names shards not in the manifest: {sorted(unknown)[:3]}")
    if "label_index" in slices.columns:
        wrong = slices.filter(pl.col("label_index") != pl.col("label").replace_strict(
            classes, list(range(len(classes))), default=-1))
        if len(wrong):
            p.append(f"slices.parquet: {len(wrong)} rows whose label_index is not their label's index in classes")
    for column in ("labels", "missing", "uncertain"):
        if column in slices.columns:
            stray = set(slices[column].explode().drop_nulls().unique()) - set(classes)
            if stray:
                p.append(f"slices.parquet: {column} {sorted(stray)[:3]} are not in the manifest's classes")


def _by_label(part: pl.DataFrame, kind: Kind, classes: list[str]) -> dict[str, int]:
    """What the manifest's by_label counts in a split (classes with a zero count left out)."""
    if kind.by_label == "label":
        counts = dict(part.group_by("label").len().rows())
    elif kind.by_label == "labels":
        counts = dict(part.select(pl.col("labels").explode()).drop_nulls().group_by("labels").len().rows())
    else:  # segmentation: slices that show the class
        counts = {c: int((part[f"pixels_{c}"] > 0).sum()) for c in classes}
    return {k: v for k, v in counts.items() if v}


def _distinct(part: pl.DataFrame, column: str) -> int:
    return part[column].drop_nulls().n_unique() if column in part.columns else 0


def check_counts(manifest: dict, kind: Kind, slices: pl.DataFrame, volumes, rejects: pl.DataFrame, p: list) -> None:
    """Samples per shard and split, volumes, patients and by_label per split: manifest = slices.parquet;
    ct-slices also kept + rejected = found and the rejects per code; volumes.parquet = slices.parquet."""
    shards, classes = manifest["shards"], manifest["classes"]
    if len(slices) != sum(e["samples"] for e in shards):
        p.append(f"slices.parquet has {len(slices)} rows, the manifest's shards hold "
                 f"{sum(e['samples'] for e in shards)} samples")
    per_shard = dict(slices.group_by("shard").len().rows())
    for e in shards:
        if per_shard.get(e["path"], 0) != e["samples"]:
            p.append(f"{e['path']}: manifest says {e['samples']} samples, "
                     f"slices.parquet has {per_shard.get(e['path'], 0)}")
    for s in SPLITS:
        want = manifest["splits"].get(s, {})
        part = slices.filter(pl.col("split") == s)
        have = {"samples": len(part), "volumes": _distinct(part, "volume"), "patients": _distinct(part, "patient"),
                "shards": sum(1 for e in shards if e["split"] == s)}
        for k, v in have.items():
            if want.get(k) != v:
                p.append(f"split {s}: manifest says {k} = {want.get(k)}, the data says {v}")
        listed = {k: v for k, v in (want.get("by_label") or {}).items() if v}
        if listed != _by_label(part, kind, classes):
            p.append(f"split {s}: manifest by_label {listed} differs from the data's {_by_label(part, kind, classes)}")
    if kind.name == "ct-slices":
        _check_files(manifest, slices, rejects, p)
    if volumes is not None:
        _check_volumes(slices, volumes, p)


def _check_files(manifest, slices: pl.DataFrame, rejects: pl.DataFrame, p: list) -> None:
    files = manifest.get("files", {})
    found, kept, rejected = files.get("found"), len(slices), len(rejects)
    if found != kept + rejected:
        p.append(f"kept + rejected != found: {kept} slices + {rejected} rejects, manifest says {found} files found")
    if files.get("kept") != kept or files.get("rejected") != rejected:
        p.append(f"manifest files counts ({files.get('kept')} kept, {files.get('rejected')} rejected) differ from "
                 f"the tables ({kept}, {rejected})")
    if files.get("rejected_by_code") != dict(rejects.group_by("code").len().rows()):
        p.append("manifest rejected_by_code differs from rejects.parquet")


def _check_volumes(slices: pl.DataFrame, volumes: pl.DataFrame, p: list) -> None:
    kept = len(slices)
    if int(volumes["slices_kept"].sum()) != kept:
        p.append(f"volumes.parquet slices_kept sums to {int(volumes['slices_kept'].sum())}, slices.parquet has {kept}")
    if set(slices["volume"].unique()) != set(volumes.filter("kept")["volume"]):
        p.append("the volumes of slices.parquet differ from the kept volumes of volumes.parquet")
    if volumes["volume"].is_duplicated().any():
        p.append("volumes.parquet lists a volume more than once")
    per_volume = slices.group_by("volume").len().join(volumes.select("volume", "slices_kept"), on="volume", how="left")
    if len(per_volume.filter(pl.col("len") != pl.col("slices_kept"))):
        p.append("volumes.parquet slices_kept differs from slices.parquet for some volumes")
    bad_split = slices.join(volumes.select("volume", vsplit="split"), on="volume").filter(
        pl.col("split") != pl.col("vsplit"))
    if len(bad_split):
        p.append(f"{len(bad_split)} slices are in another split than their volume in volumes.parquet")


def split_by(manifest: dict) -> str:
    """The unit a dataset was split by: patient, volume or image (tlx plan's option, or a converter's)."""
    config = manifest.get("config") or {}
    return (config.get("plan") or {}).get("split_by") or config.get("split_by") or "patient"


def check_leaks(manifest: dict, kind: Kind, slices: pl.DataFrame, p: list) -> None:
    """No volume in two splits; no patient in two splits where the split is by patient; ct-slices:
    no pixel hash twice (hence never in two splits)."""
    groups = [c for c in ("volume",) if c in slices.columns]
    if split_by(manifest) == "patient" and "patient" in slices.columns:
        groups.append("patient")
    for col in groups:
        spread = (slices.filter(pl.col(col).is_not_null()).group_by(col).agg(pl.col("split").n_unique())
                  .filter(pl.col("split") > 1))
        if len(spread):
            p.append(f"{len(spread)} {col}s have samples in more than one split (e.g. {spread[col][0]})")
    if kind.name == "ct-slices":
        dup = slices.filter(pl.col("pixel_hash").is_duplicated())
        if len(dup):
            splits = dup.group_by("pixel_hash").agg(pl.col("split").n_unique()).filter(pl.col("split") > 1)
            p.append(f"{dup['pixel_hash'].n_unique()} pixel hashes occur more than once"
                     + (f", {len(splits)} of them in more than one split" if len(splits) else ""))
