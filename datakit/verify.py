"""`tlx verify`: check that a dataset is exactly what its manifest says, and leak-free.

    report = verify_dataset("data/", workers=4, decode=False)
    report.problems        # [] when everything checks out; else one precise sentence each

What is checked (docs/datakit.md lists the same):
  format     manifest.json is tlx-shards of a known format version, with its members and classes
  shards     every shard exists with the manifest's byte size and sha256; its .idx matches the tar
             member by member (data offsets, sizes, names); every sample has exactly the manifest's
             members; its `cls` is its label index; no shard file on disk is missing from the manifest
  keys       match [A-Za-z0-9_-]+, unique across the dataset, and equal (in order) to slices.parquet's
  counts     samples per shard, split and label, volumes and patients per split agree between
             manifest, shards and slices.parquet; kept + rejected = found; volumes.parquet agrees
  leaks      no patient in two splits (when split by patient), no volume in two splits, no pixel
             hash twice (hence never in two splits)
  pixels     with decode=True: every payload decodes to the declared shape, and its pixel hash is
             the one in slices.parquet
"""
from __future__ import annotations

import hashlib
import io
import re
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from datakit.errors import DatakitError
from datakit.manifest import FORMAT, FORMAT_VERSION, SPLITS, Layout, read_json
from datakit.write_pool import default_workers, progress, run_tasks

_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
SLICE_COLUMNS = ("key", "split", "shard", "label", "label_index", "patient", "volume", "slice_index", "z",
                 "pixel_spacing_row", "pixel_spacing_col", "slice_thickness", "label_rule", "label_keyword",
                 "label_field", "coverage", "pixel_hash")
VOLUME_COLUMNS = ("volume", "patient", "label", "split", "files", "slices_kept", "kept", "reason")
REJECT_COLUMNS = ("path", "volume", "stage", "code", "reason")


@dataclass
class VerifyReport:
    dataset: str
    problems: list[str] = field(default_factory=list)
    shards: int = 0
    samples: int = 0
    checked: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_shard(args) -> dict:
    """Read one shard once: size, sha256, tar members vs .idx, keys and cls in order, payloads."""
    root, entry, members, decode, shape, codec = args
    path = Path(root) / entry["path"]
    out = {"path": entry["path"], "problems": [], "keys": [], "cls": [], "hashes": []}
    p = out["problems"]
    if not path.exists():
        p.append(f"{entry['path']}: missing")
        return out
    data = path.read_bytes()
    if len(data) != entry["bytes"]:
        p.append(f"{entry['path']}: {len(data)} bytes, manifest says {entry['bytes']}")
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        p.append(f"{entry['path']}: sha256 differs from the manifest")
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            infos = tar.getmembers()
    except tarfile.TarError as exc:
        p.append(f"{entry['path']}: not a readable tar ({exc})")
        return out
    samples: list[tuple[str, dict]] = []
    for ti in infos:
        key, _, ext = ti.name.partition(".")
        if not samples or samples[-1][0] != key:
            samples.append((key, {}))
        samples[-1][1][ext] = ti
    for key, found in samples:
        out["keys"].append(key)
        if set(found) != set(members):
            p.append(f"{entry['path']}: sample {key} has members {sorted(found)}, manifest says {sorted(members)}")
            continue
        cls = data[found["cls"].offset_data:found["cls"].offset_data + found["cls"].size]
        out["cls"].append(int(cls) if cls.isdigit() else -1)
        if decode:
            from datakit.write_convert import Encoder, pixel_hash

            image_ext = next(e for e, m in members.items() if m["role"] == "image")
            ti = found[image_ext]
            try:
                img = Encoder.decode(codec, data[ti.offset_data:ti.offset_data + ti.size], tuple(shape))
                out["hashes"].append(pixel_hash(img.astype("<i2", copy=False).tobytes()))
            except Exception as exc:  # noqa: BLE001 - a corrupt payload is a finding, reported with its cause
                p.append(f"{entry['path']}: sample {key} does not decode to {shape} int16 ({exc})")
                out["hashes"].append(None)
    if len(samples) != entry["samples"]:
        p.append(f"{entry['path']}: {len(samples)} samples, manifest says {entry['samples']}")
    _check_index(Path(root) / entry["index"], entry["path"], infos, len(samples), p)
    return out


