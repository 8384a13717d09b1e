"""`tlx convert nifti-seg`: NIfTI volumes with label volumes -> 2D slice shards with masks.

    convert_nifti_seg(NiftiSegOptions(images="imagesTr", labels="labelsTr", out="lits", preset="lits"))

Every case is a label volume found under `labels` by `label_pattern` (`{case}` marks the
case id) and its image(s) under `images` by `image_pattern`: one file per case (a 3D
volume, or 4D with channels on the last axis, of which `channels` are kept in that
order), or one file per modality (`{modality}` in the pattern, `modalities` in channel
order). Presets describe the public layouts:

- `lits`: LiTS 2017 (`volume-N.nii` / `segmentation-N.nii`) or the Medical Segmentation
  Decathlon's Task03_Liver (`liver_N.nii.gz` in imagesTr/ and labelsTr/);
  classes background, liver, tumor; CT in HU, stored as int16.
- `brats`: BraTS 2020 (`<case>/<case>_{t1,t1ce,t2,flair}.nii.gz`, `<case>/<case>_seg.nii.gz`,
  labels 0/1/2/4) or MSD Task01_BrainTumour (4D FLAIR/T1w/T1gd/T2w, labels 0-3);
  T1, T1ce and FLAIR become the 3 channels (T2 dropped, as in the paper), classes
  background, necrotic, edema, enhancing; slices with no brain (all channels constant)
  removed; 30 patients each for val and test.

Volumes are reoriented to RAS (nibabel's closest canonical) and cut into axial slices
(the third axis), shown radiologically: anterior up, patient's right on the image's
left. Each slice is padded to a square and resized to `size` (area average for images,
nearest neighbour for masks). Label values are mapped to class indices by the label
map; a value not in the map rejects the case (nothing is silently merged).

Splits are by patient: `patient_regex` extracts the patient from the case id (default:
each case is its own patient, true of LiTS and BraTS), dealt after staging among the
patients with a slice (`deal_splits`), so a rejected case never empties a split. Files are
found by nifti_files (`.nii` and `.nii.gz` alike; every file no case uses is a reject). Members per sample: `img.zst`
(zstd, int16 or float32, [H, W] or [C, H, W]) and `mask.zst` (zstd, uint8 [H, W]);
slices.parquet columns are listed in docs/finetune.md.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from datakit.convert.builder import (
    DatasetBuilder,
    Staged,
    StagingFile,
    check_output,
    check_workers,
    locked_output,
    safe_key,
    stage_reject,
)
from datakit.convert.images import resize_image, resize_mask, zstd_bytes
from datakit.convert.nifti_files import Case, find_cases
from datakit.convert.splits import assign_splits, patient_from_id
from datakit.errors import DatakitError
from tlxcore.progress import Progress, silent

DTYPES = ("int16", "float32")
# Voxels one file may declare (all channels): 4 GiB as float32, 4x LiTS's largest volume (512x512x987).
# The header is checked before any voxel is read: nibabel allocates a declared size whole before it
# reads, so a 1 KB .nii.gz declaring 1500^3 voxels took 6.5 GB before it was found short.
MAX_VOXELS = 1 << 30
DROP_EMPTY = ("none", "image", "mask")


@dataclass(frozen=True)
class NiftiLayout:
    image_pattern: str
    label_pattern: str
    label_map: tuple[tuple[int, str], ...]          # source value -> class name; class order as listed
    modalities: tuple[str, ...] = ()
    channels: tuple[int, ...] = ()


def _lits_layouts() -> list[NiftiLayout]:
    lmap = ((0, "background"), (1, "liver"), (2, "tumor"))
    # A .nii or .nii.gz pattern matches both suffixes (nifti_files).
    return [NiftiLayout("volume-{case}.nii", "segmentation-{case}.nii", lmap),
            NiftiLayout("{case}.nii.gz", "{case}.nii.gz", lmap)]


PRESETS: dict[str, dict] = {
    "lits": {"layouts": _lits_layouts(), "dtype": "int16", "drop_empty": "none"},
    "brats": {"layouts": [
        NiftiLayout("{case}/{case}_{modality}.nii.gz", "{case}/{case}_seg.nii.gz",
                    ((0, "background"), (1, "necrotic"), (2, "edema"), (4, "enhancing")),
                    modalities=("t1", "t1ce", "flair")),
        # MSD Task01: channels FLAIR, T1w, T1gd, T2w; labels 1 edema, 2 non-enhancing tumour, 3 enhancing
        NiftiLayout("{case}.nii.gz", "{case}.nii.gz",
                    ((0, "background"), (2, "necrotic"), (1, "edema"), (3, "enhancing")), channels=(1, 2, 0)),
    ], "dtype": "int16", "drop_empty": "image", "val": 30, "test": 30},
}


@dataclass
class NiftiSegOptions:
    images: str
    out: str
    labels: str | None = None                  # default: the images folder
    preset: str | None = None
    image_pattern: str | None = None
    label_pattern: str | None = None
    modalities: tuple[str, ...] | None = None
    channels: tuple[int, ...] | None = None
    label_map: str | None = None               # "0:background,1:liver,2:tumor"
    classes: tuple[str, ...] | None = None     # shorthand: value i -> classes[i]
    size: int = 256
    dtype: str | None = None
    drop_empty: str | None = None
    val: float | None = None
    test: float | None = None
    seed: int = 0
    patient_regex: str | None = None
    samples_per_shard: int = 1000
    workers: int | None = None
    resume: str = "auto"          # auto | never (datakit.resume)


@dataclass(frozen=True)
class CaseJob:
    """One case to stage. No split: splits are dealt after staging, among the patients with a
    slice (a split given only to a patient whose cases are all rejected would end up empty)."""
    case: str
    patient: str
    images: tuple[str, ...]       # one per modality (or one file), as nifti_files.find_cases names them
    label: str
    layout: NiftiLayout
    size: int
    dtype: str
    drop_empty: str


def parse_label_map(text: str) -> tuple[tuple[int, str], ...]:
    try:
        pairs = tuple((int(v), name.strip()) for v, name in (item.split(":", 1) for item in text.split(",")))
    except ValueError:
        raise DatakitError(f"--label-map {text!r} must look like 0:background,1:liver,2:tumor") from None
    names = [n for _, n in pairs]
    if len(set(names)) != len(names) or len({v for v, _ in pairs}) != len(pairs) or not all(names):
        raise DatakitError(f"--label-map {text!r} repeats a value or a class name (or has an empty name)")
    return pairs


def _layout_from_options(o: NiftiSegOptions) -> list[NiftiLayout]:
    preset = PRESETS[o.preset]["layouts"] if o.preset else []
    if o.label_map:
        lmap = parse_label_map(o.label_map)
    elif o.classes:
        lmap = tuple(enumerate(o.classes))
    elif preset:
        lmap = None
    else:
        raise DatakitError("say which label value is which class: --classes background,liver,tumor or "
                           "--label-map 0:background,1:liver,2:tumor (or use --preset lits|brats)")
    base = preset or [NiftiLayout("{case}.nii.gz", "{case}.nii.gz", ())]
    layouts = []
    for lay in base:
        changes = {k: v for k, v in (("image_pattern", o.image_pattern), ("label_pattern", o.label_pattern),
                                     ("modalities", o.modalities), ("channels", o.channels),
                                     ("label_map", lmap)) if v is not None}
        layouts.append(NiftiLayout(**{**asdict(lay), **changes}))
    return list(dict.fromkeys(layouts))  # options may make several preset layouts identical


@locked_output("tlx convert nifti-seg")
def convert_nifti_seg(o: NiftiSegOptions, progress: Progress = silent) -> dict:
    """Convert a NIfTI segmentation dataset; returns the manifest written."""
    check_output(o.out, o.resume)
    if o.preset is not None and o.preset not in PRESETS:
        raise DatakitError(f"--preset {o.preset!r} is not one of: {', '.join(PRESETS)}")
    defaults = PRESETS.get(o.preset, {})
    dtype = o.dtype or defaults.get("dtype", "int16")
    drop_empty = o.drop_empty or defaults.get("drop_empty", "none")
    val = o.val if o.val is not None else defaults.get("val", 0.1)
    test = o.test if o.test is not None else defaults.get("test", 0.1)
    if dtype not in DTYPES:
        raise DatakitError(f"--dtype {dtype!r} is not one of: {', '.join(DTYPES)}")
    if drop_empty not in DROP_EMPTY:
        raise DatakitError(f"--drop-empty {drop_empty!r} is not one of: {', '.join(DROP_EMPTY)}")
    if o.size < 8:
        raise DatakitError(f"--size {o.size} must be at least 8 pixels")
    if o.patient_regex:
        try:
            re.compile(o.patient_regex)
        except re.error as exc:
            raise DatakitError(f"--patient-regex {o.patient_regex!r} is not a regular expression ({exc})") from None
    images = Path(o.images)
    labels = Path(o.labels) if o.labels else images
    layout, cases, unused = _cases_and_layout(o, images, labels)
    modalities = layout.modalities
    n_channels = len(modalities) if modalities else (len(layout.channels) or 1)
    jobs = [(c.case, CaseJob(c.case, patient_from_id(c.case, o.patient_regex, "case"), c.images, c.label, layout,
                             o.size, dtype, drop_empty)) for c in cases]

    classes = [name for _, name in layout.label_map]
    shape = [o.size, o.size] if n_channels == 1 else [n_channels, o.size, o.size]
    members = {"img.zst": {"role": "image", "codec": "zstd", "dtype": dtype, "byteorder": "little", "shape": shape},
               "mask.zst": {"role": "mask", "codec": "zstd", "dtype": "uint8", "byteorder": "little",
                            "shape": [o.size, o.size]}}
    config = {"converter": "nifti-seg", "preset": o.preset, "image_pattern": layout.image_pattern,
              "label_pattern": layout.label_pattern, "modalities": list(modalities), "channels": list(layout.channels),
              "label_map": {str(v): n for v, n in layout.label_map}, "size": o.size, "dtype": dtype,
              "drop_empty": drop_empty, "val": val, "test": test, "seed": o.seed, "patient_regex": o.patient_regex,
              "split_by": "patient", "orientation": "RAS canonical, axial slices, radiological display",
              "samples_per_shard": o.samples_per_shard}
    builder = DatasetBuilder(o.out, kind="segmentation", members=members, classes=classes, config=config,
                             samples_per_shard=o.samples_per_shard, seed=o.seed, resume=o.resume,
                             progress=progress)
    staged = builder.run(stage_case, jobs, check_workers(o.workers), what="converting volumes")
    deal_splits(staged, val, test, o.seed)
    return builder.assemble(rejects=unused)


def deal_splits(staged: list[Staged], val: float, test: float, seed: int) -> None:
    """Split by patient among the patients with at least one staged slice, so every split with a
    positive share gets one (convert.splits.assign_splits) even when whole cases were rejected
    (4 cases gave 3/1/0 patients when the test patient's case was rejected after the split)."""
    patients = sorted({r["patient"] for s in staged for r in s.rows})
    if not patients:
        return                     # assemble says that nothing is left to write
    split_of = assign_splits(patients, val, test, seed)
    for s in staged:
        for r in s.rows:
            r["split"] = split_of[r["patient"]]
        for v in s.volumes:
            v["split"] = split_of[v["patient"]] if v["kept"] else None


def _cases_and_layout(o: NiftiSegOptions, images: Path, labels: Path) -> tuple[NiftiLayout, list[Case], list[dict]]:
    """The first of the options' layouts under which label volumes are found, its cases, and the
    rejects of every other file below --images and --labels (nifti_files.find_cases)."""
    for what, p in (("--images", images), ("--labels", labels)):
        if not p.is_dir():
            raise DatakitError(f"{what} {p} is not a folder")
    layouts = _layout_from_options(o)
    if images.resolve() == labels.resolve():  # one folder: a pattern naming images and labels alike is useless
        layouts = [lay for lay in layouts if lay.image_pattern != lay.label_pattern]
        if not layouts:
            raise DatakitError(f"images and labels are both {images} with the same file pattern; give --labels "
                               f"(e.g. labelsTr/) or distinct --image-pattern and --label-pattern")
    for layout in layouts:
        cases, unused = find_cases(images, labels, layout)
        if cases:
            return layout, cases, unused
    tried = "; ".join(f"{lay.label_pattern}" for lay in layouts)
    raise DatakitError(f"no label volume under {labels} matches the label pattern(s) {tried}; "
                       f"give --label-pattern (e.g. '{{case}}_seg.nii.gz')")


def _declared_too_large(path: str) -> str | None:
    """Why the file's header declares an absurd size (read from the header alone), else None."""
    import math

    import nibabel as nib
    shape = tuple(int(n) for n in nib.load(path).shape)
    if math.prod(shape) > MAX_VOXELS:
        return (f"{Path(path).name} declares {'x'.join(map(str, shape))} voxels, more than the limit of "
                f"{MAX_VOXELS:,} per file (a corrupt header?)")
    return None


def _load_canonical(path: str):
    import nibabel as nib
    img = nib.as_closest_canonical(nib.load(path))
    return img, np.asanyarray(img.dataobj)


def _to_display(slice_xy: np.ndarray) -> np.ndarray:
    """RAS (x = right->left... of the array, y = posterior->anterior) to an image with anterior up
    and the patient's right on the left: rows = -y, columns = -x."""
    return np.ascontiguousarray(slice_xy.T[::-1, ::-1])


class _CaseRejected(Exception):
    """A case that cannot be converted: its reject code, reason and the file to name."""

    def __init__(self, code: str, reason: str, path: str | None = None):
        super().__init__(reason)
        self.code, self.reason, self.path = code, reason, path


def stage_case(job: CaseJob, bin_path: Path) -> Staged:
    """Convert one case (runs in a worker process): read it, map its labels, stage its slices."""
    staged = Staged(job.case)
    volume = {"volume": job.case, "patient": job.patient, "label": None, "split": None,
              "files": len(job.images) + 1, "slices": 0, "slices_kept": 0, "slices_empty": 0,
              "kept": False, "reason": None}
    staged.volumes.append(volume)
    try:
        lab_img, lab, chans = _read_case(job)
        mask_vol = _class_masks(job, lab)
    except _CaseRejected as exc:
        staged.rejects.append(stage_reject(exc.path or job.label, exc.code, exc.reason, volume=job.case))
        volume.update(reason=exc.reason, split=None)
        return staged
    _stage_slices(job, staged, volume, lab_img, mask_vol, chans, bin_path)
    volume["slices_kept"] = len(staged.rows)
    volume["kept"] = bool(staged.rows)
    if not staged.rows:
        volume.update(reason="every slice was empty", split=None)
    return staged


def _read_case(job: CaseJob):
    """(label image, label volume, image channels), all on the label's grid; raises _CaseRejected."""
    missing = [p for p in job.images if not Path(p).is_file()]
    if missing:
        raise _CaseRejected("no-image", f"case {job.case} has no image file {missing[0]} (.nii or .nii.gz)")
    try:
        for path in (job.label, *job.images):
            if (too_large := _declared_too_large(path)) is not None:
                raise _CaseRejected("bad-geometry", too_large, path)
        lab_img, lab = _load_canonical(job.label)
        chans, sources = [], []
        for path in job.images:
            _, data = _load_canonical(path)
            data = np.asarray(data, dtype=np.float32)
            if data.ndim == 4:
                sel = job.layout.channels or tuple(range(data.shape[3]))
                if max(sel) >= data.shape[3]:
                    raise _CaseRejected("bad-channels", f"--channels {sel} but {Path(path).name} has "
                                                        f"{data.shape[3]} channels", path)
                chans += [data[..., c] for c in sel]
                sources += [path] * len(sel)
            elif data.ndim == 3:
                chans.append(data)
                sources.append(path)
            else:
                raise _CaseRejected("bad-geometry", f"{Path(path).name} has {data.ndim} dimensions, expected 3 or 4",
                                    path)
    except _CaseRejected:
        raise
    except Exception as exc:  # noqa: BLE001 - an unreadable file rejects its case, with the reason
        raise _CaseRejected("unreadable", f"cannot read case {job.case}: {type(exc).__name__}: {exc}") from exc
    lab = np.asarray(lab)
    for path, data in ((job.label, lab), *zip(sources, chans)):
        bad = data.size - np.count_nonzero(np.isfinite(data)) if data.dtype.kind == "f" else 0
        if bad:
            raise _CaseRejected("non-finite", f"{bad} of {data.size} voxels are NaN or infinite; the case cannot "
                                              "be stored (NaN would become 0 without a word)", path)
    if lab.ndim == 4 and lab.shape[3] == 1:
        lab = lab[..., 0]
    if any(c.shape != lab.shape for c in chans):
        raise _CaseRejected("shape-mismatch", f"image shape {chans[0].shape} differs from label shape {lab.shape}")
    return lab_img, lab, chans


def _class_masks(job: CaseJob, lab: np.ndarray) -> np.ndarray:
    """The label volume as class indices (uint8) by the label map; a value not in it rejects the case."""
    values = np.unique(lab)
    lookup = dict(job.layout.label_map)
    if not np.all(values == np.round(values)) or set(values.astype(np.int64).tolist()) - set(lookup):
        unknown = sorted(set(np.round(values).astype(np.int64).tolist()) - set(lookup))
        raise _CaseRejected("unknown-label", f"label values {unknown} of case {job.case} are not in the label map "
                                             f"{dict(job.layout.label_map)}; give --label-map")
    class_index = {v: i for i, (v, _) in enumerate(job.layout.label_map)}
    table = np.zeros(int(values.max()) + 1 if len(values) else 1, dtype=np.uint8)
    for v, i in class_index.items():
        if v < len(table):
            table[v] = i
    return table[lab.astype(np.int64)]


def _stage_slices(job: CaseJob, staged: Staged, volume: dict, lab_img, mask_vol: np.ndarray, chans: list,
                  bin_path: Path) -> None:
    """Every axial slice not dropped as empty: resized image and mask, staged, with its row."""
    fills = [float(c.min()) for c in chans]
    names = [n for _, n in job.layout.label_map]
    zooms = lab_img.header.get_zooms()
    staging = StagingFile(bin_path)
    try:
        for z in range(mask_vol.shape[2]):
            volume["slices"] += 1
            planes = [_to_display(c[:, :, z]) for c in chans]
            mask = _to_display(mask_vol[:, :, z])
            if (job.drop_empty == "image" and all(p.max() == p.min() for p in planes)) or \
                    (job.drop_empty == "mask" and not mask.any()):
                volume["slices_empty"] += 1
                continue
            img = np.stack([resize_image(p, job.size, f) for p, f in zip(planes, fills)])
            if job.dtype == "int16":
                img = np.round(img)
                if img.min() < -32768 or img.max() > 32767:
                    raise DatakitError(f"case {job.case}: intensities {img.min():g}..{img.max():g} do not fit "
                                       f"int16; convert with --dtype float32")
            img = img.astype(job.dtype)
            mask = resize_mask(mask, job.size)
            pixels = np.bincount(mask.ravel(), minlength=len(names))
            staged.rows.append({
                "key": f"{safe_key(job.case)}-s{z:04d}", "split": None, "patient": job.patient,
                "volume": job.case, "slice_index": z, "z": float(lab_img.affine[2, 3] + z * lab_img.affine[2, 2]),
                "pixel_spacing_row": float(zooms[1]), "pixel_spacing_col": float(zooms[0]),
                "slice_thickness": float(zooms[2]),
                **{f"pixels_{n}": int(pixels[i]) for i, n in enumerate(names)},
                "_payload": {"img.zst": staging.add(zstd_bytes(img[0] if len(chans) == 1 else img)),
                             "mask.zst": staging.add(zstd_bytes(mask))},
            })
    finally:
        staging.close()
