"""`tlx convert cxr`: a chest X-ray dataset (CheXpert, MIMIC-CXR, PadChest, ChestX-ray14) with its
label states and a policy for the uncertain and blank ones -> kind `multilabel` with float32 targets.

    convert_cxr(CxrOptions(root="CheXpert-v1.0-small", out="chexpert", preset="chexpert", uncertain="ones"))

The preset (datakit.convert.cxr_presets) reads the source's label files into one row per image.
Then:
1. labels: the source's, renamed (`rename`: "OLD=NEW"), in the source's order or `classes`' (a
   name the source lacks is an error), listed in the manifest's `classes`;
2. files: each row's image below `root` (missing-file), every image file nothing names (no-label);
3. views: `views` keeps `frontal` (PA, AP, AP_HORIZONTAL, FRONTAL), `lateral` (LATERAL, LL, RL, L),
   `all`, or a comma list of the source's codes; other images are rejects with code `view`;
4. splits by patient: the source's own split where it has one (MIMIC-CXR's split file, CheXpert's
   valid.csv and ChestX-ray14's test list as test), a split list that puts one patient into two
   splits is an error; the splits it lacks are drawn per patient (`val`, `test`) from its train
   patients, or from all patients when it has none (PadChest);
5. targets by the label policy (datakit.convert.cxr_labels), NaN where a label is missing.

Members: `img.zst` (zstd uint8 [H, W] or [3, H, W]) and `labels` (raw float32 [L], NaN =
missing). slices.parquet: key, split, shard, patient, study, view, source (path below the root),
width, height, labels (target 1), missing (target NaN), uncertain (uncertain in the source).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datakit.convert.builder import (
    DatasetBuilder,
    Staged,
    StagingFile,
    check_output,
    check_workers,
    iter_chunks,
    locked_output,
    stage_reject,
)
from datakit.convert.cxr_labels import LSR_RANGE, LabelPolicy
from datakit.convert.cxr_presets import UNC, CxrFiles, CxrRow, read_source
from datakit.convert.images import check_image_options, encoded_image, image_member, match_files
from datakit.convert.splits import patient_splits
from datakit.errors import DatakitError
from tlxcore.progress import Progress, silent

CHUNK = 256  # images per staging job
VIEW_GROUPS = {"frontal": ("PA", "AP", "AP_HORIZONTAL", "FRONTAL"), "lateral": ("LATERAL", "LL", "RL", "L")}


@dataclass
class CxrOptions:
    root: str
    out: str
    preset: str
    labels: str | None = None           # the preset's label file (else found in root)
    test_labels: str | None = None
    metadata: str | None = None
    split_file: str | None = None
    test_list: str | None = None
    uncertain: str = "ignore"            # ones | zeros | lsr | ignore
    blank: str = "zeros"                 # zeros | ignore
    eval_uncertain: str = "ignore"       # ignore | policy
    lsr_range: tuple[float, float] = LSR_RANGE
    views: str = "frontal"
    classes: tuple[str, ...] | None = None
    rename: tuple[str, ...] = ()
    val: float = 0.1
    test: float = 0.1
    size: int = 256
    channels: int = 1
    seed: int = 0
    samples_per_shard: int = 1000
    workers: int | None = None
    resume: str = "auto"


@dataclass(frozen=True)
class CxrItem:
    source: str              # path below the root
    path: str                # absolute
    key: str
    split: str
    patient: str
    study: str | None
    view: str | None
    targets: tuple[float, ...]
    uncertain: tuple[str, ...]


@dataclass(frozen=True)
class CxrJob:
    items: tuple[CxrItem, ...]
    classes: tuple[str, ...]
    size: int
    channels: int


def parse_views(text: str) -> tuple[str, ...] | None:
    """The view codes kept; None keeps every image (`all`)."""
    words = [w.strip().upper() for w in text.split(",") if w.strip()]
    if not words:
        raise DatakitError("--views is empty; give frontal, lateral, all or view codes such as PA,AP")
    if words == ["ALL"]:
        return None
    return tuple(dict.fromkeys(code for w in words for code in VIEW_GROUPS.get(w.lower(), (w,))))


def renamed(labels: list[str], rename: tuple[str, ...]) -> list[str]:
    """The labels after `OLD=NEW` renames; an OLD the source lacks, or two labels made one, is an error."""
    names = list(labels)
    for item in rename:
        old, sep, new = item.partition("=")
        old, new = old.strip(), new.strip()
        if not sep or not old or not new:
            raise DatakitError(f"--rename {item!r} must look like OLD=NEW")
        if old not in names:
            raise DatakitError(f"--rename {item!r}: the source has no label {old!r}; its labels: {', '.join(names)}")
        names[names.index(old)] = new
    if len(set(names)) != len(names):
        raise DatakitError(f"--rename makes two labels one: {sorted({n for n in names if names.count(n) > 1})}")
    return names


def pick_classes(labels: list[str], classes: tuple[str, ...] | None) -> list[int]:
    """Indices into the source's labels of the classes kept, in their order."""
    if not classes:
        return list(range(len(labels)))
    unknown = [c for c in classes if c not in labels]
    if unknown or len(set(classes)) != len(classes):
        raise DatakitError(f"--classes {', '.join(classes)}: {unknown or 'a repeated name'} not among the source's "
                           f"labels ({', '.join(labels)})")
    return [labels.index(c) for c in classes]


