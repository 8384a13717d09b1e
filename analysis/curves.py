"""Curves of a task's headline test metric against the training data: K shots per class, the data
fraction, and the pretraining set's size; a line per init (size: per encoder model), a band over the
seeds and folds of each point.

    >>> panels = curve_panels(runs, headline, sizes={"radnet-1.28M": 1_280_000}, ddof=0)
    >>> panels[0].rows[0]     # {"curve": "shots", "task": ..., "line": "scratch", "x": 5, "n": 3, "mean": ...}

- `shots`: runs with `--shots K`, x = K;
- `fraction`: the other runs, x = the fraction;
- `size`: x = the pretraining samples of the run's init (`--size INIT=N`, else its pretraining run
  in the tree, else `init_pretrain_samples` of the run's config.json, the tlx checkpoint's
  `data_train_samples`); one panel per task, setting and subset, a line per encoder model
  (Cherti & Jitsev's metric against pretraining data size, per model). Inits of unknown size are
  left out, and `unsized` lists them.
A line needs two x values or more. The band is mean ± std over the point's runs (std with the
report's ddof; a single run has no band).
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

from analysis.runs import Run, fraction_label, slug
from analysis.stats import describe

CURVES = ("shots", "fraction", "size")


@dataclass
class CurvePanel:
    """One figure: a metric against one x for a task and setting (and for `size`, a subset)."""
    curve: str
    task: str
    setting: str
    subset: str           # "" for shots and fraction curves; "10%" / "5-shot" for size curves
    metric: str
    rows: list[dict] = field(default_factory=list)    # curves.csv rows of its points

    @property
    def title(self) -> str:
        return " / ".join(p for p in (self.task, self.setting, self.subset) if p) + f": {self.metric} vs {self.curve}"

    @property
    def figure(self) -> str:
        return f"figures/curve_{slug(f'{self.curve}_{self.task}_{self.setting}_{self.subset}')}.png"


def _x(run: Run, curve: str, sizes: dict[str, int]) -> float | None:
    if curve == "shots":
        return run.shots or None
    if curve == "fraction":
        return None if run.shots else run.fraction
    size = sizes.get(run.config["init"], run.config.get("init_pretrain_samples"))
    return size if isinstance(size, (int, float)) and not isinstance(size, bool) and size > 0 else None


def _line(run: Run, curve: str) -> str:
    return str(run.config.get("model", "?")) if curve == "size" else run.init


def curve_panels(runs: list[Run], headline, sizes: dict[str, int], ddof: int = 0) -> tuple[list[CurvePanel], list[str]]:
    """(the panels with two x values or more on some line, the inits left out of size curves for want of a size)."""
    points: dict[tuple, dict[tuple[str, float], list[float]]] = defaultdict(lambda: defaultdict(list))
    unsized = set()
    for run in runs:
        if run.metrics is None or run.is_pretraining:
            continue
        metric = headline(run.group)
        if metric not in run.metrics:
            continue
        for curve in CURVES:
            x = _x(run, curve, sizes)
            if x is None:
                if curve == "size":
                    unsized.add(run.config["init"])
                continue
            subset = run.group.subset_label() if curve == "size" else ""
            points[(curve, run.task, run.setting, subset, metric)][(_line(run, curve), x)].append(run.metrics[metric])
    panels = []
    for (curve, task, setting, subset, metric), cells in sorted(points.items()):
        xs_per_line = defaultdict(set)
        for line, x in cells:
            xs_per_line[line].add(x)
        if max(len(xs) for xs in xs_per_line.values()) < 2:
            continue
        panel = CurvePanel(curve, task, setting, subset, metric)
        for (line, x), values in sorted(cells.items()):
            s = describe(values, ddof)
            band = s.std if len(values) > 1 and math.isfinite(s.std) else 0.0
            panel.rows.append({"curve": curve, "task": task, "setting": setting, "subset": subset, "metric": metric,
                               "line": line, "x": x, "n": s.n, "mean": s.mean,
                               "std": s.std if len(values) > 1 else None,
                               "lo": s.mean - band, "hi": s.mean + band})
        panels.append(panel)
    return panels, sorted(unsized)


def x_label(curve: str) -> str:
    return {"shots": "examples per class (shots)", "fraction": "fraction of the training data",
            "size": "pretraining samples"}[curve]


def x_tick(curve: str, x: float) -> str:
    return fraction_label(x) if curve == "fraction" else f"{x:g}"
