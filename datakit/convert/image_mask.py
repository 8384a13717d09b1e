"""`tlx convert image-mask`: 2-D images with masks -> kind `segmentation` (the kind nifti-seg writes).

    convert_image_mask(ImageMaskOptions(root="MontgomerySet", out="montgomery", preset="montgomery"))

Images: PNG, JPEG, GIF, TIFF (gray, or RGB with `channels=3`) or DICOM X-rays (`.dcm`, read by
datakit.dicom_image under tlx shard's PHI rules: pseudonymous keys and patients, a `secret`
needed). Masks (datakit.convert.image_mask_files): mask images per class (non-zero = the class;
several patterns of one class are united), one mask image of class values (`label_map`
"0:background,1:liver,2:tumor"), or run-length strings in a CSV (datakit.convert.rle; several
rows of one image united). An optional field-of-view mask (DRIVE's) is kept as member `fov.zst`.

Everything is checked before anything is written: a mask not of its image's size, or an RLE
string longer than its image, is a one-line error naming both. Per image: masks of two classes
that overlap (`mask-overlap`) or a mask value outside the label map (`unknown-label`) reject it.

Presets: `siim-acr` (DICOM images anywhere below the root, `train-rle.csv` in SIIM-ACR's relative
RLE form, class pneumothorax, patients from the DICOM header), `montgomery` (CXR_png/, the left
and right lung masks of ManualMask/ united into class lung, patient = the image's number),
`drive` (training/ and test/ as the official train and test splits, RGB fundus images, class
vessel from 1st_manual/, the field of view from mask/).

Splits by patient (datakit.convert.splits.patient_splits): `{split}` in the image pattern gives
the source's own split through `split_map`; `patients` (a CSV: columns `patients_id_col` and
`patient_col`) names each image's patient, or `patient_regex` extracts it from the id (else each
image is its own patient; DICOM: PatientID). Members: `img.zst` (zstd uint8 [S, S] or
[3, S, S]), `mask.zst` (zstd uint8 [S, S] class indices), `fov.zst` (zstd uint8 [S, S], 0/1).
"""
from __future__ import annotations

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
from datakit.convert.image_mask_files import MaskLayout, Pair, check_rle, find_pairs
from datakit.convert.images import (
    channel_first,
    check_image_options,
    image_member,
    resize_mask,
    resize_uint8,
    zstd_bytes,
)
from datakit.convert.nifti_seg import parse_label_map
from datakit.convert.rle import FORMS, ORDERS, decode_rle
from datakit.convert.splits import patient_from_id, patient_splits, patients_from_csv
from datakit.errors import DatakitError
from tlxcore.progress import Progress, silent

CHUNK = 64  # images per staging job
PRESETS: dict[str, dict] = {
    "siim-acr": {"image_pattern": "**/{id}.dcm", "rle": "train-rle.csv", "rle_class": "pneumothorax",
                 "rle_form": "relative", "allow_secondary_capture": True},
    "montgomery": {"image_pattern": "CXR_png/{id}.png", "mask_patterns": ("lung=ManualMask/leftMask/{id}.png",
                                                                         "lung=ManualMask/rightMask/{id}.png"),
                   "patient_regex": r"MCUCXR_(\d+)"},
    "drive": {"image_pattern": "{split}/images/{id}_{split}.tif",
              "mask_patterns": ("vessel={split}/1st_manual/{id}_manual1.gif",),
              "fov_pattern": "{split}/mask/{id}_{split}_mask.gif", "split_map": "training=train,test=test",
              "channels": 3},
}


