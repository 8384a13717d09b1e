"""SimCLR's two-view augmentations for one-channel CT slices, drawn per sample from (seed, epoch, sample).

    from trainer.data.augment import AugmentConfig, normalize, draw_views, apply_view
    aug = AugmentConfig(image_size=256, blur_p=0.5)
    x = normalize(hu, aug)                                    # float32 [0, 1], (H, W)
    p = draw_views(seed=0, epoch=3, sample=12345, shape=x.shape, aug=aug)   # (2, PARAMS) float32
    v1 = apply_view(torch.from_numpy(x)[None], p[0], aug)     # (1, S, S), torch ops (the torch loader)

Both loaders draw the parameters with `draw_views` and apply them, the torch loader with
`apply_view` on CPU workers, the DALI loader with DALI operators (on the GPU). Drawing
them from a generator keyed by (seed, epoch, sample id) makes every view a pure
function of those three: independent of ranks, workers, prefetching and restarts, which
is what makes resume exact and both loaders comparable.

One view, in order (torchvision's SimCLR pipeline, per sample rather than per batch):
1. random resized crop: area 0.08-1 of the slice, aspect 3/4-4/3 (torchvision's
   sampling, with its 10 tries and centre-crop fallback), resized to image_size;
2. horizontal flip, p = 0.5;
3. with p = 0.8: brightness b and contrast c, each uniform in [1 - 0.8, 1 + 0.8]:
   out = b * (c * x + (1 - c) * mean(x)), clamped to [0, 1] once at the end;
4. Gaussian blur with p = `blur_p` (0 in the paper recipe, 0.5 in simclr), sigma
   uniform in [0.1, 2] pixels, kernel ~10% of image_size (odd).
Hue, saturation and random grayscale leave a slice replicated to three gray channels
unchanged (its saturation is 0, its hue undefined, its grayscale itself), so they are
not computed for CT.

RGB images (`rgb=True`: the jpg datasets of `tlx convert class-folder` / `image-folder`) get
the study's full set instead of step 3: with p = 0.8 colour jitter (brightness, contrast,
saturation 0.8, hue 0.2) in a random order drawn per sample, with torchvision's formulas
(trainer/data/colour.py: clamped after each op); then grayscale with p = 0.2; then step 4.
The extra parameters are drawn after the CT ones, so a CT view is unchanged by them.

Normalisation to [0, 1] comes before the crop: for CT `minmax` (per slice; a constant slice
becomes all zeros instead of dividing by zero) or `hu` (a fixed window, clipped); for RGB
uint8 / 255. `input_scale` is what the encoder then sees: `unit` ([0, 1], as in the study)
or `imagenet` (minus ImageNet's mean, over its std, per channel; a CT view replicated to 3
channels first).

"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from trainer.errors import TrainerError

NORMALIZE = ("minmax", "hu")
INPUT_SCALES = ("unit", "imagenet")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# Layout of one view's parameter vector (ORDER..ORDER+3: the jitter's op order, RGB only).
TOP, LEFT, BOTTOM, RIGHT, FLIP, BRIGHTNESS, CONTRAST, SIGMA, SATURATION, HUE, GRAY, ORDER = range(12)
PARAMS = ORDER + 4
NO_BLUR_SIGMA = 1e-3  # a Gaussian this narrow is the identity (DALI wants a sigma for every sample)


@dataclass(frozen=True)
class AugmentConfig:
    image_size: int = 256
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.8
    contrast: float = 0.8
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    normalize: str = "minmax"
    window: tuple[float, float] = (-1024.0, 3072.0)
    rgb: bool = False                 # the study's RGB set (colour jitter, grayscale); set per dataset by the loader
    saturation: float = 0.8
    hue: float = 0.2
    gray_p: float = 0.2
    input_scale: str = "unit"

    def __post_init__(self):
        if self.normalize not in NORMALIZE:
            raise TrainerError(f"--normalize {self.normalize!r} is not one of {', '.join(NORMALIZE)}")
        if self.input_scale not in INPUT_SCALES:
            raise TrainerError(f"--input-scale {self.input_scale!r} is not one of {', '.join(INPUT_SCALES)}")
        if not self.window[1] > self.window[0]:
            raise TrainerError(f"--window {self.window[0]:g} {self.window[1]:g}: the upper bound must exceed the lower")

    @property
    def blur_kernel(self) -> int:
        """Odd kernel size, about 10% of the image size (SimCLR)."""
        return max(3, int(0.1 * self.image_size) // 2 * 2 + 1)


def to_unit(pixels: np.ndarray, aug: AugmentConfig) -> np.ndarray:
    """A decoded image member as float32 (C, H, W) in [0, 1]: CT (H, W) int16 -> (1, H, W) by `normalize`;
    a JPEG (uint8, (H, W, 3) or gray (H, W)) / 255, replicated to 3 channels when `aug.rgb`."""
    if pixels.dtype != np.uint8:
        return normalize(pixels, aug)[None]
    x = (pixels.astype(np.float32) / 255.0)
    x = x[None] if x.ndim == 2 else x.transpose(2, 0, 1)
    if aug.rgb and x.shape[0] == 1:
        x = np.repeat(x, 3, 0)
    if x.shape[0] not in (1, 3):
        raise TrainerError(f"an image has {x.shape[0]} channels; SimCLR takes gray or RGB")
    return np.ascontiguousarray(x)


def normalize(hu: np.ndarray, aug: AugmentConfig) -> np.ndarray:
    x = hu.astype(np.float32)
    if aug.normalize == "hu":
        lo, hi = aug.window
        return np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    lo, hi = float(x.min()), float(x.max())
    return (x - lo) / max(hi - lo, 1e-6)  # constant slice -> zeros


def _crop_box(rng: np.random.Generator, h: int, w: int, aug: AugmentConfig) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params: (top, left, height, width)."""
    area = h * w
    log_lo, log_hi = math.log(aug.crop_ratio[0]), math.log(aug.crop_ratio[1])
    for _ in range(10):
        target = area * rng.uniform(*aug.crop_scale)
        ratio = math.exp(rng.uniform(log_lo, log_hi))
        cw, ch = int(round(math.sqrt(target * ratio))), int(round(math.sqrt(target / ratio)))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    in_ratio = w / h
    if in_ratio < aug.crop_ratio[0]:
        cw, ch = w, int(round(w / aug.crop_ratio[0]))
    elif in_ratio > aug.crop_ratio[1]:
        ch, cw = h, int(round(h * aug.crop_ratio[1]))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def draw_view(rng: np.random.Generator, shape: tuple[int, int], aug: AugmentConfig) -> np.ndarray:
    top, left, ch, cw = _crop_box(rng, shape[0], shape[1], aug)
    p = np.zeros(PARAMS, np.float32)
    p[[TOP, LEFT, BOTTOM, RIGHT]] = top, left, top + ch, left + cw
    p[FLIP] = rng.random() < aug.flip_p
    jitter = rng.random() < aug.jitter_p
    b = rng.uniform(max(0.0, 1 - aug.brightness), 1 + aug.brightness)
    c = rng.uniform(max(0.0, 1 - aug.contrast), 1 + aug.contrast)
    p[BRIGHTNESS], p[CONTRAST] = (b, c) if jitter else (1.0, 1.0)
    blur = rng.random() < aug.blur_p
    sigma = rng.uniform(*aug.blur_sigma)
    p[SIGMA] = sigma if blur else 0.0
    p[SATURATION], p[ORDER:ORDER + 4] = 1.0, (0, 1, 2, 3)
    if aug.rgb:  # drawn after the CT parameters, which stay what they were
        s = rng.uniform(max(0.0, 1 - aug.saturation), 1 + aug.saturation)
        h = rng.uniform(-aug.hue, aug.hue)
        order = rng.permutation(4)
        if jitter:
            p[SATURATION], p[HUE], p[ORDER:ORDER + 4] = s, h, order
        p[GRAY] = rng.random() < aug.gray_p
    return p


