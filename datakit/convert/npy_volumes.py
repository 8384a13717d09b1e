"""`tlx convert npy-volumes`: MRNet-style `.npy` volumes -> kind `multilabel`, one 2-D image per volume
made of chosen slices.

    convert_npy_volumes(NpyVolumeOptions(root="MRNet-v1.0", out="mrnet", plane="sagittal", slices="center3"))

The layout is MRNet's: `<root>/<part>/<plane>/<case>.npy` (uint8 [slices, 256, 256]) with labels
in `<root>/<part>-<label>.csv` (no header: `0000,1`), parts `train` and `valid`, labels abnormal,
acl and meniscus. The `train` part is split into train and val (`val`, per exam); the `valid`
part, MRNet's public validation set, is the test split (its test set is not public). MRNet
gives no patient ids, so the split is per exam (`split_by: exam`).

`slices` picks them around the volume's middle slice m = n // 2: `center` (m: one channel),
`center3` (m-1, m, m+1: three channels) or offsets such as `-2,0,2` (1 or 3 of them); a volume
an offset would leave is a reject (`too-few-slices`), not padded with a repeated edge slice.
Volumes of another dtype than uint8 are scaled to 0-255 by their own minimum and maximum.

Rejects: `no-label` (a volume a label file does not list), `too-few-slices` (see above),
`missing-file` (a listed case without its volume), `bad-geometry` (not a 3-D array),
`undecodable` (not a readable .npy).
Members: `img.zst` (zstd uint8 [S, S] or [3, S, S]) and `labels` (raw uint8 multi-hot).
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
from datakit.convert.images import check_image_options, image_member, resize_uint8, zstd_bytes
from datakit.convert.splits import assign_splits
from datakit.convert.tables import read_csv
from datakit.errors import DatakitError
from tlxcore.progress import Progress, silent

CHUNK = 64
PLANES = ("sagittal", "coronal", "axial")


@dataclass
class NpyVolumeOptions:
    root: str
    out: str
    plane: str = "sagittal"
    slices: str = "center"
    labels: tuple[str, ...] = ("abnormal", "acl", "meniscus")
    train_part: str = "train"
    test_part: str = "valid"
    val: float = 0.1
    size: int = 256
    seed: int = 0
    samples_per_shard: int = 1000
    workers: int | None = None
    resume: str = "auto"


@dataclass(frozen=True)
class VolumeItem:
    path: str
    source: str
    key: str
    split: str
    labels: tuple[str, ...]


@dataclass(frozen=True)
class VolumeJob:
    items: tuple[VolumeItem, ...]
    offsets: tuple[int, ...]
    classes: tuple[str, ...]
    size: int


def parse_slices(text: str) -> tuple[int, ...]:
    named = {"center": (0,), "center3": (-1, 0, 1)}
    if text in named:
        return named[text]
    try:
        offsets = tuple(int(v) for v in text.split(","))
    except ValueError:
        offsets = ()
    if len(offsets) not in (1, 3):
        raise DatakitError(f"--slices {text!r} must be center, center3 or 1 or 3 offsets from the middle (-2,0,2)")
    return offsets


def _labels(root: Path, part: str, names: tuple[str, ...]) -> dict[str, set[str]]:
    """case -> its positive labels, from `<part>-<label>.csv` per label; every file must list the same cases."""
    cases: dict[str, set[str]] | None = None
    for name in names:
        path = root / f"{part}-{name}.csv"
        rows = read_csv(path, f"the label file of {name!r}", ["case", "label"], header=False, columns=["case", "label"])
        values = {r["case"].strip(): r["label"].strip() for r in rows}
        bad = sorted(v for v in set(values.values()) if v not in ("0", "1"))
        if bad:
            raise DatakitError(f"{path}: labels {bad[:3]} are not 0 or 1")
        if cases is None:
            cases = {c: set() for c in values}
        elif set(values) != set(cases):
            raise DatakitError(f"{path} lists other cases than {part}-{names[0]}.csv "
                               f"({len(set(values) ^ set(cases))} differ)")
        for c, v in values.items():
            if v == "1":
                cases[c].add(name)
    return cases or {}


@locked_output("tlx convert npy-volumes")
def convert_npy_volumes(o: NpyVolumeOptions, progress: Progress = silent) -> dict:
    """Convert MRNet-style volumes; returns the manifest written."""
    check_output(o.out, o.resume)
    check_image_options(o.size, 1)
    if o.plane not in PLANES:
        raise DatakitError(f"--plane {o.plane!r} is not one of: {', '.join(PLANES)}")
    offsets = parse_slices(o.slices)
    root = Path(o.root)
    if not root.is_dir():
        raise DatakitError(f"--root {root} is not a folder")
    items, rejects = [], []
    for part in (o.train_part, o.test_part):
        folder = root / part / o.plane
        if not folder.is_dir():
            raise DatakitError(f"{folder} is not a folder (the layout is <root>/<part>/<plane>/<case>.npy)")
        labels = _labels(root, part, tuple(o.labels))
        files = {p.stem: p for p in sorted(folder.iterdir()) if p.suffix == ".npy"}
        rejects += [stage_reject(f"{part}/{o.plane}/{p.name}", "no-label", f"no label file of {part} lists case {c}")
                    for c, p in files.items() if c not in labels]
        rejects += [stage_reject(f"{part}/{o.plane}/{c}.npy", "missing-file", f"{part}-{o.labels[0]}.csv lists case "
                                 f"{c} but its volume is not there") for c in labels if c not in files]
        split_of = assign_splits([c for c in labels if c in files], o.val, 0, o.seed) if part == o.train_part else {}
        items += [VolumeItem(str(files[c]), f"{part}/{o.plane}/{c}.npy", safe_key(f"{part}-{c}"),
                             split_of.get(c, "test"), tuple(sorted(labels[c]))) for c in sorted(labels) if c in files]
    jobs = [(f"{c[0].key}..{c[-1].key}", VolumeJob(tuple(c), offsets, tuple(o.labels), o.size))
            for c in iter_chunks(items, CHUNK)]
    members = {"img.zst": image_member(o.size, len(offsets)),
               "labels": {"role": "labels", "codec": "raw", "dtype": "uint8", "byteorder": "little",
                          "shape": [len(o.labels)]}}
    config = {"converter": "npy-volumes", "plane": o.plane, "slices": o.slices, "offsets": list(offsets),
              "parts": {o.train_part: "train+val", o.test_part: "test"}, "split_by": "exam", "val": o.val,
              "size": o.size, "seed": o.seed, "samples_per_shard": o.samples_per_shard}
    builder = DatasetBuilder(o.out, kind="multilabel", members=members, classes=list(o.labels), config=config,
                             samples_per_shard=o.samples_per_shard, seed=o.seed, resume=o.resume, progress=progress)
    builder.run(stage_volumes, jobs, check_workers(o.workers), what="converting volumes")
    return builder.assemble(rejects=rejects)


def slice_indices(n: int, offsets: tuple[int, ...]) -> list[int] | None:
    """The indices of the offsets from the middle slice of n, or None when one falls outside the volume
    (the volume is then a reject: repeating an edge slice would pass off a shorter exam as the chosen view)."""
    picked = [n // 2 + d for d in offsets]
    return picked if all(0 <= i < n for i in picked) else None


def chosen_slices(volume: np.ndarray, offsets: tuple[int, ...]) -> np.ndarray:
    """uint8 [len(offsets), H, W]: the slices at the offsets from the middle (all inside the volume)."""
    picked = volume[slice_indices(volume.shape[0], offsets)]
    if picked.dtype != np.uint8:
        lo, hi = float(volume.min()), float(volume.max())
        scaled = np.zeros(picked.shape) if hi == lo else (picked.astype(np.float64) - lo) * (255.0 / (hi - lo))
        picked = np.round(scaled).astype(np.uint8)
    return picked


def stage_volumes(job: VolumeJob, bin_path: Path) -> Staged:
    staged, staging = Staged(job.items[0].key), StagingFile(bin_path)
    try:
        for item in job.items:
            try:
                volume = np.load(item.path, allow_pickle=False)
            except Exception as exc:  # noqa: BLE001 - an unreadable file is a reject with its reason
                staged.rejects.append(stage_reject(item.source, "undecodable", f"{type(exc).__name__}: {exc}"))
                continue
            if volume.ndim != 3 or 0 in volume.shape:
                staged.rejects.append(stage_reject(item.source, "bad-geometry", f"shape {list(volume.shape)} is not "
                                                                                "[slices, height, width]"))
                continue
            if slice_indices(volume.shape[0], job.offsets) is None:
                staged.rejects.append(stage_reject(
                    item.source, "too-few-slices",
                    f"{volume.shape[0]} slices; the offsets {list(job.offsets)} "
                    f"from the middle slice leave the volume"))
                continue
            planes = np.stack([resize_uint8(p, job.size) for p in chosen_slices(volume, job.offsets)])
            hot = np.array([c in item.labels for c in job.classes], np.uint8)
            image = zstd_bytes(planes[0] if len(planes) == 1 else planes)
            staged.rows.append({"key": item.key, "split": item.split, "source": item.source,
                                "slices": int(volume.shape[0]), "labels": list(item.labels),
                                "_payload": {"img.zst": staging.add(image), "labels": staging.add(hot.tobytes())}})
    finally:
        staging.close()
    return staged