@dataclass
class ImageMaskOptions:
    root: str
    out: str
    preset: str | None = None
    image_pattern: str | None = None
    mask_patterns: tuple[str, ...] | None = None     # "[CLASS=]PATTERN"
    fov_pattern: str | None = None
    rle: str | None = None                           # CSV (relative to the root when not found as given)
    rle_id_col: str = "ImageId"
    rle_col: str = "EncodedPixels"
    rle_class: str | None = None
    rle_form: str | None = None                      # relative | absolute
    rle_order: str = "column"                        # column | row
    label_map: str | None = None
    split_map: str | None = None                     # "training=train,test=test"
    patient_regex: str | None = None
    patients: str | None = None                      # CSV naming each image id's patient
    patients_id_col: str = "id"
    patient_col: str = "patient"
    secret: str | None = None                        # secret file for DICOM images (else $TLX_SECRET)
    allow_secondary_capture: bool | None = None
    channels: int | None = None
    size: int = 256
    val: float = 0.1
    test: float = 0.1
    seed: int = 0
    samples_per_shard: int = 1000
    workers: int | None = None
    resume: str = "auto"


@dataclass(frozen=True)
class MaskItem:
    pair: Pair
    root: str
    key: str
    patient: str
    split: str
    classes: tuple[str, ...]
    label_map: tuple[tuple[int, str], ...]
    layout: MaskLayout
    channels: int
    size: int
    secret: bytes | None
    allow_secondary_capture: bool


def _resolved(o: ImageMaskOptions) -> dict:
    """The options with the preset's values where the command line gives none."""
    if o.preset and o.preset not in PRESETS:
        raise DatakitError(f"--preset {o.preset!r} is not one of: {', '.join(PRESETS)}")
    preset = PRESETS.get(o.preset, {}) if o.preset else {}
    names = ("image_pattern", "mask_patterns", "fov_pattern", "rle", "rle_class", "rle_form", "split_map",
             "patient_regex", "allow_secondary_capture", "channels")
    r = {n: getattr(o, n) if getattr(o, n) is not None else preset.get(n) for n in names}
    r.update(rle_class=r["rle_class"] or "foreground", rle_form=r["rle_form"] or "relative",
             allow_secondary_capture=bool(r["allow_secondary_capture"]), channels=r["channels"] or 1,
             mask_patterns=tuple(r["mask_patterns"] or ()))
    if not r["image_pattern"]:
        raise DatakitError("give --image-pattern (e.g. 'images/{id}.png') or --preset siim-acr|montgomery|drive")
    if not r["mask_patterns"] and not r["rle"]:
        raise DatakitError("give the masks: --mask [CLASS=]PATTERN (one or more) or --rle CSV")
    if r["mask_patterns"] and r["rle"]:
        raise DatakitError("give the masks either as --mask files or as --rle strings, not both")
    if r["rle_form"] not in FORMS or o.rle_order not in ORDERS:
        raise DatakitError(f"--rle-form {r['rle_form']!r} / --rle-order {o.rle_order!r} must be one of "
                           f"{', '.join(FORMS)} / {', '.join(ORDERS)}")
    return r


def _layout(o: ImageMaskOptions, r: dict, root: Path) -> tuple[MaskLayout, list[str], tuple]:
    """The file layout, the classes (background first) and the label map of value masks."""
    masks = []
    for spec in r["mask_patterns"]:
        cls, sep, pattern = spec.partition("=")
        cls, pattern = (cls.strip(), pattern.strip()) if sep and "{" not in cls else ("foreground", spec.strip())
        masks.append((cls, pattern))
    label_map = parse_label_map(o.label_map) if o.label_map else ()
    if label_map and len(masks) != 1:
        raise DatakitError("--label-map maps the values of one mask image per image: give exactly one --mask")
    classes = [n for _, n in label_map] if label_map else \
        ["background", *dict.fromkeys([c for c, _ in masks] or [r["rle_class"]])]
    if len(set(classes)) != len(classes):
        raise DatakitError(f"class names {classes} repeat (background is class 0)")
    rle = r["rle"]
    if rle and not Path(rle).is_file() and (root / rle).is_file():
        rle = str(root / rle)
    split_map = tuple((k.strip(), v.strip()) for k, _, v in (i.partition("=") for i in (r["split_map"] or "").split(",")
                                                             if i.strip()))
    if any(v not in ("train", "val", "test") for _, v in split_map):
        raise DatakitError(f"--split-map {r['split_map']!r} must map values to train, val or test (training=train,...)")
    layout = MaskLayout(r["image_pattern"], tuple(masks), r["fov_pattern"], rle, o.rle_id_col, o.rle_col,
                        r["rle_class"], r["rle_form"], o.rle_order, split_map)
    return layout, classes, label_map


