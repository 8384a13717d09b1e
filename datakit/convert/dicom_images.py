"""`tlx convert dicom-images`: X-ray or mammography DICOM files + label CSVs -> kind `image-classification`
(CBIS-DDSM's mammograms: benign or malignant).

    convert_dicom_images(DicomImagesOptions(root="CBIS-DDSM", out="cbis", preset="cbis-ddsm",
                                            labels=("mass_case_description_train_set.csv", ...),
                                            test_labels=("mass_case_description_test_set.csv", ...)))

Every DICOM file below `root` is read by datakit.dicom_image (tlx shard's reader and PHI rules:
keys and patients are HMAC pseudonyms under the `secret`, no header text is kept). CSV rows name
their image by `image_col`, matched (`match`) as a path below the root (`path`), or by a DICOM UID
that is one of the value's path parts: `series` (CBIS-DDSM's "image file path" is
<case>/<study UID>/<series UID>/000000.dcm, but its downloads name folders differently), `study`
or `sop`. The label is `label_col`, renamed by `label_map` ("BENIGN_WITHOUT_CALLBACK=BENIGN");
rows of one image that disagree (two lesions) are an error unless `conflicts` is `last-class`
(the class later in `classes` wins: BENIGN,MALIGNANT makes an image with any malignant lesion
malignant). `labels` CSVs are the train split (val drawn per patient), `test_labels` the test
split. The patient is `patient_col` (pseudonymised) or the file's PatientID.

Rejects: the reader's (`not-xray`, `secondary-capture`, `burned-in`, ...), `not-dicom`, `no-label`
(a DICOM file no row names: CBIS-DDSM's ROI masks and crops), `missing-file` (a row naming no file).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
from datakit.convert.images import channel_first, image_member, resize_uint8, zstd_bytes
from datakit.convert.splits import patient_splits
from datakit.convert.tables import read_csv
from datakit.errors import DatakitError
from tlxcore.progress import Progress, silent

CHUNK = 32
MATCHES = {"path": None, "series": "SeriesInstanceUID", "study": "StudyInstanceUID", "sop": "SOPInstanceUID"}
PRESETS = {"cbis-ddsm": {"image_col": "image file path", "label_col": "pathology", "patient_col": "patient_id",
                         "match": "series", "label_map": ("BENIGN_WITHOUT_CALLBACK=BENIGN",),
                         "classes": ("BENIGN", "MALIGNANT"), "conflicts": "last-class",
                         "allow_secondary_capture": True}}


@dataclass
class DicomImagesOptions:
    root: str
    out: str
    labels: tuple[str, ...] = ()
    test_labels: tuple[str, ...] = ()
    preset: str | None = None
    image_col: str | None = None
    label_col: str | None = None
    patient_col: str | None = None
    match: str | None = None
    label_map: tuple[str, ...] | None = None
    classes: tuple[str, ...] | None = None
    conflicts: str | None = None            # refuse | last-class
    secret: str | None = None
    allow_secondary_capture: bool | None = None
    size: int = 512
    val: float = 0.1
    seed: int = 0
    samples_per_shard: int = 1000
    workers: int | None = None
    resume: str = "auto"


@dataclass(frozen=True)
class DicomItem:
    path: str
    source: str
    key: str
    patient: str
    split: str
    label_index: int
    classes: tuple[str, ...]
    size: int
    secret: bytes
    allow_secondary_capture: bool


def _resolved(o: DicomImagesOptions) -> dict:
    if o.preset and o.preset not in PRESETS:
        raise DatakitError(f"--preset {o.preset!r} is not one of: {', '.join(PRESETS)}")
    preset = PRESETS.get(o.preset, {})
    r = {k: getattr(o, k) if getattr(o, k) is not None else preset.get(k) for k in
         ("image_col", "label_col", "patient_col", "match", "label_map", "classes", "conflicts",
          "allow_secondary_capture")}
    r.update(match=r["match"] or "path", conflicts=r["conflicts"] or "refuse", label_map=r["label_map"] or ())
    if not r["image_col"] or not r["label_col"] or not o.labels:
        raise DatakitError("give --labels CSV, --image-col and --label-col (or --preset cbis-ddsm)")
    if r["match"] not in MATCHES or r["conflicts"] not in ("refuse", "last-class"):
        raise DatakitError(f"--match {r['match']!r} / --conflicts {r['conflicts']!r} must be one of "
                           f"{', '.join(MATCHES)} / refuse, last-class")
    return r


def _headers(root: Path, secret: bytes, r: dict) -> tuple[dict, list[dict]]:
    """rel path -> (UIDs, pseudonymous patient) of every DICOM file tlx may read; rejects for the others."""
    from datakit.dicom_header import SliceRejected, read_header
    from datakit.dicom_image import check_xray_header
    from datakit.pseudonym import pseudonym
    from datakit.walk import walk_files

    usable, rejects = {}, []
    for f in walk_files(root):
        if f.problem is not None:
            rejects.append(stage_reject(f.path, *f.problem))
            continue
        try:
            values = read_header(root / f.path).values
            check_xray_header(values, bool(r["allow_secondary_capture"]), False)
        except SliceRejected as exc:
            rejects.append(stage_reject(f.path, exc.code, exc.reason))
            continue
        usable[f.path] = ({k: str(values.get(v) or "") for k, v in MATCHES.items() if v},
                          pseudonym(secret, str(values["PatientID"]).strip()))
    return usable, rejects


def _rows(o: DicomImagesOptions, r: dict) -> list[tuple[dict, str]]:
    wanted = [r["image_col"], r["label_col"]] + ([r["patient_col"]] if r["patient_col"] else [])
    return [(row, split) for split, files in (("train", o.labels), ("test", o.test_labels)) for path in files
            for row in read_csv(Path(path), "--labels" if split == "train" else "--test-labels", wanted)]


def _file_of(value: str, match: str, usable: dict, by_uid: dict) -> str | None:
    value = value.strip().replace("\\", "/")
    if match == "path":
        return value if value in usable else None
    hits = [by_uid[match][part] for part in value.split("/") if part in by_uid[match]]
    return hits[0] if len(hits) == 1 else None


@locked_output("tlx convert dicom-images")
def convert_dicom_images(o: DicomImagesOptions, progress: Progress = silent) -> dict:
    """Convert DICOM X-rays or mammograms with label CSVs; returns the manifest written."""
    from datakit.pseudonym import pseudonym
    from datakit.secret import fingerprint, load_secret

    check_output(o.out, o.resume)
    r = _resolved(o)
    root = Path(o.root)
    if not root.is_dir():
        raise DatakitError(f"--root {root} is not a folder")
    secret = load_secret(o.secret)
    rows = _rows(o, r)
    usable, rejects = _headers(root, secret, r)
    by_uid = {m: {} for m in MATCHES if MATCHES[m]}
    for rel, (uids, _) in usable.items():
        for m, uid in uids.items():
            if uid:
                by_uid[m].setdefault(uid, rel)
    rename = dict(item.split("=", 1) for item in r["label_map"])
    found = sorted({rename.get(row[r["label_col"]].strip(), row[r["label_col"]].strip()) for row, _ in rows})
    classes = list(r["classes"] or found)
    if set(found) - set(classes):
        raise DatakitError(f"labels {sorted(set(found) - set(classes))} are not in --classes {', '.join(classes)}")
    per_file: dict[str, tuple[int, str, str]] = {}
    for row, split in rows:
        rel = _file_of(row[r["image_col"]], r["match"], usable, by_uid)
        if rel is None:
            rejects.append(stage_reject(row[r["image_col"]].strip(), "missing-file", f"no readable DICOM file below "
                                        f"{root} matches it by {r['match']}"))
            continue
        label = classes.index(rename.get(row[r["label_col"]].strip(), row[r["label_col"]].strip()))
        patient = pseudonym(secret, row[r["patient_col"]].strip()) if r["patient_col"] else usable[rel][1]
        if rel in per_file and per_file[rel][0] != label and r["conflicts"] == "refuse":
            raise DatakitError(f"the label rows name one image as {classes[per_file[rel][0]]} and {classes[label]} "
                               f"(file {rel}); pass --conflicts last-class to let the later class win")
        per_file[rel] = (max(label, per_file.get(rel, (label,))[0]), patient, split)
    rejects += [stage_reject(rel, "no-label", "no row of the label CSVs names this image") for rel in usable
                if rel not in per_file]
    split_of = patient_splits([(p, s) for _, p, s in per_file.values()], o.val, 0, o.seed)
    items = [DicomItem(str(root / rel), rel, pseudonym(secret, usable[rel][0]["sop"]), patient, split_of[patient],
                       label, tuple(classes), o.size, secret, bool(r["allow_secondary_capture"]))
             for rel, (label, patient, _) in sorted(per_file.items())]
    jobs = [(f"{c[0].key}..{c[-1].key}", tuple(c)) for c in iter_chunks(items, CHUNK)]
    members = {"img.zst": image_member(o.size, 1), "cls": {"role": "label", "codec": "ascii-int"}}
    config = {"converter": "dicom-images", "preset": o.preset, "match": r["match"], "label_map": rename,
              "conflicts": r["conflicts"], "split_by": "patient", "val": o.val, "size": o.size, "seed": o.seed,
              "samples_per_shard": o.samples_per_shard, "secret_fingerprint": fingerprint(secret),
              "allow_secondary_capture": bool(r["allow_secondary_capture"])}
    builder = DatasetBuilder(o.out, kind="image-classification", members=members, classes=classes, config=config,
                             samples_per_shard=o.samples_per_shard, seed=o.seed, resume=o.resume, progress=progress)
    builder.run(stage_dicom_images, jobs, check_workers(o.workers), what="converting images")
    return builder.assemble(rejects=rejects)


def stage_dicom_images(items: tuple[DicomItem, ...], bin_path: Path) -> Staged:
    from datakit.dicom_header import SliceRejected
    from datakit.dicom_image import read_xray

    staged, staging = Staged(items[0].key), StagingFile(bin_path)
    try:
        for item in items:
            try:
                image = read_xray(item.path, item.secret, item.allow_secondary_capture)
            except SliceRejected as exc:
                staged.rejects.append(stage_reject(item.source, exc.code, exc.reason))
                continue
            h, w = image.pixels.shape
            staged.rows.append({"key": item.key, "split": item.split, "patient": item.patient,
                                "label": item.classes[item.label_index], "label_index": item.label_index,
                                "modality": image.modality, "view": image.view, "laterality": image.laterality,
                                "voi": image.voi, "width": w, "height": h,
                                "_payload": {"img.zst": staging.add(zstd_bytes(channel_first(resize_uint8(image.pixels,
                                                                                                          item.size)))),
                                             "cls": staging.add(str(item.label_index).encode())}})
    finally:
        staging.close()
    return staged
