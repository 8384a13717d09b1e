"""Scale-adjusted results: the interpolation against hand-computed examples."""
import math

import pytest

from analysis.errors import AnalysisError
from analysis.runs import find_runs
from analysis.scale_adjust import interpolate_at_scale, interpolation_weight, pretraining_sizes
from analysis.stats import Summary
from tests.analysis.synthetic import write_run

# Small set: 1,000 samples, 0.80 ± 0.02 (sample std, 4 seeds); large set: 10,000 samples, 0.90 ± 0.04 (4 seeds).
SMALL = Summary(0.80, 0.02, 4, ddof=1)
LARGE = Summary(0.90, 0.04, 4, ddof=1)


def test_log_interpolation_by_hand():
    # S = sqrt(10): S * 1,000 lies halfway between 1,000 and 10,000 in log size, so w = 0.5.
    # mean = 0.5 * 0.80 + 0.5 * 0.90 = 0.85
    # SE^2 = 0.25 * 0.02^2 / 4 + 0.25 * 0.04^2 / 4 = 0.000025 + 0.0001 = 0.000125
    # sample std = sqrt(n * SE^2) = sqrt(4 * 0.000125) = sqrt(0.0005) = 0.0223607
    # population std = 0.0223607 * sqrt(3 / 4) = 0.0193649
    result = interpolate_at_scale(SMALL, LARGE, 1000, 10000, math.sqrt(10), ddof=0)
    assert interpolation_weight(math.sqrt(10), 1000, 10000).weight == pytest.approx(0.5)
    assert result.mean == pytest.approx(0.85)
    assert result.std == pytest.approx(0.0193649, abs=1e-7)
    assert (result.n, result.ddof) == (4, 0)
    assert interpolate_at_scale(SMALL, LARGE, 1000, 10000, math.sqrt(10), ddof=1).std == pytest.approx(0.0223607,
                                                                                                      abs=1e-7)


def test_uncertainty_of_s_is_propagated():
    # d mean / d S = (0.90 - 0.80) / (S ln 10) = 0.1 / (3.16228 * 2.30259) = 0.0137336
    # extra SE^2 = (0.0137336 * 0.1)^2 = 1.88612e-6; sample std = sqrt(4 * (0.000125 + 1.88612e-6)) = 0.0225287
    result = interpolate_at_scale(SMALL, LARGE, 1000, 10000, math.sqrt(10), factor_se=0.1, ddof=1)
    assert result.std == pytest.approx(0.0225287, abs=1e-7)


def test_linear_interpolation_by_hand():
    # S = 5.5: 5,500 samples are halfway between 1,000 and 10,000: w = 4.5 * 1000 / 9000 = 0.5.
    # dw/dS = 1000 / 9000; with se(S) = 0.1 the extra SE^2 = (0.1 / 9 * 0.1)^2 = 1.23457e-6
    # sample std = sqrt(4 * (0.000125 + 1.23457e-6)) = 0.0224708
    assert interpolation_weight(5.5, 1000, 10000, "linear").weight == pytest.approx(0.5)
    result = interpolate_at_scale(SMALL, LARGE, 1000, 10000, 5.5, factor_se=0.1, space="linear", ddof=1)
    assert result.mean == pytest.approx(0.85)
    assert result.std == pytest.approx(0.0224708, abs=1e-7)


def test_interpolation_refuses_extrapolation_and_bad_sizes():
    with pytest.raises(AnalysisError, match="exceeds the large set's 10,000 samples"):
        interpolation_weight(20, 1000, 10000)
    with pytest.raises(AnalysisError, match="0 < small < large"):
        interpolation_weight(2, 10000, 1000)
    with pytest.raises(AnalysisError, match="must be >= 1"):
        interpolation_weight(0.5, 1000, 10000)
    with pytest.raises(AnalysisError, match="interpolation space 'cubic' is not known"):
        interpolation_weight(2, 1000, 10000, "cubic")
    with pytest.raises(AnalysisError, match="at least 2 values"):
        interpolate_at_scale(Summary(0.8, 0.0, 1, 0), LARGE, 1000, 10000, 2.0)


def test_pretraining_sizes_come_from_the_pretraining_runs(tmp_path):
    root = tmp_path / "runs"
    small = write_run(root, "simclr", "radnet-small", 0, setting="pretrain", data_train_samples=1000)
    write_run(root, "simclr", "radnet-large", 0, setting="pretrain", data_train_samples=10000, name="big")
    # a fine-tuning run whose init name differs from the folder, tied to it by its checkpoint path
    write_run(root, "radnet", "my-ct-init", 0, metrics={"accuracy": 0.5},
              init_checkpoint=str(small / "checkpoints" / "last.pt"))
    # ... or by a checkpoint path relative to wherever the trainer ran
    write_run(root, "radnet", "relative-init", 0, metrics={"accuracy": 0.5},
              init_checkpoint="runs/pretrain/radnet-large/checkpoints/last.pt")
    runs, problems = find_runs(root)
    assert problems == []
    sizes = pretraining_sizes(runs)
    assert sizes == {"radnet-small": 1000, "radnet-large": 10000, "big": 10000, "my-ct-init": 1000,
                     "relative-init": 10000}