@locked_output("tlx convert cxr")
def convert_cxr(o: CxrOptions, progress: Progress = silent) -> dict:
    """Convert one chest X-ray dataset; returns the manifest written."""
    check_output(o.out, o.resume)
    policy = LabelPolicy(o.uncertain, o.blank, o.eval_uncertain, tuple(o.lsr_range)).check()
    check_image_options(o.size, o.channels)
    views = parse_views(o.views)
    root = Path(o.root)
    files = CxrFiles(*(Path(v) if v else None for v in (o.labels, o.test_labels, o.metadata, o.split_file,
                                                        o.test_list)))
    source = read_source(o.preset, root, files)
    labels = renamed(source.labels, tuple(o.rename))
    pick = pick_classes(labels, o.classes)
    classes = [labels[i] for i in pick]
    split_of = patient_splits([(r.patient, r.official) for r in source.rows], o.val, o.test, o.seed)
    matched, unnamed, not_files = match_files(root, [r.candidates for r in source.rows])
    rejects = list(source.rejects)
    rejects += [stage_reject(rel, code, reason) for rel, (code, reason) in sorted(not_files.items())]
    rejects += [stage_reject(rel, "no-label", f"no row of the {source.preset} label files names this image")
                for rel in unnamed]
    items = []
    for row, rel in zip(source.rows, matched):
        if rel is None:
            rejects.append(stage_reject(row.candidates[0], "missing-file", f"the label files name it but no such "
                                                                           f"image is below {root}"))
        elif views is not None and row.view not in views:
            rejects.append(stage_reject(rel, "view", f"view {row.view or 'unknown'} is not one of --views "
                                                     f"{','.join(views)}"))
        else:
            items.append(_item(row, rel, root, pick, classes, split_of[row.patient], policy, o.seed))
    if not items:
        raise DatakitError(f"no image of {root} is left to convert ({len(rejects)} rejects); check --root, "
                           f"--views and the label files")
    jobs = [(f"{c[0].source}..{c[-1].source}", CxrJob(tuple(c), tuple(classes), o.size, o.channels))
            for c in iter_chunks(sorted(items, key=lambda it: it.key), CHUNK)]
    members = {"img.zst": image_member(o.size, o.channels), "labels": targets_member(len(classes))}
    builder = DatasetBuilder(o.out, kind="multilabel", members=members, classes=classes,
                             config=_config(o, source, policy, views, classes), samples_per_shard=o.samples_per_shard,
                             seed=o.seed, resume=o.resume, progress=progress)
    builder.run(stage_cxr, jobs, check_workers(o.workers), what="converting images")
    return builder.assemble(rejects=rejects)


def targets_member(n_labels: int) -> dict:
    """The manifest's entry of float32 targets with NaN for missing labels."""
    return {"role": "labels", "codec": "raw", "dtype": "float32", "byteorder": "little", "shape": [n_labels],
            "missing": "nan"}


def _item(row: CxrRow, rel: str, root: Path, pick: list[int], classes: list[str], split: str,
          policy: LabelPolicy, seed: int) -> CxrItem:
    states = tuple(row.states[i] for i in pick)
    return CxrItem(rel, str(root / rel), row.key, split, row.patient, row.study, row.view,
                   policy.targets(states, split, row.key, seed),
                   tuple(c for c, s in zip(classes, states) if s == UNC))


def _config(o: CxrOptions, source, policy: LabelPolicy, views, classes: list[str]) -> dict:
    official = sorted({r.official for r in source.rows if r.official})
    return {"converter": "cxr", "preset": o.preset, "files": source.files, "source_labels": source.labels,
            "rename": list(o.rename), "label_policy": policy.config(), "views": list(views) if views else "all",
            "split_by": "patient", "official_splits": official, "val": o.val, "test": o.test, "size": o.size,
            "channels": o.channels, "seed": o.seed, "samples_per_shard": o.samples_per_shard,
            "targets": "float32; 1 positive, 0 negative, NaN missing, other values label smoothing"}


def stage_cxr(job: CxrJob, bin_path: Path) -> Staged:
    """Decode, resize and encode a chunk of images with their targets (runs in a worker process)."""
    staged = Staged(job.items[0].source)
    staging = StagingFile(bin_path)
    try:
        for item in job.items:
            try:
                img, w, h = encoded_image(item.path, job.channels, job.size)
            except Exception as exc:  # noqa: BLE001 - an unreadable file is a reject with its reason
                staged.rejects.append(stage_reject(item.source, "undecodable", f"{type(exc).__name__}: {exc}"))
                continue
            targets = np.asarray(item.targets, dtype="<f4")
            row = {"key": item.key, "split": item.split, "patient": item.patient, "study": item.study,
                   "view": item.view, "source": item.source, "width": w, "height": h,
                   "labels": [c for c, t in zip(job.classes, item.targets) if t == 1.0],
                   "missing": [c for c, t in zip(job.classes, item.targets) if math.isnan(t)],
                   "uncertain": list(item.uncertain)}
            staged.rows.append({**row, "_payload": {"img.zst": staging.add(img),
                                                    "labels": staging.add(targets.tobytes())}})
    finally:
        staging.close()
    return staged
