"""The weight-space quantities as the study defined them: its layout, its uniqueness coefficient; tlx's forms beside."""
import math

import numpy as np
import pytest

from analysis.errors import AnalysisError
from analysis.weights import as_representation, feature_reuse, redundancy, uniqueness


def test_the_study_layout_is_filter_positions_by_input_channels():
    w = np.arange(64 * 3 * 7 * 7, dtype=np.float64).reshape(64, 3, 7, 7)
    X = as_representation(w)                       # the default: the study's
    assert X.shape == (3136, 3)                    # (out * kh * kw) x in
    for o, y, x in ((0, 0, 0), (5, 2, 6), (63, 6, 6)):
        assert X[(o * 7 + y) * 7 + x].tolist() == w[o, :, y, x].tolist()
    K = as_representation(w, "kernel-positions")
    assert K.shape == (147, 64)                    # (in * kh * kw) x out: tlx's earlier layout
    assert K[:, 5].tolist() == w[5].ravel().tolist()
    with pytest.raises(AnalysisError, match="weight layout 'rows' is not known; use one of study-code, kernel-pos"):
        as_representation(w, "rows")


def test_uniqueness_of_identical_chunks_is_zero():
    chunk = np.random.default_rng(0).normal(size=(8, 3, 7, 7))
    assert uniqueness(np.tile(chunk, (8, 1, 1, 1))) == pytest.approx(0.0, abs=1e-12)
    assert uniqueness(np.tile(chunk, (8, 1, 1, 1)), layout="kernel-positions") == pytest.approx(0.0, abs=1e-12)


def _rbf(points):
    """exp(-d^2 / (2 median d^2)) over every entry of the squared-distance matrix, written out."""
    d2 = np.array([[(a - b) ** 2 for b in points] for a in points], dtype=np.float64)
    return np.exp(-d2 / (2 * np.median(d2)))


def test_uniqueness_against_a_hand_computed_two_chunk_example():
    # two filters of one input channel and 1 x 3 kernels: each chunk (one filter) is 3 examples x 1 feature
    w = np.array([[[[0.0, 1.0, 3.0]]], [[[0.0, 2.0, 1.0]]]])
    # squared distances of filter 0: 1, 9, 4 (median over the 9 entries: 1); filter 1: 4, 1, 1 (median 1)
    K = np.exp(-np.array([[0, 1, 9], [1, 0, 4], [9, 4, 0]]) / 2.0)
    L = np.exp(-np.array([[0, 4, 1], [4, 0, 1], [1, 1, 0]]) / 2.0)
    assert np.allclose(K, _rbf([0.0, 1.0, 3.0])) and np.allclose(L, _rbf([0.0, 2.0, 1.0]))
    H = np.eye(3) - 1.0 / 3
    Kc, Lc = H @ K @ H, H @ L @ H
    expected = 1.0 - np.sum(Kc * Lc) / math.sqrt(np.sum(Kc * Kc) * np.sum(Lc * Lc))
    assert uniqueness(w, chunks=2) == pytest.approx(expected, abs=1e-12)
    assert 0.0 < expected < 1.0


def test_random_filters_are_unique_by_the_study_and_not_redundant_by_tlx():
    """The issue's check: random conv1 filters give the study's uniqueness near 0.98 and tlx's old figure near 0.18,
    because the two quantities run opposite ways."""
    w = np.random.default_rng(0).normal(size=(64, 3, 7, 7))
    assert uniqueness(w) == pytest.approx(0.985, abs=0.01)
    assert redundancy(w, splits=10, seed=0)[0] == pytest.approx(0.18, abs=0.03)


def test_uniqueness_refuses_chunks_that_do_not_divide_the_filters():
    with pytest.raises(AnalysisError, match="the 12 filters into 8 equal chunks; 12 is not a multiple of 8"):
        uniqueness(np.ones((12, 3, 3, 3)))


def test_reuse_of_an_unchanged_layer_is_one_in_both_layouts_and_the_layouts_differ_after_a_change():
    rng = np.random.default_rng(1)
    w0 = rng.normal(size=(16, 3, 3, 3))
    w1 = w0 + 0.8 * rng.normal(size=w0.shape)
    for layout in ("study-code", "kernel-positions"):
        same = feature_reuse({"conv1.weight": (w0, w0)}, layout=layout)[0]
        assert same.linear_cka == pytest.approx(1.0) and same.rbf_cka == pytest.approx(1.0)
    study = feature_reuse({"conv1.weight": (w0, w1)}, layout="study-code")[0]
    tlx = feature_reuse({"conv1.weight": (w0, w1)}, layout="kernel-positions")[0]
    assert study.svcca_dims[0] <= 3 and tlx.svcca_dims[0] <= 16   # features: input channels vs filters
    assert abs(study.rbf_cka - tlx.rbf_cka) > 1e-3
