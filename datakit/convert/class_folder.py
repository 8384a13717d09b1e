"""`tlx convert class-folder`: an ImageNet-style class-per-folder tree -> jpg/cls shards.

    convert_class_folder(ClassFolderOptions(root="imagenet/train", eval_root="imagenet/val", out="in1k"))

`root/<class>/<image>`: the folder names are the classes (sorted; `classes` keeps a
subset, in its own order, e.g. for ImageNet-100). Without `eval_root` the images are
split at random into train/val/test within each class (`val`, `test` fractions);
with it, all of `root` trains and `eval_root` (same layout) is split evenly into val
and test within each class, which is how the paper used ImageNet's official
validation set. Natural images carry no patient, so the split is per image.

JPEG files in RGB or gray are copied unchanged (no generation loss, no re-encoding
time; they are fully decoded once to check them, at reduced scale); anything else (PNG,
CMYK JPEG, ...) is converted to an RGB JPEG of `quality`. `size` > 0 instead resizes
every image so its shorter side is `size` and re-encodes it. Members: `jpg` (jpeg) and
`cls` (ascii-int index into `classes`).
"""
from __future__ import annotations

import io
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
    safe_key,
    stage_reject,
)
from datakit.convert.images import list_images
from datakit.convert.splits import assign_splits
from datakit.errors import DatakitError
from tlxcore.progress import Progress, silent

CHUNK = 512  # images per staging job


@dataclass
class ClassFolderOptions:
    root: str
    out: str
    eval_root: str | None = None
    classes: tuple[str, ...] | None = None
    val: float = 0.1
    test: float = 0.1
    size: int = 0
    quality: int = 95
    seed: int = 0
    samples_per_shard: int = 1000
    workers: int | None = None
    resume: str = "auto"          # auto | never (datakit.resume)


@dataclass(frozen=True)
class ClassItem:
    source: str      # relative to its root, prefixed with "train/" or "eval/"
    path: str
    key: str
    split: str
    label_index: int
    label: str


@dataclass(frozen=True)
class ClassJob:
    items: tuple[ClassItem, ...]
    size: int
    quality: int


def _class_images(root: Path, classes: list[str], tree: str, rejects: list) -> list[tuple[str, str]]:
    """(class, path relative to root) of every image in the class folders; entries named like
    images that are no regular file (a FIFO would block its reader forever) go to `rejects`."""
    out = []
    for c in classes:
        if (root / c).is_dir():
            files, problems = list_images(root / c)
            out += [(c, f"{c}/{rel}") for rel in files]
            rejects += [stage_reject(f"{tree}/{c}/{rel}", code, reason) for rel, (code, reason) in problems.items()]
    return out


