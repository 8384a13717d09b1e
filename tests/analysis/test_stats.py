"""Summaries over seeds and Welch's t-test, against published values."""
import math

import numpy as np
import pytest

from analysis.errors import AnalysisError
from analysis.stats import Summary, describe, relative_difference_pct, welch, welch_from_summary


def test_describe_uses_the_requested_std_convention():
    values = [0.91, 0.93, 0.92, 0.94]
    pop, sample = describe(values, ddof=0), describe(values, ddof=1)
    assert pop.mean == pytest.approx(0.925)
    assert pop.std == pytest.approx(math.sqrt(0.0005 / 4))      # sum of squares 0.0005, over n
    assert sample.std == pytest.approx(math.sqrt(0.0005 / 3))   # over n - 1
    assert pop.with_ddof(1).std == pytest.approx(sample.std)
    assert sample.with_ddof(0).std == pytest.approx(pop.std)


def test_describe_refuses_bad_input():
    with pytest.raises(AnalysisError, match="non-empty"):
        describe([])
    with pytest.raises(AnalysisError, match="finite"):
        describe([1.0, float("nan")])
    with pytest.raises(AnalysisError, match="ddof 2 is not allowed"):
        describe([1.0, 2.0], ddof=2)
    with pytest.raises(AnalysisError, match="std must be >= 0"):
        Summary(1.0, -0.1, 3, 0)


# NIST/SEMATECH e-Handbook of Statistical Methods, section 1.3.5.3 "Two-Sample t-Test for
# Equal Means" (AUTO83B.DAT, US vs Japanese cars, miles per gallon): N1 = 249, N2 = 79,
# means 20.14458 and 30.48101, standard deviations 6.41470 and 6.10771; for unequal
# variances the handbook gives T = -12.94627 and nu = 136.8750.
def test_welch_matches_the_nist_handbook_example():
    result = welch_from_summary(Summary(20.14458, 6.41470, 249, ddof=1), Summary(30.48101, 6.10771, 79, ddof=1))
    assert result.t == pytest.approx(-12.94627, abs=5e-6)
    assert result.df == pytest.approx(136.8750, abs=5e-5)
    assert result.p < 1e-20


# A worked example (senseofstudy.com, "Two-Sample Tests", example 4): n = 20, mean 100,
# s = 15 vs n = 20, mean 95, s = 20 gives t = 0.895 and df = 35.2.
def test_welch_matches_a_worked_example_from_summaries():
    result = welch_from_summary(Summary(100, 15, 20, ddof=1), Summary(95, 20, 20, ddof=1))
    assert round(result.t, 3) == 0.894  # the page rounds 5 / 5.59 to 0.895; 5 / sqrt(31.25) = 0.8944
    assert round(result.df, 1) == 35.2
    assert result.p > 0.05


# R's t.test (Welch is its default) on two samples of 10, as printed in its output:
# "t = -1.8325, df = 17.9, p-value = 0.08356".
def test_welch_matches_r_output():
    result = welch([11, 9, 10, 11, 10, 12, 9, 11, 12, 9], [11, 13, 10, 13, 12, 9, 11, 12, 12, 11])
    assert round(result.t, 4) == -1.8325
    assert round(result.df, 1) == 17.9
    assert round(result.p, 5) == 0.08356


def test_summary_with_population_std_gives_the_same_test_as_raw_values():
    a, b = [0.81, 0.83, 0.86], [0.78, 0.80, 0.79, 0.77]
    raw = welch(a, b)
    from_pop = welch_from_summary(describe(a, ddof=0), describe(b, ddof=0))
    assert (from_pop.t, from_pop.df, from_pop.p) == pytest.approx((raw.t, raw.df, raw.p), rel=1e-12)
    # scipy's own Welch test agrees
    from scipy import stats
    ref = stats.ttest_ind(a, b, equal_var=False)
    assert raw.t == pytest.approx(ref.statistic) and raw.p == pytest.approx(ref.pvalue)


def test_welch_is_undefined_without_spread_or_with_one_value():
    assert all(math.isnan(x) for x in vars(welch([0.5, 0.5], [0.5, 0.5])).values())
    one = welch_from_summary(Summary(0.5, 0.0, 1, 0), Summary(0.4, 0.01, 3, 0))
    assert math.isnan(one.p)


def test_relative_difference():
    assert relative_difference_pct(0.9, 0.8) == pytest.approx(12.5)
    assert relative_difference_pct(0.8, 0.9) == pytest.approx(-100 / 9)
    assert math.isnan(relative_difference_pct(1.0, 0.0))
    assert np.isfinite(relative_difference_pct(0.0, 1.0))
