"""Colour jitter and grayscale on float RGB tensors in [0, 1], as torchvision's functional ops compute them.

    from trainer.data.colour import jitter, grayscale
    v = jitter(v, brightness=1.3, contrast=0.7, saturation=1.5, hue=-0.1, order=(2, 0, 3, 1))   # (3, H, W)
    g = grayscale(v)                                                                              # (1, H, W)

tlx has no torchvision dependency (torch only), so the four adjustments of
`torchvision.transforms.ColorJitter` are written out here with torchvision's formulas: each
blends with a reference image and clamps to [0, 1] (brightness with black, contrast with the
mean gray level, saturation with the gray image), hue shifts H in HSV. `order` is the
permutation of (brightness, contrast, saturation, hue) drawn per sample, as ColorJitter
draws it per call.
"""
from __future__ import annotations

import torch

LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, as PIL and torchvision


def grayscale(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(-3)
    return (LUMA[0] * r + LUMA[1] * g + LUMA[2] * b).unsqueeze(-3)


def _blend(x: torch.Tensor, ref, factor: float) -> torch.Tensor:
    return (factor * x + (1.0 - factor) * ref).clamp(0.0, 1.0)


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(-3)
    maxc, minc = x.max(-3).values, x.min(-3).values
    flat = maxc == minc
    chroma = maxc - minc
    ones = torch.ones_like(maxc)
    s = chroma / torch.where(flat, ones, maxc)
    div = torch.where(flat, ones, chroma)
    rc, gc, bc = (maxc - r) / div, (maxc - g) / div, (maxc - b) / div
    h = ((maxc == r) * (bc - gc) + ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
         + ((maxc != g) & (maxc != r)) * (4.0 + gc - rc))
    h = torch.fmod(h / 6.0 + 1.0, 1.0)
    return torch.stack((h, s, maxc), -3)


def _hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    # the closed form of torchvision's six-sector table: channel n in (r, g, b) = (5, 3, 1) is
    # v - v * s * clamp(min(k, 4 - k), 0, 1) with k = (n + 6 h) mod 6; the same values (for h, s, v
    # in [0, 1]) in 8 tensor ops instead of ~40, which matters for small views on CPU workers
    h, s, v = x.unbind(-3)
    n = torch.tensor((5.0, 3.0, 1.0), dtype=x.dtype, device=x.device).view(3, 1, 1)
    k = torch.remainder(n + 6.0 * h.unsqueeze(-3), 6.0)
    return v.unsqueeze(-3) * (1.0 - s.unsqueeze(-3) * torch.minimum(k, 4.0 - k).clamp(0.0, 1.0))


def adjust_hue(x: torch.Tensor, shift: float) -> torch.Tensor:
    hsv = _rgb_to_hsv(x)
    hsv[..., 0, :, :] = torch.fmod(hsv[..., 0, :, :] + shift + 1.0, 1.0)
    return _hsv_to_rgb(hsv)


def jitter(x: torch.Tensor, brightness: float, contrast: float, saturation: float, hue: float,
           order=(0, 1, 2, 3)) -> torch.Tensor:
    """ColorJitter with fixed factors, applied in `order` (0 brightness, 1 contrast, 2 saturation, 3 hue)."""
    for op in order:
        if op == 0:
            x = _blend(x, 0.0, brightness)
        elif op == 1:
            x = _blend(x, grayscale(x).mean(), contrast)
        elif op == 2:
            x = _blend(x, grayscale(x), saturation)
        else:
            x = adjust_hue(x, hue)
    return x
