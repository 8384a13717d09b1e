"""The study's RGB augmentations, per sample: colour jitter (p 0.8, random op order), grayscale (p 0.2),
the colour ops against PIL/colorsys references, and the torch loader on a jpg/cls dataset."""
import colorsys

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance

from tests.fixtures.datasets import make_natural_dataset
from tests.fixtures.optional import need
from trainer.data.augment import (
    BRIGHTNESS,
    CONTRAST,
    FLIP,
    GRAY,
    HUE,
    ORDER,
    SATURATION,
    AugmentConfig,
    apply_view,
    draw_views,
    scale_input,
    to_unit,
)
from trainer.data.colour import adjust_hue, jitter
from trainer.data.loader import make_loader
from trainer.errors import TrainerError

RGB = AugmentConfig(image_size=16, rgb=True)
N = 4000  # samples; binomial 4-sigma bounds below


def _draws(aug, n=N, epoch=0):
    return np.concatenate([draw_views(0, epoch, i, (32, 40), aug) for i in range(n)])


def test_jitter_and_grayscale_are_drawn_per_sample_with_the_study_probabilities():
    p = _draws(RGB)
    jittered = (p[:, [BRIGHTNESS, CONTRAST, SATURATION]] != 1.0).any(1) | (p[:, HUE] != 0)
    n = len(p)
    assert abs(jittered.mean() - 0.8) < 4 * np.sqrt(0.8 * 0.2 / n)
    assert abs(p[:, GRAY].mean() - 0.2) < 4 * np.sqrt(0.2 * 0.8 / n)
    assert abs(p[:, FLIP].mean() - 0.5) < 4 * np.sqrt(0.25 / n)
    j = p[jittered]
    for col, lo, hi in ((BRIGHTNESS, 0.2, 1.8), (CONTRAST, 0.2, 1.8), (SATURATION, 0.2, 1.8), (HUE, -0.2, 0.2)):
        assert lo <= j[:, col].min() and j[:, col].max() <= hi
        assert abs(j[:, col].mean() - (lo + hi) / 2) < 0.03                       # uniform over the range
    orders = j[:, ORDER:ORDER + 4].astype(int)
    assert all(sorted(o) == [0, 1, 2, 3] for o in orders)                          # a permutation per sample
    assert len({tuple(o) for o in orders}) == 24                                   # all 24 orders occur
    # grayscale is independent of jitter (per sample, own draw)
    assert abs(p[jittered, GRAY].mean() - 0.2) < 0.03
    # the two views of one sample differ in their parameters, and samples differ from each other
    assert not np.array_equal(p[0], p[1]) and not np.array_equal(p[0], p[2])


def test_rgb_draws_leave_the_ct_parameters_unchanged():
    ct, rgb = _draws(AugmentConfig(image_size=16), 200), _draws(RGB, 200)
    # the first draws (crop, flip, brightness/contrast choice) are the CT ones; only view 1 of each pair is
    # comparable (view 2 starts after view 1's extra RGB draws)
    assert np.array_equal(ct[0::2, :SATURATION - 1], rgb[0::2, :SATURATION - 1])
    assert (ct[:, GRAY] == 0).all() and (ct[:, SATURATION] == 1).all()


def test_colour_ops_match_pil_and_colorsys():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    x = torch.from_numpy(img.transpose(2, 0, 1).astype(np.float32) / 255)
    for op, factor, enhance in ((0, 1.4, ImageEnhance.Brightness), (2, 0.3, ImageEnhance.Color)):
        ours = jitter(x, 1.4 if op == 0 else 1, 1, 0.3 if op == 2 else 1, 0, order=[op]).numpy().transpose(1, 2, 0)
        ref = np.asarray(enhance(Image.fromarray(img)).enhance(factor)).astype(np.float32) / 255
        assert np.abs(ours - ref).max() <= 2.5 / 255                             # PIL rounds to uint8 per op
    shifted = adjust_hue(x, 0.15).numpy().transpose(1, 2, 0)
    for (i, j) in ((0, 0), (5, 7), (11, 9)):
        h, s, v = colorsys.rgb_to_hsv(*(img[i, j] / 255))
        assert np.allclose(shifted[i, j], colorsys.hsv_to_rgb((h + 0.15) % 1, s, v), atol=1e-5)


