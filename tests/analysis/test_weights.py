"""The weight-space quantities as the study defined them: its layout, its uniqueness coefficient; tlx's forms beside."""
import math

import numpy as np
import pytest

from analysis.cka import gram_rbf
from analysis.errors import AnalysisError
from analysis.weights import as_representation, feature_reuse, redundancy, uniqueness, uniqueness_values


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


def _rbf(points, median):
    """exp(-d^2 / (2 m)) with m the given median of the squared distances, written out."""
    d2 = np.array([[(a - b) ** 2 for b in points] for a in points], dtype=np.float64)
    return np.exp(-d2 / (2 * median))


def _one_minus_cka(K, L):
    H = np.eye(len(K)) - 1.0 / len(K)
    Kc, Lc = H @ K @ H, H @ L @ H
    return 1.0 - np.sum(Kc * Lc) / math.sqrt(np.sum(Kc * Kc) * np.sum(Lc * Lc))


def test_uniqueness_against_a_hand_computed_two_chunk_example():
    # two filters of one input channel and 1 x 3 kernels: the study layout has 6 rows (filter, column) x 1 channel,
    # cut into 2 chunks of 3 rows = one filter each
    w = np.array([[[[0.0, 1.0, 3.0]]], [[[0.0, 2.0, 1.0]]]])
    # filter 0: squared distances 1, 9, 4. The study's CKA code (CudaCKA) takes torch.median of the nonzero
    # entries [1, 1, 4, 4, 9, 9]: the lower middle value, 4. Kornblith's median over all 9 entries (3 zeros): 1.
    # filter 1: squared distances 4, 1, 1: nonzero [1, 1, 1, 1, 4, 4] -> 1; all 9 entries -> 1.
    study = _one_minus_cka(_rbf([0.0, 1.0, 3.0], 4.0), _rbf([0.0, 2.0, 1.0], 1.0))
    kornblith = _one_minus_cka(_rbf([0.0, 1.0, 3.0], 1.0), _rbf([0.0, 2.0, 1.0], 1.0))
    assert uniqueness(w, chunks=2) == pytest.approx(study, abs=1e-12)             # the default: the study's
    assert uniqueness(w, chunks=2, bandwidth="kornblith") == pytest.approx(kornblith, abs=1e-12)
    assert 0.0 < study < 1.0 and abs(study - kornblith) > 1e-3
    assert uniqueness_values(w, chunks=2).tolist() == pytest.approx([study])      # one pair: the mean is its value


def test_uniqueness_values_are_the_28_pairs_and_their_spread_is_the_studys_error_bar():
    w = np.random.default_rng(3).normal(size=(16, 2, 3, 3))
    values = uniqueness_values(w)
    assert len(values) == 28                                        # 8 chunks: 28 pairs (i < j)
    assert uniqueness(w) == pytest.approx(values.mean()) and 0 < values.std() < values.mean()
    # the study cut the rows of the (out*kh*kw) x in matrix: with 16 filters, chunk 1 is filters 2 and 3
    X = as_representation(w)
    first = uniqueness_values(w, chunks=8)[0]                         # chunks 0 and 1
    assert first == pytest.approx(_one_minus_cka(gram_rbf(X[:18], bandwidth="study-code"),
                                                 gram_rbf(X[18:36], bandwidth="study-code")))


def test_random_filters_are_unique_by_the_study_and_not_redundant_by_tlx():
    """The issue's check: random conv1 filters give the study's uniqueness near 0.98 and tlx's old figure near 0.18,
    because the two quantities run opposite ways."""
    w = np.random.default_rng(0).normal(size=(64, 3, 7, 7))
    assert uniqueness(w) == pytest.approx(0.985, abs=0.01)
    assert redundancy(w, splits=10, seed=0)[0] == pytest.approx(0.18, abs=0.03)


def test_uniqueness_refuses_chunks_that_do_not_divide_the_rows():
    # the study's feature_uniqueness raised for rows that do not split evenly; 12 * 3 * 3 = 108 rows
    with pytest.raises(AnalysisError, match="the 108 rows .filter positions. into 8 equal chunks; 108 is not a multi"):
        uniqueness(np.ones((12, 3, 3, 3)))
    with pytest.raises(AnalysisError, match="the 12 filters into 8 equal chunks; 12 is not a multiple of 8"):
        uniqueness(np.ones((12, 3, 3, 3)), layout="kernel-positions")
    # 12 filters of 2 x 2 kernels are 48 rows: the study's code cut them into 8 chunks of 6 (mid-filter) and so do we
    assert len(uniqueness_values(np.random.default_rng(0).normal(size=(12, 3, 2, 2)))) == 28


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
