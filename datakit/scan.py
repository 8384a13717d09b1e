"""Stage 1, scan: a DICOM tree -> DATASET_DIR/work/index.parquet, one row per file found.

    summary = scan("cohort/", "data/", secret=load_secret(None), progress=progress)

Headers only (datakit.dicom_header.read_header; pixels are never read), in parallel over
all cores. Every file found gets a row, so kept + rejected = found: files that are
not usable CT slices get a reject_code and a reason a person can act on (table in
docs/datakit-input.md). Candidates get their label, pseudonyms and geometry, and
where their PixelData value lies (pixel_offset, pixel_length), so the write stage
reads their pixels without parsing the header again.

What headers decide here (plan decides what needs the whole cohort: duplicates,
short series, splits): DICOM or not, DICOMDIR, Modality CT, CT image storage,
secondary capture, localizer, derived dose/screen-save images, multi-frame,
readable pixel format and size, axial orientation, and native pixel data that is
cut short.
"""
from __future__ import annotations

import itertools
import math
import os
import time
from collections import Counter, deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from datakit.burned_in import burned_in_flag
from datakit.dicom_header import UNCOMPRESSED, Header, SliceRejected, header_row, read_header, shown_term, time_limit
from datakit.dicom_pixels import pixel_problem
from datakit.errors import DatakitError
from datakit.labels import load_rules, rules_identity
from datakit.manifest import Layout, read_json
from datakit.pseudonym import pseudonym
from datakit.resume import check_output_folder, check_resume_mode, output_lock, refuse_foreign
from datakit.secret import check_fingerprint, check_strength, fingerprint
from datakit.walk import os_reason, storable, walk_files
from tlxcore.atomic import atomic_write, write_json_atomic
from tlxcore.progress import Progress, Tick, silent
from tlxcore.runtime import default_workers

if TYPE_CHECKING:
    import pyarrow as pa

INDEX = Path("work") / "index.parquet"     # Layout.index; Layout.scan_record (work/scan.json) records its inputs
HEADER_TIMEOUT_S = 10.0
CHUNK = 128                      # files per task: big enough to amortise IPC, small enough for a live progress bar
ROW_GROUP = 65536                # rows per Parquet row group
NOT_DICOM = frozenset({"not-dicom", "unreadable", "not-a-file"})   # reject codes of files that are not DICOM
MIN_AXIAL_COS = 0.8              # |slice normal . z| for axial: gantry tilts up to ~35 degrees stay axial
# Geometry a CT slice can have (geometry_problem): smaller images, larger fields of view or thicker
# slices are corrupt headers, and would be resized into the dataset as if they were anatomy.
MIN_SIDE = 16                    # pixels per side (CT matrices are 256-1024; tests use 32)
MAX_FOV_MM = 1000.0              # rows x spacing: no CT bore is wider than ~90 cm
MAX_THICKNESS_MM = 100.0
MAX_POSITION_MM = 10000.0        # ImagePositionPatient: tables move ~2 m; 10 m is no patient's position

DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
CT_IMAGE_CLASSES = frozenset({"1.2.840.10008.5.1.4.1.1.2",       # CT Image Storage
                              "1.2.840.10008.5.1.4.1.1.2.1",     # Enhanced CT (multi-frame)
                              "1.2.840.10008.5.1.4.1.1.2.2"})    # Legacy Converted Enhanced CT
SECONDARY_CAPTURE_CLASSES = frozenset({"1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.7.1",
                                       "1.2.840.10008.5.1.4.1.1.7.2", "1.2.840.10008.5.1.4.1.1.7.3",
                                       "1.2.840.10008.5.1.4.1.1.7.4"})


def _schema():
    import pyarrow as pa

    s, i32, i64, f32, f64 = pa.string(), pa.int32(), pa.int64(), pa.float32(), pa.float64()
    return pa.schema([
        ("path", s), ("path_bytes", pa.binary()), ("size", i64), ("reject_code", s), ("reject_reason", s),
        ("patient", s), ("study", s), ("series", s), ("sop", s),
        ("modality", s), ("sop_class_uid", s), ("image_type", s), ("transfer_syntax", s),
        ("rows", i32), ("columns", i32), ("bits_allocated", i32), ("bits_stored", i32),
        ("pixel_representation", i32), ("samples_per_pixel", i32), ("number_of_frames", i32),
        ("photometric", s), ("rescale_slope", f64), ("rescale_intercept", f64),
        ("pixel_spacing_row", f32), ("pixel_spacing_col", f32), ("slice_thickness", f32),
        ("ipp_x", f64), ("ipp_y", f64), ("ipp_z", f64), ("iop", pa.list_(f64, 6)), ("slice_pos", f64),
        ("instance_number", i32),
        ("label", s), ("label_rule", s), ("label_keyword", s), ("label_field", s),
        ("pixel_offset", i64), ("pixel_length", i64),
        ("burned_in", s),                # datakit.burned_in: why the pixels may show text or a face, or null
    ])


