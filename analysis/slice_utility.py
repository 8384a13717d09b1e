"""Slice utility against slice distance (paper Fig. SF4), from `tlx scale-factors --dump-pairs`.

    >>> panel = slice_utility("report/scale_factors_pairs.parquet")
    >>> panel.rows[0]   # {"distance": 1, "pairs": ..., "mean": ..., "q10": ..., "median": ..., "q90": ...}

Each row of the pairs file is an ordered pair of slices (i, j) of one volume, their
distance |i - j| in slice_index steps and the utility 1 - r_ij of slice i once slice j is
known (analysis.scale_factors.slice_pairs). Per distance: how many pairs, the mean
utility and its 10th, 50th and 90th percentiles.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from analysis.errors import AnalysisError

COLUMNS = ("volume", "i", "j", "distance", "utility")


@dataclass
class SliceUtilityPanel:
    source: str              # the pairs file, as found
    volumes: int
    pairs: int
    rows: list[dict]         # slice_utility.csv: distance, pairs, mean, q10, median, q90
    figure: str = "figures/slice_utility.png"


def slice_utility(path: Path | str) -> SliceUtilityPanel:
    """Utility per slice distance over every pair of the file; an unreadable or incomplete file is refused."""
    import polars as pl

    try:
        pairs = pl.read_parquet(path)
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise AnalysisError(f"{path} cannot be read as Parquet ({type(exc).__name__}: {exc})") from None
    missing = [c for c in COLUMNS if c not in pairs.columns]
    if missing:
        raise AnalysisError(f"{path} lacks column(s) {missing} (write it with `tlx scale-factors --dump-pairs`)")
    if pairs.height == 0:
        raise AnalysisError(f"{path} holds no slice pairs")
    u = pl.col("utility").cast(pl.Float64)
    table = (pairs.group_by("distance")
             .agg(pl.len().alias("pairs"), u.mean().alias("mean"), u.quantile(0.1, "linear").alias("q10"),
                  u.quantile(0.5, "linear").alias("median"), u.quantile(0.9, "linear").alias("q90"))
             .sort("distance"))
    return SliceUtilityPanel(str(path), pairs["volume"].n_unique(), pairs.height, table.to_dicts())
