"""Area resize, body coverage and int16 conversion: numbers checked on images whose answer is known."""
import numpy as np
import pytest

from datakit.hu_slice import AIR_HU, _box_resize, apply_hu_floor, body_coverage, pad_square, resize_area, to_int16


def _disc(n, radius, inside=40.0, outside=-1000.0, centre=None):
    yy, xx = np.mgrid[:n, :n]
    cy, cx = centre or ((n - 1) / 2, (n - 1) / 2)
    img = np.full((n, n), outside, np.float32)
    img[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2] = inside
    return img


def test_integer_factor_is_the_exact_block_mean():
    rng = np.random.default_rng(0)
    img = rng.normal(0, 300, (512, 512)).astype(np.float32)
    out = resize_area(img, (256, 256))
    assert out.dtype == np.float32 and out.shape == (256, 256)
    np.testing.assert_allclose(out, img.reshape(256, 2, 256, 2).mean(axis=(1, 3)), atol=1e-3)


def _hu_like(rng, shape):
    """Non-integer HU (a fractional rescale slope), padding at -3024, metal, and tiny values."""
    img = (rng.normal(0, 400, shape) * 1.0371).astype(np.float32)
    img[: shape[0] // 8] = -3024
    img[-3:, :5] = 30000.25
    img[1, 1::3] = np.float32(1 / 3)
    return img


@pytest.mark.parametrize("shape, size", [
    ((512, 512), (256, 256)), ((512, 512), (128, 128)), ((512, 512), (64, 64)), ((512, 512), (32, 32)),
    ((768, 768), (256, 256)), ((510, 510), (170, 170)), ((96, 96), (16, 16)), ((512, 512), (256, 128)),
    ((512, 512), (512, 256)), ((512, 512), (512, 512)), ((384, 512), (256, 256)), ((1024, 1024), (128, 128)),
])
def test_integer_factor_fast_path_equals_the_general_path_bit_for_bit(shape, size):
    img = _hu_like(np.random.default_rng(sum(shape) + sum(size)), shape)
    square = pad_square(img)
    fast = resize_area(img, size)
    general = _box_resize(square, size)
    assert fast.dtype == general.dtype == np.float32 and fast.shape == general.shape == size
    assert np.array_equal(fast, general)
    assert fast.tobytes() == general.tobytes()               # -0.0 and 0.0 alike
    assert not np.shares_memory(fast, img)


def test_area_resize_keeps_the_mean_for_any_factor():
    rng = np.random.default_rng(1)
    img = rng.normal(0, 300, (300, 300)).astype(np.float32)
    out = resize_area(img, (128, 128))
    assert abs(out.mean() - img.mean()) < 0.5
    assert resize_area(img, (100, 60)).shape == (100, 60)


def test_non_square_is_padded_with_air_centred():
    img = np.zeros((4, 8), np.float32)
    sq = pad_square(img)
    assert sq.shape == (8, 8)
    assert (sq[2:6] == 0).all() and (sq[:2] == AIR_HU).all() and (sq[6:] == AIR_HU).all()
    out = resize_area(img, (2, 2))        # each output pixel: half air, half body
    np.testing.assert_allclose(out, np.full((2, 2), AIR_HU / 2))


def test_resize_refuses_bad_input():
    with pytest.raises(ValueError, match="2-D image"):
        resize_area(np.zeros((2, 2, 2)), (1, 1))
    with pytest.raises(ValueError, match="must be positive"):
        resize_area(np.zeros((2, 2)), (0, 4))


def test_coverage_of_a_disc_is_its_area_fraction():
    cov = body_coverage(_disc(512, 128))
    assert cov == pytest.approx(np.pi * 128 ** 2 / 512 ** 2, abs=0.01)


def test_coverage_fills_lungs_and_drops_the_couch():
    img = _disc(256, 100)
    img[_disc(256, 30, 1, 0, (128, 90)) == 1] = -850       # a lung inside the body
    img[240:246, 20:236] = 200                               # the couch, separate from the body
    assert body_coverage(img) == pytest.approx(np.pi * 100 ** 2 / 256 ** 2, abs=0.01)


def test_coverage_extremes():
    assert body_coverage(np.full((64, 64), -1000, np.float32)) == 0.0
    assert body_coverage(np.full((64, 64), 40, np.float32)) == 1.0
    assert 0 < body_coverage(np.full((64, 32), 40, np.float32)) <= 1.0


def test_to_int16_rounds_and_clips():
    out = to_int16(np.array([-40000.0, -1024.4, 0.5, 1.5, 2.6, 40000.0], np.float32))
    assert out.dtype == np.int16
    assert out.tolist() == [-32768, -1024, 0, 2, 3, 32767]


def test_hu_floor_turns_padding_into_air_without_changing_coverage():
    img = _disc(64, 30, inside=40.0, outside=-1000.0)
    yy, xx = np.mgrid[:64, :64]
    img[(yy - 31.5) ** 2 + (xx - 31.5) ** 2 > 32 ** 2] = -3024      # outside the reconstruction circle
    raw_coverage, raw_resized = body_coverage(img), resize_area(img, (32, 32))
    floored = apply_hu_floor(img.copy(), -1024)
    assert floored.min() == -1024 and floored.max() == 40
    assert np.array_equal(floored[img >= -1024], img[img >= -1024])
    assert body_coverage(floored) == raw_coverage
    stored = to_int16(resize_area(floored, (32, 32)))
    assert stored.min() == -1024 and raw_resized.min() == -3024
    assert apply_hu_floor(img, None) is img
    view = np.full((4, 4), -2000, np.float32)
    view.flags.writeable = False
    assert apply_hu_floor(view, -1024).min() == -1024 and view.min() == -2000


@pytest.mark.parametrize("shape, size", [
    ((512, 512), (256, 256)), ((1024, 1024), (256, 256)), ((256, 256), (256, 256)), ((384, 512), (256, 256)),
    ((512, 384), (128, 128)), ((512, 512), (256, 128)), ((512, 512), (64, 64)), ((768, 768), (256, 256)),
    ((500, 500), (256, 256)), ((96, 96), (32, 32)),
])
def test_int16_fast_path_equals_the_float_path_bit_for_bit(shape, size):
    """resize_to_int16 on whole-number HU in int16 = to_int16(resize_area(float32 HU)), ties included
    (values in steps of 1 make block means end in .5 and .25 often), negative means too."""
    from datakit.hu_slice import resize_to_int16

    rng = np.random.default_rng(shape[0] * 7 + size[1])
    for hu in (rng.integers(-1024, 3072, shape), rng.integers(-3, 3, shape), rng.integers(-32768, 32768, shape)):
        hu = hu.astype(np.int16)
        fast, reference = resize_to_int16(hu, size), to_int16(resize_area(hu.astype(np.float32), size))
        assert fast.dtype == reference.dtype == np.int16 and fast.shape == reference.shape == size
        assert np.array_equal(fast, reference)
    floats = _hu_like(rng, shape)                          # not whole numbers: the float path, unchanged
    assert np.array_equal(resize_to_int16(floats, size), to_int16(resize_area(floats, size)))


def _coverage_as_defined(hu):
    """body_coverage as the docstring defines it, written plainly (the implementation before issue 15)."""
    from scipy import ndimage

    step = -(-max(hu.shape) // 128)
    body = hu[::step, ::step] > -500
    labels, n = ndimage.label(body)
    if n == 0:
        return 0.0
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    body = labels == int(sizes.argmax())
    bg, nbg = ndimage.label(~body, structure=np.ones((3, 3), bool))
    if nbg:
        border = np.unique(np.concatenate([bg[0], bg[-1], bg[:, 0], bg[:, -1]]))
        inside = np.ones(nbg + 1, dtype=bool)
        inside[border] = False
        inside[0] = False
        body |= inside[bg]
    return float(body.mean())


def test_coverage_equals_its_plain_definition_bit_for_bit():
    rng = np.random.default_rng(3)
    images = [np.full((64, 64), -1000.0), np.zeros((64, 64)), _disc(512, 200), _disc(100, 30, centre=(0, 50))]
    for _ in range(60):        # blobs, rings (holes), couches, noise, at several sizes and aspect ratios
        h, w = rng.choice([64, 130, 384, 512], 2)
        yy, xx = np.mgrid[:h, :w]
        img = np.full((h, w), -1000.0)
        for _ in range(rng.integers(1, 6)):
            cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(2, max(h, w) / 3)
            d = np.hypot(yy - cy, xx - cx)
            img[d < r] = 40.0
            if rng.random() < 0.5:
                img[d < r * rng.uniform(0.2, 0.8)] = -850.0          # a lung: a hole to fill
        img[rng.random((h, w)) < rng.uniform(0, 0.05)] = 100.0        # speckle: many small regions
        images.append(img)
    tie = np.full((128, 128), -1000.0)                      # two bodies of one size: the first in row order
    tie[70:90, 10:30], tie[20:40, 60:80] = 40.0, 40.0
    tie[25:35, 65:75] = -900.0                               # only the second (reached first) has a hole
    images.append(tie)
    for img in images:
        for hu in (img.astype(np.float32), np.rint(img).astype(np.int16)):
            assert body_coverage(hu) == _coverage_as_defined(hu)
    assert body_coverage(tie) == 400 / 128 ** 2


def test_compiled_labeller_gives_scipys_labels_and_counts():
    from scipy import ndimage

    from datakit import components
    from datakit.hu_slice import _EIGHT, _FOUR

    compiled = components._compiled_labeller()
    assert compiled is not None                    # the installed scipy's labeller loads: the fast path runs
    rng = np.random.default_rng(5)
    for shape in ((1, 1), (1, 128), (128, 33), (128, 128), (97, 128)):
        for density in (0.0, 0.3, 0.5, 0.7, 1.0):
            mask = rng.random(shape) < density
            for structure in (_FOUR, _EIGHT):
                labels, n = compiled(mask, structure)
                want, want_n = ndimage.label(mask, structure=structure)
                assert n == want_n and labels.dtype == np.int32
                np.testing.assert_array_equal(labels, want)
    assert components.label(np.eye(4, dtype=bool), _FOUR)[1] == 4
    assert components.label(np.eye(4, dtype=bool), _EIGHT)[1] == 1


def test_conversion_does_not_import_scipy_ndimage():
    """scipy.ndimage's import (0.2-0.5 s) was a third of every tlx shard run's and write worker's fixed cost."""
    import subprocess
    import sys

    code = ("import sys, numpy as np, datakit.write_convert\nfrom datakit.hu_slice import body_coverage\n"
            "img = np.full((64, 64), -1000, np.int16); img[10:50, 10:50] = 40; img[20:30, 20:30] = -900\n"
            "print(body_coverage(img), 'scipy.ndimage' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split()
    assert out == [str(1600 / 4096), "False"]