@dataclass
class ScanSummary:
    root: str
    index_path: Path
    files: int = 0
    dicom: int = 0
    candidates: int = 0
    patients: int = 0
    series: int = 0
    seconds: float = 0.0
    workers: int = 1
    by_code: dict = field(default_factory=dict)     # reject code -> files
    by_label: dict = field(default_factory=dict)    # label -> candidate files


# --------------------------------------------------------------------------- one file

def classify(h: Header, size: int) -> tuple[str, str] | None:
    """(code, reason) for a header that is not a usable CT slice, else None."""
    v = h.values
    sop_class, modality = v.get("SOPClassUID"), v.get("Modality")
    if h.media_sop_class == DICOMDIR_CLASS or sop_class == DICOMDIR_CLASS:
        return "dicomdir", "a DICOMDIR (media index), not an image"
    if sop_class is None and modality is None:
        return "unreadable-header", "no SOPClassUID and no Modality: not a usable DICOM object"
    if modality != "CT":
        return "not-ct", f"Modality is {shown_term(modality) if modality else 'missing'}; only CT is used"
    if sop_class in SECONDARY_CAPTURE_CLASSES:
        return "secondary-capture", "a secondary capture (screenshot, dose report), not a CT slice"
    if sop_class not in CT_IMAGE_CLASSES:
        return "not-image-storage", f"SOP class {shown_term(sop_class, 64) if sop_class else 'missing'} is not CT " \
                                    "image storage"
    image_type = tuple(t.upper() for t in (v.get("ImageType") or ()))
    if "LOCALIZER" in image_type:
        return "scout", "a localizer / scout image (ImageType LOCALIZER)"
    if "SCREEN SAVE" in image_type or any("DOSE" in t for t in image_type):
        return "derived", "a derived dose or screen-save image (ImageType), not a CT slice"
    if (problem := pixel_problem(header_row(h))) is not None:
        return problem
    if (problem := geometry_problem(h)) is not None:
        return problem
    iop = v.get("ImageOrientationPatient")
    if iop is not None:
        normal = _normal(iop)
        if normal is None:
            return "bad-geometry", "ImageOrientationPatient is not two unit direction vectors"
        if abs(normal[2]) < MIN_AXIAL_COS:
            return "not-axial", "the slice plane is not axial (coronal, sagittal or strongly oblique)"
    if h.transfer_syntax in UNCOMPRESSED and h.pixel_offset is not None and h.pixel_length is not None:
        need = v["Rows"] * v["Columns"] * v["BitsAllocated"] // 8
        if h.pixel_length < need or h.pixel_offset + need > size:
            return "truncated", f"the file ends inside its pixel data ({size} bytes, pixel data needs " \
                                f"{h.pixel_offset + need})"
    return None


def geometry_problem(h: Header) -> tuple[str, str] | None:
    """('bad-geometry', reason) for a slice whose size, spacing, thickness or orientation cannot be
    a CT slice's, else None. A present value that is not finite numbers ("NaN", "abc") is bad, not
    absent: read as absent it would skip the checks it feeds (a NaN orientation skipped not-axial)."""
    v = h.values
    broken = [k for k in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing", "SliceThickness")
              if k in h.invalid]
    if broken:
        return "bad-geometry", f"{broken[0]} is present but not finite numbers"
    rows, cols = v["Rows"], v["Columns"]
    if min(rows, cols) < MIN_SIDE:
        return "bad-geometry", f"the image is {rows}x{cols} pixels; a CT slice has at least {MIN_SIDE} per side"
    ipp = v.get("ImagePositionPatient")
    if ipp is not None and len(ipp) != 3:
        return "bad-geometry", f"ImagePositionPatient has {len(ipp)} values, not 3"
    if ipp is not None and max(abs(x) for x in ipp) > MAX_POSITION_MM:
        return "bad-geometry", (f"ImagePositionPatient {_numbers_text(ipp)} lies more than "
                                f"{MAX_POSITION_MM / 1000:g} m from the scanner's origin")
    spacing = v.get("PixelSpacing")
    if spacing is not None:
        if len(spacing) != 2 or min(spacing) <= 0:
            return "bad-geometry", f"PixelSpacing is {_numbers_text(spacing)}; it must be two positive numbers (mm)"
        fov = max(rows * spacing[0], cols * spacing[1])
        if fov > MAX_FOV_MM:
            return "bad-geometry", (f"PixelSpacing {_numbers_text(spacing)} mm gives a field of view of {fov:.0f} mm, "
                                    f"more than {MAX_FOV_MM:.0f} mm")
    thickness = v.get("SliceThickness")
    if thickness is not None and not 0 < thickness <= MAX_THICKNESS_MM:
        return "bad-geometry", f"SliceThickness is {thickness:g} mm, outside (0, {MAX_THICKNESS_MM:g}] mm"
    return None