def test_each_view_applies_its_own_parameters():
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.random((3, 32, 40), dtype=np.float32))
    p = _draws(RGB, 300)
    gray = next(v for v in p if v[GRAY])
    out = apply_view(x, gray, RGB)
    assert out.shape == (3, 16, 16) and torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])
    plain = next(v for v in p if not v[GRAY] and v[BRIGHTNESS] == 1 and v[CONTRAST] == 1)
    top, left, bottom, right = (int(v) for v in plain[:4])
    ref = torch.nn.functional.interpolate(x[None, :, top:bottom, left:right], size=(16, 16), mode="bilinear",
                                          align_corners=False, antialias=True)[0]
    assert torch.equal(apply_view(x, plain, RGB), ref.flip(-1) if plain[FLIP] else ref)
    jit = next(v for v in p if not v[GRAY] and v[BRIGHTNESS] != 1)
    no_jitter = jit.copy()
    no_jitter[[BRIGHTNESS, CONTRAST, SATURATION, HUE]] = 1, 1, 1, 0
    assert not torch.equal(apply_view(x, jit, RGB), apply_view(x, no_jitter, RGB))
    imagenet = AugmentConfig(image_size=16, rgb=True, input_scale="imagenet")
    assert torch.allclose(apply_view(x, plain, imagenet),
                          (apply_view(x, plain, RGB) - torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1))
                          / torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1))
    assert scale_input(torch.zeros(1, 4, 4), imagenet).shape == (3, 4, 4)  # CT made 3 channels first


def test_to_unit_reads_jpeg_pixels_as_rgb_in_unit_range():
    rgb = np.full((5, 6, 3), 255, np.uint8)
    assert to_unit(rgb, RGB).shape == (3, 5, 6) and to_unit(rgb, RGB).max() == 1.0
    assert to_unit(np.zeros((5, 6), np.uint8), RGB).shape == (3, 5, 6)       # a gray JPEG in an RGB dataset
    with pytest.raises(TrainerError, match="--input-scale 'x' is not one of unit, imagenet"):
        AugmentConfig(input_scale="x")


@pytest.fixture(scope="module")
def natural(tmp_path_factory):
    return make_natural_dataset(tmp_path_factory.mktemp("nat"), per_class=6, size=32)


def test_torch_loader_reads_a_jpg_dataset_as_rgb_views(natural):
    def batches(workers):
        loader = make_loader("torch", natural, "train", global_batch=8, rank=0, world_size=1, seed=0,
                             aug=AugmentConfig(image_size=16, blur_p=0.5), workers=workers, device=torch.device("cpu"))
        assert loader.rgb and loader.channels == 3 and loader.aug.rgb
        out = list(loader.epoch(0))
        loader.close()
        return out
    a, b = batches(0), batches(2)
    assert len(a) == 48 // 8 and all(x.view1.shape == (8, 3, 16, 16) for x in a)
    assert all(0 <= x.view1.min() and x.view1.max() <= 1 + 1e-6 for x in a), [(x.view1.min(), x.view1.max()) for x in a]
    assert all(torch.equal(x.view1, y.view1) and torch.equal(x.view2, y.view2) for x, y in zip(a, b))
    # some views are colour (channels differ), some gray
    chans_equal = [bool(torch.equal(v[0], v[1]) and torch.equal(v[1], v[2])) for x in a for v in x.view1]
    assert 0 < sum(chans_equal) < len(chans_equal)


def test_dali_cpu_and_torch_give_the_same_rgb_views(natural):
    """DALI's CPU-only mode against the torch loader on a jpg dataset, with blur and ImageNet scaling.
    Tolerance: JPEG decodes by libjpeg-turbo (DALI) and PIL differ by a few levels in single pixels
    (chroma upsampling), and the antialias filters slightly at crop borders: mean |diff| < 1e-3,
    max < 0.08 (in [0, 1] units, i.e. before ImageNet scaling, hence the std factor below)."""
    need("nvidia.dali")
    aug = AugmentConfig(image_size=16, blur_p=0.5, input_scale="imagenet")
    out = {}
    for kind in ("torch", "dali"):
        loader = make_loader(kind, natural, "train", global_batch=8, rank=0, world_size=1, seed=3, aug=aug,
                             workers=1, device=torch.device("cpu"))
        out[kind] = list(loader.epoch(1))
        loader.close()
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    diffs = []
    for t, d in zip(out["torch"], out["dali"]):
        assert torch.equal(t.ids, d.ids) and d.view1.shape == t.view1.shape == (8, 3, 16, 16)
        for tv, dv in ((t.view1, d.view1), (t.view2, d.view2)):
            diffs.append(((tv - dv) * std).abs())
    diff = torch.stack(diffs)
    assert len(out["dali"]) == 6
    assert diff.mean() < 1e-3 and diff.max() < 0.08, (diff.mean(), diff.max())  # measured: 1.7e-4, 0.040
