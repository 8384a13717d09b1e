"""A small synthetic natural-image domain: coloured shapes on textured backgrounds, as JPEG in class folders.

    from datakit.synth.natural import synth_natural, CLASSES
    summary = synth_natural("natural/", per_class=40, size=64, seed=0)
    # natural/<class>/<class>-0000.jpg ...; then: tlx convert class-folder --root natural --out natural-ds

Why: tests and the demo need a natural (RGB) domain next to the synthetic CT cohort, with no
downloads. Each of the 10 classes is a foreground *shape* (disc, square, triangle, ring,
cross, stripes, checkerboard, dots, star, crescent) in a class-typical hue, drawn at a random
position, scale and rotation over a random background (a flat colour, a gradient or a noise
texture in any hue), so colour alone does not give the class away and the shape has to be
learned. Every image is a pure function of (seed, class, index): the same seed writes
byte-identical files (PIL's JPEG encoder at a fixed quality, no metadata).
"""
from __future__ import annotations

import colorsys
import json
import math
from pathlib import Path

import numpy as np

from datakit.errors import DatakitError
from tlxcore.progress import Progress, Tick, silent

CLASSES = ("disc", "square", "triangle", "ring", "cross", "stripes", "checker", "dots", "star", "crescent")
# the class's typical hue (0-1); each image varies it by up to +-0.08
CLASS_HUE = {c: i / len(CLASSES) for i, c in enumerate(CLASSES)}


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size, 3) float in [0, 1]: a flat colour, a linear gradient or a blurred noise texture."""
    kind = rng.integers(3)
    c1 = np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.1, 0.6), rng.uniform(0.3, 0.9)))
    c2 = np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.1, 0.6), rng.uniform(0.3, 0.9)))
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    if kind == 0:
        t = np.zeros((size, size))
    elif kind == 1:
        a = rng.uniform(0, 2 * math.pi)
        t = (np.cos(a) * xx + np.sin(a) * yy)
        t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
    else:
        coarse = rng.random((size // 8 + 2, size // 8 + 2))
        t = np.kron(coarse, np.ones((8, 8)))[:size, :size]
    return c1 * (1 - t[..., None]) + c2 * t[..., None]


def _mask(shape: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """Boolean (size, size) mask of the class's shape at a random centre, scale and rotation."""
    r = rng.uniform(0.22, 0.38) * size
    cy, cx = rng.uniform(r, size - r, 2)
    rot = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    dy, dx = yy - cy, xx - cx
    u, v = dx * math.cos(rot) + dy * math.sin(rot), -dx * math.sin(rot) + dy * math.cos(rot)
    d, ang = np.hypot(u, v), np.arctan2(v, u)
    period = rng.uniform(0.25, 0.4) * r
    masks = {
        "disc": d < r,
        "square": (abs(u) < 0.8 * r) & (abs(v) < 0.8 * r),
        "triangle": (v < 0.5 * r) & (v > -r + 1.8 * abs(u)),
        "ring": (d < r) & (d > 0.6 * r),
        "cross": ((abs(u) < 0.25 * r) | (abs(v) < 0.25 * r)) & (abs(u) < r) & (abs(v) < r),
        "stripes": (d < r) & (np.mod(u, 2 * period) < period),
        "checker": (abs(u) < r) & (abs(v) < r) & ((np.floor(u / period) + np.floor(v / period)) % 2 == 0),
        "dots": (d < r) & (np.hypot(np.mod(u, 2 * period) - period, np.mod(v, 2 * period) - period) < 0.5 * period),
        "star": d < r * (0.55 + 0.45 * np.cos(5 * ang)),
        "crescent": (d < r) & (np.hypot(u - 0.45 * r, v) > 0.8 * r),
    }
    return masks[shape]


def natural_image(cls: str, index: int, size: int, seed: int) -> np.ndarray:
    """One image, uint8 (size, size, 3), a pure function of its arguments."""
    rng = np.random.default_rng([seed, CLASSES.index(cls), index])
    img = _background(rng, size)
    hue = (CLASS_HUE[cls] + rng.uniform(-0.08, 0.08)) % 1.0
    fg = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.6, 1.0), rng.uniform(0.6, 1.0)))
    img = np.where(_mask(cls, rng, size)[..., None], fg, img)
    img = img + rng.normal(0, 0.03, img.shape)   # sensor noise
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def synth_natural(out: str | Path, per_class: int = 40, size: int = 64, seed: int = 0, quality: int = 90,
                  progress: Progress = silent) -> dict:
    """Write out/<class>/<class>-<i>.jpg for the 10 classes and out/natural.json (what was written)."""
    from PIL import Image

    out = Path(out)
    if per_class < 1 or size < 16:
        raise DatakitError(f"--per-class {per_class} / --matrix {size}: need at least 1 image per class and 16 px")
    if out.exists() and any(out.iterdir()):
        raise DatakitError(f"--out {out} is not empty; give a new or empty folder")
    total = per_class * len(CLASSES)
    progress(Tick("synth", 0, total, "images"))
    for k, cls in enumerate(CLASSES):
        (out / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(natural_image(cls, i, size, seed)).save(out / cls / f"{cls}-{i:04d}.jpg", quality=quality)
        progress(Tick("synth", (k + 1) * per_class, total, "images"))
    summary = {"kind": "natural", "classes": list(CLASSES), "per_class": per_class, "size": size, "seed": seed,
               "quality": quality, "files": per_class * len(CLASSES)}
    (out / "natural.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary
