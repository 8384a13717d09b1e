"""The computing half of `tlx analyze`: each section's numbers and figure data, held in small records.

`analysis.report.compute_report` calls these in section order and stores what they
return in the `Report`; nothing here writes a file or formats Markdown. A record that
becomes a figure names its file (`figure`, relative to the report folder).

    >>> panels = comparison_panels(results, compare(results), headline)   # one heatmap per task with >= 2 inits
    >>> scale, adjusted_rows = scale_adjustment(rows, runs, out_dir, runs_dir, options, notes)
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from analysis.convergence import RunConvergence, loss_curve, run_convergence
from analysis.errors import AnalysisError
from analysis.overlap import align, load_correctness, prediction_overlap, prediction_similarity
from analysis.results import Comparison, ResultRow, by_table
from analysis.runs import GroupKey, Run, slug
from analysis.scale_adjust import adjusted_rows, pretraining_sizes
from analysis.scale_factors import RESULT_NAME, ScaleFactor, load_results, pairs_path
from analysis.scale_factors import from_values as scale_factors_from_values
from analysis.slice_utility import SliceUtilityPanel, slice_utility
from analysis.stats import Summary, describe
from analysis.weights import LAYERS, feature_reuse, load_first_layers, redundancy, uniqueness_values

if TYPE_CHECKING:
    from analysis.report import ReportOptions

Curve = tuple[list[int], list[float]]
REUSE_STATS = ("linear_cka", "rbf_cka", "svcca", "uniqueness_init", "uniqueness_final", "redundancy_init",
               "redundancy_final")
# feature_reuse.csv also has uniqueness_init_sd / uniqueness_final_sd: the spread over the chunk pairs of one run
# (np.std, the study's error bar), not a statistic over runs


def by_group(runs: list[Run]) -> dict[GroupKey, dict[str, list[Run]]]:
    """group -> init -> runs sorted by seed (fine-tuning runs only)."""
    out: dict[GroupKey, dict[str, list[Run]]] = defaultdict(lambda: defaultdict(list))
    for run in sorted(runs, key=lambda r: r.seed):
        if not run.is_pretraining:
            out[run.group][run.init].append(run)
    return {g: dict(sorted(v.items())) for g, v in sorted(out.items())}


# ---------------------------------------------------------------- scale adjustment

@dataclass
class ScaleAdjustment:
    """The scale factors in use, where they came from, and the pretraining pair they adjust."""

    factors: dict[str, ScaleFactor] = field(default_factory=dict)  # "lb"/"ub" -> ScaleFactor
    source: str = ""
    pair: tuple[str, str] | None = None      # (small, large) pretraining inits; None: no adjustment made
    sizes: dict[str, int] = field(default_factory=dict)


def find_scale_factors(options: ReportOptions, out_dir: Path, runs_dir) -> Path | None:
    if options.scale_factors:
        return Path(options.scale_factors)
    candidates = [out_dir / RESULT_NAME]
    if runs_dir is not None:
        candidates += sorted(Path(runs_dir).rglob(RESULT_NAME))
    return next((c for c in candidates if c.is_file()), None)


def scale_adjustment(rows: list[ResultRow], runs: list[Run], out_dir: Path, runs_dir, options: ReportOptions,
                     notes: list[str]) -> tuple[ScaleAdjustment, list[ResultRow]]:
    """Scale factors from the options or a scale_factors.json, and the adjusted rows where a pair of inits allows;
    why none could be made goes into `notes`."""
    given = scale_factors_from_values(options.s_lb, options.s_ub)
    path = None if len(given) == 2 else find_scale_factors(options, out_dir, runs_dir)
    found = load_results(path) if path is not None else {}
    sources = ([f"`{path}`"] if found else []) + (["values given by hand"] if given else [])
    scale = ScaleAdjustment({**found, **given}, " and ".join(sources))
    if not scale.factors:
        notes.append("no scale factors: run `tlx scale-factors DATA --out` into this report folder, "
                     "or pass --scale-factors FILE or --s-lb/--s-ub")
        return scale, []
    sizes = {**pretraining_sizes(runs), **options.sizes}
    if options.scale_pair is not None:
        small, large = options.scale_pair
    else:
        sized = sorted((sizes[i], i) for i in {r.init for r in rows} if i in sizes)
        if len(sized) != 2 or sized[0][0] == sized[1][0]:
            notes.append(f"needs results for two pretraining sets of different, known sizes (found: "
                         f"{', '.join(f'{i} ({n:,})' for n, i in sized) or 'none'}); "
                         f"pass --scale-pair SMALL:LARGE and, if needed, --size INIT=N")
            return scale, []
        (_, small), (_, large) = sized
    scale.pair, scale.sizes = (small, large), sizes
    out, skipped = adjusted_rows(rows, small, large, sizes, scale.factors, options.interpolation, options.ddof)
    notes += skipped
    if not out and not skipped:
        notes.append(f"no task has results for both {small!r} and {large!r}")
    return scale, out


def slice_utility_panel(options: ReportOptions, out_dir: Path, runs_dir, notes: list[str]) -> SliceUtilityPanel | None:
    """Fig. SF4 from the slice pairs the scale_factors.json in use names (`tlx scale-factors --dump-pairs`)."""
    path = find_scale_factors(options, out_dir, runs_dir)
    pairs = pairs_path(path) if path is not None else None
    if pairs is None:
        notes.append("no slice pairs: run `tlx scale-factors DATA --out REPORT --dump-pairs` for utility against "
                     "slice distance (Fig. SF4)")
        return None
    try:
        return slice_utility(pairs)
    except AnalysisError as exc:
        notes.append(str(exc))
        return None


# ---------------------------------------------------------------- pairwise comparisons

@dataclass
class ComparisonPanel:
    """One task's headline metric: Welch tests of every pair of inits, as a heatmap and a table."""

    group: GroupKey
    metric: str
    inits: list[str]
    pairs: dict[tuple[str, str], Comparison]   # (init_a, init_b) -> test, both orders
    delta: np.ndarray                          # delta %, row a vs column b
    p: np.ndarray

    @property
    def figure(self) -> str:
        return f"figures/compare_{self.group.slug()}_{slug(self.metric)}.png"


