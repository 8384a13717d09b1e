"""What `tlx convert cxr` reads of each chest X-ray dataset: its label files in their own column
layout, turned into one row per image with the label states the source gives.

    source = read_source("chexpert", Path("CheXpert-v1.0-small"), CxrFiles())
    source.labels          # ['No Finding', 'Enlarged Cardiomediastinum', ...] (canonical names)
    source.rows[0].states  # (1, None, -1, 0, ...): positive, blank, uncertain, negative per label

Presets and the files they look for in `--root` (each may be given instead; `.gz` works too):

- `chexpert` (CheXpert v1.0): `train.csv` (official train) and `valid.csv` (the official
  validation set, used as the test split); columns Path, Frontal/Lateral, AP/PA and the 14
  labels, each 1.0, 0.0, -1.0 (uncertain) or blank. Path begins with the release folder
  (CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg), taken as `--root`; the
  patient is the path's patientNNNNN.
- `mimic-cxr` (MIMIC-CXR-JPG 2.0.0): `mimic-cxr-2.0.0-chexpert.csv` (labels per study:
  subject_id, study_id and the same 14 labels and values), `mimic-cxr-2.0.0-metadata.csv`
  (dicom_id, subject_id, study_id, ViewPosition), `mimic-cxr-2.0.0-split.csv` (dicom_id, split:
  train / validate / test); images at files/p<first two digits>/p<subject>/s<study>/<dicom_id>.jpg.
- `padchest` (PadChest): `PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv` (ImageID,
  ImageDir, StudyID, PatientID, Projection, Labels as a list literal, e.g. "['normal']"); images at
  <ImageDir>/<ImageID> or anywhere below the root by name. Labels are positive when listed, else
  negative (no uncertain or blank); no official split.
- `nih` (ChestX-ray8/14): `Data_Entry_2017.csv` or `Data_Entry_2017_v2020.csv` (Image Index,
  Finding Labels separated by `|`, Patient ID, View Position) and `test_list.txt` (the official
  test images); images anywhere below the root by name. "No Finding" is a label of its own here
  (positive when nothing else is), so that it lines up with CheXpert's column.

Label names are made canonical so that datasets merge by name (`--merge`): CheXpert's spelling
("Pleural Effusion"; NIH's "Effusion" and PadChest's "pleural effusion" become it; PadChest's
"normal" becomes "No Finding"); PadChest labels without a CheXpert or NIH counterpart keep
their own name. `--rename OLD=NEW` renames further.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

from datakit.convert.builder import safe_key, stage_reject
from datakit.convert.tables import find_file, read_csv, read_lines
from datakit.errors import DatakitError

POS, NEG, UNC = 1, 0, -1          # a label's state in the source; None = blank (not mentioned)
CHEXPERT_LABELS = ("No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
                   "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
                   "Pleural Other", "Fracture", "Support Devices")
MIMIC_LABELS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Fracture",
                "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia",
                "Pneumothorax", "Support Devices")
NIH_FINDINGS = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
                "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia")
NIH_NAMES = {"Effusion": "Pleural Effusion", "Pleural_Thickening": "Pleural Thickening"}
PADCHEST_NAMES = {
    "normal": "No Finding", "cardiomegaly": "Cardiomegaly", "atelectasis": "Atelectasis",
    "consolidation": "Consolidation", "pleural effusion": "Pleural Effusion", "pneumonia": "Pneumonia",
    "pneumothorax": "Pneumothorax", "pulmonary edema": "Edema", "emphysema": "Emphysema",
    "pulmonary fibrosis": "Fibrosis", "hiatal hernia": "Hernia", "infiltrates": "Infiltration", "mass": "Mass",
    "nodule": "Nodule", "pleural thickening": "Pleural Thickening",
}
MIMIC_SPLITS = {"train": "train", "validate": "val", "test": "test"}


@dataclass(frozen=True)
class CxrFiles:
    labels: Path | None = None        # chexpert train.csv, mimic chexpert.csv, padchest CSV, nih Data_Entry
    test_labels: Path | None = None   # chexpert valid.csv
    metadata: Path | None = None      # mimic metadata.csv
    split_file: Path | None = None    # mimic split.csv
    test_list: Path | None = None     # nih test_list.txt


@dataclass(frozen=True)
class CxrRow:
    candidates: tuple[str, ...]   # image paths below the root to try in order; else the last one's name anywhere
    key: str
    patient: str
    study: str | None
    view: str | None              # upper-case code: PA, AP, LATERAL, LL, ...
    official: str | None          # the split the source puts the image in (train / val / test), None if it has none
    states: tuple                 # per source label: POS, NEG, UNC or None (blank)


@dataclass
class CxrSource:
    preset: str
    labels: list[str]
    rows: list[CxrRow]
    files: dict[str, str]                            # role -> name of the file read (names only)
    rejects: list[dict] = field(default_factory=list)


def _state(value: str, column: str, where: str) -> int | None:
    text = value.strip()
    if not text:
        return None
    try:
        number = float(text)
    except ValueError:
        number = None
    if number not in (1.0, 0.0, -1.0):
        raise DatakitError(f"{where}: column {column!r} holds {text[:20]!r}; expected 1, 0, -1 (uncertain) or blank")
    return int(number)


def read_chexpert(root: Path, f: CxrFiles) -> CxrSource:
    train = f.labels or find_file(root, ["train.csv"], "--labels")
    test = f.test_labels or find_file(root, ["valid.csv"], "--test-labels", required=False)
    rows = []
    for path, official, option in ((train, "train", "--labels"), (test, "test", "--test-labels")):
        if path is None:
            continue
        for n, r in enumerate(read_csv(path, option, ["Path", "Frontal/Lateral", "AP/PA", *CHEXPERT_LABELS]), 2):
            rel = r["Path"].strip()
            parts = rel.split("/")
            if parts and parts[0].startswith("CheXpert-v1.0"):     # the release folder is --root
                rel = "/".join(parts[1:])
            m = re.search(r"(patient\d+)/(study\d+)", rel)
            if not m:
                raise DatakitError(f"{option} {path} line {n}: Path {rel[:80]!r} names no patientNNNNN/studyN folder")
            lateral = r["Frontal/Lateral"].strip().lower() == "lateral"
            view = "LATERAL" if lateral else (r["AP/PA"].strip().upper() or "FRONTAL")
            states = tuple(_state(r[c], c, f"{option} {path} line {n}") for c in CHEXPERT_LABELS)
            rows.append(CxrRow((rel,), _key(rel), m[1], f"{m[1]}/{m[2]}", view, official, states))
    return CxrSource("chexpert", list(CHEXPERT_LABELS), rows,
                     {"labels": train.name, **({"test_labels": test.name} if test else {})})


def read_mimic(root: Path, f: CxrFiles) -> CxrSource:
    labels = f.labels or find_file(root, ["mimic-cxr-2.0.0-chexpert.csv"], "--labels")
    meta = f.metadata or find_file(root, ["mimic-cxr-2.0.0-metadata.csv"], "--metadata")
    split = f.split_file or find_file(root, ["mimic-cxr-2.0.0-split.csv"], "--split-file", required=False)
    by_study = {}
    for n, r in enumerate(read_csv(labels, "--labels", ["subject_id", "study_id", *MIMIC_LABELS]), 2):
        where = f"--labels {labels} line {n}"
        by_study[(r["subject_id"].strip(), r["study_id"].strip())] = tuple(_state(r[c], c, where) for c in MIMIC_LABELS)
    official = {}
    if split is not None:
        for r in read_csv(split, "--split-file", ["dicom_id", "split"]):
            value = r["split"].strip()
            if value not in MIMIC_SPLITS:
                raise DatakitError(f"--split-file {split}: split {value[:20]!r} is not one of "
                                   f"{', '.join(MIMIC_SPLITS)}")
            official[r["dicom_id"].strip()] = MIMIC_SPLITS[value]
    rows, rejects = [], []
    for r in read_csv(meta, "--metadata", ["dicom_id", "subject_id", "study_id", "ViewPosition"]):
        dicom, subject, study = r["dicom_id"].strip(), r["subject_id"].strip(), r["study_id"].strip()
        rel = f"files/p{subject[:2]}/p{subject}/s{study}/{dicom}.jpg"
        if (subject, study) not in by_study:
            rejects.append(stage_reject(rel, "no-label", f"study s{study} has no row in {labels.name}"))
            continue
        if split is not None and dicom not in official:
            raise DatakitError(f"--split-file {split} does not list image {dicom} of {meta.name}; give the split "
                               f"file of this release")
        view = r["ViewPosition"].strip().upper() or None
        rows.append(CxrRow((rel,), _key(dicom), subject, f"{subject}/{study}", view, official.get(dicom),
                           by_study[(subject, study)]))
    files = {"labels": labels.name, "metadata": meta.name, **({"split_file": split.name} if split else {})}
    return CxrSource("mimic-cxr", list(MIMIC_LABELS), rows, files, rejects)


def read_padchest(root: Path, f: CxrFiles) -> CxrSource:
    path = f.labels or find_file(root, ["PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"], "--labels")
    found, rejects = [], []
    for n, r in enumerate(read_csv(path, "--labels", ["ImageID", "ImageDir", "StudyID", "PatientID", "Projection",
                                                       "Labels"]), 2):
        image, folder = r["ImageID"].strip(), r["ImageDir"].strip()
        rel = f"{folder}/{image}" if folder else image
        names = _padchest_labels(r["Labels"])
        if not names:
            rejects.append(stage_reject(rel, "no-label", f"line {n} of {path.name} gives no labels for this image"))
            continue
        found.append((CxrRow((rel, image), _key(image), r["PatientID"].strip(),
                             r["StudyID"].strip() or None, r["Projection"].strip().upper() or None, None, ()), names))
    labels = sorted({name for _, names in found for name in names})
    rows = [CxrRow(**{**row.__dict__, "states": tuple(POS if lab in names else NEG for lab in labels)})
            for row, names in found]
    return CxrSource("padchest", labels, rows, {"labels": path.name}, rejects)


def _padchest_labels(text: str) -> set[str] | None:
    """Canonical names of a Labels cell ("['pleural effusion', 'cardiomegaly']"); None if it holds none."""
    try:
        value = ast.literal_eval(text.strip()) if text.strip() else []
    except (ValueError, SyntaxError):
        return None
    if not isinstance(value, (list, tuple)):
        return None
    names = {str(v).strip() for v in value if str(v).strip()}
    return {PADCHEST_NAMES.get(name, name) for name in names} or None


def read_nih(root: Path, f: CxrFiles) -> CxrSource:
    path = f.labels or find_file(root, ["Data_Entry_2017.csv", "Data_Entry_2017_v2020.csv"], "--labels")
    test_list = f.test_list or find_file(root, ["test_list.txt"], "--test-list", required=False)
    listed = {line.rsplit("/", 1)[-1] for line in read_lines(test_list, "--test-list")} if test_list else None
    labels = ["No Finding", *(NIH_NAMES.get(x, x) for x in NIH_FINDINGS)]
    rows = []
    for n, r in enumerate(read_csv(path, "--labels", ["Image Index", "Finding Labels", "Patient ID",
                                                       "View Position"]), 2):
        image = r["Image Index"].strip()
        names = {x.strip() for x in r["Finding Labels"].split("|") if x.strip()}
        unknown = sorted(names - set(NIH_FINDINGS) - {"No Finding"})
        if unknown:
            raise DatakitError(f"--labels {path} line {n}: Finding Labels {unknown} are not ChestX-ray14 findings "
                               f"({', '.join(NIH_FINDINGS)}, No Finding)")
        found = {NIH_NAMES.get(x, x) for x in names if x != "No Finding"}
        states = (POS if not found else NEG, *(POS if lab in found else NEG for lab in labels[1:]))
        official = None if listed is None else "test" if image in listed else "train"
        rows.append(CxrRow((image,), _key(image), r["Patient ID"].strip(), None,
                           r["View Position"].strip().upper() or None, official, states))
    return CxrSource("nih", labels, rows, {"labels": path.name, **({"test_list": test_list.name} if test_list else {})})


def _key(text: str) -> str:
    return safe_key(text.rsplit(".", 1)[0] if text.lower().endswith((".jpg", ".jpeg", ".png")) else text)


READERS = {"chexpert": read_chexpert, "mimic-cxr": read_mimic, "padchest": read_padchest, "nih": read_nih}


def read_source(preset: str, root: Path, files: CxrFiles) -> CxrSource:
    if preset not in READERS:
        raise DatakitError(f"--preset {preset!r} is not one of: {', '.join(READERS)}")
    if not root.is_dir():
        raise DatakitError(f"--root {root} is not a folder")
    return READERS[preset](root, files)
