"""Mutual information from joint histograms: binning as np.histogram2d, known answers, methods agree."""
import importlib.util
import math

import numpy as np
import pytest

from analysis.errors import AnalysisError
from analysis.mi import METHODS, PairwiseMI, entropies, joint_counts, mutual_information, quantize

# 64 x 64 pixels: a takes each of 64 values 64 times, b likewise, and every (a, b) pair occurs once.
GRID = np.arange(64 * 64).reshape(64, 64)
A, B = GRID // 64, GRID % 64

HAS_TORCH = importlib.util.find_spec("torch") is not None
methods = [m for m in METHODS if not m.startswith("torch") or HAS_TORCH]


def test_binning_and_counts_equal_numpy_histogram2d():
    rng = np.random.default_rng(0)
    floats = rng.normal(size=(3, 20, 20))
    ints = (rng.normal(size=(3, 20, 20)) * 400).astype(np.int16)
    for slices in (floats, ints):
        codes = quantize(slices, bins=64)
        counts = joint_counts(codes, codes, 64, method="bincount")
        for i in range(3):
            for j in range(3):
                expected, _, _ = np.histogram2d(slices[i].ravel(), slices[j].ravel(), bins=64)
                np.testing.assert_array_equal(counts[i, j], expected)


def test_fixed_range_clips_into_the_end_bins():
    codes = quantize(np.array([[-5000, -1024, 0, 3071, 9000]], dtype=np.int16), bins=4, value_range=(-1024, 3071))
    assert codes.tolist() == [[0, 0, 1, 3, 3]]


@pytest.mark.parametrize("method", ["bincount", "onehot"])  # torch: checked against these below, on tiny slices
def test_mi_of_constructed_images_has_the_known_value(method):
    engine = PairwiseMI(bins=64, method=method)
    codes = quantize(np.stack([A, B, A, A // 2]))
    mi = engine.within(codes)
    assert mi[0, 0] == pytest.approx(math.log(64))          # self-MI = entropy of 64 equally likely values
    assert mi[0, 1] == pytest.approx(0.0, abs=1e-12)        # every (a, b) once: independent
    assert mi[0, 2] == pytest.approx(math.log(64))          # identical images
    assert mi[0, 3] == pytest.approx(math.log(32))          # b = a // 2: MI = H(b) = log 32
    np.testing.assert_allclose(mi, mi.T, atol=1e-12)
    np.testing.assert_allclose(engine.between(codes[:2], codes), mi[:2], atol=1e-12)


def test_methods_agree_on_random_slices():
    rng = np.random.default_rng(1)
    slices = (rng.normal(size=(5, 16, 16)).cumsum(0) * 100).astype(np.int16)
    codes = quantize(slices)
    results = [PairwiseMI(64, m).within(codes) for m in methods]
    for other in results[1:]:
        np.testing.assert_allclose(other, results[0], atol=1e-12)
    reference = mutual_information(joint_counts(codes, codes, 64, "onehot"))
    np.testing.assert_allclose(reference, results[0], atol=1e-12)
    np.testing.assert_allclose(np.diag(results[0]), entropies(codes, 64), atol=1e-12)


@pytest.mark.parametrize("method", ["bincount", "onehot"])
def test_blocks_give_the_same_matrix(method):
    codes = quantize(np.random.default_rng(3).normal(size=(7, 12, 12)))
    whole = PairwiseMI(64, method, block=100)
    blocked = PairwiseMI(64, method, block=3)  # 7 slices in blocks of 3, 3 and 1
    np.testing.assert_allclose(blocked.within(codes), whole.within(codes), atol=1e-12)
    np.testing.assert_allclose(blocked.between(codes[:5], codes), whole.between(codes[:5], codes), atol=1e-12)
    assert blocked.evaluations == whole.evaluations


def test_default_blocks_shrink_as_the_count_tables_grow():
    # memory per block ~ block * bins^2 (bincount) or (block * bins)^2 (one-hot products): 64 bins -> 160 slices
    assert [PairwiseMI(bins).block for bins in (16, 64, 128, 256, 4096)] == [160, 160, 40, 10, 1]


def test_evaluations_count_pairs():
    codes = quantize(np.random.default_rng(2).normal(size=(6, 8, 8)))
    engine = PairwiseMI(64, "bincount")
    engine.within(codes)
    engine.between(codes[:2], codes)
    assert engine.evaluations == 6 * 5 // 2 + 2 * 6


def test_bad_input_is_refused():
    with pytest.raises(AnalysisError, match="unknown MI method 'fft'"):
        PairwiseMI(64, "fft")
    with pytest.raises(AnalysisError, match=r"slices must be \(k, H, W\)"):
        quantize(np.zeros((2, 2, 2, 2)))
    with pytest.raises(AnalysisError, match="bins must be in 2..4096"):
        quantize(np.zeros((2, 2)), bins=1)
    with pytest.raises(AnalysisError, match="differ in pixel count: 4 vs 9"):
        joint_counts(np.zeros((1, 4), np.uint8), np.zeros((1, 9), np.uint8), 4)


@pytest.mark.skipif(not HAS_TORCH, reason="torch is an optional accelerator")
@pytest.mark.parametrize("bins", [64, 20])
def test_torch_products_follow_the_cuda_shape_rules_of_int_mm(monkeypatch, bins):
    # torch._int_mm on CUDA refuses a first operand with <= 16 rows or an inner size that is < 16 or not a
    # multiple of 8, and a second operand whose columns are not a multiple of 8; the CPU build checks none of it.
    import torch

    real = torch._int_mm

    def cuda_int_mm(a, b):
        if not (a.shape[0] > 16 and a.shape[1] >= 16 and a.shape[1] % 8 == 0 and b.shape[1] % 8 == 0):
            raise RuntimeError(f"_int_mm on CUDA refuses shapes {tuple(a.shape)} x {tuple(b.shape)}")
        return real(a, b)

    monkeypatch.setattr(torch, "_int_mm", cuda_int_mm)
    codes = quantize(np.random.default_rng(5).normal(size=(3, 2, 3)), bins=bins)  # 6 pixels; 3 * 20 = 60 columns
    expected = PairwiseMI(bins, "bincount").within(codes)
    np.testing.assert_allclose(PairwiseMI(bins, "torch").within(codes), expected, atol=1e-12)
    np.testing.assert_allclose(PairwiseMI(bins, "torch").between(codes[:1], codes), expected[:1], atol=1e-12)
