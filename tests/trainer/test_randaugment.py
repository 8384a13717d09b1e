"""RandAugment: each op against its definition, per-sample draws, determinism from the seed."""
import numpy as np
import pytest
import torch

from trainer.randaugment import OPS, apply_op, apply_randaugment, draw_randaugment


def _img(seed=0, c=3, h=12, w=16):
    return torch.rand(c, h, w, generator=torch.Generator().manual_seed(seed))


def test_draws_are_per_sample_and_deterministic_from_the_seed():
    draws = [draw_randaugment(np.random.default_rng([7, 0, s]), num_ops=2) for s in range(40)]
    assert draws == [draw_randaugment(np.random.default_rng([7, 0, s]), num_ops=2) for s in range(40)]
    assert len({tuple(d) for d in draws}) > 20                 # samples get different ops
    assert {op for d in draws for op, _ in d} <= set(OPS)
    img = _img()
    a = apply_randaugment(img, draws[3], magnitude=9)
    assert torch.equal(a, apply_randaugment(img, draws[3], magnitude=9))


def test_photometric_ops_follow_their_formulas():
    img = _img()
    assert torch.allclose(apply_op(img, "brightness", 1.0, 10), (img * 1.3).clamp(0, 1))
    assert torch.allclose(apply_op(img, "brightness", -1.0, 30), img * 0.1)
    gray = 0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2]
    assert torch.allclose(apply_op(img, "contrast", -1.0, 20), (gray.mean() + 0.4 * (img - gray.mean())).clamp(0, 1))
    assert torch.allclose(apply_op(img, "color", 1.0, 0), img)          # magnitude 0: factor 1
    assert torch.equal(apply_op(img, "solarize", 1.0, 15), torch.where(img >= 0.5, 1 - img, img))
    post = apply_op(img, "posterize", 1.0, 30)                           # 4 bits: multiples of 16/255
    assert torch.equal((post * 255).round() % 16, torch.zeros_like(post))
    auto = apply_op(img * 0.5 + 0.2, "autocontrast", 1.0, 0)
    assert torch.allclose(auto.amin(dim=(1, 2)), torch.zeros(3))
    assert torch.allclose(auto.amax(dim=(1, 2)), torch.ones(3))
    flat = torch.full((1, 5, 5), 0.3)
    assert torch.equal(apply_op(flat, "sharpness", 1.0, 30), flat)      # nothing to sharpen
    assert torch.equal(apply_op(flat, "equalize", 1.0, 0), flat)        # one level: unchanged


def test_equalize_spreads_a_narrow_ramp_over_the_range():
    ramp = (torch.arange(1024).view(1, 32, 32) // 16 + 100).float() / 255   # levels 100..163, 16 pixels each
    out = apply_op(ramp, "equalize", 1.0, 0)
    # PIL: step = (1024 - 16) // 255 = 3; lut[level k] = (16 k + 1) // 3, capped at 255
    want = torch.clamp((16 * (torch.arange(1024).view(1, 32, 32) // 16) + 1) // 3, max=255).float() / 255
    assert torch.equal(out, want)
    assert out.min() == 0.0 and out.max() == 1.0
    tiny = ramp[:, :4, :4]                                                    # 16 pixels: step 0, unchanged (PIL)
    assert torch.equal(apply_op(tiny, "equalize", 1.0, 0), tiny)


def test_geometric_ops_move_pixels_exactly():
    img = torch.zeros(1, 9, 12)
    img[0, 4, 3] = 1.0
    t = apply_op(img, "translate_x", 1.0, 11)               # round(150/331 * 11/30 * 12) = 2 px right
    assert t.nonzero().tolist() == [[0, 4, 5]]
    t = apply_op(img, "translate_y", -1.0, 11)              # round(150/331 * 11/30 * 9) = 1 px up
    assert t.nonzero().tolist() == [[0, 3, 3]]
    assert torch.equal(apply_op(img, "rotate", 1.0, 0), img)
    centre = torch.zeros(1, 9, 9)
    centre[0, 4, 4] = 1.0
    assert torch.equal(apply_op(centre, "rotate", -1.0, 30), centre)      # the centre stays
    assert torch.equal(apply_op(centre, "shear_x", 1.0, 30), centre)
    assert apply_op(torch.ones(1, 9, 9), "shear_y", 1.0, 30).sum() < 81  # filled with 0 where sheared in


def test_all_ops_keep_shape_and_range_and_bad_magnitude_is_refused():
    img = _img(c=1)
    for op in OPS:
        out = apply_op(img, op, -1.0, 17)
        assert out.shape == img.shape and out.min() >= 0 and out.max() <= 1, op
    with pytest.raises(ValueError, match=r"magnitude must be in 0..30, got 31"):
        apply_randaugment(img, [("identity", 1.0)], magnitude=31)
    with pytest.raises(ValueError, match=r"op 'blur' is not one of identity"):
        apply_op(img, "blur", 1.0, 5)
