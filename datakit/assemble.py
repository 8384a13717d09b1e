"""Phase 2 of write: staged volumes -> shards, slices/volumes/rejects.parquet, manifest.json.

    manifest = assemble(layout, config, workers=4, tool_version="0.1.0", progress=progress)

Runs once every planned volume is staged (write.py holds an exclusive lock around it).
Every decision is a function of the plan and the staged files only, never of how many
partitions or interrupted runs made them, so the output is byte-identical however the
conversion was split or killed.

  1. gather    the staged metadata of every planned volume (no payloads)
  2. decide    per slice, in this order: unreadable (the reader's code), low coverage
               (mark_low_coverage), pixel-identical to another slice (dedup_pixels; kept:
               the copy with the smallest (volume, slice index), so a re-sent series
               collapses onto one volume and no pixel hash ever reaches two splits), then
               the exact cut of a subset
  3. place     kept slices per split in the plan's global shuffle order, fixed
               `samples_per_shard` per shard
  4. shards    written in parallel; a shard already under its final name was finished
               by an interrupted run (renamed only once complete) and is kept
  5. tables    slices.parquet, volumes.parquet, rejects.parquet
  6. manifest  written last: its presence means the dataset is complete
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from datakit.burned_in import plan_burned_in_warnings
from datakit.errors import DatakitError
from datakit.manifest import FORMAT, FORMAT_VERSION, KIND, SPLITS, Layout, read_json
from datakit.plan import REJECT_SCHEMA
from datakit.plan_splits import class_warnings, split_warnings
from datakit.shards import ShardWriter, index_path_for, sha256_file
from datakit.write_config import WriteConfig
from datakit.write_convert import MEMBER_EXT
from datakit.write_pool import run_tasks
from datakit.write_staging import Staging
from tlxcore.atomic import atomic_write, is_partial, write_json_atomic
from tlxcore.progress import Progress, Tick, silent

SLICE_SCHEMA = pa.schema([
    ("key", pa.string()), ("split", pa.string()), ("shard", pa.string()), ("label", pa.string()),
    ("label_index", pa.int16()), ("patient", pa.string()), ("volume", pa.string()), ("slice_index", pa.int32()),
    ("z", pa.float64()), ("pixel_spacing_row", pa.float32()), ("pixel_spacing_col", pa.float32()),
    ("slice_thickness", pa.float32()), ("label_rule", pa.string()), ("label_keyword", pa.string()),
    ("label_field", pa.string()), ("coverage", pa.float32()), ("pixel_hash", pa.string())])
VOLUME_SCHEMA = pa.schema([
    ("volume", pa.string()), ("patient", pa.string()), ("label", pa.string()), ("split", pa.string()),
    ("files", pa.int32()), ("slices_kept", pa.int32()), ("kept", pa.bool_()), ("reason", pa.string())])
INDEX_DETAILS = ("path", "slice_pos", "pixel_spacing_row", "pixel_spacing_col", "slice_thickness")


@dataclass(frozen=True)
class ShardTask:
    layout_root: str
    path: str                       # relative to the dataset
    member: str                     # payload member extension, e.g. "hu.zst"
    samples: list                   # (key, volume, position in the staged file, label index), in tar order


def gather(staging: Staging, volumes: list[str], workers: int) -> pl.DataFrame:
    """Staged metadata of every volume, with each slice's position in its staged file."""
    def one(volume):
        t = staging.read_meta(volume)
        return t.append_column("volume", pa.array([volume] * t.num_rows, pa.string())).append_column(
            "pos", pa.array(np.arange(t.num_rows, dtype=np.int32)))

    with ThreadPoolExecutor(max(1, workers)) as pool:  # pyarrow reads release the GIL
        tables = list(pool.map(one, volumes))
    if not tables:
        return pl.DataFrame()
    return pl.from_arrow(pa.concat_tables(tables))


def decide(slices: pl.DataFrame, config: WriteConfig, targets: dict | None) -> pl.DataFrame:
    """Add `code` and `reason` (null = kept) to every planned slice (columns: row, volume,
    slice_index, split, label, subset_rank, code, reason, coverage, pixel_hash, path), in the
    order of the module docstring: unreadable (already coded), low coverage, pixel duplicates,
    the subset's cut."""
    slices = mark_low_coverage(slices, config.min_coverage)
    slices = dedup_pixels(slices)
    if targets:
        slices = _cut_subset(slices, targets)
    return slices


