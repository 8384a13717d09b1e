"""`tlx convert image-folder`: PNG/JPEG files + a CSV of labels -> multi-label (or single-label) shards.

    convert_image_folder(ImageFolderOptions(root="chestxray/images", labels="Data_Entry_2017.csv", out="cxr"))

The defaults read ChestX-ray8's Data_Entry_2017.csv: `Image Index` names the file,
`Finding Labels` holds the findings separated by `|` ("No Finding" = none of them),
`Patient ID` the patient. Other CSVs: `label_cols` (one 0/1 column per label) instead of
`label_col`, `single_label` for one class per image, `patient_col=None` when the source
does not say (then every image is its own group, and the manifest says the split is per
image).

Files are matched by the CSV's value as a path relative to `root`, else by file name
anywhere below it (ChestX-ray8 spreads its images over images_001..012/). Every image
file found and every CSV row ends up kept or in rejects.parquet: `missing-file` (a row
whose file is not there), `no-label` (a file no row names), `undecodable`.

Splits are by patient: `test_list` (ChestX-ray8's test_list.txt) fixes the test
images, and `val`/`test` patients are drawn from the rest. (The paper drew its
validation images per image, so one patient's X-rays could sit in train and val.)
Images become 8-bit gray (or RGB with channels=3), padded to a square and resized.
Members: `img.zst` (zstd uint8 [H, W] or [3, H, W]) and `labels` (raw uint8 multi-hot, one
byte per class) or `cls` (ascii-int) for single labels.
"""
from __future__ import annotations

import csv
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
    safe_key,
    stage_reject,
)
from datakit.convert.images import check_image_options, encoded_image, image_member, match_files
from datakit.convert.splits import assign_splits
from datakit.errors import DatakitError
from tlxcore.progress import Progress, silent

CHUNK = 256  # images per staging job


@dataclass
class ImageFolderOptions:
    root: str
    labels: str
    out: str
    image_col: str = "Image Index"
    label_col: str | None = "Finding Labels"
    label_sep: str = "|"
    label_cols: tuple[str, ...] | None = None
    none_label: str | None = "No Finding"
    patient_col: str | None = "Patient ID"
    classes: tuple[str, ...] | None = None
    single_label: bool = False
    test_list: str | None = None
    val: float = 0.1
    test: float = 0.1
    size: int = 256
    channels: int = 1
    seed: int = 0
    samples_per_shard: int = 1000
    workers: int | None = None
    resume: str = "auto"          # auto | never (datakit.resume)


@dataclass(frozen=True)
class ImageItem:
    source: str          # relative to root
    path: str            # absolute
    key: str
    split: str
    patient: str | None
    labels: tuple[str, ...]


@dataclass(frozen=True)
class ImageJob:
    items: tuple[ImageItem, ...]
    classes: tuple[str, ...]
    single_label: bool
    size: int
    channels: int


