"""Per-sample augmentation parameters and their torch application."""
import math

import numpy as np
import pytest
import torch

from trainer.data.augment import (
    BOTTOM,
    BRIGHTNESS,
    CONTRAST,
    FLIP,
    LEFT,
    RIGHT,
    SIGMA,
    TOP,
    AugmentConfig,
    apply_view,
    draw_views,
    gaussian_kernel,
    normalize,
)
from trainer.errors import TrainerError


def test_normalisations():
    hu = np.array([[-1000, 0], [1000, 3000]], np.int16)
    assert np.allclose(normalize(hu, AugmentConfig()), [[0, 0.25], [0.5, 1.0]])
    assert np.array_equal(normalize(np.full((4, 4), 40, np.int16), AugmentConfig()), np.zeros((4, 4)))  # constant
    hu_cfg = AugmentConfig(normalize="hu", window=(-160.0, 240.0))
    assert np.allclose(normalize(hu, hu_cfg), [[0, 0.4], [1, 1]])
    with pytest.raises(TrainerError, match="--normalize 'zscore' is not one of minmax, hu"):
        AugmentConfig(normalize="zscore")
    with pytest.raises(TrainerError, match="--window 100 -100: the upper bound must exceed the lower"):
        AugmentConfig(window=(100.0, -100.0))


def test_parameters_are_a_function_of_seed_epoch_sample_and_follow_the_recipe():
    aug = AugmentConfig(image_size=64, blur_p=0.5)
    a = draw_views(1, 2, 3, (100, 80), aug)
    assert np.array_equal(a, draw_views(1, 2, 3, (100, 80), aug))
    assert not np.array_equal(a, draw_views(1, 2, 4, (100, 80), aug))
    assert not np.array_equal(a[0], a[1])  # the two views differ
    p = np.concatenate([draw_views(0, 0, s, (100, 80), aug) for s in range(2000)])
    h, w = p[:, BOTTOM] - p[:, TOP], p[:, RIGHT] - p[:, LEFT]
    assert (p[:, TOP] >= 0).all() and (p[:, BOTTOM] <= 100).all()
    assert (p[:, LEFT] >= 0).all() and (p[:, RIGHT] <= 80).all()
    area = h * w / 8000
    assert area.min() >= 0.08 * 0.9 and area.max() <= 1.0
    assert (w / h).min() >= 0.75 * 0.9 and (w / h).max() <= 4 / 3 * 1.1
    assert abs(p[:, FLIP].mean() - 0.5) < 0.03
    jittered = (p[:, BRIGHTNESS] != 1) | (p[:, CONTRAST] != 1)
    assert abs(jittered.mean() - 0.8) < 0.03
    assert p[jittered, BRIGHTNESS].min() >= 0.2 and p[jittered, BRIGHTNESS].max() <= 1.8
    blurred = p[:, SIGMA] > 0
    assert abs(blurred.mean() - 0.5) < 0.03 and p[blurred, SIGMA].min() >= 0.1 and p[blurred, SIGMA].max() <= 2.0
    paper = np.concatenate([draw_views(0, 0, s, (100, 80), AugmentConfig()) for s in range(200)])
    assert (paper[:, SIGMA] == 0).all()
    assert (AugmentConfig(image_size=256).blur_kernel, AugmentConfig(image_size=32).blur_kernel) == (25, 3)


def test_apply_view_crop_flip_jitter_blur():
    aug = AugmentConfig(image_size=4)
    x = torch.arange(64, dtype=torch.float32).view(1, 8, 8) / 63
    p = np.zeros(8, np.float32)
    p[[TOP, LEFT, BOTTOM, RIGHT]] = 2, 4, 6, 8  # a 4x4 crop resized to 4x4 is the crop itself
    p[[BRIGHTNESS, CONTRAST]] = 1, 1
    assert torch.allclose(apply_view(x, p, aug), x[:, 2:6, 4:8])
    p[FLIP] = 1
    assert torch.allclose(apply_view(x, p, aug), x[:, 2:6, 4:8].flip(-1))
    p[[BRIGHTNESS, CONTRAST]] = 0.5, 1.5
    crop = x[:, 2:6, 4:8].flip(-1)
    assert torch.allclose(apply_view(x, p, aug), (0.5 * (1.5 * crop - 0.5 * crop.mean())).clamp(0, 1))
    k = gaussian_kernel(1.0, 5)
    assert math.isclose(k.sum().item(), 1.0, rel_tol=1e-6) and torch.equal(k, k.flip(0))
    p[[BRIGHTNESS, CONTRAST, FLIP]] = 1, 1, 0
    p[SIGMA] = 1.0
    flat = torch.full((1, 8, 8), 0.3)
    assert torch.allclose(apply_view(flat, p, aug), torch.full((1, 4, 4), 0.3))  # blur keeps a constant image
    assert apply_view(x, p, aug).std() < x[:, 2:6, 4:8].std()                    # and smooths a ramp