def mark_low_coverage(slices: pl.DataFrame, min_coverage: float) -> pl.DataFrame:
    """Readable slices whose body covers less than `min_coverage` of the image: code low-coverage."""
    low = pl.col("code").is_null() & (pl.col("coverage") < min_coverage)
    return slices.with_columns(
        code=pl.when(low).then(pl.lit("low-coverage")).otherwise(pl.col("code")),
        reason=pl.when(low).then(pl.format("the body covers {}% of the slice, less than --min-coverage {}%",
                                           (pl.col("coverage") * 100).round(1),
                                           pl.lit(round(min_coverage * 100, 1))))
        .otherwise(pl.col("reason")))


def dedup_pixels(slices: pl.DataFrame) -> pl.DataFrame:
    """Pixel-identical slices still kept: the first by (volume, slice_index) stays, the others get
    code duplicate-pixels and `duplicate_of` (the kept slice's source path). A re-sent series (same
    pixels, new UIDs) thus collapses onto one volume, and no pixel hash reaches two splits. (The
    plan's `dedup_sop` removed copies of one file before; this one needs the pixels.)"""
    alive = slices.filter(pl.col("code").is_null()).sort("pixel_hash", "volume", "slice_index")
    first = alive.select("pixel_hash", kept_path="path", kept_volume="volume", kept_slice="slice_index").unique(
        "pixel_hash", keep="first", maintain_order=True)
    dups = (alive.filter(~pl.col("pixel_hash").is_first_distinct()).join(first, on="pixel_hash")
            .select("row", duplicate_of="kept_path",
                    dup_reason=pl.format("pixel-identical to slice {} of volume {}, which is kept (the file named in "
                                         "duplicate_of)", "kept_slice", "kept_volume")))
    return slices.join(dups, on="row", how="left").with_columns(
        code=pl.when(pl.col("dup_reason").is_not_null()).then(pl.lit("duplicate-pixels")).otherwise(pl.col("code")),
        reason=pl.coalesce("dup_reason", "reason")).drop("dup_reason")


def _cut_subset(slices: pl.DataFrame, targets: dict) -> pl.DataFrame:
    """Keep exactly target(split, label) slices: volumes in subset-rank order, slices in order."""
    frame = pl.DataFrame([(s, lab, t) for s, by in targets.items() for lab, t in by.items()],
                         schema={"split": pl.String, "label": pl.String, "target": pl.Int64}, orient="row")
    alive = (slices.filter(pl.col("code").is_null()).sort("subset_rank", "slice_index")
             .join(frame, on=["split", "label"], how="left", maintain_order="left")
             .with_columns(n=pl.int_range(pl.len()).over("split", "label")))
    cut = alive.filter(pl.col("n") >= pl.col("target").fill_null(0)).select("row", cut=pl.lit(True))
    return slices.join(cut, on="row", how="left").with_columns(
        code=pl.when("cut").then(pl.lit("not-in-subset")).otherwise(pl.col("code")),
        reason=pl.when("cut").then(pl.lit("beyond the subset's target for its split and class (--subset-size)"))
        .otherwise(pl.col("reason"))).drop("cut")


def subset_report(kept: pl.DataFrame, targets: dict | None) -> dict | None:
    """How the written subset compares with its targets. A (split, label) falls short when the
    volumes plan picked (target x (1 + subset_margin) planned slices) lost more than the margin
    to write's filters; the cure is a larger --subset-margin."""
    if not targets:
        return None
    got = {(s, lab): n for s, lab, n in kept.group_by("split", "label").len().rows()}
    short: dict[str, dict[str, int]] = {}
    for s, by in targets.items():
        for lab, t in by.items():
            if got.get((s, lab), 0) < t:
                short.setdefault(s, {})[lab] = t - got.get((s, lab), 0)
    return {"size": sum(t for by in targets.values() for t in by.values()), "written": len(kept), "short": short}