def comparison_panels(results: list[ResultRow], comparisons: list[Comparison],
                      headline: Callable[[GroupKey], str]) -> list[ComparisonPanel]:
    tables = by_table(results)
    index: dict[tuple, dict] = defaultdict(dict)  # (group, metric) -> (init_a, init_b) -> Comparison
    for c in comparisons:
        index[(c.group, c.metric)][(c.init_a, c.init_b)] = c
    panels = []
    for group in sorted({g for g, _ in tables}):
        metric = headline(group)
        inits = sorted(tables[(group, metric)])
        if len(inits) < 2:
            continue
        pairs = index[(group, metric)]
        delta = np.full((len(inits), len(inits)), np.nan)
        p = np.full_like(delta, np.nan)
        for i, a in enumerate(inits):
            for j, b in enumerate(inits):
                if (a, b) in pairs:
                    delta[i, j], p[i, j] = pairs[(a, b)].delta_pct, pairs[(a, b)].test.p
        panels.append(ComparisonPanel(group, metric, inits, pairs, delta, p))
    return panels


# ---------------------------------------------------------------- convergence

@dataclass
class PretrainingPanel:
    """Pretraining runs' curves against the optimizer step: the training loss of every steps.jsonl line (the
    per-epoch mean where a run has no steps.jsonl) and the kNN probe's val accuracy at each epoch's end."""
    loss: dict[str, Curve]   # run folder -> (steps, loss)
    knn: dict[str, Curve]    # run folder -> (steps, kNN accuracy); runs without the probe left out
    figure: str = "figures/pretraining_loss.png"