def _read_csv(path: Path, o: ImageFolderOptions) -> list[dict[str, str]]:
    # utf-8-sig: a spreadsheet's byte order mark would otherwise glue itself to the first column's name
    with open(_text_file(path, "--labels"), newline="", encoding="utf-8-sig") as f:
        try:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            wanted = [o.image_col] + ([o.patient_col] if o.patient_col else []) + \
                (list(o.label_cols) if o.label_cols else [o.label_col])
            missing = [c for c in wanted if c not in columns]
            if missing:
                raise DatakitError(f"--labels {path} has no column(s) {missing}; its columns: {', '.join(columns)}")
            return list(reader)
        except UnicodeDecodeError as exc:
            raise DatakitError(f"--labels {path} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                               f"save it as UTF-8") from None


def _text_file(path: Path, option: str) -> Path:
    if not path.is_file():
        raise DatakitError(f"{option} {path}: no such file")
    return path


def _row_labels(row: dict[str, str], o: ImageFolderOptions) -> tuple[str, ...]:
    if o.label_cols:
        return tuple(c for c in o.label_cols if row[c].strip() not in ("", "0", "0.0", "False", "false"))
    parts = [p.strip() for p in row[o.label_col].split(o.label_sep)] if o.label_sep else [row[o.label_col].strip()]
    return tuple(p for p in parts if p and p != o.none_label)


@locked_output("tlx convert image-folder")
def convert_image_folder(o: ImageFolderOptions, progress: Progress = silent) -> dict:
    """Convert an image folder with a label CSV; returns the manifest written."""
    check_output(o.out, o.resume)
    root = Path(o.root)
    if not root.is_dir():
        raise DatakitError(f"--root {root} is not a folder")
    check_image_options(o.size, o.channels)
    if not o.label_cols and not o.label_col:
        raise DatakitError("give --label-col (one column of separated labels) or --label-cols (one 0/1 column each)")
    rows = _read_csv(Path(o.labels), o)
    names = [r[o.image_col].strip() for r in rows]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})[:3]
        raise DatakitError(f"--labels names these images more than once: {dup}")
    found, unlabelled, not_files = match_files(root, [(n,) for n in names])
    matched = {n: rel for n, rel in zip(names, found) if rel is not None}
    rejects = [stage_reject(rel, code, reason) for rel, (code, reason) in sorted(not_files.items())]
    named_not_files = set(not_files) | {rel.rsplit("/", 1)[-1] for rel in not_files}   # matched as match_files does
    rejects += [stage_reject(n, "missing-file", f"the CSV names {n!r} but no such image is below {root}")
                for n in names if n not in matched and n not in named_not_files]
    rejects += [stage_reject(rel, "no-label", f"no row of {Path(o.labels).name} names this image")
                for rel in unlabelled]

    labels_of = {n: _row_labels(r, o) for n, r in zip(names, rows) if n in matched}
    found = sorted({lab for labs in labels_of.values() for lab in labs})
    classes = list(o.classes) if o.classes else list(o.label_cols or found)
    stray = sorted(set(found) - set(classes))
    if stray:
        raise DatakitError(f"labels {stray} are not in --classes {', '.join(classes)}; add them or drop those rows")
    if o.single_label:
        bad = [n for n, labs in labels_of.items() if len(labs) != 1]
        if bad:
            raise DatakitError(f"--single-label but {len(bad)} image(s) have {len(labels_of[bad[0]])} labels, "
                               f"e.g. {bad[0]!r}")
    patient_of = {n: (r[o.patient_col].strip() if o.patient_col else n) for n, r in zip(names, rows) if n in matched}
    split_of = _splits(patient_of, o)
    items = [ImageItem(matched[n], str(root / matched[n]), safe_key(n.rsplit(".", 1)[0]), split_of[n],
                       patient_of[n] if o.patient_col else None, labels_of[n]) for n in sorted(matched)]
    jobs = [(f"{chunk[0].source}..{chunk[-1].source}", ImageJob(tuple(chunk), tuple(classes), o.single_label,
                                                                o.size, o.channels))
            for chunk in iter_chunks(items, CHUNK)]
    members = {"img.zst": image_member(o.size, o.channels)}
    if o.single_label:
        members["cls"] = {"role": "label", "codec": "ascii-int"}
    else:
        members["labels"] = {"role": "labels", "codec": "raw", "dtype": "uint8", "byteorder": "little",
                             "shape": [len(classes)]}
    config = {"converter": "image-folder", "image_col": o.image_col, "label_col": o.label_col,
              "label_sep": o.label_sep, "label_cols": list(o.label_cols or []), "none_label": o.none_label,
              "patient_col": o.patient_col, "split_by": "patient" if o.patient_col else "image",
              "test_list": Path(o.test_list).name if o.test_list else None, "val": o.val, "test": o.test,
              "size": o.size, "channels": o.channels, "seed": o.seed, "samples_per_shard": o.samples_per_shard}
    builder = DatasetBuilder(o.out, kind="image-classification" if o.single_label else "multilabel",
                             members=members, classes=classes, config=config,
                             samples_per_shard=o.samples_per_shard, seed=o.seed, resume=o.resume,
                             progress=progress)
    builder.run(stage_images, jobs, check_workers(o.workers), what="converting images")
    return builder.assemble(rejects=rejects)


def _splits(patient_of: dict[str, str], o: ImageFolderOptions) -> dict[str, str]:
    """Split per patient; the images of `test_list` are the test set when it is given."""
    if not o.test_list:
        by_patient = assign_splits(list(patient_of.values()), o.val, o.test, o.seed)
        return {n: by_patient[p] for n, p in patient_of.items()}
    try:
        text = _text_file(Path(o.test_list), "--test-list").read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatakitError(f"--test-list {o.test_list} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    listed = {line.strip().rsplit("/", 1)[-1] for line in text.splitlines() if line.strip()}
    test_patients = {p for n, p in patient_of.items() if n.rsplit("/", 1)[-1] in listed}
    mixed = sorted({p for n, p in patient_of.items() if p in test_patients and n.rsplit("/", 1)[-1] not in listed})
    if mixed:
        raise DatakitError(f"--test-list splits patients: {len(mixed)} patient(s) (e.g. {mixed[0]!r}) have images "
                           f"in it and out of it; a patient belongs to one split")
    rest = [p for p in patient_of.values() if p not in test_patients]
    by_patient = assign_splits(rest, o.val, 0, o.seed)
    return {n: "test" if p in test_patients else by_patient[p] for n, p in patient_of.items()}


def stage_images(job: ImageJob, bin_path: Path) -> Staged:
    """Decode, resize and encode a chunk of images (runs in a worker process)."""
    staged = Staged(job.items[0].source)
    staging = StagingFile(bin_path)
    index = {c: i for i, c in enumerate(job.classes)}
    try:
        for item in job.items:
            try:
                img, w, h = encoded_image(item.path, job.channels, job.size)
            except Exception as exc:  # noqa: BLE001 - an unreadable file is a reject with its reason
                staged.rejects.append(stage_reject(item.source, "undecodable", f"{type(exc).__name__}: {exc}"))
                continue
            row = {"key": item.key, "split": item.split, "patient": item.patient, "source": item.source,
                   "width": w, "height": h, "labels": list(item.labels)}
            payload = {"img.zst": staging.add(img)}
            if job.single_label:
                row.update(label=item.labels[0], label_index=index[item.labels[0]])
                payload["cls"] = staging.add(str(index[item.labels[0]]).encode())
            else:
                hot = np.zeros(len(job.classes), np.uint8)
                hot[[index[lab] for lab in item.labels]] = 1
                payload["labels"] = staging.add(hot.tobytes())
            staged.rows.append({**row, "_payload": payload})
    finally:
        staging.close()
    return staged