def place(kept: pl.DataFrame, layout: Layout, per_shard: int) -> pl.DataFrame:
    """shard (path relative to the dataset) and position of every kept slice."""
    kept = kept.sort("order").with_columns(n=pl.int_range(pl.len()).over("split"))
    shard_no = pl.col("n") // per_shard
    return kept.with_columns(
        shard=pl.format("shards/{}/{}-{}.tar", "split", "split", shard_no.cast(pl.String).str.zfill(6)),
        position=(pl.col("n") % per_shard).cast(pl.Int32),
        split_rank=pl.col("split").replace_strict(list(SPLITS), list(range(len(SPLITS))))).sort(
        "split_rank", "shard", "position").drop("n", "split_rank")


def write_shard(task: ShardTask) -> dict:
    """One shard; kept as it is if an interrupted run already finished it."""
    layout = Layout(task.layout_root)
    path = layout.root / task.path
    digest = None                   # the writer hashes what it writes; a kept shard is read again
    if not (path.exists() and index_path_for(path).exists()):
        staging = Staging(layout)
        payloads: dict[tuple[str, int], bytes] = {}
        by_volume: dict[str, list[int]] = {}
        for _, volume, pos, _ in task.samples:
            by_volume.setdefault(volume, []).append(pos)
        for volume, positions in by_volume.items():
            column = staging.read_payloads(volume)
            for pos in positions:
                payloads[volume, pos] = column[pos].as_py()
        with ShardWriter(path) as w:
            for key, volume, pos, label_index in task.samples:
                w.write(key, {task.member: payloads[volume, pos], "cls": str(label_index).encode()})
        digest = w.info.sha256
    return {"path": task.path, "index": str(index_path_for(Path(task.path))), "samples": len(task.samples),
            "bytes": path.stat().st_size, "sha256": digest or sha256_file(path)}


def _tidy_shards(layout: Layout, keep: set[str]) -> None:
    """Remove temporary files of killed runs (shards, and the tables and manifest beside them, which
    only assembly writes) and shards that are not part of this dataset."""
    for p in layout.root.iterdir():
        if is_partial(p) and p.is_file():
            p.unlink()
    if not layout.shards.exists():
        return
    for p in layout.shards.glob("*/*"):
        rel = str(p.relative_to(layout.root))
        stem = str(Path(rel).with_suffix(".tar"))
        if is_partial(p) or stem not in keep:
            p.unlink()


def _write_parquet(path: Path, frame: pl.DataFrame, schema: pa.Schema) -> None:
    with atomic_write(path) as f:
        pq.write_table(frame.select(schema.names).to_arrow().cast(schema), f)