@dataclass
class ConvergencePanel:
    """One task's runs with curves: time to convergence per run, and the curves to plot."""

    group: GroupKey
    metric: str | None                           # the validation metric judged (None: no run logs one)
    results: dict[str, list[RunConvergence]]     # init -> one per run (seed order)
    epochs: dict[str, Summary | None]            # init -> mean/std of the converged epochs (None: none converged)
    series: dict[str, list[Curve]]               # init -> training loss curves
    val: dict[str, list[Curve]]                  # init -> validation metric curves
    figure: str | None = None                    # None: nothing to plot

    @property
    def converged(self) -> dict[str, list[int]]:
        return {init: [c.epoch for c in conv if c.epoch is not None] for init, conv in self.results.items()}


def pretraining_panel(runs: list[Run]) -> PretrainingPanel | None:
    pretrain = [r for r in runs if r.is_pretraining and (r.curve or r.steps)]
    if not pretrain:
        return None

    def points(rows: list[dict], key: str) -> Curve:
        kept = [(row["step"], row[key]) for row in rows if isinstance(row.get(key), (int, float)) and "step" in row]
        return [p[0] for p in kept], [p[1] for p in kept]

    loss = {r.rel: points(r.steps, "loss") if r.steps else points(r.curve, "train_loss") for r in pretrain}
    knn = {r.rel: points(r.curve, "val_knn_accuracy") for r in pretrain}
    return PretrainingPanel({k: c for k, c in loss.items() if c[0]}, {k: c for k, c in knn.items() if c[0]})


def _curves(inits: dict[str, list[Run]], key: str) -> dict[str, list[Curve]]:
    """init -> the runs' curves of one metrics.jsonl key (runs that never logged it, and inits left empty, left out)."""
    curves = {init: [loss_curve(r, key) for r in group_runs] for init, group_runs in inits.items()}
    curves = {init: [c for c in runs_curves if c[0]] for init, runs_curves in curves.items()}
    return {init: runs_curves for init, runs_curves in curves.items() if runs_curves}


def convergence_panels(runs: list[Run], options: ReportOptions) -> list[ConvergencePanel]:
    panels = []
    for group, inits in by_group([r for r in runs if r.curve and not r.is_pretraining]).items():
        results = {init: [run_convergence(r, options.rule, options.convergence_metric) for r in group_runs]
                   for init, group_runs in inits.items()}
        metric = next((c.metric for conv in results.values() for c in conv if c.metric), None)
        series = _curves(inits, "train_loss")
        val = _curves(inits, metric) if metric else {}
        panel = ConvergencePanel(group, metric, results, {}, series, val,
                                 f"figures/convergence_{group.slug()}.png" if series or val else None)
        panel.epochs = {init: describe(epochs, options.ddof) if epochs else None
                        for init, epochs in panel.converged.items()}
        panels.append(panel)
    return panels


# ---------------------------------------------------------------- feature reuse

@dataclass
class ReuseCell:
    """One table row of feature reuse: a task, init and layer over its runs."""

    group: GroupKey
    init: str
    layer: str
    n: int
    stats: dict[str, Summary | None]   # REUSE_STATS key -> mean/std over the runs that have it (None: none)


@dataclass
class ReusePanel:
    group: GroupKey
    inits: list[str]
    values: dict[str, dict[tuple[str, str], tuple[float, float]]]  # kernel -> (init, layer) -> (mean, std)

    @property
    def figure(self) -> str:
        return f"figures/reuse_{self.group.slug()}.png"


def reuse_rows(runs: list[Run], options: ReportOptions, notes: list[str]) -> list[dict]:
    """feature_reuse.csv rows of every fine-tuning run with first_layers.npz; one unreadable file is a note."""
    with_layers = [r for r in runs if not r.is_pretraining and r.first_layers is not None]
    if not with_layers:
        notes.append("no fine-tuning run has first_layers.npz")
        return []
    rows = []
    for run in with_layers:
        try:
            rows += _run_reuse(run, options, notes)
        except (AnalysisError, OSError, ValueError) as exc:  # one bad file: noted, the other runs go on
            notes.append(f"{run.rel}: {exc}")
    return rows


