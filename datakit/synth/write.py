"""Writing one synthetic patient as real DICOM files (pydicom), plus the cohort-level junk.

    files = write_patient(out_dir, plan, seed)     # list of ground-truth entries, one per file written

Every value comes from the plan and seeded generators (no clocks, no random UIDs),
so the same seed gives byte-identical files.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np

import datakit.synth.cohort as C
from datakit.synth.jpeg_lossless import encode_sv1
from datakit.synth.phantoms import phantom

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
DOSE_SR = "1.2.840.10008.5.1.4.1.1.88.67"
DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
FOV_PADDING_HU = -3024      # what some scanners store outside the reconstruction circle


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_") or "x"


def _path(plan: C.PatientPlan, spec: C.SeriesSpec, instance: int, sop: str, counter: int) -> str:
    st = spec.study
    last, first = plan.name.split("^")
    if plan.layout == 0:      # a viewer export with names in folder names (PHI in paths, as real exports have)
        return (f"{_slug(last)}_{_slug(first)}_{plan.birth_date}/{st.date}_{_slug(st.description)}/"
                f"{spec.number:03d}_{_slug(spec.description)}/IM_{instance:04d}.dcm")
    if plan.layout == 1:      # a PACS CD: no suffixes
        return f"DICOM/P{plan.index:06X}/S{st.number:04X}/SE{spec.number:04X}/IM{counter:06d}"
    if plan.layout == 3:      # flat, named by SOP instance UID
        return f"flat/{sop}.dcm"
    return (f"archive/{st.date[:4]}/{st.date[4:6]}/{C.uid(0, plan.patient_id)[-8:]}/"   # deep, no suffixes
            f"{st.uid[-6:]}/{spec.uid[-6:]}/{instance}")


def _base_dataset(plan: C.PatientPlan, spec: C.SeriesSpec, sop_class: str, modality: str):
    from pydicom.dataset import Dataset, FileMetaDataset

    st = spec.study
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.ImplementationClassUID = "1.2.826.0.1.3680043.8.498.1"
    ds.SpecificCharacterSet = "ISO_IR 100" if plan.index % 2 else "ISO_IR 192"
    ds.SOPClassUID = sop_class
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = st.date
    ds.StudyTime = "101500"
    ds.AccessionNumber = st.accession
    ds.Modality = modality
    ds.Manufacturer = "TLX Synthetic"
    ds.InstitutionName = st.institution
    ds.ReferringPhysicianName = st.physician
    ds.StationName = "SYNTHCT01"
    ds.StudyDescription = st.description
    ds.SeriesDescription = spec.description
    ds.OperatorsName = "Tech^Anna"
    ds.PatientName = plan.name
    ds.PatientID = plan.patient_id
    ds.PatientBirthDate = plan.birth_date
    ds.PatientSex = plan.sex
    if st.body_part:
        ds.BodyPartExamined = st.body_part
    ds.SliceThickness = spec.thickness
    if st.protocol:
        ds.ProtocolName = st.protocol
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = st.uid
    ds.SeriesInstanceUID = spec.uid
    ds.StudyID = str(st.number)
    ds.SeriesNumber = spec.number
    ds.FrameOfReferenceUID = C.uid(0, st.uid, "for")
    return ds


def _set_pixels(ds, stored: np.ndarray, *, signed: bool, bits_stored: int, samples: int = 1) -> None:
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = "MONOCHROME2" if samples == 1 else "RGB"
    if samples == 3:
        ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = stored.shape[-2:] if samples == 1 else stored.shape[:2]
    ds.BitsAllocated = stored.dtype.itemsize * 8
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = int(signed)
    ds.PixelData = stored.tobytes()


def _stored(hu: np.ndarray, signed: bool) -> tuple[np.ndarray, float]:
    """Stored values and RescaleIntercept: int16 as HU, or 12-bit unsigned offset by 1024 (common on scanners)."""
    if signed:
        return np.clip(np.rint(hu), -32768, 32767).astype(np.int16), 0.0
    return np.clip(np.rint(hu + 1024), 0, 4095).astype(np.uint16), -1024.0


def _slice_hu(plan: C.PatientPlan, spec: C.SeriesSpec, i: int, shape, spacing: float) -> np.ndarray:
    srng = np.random.default_rng([spec.noise_seed, 7])
    wiggle = tuple(float(v) for v in srng.uniform(0, 2 * np.pi, 3))
    n = max(spec.slices - 1, 1)
    hu = phantom(spec.phantom, i / n, shape, spacing, plan.body, wiggle)
    noise = np.random.default_rng([spec.noise_seed, i]).standard_normal(shape, dtype=np.float32)
    hu += noise * np.float32(8 + spec.noise_seed % 12)
    if spec.signed and spec.label in ("thorax", "abdomen", "pelvis", "other"):
        rows, cols = shape
        yy, xx = np.ogrid[:rows, :cols]
        outside = (yy - (rows - 1) / 2) ** 2 + (xx - (cols - 1) / 2) ** 2 > (min(rows, cols) / 2) ** 2
        hu[outside] = FOV_PADDING_HU
    return hu


ENCODING_PLUGIN = {C.RLE: "pylibjpeg", C.JPEG_LS: "pyjpegls", C.JPEG_2000: "pylibjpeg"}


def _save(ds, path: Path, transfer_syntax: str, stored: np.ndarray | None) -> None:
    from pydicom.uid import UID

    path.parent.mkdir(parents=True, exist_ok=True)
    ts = UID(transfer_syntax)
    if stored is not None and ts == C.JPEG_LOSSLESS:
        from pydicom.encaps import encapsulate

        bits = stored.view(np.uint16) if stored.dtype == np.int16 else stored     # the stored bit patterns
        ds.PixelData = encapsulate([encode_sv1(bits, precision=int(ds.BitsStored))])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = ts
    elif stored is not None and ts.is_compressed:
        ds.file_meta.TransferSyntaxUID = C.EXPLICIT_LE
        # The encoder is named: pydicom otherwise takes the first plugin installed (python-gdcm's RLE
        # encoder, where installed, writes other bytes), and the same seed must give the same files.
        ds.compress(ts, stored, generate_instance_uid=False,   # keep our deterministic UID
                    encoding_plugin=ENCODING_PLUGIN[str(ts)])
    else:
        if stored is not None and ts == C.EXPLICIT_BE:
            ds.PixelData = stored.astype(stored.dtype.newbyteorder(">")).tobytes()
        ds.file_meta.TransferSyntaxUID = ts
    ds.save_as(path, enforce_file_format=True)


def write_series(out: Path, plan: C.PatientPlan, spec: C.SeriesSpec, counter: list[int]) -> list[dict]:
    entries = []
    sop_class, modality = {"mr": (MR_IMAGE, "MR"), "dose-sc": (SECONDARY_CAPTURE, "CT"),
                           "dose-sr": (DOSE_SR, "SR"), "multi-frame": (ENHANCED_CT, "CT")}.get(
        spec.kind, (CT_IMAGE, "CT"))
    spacing = spec.fov / max(spec.rows, spec.cols)
    ds = _base_dataset(plan, spec, sop_class, modality)   # one dataset per series; slices change what differs
    for i in range(spec.slices):
        instance = spec.slices - i if spec.descending else i + 1
        sop = C.uid(0, spec.uid, "sop", i)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = sop
        ds.InstanceNumber = instance
        stored = None
        if spec.kind == "dose-sr":
            ds.ValueType = "CONTAINER"
            ds.CompletionFlag = "COMPLETE"
        elif spec.kind == "dose-sc":
            rgb = np.random.default_rng([spec.noise_seed, i]).integers(0, 256, (spec.rows // 2, spec.cols // 2, 3),
                                                                 dtype=np.uint8)
            ds.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
            ds.ConversionType = "WSD"
            _set_pixels(ds, rgb, signed=False, bits_stored=8, samples=3)
        else:
            z = i * spec.thickness - spec.slices * spec.thickness / 2
            orientation = CORONAL if spec.kind in ("scout", "mpr-coronal") else AXIAL
            ds.ImageType = {"scout": ["ORIGINAL", "PRIMARY", "LOCALIZER"],
                            "mpr-coronal": ["DERIVED", "SECONDARY", "MPR"],
                            "dose-info": ["DERIVED", "SECONDARY", "DOSE_INFO"]}.get(
                spec.kind, ["ORIGINAL", "PRIMARY", "AXIAL"])
            ds.ImagePositionPatient = [round(-spacing * spec.cols / 2, 3), round(-spacing * spec.rows / 2, 3),
                                       round(z, 3)]
            ds.ImageOrientationPatient = list(orientation)
            ds.SliceLocation = round(z, 3)
            ds.PixelSpacing = [round(spacing, 6), round(spacing, 6)]
            hu = _slice_hu(plan, spec, i, (spec.rows, spec.cols), spacing)
            stored, intercept = _stored(hu, spec.signed)
            if spec.kind == "multi-frame":
                stored = np.stack([stored] * 3)
                ds.NumberOfFrames = 3
            ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = intercept, 1, "HU"
            ds.WindowCenter, ds.WindowWidth = 40, 400
            _set_pixels(ds, stored, signed=spec.signed, bits_stored=16 if spec.signed else 12)
        counter[0] += 1
        rel = _path(plan, spec, instance, sop, counter[0])
        _save(ds, out / rel, spec.transfer_syntax if stored is not None else C.EXPLICIT_LE, stored)
        entries.append({"path": rel, "series": spec.key, "kind": spec.kind, "instance": instance,
                        "expect": spec.expect, "note": None})
    return entries


def write_patient(out: Path, plan: C.PatientPlan) -> list[dict]:
    counter = [0]
    entries = []
    for st in plan.studies:
        for spec in st.series:
            entries += write_series(out, plan, spec, counter)
    volume_files = [e for e in entries if e["kind"] == "volume"]
    if "copy" in plan.traps:          # an exact copy of a few files elsewhere in the tree (same SOPInstanceUID)
        for e in volume_files[:3]:
            rel = f"Kopie/p{plan.index:03d}/{_slug(e['path'])}"
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(out / e["path"], out / rel)
            entries.append({**e, "path": rel, "kind": "copy", "note": f"byte-identical copy of {e['path']}"})
    if "truncated" in plan.traps:     # a slice cut in the middle of its pixel data (an interrupted transfer)
        native = [e for e in volume_files if _series(plan, e["series"]).transfer_syntax in
                  (C.EXPLICIT_LE, C.IMPLICIT_LE)]
        if native:
            victim = native[len(native) // 2]
            target = out / victim["path"]
            data = target.read_bytes()
            spec = _series(plan, victim["series"])
            target.write_bytes(data[:len(data) - spec.rows * spec.cols])
            victim.update(kind="truncated", expect="truncated", note="pixel data cut short")
    return entries


def _series(plan: C.PatientPlan, key: str) -> C.SeriesSpec:
    return next(s for st in plan.studies for s in st.series if s.key == key)


def write_junk(out: Path, seed: int, first_patient: C.PatientPlan | None) -> list[dict]:
    """What real exports hold besides images: a DICOMDIR, viewer files, OS droppings, a corrupt file."""
    rng = np.random.default_rng([seed, 10**6])
    junk = {
        "README.TXT": b"Exported by PACS viewer 3.2\r\nDo not modify.\r\n",
        "Thumbs.db": rng.bytes(1536),
        ".DS_Store": b"\x00\x00\x00\x01Bud1" + rng.bytes(500),
        "viewer/autorun.inf": b"[autorun]\r\nopen=viewer.exe\r\n",
        "viewer/viewer.exe": b"MZ" + rng.bytes(4094),
        "EMPTY": b"",
        "export.log": "Übertragung abgeschlossen: 0 Fehler\n".encode("utf-8"),
    }
    entries = []
    for rel, data in junk.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
        entries.append({"path": rel, "series": None, "kind": "junk", "instance": None, "expect": "not-dicom",
                        "note": "not a DICOM file"})
    # DICM marker, then a file meta element that claims more bytes than the file has.
    corrupt = b"\x00" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\x00\x40" + b"1.2.840"
    (out / "DICOM").mkdir(exist_ok=True)
    (out / "DICOM/CORRUPT1").write_bytes(corrupt)
    entries.append({"path": "DICOM/CORRUPT1", "series": None, "kind": "corrupt", "instance": None,
                    "expect": "unreadable-header", "note": "DICOM marker but a broken header"})
    _write_dicomdir(out / "DICOMDIR", seed, first_patient)
    entries.append({"path": "DICOMDIR", "series": None, "kind": "dicomdir", "instance": None, "expect": "dicomdir",
                    "note": "media directory, no image"})
    return entries


def _write_dicomdir(path: Path, seed: int, plan: C.PatientPlan | None) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = DICOMDIR_CLASS
    ds.file_meta.MediaStorageSOPInstanceUID = C.uid(seed, "dicomdir")
    ds.file_meta.TransferSyntaxUID = C.EXPLICIT_LE
    ds.file_meta.ImplementationClassUID = "1.2.826.0.1.3680043.8.498.1"
    ds.FileSetID = "TLXSYNTH"
    ds.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = 0
    ds.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = 0
    ds.FileSetConsistencyFlag = 0
    record = Dataset()
    record.OffsetOfTheNextDirectoryRecord = 0
    record.RecordInUseFlag = 0xFFFF
    record.OffsetOfReferencedLowerLevelDirectoryEntity = 0
    record.DirectoryRecordType = "PATIENT"
    if plan is not None:
        record.PatientID, record.PatientName = plan.patient_id, plan.name
    ds.DirectoryRecordSequence = Sequence([record])
    ds.save_as(path, enforce_file_format=True)