def assemble(layout: Layout, config: WriteConfig, workers: int, tool_version: str,
             progress: Progress = silent) -> dict:
    """Phase 2 (see the module docstring). Returns the manifest. `progress` gets
    Tick("shards", slices written, slices kept) as shards are finished."""
    plan_json = read_json(layout.plan_json, "work/plan.json")
    classes = plan_json["classes"]
    plan = pl.read_parquet(layout.plan).with_columns(pl.col("volume", "split").cast(pl.String))
    pvols = pl.read_parquet(layout.plan_volumes)
    staging = Staging(layout)

    volumes = plan["volume"].unique().sort().to_list()
    missing = [v for v in volumes if not staging.is_staged(v)]
    if missing:
        raise DatakitError(f"{len(missing)} planned volumes are not converted yet (e.g. {missing[0]}); "
                           "run the missing partitions or `tlx write` without --partition")
    meta = gather(staging, volumes, workers)
    failures = _failures(meta)
    wanted = pl.concat([plan["row"], meta["source_row"].drop_nulls(), failures["copy"]]).unique()
    index = (pl.scan_parquet(layout.index).select(INDEX_DETAILS).with_row_index("row")
             .filter(pl.col("row").is_in(pl.Series(wanted.cast(pl.UInt32)).implode()))
             .collect(engine="streaming").with_columns(pl.col("row").cast(pl.Int64)))
    # A slice's path and geometry are those of the copy whose pixels are stored (source_row).
    slices = (plan.join(meta.select("row", "key", "code", "reason", "coverage", "pixel_hash", "pos", "source_row"),
                        on="row", how="left")
              .join(pvols.select("volume", "patient", "label", "label_rule", "label_keyword", "label_field",
                                 "subset_rank"), on="volume")
              .with_columns(src=pl.coalesce("source_row", "row"))
              .join(index.rename({"row": "src"}), on="src"))
    if slices["key"].null_count() or len(slices) != len(plan):
        raise DatakitError("staged files do not cover every planned slice: the plan changed after conversion "
                           f"began; delete {staging.dir} and run `tlx write` again")
    slices = decide(slices, config, plan_json.get("subset_targets"))
    kept = place(slices.filter(pl.col("code").is_null()), layout, config.samples_per_shard)
    kept = kept.with_columns(label_index=pl.col("label").replace_strict(classes, list(range(len(classes))),
                                                                        return_dtype=pl.Int16))

    # Shards, in parallel; each task lists its samples in tar order.
    member = MEMBER_EXT[config.codec]
    tasks = [ShardTask(str(layout.root), shard, member, list(zip(g["key"], g["volume"], g["pos"], g["label_index"])))
             for (shard,), g in kept.select("shard", "key", "volume", "pos", "label_index")
             .group_by("shard", maintain_order=True)]
    _tidy_shards(layout, {t.path for t in tasks})
    infos, written = {}, 0
    progress(Tick("shards", 0, len(kept), "slices"))
    for info in run_tasks(write_shard, tasks, workers):
        infos[info["path"]] = info
        written += info["samples"]
        progress(Tick("shards", written, len(kept), "slices"))
    shard_list = [{"split": t.path.split("/")[1], **infos[t.path]} for t in tasks]

    rejects = _rejects(layout, slices, failures, index.select("row", "path"))
    volumes_table = _volumes(pvols, slices)
    _write_parquet(layout.slices, kept.with_columns(z=pl.col("slice_pos")), SLICE_SCHEMA)
    _write_parquet(layout.volumes, volumes_table, VOLUME_SCHEMA)
    _write_parquet(layout.rejects, rejects, REJECT_SCHEMA)

    found = plan_json["found"]
    if found != len(kept) + len(rejects):
        raise AssertionError(f"assembly lost files: {found} found != {len(kept)} kept + {len(rejects)} rejected")
    manifest = _manifest(plan_json, config, tool_version, classes, kept, shard_list, rejects, found)
    write_json_atomic(manifest, layout.manifest, sort_keys=True)
    return manifest


def _failures(meta: pl.DataFrame) -> pl.DataFrame:
    """Every copy write tried for a slice and could not read, but the planned file when no copy
    could be read (the slice's own code says why): volume, slice_index, k (the try), copy (its
    index row), code, reason."""
    rows = []
    tried = meta.filter(pl.col("failures").list.len() > 0)     # a few rows: a loop is fine
    for volume, slice_index, row, code, failed in tried.select("volume", "slice_index", "row", "code",
                                                               "failures").iter_rows():
        for k, f in enumerate(failed or [], start=1):
            if not (f["row"] == row and code is not None):
                rows.append((volume, slice_index, k, f["row"], f["code"], f["reason"]))
    return pl.DataFrame(rows, schema={"volume": pl.String, "slice_index": pl.Int32, "k": pl.Int64,
                                      "copy": pl.Int64, "code": pl.String, "reason": pl.String}, orient="row")


