"""Pixel operations on one CT slice in Hounsfield units (float32 in, as `read_hu` returns).

    img = to_int16(resize_area(hu, (256, 256)))
    cov = body_coverage(hu)

resize_area: area (box) resampling to any (H, W). A non-square image is first padded
    to a square with air (-1024 HU), centred, so anatomy keeps its aspect ratio and
    the padding looks like what surrounds a patient anyway. Pixel spacing is not
    made isotropic: the source spacing is recorded in slices.parquet instead.
    Shrinking by an integer factor (512 -> 256) is the exact mean of each block;
    other factors weight input pixels by their overlap with the output pixel
    (PIL's BOX filter), which is what "area" resampling means.

body_coverage: the fraction of the image inside the patient's body, in [0, 1]:
    1. take every k-th pixel in both directions, k the smallest step that leaves at
       most 128 px on the longer side (512 -> every 4th): the measure is a fraction, so
       sampling hardly changes it and makes it cheap (it runs on every slice);
    2. body = pixels above -500 HU (between fat, about -100, and lung, about -850);
    3. keep the largest 4-connected region of body (drops the couch, cables, noise);
    4. fill its holes: background regions (8-connected) that do not touch the image
       border are inside the body (lungs, bowel gas, the skull's inside in a thin
       slab) and count as body;
    5. coverage = body pixels / all pixels.
"""
from __future__ import annotations

import numpy as np

AIR_HU = -1024.0
BODY_THRESHOLD_HU = -500.0
COVERAGE_MAX_SIDE = 128

_EIGHT = np.ones((3, 3), dtype=bool)


def _box_resize(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    h, w = size
    if img.shape == (h, w):
        return img.astype(np.float32, copy=True)
    # PIL's "F" mode is float32; its BOX filter is area averaging (exact block mean for integer factors).
    return np.asarray(Image.fromarray(np.ascontiguousarray(img, dtype=np.float32), mode="F")
                      .resize((w, h), Image.Resampling.BOX), dtype=np.float32)


def pad_square(img: np.ndarray, fill: float = AIR_HU) -> np.ndarray:
    """Pad the shorter side with `fill`, centred (the extra pixel of an odd difference goes last)."""
    h, w = img.shape
    if h == w:
        return img
    n = max(h, w)
    top, left = (n - h) // 2, (n - w) // 2
    out = np.full((n, n), fill, dtype=np.float32)
    out[top:top + h, left:left + w] = img
    return out


def resize_area(hu: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Area-resample a 2-D HU image to `size` = (H, W), after padding it to a square with air."""
    if hu.ndim != 2:
        raise ValueError(f"resize_area wants a 2-D image, got shape {hu.shape}")
    h, w = (int(s) for s in size)
    if h < 1 or w < 1:
        raise ValueError(f"resize_area size must be positive, got {size}")
    return _box_resize(pad_square(np.asarray(hu, dtype=np.float32)), (h, w))


def body_coverage(hu: np.ndarray) -> float:
    """Fraction of the image inside the body (definition in the module docstring)."""
    from scipy import ndimage

    if hu.ndim != 2 or hu.size == 0:
        raise ValueError(f"body_coverage wants a non-empty 2-D image, got shape {hu.shape}")
    step = -(-max(hu.shape) // COVERAGE_MAX_SIDE)
    body = hu[::step, ::step] > BODY_THRESHOLD_HU
    labels, n = ndimage.label(body)
    if n == 0:
        return 0.0
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    body = labels == int(sizes.argmax())
    # Holes: background components (8-connected, so a diagonal gap still leads outside) off the border.
    bg, nbg = ndimage.label(~body, structure=_EIGHT)
    if nbg:
        border = np.unique(np.concatenate([bg[0], bg[-1], bg[:, 0], bg[:, -1]]))
        inside = np.ones(nbg + 1, dtype=bool)
        inside[border] = False
        inside[0] = False
        body |= inside[bg]
    return float(body.mean())


def to_int16(img: np.ndarray) -> np.ndarray:
    """Round half to even and clip to the int16 range (HU of real CT fits: -1024..3071, metal up to ~30000)."""
    return np.clip(np.rint(img), -32768, 32767).astype(np.int16)