def draw_views(seed: int, epoch: int, sample: int, shape: tuple[int, int], aug: AugmentConfig) -> np.ndarray:
    """The two views' parameters of one sample in one epoch: (2, PARAMS) float32."""
    rng = np.random.default_rng([seed, epoch, sample])
    return np.stack([draw_view(rng, shape, aug), draw_view(rng, shape, aug)])


# The torch side imports torch lazily: DALI's worker processes import this module for the
# parameters only, and importing torch in each of them would cost seconds at every start.

def gaussian_kernel(sigma: float, size: int):
    import torch
    x = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def apply_view(x, p: np.ndarray, aug: AugmentConfig):
    """One view of a normalised slice x (torch, (1, H, W)) with torch ops -> (1, S, S)."""
    import torch.nn.functional as F
    top, left, bottom, right = (int(v) for v in p[[TOP, LEFT, BOTTOM, RIGHT]])
    s = aug.image_size
    v = F.interpolate(x[None, :, top:bottom, left:right], size=(s, s), mode="bilinear",
                      align_corners=False, antialias=True)[0]
    if p[FLIP]:
        v = v.flip(-1)
    b, c = float(p[BRIGHTNESS]), float(p[CONTRAST])
    if aug.rgb:
        from trainer.data.colour import grayscale, jitter
        if (b, c, p[SATURATION], p[HUE]) != (1.0, 1.0, 1.0, 0.0):
            v = jitter(v, b, c, float(p[SATURATION]), float(p[HUE]), [int(o) for o in p[ORDER:ORDER + 4]])
        if p[GRAY]:
            v = grayscale(v).expand(3, -1, -1)
    elif (b, c) != (1.0, 1.0):
        v = (b * (c * v + (1 - c) * v.mean())).clamp_(0.0, 1.0)
    if p[SIGMA] > 0:
        k = gaussian_kernel(float(p[SIGMA]), aug.blur_kernel)
        pad = aug.blur_kernel // 2
        n = v.shape[0]
        v = F.pad(v[None], (pad, pad, pad, pad), mode="reflect")
        v = F.conv2d(F.conv2d(v, k.view(1, 1, 1, -1).repeat(n, 1, 1, 1), groups=n),
                     k.view(1, 1, -1, 1).repeat(n, 1, 1, 1), groups=n)[0]
    return scale_input(v, aug)


def scale_input(v, aug: AugmentConfig):
    """`input_scale`: [0, 1] as is (unit), or ImageNet's mean/std per channel (a 1-channel view made 3 first)."""
    if aug.input_scale == "unit":
        return v
    import torch
    mean = torch.tensor(IMAGENET_MEAN, dtype=v.dtype, device=v.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=v.dtype, device=v.device).view(3, 1, 1)
    return (v.expand(3, *v.shape[1:]) - mean) / std
