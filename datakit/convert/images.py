"""Pixel helpers shared by the converters: finding and loading images, pad + resize
(images and masks), encoding.

Images are padded to a square before resizing so anatomy keeps its aspect ratio
(the fill is the image's minimum: air for CT, background for MRI); masks are padded
with background and resized with nearest neighbour so class indices stay exact.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

ZSTD_LEVEL = 3


def _pad_square(img: np.ndarray, fill) -> np.ndarray:
    """Pad the first two axes to a square with `fill`, centred."""
    h, w = img.shape[:2]
    if h == w:
        return img
    n = max(h, w)
    out = np.full((n, n) + img.shape[2:], fill, dtype=img.dtype)
    top, left = (n - h) // 2, (n - w) // 2
    out[top:top + h, left:left + w] = img
    return out


def resize_image(img: np.ndarray, size: int, fill: float) -> np.ndarray:
    """float32 [H, W] -> [size, size]: area average when shrinking, bilinear when enlarging."""
    img = _pad_square(np.asarray(img, dtype=np.float32), fill)
    if img.shape[0] == size:
        return img
    method = Image.Resampling.BOX if size < img.shape[0] else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(img).resize((size, size), method), dtype=np.float32)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """uint8 class indices [H, W] -> [size, size], nearest neighbour."""
    mask = _pad_square(np.asarray(mask, dtype=np.uint8), 0)
    if mask.shape[0] == size:
        return mask
    return np.asarray(Image.fromarray(mask).resize((size, size), Image.Resampling.NEAREST))


def zstd_bytes(arr: np.ndarray) -> bytes:
    """A zstd frame of the array's raw little-endian C-order bytes (the manifest's `zstd` codec)."""
    import zstandard
    arr = np.ascontiguousarray(arr)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(arr.tobytes())


IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def list_images(root: Path) -> tuple[list[str], dict[str, tuple[str, str]]]:
    """Image files below `root` (by extension, case-insensitive), as sorted POSIX paths relative to
    it; and the entries named like images that are no regular file, with (code, reason) as
    datakit.walk reports them (`not-a-file`: a FIFO, which would block its reader forever, a socket,
    a device; `unreadable`: a dangling link)."""
    from datakit.walk import walk_files

    files, problems = [], {}
    for found in walk_files(root):
        if found.path.lower().endswith(IMAGE_EXTS):
            if found.problem is None:
                files.append(found.path)
            else:
                problems[found.path] = found.problem
    return sorted(files), problems


def load_uint8(path: Path | str, channels: int) -> np.ndarray:
    """An image file as uint8 [H, W] (channels=1) or [H, W, 3]. 16-bit and float images are
    scaled by their own minimum and maximum (8-bit is what the image members hold)."""
    with Image.open(path) as im:
        if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
            arr = np.asarray(im, dtype=np.float64)
            lo, hi = float(arr.min()), float(arr.max())
            arr = np.zeros_like(arr) if hi == lo else (arr - lo) * (255.0 / (hi - lo))
            im = Image.fromarray(np.round(arr).astype(np.uint8))
        return np.asarray(im.convert("L" if channels == 1 else "RGB"))


def resize_uint8(img: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W] or [H, W, C] -> padded to a square with black, area-resized to [size, size(, C)]."""
    img = _pad_square(img, 0)
    if img.shape[0] == size:
        return img
    method = Image.Resampling.BOX if size < img.shape[0] else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(img).resize((size, size), method))


def check_image_options(size: int, channels: int) -> None:
    """--size and --channels of the converters that store 8-bit images."""
    from datakit.errors import DatakitError

    if channels not in (1, 3):
        raise DatakitError(f"--channels {channels} is not one of: 1, 3")
    if size < 8:
        raise DatakitError(f"--size {size} must be at least 8 pixels")


def image_member(size: int, channels: int) -> dict:
    """The manifest's `img.zst` entry of an 8-bit image member."""
    shape = [size, size] if channels == 1 else [3, size, size]
    return {"role": "image", "codec": "zstd", "dtype": "uint8", "byteorder": "little", "shape": shape}


def channel_first(img: np.ndarray) -> np.ndarray:
    """[H, W, 3] -> [3, H, W] (the manifest's channel-first shape); [H, W] unchanged."""
    return img.transpose(2, 0, 1) if img.ndim == 3 else img


def encoded_image(path: Path | str, channels: int, size: int) -> tuple[bytes, int, int]:
    """An image file as an `img.zst` payload (8-bit, padded square, resized, channel-first), and the
    source's width and height. Raises what PIL raises for a file it cannot decode."""
    img = load_uint8(path, channels)
    h, w = img.shape[:2]
    return zstd_bytes(channel_first(resize_uint8(img, size))), w, h


def match_files(root: Path, candidates: list[tuple[str, ...]], who: str = "--labels"
                ) -> tuple[list[str | None], list[str], dict]:
    """Which image file below `root` each entry names: its first candidate that is a path below the
    root, else the last candidate's file name if exactly one file anywhere below has it (ChestX-ray8
    spreads its images over images_001..012/). Returns the matches (None: no such file), the image
    files nothing names, and the entries named like images that are no regular file (list_images).
    A name that matches several files, or one file named by two entries, is a DatakitError."""
    from datakit.errors import DatakitError

    files, problems = list_images(root)
    by_rel = set(files)
    by_name: dict[str, list[str]] = {}
    for rel in files:
        by_name.setdefault(rel.rsplit("/", 1)[-1], []).append(rel)
    matched: list[str | None] = []
    for tries in candidates:
        rel = next((t for t in tries if t in by_rel), None)
        if rel is None:
            name = tries[-1].rsplit("/", 1)[-1]
            hits = by_name.get(name, [])
            if len(hits) > 1:
                raise DatakitError(f"image {name!r} of {who} matches {len(hits)} files below {root} "
                                   f"({', '.join(hits[:3])}); give paths relative to the root in it")
            rel = hits[0] if hits else None
        matched.append(rel)
    named_by: dict[str, list[str]] = {}
    for tries, rel in zip(candidates, matched):
        if rel is not None:
            named_by.setdefault(rel, []).append(tries[0])
    twice = sorted((names, rel) for rel, names in named_by.items() if len(names) > 1)
    if twice:   # one image would be two samples, perhaps of two patients and in two splits
        raise DatakitError(f"{who} names {len(twice)} image(s) twice under different names, e.g. "
                           f"{' and '.join(map(repr, twice[0][0]))} are both {twice[0][1]}; keep one row each")
    return matched, [rel for rel in files if rel not in named_by], problems
