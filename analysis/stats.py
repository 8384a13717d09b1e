"""Summaries over seeds and the two-sided Welch t-test, from raw values or from (mean, std, n).

    >>> describe([0.91, 0.93, 0.92, 0.94])              # population std (ddof=0), as the paper's tables
    Summary(mean=0.925, std=0.01118..., n=4, ddof=0)
    >>> welch([0.91, 0.93, 0.92, 0.94], [0.88, 0.90, 0.87, 0.91])
    Welch(t=..., df=..., p=...)

The t statistic always uses the sample variances (ddof=1); a summary given with the
population std (ddof=0) is converted first, so the same data give the same test
whichever convention a table was printed in.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from analysis.errors import AnalysisError

DDOFS = (0, 1)


@dataclass(frozen=True)
class Summary:
    """mean and std over n values; `ddof` says which std (0: population, 1: sample)."""

    mean: float
    std: float
    n: int
    ddof: int = 0

    def __post_init__(self):
        if self.ddof not in DDOFS:
            raise AnalysisError(f"ddof {self.ddof!r} is not allowed; use one of {DDOFS}")
        if self.n < 1:
            raise AnalysisError(f"n must be at least 1, got {self.n}")
        # NaN only where it is honest: the sample std of a single value
        if not (self.std >= 0 or (math.isnan(self.std) and self.n == 1 and self.ddof == 1)):
            raise AnalysisError(f"std must be >= 0, got {self.std}")

    def with_ddof(self, ddof: int) -> "Summary":
        """The same spread stated with another convention (NaN when n = 1 needs ddof 1)."""
        if ddof == self.ddof:
            return self
        if self.n < 2:
            return Summary(self.mean, 0.0 if ddof == 0 else math.nan, self.n, ddof)
        # population var = sample var * (n - 1) / n
        factor = math.sqrt((self.n - 1) / self.n) if ddof == 0 else math.sqrt(self.n / (self.n - 1))
        return Summary(self.mean, self.std * factor, self.n, ddof)

    @property
    def sample_var(self) -> float:
        """Unbiased variance (ddof=1); NaN for n = 1."""
        if self.n < 2:
            return math.nan
        return self.with_ddof(1).std ** 2


def describe(values: Sequence[float], ddof: int = 0) -> Summary:
    a = np.asarray(values, dtype=np.float64)
    if a.ndim != 1 or a.size == 0:
        raise AnalysisError(f"describe needs a non-empty list of numbers, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise AnalysisError(f"values must be finite numbers, got {a.tolist()}")
    if ddof not in DDOFS:
        raise AnalysisError(f"ddof {ddof!r} is not allowed; use one of {DDOFS}")
    std = float(a.std(ddof=ddof)) if a.size > ddof else math.nan
    return Summary(float(a.mean()), std, int(a.size), ddof)


@dataclass(frozen=True)
class Welch:
    """Two-sided Welch t-test of mean(a) - mean(b); NaN where it is undefined (n < 2, zero spread)."""

    t: float
    df: float
    p: float


def welch_from_summary(a: Summary, b: Summary) -> Welch:
    """Welch's t, Welch-Satterthwaite df and the two-sided p (scipy's Student t CDF)."""
    from scipy.special import stdtr  # the t CDF itself; scipy.stats costs seconds to import

    va, vb = a.sample_var / a.n, b.sample_var / b.n  # squared standard errors
    se2 = va + vb
    if not math.isfinite(se2) or se2 == 0.0:
        return Welch(math.nan, math.nan, math.nan)
    t = (a.mean - b.mean) / math.sqrt(se2)
    df = se2**2 / (va**2 / (a.n - 1) + vb**2 / (b.n - 1))
    p = float(2.0 * stdtr(df, -abs(t)))
    return Welch(float(t), float(df), p)


def welch(a: Sequence[float], b: Sequence[float]) -> Welch:
    """Welch's two-sided t-test on raw values (e.g. one metric over seeds for two inits)."""
    return welch_from_summary(describe(a, ddof=1), describe(b, ddof=1))


def relative_difference_pct(mean_a: float, mean_b: float) -> float:
    """100 * (mean_a / mean_b - 1): how much better (or worse) a is than b, in % of b."""
    if mean_b == 0:
        return math.nan
    return 100.0 * (mean_a / mean_b - 1.0)