def _run_reuse(run: Run, options: ReportOptions, notes: list[str]) -> list[dict]:
    layers = load_first_layers(run.first_layers)
    rows = []
    for k, reuse in enumerate(feature_reuse(layers, options.rbf_threshold, options.weight_layout,
                                            options.rbf_bandwidth)):
        row = {"path": run.rel, "task": run.task, "setting": run.setting, "fraction": run.fraction,
               "init": run.init, "seed": run.seed, "layer": reuse.layer, "layout": options.weight_layout,
               "rbf_bandwidth": options.rbf_bandwidth,
               "linear_cka": reuse.linear_cka, "rbf_cka": reuse.rbf_cka, "svcca": reuse.svcca}
        for when, w in zip(("init", "final"), layers[reuse.layer]):
            values = _or_note(lambda: uniqueness_values(w, options.uniqueness_chunks, options.rbf_threshold,
                                                        options.weight_layout, options.rbf_bandwidth),
                              f"{run.rel}: {reuse.layer} ({when}): uniqueness", notes)
            row[f"uniqueness_{when}"] = None if values is None else float(np.mean(values))
            row[f"uniqueness_{when}_sd"] = None if values is None else float(np.std(values))
            # fewer than 4 filters cannot be split into halves
            row[f"redundancy_{when}"] = (redundancy(w, options.redundancy_splits, options.seed + k)[0]
                                         if w.shape[0] >= 4 else None)
        rows.append(row)
    return rows


def _or_note(compute: Callable[[], np.ndarray], what: str, notes: list[str]) -> np.ndarray | None:
    """A value, or None and a note saying why it is n/a (e.g. filters that do not split into equal chunks)."""
    try:
        return compute()
    except AnalysisError as exc:
        notes.append(f"{what} n/a: {exc}")
        return None


def reuse_cells(rows: list[dict], ddof: int) -> tuple[list[ReuseCell], list[ReusePanel]]:
    """The table rows (task, init, layer) and one bar chart per task, with mean/std over runs in `ddof`."""
    cells: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        cells[(GroupKey(row["task"], row["setting"], row["fraction"]), row["init"], row["layer"])].append(row)

    def stat(cell_rows, key):
        values = [r[key] for r in cell_rows if r[key] is not None]
        return describe(values, ddof) if values else None

    table = [ReuseCell(group, init, layer, len(cell_rows), {key: stat(cell_rows, key) for key in REUSE_STATS})
             for (group, init, layer), cell_rows in sorted(cells.items(),
                                                           key=lambda kv: (*kv[0][:2], LAYERS.index(kv[0][2])))]
    panels = []
    for group in sorted({g for g, _, _ in cells}):
        values = {}
        for kernel, key in (("linear", "linear_cka"), ("RBF", "rbf_cka")):
            spread = {(init, layer): describe([r[key] for r in cells[(g, init, layer)]], ddof)
                      for g, init, layer in cells if g == group}
            values[kernel] = {cell: (s.mean, s.std) for cell, s in spread.items()}
        panels.append(ReusePanel(group, sorted({i for g, i, _ in cells if g == group}), values))
    return table, panels


# ---------------------------------------------------------------- prediction overlap and similarity

@dataclass
class OverlapPanel:
    """Right/wrong patterns of k inits: observed against expected fractions, averaged over model sets."""

    group: GroupKey
    names: list[str]
    model_sets: int
    units: int                                   # test units per model set (mean)
    cells: list[tuple[str, float, float]]        # (right only under, observed, expected), in table order
    rows: list[dict]                             # overlap.csv rows

    @property
    def figure(self) -> str:
        return f"figures/overlap_{self.group.slug()}.png"


@dataclass
class SimilarityPanel:
    group: GroupKey
    names: list[str]
    observed: np.ndarray      # P(both right or both wrong), init x init
    expected: np.ndarray
    rows: list[dict]          # similarity.csv rows, one per unordered pair (the diagonal: seeds of one init)

    @property
    def figure(self) -> str:
        return f"figures/similarity_{self.group.slug()}.png"


@dataclass
class OverlapGroup:
    """One task: which runs had to be left out, and its two tables (a string: why a table is not made)."""

    group: GroupKey
    left_out: list[tuple[str, str]] = field(default_factory=list)   # (run folder, error)
    readable: bool = True              # False: fewer than two readable predictions.parquet
    overlap: OverlapPanel | str | None = None     # None: one init only (its seeds go into the similarity)
    similarity: SimilarityPanel | str | None = None