@locked_output("tlx convert class-folder")
def convert_class_folder(o: ClassFolderOptions, progress: Progress = silent) -> dict:
    """Convert a class-per-folder image tree; returns the manifest written."""
    check_output(o.out, o.resume)
    root = Path(o.root)
    if not root.is_dir():
        raise DatakitError(f"--root {root} is not a folder")
    if o.eval_root and Path(o.eval_root).resolve() == root.resolve():  # every image in train and in val/test
        raise DatakitError(f"--eval-root {o.eval_root} is --root itself; give the separate evaluation tree "
                           f"(e.g. imagenet/val), or leave it out to split --root")
    if not 1 <= o.quality <= 100:
        raise DatakitError(f"--quality {o.quality} must be in 1..100")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not folders:
        raise DatakitError(f"--root {root} has no class folders (expected root/<class>/<image>)")
    classes = list(o.classes) if o.classes else folders
    unknown = [c for c in classes if c not in folders]
    if unknown:
        raise DatakitError(f"--classes {unknown[:5]} have no folder below {root} ({len(folders)} class folders)")
    index = {c: i for i, c in enumerate(classes)}
    not_files: list[dict] = []
    train = _class_images(root, classes, "train", not_files)
    if o.eval_root:
        evals = _class_images(Path(o.eval_root), classes, "eval", not_files)
        # half of each class to val, the other half (what assign_splits calls "train") to test
        halves = assign_splits([f"eval/{rel}" for _, rel in evals], 0.5, 0, o.seed,
                               strata={f"eval/{rel}": c for c, rel in evals})
        entries = [("train", c, rel, root, "train") for c, rel in train] + \
                  [("eval", c, rel, Path(o.eval_root), "val" if halves[f"eval/{rel}"] == "val" else "test")
                   for c, rel in evals]
    else:
        split_of = assign_splits([rel for _, rel in train], o.val, o.test, o.seed,
                                 strata=dict((r, c) for c, r in train))
        entries = [("train", c, rel, root, split_of[rel]) for c, rel in train]
    if not entries:
        raise DatakitError(f"no images (extensions .png .jpg .jpeg .bmp .tif .tiff) in the class folders of {root}")
    items = [ClassItem(f"{tree}/{rel}", str(base / rel), safe_key(f"{tree}_{rel.rsplit('.', 1)[0]}"), split,
                       index[c], c) for tree, c, rel, base, split in entries]
    jobs = [(f"{chunk[0].source}..{chunk[-1].source}", ClassJob(tuple(chunk), o.size, o.quality))
            for chunk in iter_chunks(items, CHUNK)]
    members = {"jpg": {"role": "image", "codec": "jpeg"}, "cls": {"role": "label", "codec": "ascii-int"}}
    config = {"converter": "class-folder", "eval_root_given": bool(o.eval_root), "classes_subset": bool(o.classes),
              "val": o.val, "test": o.test, "size": o.size, "quality": o.quality, "seed": o.seed,
              "split_by": "image", "samples_per_shard": o.samples_per_shard}
    builder = DatasetBuilder(o.out, kind="image-classification", members=members, classes=classes, config=config,
                             samples_per_shard=o.samples_per_shard, seed=o.seed, resume=o.resume,
                             progress=progress)
    builder.run(stage_class_images, jobs, check_workers(o.workers), what="checking images")
    return builder.assemble(rejects=not_files)


def stage_class_images(job: ClassJob, bin_path: Path) -> Staged:
    """Check each image; copy good JPEGs by reference, re-encode the rest (runs in a worker)."""
    from PIL import Image

    staged = Staged(job.items[0].source)
    staging = StagingFile(bin_path)
    try:
        for item in job.items:
            try:
                with Image.open(item.path) as im:
                    fmt, mode, (w, h) = im.format, im.mode, im.size
                    passthrough = job.size == 0 and fmt == "JPEG" and mode in ("RGB", "L")
                    if passthrough:
                        im.draft(mode, (max(1, w // 8), max(1, h // 8)))  # DCT-scaled decode: checks every block, fast
                        im.load()
                        ref = [item.path, 0, Path(item.path).stat().st_size]
                    else:
                        im = im.convert("RGB")
                        if job.size:
                            scale = job.size / min(w, h)
                            im = im.resize((max(1, round(w * scale)), max(1, round(h * scale))),
                                           Image.Resampling.BICUBIC)
                        buf = io.BytesIO()
                        im.save(buf, format="JPEG", quality=job.quality)
                        ref = staging.add(buf.getvalue())
            except Exception as exc:  # noqa: BLE001 - an unreadable file is a reject with its reason
                staged.rejects.append(stage_reject(item.source, "undecodable", f"{type(exc).__name__}: {exc}"))
                continue
            staged.rows.append({"key": item.key, "split": item.split, "label": item.label,
                                "label_index": item.label_index, "source": item.source, "width": w, "height": h,
                                "reencoded": not passthrough,
                                "_payload": {"jpg": ref, "cls": staging.add(str(item.label_index).encode())}})
    finally:
        staging.close()
    return staged