def _numbers_text(values) -> str:
    return "\\".join(f"{x:g}" for x in values)


def _normal(iop) -> tuple[float, float, float] | None:
    if len(iop) != 6:
        return None
    r, c = iop[:3], iop[3:]
    n = (r[1] * c[2] - r[2] * c[1], r[2] * c[0] - r[0] * c[2], r[0] * c[1] - r[1] * c[0])
    norm = math.sqrt(sum(x * x for x in n))
    if not 0.5 < norm < 1.5:
        return None
    return n[0] / norm, n[1] / norm, n[2] / norm


class _FileScanner:
    """Per-process state: the secret, the label rules and a cache of labels per header texts."""

    def __init__(self, root: str, secret: bytes, rules_path: str | None):
        self.root, self.secret = root, secret
        self.rules = load_rules(rules_path)
        self._labels: dict = {}

    def label(self, v: dict):
        texts = tuple(v.get(f) for f in self.rules.fields)
        if texts not in self._labels:
            self._labels[texts] = self.rules.label(dict(zip(self.rules.fields, texts)))
        return self._labels[texts]

    def row(self, rel: str, size: int) -> dict:
        row = {"path": rel, "size": size}
        try:
            with time_limit(HEADER_TIMEOUT_S):
                h = read_header(os.path.join(self.root, rel), size)
        except SliceRejected as exc:
            row["reject_code"], row["reject_reason"] = exc.code, exc.reason
            return row
        except OSError as exc:
            row["reject_code"], row["reject_reason"] = "unreadable", f"cannot read the file ({os_reason(exc)})"
            return row
        self._fill(row, h)
        problem = classify(h, size)
        if problem is not None:
            row["reject_code"], row["reject_reason"] = problem
        return row

    def _fill(self, row: dict, h: Header) -> None:
        v, ps = h.values, self.secret
        row["patient"] = pseudonym(ps, v.get("PatientID") or "")      # missing ids: one "unknown" patient
        for col, key in (("study", "StudyInstanceUID"), ("series", "SeriesInstanceUID"), ("sop", "SOPInstanceUID")):
            if v.get(key):
                row[col] = pseudonym(ps, v[key])
        row.update(header_row(h))
        del row["pixel_tag"]
        # Code strings and UIDs as shown_term shows them: a corrupt length makes a value run on into the
        # names after it, and the index holds no header text (valid values are kept as they are).
        for col, value, limit in (("modality", v.get("Modality"), 16), ("sop_class_uid", v.get("SOPClassUID"), 64),
                                  ("photometric", row["photometric"], 16),
                                  ("transfer_syntax", row["transfer_syntax"], 64)):
            row[col] = shown_term(value, limit) if value else value
        row["image_type"] = "\\".join(shown_term(t) for t in v["ImageType"]) if v.get("ImageType") else None
        spacing = v.get("PixelSpacing")
        if spacing and len(spacing) == 2:
            row["pixel_spacing_row"], row["pixel_spacing_col"] = spacing
        row["slice_thickness"] = v.get("SliceThickness")
        ipp, iop = v.get("ImagePositionPatient"), v.get("ImageOrientationPatient")
        if ipp and len(ipp) == 3:
            row["ipp_x"], row["ipp_y"], row["ipp_z"] = ipp
        if iop and len(iop) == 6:
            row["iop"] = list(iop)
            normal = _normal(iop)
            if normal is not None and ipp and len(ipp) == 3:
                row["slice_pos"] = sum(p * n for p, n in zip(ipp, normal))
        row["instance_number"] = v.get("InstanceNumber")
        row["burned_in"] = burned_in_flag(v)
        match = self.label(v)
        row["label"], row["label_rule"], row["label_keyword"], row["label_field"] = \
            match.label, match.rule, match.keyword, match.field
        for col in ("rows", "columns", "bits_allocated", "bits_stored", "pixel_representation",
                    "samples_per_pixel", "number_of_frames", "instance_number"):
            if row.get(col) is not None and not -2**31 <= row[col] < 2**31:
                row[col] = None                   # a bit-flipped count that int32 cannot hold


    def batch(self, items: list) -> "pa.RecordBatch":
        """Index rows of a chunk of walk results, as one Arrow batch (compact to send between processes)."""
        rows = [self.row(f.path, f.size) if f.problem is None else
                {"path": f.path, "size": f.size, "reject_code": f.problem[0], "reject_reason": f.problem[1]}
                for f in items]
        for row in rows:
            row["path"], row["path_bytes"] = storable(row["path"])
        return _to_batch(rows)


