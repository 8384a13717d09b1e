"""Prediction overlap (paper Fig. 6) and prediction similarity (Juodelyte et al.).

Runs are joined on the test unit: `sample`, plus `label` (multi-label) or `class`
(segmentation) where predictions.parquet has them; only units present in every run
compared are used, and how many that were is reported.

- overlap of k models: for every subset A of them, the fraction of units that exactly
  the models in A got right (and the others wrong), against the fraction expected if
  each model erred independently with its own accuracy a_i:
  prod_{i in A} a_i * prod_{i not in A} (1 - a_i);
- similarity of two models: the fraction of units on which both are right or both
  wrong, against a1*a2 + (1-a1)(1-a2) for independent errors.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import product
from pathlib import Path

import numpy as np

from analysis.errors import AnalysisError

UNIT_COLUMNS = ("sample", "label", "class")


def load_correctness(path: Path | str) -> dict[tuple, bool]:
    """test unit -> correct, from one run's predictions.parquet."""
    import polars as pl

    try:
        frame = pl.read_parquet(path)
        if "sample" not in frame.columns or "correct" not in frame.columns:
            raise AnalysisError(f"{path} needs columns 'sample' and 'correct', has {frame.columns}")
        keys = [c for c in UNIT_COLUMNS if c in frame.columns]
        units = frame.select(*(pl.col(k).cast(pl.String) for k in keys)).rows()
        correct = frame["correct"].cast(pl.Boolean).to_list()
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise AnalysisError(f"{path} cannot be read as predictions ({type(exc).__name__}: {exc})") from None
    if None in correct:
        raise AnalysisError(f"{path}: {correct.count(None)} test units have no 'correct' value")
    out = dict(zip(units, correct))
    if len(out) != frame.height:
        raise AnalysisError(f"{path}: {frame.height - len(out)} test units appear more than once ({keys})")
    return out


def align(correctness: list[dict[tuple, bool]]) -> np.ndarray:
    """(models, units) boolean matrix over the units every model was scored on."""
    common = set(correctness[0])
    for c in correctness[1:]:
        common &= set(c)
    if not common:
        raise AnalysisError("the runs share no test units (different test sets?)")
    units = sorted(common)
    return np.array([[c[u] for u in units] for c in correctness], dtype=bool)


@dataclass(frozen=True)
class OverlapCell:
    pattern: tuple[bool, ...]   # right (True) / wrong (False) per model
    observed: float             # fraction of units with exactly this pattern
    expected: float             # the same under independent errors


def prediction_overlap(correct: np.ndarray) -> list[OverlapCell]:
    """Every right/wrong pattern of the models (rows of `correct`), observed vs independent."""
    correct = np.asarray(correct, dtype=bool)
    k, n = correct.shape
    acc = correct.mean(1)
    codes = (correct.astype(np.int64) * (1 << np.arange(k))[::-1, None]).sum(0)
    counts = np.bincount(codes, minlength=1 << k)
    out = []
    for code, pattern in enumerate(product((False, True), repeat=k)):
        expected = float(np.prod([a if right else 1 - a for a, right in zip(acc, pattern)]))
        out.append(OverlapCell(pattern, counts[code] / n, expected))
    return out


def prediction_similarity(a, b) -> tuple[float, float]:
    """(observed, expected): P(both right or both wrong) and a1*a2 + (1-a1)(1-a2)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise AnalysisError(f"prediction similarity needs aligned units, got {a.shape} and {b.shape}")
    a1, a2 = a.mean(), b.mean()
    return float(np.mean(a == b)), float(a1 * a2 + (1 - a1) * (1 - a2))
