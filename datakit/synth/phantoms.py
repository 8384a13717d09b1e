"""Anatomy-like CT phantoms in Hounsfield units: ellipses of skin, fat, muscle, organs, lung and bone.

    img = phantom("thorax", t=0.4, shape=(512, 512), spacing=0.8, body=Body.random(rng))

`t` in [0, 1] runs along the scanned range (feet to head is not implied: each region
defines its own direction), so shapes change smoothly from slice to slice, the way a
real volume does: lungs grow and shrink, the liver appears and fades, the skull
closes towards the vertex. Coordinates are millimetres from the image centre, so
the same anatomy comes out at any matrix size. Noise is added by the caller.

Nothing here claims anatomical accuracy; the phantoms give the pipeline images
with realistic HU ranges, body outlines, internal air (so coverage must fill holes),
a couch (so coverage must ignore it) and slices near the ends of a scan with little
body in them (so the coverage filter has something to remove).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

AIR, LUNG, FAT, WATER, CSF, BRAIN, MUSCLE, BLOOD, LIVER, KIDNEY = -1000, -850, -100, 0, 8, 35, 45, 40, 60, 30
TRABECULAR, CORTICAL, COUCH = 250, 1100, -300

REGIONS = ("head", "thorax", "abdomen", "pelvis", "extremities", "spine", "trunk")


@dataclass(frozen=True)
class Body:
    """Per-patient proportions, so patients differ from one another."""
    width: float = 1.0      # lateral scale
    depth: float = 1.0      # antero-posterior scale
    fat: float = 15.0       # subcutaneous fat, mm
    shift_x: float = 0.0    # mm off centre
    shift_y: float = 0.0

    @staticmethod
    def random(rng: np.random.Generator) -> "Body":
        return Body(width=float(rng.uniform(0.85, 1.15)), depth=float(rng.uniform(0.85, 1.15)),
                    fat=float(rng.uniform(6, 30)), shift_x=float(rng.uniform(-10, 10)),
                    shift_y=float(rng.uniform(-10, 10)))


class _Canvas:
    """An image in HU with painting of ellipses in millimetre coordinates."""

    def __init__(self, shape: tuple[int, int], spacing: float, body: Body):
        rows, cols = shape
        self.y = ((np.arange(rows, dtype=np.float32) - (rows - 1) / 2) * spacing - body.shift_y)[:, None]
        self.x = ((np.arange(cols, dtype=np.float32) - (cols - 1) / 2) * spacing - body.shift_x)[None, :]
        self.img = np.full(shape, AIR, dtype=np.float32)
        self.body = body

    def ellipse(self, cx: float, cy: float, a: float, b: float) -> np.ndarray:
        if a <= 0 or b <= 0:
            return np.zeros(self.img.shape, dtype=bool)
        return ((self.x - cx) / a) ** 2 + ((self.y - cy) / b) ** 2 <= 1.0

    def paint(self, hu: float, cx: float, cy: float, a: float, b: float) -> None:
        self.img[self.ellipse(cx, cy, a, b)] = hu

    def bone(self, cx: float, cy: float, a: float, b: float, shell: float = 3.0, inner: float = TRABECULAR) -> None:
        self.paint(CORTICAL, cx, cy, a, b)
        self.paint(inner, cx, cy, a - shell, b - shell)

    def trunk(self, a: float, b: float, couch: bool = True) -> tuple[float, float]:
        """Skin/fat/muscle layers of a trunk-like cross-section; returns the inner (muscle) half-axes."""
        a, b = a * self.body.width, b * self.body.depth
        self.paint(MUSCLE, 0, 0, a, b)                          # skin
        self.paint(FAT, 0, 0, a - 2, b - 2)
        ia, ib = a - 2 - self.body.fat, b - 2 - self.body.fat
        self.paint(MUSCLE, 0, 0, ia, ib)
        if couch:                                               # the table under the patient
            self.img[(self.y > b + 12) & (self.y < b + 22) & (np.abs(self.x) < 220)] = COUCH
        return ia, ib

    def vertebra(self, ib: float, scale: float = 1.0) -> None:
        cy = ib - 45 * scale
        self.bone(0, cy, 22 * scale, 18 * scale)                             # body
        self.paint(CSF, 0, cy + 26 * scale, 7 * scale, 6 * scale)            # spinal canal
        self.bone(0, cy + 42 * scale, 5 * scale, 12 * scale, shell=2)        # spinous process


def _head(c: _Canvas, t: float) -> None:
    # t = 0 skull base, 1 vertex: the cross-section shrinks like a half-ellipsoid.
    s = np.sqrt(max(0.0, 1.0 - (0.98 * t) ** 2))
    a, b = 72 * c.body.width * s, 92 * c.body.depth * s
    c.paint(MUSCLE, 0, 0, a, b)                                 # scalp
    c.paint(CORTICAL, 0, 0, a - 4, b - 4)                       # skull
    c.paint(BRAIN, 0, 0, a - 11, b - 11)
    if 0.3 < t < 0.7:                                           # lateral ventricles
        c.paint(CSF, -12, -5, 6, 22 * s)
        c.paint(CSF, 12, -5, 6, 22 * s)
    if t < 0.2:                                                 # sinuses and skull base
        c.paint(AIR, -20, -60, 12, 10)
        c.paint(AIR, 20, -60, 12, 10)
        c.bone(0, 20, 30, 12)


def _thorax(c: _Canvas, t: float) -> None:
    ia, ib = c.trunk(160, 110)
    lung = np.sin(np.pi * (0.15 + 0.8 * t))                     # lungs widest mid-thorax
    c.paint(LUNG, -70, -5, 55 * lung + 10, 75 * lung + 10)
    c.paint(LUNG, 70, -5, 50 * lung + 10, 75 * lung + 10)
    if t < 0.7:
        c.paint(BLOOD, 25, -25, 50 * (1 - t) + 15, 40 * (1 - t) + 12)   # heart
    c.paint(BLOOD, -5, 30, 13, 13)                              # aorta
    for k in range(-3, 4):                                      # ribs
        if k:
            ang = np.pi / 2 + k * 0.42
            c.bone(ia * 0.97 * np.cos(ang), ib * 0.97 * np.sin(ang) - 8, 6, 5, shell=2)
    c.vertebra(ib)


def _abdomen(c: _Canvas, t: float, rng_offsets: tuple[float, ...]) -> None:
    ia, ib = c.trunk(170, 120)
    if t < 0.65:
        c.paint(LIVER, -60, -10, 80 * (1 - t / 0.65) + 20, 60 * (1 - t / 0.65) + 15)
    if 0.2 < t < 0.8:
        c.paint(KIDNEY, -55, 45, 28, 38)
        c.paint(KIDNEY, 55, 45, 28, 38)
    c.paint(BLOOD, -5, 25, 11, 11)
    for k, off in enumerate(rng_offsets):                      # bowel gas
        c.paint(AIR, 70 * np.cos(off + 3 * t) - 10, -40 + 25 * np.sin(off * 2 + k), 9, 7)
    c.vertebra(ib)


def _pelvis(c: _Canvas, t: float) -> None:
    ia, ib = c.trunk(180, 115)
    wing = max(0.0, 1.0 - t * 1.6)                              # iliac wings above, femoral heads below
    if wing > 0:
        c.bone(-95, 20, 25 + 20 * wing, 15 + 25 * wing, shell=4)
        c.bone(95, 20, 25 + 20 * wing, 15 + 25 * wing, shell=4)
    if t > 0.5:
        c.bone(-85, 10, 24, 24, shell=4)
        c.bone(85, 10, 24, 24, shell=4)
    c.paint(WATER + 10, 0, -40, 40 * (0.5 + t / 2), 30 * (0.5 + t / 2))   # bladder
    c.bone(0, ib - 35, 30 * (1 - t / 2), 14, shell=3)          # sacrum


def _extremities(c: _Canvas, t: float) -> None:
    # A knee: thigh above, joint in the middle, calf below.
    r = 55 + 10 * (1 - t)
    c.paint(MUSCLE, 0, 0, r * c.body.width, r * c.body.depth)
    c.paint(FAT, 0, 0, r * c.body.width - 2, r * c.body.depth - 2)
    c.paint(MUSCLE, 0, 0, r * c.body.width - 2 - c.body.fat / 2, r * c.body.depth - 2 - c.body.fat / 2)
    joint = np.exp(-((t - 0.5) / 0.15) ** 2)
    c.bone(0, 0, 16 + 22 * joint, 16 + 14 * joint, shell=3, inner=FAT + 80)
    if t > 0.55:
        c.bone(30, 8, 8, 8, shell=2)                           # fibula
    c.img[(c.y > r + 10) & (c.y < r + 18) & (np.abs(c.x) < 120)] = COUCH


def _spine(c: _Canvas, t: float) -> None:
    # A zoomed spine reconstruction: the field of view sits inside the trunk.
    c.paint(MUSCLE, 0, 0, 250, 250)
    c.paint(FAT, 0, 90, 200, 40)
    c.vertebra(100, scale=1.6)
    if (t * 8) % 1 > 0.85:                                      # intervertebral discs between bodies
        c.paint(MUSCLE, 0, 100 - 72, 30, 25)


def phantom(region: str, t: float, shape: tuple[int, int], spacing: float, body: Body,
            wiggle: tuple[float, ...] = (0.3, 1.7, 2.9)) -> np.ndarray:
    """A noise-free slice in HU (float32) of `region` at position t in [0, 1]."""
    c = _Canvas(shape, spacing, body)
    if region == "head":
        _head(c, t)
    elif region == "thorax":
        _thorax(c, t)
    elif region == "abdomen":
        _abdomen(c, t, wiggle)
    elif region == "pelvis":
        _pelvis(c, t)
    elif region == "extremities":
        _extremities(c, t)
    elif region == "spine":
        _spine(c, t)
    elif region == "trunk":                                     # thorax to pelvis in one scan
        if t < 0.4:
            _thorax(c, t / 0.4)
        elif t < 0.75:
            _abdomen(c, (t - 0.4) / 0.35, wiggle)
        else:
            _pelvis(c, (t - 0.75) / 0.25)
    else:
        raise ValueError(f"unknown phantom region {region!r}; known: {', '.join(REGIONS)}")
    return c.img
