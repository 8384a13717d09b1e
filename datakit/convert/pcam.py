"""`tlx convert pcam`: PatchCamelyon's HDF5 files -> kind `image-classification` (96x96 RGB lymph node
patches: normal or tumor in the centre 32x32).

    convert_pcam(PcamOptions(root="pcam/", out="pcam-tlx"))

The release's files in `root` (each `.h5` also as PCam ships it, `.h5.gz`, is refused with the
command that unpacks it): camelyonpatch_level_2_split_{train,valid,test}_x.h5 (dataset `x`:
uint8 [N, 96, 96, 3]) and _y.h5 (dataset `y`: uint8 [N, 1, 1, 1], 0 or 1), the official train,
validation and test splits. With `meta` (`auto`: when the files are there)
camelyonpatch_level_2_split_{split}_meta.csv give each patch's slide (`wsi`), used as its
patient: a slide in two splits is an error, as for any split list that leaks. h5py is an
optional extra (`pip install 'tlx[hdf5]'`).

Members: `img.zst` (zstd uint8 [3, S, S], or [S, S] with channels=1) and `cls` (0 normal, 1
tumor). slices.parquet: key (`<split>-<index>`), split, shard, label, label_index, index (the
patch's row in its file), patient (the slide, with meta).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datakit.convert.builder import DatasetBuilder, Staged, StagingFile, check_output, check_workers, locked_output
from datakit.convert.images import channel_first, check_image_options, image_member, resize_uint8, zstd_bytes
from datakit.convert.splits import patient_splits
from datakit.convert.tables import read_csv
from datakit.errors import DatakitError
from tlxcore.progress import Progress, silent

CHUNK = 4096  # patches per staging job
SPLITS = {"train": "train", "valid": "val", "test": "test"}
CLASSES = ["normal", "tumor"]
PREFIX = "camelyonpatch_level_2_split_"


@dataclass
class PcamOptions:
    root: str
    out: str
    meta: str = "auto"           # auto | none
    size: int = 96
    channels: int = 3
    seed: int = 0
    samples_per_shard: int = 1000
    workers: int | None = None
    resume: str = "auto"


@dataclass(frozen=True)
class PcamJob:
    x: str
    y: str
    split: str
    start: int
    stop: int
    slides: tuple[str, ...] | None
    size: int
    channels: int


def _h5py():
    try:
        import h5py
    except ImportError:
        raise DatakitError("tlx convert pcam reads HDF5 with h5py: pip install 'tlx[hdf5]' (or h5py)") from None
    return h5py


def _dataset(path: Path, name: str, shape_tail: tuple[int, ...]) -> int:
    """The number of rows of dataset `name` in `path`; DatakitError naming what the file holds instead."""
    h5py = _h5py()
    if not path.is_file():
        packed = path.with_name(path.name + ".gz")
        hint = f" (found {packed.name}: unpack it with gunzip)" if packed.is_file() else ""
        raise DatakitError(f"{path}: no such file{hint}")
    try:
        with h5py.File(path, "r") as f:
            if name not in f:
                raise DatakitError(f"{path.name} has no dataset {name!r}; it holds: {', '.join(f.keys()) or 'nothing'}")
            ds = f[name]
            if ds.dtype != np.uint8 or tuple(ds.shape[1:]) != shape_tail:
                raise DatakitError(f"{path.name}: dataset {name!r} is {ds.dtype} {list(ds.shape)}, expected uint8 "
                                   f"[N, {', '.join(map(str, shape_tail))}]")
            return int(ds.shape[0])
    except OSError as exc:
        raise DatakitError(f"{path} is not a readable HDF5 file ({exc})") from None


@locked_output("tlx convert pcam")
def convert_pcam(o: PcamOptions, progress: Progress = silent) -> dict:
    """Convert PCam's HDF5 files; returns the manifest written."""
    check_output(o.out, o.resume)
    check_image_options(o.size, o.channels)
    if o.meta not in ("auto", "none"):
        raise DatakitError(f"--meta {o.meta!r} is not one of: auto, none")
    root = Path(o.root)
    if not root.is_dir():
        raise DatakitError(f"--root {root} is not a folder")
    parts = {}
    for name, split in SPLITS.items():
        x, y = root / f"{PREFIX}{name}_x.h5", root / f"{PREFIX}{name}_y.h5"
        n, n_y = _dataset(x, "x", (96, 96, 3)), _dataset(y, "y", (1, 1, 1))
        if n != n_y:
            raise DatakitError(f"{x.name} holds {n} patches, {y.name} {n_y} labels")
        meta = root / f"{PREFIX}{name}_meta.csv"
        slides = None
        if o.meta == "auto" and meta.is_file():
            slides = [r["wsi"].strip() for r in read_csv(meta, "--meta", ["wsi"])]
            if len(slides) != n:
                raise DatakitError(f"{meta.name} has {len(slides)} rows, {x.name} {n} patches")
        parts[split] = (x, y, n, slides)
    with_meta = all(p[3] is not None for p in parts.values())
    if with_meta:     # raises when one slide lies in two of the official splits
        patient_splits([(s, split) for split, p in parts.items() for s in set(p[3])], 0, 0, o.seed)
    jobs = [(f"{split}/{start}", PcamJob(str(x), str(y), split, start, min(start + CHUNK, n),
                                         tuple(slides[start:start + CHUNK]) if with_meta else None, o.size, o.channels))
            for split, (x, y, n, slides) in parts.items() for start in range(0, n, CHUNK)]
    members = {"img.zst": image_member(o.size, o.channels), "cls": {"role": "label", "codec": "ascii-int"}}
    config = {"converter": "pcam", "files": sorted(f"{PREFIX}{n}_{k}.h5" for n in SPLITS for k in "xy"),
              "meta": with_meta, "split_by": "patient" if with_meta else "official", "size": o.size,
              "channels": o.channels, "seed": o.seed, "samples_per_shard": o.samples_per_shard}
    builder = DatasetBuilder(o.out, kind="image-classification", members=members, classes=CLASSES, config=config,
                             samples_per_shard=o.samples_per_shard, seed=o.seed, resume=o.resume, progress=progress)
    builder.run(stage_patches, jobs, check_workers(o.workers), what="converting patches")
    return builder.assemble()


def stage_patches(job: PcamJob, bin_path: Path) -> Staged:
    """One chunk of patches of one split (runs in a worker process)."""
    h5py = _h5py()
    with h5py.File(job.x, "r") as fx, h5py.File(job.y, "r") as fy:
        x = fx["x"][job.start:job.stop]
        y = fy["y"][job.start:job.stop].reshape(-1)
    staged, staging = Staged(f"{job.split}/{job.start}"), StagingFile(bin_path)
    try:
        for k, (patch, label) in enumerate(zip(x, y)):
            if label not in (0, 1):
                raise DatakitError(f"{Path(job.y).name}: label {int(label)} at row {job.start + k} is not 0 or 1")
            img = patch if job.channels == 3 else np.asarray(_gray(patch))
            img = channel_first(resize_uint8(img, job.size))
            staged.rows.append({"key": f"{job.split}-{job.start + k:06d}", "split": job.split, "label": CLASSES[label],
                                "label_index": int(label), "index": job.start + k,
                                "patient": job.slides[k] if job.slides else None,
                                "_payload": {"img.zst": staging.add(zstd_bytes(img)),
                                             "cls": staging.add(str(int(label)).encode())}})
    finally:
        staging.close()
    return staged


def _gray(patch: np.ndarray):
    from PIL import Image
    return Image.fromarray(patch).convert("L")