def _rejects(layout: Layout, slices: pl.DataFrame, failures: pl.DataFrame, paths: pl.DataFrame) -> pl.DataFrame:
    """Plan rejects (scan and plan stages, in index order), then write rejects by volume and slice:
    the slice's own (k = 0), then each copy tried that could not be read (`failures`, with the
    copy's path). A copy write read (it stands in for the planned file) or tried is no longer a
    `duplicate-sop`; the copies not tried name the copy that was read in `duplicate_of`. `paths`:
    row -> path of every index row involved."""
    failures = failures.join(paths.rename({"row": "copy"}), on="copy", how="left")
    at_write = pl.concat([
        slices.filter(pl.col("code").is_not_null()).select(
            "volume", "slice_index", k=pl.lit(0, pl.Int64), path="path", code="code", reason="reason",
            duplicate_of="duplicate_of"),
        failures.select("volume", "slice_index", "k", "path", "code", "reason",
                        duplicate_of=pl.lit(None, pl.String))], how="vertical_relaxed")
    at_write = at_write.sort("volume", "slice_index", "k").select(
        "path", "volume", stage=pl.lit("write"), code="code", reason="reason", duplicate_of="duplicate_of")
    plan_rejects = pl.read_parquet(layout.plan_rejects)
    replaced = slices.filter(pl.col("src") != pl.col("row"))
    if len(replaced) or len(failures):
        moved = replaced.join(paths.rename({"path": "planned"}), on="row").select("planned", read="path")
        gone = pl.concat([failures["path"], moved["read"]])
        needed = (pl.col("code") == "duplicate-sop") & pl.col("path").is_in(gone.implode())
        plan_rejects = (plan_rejects.filter(~needed)
                        .join(moved, left_on="duplicate_of", right_on="planned", how="left", maintain_order="left")
                        .with_columns(duplicate_of=pl.when(pl.col("code") == "duplicate-sop")
                                      .then(pl.coalesce("read", "duplicate_of")).otherwise("duplicate_of"))
                        .drop("read"))
    return pl.concat([plan_rejects, at_write], how="vertical_relaxed")


def _volumes(pvols: pl.DataFrame, slices: pl.DataFrame) -> pl.DataFrame:
    """Every series seen: plan's verdict, and for planned ones what write kept and why not."""
    outcome = slices.group_by("volume").agg(
        slices_kept=pl.col("code").is_null().sum().cast(pl.Int32),
        why=pl.col("code").drop_nulls().value_counts(sort=True))
    outcome = outcome.with_columns(why=pl.col("why").list.eval(
        pl.format("{} {}", pl.element().struct.field("count"), pl.element().struct.field("code"))).list.join(", "))
    table = pvols.join(outcome, on="volume", how="left").with_columns(
        slices_kept=pl.col("slices_kept").fill_null(0))
    kept = pl.col("slices_kept") > 0
    return table.with_columns(
        kept=kept, split=pl.when(kept).then(pl.col("split")),
        reason=pl.when(kept).then(None).when(pl.col("reason").is_not_null()).then(pl.col("reason"))
        .otherwise(pl.format("no slice kept at write: {}", "why"))).sort("volume")


def _manifest(plan_json, config: WriteConfig, tool_version, classes, kept, shard_list, rejects, found) -> dict:
    splits = {}
    for s in SPLITS:
        part = kept.filter(pl.col("split") == s)
        by_label = dict(sorted(part.group_by("label").len().rows(), key=lambda r: classes.index(r[0])))
        splits[s] = {"samples": len(part), "volumes": part["volume"].n_unique(),
                     "patients": part["patient"].n_unique(), "shards": sum(1 for x in shard_list if x["split"] == s),
                     "by_label": by_label}
    h, w = config.size
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "kind": KIND, "tool_version": tool_version,
        "config": {"scan": plan_json.get("scan") or {"label_rules": None}, "plan": plan_json["config"],
                   "write": config.to_dict()},
        "members": {
            MEMBER_EXT[config.codec]: {"role": "image", "codec": config.codec, "dtype": "int16",
                                       "byteorder": "little", "shape": [h, w], "units": "HU",
                                       **({"level": config.zstd_level} if config.codec == "zstd" else {})},
            "cls": {"role": "label", "codec": "ascii-int"}},
        "classes": classes,
        "splits": splits,
        "files": {"found": found, "kept": len(kept), "rejected": len(rejects),
                  "rejected_by_code": dict(sorted(rejects.group_by("code").len().rows()))},
        **({"subset": subset} if (subset := subset_report(kept, plan_json.get("subset_targets"))) else {}),
        # What was written, not what was planned: write's filters can empty a small split further.
        "warnings": split_warnings(plan_json["config"]["fractions"], splits)
        + class_warnings(plan_json["config"]["fractions"], {s: splits[s]["by_label"] for s in SPLITS})
        + plan_burned_in_warnings(plan_json),
        "shards": shard_list,
    }