def overlap_groups(runs: list[Run], notes: list[str]) -> list[OverlapGroup]:
    """Every task with two or more complete runs with predictions.parquet; what fails is also a note."""
    complete = [r for r in runs if not r.is_pretraining and r.metrics is not None and r.predictions is not None]
    groups = {g: inits for g, inits in by_group(complete).items() if sum(len(v) for v in inits.values()) >= 2}
    if not groups:
        notes.append("fewer than two runs of one task have predictions.parquet")
    out = []
    for group, inits in groups.items():
        entry = OverlapGroup(group)
        correct: dict[str, list] = {}
        for init, group_runs in inits.items():
            for run in group_runs:
                try:
                    correct.setdefault(init, []).append(load_correctness(run.predictions))
                except AnalysisError as exc:  # one unreadable file: that run is left out, and said so
                    notes.append(f"{run.rel}: left out: {exc}")
                    entry.left_out.append((run.rel, str(exc)))
        correct = {init: runs for init, runs in correct.items() if runs}
        entry.readable = sum(len(v) for v in correct.values()) >= 2
        if entry.readable:
            names = list(correct)
            if len(names) >= 2:
                entry.overlap = _or_reason(overlap_panel, group, names, correct, notes)
            entry.similarity = _or_reason(similarity_panel, group, names, correct, notes)
        out.append(entry)
    return out


def _or_reason(make, group: GroupKey, names: list[str], correct: dict, notes: list[str]):
    try:
        return make(group, names, correct)
    except AnalysisError as exc:  # e.g. runs without common test units: this table is not made
        notes.append(f"{group.label()}: {exc}")
        return str(exc)


def pattern_label(inits: list[str], pattern: tuple[bool, ...]) -> str:
    right = [i for i, ok in zip(inits, pattern) if ok]
    return "none" if not right else ("all" if len(right) == len(inits) else " + ".join(right))


def overlap_panel(group: GroupKey, names: list[str], correct: dict) -> OverlapPanel:
    tuples = min(len(correct[n]) for n in names)
    sums: dict[tuple, list[float]] = defaultdict(lambda: [0.0, 0.0])
    units = []
    for t in range(tuples):
        matrix = align([correct[n][t] for n in names])
        units.append(matrix.shape[1])
        for cell in prediction_overlap(matrix):
            sums[cell.pattern][0] += cell.observed / tuples
            sums[cell.pattern][1] += cell.expected / tuples
    cells, rows = [], []
    for pattern, (o, e) in sorted(sums.items(), key=lambda kv: (-sum(kv[0]), kv[0])):
        label = pattern_label(names, pattern)
        rows.append({"task": group.task, "setting": group.setting, "fraction": group.fraction,
                     "right_under": label, **{f"right_{n}": ok for n, ok in zip(names, pattern)},
                     "observed": o, "expected": e, "model_sets": tuples, "units": int(np.mean(units))})
        cells.append((label, o, e))
    return OverlapPanel(group, names, tuples, int(np.mean(units)), cells, rows)


def similarity_panel(group: GroupKey, names: list[str], correct: dict) -> SimilarityPanel:
    k = len(names)
    observed = np.full((k, k), np.nan)
    expected = np.full((k, k), np.nan)
    rows = []
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            if j < i:
                continue
            pairs = ([(x, y) for x, y in combinations(correct[a], 2)] if a == b
                     else [(x, y) for x in correct[a] for y in correct[b]])
            if not pairs:
                continue
            values = [prediction_similarity(*align([x, y])) for x, y in pairs]
            observed[i, j] = observed[j, i] = float(np.mean([v[0] for v in values]))
            expected[i, j] = expected[j, i] = float(np.mean([v[1] for v in values]))
            rows.append({"task": group.task, "setting": group.setting, "fraction": group.fraction,
                         "init_a": a, "init_b": b, "pairs": len(pairs), "observed": observed[i, j],
                         "expected": expected[i, j]})
    return SimilarityPanel(group, names, observed, expected, rows)
