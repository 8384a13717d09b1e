"""Turning converted samples into a tlx dataset: staging, global shuffle, shards, parquet, manifest.

    builder = DatasetBuilder(out, kind="segmentation", members={...}, classes=[...], config={...},
                             resume="auto", progress=progress)
    jobs = [(job_id, job), ...]                         # one per volume / chunk of images
    builder.run(stage_fn, jobs, workers=2)              # stage_fn(job, bin_path) -> Staged, in a process pool
    manifest = builder.assemble()                       # shards + slices/volumes/rejects.parquet + manifest.json

It is datakit's one writer of datasets other than `tlx write`'s ct-slices (the test
fixtures' ct-slices datasets are made with it too).

Two phases, as in `tlx write` (docs/internals/datakit-stages.md):
1. stage: each job (a NIfTI case, a chunk of images) is decoded, resized and encoded
   in a worker process; its payloads go to one file under work/staging/ and its rows
   (sample metadata plus where each payload lies) to a JSON file beside it, written
   last and atomically. A rerun with `resume="auto"` (the default; datakit.resume) skips
   jobs whose JSON exists (the name hashes the job's whole description, so a rerun with
   other options or splits stages anew), so an interrupted conversion loses at most the
   jobs in flight; `resume="never"` refuses a folder that is not empty. A payload may also
   point into the source file itself (JPEGs copied unchanged are never staged).
2. assemble: the rows of each split are sorted by key and shuffled with the seed (a
   shard mixes many volumes and patients), cut into shards of `samples_per_shard`
   (or of the sizes `shard_sizes` lists for a split) and written with
   datakit.shards.ShardWriter; slices.parquet lists the samples in shard order; manifest.json
   is written last, so its presence means "complete", and then work/staging/ is deleted (it
   is a second copy of the data). Every file goes through tlxcore.atomic (a temporary name,
   then a rename).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import re
import shutil
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from datakit.errors import DatakitError
from datakit.manifest import FORMAT, FORMAT_VERSION, SPLITS, Layout
from datakit.resume import check_output_folder, output_lock, refuse_foreign
from datakit.shards import ShardWriter
from datakit.write_pool import die_with_parent
from tlxcore.atomic import atomic_write, is_partial, write_json_atomic
from tlxcore.progress import Progress, Tick, silent
from tlxcore.runtime import default_workers, tool_version

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def safe_key(text: str, max_len: int = 80) -> str:
    """A sample-key-safe version of a source name: runs of other characters become `_`;
    long names keep their tail and a short hash, so distinct names stay distinct."""
    key = _UNSAFE.sub("_", text).strip("_") or "x"
    if len(key) > max_len:
        key = key[-(max_len - 9):].lstrip("_") + "-" + hashlib.sha1(text.encode()).hexdigest()[:8]
    return key


@dataclass
class Staged:
    """What one job produced: sample rows, rejects and volumes.parquet rows. Each sample row
    holds `key`, `split` and `_payload` {ext: [path, offset, size]}; its other keys become
    slices.parquet columns."""
    job: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    rejects: list[dict[str, Any]] = field(default_factory=list)
    volumes: list[dict[str, Any]] = field(default_factory=list)


class StagingFile:
    """Append-only payload file of one job; `add` returns the [path, offset, size] reference."""

    def __init__(self, path: Path):
        self.path = path
        self._open = ExitStack()   # atomic_write's temporary name is per process: a killed run's orphan never shares it
        self._f = self._open.enter_context(atomic_write(path))
        self._pos = 0

    def add(self, data: bytes) -> list:
        ref = [str(self.path), self._pos, len(data)]
        self._f.write(data)
        self._pos += len(data)
        return ref

    def close(self) -> None:
        self._open.close()         # fsync, rename to the final name


def _job_file(staging: Path, job_id: str, job: Any) -> Path:
    """Named by the job's id and its whole description (items, their splits, size, ...; jobs are
    frozen dataclasses, so their repr is deterministic): a resumed conversion reuses a staged job
    only if it would stage exactly the same thing, never one made with other options or splits."""
    return staging / (hashlib.sha1(f"{job_id}\n{job!r}".encode()).hexdigest()[:20] + ".json")


def _run_job(stage_fn: Callable, job: Any, job_id: str, staging: Path) -> Staged:
    staged = stage_fn(job, _job_file(staging, job_id, job).with_suffix(".bin"))
    write_json_atomic(dataclasses.asdict(staged), _job_file(staging, job_id, job), sort_keys=True)
    return staged


class DatasetBuilder:
    def __init__(self, out: Path | str, *, kind: str, members: dict[str, dict], classes: list[str],
                 config: dict[str, Any], samples_per_shard: int = 1000, seed: int = 0, resume: str = "auto",
                 shard_sizes: dict[str, list[int]] | None = None, shuffle: bool = True,
                 progress: Progress = silent):
        """`shard_sizes`: the sizes of a split's shards, in order, instead of `samples_per_shard`
        each (they must add up to the split's samples); `shuffle=False` writes each split in the
        order the jobs list its samples (for a caller that ordered them itself) instead of the
        seeded shuffle; `progress` gets the staging and shard ticks."""
        self.layout = Layout(out)
        self.kind, self.members, self.classes, self.config = kind, members, classes, config
        self.samples_per_shard, self.seed, self.shard_sizes = samples_per_shard, seed, shard_sizes or {}
        self.shuffle, self.progress = shuffle, progress
        if samples_per_shard < 1:
            raise DatakitError(f"--samples-per-shard {samples_per_shard} must be >= 1")
        check_output(out, resume)
        self.staging = self.layout.staging
        self.staging.mkdir(parents=True, exist_ok=True)
        self.staged: list[Staged] = []

    def run(self, stage_fn: Callable[[Any, Path], Staged], jobs: list[tuple[str, Any]], workers: int,
            what: str = "converting") -> list[Staged]:
        """Stage every (job_id, job) not staged yet, in a process pool; collect all results, in
        the order of `jobs` (whichever were staged by an earlier run). `progress` gets
        Tick(what, jobs staged, jobs)."""
        results: list[Staged | None] = [None] * len(jobs)
        todo = []
        for i, (job_id, job) in enumerate(jobs):
            done = _job_file(self.staging, job_id, job)
            if done.exists():
                results[i] = Staged(**json.loads(done.read_text()))
            else:
                todo.append(i)
        done = len(jobs) - len(todo)
        self.progress(Tick(what, done, len(jobs)))
        for i, staged in zip(todo, _stage_all(stage_fn, [jobs[i] for i in todo], self.staging, workers)):
            results[i] = staged
            done += 1
            self.progress(Tick(what, done, len(jobs)))
        self.staged += results
        return self.staged

    def assemble(self, rejects: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """Write shards, parquet files and the manifest from everything staged (plus
        `rejects` found before staging, e.g. files without a label)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = [r for s in self.staged for r in s.rows]
        all_rejects = [r for s in self.staged for r in s.rejects] + list(rejects or [])
        volumes = [v for s in self.staged for v in s.volumes]
        keys = [r["key"] for r in rows]
        if len(set(keys)) != len(keys):
            dup = sorted({k for k in keys if keys.count(k) > 1})[:5]
            raise DatakitError(f"sample keys are not unique after making them key-safe, e.g. {dup}; "
                               f"rename the sources so their names differ in letters, digits, _ or -")
        if not rows:
            raise DatakitError(f"nothing to write: every input was rejected ({len(all_rejects)} rejects; "
                               f"see the reasons in {self.layout.rejects})")
        # What a killed earlier assembly left: shards (perhaps of another --samples-per-shard, so more of
        # them) and temporary files. Every shard is written anew below, so none of it may stay.
        shutil.rmtree(self.layout.shards, ignore_errors=True)
        for p in self.layout.root.iterdir():
            if is_partial(p):
                p.unlink()
        shards_meta, table_rows = self._write_shards(rows)
        tables = [(self.layout.slices, _named_lists(pa.Table.from_pylist(table_rows))),
                  (self.layout.rejects, _rejects_table(all_rejects))]
        if volumes:  # kinds made of volumes (segmentation); image kinds have none
            tables.append((self.layout.volumes, pa.Table.from_pylist(volumes)))
        for path, table in tables:
            with atomic_write(path) as f:
                pq.write_table(table, f)
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "kind": self.kind,
            "tool_version": tool_version(), "config": self.config, "members": self.members,
            "classes": self.classes, "splits": _split_counts(table_rows, self.classes, self.kind, shards_meta),
            "shards": shards_meta,
        }
        write_json_atomic(manifest, self.layout.manifest, sort_keys=True)
        shutil.rmtree(self.staging)  # a second copy of the data; the dataset is complete without it
        return manifest

    def _write_shards(self, rows: list[dict]) -> tuple[list[dict], list[dict]]:
        """Each split's rows sorted by key and shuffled with the seed (unless shuffle=False), cut
        into shards: the manifest's shard entries and the slices.parquet rows, in shard order."""
        shards_meta, table_rows = [], []
        self.progress(Tick("shards", 0, len(rows), "samples"))
        for split in SPLITS:
            split_rows = [r for r in rows if r["split"] == split]
            if self.shuffle:
                split_rows.sort(key=lambda r: r["key"])
                order = np.random.default_rng([self.seed, SPLITS.index(split)]).permutation(len(split_rows))
                split_rows = [split_rows[i] for i in order]
            for n, chunk in enumerate(self._shard_chunks(split, split_rows)):
                path = self.layout.shard_path(split, n)
                with ShardWriter(path) as writer:
                    for r in chunk:
                        writer.write(r["key"], {ext: _read_ref(ref) for ext, ref in r["_payload"].items()})
                info = writer.info
                rel = path.relative_to(self.layout.root).as_posix()
                shards_meta.append({"split": split, "path": rel,
                                    "index": info.index_path.relative_to(self.layout.root).as_posix(),
                                    "samples": info.samples, "bytes": info.bytes, "sha256": info.sha256})
                table_rows += [{"key": r["key"], "split": split, "shard": rel,
                                **{k: v for k, v in r.items() if k not in ("key", "split", "_payload")}}
                               for r in chunk]
                self.progress(Tick("shards", len(table_rows), len(rows), "samples"))
        return shards_meta, table_rows

    def _shard_chunks(self, split: str, rows: list) -> list[list]:
        sizes = self.shard_sizes.get(split)
        if sizes is None:
            return [rows[i:i + self.samples_per_shard] for i in range(0, len(rows), self.samples_per_shard)]
        if sum(sizes) != len(rows) or min(sizes, default=1) < 1:
            raise DatakitError(f"shard sizes {sizes} of split {split} must be positive and add up to its "
                               f"{len(rows)} samples")
        starts = np.cumsum([0, *sizes]).tolist()
        return [rows[a:b] for a, b in itertools.pairwise(starts)]