@locked_output("tlx convert image-mask")
def convert_image_mask(o: ImageMaskOptions, progress: Progress = silent) -> dict:
    """Convert 2-D images with masks; returns the manifest written."""
    check_output(o.out, o.resume)
    r = _resolved(o)
    check_image_options(o.size, r["channels"])
    root = Path(o.root)
    layout, classes, label_map = _layout(o, r, root)
    found = find_pairs(root, layout)
    secret = None
    if any(p.dicom for p in found.pairs):
        from datakit.secret import load_secret
        if r["channels"] != 1:
            raise DatakitError("--channels 3: DICOM X-rays are grey; use --channels 1")
        secret = load_secret(o.secret)
    r["patients"] = _patient_map(o, found.pairs)
    checked, rejects = inspect_pairs(root, found.pairs, layout, secret, r)
    if not checked:
        raise DatakitError(f"no image below {root} is left to convert ({len(found.rejects) + len(rejects)} rejects); "
                           f"check --root and the patterns")
    split_map = dict(layout.split_map)
    unknown = sorted({p.split_value for p, _ in checked if p.split_value is not None} - set(split_map))
    if unknown:
        raise DatakitError(f"{{split}} values {unknown} are not in --split-map {r['split_map'] or '(none)'}")
    official = [(patient, split_map.get(p.split_value)) for p, patient in checked]
    split_of = patient_splits(official, o.val, o.test, o.seed)
    items = [MaskItem(p, str(root), _key(p, secret), patient, split_of[patient], tuple(classes), label_map, layout,
                      r["channels"], o.size, secret, r["allow_secondary_capture"]) for p, patient in checked]
    jobs = [(f"{c[0].key}..{c[-1].key}", tuple(c)) for c in iter_chunks(sorted(items, key=lambda i: i.key), CHUNK)]
    members = {"img.zst": image_member(o.size, r["channels"]), "mask.zst": _mask_member(o.size, "mask")}
    if layout.fov_pattern:
        members["fov.zst"] = _mask_member(o.size, "fov")
    builder = DatasetBuilder(o.out, kind="segmentation", members=members, classes=classes,
                             config=_config(o, r, layout, label_map, secret), samples_per_shard=o.samples_per_shard,
                             seed=o.seed, resume=o.resume, progress=progress)
    builder.run(stage_pairs, jobs, check_workers(o.workers), what="converting images")
    return builder.assemble(rejects=found.rejects + rejects)


def _patient_map(o: ImageMaskOptions, pairs: list[Pair]) -> dict[str, str] | None:
    """image id -> patient of `--patients` (None without it); every image must be listed."""
    if not o.patients:
        return None
    if o.patient_regex:
        raise DatakitError("give the patients either by --patients or by --patient-regex, not both")
    if any(p.dicom for p in pairs):
        raise DatakitError("DICOM images take their patient from the header (pseudonymised); leave out --patients")
    patients = patients_from_csv(o.patients, o.patients_id_col, o.patient_col)
    missing = sorted({p.id for p in pairs} - set(patients))
    if missing:
        raise DatakitError(f"--patients {o.patients} has no row for {len(missing)} image(s), e.g. {missing[0]!r} "
                           f"(column {o.patients_id_col!r}); list every image's patient")
    return patients


def _mask_member(size: int, role: str) -> dict:
    return {"role": role, "codec": "zstd", "dtype": "uint8", "byteorder": "little", "shape": [size, size]}


def _key(pair: Pair, secret: bytes | None) -> str:
    """DICOM: a pseudonym of the id (SIIM-ACR's ids are SOP instance UIDs); else the id (and split value)."""
    if pair.dicom:
        from datakit.pseudonym import pseudonym
        return pseudonym(secret, pair.id)
    return safe_key(pair.id if pair.split_value is None else f"{pair.split_value}-{pair.id}")


