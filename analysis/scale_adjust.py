"""Scale-adjusted results (paper: "RadNet-1.28M (LB-adj.)" and "(UB-adj.)").

A CT dataset of N slices is worth only N / S independent images. To compare a CT
pretraining set fairly with a natural-image set of the same size, one wants the
result of pretraining on S * N_small slices; it lies between the results of the
small and the large pretraining set and is interpolated:

    w      = ln(S) / ln(N_large / N_small)            (space="log", default)
    w      = (S - 1) N_small / (N_large - N_small)     (space="linear")
    mean   = (1 - w) mean_small + w mean_large
    SE^2   = (1 - w)^2 s_small^2 / n_small + w^2 s_large^2 / n_large + (d mean / d S)^2 se(S)^2
    d mean / d S = (mean_large - mean_small) * dw/dS,  dw/dS = 1 / (S ln(N_large / N_small))  (log)
                                                       dw/dS = N_small / (N_large - N_small)  (linear)

s are sample stds (ddof=1). The result is stated as (mean, std, n) with n =
min(n_small, n_large) and sample std = sqrt(n * SE^2), so that a Welch test against
it uses exactly this standard error; then converted to the table's ddof. w must lie
in [0, 1]: S * N_small beyond N_large would be extrapolation and is refused.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from analysis.errors import AnalysisError
from analysis.stats import Summary

SPACES = ("log", "linear")
BOUND_LABELS = {"lb": "LB-adj.", "ub": "UB-adj."}


@dataclass(frozen=True)
class Interpolation:
    weight: float        # w: 0 = the small set's result, 1 = the large set's
    dweight_dfactor: float
    target_size: float   # S * N_small


def interpolation_weight(factor: float, size_small: float, size_large: float, space: str = "log") -> Interpolation:
    if space not in SPACES:
        raise AnalysisError(f"interpolation space {space!r} is not known; use one of {SPACES}")
    if not 0 < size_small < size_large:
        raise AnalysisError(f"pretraining sizes must satisfy 0 < small < large, got {size_small} and {size_large}")
    if not factor >= 1:
        raise AnalysisError(f"scale factor must be >= 1, got {factor}")
    if space == "log":
        span = math.log(size_large / size_small)
        w, dw = math.log(factor) / span, 1.0 / (factor * span)
    else:
        w = (factor - 1.0) * size_small / (size_large - size_small)
        dw = size_small / (size_large - size_small)
    target = factor * size_small
    if w > 1 + 1e-12:
        raise AnalysisError(f"S x small size = {target:,.0f} exceeds the large set's {size_large:,.0f} samples: "
                            f"that would be extrapolation")
    return Interpolation(min(w, 1.0), dw, target)


def interpolate_at_scale(small: Summary, large: Summary, size_small: float, size_large: float, factor: float,
                         factor_se: float = 0.0, space: str = "log", ddof: int = 0) -> Summary:
    """The small set's result interpolated at `factor` times its size, with propagated uncertainty."""
    ip = interpolation_weight(factor, size_small, size_large, space)
    w = ip.weight
    mean = (1 - w) * small.mean + w * large.mean
    var_small, var_large = small.sample_var, large.sample_var
    if math.isnan(var_small) or math.isnan(var_large):
        raise AnalysisError("scale adjustment needs at least 2 values (seeds) for both pretraining sets")
    se2 = (1 - w) ** 2 * var_small / small.n + w**2 * var_large / large.n
    se2 += ((large.mean - small.mean) * ip.dweight_dfactor * factor_se) ** 2
    n = min(small.n, large.n)
    return Summary(mean, math.sqrt(n * se2), n, 1).with_ddof(ddof)


def pretraining_sizes(runs) -> dict[str, int]:
    """init name -> training samples of the pretraining run behind it (config.json `data_train_samples`).

    A pretraining run answers to its folder name and to its config's `name`; a
    fine-tuning run's `init_checkpoint` inside a pretraining run's folder ties that
    run to the fine-tuning run's `init` as well.
    """
    sizes: dict[str, int] = {}
    folders: list[tuple[tuple[str, ...], int]] = []  # pretraining run folder (parts below the runs root), size
    for run in runs:
        size = run.config.get("data_train_samples")
        if run.is_pretraining and isinstance(size, int) and size > 0:
            for name in (run.path.name, run.config.get("name")):
                if isinstance(name, str):
                    sizes.setdefault(name, size)
            folders.append((Path(run.rel).parts, size))
    for run in runs:
        ckpt = run.config.get("init_checkpoint")
        if run.is_pretraining or not isinstance(ckpt, str):
            continue
        # The trainer may store the checkpoint path relative to where it ran: match the folder's
        # trailing parts (e.g. pretrain/radnet-1.28M) anywhere in the checkpoint's path.
        parts = Path(ckpt).parts[:-1]
        for folder, size in folders:
            k = len(folder)
            if any(parts[i:i + k] == folder for i in range(len(parts) - k + 1)):
                sizes.setdefault(run.init, size)
                break
    return sizes


def adjusted_rows(rows, small: str, large: str, sizes: dict[str, float], factors: dict, space: str = "log",
                  ddof: int = 0) -> tuple[list, list[str]]:
    """Extra rows "<small> (LB-adj.)" / "(UB-adj.)" wherever both pretraining sets have results.

    `factors`: {"lb": ScaleFactor, "ub": ScaleFactor}. Returns (rows, notes); a note
    says why a table got no adjusted row.
    """
    from analysis.results import ResultRow, by_table

    for name in (small, large):
        if name not in sizes:
            raise AnalysisError(f"no pretraining size for init {name!r}: give it (e.g. --size {name}=1281167) "
                                f"or keep its pretraining run (config.json data_train_samples) in the runs folder")
    out, notes = [], []
    for (group, metric), inits in by_table(rows).items():
        if small not in inits or large not in inits:
            continue
        for bound, sf in sorted(factors.items()):
            try:
                summary = interpolate_at_scale(inits[small].summary, inits[large].summary, sizes[small], sizes[large],
                                               sf.value, sf.se, space, ddof)
            except AnalysisError as exc:
                notes.append(f"{group.label()} {metric} {BOUND_LABELS[bound]}: {exc}")
                continue
            out.append(ResultRow(group, metric, f"{small} ({BOUND_LABELS[bound]})", summary, None, "scale-adjusted"))
    return out, notes