def _check_index(idx_path: Path, shard: str, infos, n_samples: int, p: list) -> None:
    if not idx_path.exists():
        p.append(f"{shard}: its index {idx_path.name} is missing")
        return
    lines = idx_path.read_text().splitlines()
    if not lines or lines[0] != f"v1.2 {n_samples}":
        p.append(f"{idx_path.name}: header {lines[0] if lines else ''!r}, expected 'v1.2 {n_samples}'")
    want = []
    for ti in infos:
        ext = ti.name.partition(".")[2]
        want.append(f"{ext} {ti.offset_data} {ti.size} {ti.name}")
    got = " ".join(lines[1:]).split(" ") if len(lines) > 1 else []
    if got != " ".join(want).split(" "):
        p.append(f"{idx_path.name}: entries do not match the tar's members (offsets, sizes or names)")


def verify_dataset(dataset_dir, workers: int | None = None, decode: bool = False) -> VerifyReport:
    layout = Layout(dataset_dir)
    if not layout.root.is_dir():
        raise DatakitError(f"dataset folder {str(layout.root)!r} does not exist")
    if not layout.manifest.exists():
        raise DatakitError(f"{layout.root} holds no manifest.json: not a finished tlx dataset")
    report = VerifyReport(str(layout.root))
    p = report.problems
    manifest = read_json(layout.manifest, "manifest.json")
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        p.append(f"manifest.json: format {manifest.get('format')!r} version {manifest.get('format_version')!r} "
                 f"is not known (this tlx knows {FORMAT!r} version {FORMAT_VERSION})")
        return report
    members, classes, shards = manifest["members"], manifest["classes"], manifest["shards"]
    image = [m for m in members.values() if m.get("role") == "image"]
    if len(image) != 1 or "cls" not in members:
        p.append(f"manifest.json: members {sorted(members)} must hold one image and 'cls'")
        return report
    report.checked.append("format")

    tables = _read_tables(layout, p)
    if tables is None:
        return report
    slices, volumes, rejects = tables

    # Shards, read in parallel.
    results = {}
    args = [(str(layout.root), e, members, decode, image[0]["shape"], image[0]["codec"]) for e in shards]
    with progress("verify", len(shards), "shards") as advance:
        for r in run_tasks(check_shard, args, workers or default_workers()):
            results[r["path"]] = r
            advance(1)
    report.shards, report.samples = len(shards), sum(len(r["keys"]) for r in results.values())
    for e in shards:
        p.extend(results[e["path"]]["problems"])
    listed = {e["path"] for e in shards} | {e["index"] for e in shards}
    if layout.shards.exists():
        for f in sorted(layout.shards.glob("*/*")):
            if str(f.relative_to(layout.root)) not in listed:
                p.append(f"{f.relative_to(layout.root)}: on disk but not in the manifest")
    report.checked.append("shards")

    _check_keys(shards, results, slices, classes, decode, p)
    report.checked.append("keys")
    _check_counts(manifest, slices, volumes, rejects, p)
    report.checked.append("counts")
    _check_leaks(manifest, slices, p)
    report.checked.append("leaks")
    if decode:
        report.checked.append("pixels")
    return report


def _read_tables(layout: Layout, p: list):
    tables = []
    for path, cols in ((layout.slices, SLICE_COLUMNS), (layout.volumes, VOLUME_COLUMNS),
                       (layout.rejects, REJECT_COLUMNS)):
        if not path.exists():
            p.append(f"{path.name}: missing")
            return None
        frame = pl.read_parquet(path)
        missing = [c for c in cols if c not in frame.columns]
        if missing:
            p.append(f"{path.name}: lacks columns {', '.join(missing)}")
            return None
        tables.append(frame)
    return tables


def _check_keys(shards, results, slices: pl.DataFrame, classes, decode: bool, p: list) -> None:
    all_keys = [k for e in shards for k in results[e["path"]]["keys"]]
    bad = [k for k in all_keys if not _KEY.match(k)]
    if bad:
        p.append(f"{len(bad)} keys do not match [A-Za-z0-9_-]+ (e.g. {bad[0]!r})")
    repeated = [k for k, n in Counter(all_keys).items() if n > 1]
    if repeated:
        p.append(f"{len(repeated)} keys occur more than once across shards (e.g. {repeated[0]!r})")
    by_shard = {s: g for (s,), g in slices.group_by("shard", maintain_order=True)}
    for e in shards:
        r = results[e["path"]]
        rows = by_shard.get(e["path"])
        if rows is None:
            p.append(f"slices.parquet has no rows for {e['path']}")
            continue
        if rows["key"].to_list() != r["keys"]:
            p.append(f"{e['path']}: keys differ from slices.parquet's (in content or order)")
        if set(rows["split"].unique()) != {e["split"]}:
            p.append(f"{e['path']}: slices.parquet puts its samples in splits {sorted(rows['split'].unique())}")
        if len(r["cls"]) == len(rows) and rows["label_index"].to_list() != r["cls"]:
            p.append(f"{e['path']}: cls members differ from slices.parquet's label_index")
        if decode and len(r["hashes"]) == len(rows) and rows["pixel_hash"].to_list() != r["hashes"]:
            p.append(f"{e['path']}: decoded pixels differ from slices.parquet's pixel_hash")
    unknown = set(slices["shard"].unique()) - {e["path"] for e in shards}
    if unknown:
        p.append(f"slices.parquet names shards not in the manifest: {sorted(unknown)[:3]}")
    wrong = slices.filter(pl.col("label_index") != pl.col("label").replace_strict(
        classes, list(range(len(classes))), default=-1))
    if len(wrong):
        p.append(f"slices.parquet: {len(wrong)} rows whose label_index is not their label's index in classes")


