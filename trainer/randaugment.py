"""RandAugment (Cubuk et al. 2020) on float tensors, per sample, deterministic from a seed.

    from trainer.randaugment import draw_randaugment, apply_randaugment
    params = draw_randaugment(np.random.default_rng([seed, epoch, sample]), num_ops=2)
    img = apply_randaugment(img, params, magnitude=9)       # img: [C, H, W] float in [0, 1]

Each sample draws `num_ops` operations uniformly (with replacement) from OPS and, for the
signed ones, a sign; the shared `magnitude` M in 0..30 sets each strength as
torchvision's RandAugment does (31 bins): shear 0.3 M/30, translate 150/331 M/30 of the
side, rotate 30 M/30 degrees, brightness/color/contrast/sharpness factor 1 +- 0.9 M/30,
posterize 8 - 4 M/30 bits (floored), solarize threshold 1 - M/30. Geometric ops use
nearest sampling and fill 0 outside, around the image centre. Images are [0, 1] floats
(8-bit levels where an op needs them: posterize, equalize); every op clamps to [0, 1].
Drawing from a generator keyed by (seed, epoch, sample), as trainer/data/augment.py
does, makes the result independent of workers, ranks and restarts.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

OPS = ("identity", "shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness", "color",
       "contrast", "sharpness", "posterize", "solarize", "autocontrast", "equalize")
SIGNED = {"shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness", "color", "contrast",
          "sharpness"}
MAX_MAGNITUDE = 30


def draw_randaugment(rng: np.random.Generator, num_ops: int = 2) -> list[tuple[str, float]]:
    """[(op, sign)] for one sample."""
    ops = rng.integers(0, len(OPS), size=num_ops)
    signs = rng.choice([-1.0, 1.0], size=num_ops)
    return [(OPS[i], float(s) if OPS[i] in SIGNED else 1.0) for i, s in zip(ops, signs)]


def _affine(img: torch.Tensor, matrix: list[list[float]]) -> torch.Tensor:
    """Sample img at matrix @ (x, y, 1) in pixel offsets from the centre (inverse mapping)."""
    _, h, w = img.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64) - (h - 1) / 2,
                            torch.arange(w, dtype=torch.float64) - (w - 1) / 2, indexing="ij")
    (a, b, c), (d, e, f) = matrix
    src_x, src_y = a * xs + b * ys + c, d * xs + e * ys + f
    # grid_sample's normalised coordinates (align_corners=True: -1 and 1 are the corner pixel centres)
    grid = torch.stack([src_x / max((w - 1) / 2, 1e-12), src_y / max((h - 1) / 2, 1e-12)], dim=-1)
    return F.grid_sample(img[None], grid[None].to(img.dtype), mode="nearest", padding_mode="zeros",
                         align_corners=True)[0]


def _blend(img: torch.Tensor, other: torch.Tensor, factor: float) -> torch.Tensor:
    return (other + factor * (img - other)).clamp(0, 1)


def _gray(img: torch.Tensor) -> torch.Tensor:
    if img.shape[0] == 1:
        return img
    return (0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2])[None].expand_as(img)


def _sharpen_degenerate(img: torch.Tensor) -> torch.Tensor:
    """PIL's SMOOTH kernel ([1 1 1; 1 5 1; 1 1 1] / 13) inside, border pixels unchanged."""
    kernel = torch.ones(3, 3, dtype=img.dtype)
    kernel[1, 1] = 5.0
    kernel = (kernel / 13).expand(img.shape[0], 1, 3, 3)
    out = img.clone()
    out[:, 1:-1, 1:-1] = F.conv2d(img[None], kernel, groups=img.shape[0])[0]
    return out


def _equalize(img: torch.Tensor) -> torch.Tensor:
    """PIL's ImageOps.equalize per channel on 8-bit levels."""
    levels = (img * 255).round().long().clamp(0, 255)
    out = torch.empty_like(img)
    for c in range(img.shape[0]):
        hist = torch.bincount(levels[c].flatten(), minlength=256)
        nonzero = hist[hist > 0]
        step = int((hist.sum() - nonzero[-1]) // 255)
        if step == 0:
            out[c] = img[c]
            continue
        lut = ((torch.cumsum(hist, 0) - hist + step // 2) // step).clamp(max=255)
        out[c] = lut[levels[c]].to(img.dtype) / 255
    return out


def apply_op(img: torch.Tensor, op: str, sign: float, magnitude: float) -> torch.Tensor:
    """One op on one image [C, H, W]; `magnitude` in 0..30."""
    frac = magnitude / MAX_MAGNITUDE
    _, h, w = img.shape
    if op == "identity":
        return img
    if op in ("shear_x", "shear_y"):
        s = sign * 0.3 * frac
        return _affine(img, [[1, s, 0], [0, 1, 0]] if op == "shear_x" else [[1, 0, 0], [s, 1, 0]])
    if op in ("translate_x", "translate_y"):
        t = sign * round(150 / 331 * frac * (w if op == "translate_x" else h))
        return _affine(img, [[1, 0, -t], [0, 1, 0]] if op == "translate_x" else [[1, 0, 0], [0, 1, -t]])
    if op == "rotate":
        a = math.radians(sign * 30 * frac)   # counter-clockwise on screen (y down)
        return _affine(img, [[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0]])
    factor = 1.0 + sign * 0.9 * frac
    if op == "brightness":
        return _blend(img, torch.zeros_like(img), factor)
    if op == "color":
        return _blend(img, _gray(img), factor)
    if op == "contrast":
        return _blend(img, torch.full_like(img, float(_gray(img)[0].mean())), factor)
    if op == "sharpness":
        return _blend(img, _sharpen_degenerate(img), factor)
    if op == "posterize":
        bits = 8 - int(4 * frac)
        levels = (img * 255).round().long().clamp(0, 255) & (0xFF << (8 - bits) & 0xFF)
        return levels.to(img.dtype) / 255
    if op == "solarize":
        return torch.where(img >= 1.0 - frac, 1.0 - img, img)
    if op == "autocontrast":
        lo, hi = img.amin(dim=(1, 2), keepdim=True), img.amax(dim=(1, 2), keepdim=True)
        return torch.where(hi > lo, (img - lo) / (hi - lo).clamp_min(1e-12), img)
    if op == "equalize":
        return _equalize(img)
    raise ValueError(f"RandAugment op {op!r} is not one of {', '.join(OPS)}")


def apply_randaugment(img: torch.Tensor, params: list[tuple[str, float]], magnitude: float) -> torch.Tensor:
    """The drawn ops in order on one image [C, H, W]."""
    if not 0 <= magnitude <= MAX_MAGNITUDE:
        raise ValueError(f"RandAugment magnitude must be in 0..{MAX_MAGNITUDE}, got {magnitude}")
    for op, sign in params:
        img = apply_op(img, op, sign, magnitude)
    return img
