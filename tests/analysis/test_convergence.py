"""Time to convergence on curves whose answer is known by construction."""
import pytest

from analysis.convergence import ConvergenceRule, time_to_convergence
from analysis.errors import AnalysisError

RULE = ConvergenceRule()  # 10 epochs, 0.5 % relative


def epochs(values):
    return list(range(1, len(values) + 1))


def test_converges_at_the_last_real_improvement():
    values = [0.5, 0.6, 0.7, 0.8, 0.9] + [0.9] * 15
    assert time_to_convergence(epochs(values), values, RULE) == 5


def test_improvements_below_the_threshold_do_not_count_but_their_sum_does():
    small_steps = [0.5, 0.9] + [0.9 * (1 + 0.004 * (k % 2)) for k in range(12)]  # wobbles by 0.4 % of the best
    assert time_to_convergence(epochs(small_steps), small_steps, RULE) == 2
    steady = [0.9 + 0.002 * k for k in range(40)]  # 0.2 %/epoch adds up to > 0.5 % within 10 epochs
    assert time_to_convergence(epochs(steady), steady, RULE) is None


def test_a_run_that_ends_too_soon_has_not_converged():
    values = [0.5, 0.6, 0.7, 0.8, 0.9] + [0.9] * 5
    assert time_to_convergence(epochs(values), values, RULE) is None
    assert time_to_convergence(epochs(values), values, ConvergenceRule(patience=5)) == 5


def test_lower_is_better_and_absolute_thresholds():
    loss = [2.0, 1.0, 0.5, 0.49, 0.49] + [0.49] * 10
    # relative: 0.49 is 2 % below 0.5, an improvement; convergence at epoch 4
    assert time_to_convergence(epochs(loss), loss, RULE, higher_is_better=False) == 4
    # absolute 0.05: the step from 0.5 to 0.49 is too small, so epoch 3 already counts
    absolute = ConvergenceRule(min_improvement=0.05, relative=False)
    assert time_to_convergence(epochs(loss), loss, absolute, higher_is_better=False) == 3


def test_epoch_numbers_come_from_the_log():
    values = [0.5, 0.9] + [0.9] * 10
    assert time_to_convergence([3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25], values, RULE) == 5


def test_bad_parameters_are_refused():
    with pytest.raises(AnalysisError, match="patience must be >= 1 epoch, got 0"):
        ConvergenceRule(patience=0)
    with pytest.raises(AnalysisError, match="min_improvement must be >= 0"):
        ConvergenceRule(min_improvement=-0.1)
    with pytest.raises(AnalysisError, match="3 epochs but 2 values"):
        time_to_convergence([1, 2, 3], [0.1, 0.2])
