"""Stage 3, write: plan -> shards + Parquet metadata + manifest, in two phases.

    summary = write_dataset("data/", WriteConfig(size=(256, 256), codec="zstd"),
                            RunOptions(workers=8, partition=(0, 4), resume="auto"), progress=progress)

Phase 1, convert (write_convert): the volumes of this run's partition, each read,
converted and staged atomically under work/staging/ by a pool of worker processes.
Phase 2, assemble (assemble): once every planned volume is staged, whichever run gets
there first takes an exclusive lock and writes the dataset.

Resuming (`--resume auto`, the default; datakit.resume): every file is written through
tlxcore.atomic (a temporary name, renamed when complete), so after a kill -9 at any moment a
rerun finds complete staged volumes, complete shards and complete tables, redoes only what
was missing, and produces the same bytes as an uninterrupted run. Earlier work made with
other options is refused (check_earlier_write); `--resume never` refuses any.

Partitions: `--partition i/N` converts the volumes whose partition unit is i modulo N;
the staged files do not depend on the partitioning, so N partitions and one assembly give
exactly the dataset one run gives.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import polars as pl
import pyarrow.parquet as pq

from datakit.errors import DatakitError
from datakit.manifest import Layout, read_json
from datakit.plan import sample_key_expr
from datakit.resume import check_resume_mode, differing_options, output_lock, refuse_foreign
from datakit.write_config import RunOptions, WriteConfig
from datakit.write_convert import VolumeTask, convert_in_worker, convert_volume, init_worker
from datakit.write_pool import run_tasks
from datakit.write_staging import Staging, identity_of
from tlxcore.atomic import PARTIAL
from tlxcore.progress import Progress, Tick, silent
from tlxcore.runtime import default_workers, tool_version

# Index columns phase 1 does not need (read_hu gets the rest; keeping the list negative means a
# column scan adds for the reader reaches it without a change here).
NOT_FOR_PIXELS = frozenset({"reject_code", "reject_reason", "patient", "study", "series", "sop", "modality",
                            "sop_class_uid", "image_type", "iop", "label", "label_rule", "label_keyword",
                            "label_field", "ipp_x", "ipp_y", "ipp_z"})
SOURCE_FILES = ("scan.json", "source.json")  # work/ files that may record the DICOM root


@dataclass
class WriteSummary:
    dataset: str
    partition: tuple[int, int]
    volumes_converted: int = 0
    slices_converted: int = 0
    slices_unreadable: int = 0
    volumes_pending: int = 0           # planned volumes other partitions still have to convert
    assembled: bool = False
    already_complete: bool = False
    note: str = ""
    manifest: dict | None = None
    seconds: dict = field(default_factory=dict)


def dicom_root(layout: Layout, override: str | None) -> Path:
    """Where the DICOM files are: --dicom-root, else what scan (or `tlx shard`) recorded in work/."""
    if override:
        root = Path(override)
    else:
        recorded = [read_json(layout.work / f, f"work/{f}") for f in SOURCE_FILES if (layout.work / f).exists()]
        roots = [r.get("dicom_root") for r in recorded if r.get("dicom_root")]
        if not roots:
            raise DatakitError(f"{layout.work} does not record where the DICOM files are; "
                               "pass --dicom-root DIR (the folder given to `tlx scan`)")
        root = Path(roots[0])
    if not root.is_dir():
        raise DatakitError(f"DICOM root {str(root)!r} is not a folder (pass --dicom-root DIR)")
    return root


def _check_plan(layout: Layout) -> dict:
    if not layout.root.is_dir():
        raise DatakitError(f"dataset folder {str(layout.root)!r} does not exist; run `tlx scan` and `tlx plan` first")
    if not layout.plan_json.exists() or not layout.plan.exists():
        raise DatakitError(f"{layout.root} holds no plan (work/plan.json); run `tlx plan {layout.root}` first")
    plan_json = read_json(layout.plan_json, "work/plan.json")
    recorded = plan_json.get("index") or {}
    if not layout.index.exists():
        raise DatakitError(f"{layout.index} is missing; the plan refers to its rows: rerun `tlx scan` and `tlx plan`")
    st = layout.index.stat()
    if (recorded.get("bytes"), recorded.get("mtime_ns")) != (st.st_size, st.st_mtime_ns):
        raise DatakitError(f"{layout.index} changed after the plan was made; rerun `tlx plan {layout.root}`")
    return plan_json


def _index_rows(layout: Layout, rows: pl.Series) -> pl.DataFrame:
    """The index columns read_hu needs (and row, path) of the index rows `rows`."""
    columns = [c for c in pq.read_schema(layout.index).names if c not in NOT_FOR_PIXELS]
    return (pl.scan_parquet(layout.index).select(columns).with_row_index("row")
            .filter(pl.col("row").is_in(pl.Series(rows.cast(pl.UInt32)).implode()))
            .collect(engine="streaming").with_columns(pl.col("row").cast(pl.Int64)))


def _with_copies(layout: Layout, rows: pl.DataFrame) -> pl.DataFrame:
    """`rows` with a `copies` column: the index rows of each file's other copies (same SOP UID), in
    the order write tries them when the file cannot be read (plan's dedup_sop). Plans made before
    plan_copies.parquet existed have none."""
    if not layout.plan_copies.exists():
        return rows.with_columns(copies=pl.lit(None, pl.List(pl.Struct({"row": pl.Int64}))))
    fallbacks = pl.read_parquet(layout.plan_copies).filter(pl.col("row").is_in(rows["row"].implode()))
    if fallbacks.is_empty():
        return rows.with_columns(copies=pl.lit(None, pl.List(pl.Struct({"row": pl.Int64}))))
    details = _index_rows(layout, fallbacks["copy"]).rename({"row": "copy"})
    fields = [pl.col("copy").alias("row"), *(pl.col(c) for c in details.columns if c != "copy")]
    nested = (fallbacks.join(details, on="copy").sort("row", "rank")
              .group_by("row", maintain_order=True).agg(copies=pl.struct(fields)))
    return rows.join(nested, on="row", how="left")


def _phase1_tasks(layout: Layout, share: pl.DataFrame, root: Path, config: WriteConfig) -> Iterator[VolumeTask]:
    """One task per volume still to convert, largest first (the pool then ends evenly). The
    index rows are read at once (columnar), the per-slice dicts only as each task is handed out."""
    rows = (_with_copies(layout, _index_rows(layout, share["row"]))
            .join(share.select("row", "volume", "slice_index", "partition_unit"), on="row")
            .with_columns(key=sample_key_expr()))
    groups = rows.partition_by("partition_unit", "volume", as_dict=True)
    for unit, volume in sorted(groups):
        group = groups.pop((unit, volume))
        yield VolumeTask(volume, group.drop("partition_unit", "volume").to_dicts(), str(root),
                         tuple(config.size), config.codec, config.zstd_level, config.hu_floor)


@contextmanager
def assembly_lock(layout: Layout):
    """Yields True if this process holds the assembly lock (flock: released by the kernel if the
    holder dies, so a kill -9 never leaves a stale lock), False if another process has it."""
    layout.work.mkdir(parents=True, exist_ok=True)
    fd = os.open(layout.assemble_lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def write_dataset(dataset_dir, config: WriteConfig = WriteConfig(), options: RunOptions = RunOptions(),
                  progress: Progress = silent) -> WriteSummary:
    """Run write (see the module docstring); raises DatakitError on input a user can fix.
    `progress` gets Tick("convert", slices staged, slices of this partition) in phase 1 and
    Tick("shards", slices written, slices kept) in phase 2."""
    config.check()
    check_resume_mode(options.resume)
    layout = Layout(dataset_dir)
    _check_plan(layout)
    with write_lock(layout, options.partition):
        return _write(layout, config, options, progress)


@contextmanager
def write_lock(layout: Layout, partition: tuple[int, int]):
    """The folder's lock (datakit.resume.output_lock): exclusive for a write of the whole plan; the
    partitions of one write run side by side, so each holds it shared (which still refuses a
    whole-plan write, plan and scan), plus an exclusive lock of its own partition (two runs of
    one partition at once, e.g. a requeued array task while its first run lives, would delete each
    other's temporary files)."""
    i, n = partition
    command = "tlx write" + (f" --partition {i}/{n}" if n > 1 else "")
    with output_lock(layout.root, command, shared=n > 1), ExitStack() as partition_lock:
        if n > 1:
            partition_lock.enter_context(output_lock(layout.work / "partitions" / f"{i}-of-{n}", command))
        yield


def _write(layout: Layout, config: WriteConfig, options: RunOptions, progress: Progress) -> WriteSummary:
    """write_dataset() once the folder is locked."""
    plan_json = _check_plan(layout)
    refuse_foreign(layout.root)
    summary = WriteSummary(dataset=str(layout.root), partition=options.partition)
    staging = Staging(layout)
    if layout.manifest.exists():
        if options.resume == "never":
            raise DatakitError(f"{layout.root} already holds a finished dataset (manifest.json); "
                               "choose a new output folder")
        check_earlier_write(layout, plan_json["config"], config)
        return _already_complete(layout, staging, options, summary)

    i, n = options.partition
    plan = pl.read_parquet(layout.plan, columns=["row", "volume", "slice_index", "partition_unit"]).with_columns(
        pl.col("volume").cast(pl.String))
    if plan.is_empty():
        raise DatakitError(f"the plan of {layout.root} holds no slices to write (see work/plan_rejects.parquet)")
    share = plan.filter(pl.col("partition_unit") % n == i)
    all_volumes = plan["volume"].unique().to_list()
    staged_mine = staging.staged(share["volume"].unique().to_list())
    if options.resume == "never":
        _refuse_earlier_write(layout, staging, staged_mine, everything_staged=staging.staged(all_volumes) ==
                              set(all_volumes))
    if staging.claim(identity_of(plan_json, config.to_dict())):
        # A new staging folder. Either another run assembled the dataset and removed its staging
        # since the check above (the manifest is written before that), or the shards and tables
        # under final names were made from staged files that are gone (deleted to start over with
        # another plan or other options): assembly would keep such a shard as finished, so they go.
        if layout.manifest.exists():
            return _already_complete(layout, staging, options, summary)
        _remove_stale_outputs(layout)
    workers = options.workers or default_workers()

    t0 = time.perf_counter()
    _convert_share(layout, staging, share, staged_mine, config, options, workers, summary, progress)
    summary.seconds["convert"] = time.perf_counter() - t0
    pending = [v for v in all_volumes if not staging.is_staged(v)]
    summary.volumes_pending = len(pending)
    if pending:
        summary.note = (f"partition {i}/{n} done; {len(pending)} volumes of other partitions are not converted yet; "
                        "the last partition to finish (or `tlx write` without --partition) assembles the dataset")
        return summary
    return _assemble(layout, staging, config, options, workers, summary, progress)


def _assemble(layout: Layout, staging: Staging, config: WriteConfig, options: RunOptions, workers: int,
              summary: WriteSummary, progress: Progress) -> WriteSummary:
    """Phase 2, by whichever run takes the assembly lock first (the others say so)."""
    t0 = time.perf_counter()
    with assembly_lock(layout) as mine_to_do:
        if not mine_to_do:
            summary.note = "another process is assembling the dataset"
            return summary
        if not layout.manifest.exists():  # another run may have finished while we converted
            from datakit.assemble import assemble

            summary.manifest = assemble(layout, config, workers, tool_version(), progress)
            summary.assembled = True
        else:
            summary.manifest = read_json(layout.manifest, "manifest.json")
    summary.seconds["assemble"] = time.perf_counter() - t0
    _finish(layout, staging, options)
    return summary


def _refuse_earlier_write(layout: Layout, staging: Staging, staged_mine: set, everything_staged: bool) -> None:
    """--resume never: a folder holding output of an earlier write is refused (staged volumes of other
    partitions alone are not: partitions of one write run side by side)."""
    finals = layout.final_outputs()
    if finals:
        raise DatakitError(f"{layout.root} already holds output of an earlier write "
                           f"({', '.join(p.name for p in finals)}) and --resume is never; use --resume auto to "
                           "finish it, or choose a new output folder")
    if staged_mine and not everything_staged:
        raise DatakitError(f"{staging.dir} already holds {len(staged_mine)} converted volumes of this run's "
                           f"share and --resume is never; use --resume auto to continue, or delete {staging.dir} "
                           "to start over")


def _convert_share(layout: Layout, staging: Staging, share: pl.DataFrame, staged_mine: set, config: WriteConfig,
                   options: RunOptions, workers: int, summary: WriteSummary, progress: Progress) -> None:
    """Phase 1: convert and stage the volumes of this partition that are not staged yet."""
    todo = share.filter(~pl.col("volume").is_in(list(staged_mine)))
    if not len(todo):
        return
    root = dicom_root(layout, options.dicom_root)
    _remove_partials(staging, todo["volume"].unique().to_list())
    done = len(share) - len(todo)
    progress(Tick("convert", done, len(share), "slices"))
    for result in run_tasks(convert_in_worker, _phase1_tasks(layout, todo, root, config), workers,
                            initializer=init_worker, initargs=(str(layout.root),),
                            inline_fn=lambda t: convert_volume(t, staging)):
        summary.volumes_converted += 1
        summary.slices_converted += result.converted
        summary.slices_unreadable += result.slices - result.converted
        done += result.slices
        progress(Tick("convert", done, len(share), "slices"))


def check_earlier_write(layout: Layout, plan_config: dict, config: WriteConfig) -> None:
    """--resume auto continues only a write of these options: a finished dataset, or a staging begun
    with other write options or from a plan of other options, is refused (naming the options)."""
    if layout.manifest.exists():
        made = read_json(layout.manifest, "manifest.json").get("config") or {}
        differ = differing_options(made.get("plan") or {}, plan_config) + differing_options(made.get("write") or {},
                                                                              config.to_dict())
        if differ:
            raise DatakitError(f"{layout.root} already holds a finished dataset made with other options "
                               f"({', '.join(differ)} differ); choose a new output folder")
        return
    staging = Staging(layout)
    if not staging.identity_path.exists():
        return
    differ = differing_options(read_json(staging.identity_path, "work/staging/identity.json").get("write") or {},
                        config.to_dict())
    if layout.plan_json.exists():
        differ += differing_options(read_json(layout.plan_json, "work/plan.json").get("config") or {}, plan_config)
    if differ:
        raise DatakitError(f"{staging.dir} holds a write begun with other options ({', '.join(differ)} differ); "
                           f"rerun with those options, or delete {staging.dir} to start the write over")


def _remove_partials(staging: Staging, volumes: list[str]) -> None:
    """Temporary files a killed run left for volumes this run converts (other partitions' files
    are left alone: they may be in progress on another machine)."""
    for v in volumes:
        for p in staging.volume_path(v).parent.glob(f"{v}.arrow{PARTIAL}*"):
            p.unlink(missing_ok=True)


def _already_complete(layout: Layout, staging: Staging, options: RunOptions, summary: WriteSummary) -> WriteSummary:
    _finish(layout, staging, options)
    summary.already_complete, summary.manifest = True, read_json(layout.manifest, "manifest.json")
    return summary


def _remove_stale_outputs(layout: Layout) -> None:
    for p in layout.final_outputs():
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()


def _finish(layout: Layout, staging: Staging, options: RunOptions) -> None:
    """After the manifest: staging is a full second copy of the data; drop it unless asked to keep it."""
    if not options.keep_staging and staging.exists():
        shutil.rmtree(staging.dir)
