"""Convergence (paper Fig. 4): training-loss curves and time to convergence.

Time to convergence = the first epoch e after which the validation metric has not
improved by at least `min_improvement` for `patience` epochs: every value in epochs
e+1 .. e+patience stays below best(1..e) * (1 + min_improvement) (relative, the
default) or best + min_improvement (absolute); for a metric where lower is better
the comparison flips. A run whose curve ends before such an epoch is followed by
`patience` observed epochs has not converged, and is reported as such.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from analysis.errors import AnalysisError
from analysis.runs import HEADLINE_METRICS, Run


@dataclass(frozen=True)
class ConvergenceRule:
    patience: int = 10
    min_improvement: float = 0.005
    relative: bool = True

    def __post_init__(self):
        if self.patience < 1:
            raise AnalysisError(f"patience must be >= 1 epoch, got {self.patience}")
        if self.min_improvement < 0:
            raise AnalysisError(f"min_improvement must be >= 0, got {self.min_improvement}")


def time_to_convergence(epochs: Sequence[int], values: Sequence[float], rule: ConvergenceRule = ConvergenceRule(),
                        higher_is_better: bool = True) -> int | None:
    """The convergence epoch (from `epochs`), or None if the curve never converged."""
    if len(epochs) != len(values):
        raise AnalysisError(f"{len(epochs)} epochs but {len(values)} values")
    sign = 1.0 if higher_is_better else -1.0
    best = None
    for i in range(len(values)):
        v = sign * values[i]
        best = v if best is None else max(best, v)
        window = [sign * x for x in values[i + 1:i + 1 + rule.patience]]
        if len(window) < rule.patience:
            return None
        margin = abs(best) * rule.min_improvement if rule.relative else rule.min_improvement
        if max(window) < best + margin:
            return int(epochs[i])
    return None


def validation_metric(run: Run, preferred: str | None = None) -> str | None:
    """The `val_` key the convergence of a run is judged on: `preferred`, else the run's declared metric, else
    the headline metric."""
    keys = {k for row in run.curve for k in row if k.startswith("val_")}
    if preferred:
        return f"val_{preferred}" if f"val_{preferred}" in keys else (preferred if preferred in keys else None)
    if f"val_{run.declared_metric}" in keys:
        return f"val_{run.declared_metric}"
    for name in HEADLINE_METRICS:
        if f"val_{name}" in keys:
            return f"val_{name}"
    others = sorted(k for k in keys if k != "val_loss")
    return others[0] if others else ("val_loss" if "val_loss" in keys else None)


@dataclass(frozen=True)
class RunConvergence:
    run: Run
    metric: str | None     # None: the run logs no validation metric
    epoch: int | None      # None: never converged (or no metric)
    epochs_seen: int


def run_convergence(run: Run, rule: ConvergenceRule, metric: str | None = None) -> RunConvergence:
    key = validation_metric(run, metric)
    if key is None:
        return RunConvergence(run, None, None, len(run.curve))
    epochs, values = loss_curve(run, key)
    epoch = time_to_convergence(epochs, values, rule, higher_is_better=key != "val_loss")
    return RunConvergence(run, key, epoch, len(epochs))


def loss_curve(run: Run, key: str = "train_loss") -> tuple[list[int], list[float]]:
    """(epochs, values) of one metrics.jsonl key, over the epochs that logged it as a number."""
    points = [(row["epoch"], row[key]) for row in run.curve if isinstance(row.get(key), (int, float))]
    return [p[0] for p in points], [p[1] for p in points]
