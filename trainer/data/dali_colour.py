"""trainer/data/colour.py's colour jitter and grayscale as DALI graph nodes (GPU, or DALI's CPU-only mode).

    v = dali_rgb_jitter(v, p, on_dev)     # v: float HWC in [0, 1]; p: a view's parameter vector (CPU node)

Same formulas as the torch side (torchvision's): blend and clamp per op, hue in HSV. The
op order is drawn per sample, and a DALI graph is fixed, so each of the 4 positions
computes all 4 ops and keeps the one the sample's order names (a one-hot weighted sum:
exact, 4x the arithmetic, cheap next to the decode on a GPU). Imported only inside a
DALI pipeline definition.
"""
from __future__ import annotations

import nvidia.dali.math as dmath
from nvidia.dali import fn

from trainer.data.augment import BRIGHTNESS, CONTRAST, GRAY, HUE, ORDER, SATURATION
from trainer.data.colour import LUMA


def _gray(v):
    return LUMA[0] * v[:, :, 0] + LUMA[1] * v[:, :, 1] + LUMA[2] * v[:, :, 2]  # HW


def _blend(v, ref, factor):
    return dmath.clamp(factor * v + (1.0 - factor) * ref, 0.0, 1.0)


def _frac(x):
    return x - dmath.floor(x)


def _hue(v, shift):
    r, g, b = v[:, :, 0], v[:, :, 1], v[:, :, 2]
    maxc, minc = dmath.max(dmath.max(r, g), b), dmath.min(dmath.min(r, g), b)
    flat = maxc == minc
    chroma = maxc - minc
    s = chroma / (flat + (1 - flat) * maxc)
    div = flat + (1 - flat) * chroma
    rc, gc, bc = (maxc - r) / div, (maxc - g) / div, (maxc - b) / div
    is_r, is_g = maxc == r, (maxc == g) & (maxc != r)
    is_b = (maxc != g) & (maxc != r)
    h = _frac(is_r * (bc - gc) / 6.0 + is_g * (2.0 + rc - bc) / 6.0 + is_b * (4.0 + gc - rc) / 6.0 + 1.0)
    h = _frac(h + shift + 1.0)
    i = dmath.floor(h * 6.0)
    f = h * 6.0 - i
    i = i - 6.0 * dmath.floor(i / 6.0)
    val = maxc
    p = dmath.clamp(val * (1.0 - s), 0.0, 1.0)
    q = dmath.clamp(val * (1.0 - s * f), 0.0, 1.0)
    t = dmath.clamp(val * (1.0 - s * (1.0 - f)), 0.0, 1.0)
    sector = [i == k for k in range(6)]

    def pick(*vals):
        out = sector[0] * vals[0]
        for k in range(1, 6):
            out = out + sector[k] * vals[k]
        return out
    return fn.stack(pick(val, q, p, p, t, val), pick(t, val, val, q, p, p), pick(p, p, t, val, val, q), axis=2)


def dali_rgb_jitter(v, p, on_dev):
    """Colour jitter in the sample's op order, then grayscale where drawn (see the module docstring)."""
    b, c, s, h = (on_dev(p[k]) for k in (BRIGHTNESS, CONTRAST, SATURATION, HUE))
    for slot in range(4):
        op = on_dev(p[ORDER + slot])
        gray = fn.expand_dims(_gray(v), axes=[2])
        v = ((op == 0) * _blend(v, 0.0, b) + (op == 1) * _blend(v, fn.reductions.mean(gray), c)
             + (op == 2) * _blend(v, gray, s) + (op == 3) * _hue(v, h))
    g = on_dev(p[GRAY])
    return g * fn.expand_dims(_gray(v), axes=[2]) + (1 - g) * v