def _config(o: ImageMaskOptions, r: dict, layout: MaskLayout, label_map, secret) -> dict:
    from datakit.secret import fingerprint
    return {"converter": "image-mask", "preset": o.preset, "image_pattern": layout.image_pattern,
            "masks": [f"{c}={p}" for c, p in layout.mask_patterns], "fov_pattern": layout.fov_pattern,
            "rle": Path(layout.rle).name if layout.rle else None, "rle_form": layout.rle_form if layout.rle else None,
            "rle_order": layout.rle_order if layout.rle else None, "label_map": {str(v): n for v, n in label_map},
            "split_map": dict(layout.split_map), "patient_regex": None if o.patients else r["patient_regex"],
            "patients": Path(o.patients).name if o.patients else None, "split_by": "patient",
            "channels": r["channels"], "size": o.size, "val": o.val, "test": o.test, "seed": o.seed,
            "samples_per_shard": o.samples_per_shard, "allow_secondary_capture": r["allow_secondary_capture"],
            "secret_fingerprint": fingerprint(secret) if secret else None}


def inspect_pairs(root: Path, pairs: list[Pair], layout: MaskLayout, secret, r: dict) -> tuple[list, list]:
    """(pair, patient) of every usable pair and the rejects of DICOM files tlx may not read; DatakitError
    for a mask of another size than its image, or an RLE string beyond it (nothing is written yet)."""
    from PIL import Image

    from datakit.dicom_header import SliceRejected, read_header
    from datakit.dicom_image import check_xray_header
    from datakit.pseudonym import pseudonym

    checked, rejects = [], []
    for pair in pairs:
        try:
            if pair.dicom:
                values = read_header(root / pair.image).values
                check_xray_header(values, r["allow_secondary_capture"], False)
                height, width = values.get("Rows"), values.get("Columns")
                patient = pseudonym(secret, str(values["PatientID"]).strip())
            else:
                with Image.open(root / pair.image) as im:
                    width, height = im.size
                patient = r["patients"][pair.id] if r.get("patients") else \
                    patient_from_id(pair.id, r["patient_regex"], "image id")
        except SliceRejected as exc:
            rejects.append(stage_reject(pair.image, exc.code, exc.reason))
            continue
        except OSError as exc:
            rejects.append(stage_reject(pair.image, "undecodable", f"{type(exc).__name__}: {exc}"))
            continue
        bad_mask = _check_mask_sizes(root, pair, width, height)
        if bad_mask:
            rejects.append(bad_mask)
            continue
        check_rle(pair, height, width, layout)
        checked.append((pair, patient))
    return checked, rejects


def _check_mask_sizes(root: Path, pair: Pair, width: int, height: int) -> dict | None:
    """A reject when a mask or FOV file cannot be decoded (the image goes with it); DatakitError when one is
    not of its image's size (a layout error, not one bad file)."""
    from PIL import Image

    for rel in [p for _, p in pair.masks] + ([pair.fov] if pair.fov else []):
        try:
            with Image.open(root / rel) as im:
                size = im.size
        except OSError as exc:
            return stage_reject(pair.image, "undecodable", f"mask {rel}: {type(exc).__name__}: {exc}")
        if size != (width, height):
            raise DatakitError(f"mask {rel} is {size[0]}x{size[1]} (width x height), its image "
                               f"{pair.image} {width}x{height}; masks must cover their image pixel for pixel")
    return None


class _PairRejected(Exception):
    def __init__(self, code: str, reason: str):
        super().__init__(reason)
        self.code, self.reason = code, reason


