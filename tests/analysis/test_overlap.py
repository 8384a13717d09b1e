"""Prediction overlap and similarity against counts made by hand."""
from itertools import product

import numpy as np
import polars as pl
import pytest

from analysis.errors import AnalysisError
from analysis.overlap import align, load_correctness, prediction_overlap, prediction_similarity


def test_independent_models_match_the_expectation_exactly():
    a = [True, True, True, True, False, False, False, False]
    b = [True, True, False, False, True, True, False, False]
    cells = prediction_overlap(np.array([a, b]))
    assert [(c.pattern, c.observed, c.expected) for c in cells] == [
        ((False, False), 0.25, 0.25), ((False, True), 0.25, 0.25),
        ((True, False), 0.25, 0.25), ((True, True), 0.25, 0.25)]
    assert prediction_similarity(a, b) == (0.5, 0.5)


def test_identical_models_overlap_more_than_independent_ones():
    a = [True, True, True, False]
    cells = {c.pattern: c for c in prediction_overlap(np.array([a, a]))}
    assert cells[(True, True)].observed == 0.75 and cells[(True, True)].expected == pytest.approx(0.5625)
    assert cells[(True, False)].observed == 0 and cells[(True, False)].expected == pytest.approx(0.1875)
    assert prediction_similarity(a, a) == (1.0, pytest.approx(0.75**2 + 0.25**2))


def test_three_models_against_a_brute_force_count():
    rng = np.random.default_rng(0)
    correct = rng.random((3, 500)) < [[0.9], [0.7], [0.6]]
    cells = prediction_overlap(correct)
    assert len(cells) == 8 and sum(c.observed for c in cells) == pytest.approx(1.0)
    acc = correct.mean(1)
    for cell, pattern in zip(cells, product((False, True), repeat=3)):
        assert cell.pattern == pattern
        count = sum(all(correct[m, u] == pattern[m] for m in range(3)) for u in range(500))
        assert cell.observed == count / 500
        assert cell.expected == pytest.approx(np.prod([acc[m] if pattern[m] else 1 - acc[m] for m in range(3)]))


def test_runs_are_joined_on_their_common_test_units(tmp_path):
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    pl.DataFrame({"sample": ["s1", "s1", "s2", "s2"], "label": ["x", "y", "x", "y"],
                  "correct": [True, False, True, True]}).write_parquet(a)
    pl.DataFrame({"sample": ["s1", "s1", "s2", "s3"], "label": ["x", "y", "x", "x"],
                  "correct": [False, False, True, True]}).write_parquet(b)
    matrix = align([load_correctness(a), load_correctness(b)])
    assert matrix.tolist() == [[True, False, True], [False, False, True]]  # (s1,x), (s1,y), (s2,x)
    pl.DataFrame({"sample": ["s1", "s1"], "correct": [True, False]}).write_parquet(a)
    with pytest.raises(AnalysisError, match="1 test units appear more than once"):
        load_correctness(a)
    pl.DataFrame({"sample": ["s9"], "correct": [True]}).write_parquet(a)
    with pytest.raises(AnalysisError, match="share no test units"):
        align([load_correctness(a), load_correctness(b)])
