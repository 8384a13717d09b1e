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
    """A zstd frame of the array's raw little-endian C-order bytes (the manifest's `zstd` codec), with a
    content checksum that every decode verifies (a flipped byte is an error, not wrong pixels)."""
    import zstandard
    arr = np.ascontiguousarray(arr)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True).compress(arr.tobytes())


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
