"""`tlx verify`, shard side: read one shard once and report what it holds, for any dataset kind.

    out = check_shard(ShardCheck(root, entry, members, n_classes, decode))
    out["problems"], out["keys"], out["cls"], out["labels"], out["missing"], out["hashes"], out["mask_pixels"]

One read of the tar gives: byte size and sha256 against the manifest, the tar's members
grouped into samples (key = the name before the first dot, as both readers cut it), every
sample's member set against the manifest's, the `.idx` against the tar member by member,
and the values verify compares with slices.parquet afterwards: `cls` (ascii-int class
indices), `labels` (the positives of a multi-hot uint8 member, or of a float32 target member:
values in [0, 1], NaN = missing, whose NaN positions go to `missing`), and with decode=True the
pixel hash of an int16 image
(ct-slices) and the per-class pixel counts of a mask. With decode=True every member is
also decoded to its declared dtype and shape, by the dataset reader's own decoder
(datakit.read.decode_member), so verify checks what the trainers will read.
"""
from __future__ import annotations

import hashlib
import io
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datakit.read import MemberSpec, decode_member


@dataclass(frozen=True)
class ShardCheck:
    root: str                # dataset folder
    entry: dict              # the manifest's shard entry: path, index, samples, bytes, sha256
    members: dict[str, MemberSpec]   # the manifest's members (datakit.read.member_specs)
    n_classes: int
    decode: bool
    pixel_hash: bool         # ct-slices: hash the decoded image as write did


def _samples(infos) -> list[tuple[str, dict]]:
    """Tar members grouped into samples (adjacent members with one key), in tar order."""
    samples: list[tuple[str, dict]] = []
    for ti in infos:
        key, _, ext = ti.name.partition(".")
        if not samples or samples[-1][0] != key:
            samples.append((key, {}))
        samples[-1][1][ext] = ti
    return samples


def check_shard(task: ShardCheck) -> dict:
    entry, members = task.entry, task.members
    path = Path(task.root) / entry["path"]
    out = {"path": entry["path"], "problems": [], "keys": [], "cls": [], "labels": [], "missing": [], "hashes": [],
           "mask_pixels": [], "fov_pixels": []}
    p = out["problems"]
    if not path.exists():
        p.append(f"{entry['path']}: missing")
        return out
    data = path.read_bytes()
    if len(data) != entry["bytes"]:
        p.append(f"{entry['path']}: {len(data)} bytes, manifest says {entry['bytes']}")
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        p.append(f"{entry['path']}: sha256 differs from the manifest")
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            infos = tar.getmembers()
    except tarfile.TarError as exc:
        p.append(f"{entry['path']}: not a readable tar ({exc})")
        return out
    samples = _samples(infos)
    role = {ext: spec.role for ext, spec in members.items()}
    for key, found in samples:
        out["keys"].append(key)
        if set(found) != set(members):
            p.append(f"{entry['path']}: sample {key} has members {sorted(found)}, manifest says {sorted(members)}")
            continue
        payload = {ext: data[ti.offset_data:ti.offset_data + ti.size] for ext, ti in found.items()}
        for ext in members:
            if role[ext] == "label":
                _label(out, p, entry, key, members[ext], payload[ext], task.n_classes)
            elif role[ext] == "labels":
                _multi_hot(out, p, entry, key, members[ext], payload[ext], task.n_classes)
            if task.decode and role[ext] in ("image", "mask", "fov"):
                _pixels(out, p, entry, key, ext, members[ext], payload[ext], task)
    if len(samples) != entry["samples"]:
        p.append(f"{entry['path']}: {len(samples)} samples, manifest says {entry['samples']}")
    check_index(Path(task.root) / entry["index"], entry["path"], infos, len(samples), p)
    return out


def _label(out, p, entry, key, spec, data, n_classes) -> None:
    if data.isdigit():  # stricter than int(), which also takes " 3" or "+3"
        value = decode_member(spec, data)
    else:
        p.append(f"{entry['path']}: sample {key} has a bad label ({data[:20]!r} is not a decimal integer)")
        value = -1
    if value != -1 and not 0 <= value < n_classes:
        p.append(f"{entry['path']}: sample {key} has class index {value}, not one of the {n_classes} classes")
    out["cls"].append(value)


def _multi_hot(out, p, entry, key, spec, data, n_classes) -> None:
    try:
        hot = decode_member(spec, data)
        if hot.dtype.kind == "f":   # targets: 0..1 (soft labels of label smoothing), NaN = missing
            missing = np.isnan(hot)
            if hot.shape != (n_classes,) or not ((hot[~missing] >= 0) & (hot[~missing] <= 1)).all():
                raise ValueError(f"not {n_classes} values in [0, 1] or NaN")
        elif hot.shape != (n_classes,) or not np.isin(hot, (0, 1)).all():
            raise ValueError(f"not {n_classes} values of 0 or 1")
        else:
            missing = np.zeros(n_classes, bool)
        out["labels"].append(np.flatnonzero(hot == 1).tolist())
        out["missing"].append(np.flatnonzero(missing).tolist())
    except Exception as exc:  # noqa: BLE001 - corrupt labels are a finding, reported with their cause
        p.append(f"{entry['path']}: sample {key} has bad labels ({exc})")
        out["labels"].append(None)
        out["missing"].append(None)


def _pixels(out, p, entry, key, ext, spec, data, task: ShardCheck) -> None:
    try:
        arr = decode_member(spec, data)
    except Exception as exc:  # noqa: BLE001 - a corrupt payload is a finding, reported with its cause
        p.append(f"{entry['path']}: sample {key}: {ext} does not decode ({exc})")
        arr = None
    if spec.role == "image" and task.pixel_hash:
        from datakit.write_convert import pixel_hash

        out["hashes"].append(None if arr is None else pixel_hash(arr.astype("<i2", copy=False).tobytes()))
    elif spec.role == "fov":
        if arr is not None and arr.size and int(arr.max()) > 1:
            p.append(f"{entry['path']}: sample {key} field-of-view mask holds {int(arr.max())}, not only 0 and 1")
        out["fov_pixels"].append(None if arr is None else int(np.count_nonzero(arr)))
    elif spec.role == "mask":
        counts = None
        if arr is not None:
            if arr.size and int(arr.max()) >= task.n_classes:
                p.append(f"{entry['path']}: sample {key} mask holds class {int(arr.max())}, "
                         f"not one of the {task.n_classes} classes")
            else:
                counts = np.bincount(arr.ravel(), minlength=task.n_classes).tolist()
        out["mask_pixels"].append(counts)


def check_index(idx_path: Path, shard: str, infos, n_samples: int, p: list) -> None:
    """The DALI index beside a tar: header `v1.2 <samples>`, then each sample's members with their
    data offsets, sizes and names, exactly as in the tar."""
    if not idx_path.exists():
        p.append(f"{shard}: its index {idx_path.name} is missing")
        return
    lines = idx_path.read_text().splitlines()
    if not lines or lines[0] != f"v1.2 {n_samples}":
        p.append(f"{idx_path.name}: header {lines[0] if lines else ''!r}, expected 'v1.2 {n_samples}'")
    want = []
    for ti in infos:
        ext = ti.name.partition(".")[2]
        want.append(f"{ext} {ti.offset_data} {ti.size} {ti.name}")
    got = " ".join(lines[1:]).split(" ") if len(lines) > 1 else []
    if got != " ".join(want).split(" "):
        p.append(f"{idx_path.name}: entries do not match the tar's members (offsets, sizes or names)")