def locked_output(command: str):
    """Decorator of a converter `convert_x(options, progress)` whose options have `out`: it runs
    holding the output folder's lock (datakit.resume.output_lock), so a second conversion into
    the folder is refused naming the first one's pid. A folder that is not a tlx dataset's is
    refused before the lock leaves its file there."""
    def decorate(convert: Callable) -> Callable:
        @functools.wraps(convert)
        def locked(o, progress: Progress = silent):
            refuse_foreign(o.out)
            with output_lock(o.out, command):
                return convert(o, progress)
        return locked
    return decorate


def check_output(out: Path | str, resume: str) -> bool:
    """What --resume allows (datakit.resume); a finished dataset is never written over. True when
    the folder holds an earlier conversion to continue."""
    root = Layout(out).root
    if (root / "manifest.json").exists():
        raise DatakitError(f"{root} already holds a finished dataset (manifest.json); choose a new folder")
    return check_output_folder(root, resume, "tlx convert")


def _stage_all(stage_fn: Callable, jobs: list[tuple[str, Any]], staging: Path, workers: int) -> Iterator[Staged]:
    """Run the jobs: in this process for one worker (tests, debugging), else in a process pool.
    A failing job stops the conversion with its error (what was staged so far is kept)."""
    if workers <= 1 or len(jobs) <= 1:
        for job_id, job in jobs:
            yield _run_job(stage_fn, job, job_id, staging)
        return
    # Workers die with their parent (as tlx write's): after a kill -9 none keeps staging behind a
    # resumed run's back. spawn, not fork: a forked worker inherits the parent's descriptors (the
    # folder lock, files being written).
    import multiprocessing

    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=die_with_parent) as pool:
        futures = [pool.submit(_run_job, stage_fn, job, job_id, staging) for job_id, job in jobs]
        try:
            for f in futures:
                yield f.result()
        finally:
            for f in futures:
                f.cancel()