def _to_batch(rows: list[dict]):
    import pyarrow as pa

    schema = _schema()
    return pa.RecordBatch.from_arrays([pa.array([r.get(n) for r in rows], type=schema.field(n).type)
                                       for n in schema.names], schema=schema)


_WORKER: _FileScanner | None = None


def _init_worker(root: str, secret: bytes, rules_path: str | None) -> None:
    global _WORKER
    from datakit.write_pool import die_with_parent

    die_with_parent()
    _WORKER = _FileScanner(root, secret, rules_path)


def _scan_chunk(items: list):
    return _WORKER.batch(items)


# --------------------------------------------------------------------------- the stage

def _chunks(found: Iterator, size: int) -> Iterator[list]:
    chunk = []
    for f in found:
        chunk.append(f)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _ordered_map(pool, fn, items: Iterator, window: int) -> Iterator:
    """pool.map in input order with at most `window` tasks in flight, so a walk of millions of files
    is never held in memory at once (Executor.map submits everything up front)."""
    pending: deque = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    except BaseException:        # Ctrl-C, an error: the queued tasks go, the pool ends after the running ones
        for f in pending:
            f.cancel()
        raise


class _Tally:
    """Counts for the summary, updated batch by batch."""

    def __init__(self):
        self.files = self.dicom = self.candidates = 0
        self.by_code: Counter = Counter()
        self.by_label: Counter = Counter()
        self.patients: set = set()
        self.series: set = set()

    def add(self, batch) -> None:
        cols = batch.to_pydict()
        self.files += batch.num_rows
        for i, code in enumerate(cols["reject_code"]):
            if code is not None:
                self.by_code[code] += 1
                self.dicom += code not in NOT_DICOM
                continue
            self.dicom += 1
            self.candidates += 1
            self.by_label[cols["label"][i]] += 1
            self.patients.add(cols["patient"][i])
            self.series.add(cols["series"][i])


def scan(dicom_root: str | os.PathLike, out_dir: str | os.PathLike, *, workers: int | None = None,
         secret: bytes, label_rules: str | os.PathLike | None = None, resume: str = "auto",
         progress: Progress = silent) -> ScanSummary:
    """Scan `dicom_root`, write `out_dir`/work/index.parquet, return counts. Raises DatakitError on bad input.

    Rows are in walk order (deterministic: names sorted within each folder). Files stream
    from the walk through the workers into the Parquet writer, so memory stays flat
    however many files there are. `resume` (datakit.resume): `auto` scans again into a
    folder that holds an earlier scan of the same root with the same rules (a scan is one
    pass; there is nothing to continue), `never` wants an empty folder. `progress` gets a
    Tick("scan", files, None) per batch (the walk's total is unknown until it ends) and a last
    one with total = files.
    """
    t0 = time.perf_counter()
    root = Path(dicom_root)
    if not root.exists():
        raise DatakitError(f"DICOM root {str(root)!r} does not exist")
    if not root.is_dir():
        raise DatakitError(f"DICOM root {str(root)!r} is not a folder")
    rules_path = str(label_rules) if label_rules is not None else None
    load_rules(rules_path)                       # a bad rules file fails before any work
    secret = check_strength(secret, "the secret given to scan")
    layout = Layout(out_dir)
    check_resume_mode(resume)
    refuse_foreign(layout.root)                  # before the lock leaves its file in someone's folder
    with output_lock(layout.root, "tlx scan"):
        if check_output_folder(layout.root, resume, "tlx scan"):
            check_scan_record(layout, root, rules_path, secret)
        return _scan(root, layout, workers, secret, rules_path, progress, t0)


