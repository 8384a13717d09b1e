"""`tlx convert cxr --merge A B ...`: several converted chest X-ray datasets -> one superset
(Cherti & Jitsev's pretraining set: CheXpert, MIMIC-CXR, ChestX-ray14 and PadChest together).

    merge_cxr(CxrMergeOptions(sources=("chexpert=cx/", "mimic-cxr=mimic/"), out="superset", labels="intersection"))

Each source is a finished `multilabel` dataset (`tlx convert cxr`, or `tlx convert image-folder`),
named by `NAME=DIR` or by its preset. Labels are matched by name (the presets make them
canonical): `intersection` keeps the labels every source has (in the first source's order),
`union` keeps all of them, a label a source lacks being missing (NaN) for its images, which the
masked BCE then ignores. `classes` picks and orders a subset.

Every sample keeps its source's split, so patients stay disjoint across splits within each
source; keys and patients are prefixed with the source's name (`chexpert-<key>`), so no two
sources share one. Two sources of one preset are refused (one dataset's patients split twice).
Images are copied byte for byte from the source shards (never decoded), so the sources must
store images of one size and type. The manifest's `config.sources` records each source: its
name, preset, label policy, its labels absent from the merge's, and its samples per split (its
share of the superset).
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datakit.convert.builder import DatasetBuilder, Staged, StagingFile, check_output, check_workers, locked_output
from datakit.convert.cxr import targets_member
from datakit.errors import DatakitError
from datakit.manifest import SPLITS
from datakit.read import SampleReader, open_dataset
from tlxcore.progress import Progress, silent

CHUNK = 1024  # samples per staging job
LABEL_SETS = ("intersection", "union")


@dataclass
class CxrMergeOptions:
    sources: tuple[str, ...]             # DIR or NAME=DIR
    out: str
    labels: str = "intersection"         # intersection | union
    classes: tuple[str, ...] | None = None
    samples_per_shard: int = 1000
    seed: int = 0
    workers: int | None = None
    resume: str = "auto"


@dataclass(frozen=True)
class MergeJob:
    name: str
    root: str
    split: str
    start: int
    stop: int
    mapping: tuple[int | None, ...]      # per merged class: its index in the source's classes, None if absent
    classes: tuple[str, ...]


def _sources(specs: tuple[str, ...]) -> list[tuple[str, object]]:
    if len(specs) < 2:
        raise DatakitError(f"--merge needs at least two datasets; got {len(specs)}")
    out, presets = [], {}
    for spec in specs:
        name, sep, folder = spec.partition("=")
        ds = open_dataset(folder if sep else spec)
        preset = (ds.manifest.get("config") or {}).get("preset")
        name = name if sep else (preset or Path(spec).name)
        if ds.kind != "multilabel":
            raise DatakitError(f"--merge {spec}: kind {ds.kind!r}; a merge takes multilabel datasets (tlx convert cxr)")
        if preset and preset in presets:
            raise DatakitError(f"--merge {presets[preset]} and {spec} are both preset {preset}: one dataset's patients "
                               f"would be split twice; merge each dataset once")
        presets[preset] = spec
        out.append((name, ds))
    names = [n for n, _ in out]
    if len(set(names)) != len(names) or not all(n.replace("-", "").replace("_", "").isalnum() for n in names):
        raise DatakitError(f"--merge names {names} must be distinct words of letters, digits, - or _ (NAME=DIR)")
    first = out[0][1].member("image")[1]
    for name, ds in out[1:]:
        spec = ds.member("image")[1]
        if (spec.codec, spec.dtype, spec.shape) != (first.codec, first.dtype, first.shape):
            raise DatakitError(f"--merge: {name} stores {spec.codec} {spec.dtype} images of shape "
                               f"{list(spec.shape or [])}, {out[0][0]} {first.codec} {first.dtype} "
                               f"{list(first.shape or [])}; convert them with one --size and --channels")
    return out


def merged_classes(sources: list[tuple[str, object]], mode: str, classes: tuple[str, ...] | None) -> list[str]:
    if mode not in LABEL_SETS:
        raise DatakitError(f"--merge-labels {mode!r} is not one of: {', '.join(LABEL_SETS)}")
    lists = [ds.classes for _, ds in sources]
    if mode == "intersection":
        names = [c for c in lists[0] if all(c in other for other in lists[1:])]
    else:
        names = list(dict.fromkeys(c for lst in lists for c in lst))
    if classes:
        unknown = [c for c in classes if c not in names]
        if unknown:
            raise DatakitError(f"--classes {unknown} are not in the {mode} of the sources' labels ({', '.join(names)})")
        names = list(classes)
    if not names:
        raise DatakitError(f"the sources share no label ({'; '.join(f'{n}: {len(d.classes)}' for n, d in sources)}); "
                           f"use --merge-labels union")
    return names


@locked_output("tlx convert cxr --merge")
def merge_cxr(o: CxrMergeOptions, progress: Progress = silent) -> dict:
    """Merge converted multilabel datasets into one; returns the manifest written."""
    check_output(o.out, o.resume)
    sources = _sources(tuple(o.sources))
    classes = merged_classes(sources, o.labels, o.classes)
    jobs, shares = [], []
    for name, ds in sources:
        mapping = tuple(ds.classes.index(c) if c in ds.classes else None for c in classes)
        counts = {s: ds.num_samples(s) for s in SPLITS}
        for split, n in counts.items():
            for start in range(0, n, CHUNK):
                job = MergeJob(name, str(ds.root.resolve()), split, start, min(start + CHUNK, n), mapping,
                               tuple(classes))
                jobs.append((f"{name}/{split}/{start}", job))
        config = ds.manifest.get("config") or {}
        shares.append({"name": name, "preset": config.get("preset"), "label_policy": config.get("label_policy"),
                       "absent": [c for c in classes if c not in ds.classes], "samples": counts,
                       "manifest_sha256": hashlib.sha256((ds.root / "manifest.json").read_bytes()).hexdigest()})
    image_ext, _ = sources[0][1].member("image")
    members = {image_ext: dict(sources[0][1].manifest["members"][image_ext]),
               "labels": targets_member(len(classes))}
    config = {"converter": "cxr-merge", "merge_labels": o.labels, "sources": shares, "split_by": "patient",
              "samples_per_shard": o.samples_per_shard, "seed": o.seed,
              "targets": "float32; 1 positive, 0 negative, NaN missing, other values label smoothing"}
    builder = DatasetBuilder(o.out, kind="multilabel", members=members, classes=classes, config=config,
                             samples_per_shard=o.samples_per_shard, seed=o.seed, resume=o.resume, progress=progress)
    builder.run(stage_merge, jobs, check_workers(o.workers), what="merging datasets")
    return builder.assemble()


def stage_merge(job: MergeJob, bin_path: Path) -> Staged:
    """One chunk of a source split: image bytes referenced in the source shard, targets remapped."""
    import polars as pl

    ds = open_dataset(job.root)
    image_ext, _ = ds.member("image")
    labels_ext, _ = ds.member("labels")
    table = ds.sample_table(job.split, with_keys=True)
    meta = pl.read_parquet(Path(job.root) / "slices.parquet").filter(pl.col("split") == job.split).to_dicts()
    reader, staged = SampleReader(ds), Staged(f"{job.name}/{job.split}/{job.start}")
    staging = StagingFile(bin_path)
    try:
        for i in range(job.start, job.stop):
            row = meta[i]
            if row["key"] != table.keys[i]:
                raise DatakitError(f"{job.root}: slices.parquet does not list the {job.split} samples in shard order; "
                                   f"run `tlx verify {job.root}`")
            source = np.asarray(reader.read(table, i, labels_ext), dtype=np.float32)
            targets = np.array([np.nan if j is None else source[j] for j in job.mapping], dtype="<f4")
            kept = set(job.classes)
            staged.rows.append({
                "key": f"{job.name}-{row['key']}", "split": job.split,
                "patient": _prefixed(job.name, row.get("patient")),
                "study": _prefixed(job.name, row.get("study")), "view": row.get("view"), "source_dataset": job.name,
                "labels": [c for c, t in zip(job.classes, targets) if t == 1.0],
                "missing": [c for c, t in zip(job.classes, targets) if math.isnan(t)],
                "uncertain": [c for c in (row.get("uncertain") or []) if c in kept],
                "_payload": {image_ext: [str(table.shard_paths[table.shard[i]]), int(table.offset[image_ext][i]),
                                         int(table.size[image_ext][i])],
                             "labels": staging.add(targets.tobytes())}})
    finally:
        staging.close()
        reader.close()
    return staged


def _prefixed(name: str, value) -> str | None:
    return None if value is None else f"{name}-{value}"