def class_mask(item: MaskItem, height: int, width: int) -> np.ndarray:
    """uint8 class indices [H, W] of the pair's masks; _PairRejected on overlap or an unknown value."""
    from PIL import Image

    root, out = Path(item.root), np.zeros((height, width), np.uint8)
    if item.label_map:
        with Image.open(root / item.pair.masks[0][1]) as im:
            values = np.asarray(im)
        lookup = {v: i for i, (v, _) in enumerate(item.label_map)}
        unknown = sorted(set(np.unique(values).tolist()) - set(lookup))
        if unknown or values.ndim != 2:
            why = f"mask values {unknown[:5]} are not in --label-map {dict(item.label_map)}" if unknown else \
                "the mask is not one channel"
            raise _PairRejected("unknown-label", why)
        table = np.zeros(max(lookup) + 1, np.uint8)
        for v, i in lookup.items():
            table[v] = i
        return table[values]
    layers = [(c, Path(root / p)) for c, p in item.pair.masks]
    for cls, path in layers:
        with Image.open(path) as im:
            on = np.asarray(im.convert("L")) > 0
        index = item.classes.index(cls)
        clash = on & (out != 0) & (out != index)
        if clash.any():
            raise _PairRejected("mask-overlap", f"{int(clash.sum())} pixels are both {item.classes[out[clash][0]]} "
                                                f"and {cls}")
        out[on] = index
    if item.pair.rle:
        index = item.classes.index(item.layout.rle_class)
        for text in item.pair.rle:
            out[decode_rle(text, height, width, item.layout.rle_form, item.layout.rle_order)] = index
    return out


def _load(item: MaskItem) -> np.ndarray:
    """The image as uint8 [H, W] or [H, W, 3]."""
    path = Path(item.root) / item.pair.image
    if item.pair.dicom:
        from datakit.dicom_image import read_xray
        return read_xray(path, item.secret, item.allow_secondary_capture).pixels
    from datakit.convert.images import load_uint8
    return load_uint8(path, item.channels)


def stage_pairs(items: tuple[MaskItem, ...], bin_path: Path) -> Staged:
    """Read, mask, resize and encode a chunk of images (runs in a worker process)."""
    from PIL import Image

    from datakit.dicom_header import SliceRejected

    staged, staging = Staged(items[0].key), StagingFile(bin_path)
    try:
        for item in items:
            volume = {"volume": item.key, "patient": item.patient, "label": None, "split": item.split,
                      "files": 1 + len(item.pair.masks) + bool(item.pair.fov), "slices": 1, "slices_kept": 0,
                      "slices_empty": 0, "kept": False, "reason": None}
            staged.volumes.append(volume)
            try:
                img = _load(item)
                mask = class_mask(item, *img.shape[:2])
            except (_PairRejected, SliceRejected) as exc:
                staged.rejects.append(stage_reject(item.pair.image, exc.code, exc.reason, volume=item.key))
                volume.update(split=None, reason=exc.reason)
                continue
            except Exception as exc:  # noqa: BLE001 - an unreadable file is a reject with its reason
                staged.rejects.append(stage_reject(item.pair.image, "undecodable", f"{type(exc).__name__}: {exc}",
                                                   volume=item.key))
                volume.update(split=None, reason=f"undecodable: {type(exc).__name__}")
                continue
            height, width = img.shape[:2]
            mask = resize_mask(mask, item.size)
            pixels = np.bincount(mask.ravel(), minlength=len(item.classes))
            row = {"key": item.key, "split": item.split, "patient": item.patient, "volume": item.key, "slice_index": 0,
                   **({} if item.pair.dicom else {"source": item.pair.image}), "width": width, "height": height,
                   **{f"pixels_{c}": int(pixels[i]) for i, c in enumerate(item.classes)}}
            payload = {"img.zst": staging.add(zstd_bytes(channel_first(resize_uint8(img, item.size)))),
                       "mask.zst": staging.add(zstd_bytes(mask))}
            if item.pair.fov:
                with Image.open(Path(item.root) / item.pair.fov) as im:
                    fov = resize_mask((np.asarray(im.convert("L")) > 0).astype(np.uint8), item.size)
                row["fov_pixels"] = int(fov.sum())
                payload["fov.zst"] = staging.add(zstd_bytes(fov))
            staged.rows.append({**row, "_payload": payload})
            volume.update(slices_kept=1, kept=True)
    finally:
        staging.close()
    return staged