def _scan(root: Path, layout: Layout, workers: int | None, secret: bytes, rules_path: str | None,
          progress: Progress, t0: float) -> ScanSummary:
    """scan() once its output folder is locked and checked."""
    found = walk_files(root)
    first = next(found, None)
    if first is None:
        raise DatakitError(f"DICOM root {str(root)!r} holds no files")
    workers = max(1, workers or default_workers())
    # work/ is operator-side, so the absolute root may be recorded here: `tlx write` reads its
    # pixels from it without being told again. The rules are named by file name and hash only.
    # Written before the index gets its name: `tlx shard` reuses an index it finds, and the
    # manifest's config.scan comes from this record. The secret only by its fingerprint (datakit.secret).
    record = {"dicom_root": os.path.abspath(root), "label_rules": rules_identity(rules_path),
              "secret_fingerprint": fingerprint(secret)}
    with atomic_write(layout.index) as f:
        tally = _write_index(f, _batches(itertools.chain([first], found), root, secret, rules_path, workers),
                             progress)
        write_json_atomic(record, layout.scan_record, sort_keys=True)
    summary = ScanSummary(
        root=str(root), index_path=layout.index, files=tally.files, dicom=tally.dicom, candidates=tally.candidates,
        patients=len(tally.patients), series=len(tally.series), seconds=time.perf_counter() - t0, workers=workers,
        by_code=dict(tally.by_code.most_common()), by_label=dict(tally.by_label.most_common()))
    if summary.dicom == 0:
        raise DatakitError(f"no DICOM files found under {str(root)!r} ({summary.files} files, none DICOM); "
                           f"index written to {layout.index}")
    if summary.candidates == 0:
        top = ", ".join(f"{c} {n}" for c, n in Counter(summary.by_code).most_common(3))
        raise DatakitError(f"no usable CT slices found under {str(root)!r} ({summary.dicom} DICOM files: {top}); "
                           f"index written to {layout.index}")
    return summary


def _batches(found: Iterator, root: Path, secret: bytes, rules_path: str | None, workers: int) -> Iterator:
    """Index rows of every file found, as Arrow batches in walk order (a process pool unless workers == 1)."""
    chunks = _chunks(found, CHUNK)
    if workers == 1:
        scanner = _FileScanner(str(root), secret, rules_path)
        yield from (scanner.batch(c) for c in chunks)
        return
    import multiprocessing

    # spawn, not fork: a forked worker inherits every descriptor of the parent (the index's temporary
    # file, the folder lock) and, after a kill -9 of the parent, waited on its pipes for good.
    # Workers die with the parent (write_pool.die_with_parent).
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                             initargs=(str(root), secret, rules_path)) as pool:
        yield from _ordered_map(pool, _scan_chunk, chunks, window=4 * workers)


def _write_index(f, batches: Iterator, progress: Progress) -> _Tally:
    """Stream the batches into index.parquet (open as `f`) in row groups of ROW_GROUP rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tally, pending = _Tally(), []
    with pq.ParquetWriter(f, _schema()) as writer:
        for batch in batches:
            tally.add(batch)
            progress(Tick("scan", tally.files, None, "files"))
            pending.append(batch)
            if sum(b.num_rows for b in pending) >= ROW_GROUP:
                writer.write_table(pa.Table.from_batches(pending))
                pending = []
        if pending:
            writer.write_table(pa.Table.from_batches(pending))
    progress(Tick("scan", tally.files, tally.files, "files"))
    return tally


def check_scan_record(layout: Layout, root: Path, label_rules, secret: bytes) -> None:
    """The folder's index must come from this root, these rules and this secret (work/scan.json
    records all three, the secret by its fingerprint): resuming with another --dicom-root made
    write read another folder's files at the same relative paths (PACS exports share layouts)
    under the index's pseudonyms; other --label-rules were ignored without a word; another secret
    gives the same patients other pseudonyms than the datasets it is meant to join."""
    if not layout.scan_record.exists():
        return
    record = read_json(layout.scan_record, "work/scan.json")
    scanned = record.get("dicom_root")
    if scanned and Path(scanned).resolve() != root.resolve():
        raise DatakitError(f"{layout.index} was scanned from {scanned!r}, not {str(root)!r}; resume with that "
                           f"--dicom-root (if the files moved: `tlx write {layout.root} --dicom-root DIR`), "
                           f"or use a new output folder")
    used, asked = record.get("label_rules"), rules_identity(label_rules)
    if used and used != asked:
        raise DatakitError(f"{layout.index} was labelled with the rules {used['name']} (sha256 {used['sha256'][:12]}), "
                           f"not {asked['name']} (sha256 {asked['sha256'][:12]}); resume with those rules, or "
                           f"delete {layout.index} to scan again with the new ones")
    check_fingerprint(record.get("secret_fingerprint"), secret, str(layout.index),
                      fix="use that secret, or a new output folder")


def write_index(rows: list[dict], path: Path) -> None:
    """An index.parquet from row dicts with the documented schema (for tests and tools that build indexes)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with atomic_write(path) as f:
        pq.write_table(pa.Table.from_batches([_to_batch(rows)]), f)