def _read_ref(ref: list) -> bytes:
    path, offset, size = ref
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(size)
    if len(data) != size:
        raise DatakitError(f"{path} changed since it was staged ({len(data)} of {size} bytes at {offset}); "
                           f"rerun the conversion into a new folder")
    return data


def _named_lists(table):
    """A list column whose lists are all empty comes out of from_pylist as list<null>; tlx's list columns
    hold names (labels, classes), so it is stored as list<string> like the same column of another dataset."""
    import pyarrow as pa
    for i, f in enumerate(table.schema):
        if pa.types.is_list(f.type) and pa.types.is_null(f.type.value_type):
            table = table.set_column(i, f.name, table.column(i).cast(pa.list_(pa.string())))
    return table


def _rejects_table(rejects: list[dict[str, Any]]):
    import pyarrow as pa
    cols = {"path": pa.string(), "volume": pa.string(), "stage": pa.string(), "code": pa.string(),
            "reason": pa.string()}
    return pa.Table.from_pylist([{c: r.get(c) for c in cols} for r in rejects], schema=pa.schema(cols))


def _split_counts(rows: list[dict], classes: list[str], kind: str, shards: list[dict]) -> dict:
    out = {}
    for split in SPLITS:
        rs = [r for r in rows if r["split"] == split]
        by_label = dict.fromkeys(classes, 0)
        for r in rs:
            if kind in ("image-classification", "ct-slices"):
                by_label[r["label"]] += 1
            elif kind == "multilabel":
                for name in r["labels"]:
                    by_label[name] += 1
            elif kind == "segmentation":
                for name in classes:
                    by_label[name] += r[f"pixels_{name}"] > 0   # slices showing the class
        out[split] = {"samples": len(rs), "volumes": len({r["volume"] for r in rs if r.get("volume")}),
                      "patients": len({r["patient"] for r in rs if r.get("patient")}),
                      "shards": sum(s["split"] == split for s in shards), "by_label": by_label}
    return out


def stage_reject(path: str, code: str, reason: str, volume: str | None = None) -> dict[str, Any]:
    """A rejects.parquet row (stage "convert")."""
    return {"path": path, "volume": volume, "stage": "convert", "code": code, "reason": reason}


def check_workers(workers: int | None) -> int:
    """--workers of a converter: at least 1; None: tlxcore.runtime.default_workers()."""
    if workers is None:
        return default_workers()
    if workers < 1:
        raise DatakitError(f"--workers {workers} must be >= 1")
    return workers


def iter_chunks(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