def _check_counts(manifest, slices: pl.DataFrame, volumes: pl.DataFrame, rejects: pl.DataFrame, p: list) -> None:
    files = manifest.get("files", {})
    found, kept, rejected = files.get("found"), len(slices), len(rejects)
    if found != kept + rejected:
        p.append(f"kept + rejected != found: {kept} slices + {rejected} rejects, manifest says {found} files found")
    if files.get("kept") != kept or files.get("rejected") != rejected:
        p.append(f"manifest files counts ({files.get('kept')} kept, {files.get('rejected')} rejected) differ from "
                 f"the tables ({kept}, {rejected})")
    by_code = dict(rejects.group_by("code").len().rows())
    if files.get("rejected_by_code") != by_code:
        p.append("manifest rejected_by_code differs from rejects.parquet")
    per_shard = dict(slices.group_by("shard").len().rows())
    for e in manifest["shards"]:
        if per_shard.get(e["path"], 0) != e["samples"]:
            p.append(f"{e['path']}: manifest says {e['samples']} samples, slices.parquet has {per_shard.get(e['path'], 0)}")
    for s in SPLITS:
        want = manifest["splits"].get(s, {})
        part = slices.filter(pl.col("split") == s)
        have = {"samples": len(part), "volumes": part["volume"].n_unique(), "patients": part["patient"].n_unique(),
                "shards": sum(1 for e in manifest["shards"] if e["split"] == s),
                "by_label": dict(part.group_by("label").len().rows())}
        for k, v in have.items():
            if want.get(k) != v:
                p.append(f"split {s}: manifest says {k} = {want.get(k)}, the data says {v}")
    if int(volumes["slices_kept"].sum()) != kept:
        p.append(f"volumes.parquet slices_kept sums to {int(volumes['slices_kept'].sum())}, slices.parquet has {kept}")
    kept_vols = set(volumes.filter("kept")["volume"])
    if set(slices["volume"].unique()) != kept_vols:
        p.append("the volumes of slices.parquet differ from the kept volumes of volumes.parquet")
    if volumes["volume"].is_duplicated().any():
        p.append("volumes.parquet lists a volume more than once")
    per_volume = slices.group_by("volume").len().join(volumes.select("volume", "slices_kept", "split"),
                                                      on="volume", how="left")
    if len(per_volume.filter(pl.col("len") != pl.col("slices_kept"))):
        p.append("volumes.parquet slices_kept differs from slices.parquet for some volumes")
    bad_split = slices.join(volumes.select("volume", vsplit="split"), on="volume").filter(
        pl.col("split") != pl.col("vsplit"))
    if len(bad_split):
        p.append(f"{len(bad_split)} slices are in another split than their volume in volumes.parquet")


def _check_leaks(manifest, slices: pl.DataFrame, p: list) -> None:
    by_patient = manifest.get("config", {}).get("plan", {}).get("split_by", "patient") == "patient"
    groups = [("volume", "volume")] + ([("patient", "patient")] if by_patient else [])
    for col, what in groups:
        spread = slices.group_by(col).agg(pl.col("split").n_unique()).filter(pl.col("split") > 1)
        if len(spread):
            p.append(f"{len(spread)} {what}s have slices in more than one split (e.g. {spread[col][0]})")
    dup = slices.filter(pl.col("pixel_hash").is_duplicated())
    if len(dup):
        splits = dup.group_by("pixel_hash").agg(pl.col("split").n_unique()).filter(pl.col("split") > 1)
        p.append(f"{dup['pixel_hash'].n_unique()} pixel hashes occur more than once"
                 + (f", {len(splits)} of them in more than one split" if len(splits) else ""))
