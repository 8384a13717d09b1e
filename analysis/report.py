"""`tlx analyze`: runs (and/or a published summary table) -> report/index.md, figures and tables.

    >>> from analysis.report import build_report, ReportOptions
    >>> report = build_report("runs/", "report/")                         # every section it can make
    >>> report = build_report(None, "report/", summary="published.csv")   # statistics of a published table
    >>> report.results, report.comparisons, report.notes["feature reuse"]

Each section of index.md either shows its numbers or says what it is missing
(e.g. runs without first_layers.npz). Written next to index.md: results.csv,
comparisons.csv, convergence.csv, feature_reuse.csv, overlap.csv, similarity.csv,
runs.csv, report_config.json and figures/*.png. Formulas and choices: docs/analysis.md.
"""
from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from itertools import combinations
from pathlib import Path

import numpy as np

from analysis import figures
from analysis.convergence import ConvergenceRule, RunConvergence, loss_curve, run_convergence
from analysis.errors import AnalysisError
from analysis.markdown import fmt, fmt_p, image, table
from analysis.overlap import align, load_correctness, prediction_overlap, prediction_similarity
from analysis.results import (ResultRow, by_table, compare, comparisons_frame, merge, read_summary_csv,
                              results_frame, results_from_runs)
from analysis.runs import GroupKey, Run, find_runs, fraction_label, headline_metric, slug
from analysis.scale_adjust import BOUND_LABELS, SPACES, adjusted_rows, pretraining_sizes
from analysis.scale_factors import RESULT_NAME, load_results
from analysis.scale_factors import from_values as scale_factors_from_values
from analysis.stats import describe
from analysis.weights import LAYERS, feature_reuse, feature_uniqueness, load_first_layers

SECTIONS = ("runs", "result tables", "pairwise comparisons", "scale-adjusted results", "scale factors",
            "convergence", "feature reuse", "prediction overlap")


@dataclass
class ReportOptions:
    ddof: int = 0                              # std convention of the tables (0: population, as the paper)
    alpha: float = 0.05                        # significance level marked in figures and counts
    patience: int = 10                         # convergence: epochs without enough improvement
    min_improvement: float = 0.005             # convergence: 0.5 %
    relative_improvement: bool = True          # convergence: min_improvement relative to the best so far
    convergence_metric: str | None = None      # validation metric (None: the task's headline metric)
    rbf_threshold: float = 1.0                 # RBF CKA bandwidth, in units of the median distance
    uniqueness_splits: int = 10                # random halvings per layer for feature uniqueness
    seed: int = 0
    scale_factors: str | None = None           # scale_factors.json (None: look in the out and runs folders)
    s_lb: float | None = None                  # or give the bounds by hand
    s_ub: float | None = None
    scale_pair: tuple[str, str] | None = None  # (small, large) pretraining inits (None: found from sizes)
    sizes: dict[str, int] = field(default_factory=dict)  # init -> pretraining samples (overrides the runs)
    interpolation: str = "log"                 # scale adjustment in log or linear size

    def __post_init__(self):
        if self.interpolation not in SPACES:
            raise AnalysisError(f"interpolation {self.interpolation!r} is not known; use one of {SPACES}")
        if not 0 < self.alpha < 1:
            raise AnalysisError(f"alpha must be in (0, 1), got {self.alpha}")
        if self.uniqueness_splits < 1:  # (0 gave a mean of no values: NaN uniqueness with numpy warnings)
            raise AnalysisError(f"uniqueness_splits must be >= 1, got {self.uniqueness_splits}")
        if not self.rbf_threshold > 0:  # (checked here once, not as a note for every run's weights)
            raise AnalysisError(f"rbf_threshold must be > 0, got {self.rbf_threshold}")
        self.rule = ConvergenceRule(self.patience, self.min_improvement, self.relative_improvement)


@dataclass
class Report:
    out_dir: Path
    index: Path
    options: ReportOptions
    runs: list[Run] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    results: list[ResultRow] = field(default_factory=list)
    comparisons: list = field(default_factory=list)
    scale_factors: dict = field(default_factory=dict)   # "lb"/"ub" -> ScaleFactor
    scale_factors_source: str = ""
    scale_pair: tuple[str, str] | None = None
    sizes: dict[str, int] = field(default_factory=dict)
    convergence: list[RunConvergence] = field(default_factory=list)
    reuse: list[dict] = field(default_factory=list)
    overlap: list[dict] = field(default_factory=list)
    similarity: list[dict] = field(default_factory=list)
    notes: dict[str, list[str]] = field(default_factory=lambda: {s: [] for s in SECTIONS})
    files: list[str] = field(default_factory=list)

    def headline(self, group: GroupKey) -> str:
        """The metric figures and the terminal show for a group: the one its runs declare, else by name."""
        names = {r.metric for r in self.results if r.group == group}
        declared = next((r.declared_metric for r in self.runs if r.group == group and r.declared_metric), None)
        return headline_metric(names, declared)


def build_report(runs_dir: Path | str | None, out_dir: Path | str, summary: Path | str | None = None,
                 options: ReportOptions | None = None) -> Report:
    """Analyse a run tree and/or a summary table; write the report; return its numbers."""
    options = options or ReportOptions()
    if runs_dir is None and summary is None:
        raise AnalysisError("nothing to analyse: give a runs folder and/or --summary published.csv")
    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    rep = Report(out, out / "index.md", options)
    if runs_dir is not None:
        rep.runs, rep.problems = find_runs(runs_dir)
    rows = results_from_runs(rep.runs, options.ddof)
    if summary is not None:
        rows = merge(rows, read_summary_csv(summary, options.ddof))
    rows += _scale_adjusted(rep, rows, runs_dir)
    rep.results = sorted(rows, key=lambda r: (r.group, r.metric, r.init))
    rep.comparisons = compare(rep.results)
    lines = _header(rep, runs_dir, summary)
    for section in (_runs_section, _results_section, _comparisons_section, _adjusted_section,
                    _scale_factors_section, _convergence_section, _reuse_section, _overlap_section):
        lines += section(rep)
    _write_tables(rep)
    lines += _files_section(rep)
    rep.index.write_text("\n".join(lines) + "\n")
    return rep


# ---------------------------------------------------------------- writing helpers

def _figure(rep: Report, name: str) -> tuple[Path, str]:
    rel = f"figures/{name}.png"
    rep.files.append(rel)
    return rep.out_dir / rel, rel


def _csv(rep: Report, frame, name: str) -> None:
    frame.write_csv(rep.out_dir / name)
    rep.files.append(name)


def _write_tables(rep: Report) -> None:
    import polars as pl

    _csv(rep, results_frame(rep.results), "results.csv")
    _csv(rep, comparisons_frame(rep.comparisons), "comparisons.csv")
    runs = [{"path": r.rel, "task": r.task, "init": r.init, "setting": r.setting, "fraction": r.fraction,
             "seed": r.seed, "complete": r.metrics is not None, "epochs_logged": len(r.curve),
             "predictions": r.predictions is not None, "first_layers": r.first_layers is not None} for r in rep.runs]
    if runs:
        _csv(rep, pl.DataFrame(runs), "runs.csv")
    conv = [{"path": c.run.rel, "task": c.run.task, "setting": c.run.setting, "fraction": c.run.fraction,
             "init": c.run.init, "seed": c.run.seed, "metric": c.metric, "converged_epoch": c.epoch,
             "epochs_logged": c.epochs_seen} for c in rep.convergence]
    for rows, name in ((conv, "convergence.csv"), (rep.reuse, "feature_reuse.csv"), (rep.overlap, "overlap.csv"),
                       (rep.similarity, "similarity.csv")):
        if rows:
            _csv(rep, pl.DataFrame(rows, infer_schema_length=None), name)
    options = {k: v for k, v in asdict(rep.options).items()}
    (rep.out_dir / "report_config.json").write_text(json.dumps(options, indent=2, default=str) + "\n")
    rep.files.append("report_config.json")


def _by_group(runs: list[Run]) -> dict[GroupKey, dict[str, list[Run]]]:
    """group -> init -> runs sorted by seed (fine-tuning runs only)."""
    out: dict[GroupKey, dict[str, list[Run]]] = defaultdict(lambda: defaultdict(list))
    for run in sorted(runs, key=lambda r: r.seed):
        if not run.is_pretraining:
            out[run.group][run.init].append(run)
    return {g: dict(sorted(v.items())) for g, v in sorted(out.items())}


def _mean_std(values, ddof: int, digits: int) -> str:
    """'mean ± std' over seeds in the report's std convention (n/a: the sample std of one value)."""
    s = describe(values, ddof)
    return f"{s.mean:.{digits}f} ± " + ("n/a" if math.isnan(s.std) else f"{s.std:.{digits}f}")


def _missing(note: str, runs: list[Run], limit: int = 8) -> list[str]:
    names = [r.rel for r in runs]
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return [f"{note}: " + ", ".join(f"`{n}`" for n in names[:limit]) + more + ".", ""] if names else []


# ---------------------------------------------------------------- sections

def _header(rep: Report, runs_dir, summary) -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        tool = version("tlx")
    except PackageNotFoundError:
        tool = "unknown"
    inputs = []
    if runs_dir is not None:
        inputs.append(f"runs folder `{runs_dir}`")
    if summary is not None:
        inputs.append(f"summary table `{summary}`")
    convention = ("population std (ddof=0), as in the paper's tables" if rep.options.ddof == 0
                  else "sample std (ddof=1)")
    return ["# tlx analysis report", "",
            f"Made by tlx {tool} from {' and '.join(inputs)}. Every table below is also a file in this folder; "
            f"formulas and choices are in tlx's docs/analysis.md.", "",
            f"**Std convention:** mean ± std over seeds, std = {convention}; n = number of seeds. "
            f"Welch tests always use the sample variance (ddof=1), whatever the tables show.", ""]


def _runs_section(rep: Report) -> list[str]:
    lines = ["## Runs", ""]
    finetune = [r for r in rep.runs if not r.is_pretraining]
    complete = [r for r in finetune if r.metrics is not None]
    pretrain = [r for r in rep.runs if r.is_pretraining]
    lines += table(["runs found", "fine-tuning, complete", "fine-tuning, no result.json", "pretraining", "left out"],
                   [[len(rep.runs) + len(rep.problems), len(complete), len(finetune) - len(complete), len(pretrain),
                     len(rep.problems)]])
    lines += _missing("Without result.json (not complete; curves only)", [r for r in finetune if r.metrics is None])
    undefined = [f"`{r.rel}`: {', '.join(r.undefined)}" for r in finetune if r.undefined]
    if undefined:
        lines += ["Metrics that result.json gives as null (undefined on that test set; left out of the tables): "
                  + "; ".join(undefined) + ".", ""]
    if rep.problems:
        lines += ["Left out:", ""] + [f"- {p}" for p in rep.problems] + [""]
        rep.notes["runs"] += rep.problems
    return lines


def _results_section(rep: Report) -> list[str]:
    lines = ["## Result tables", ""]
    if not rep.results:
        rep.notes["result tables"].append("no complete run (result.json) and no summary table: nothing to tabulate")
        return lines + ["No results: no run has a result.json and no summary table was given.", ""]
    lines += ["Mean ± std (n) per init; the best mean of each row in **bold** (higher is better for every metric). "
              "Rows marked adj. are scale-adjusted (see below).", ""]
    settings: dict[tuple[str, float], dict] = defaultdict(dict)
    for (group, metric), inits in by_table(rep.results).items():
        settings[(group.setting, group.fraction)][(group.task, metric)] = inits
    for (setting, fraction), tables in sorted(settings.items()):
        inits = sorted({i for row in tables.values() for i in row})
        lines += [f"### {setting}, {fraction_label(fraction)} of the training data", ""]
        body = []
        headlines = {rep.headline(GroupKey(task, setting, fraction)) for task, _ in tables}
        for (task, metric), row in sorted(tables.items(), key=lambda kv: (kv[0][0], kv[0][1] not in headlines,
                                                                          kv[0][1])):
            best = max(r.summary.mean for r in row.values())
            cells = []
            for init in inits:
                if init not in row:
                    cells.append("")
                    continue
                s = row[init].summary
                text = f"{fmt(s.mean)} ± {fmt(s.std)}"
                cells.append((f"**{text}**" if s.mean == best else text) + f" ({s.n})")
            body.append([task, metric] + cells)
        lines += table(["task", "metric"] + inits, body)
    return lines


def _comparison_matrices(pairs: dict, inits: list[str]):
    """(delta %, p) matrices, row a vs column b, from {(init_a, init_b): Comparison} of one group and metric."""
    delta = np.full((len(inits), len(inits)), np.nan)
    p = np.full_like(delta, np.nan)
    for i, a in enumerate(inits):
        for j, b in enumerate(inits):
            if (a, b) in pairs:
                delta[i, j], p[i, j] = pairs[(a, b)].delta_pct, pairs[(a, b)].test.p
    return delta, p


def _comparisons_section(rep: Report) -> list[str]:
    lines = ["## Pairwise comparisons", "",
             "For every pair of inits on a task: relative difference 100 (mean_a / mean_b − 1) % (row a vs "
             "column b) and the two-sided Welch t-test. Figures show each task's headline metric; "
             "`comparisons.csv` holds every metric and ordered pair.", ""]
    tables = by_table(rep.results)
    groups = sorted({g for g, _ in tables})
    index: dict[tuple, dict] = defaultdict(dict)  # (group, metric) -> (init_a, init_b) -> Comparison
    for c in rep.comparisons:
        index[(c.group, c.metric)][(c.init_a, c.init_b)] = c
    shown = 0
    for group in groups:
        metric = rep.headline(group)
        inits = sorted(tables[(group, metric)])
        if len(inits) < 2:
            continue
        shown += 1
        pairs = index[(group, metric)]
        delta, p = _comparison_matrices(pairs, inits)
        path, rel = _figure(rep, f"compare_{group.slug()}_{slug(metric)}")
        figures.comparison_heatmap(inits, delta, p, f"{group.label()}: {metric}", path, rep.options.alpha)
        lines += [f"### {group.label()}: {metric}", "", image(f"comparisons {group.label()}", rel), ""]
        body = []
        for a, b in combinations(inits, 2):
            c = pairs[(a, b)]
            mark = " *" if c.test.p < rep.options.alpha else ""
            delta = f"{c.delta_pct:+.2f}" if math.isfinite(c.delta_pct) else "n/a"
            body.append([a, b, delta, fmt(c.test.t, 3), fmt(c.test.df, 2), fmt_p(c.test.p) + mark])
        lines += table(["init a", "init b", "Δ % (a vs b)", "t", "df", "p"], body)
    if shown == 0:
        rep.notes["pairwise comparisons"].append("no task has results for two or more inits")
        lines += ["No task has results for two or more inits: nothing to compare.", ""]
    else:
        n_sig = sum(1 for c in rep.comparisons if c.init_a < c.init_b and c.test.p < rep.options.alpha)
        n_all = sum(1 for c in rep.comparisons if c.init_a < c.init_b)
        lines += [f"{n_sig} of {n_all} unordered pairs (all metrics) differ at p < {rep.options.alpha:g} "
                  f"(uncorrected for multiple comparisons).", ""]
    return lines


def _find_scale_factors(rep: Report, runs_dir) -> Path | None:
    if rep.options.scale_factors:
        return Path(rep.options.scale_factors)
    candidates = [rep.out_dir / RESULT_NAME]
    if runs_dir is not None:
        candidates += sorted(Path(runs_dir).rglob(RESULT_NAME))
    return next((c for c in candidates if c.is_file()), None)


def _scale_adjusted(rep: Report, rows: list[ResultRow], runs_dir) -> list[ResultRow]:
    """Scale factors from the options or a scale_factors.json; adjusted rows where a pair of inits allows."""
    notes = rep.notes["scale-adjusted results"]
    opts = rep.options
    given = scale_factors_from_values(opts.s_lb, opts.s_ub)
    path = None if len(given) == 2 else _find_scale_factors(rep, runs_dir)
    found = load_results(path) if path is not None else {}
    rep.scale_factors = {**found, **given}
    sources = ([f"`{path}`"] if found else []) + (["values given by hand"] if given else [])
    rep.scale_factors_source = " and ".join(sources)
    if not rep.scale_factors:
        notes.append("no scale factors: run `tlx scale-factors DATA --out` into this report folder, "
                     "or pass --scale-factors FILE or --s-lb/--s-ub")
        return []
    sizes = {**pretraining_sizes(rep.runs), **opts.sizes}
    inits_with_results = {r.init for r in rows}
    if opts.scale_pair is not None:
        small, large = opts.scale_pair
    else:
        sized = sorted((sizes[i], i) for i in inits_with_results if i in sizes)
        if len(sized) != 2 or sized[0][0] == sized[1][0]:
            notes.append(f"needs results for two pretraining sets of different, known sizes (found: "
                         f"{', '.join(f'{i} ({n:,})' for n, i in sized) or 'none'}); "
                         f"pass --scale-pair SMALL:LARGE and, if needed, --size INIT=N")
            return []
        (_, small), (_, large) = sized
    rep.scale_pair, rep.sizes = (small, large), sizes
    out, skipped = adjusted_rows(rows, small, large, sizes, rep.scale_factors, opts.interpolation, opts.ddof)
    notes += skipped
    if not out and not skipped:
        notes.append(f"no task has results for both {small!r} and {large!r}")
    return out


def _adjusted_section(rep: Report) -> list[str]:
    lines = ["## Scale-adjusted results", ""]
    adjusted = [r for r in rep.results if r.source == "scale-adjusted"]
    if not adjusted:
        return lines + [f"Not computed: {n}." for n in rep.notes["scale-adjusted results"]] + [""]
    small, large = rep.scale_pair
    factors = ", ".join(f"S_{b.upper()} = {sf.value:.4g}" + (f" (se {sf.se:.3g})" if sf.se else "")
                        for b, sf in sorted(rep.scale_factors.items()))
    lines += [f"The result of pretraining on {small} interpolated ({rep.options.interpolation} size) between "
              f"{small} ({rep.sizes[small]:,} samples) and {large} ({rep.sizes[large]:,} samples) at S × "
              f"{rep.sizes[small]:,} samples, with {factors} from {rep.scale_factors_source}. They appear as extra "
              f"init columns ({', '.join(f'{small} ({BOUND_LABELS[b]})' for b in sorted(rep.scale_factors))}) "
              f"in the result tables and comparisons.", ""]
    body = [[r.group.label(), r.metric, r.init, f"{fmt(r.summary.mean)} ± {fmt(r.summary.std)} ({r.summary.n})"]
            for r in adjusted]
    lines += table(["task", "metric", "init", "mean ± std (n)"], body)
    lines += [f"- {n}" for n in rep.notes["scale-adjusted results"]]
    return lines + [""]


def _scale_factors_section(rep: Report) -> list[str]:
    lines = ["## Scale factors", ""]
    if not rep.scale_factors:
        rep.notes["scale factors"].append("not computed (run `tlx scale-factors`)")
        return lines + ["No scale factors: run `tlx scale-factors DATA --out REPORT` (writes scale_factors.json "
                        "here) or pass --s-lb/--s-ub.", ""]
    body = []
    for bound, sf in sorted(rep.scale_factors.items()):
        ci = (f"{sf.value - 1.96 * sf.se:.4g} – {sf.value + 1.96 * sf.se:.4g}" if sf.se else "—")
        body.append([f"S_{bound.upper()}", f"{sf.value:.4g}", ci])
    lines += [f"From {rep.scale_factors_source}.", ""] + table(["bound", "value", "95% CI"], body)
    failed = max(sf.volumes_failed for sf in rep.scale_factors.values())
    if failed:
        note = (f"{failed} volume(s) failed in `tlx scale-factors` and are not in S "
                f"(their errors: `volumes_failed` in the scale factors file)")
        rep.notes["scale factors"].append(note)
        lines += [f"**{note}.**", ""]
    return lines


def _convergence_section(rep: Report) -> list[str]:
    opts = rep.options
    kind = "relative to the best so far" if opts.relative_improvement else "absolute"
    lines = ["## Convergence", "",
             f"Time to convergence = first epoch after which the validation metric did not improve by at least "
             f"{opts.min_improvement * 100:g}% ({kind}) for {opts.patience} epochs; runs that never met this are "
             f"counted as not converged.", ""]
    with_curves = [r for r in rep.runs if r.curve]
    lines += _missing("No metrics.jsonl (no curve)", [r for r in rep.runs if not r.curve])
    if not with_curves:
        rep.notes["convergence"].append("no run has metrics.jsonl")
        return lines + ["No run has a metrics.jsonl: no curves.", ""]
    pretrain = [r for r in with_curves if r.is_pretraining]
    if pretrain:
        path, rel = _figure(rep, "pretraining_loss")
        series = {r.rel: [loss_curve(r)] for r in pretrain if loss_curve(r)[0]}
        figures.convergence_plot(series, {}, {}, "pretraining: training loss", None, path)
        lines += ["### Pretraining", "", image("pretraining loss", rel), ""]
    body = []
    for group, inits in _by_group([r for r in with_curves if not r.is_pretraining]).items():
        results = {init: [run_convergence(r, opts.rule, opts.convergence_metric) for r in runs]
                   for init, runs in inits.items()}
        for conv in results.values():
            rep.convergence += conv
        metric = next((c.metric for conv in results.values() for c in conv if c.metric), None)
        series = {init: [loss_curve(r) for r in runs if loss_curve(r)[0]] for init, runs in inits.items()}
        series = {k: v for k, v in series.items() if v}
        val = {init: [loss_curve(r, metric) for r in runs] for init, runs in inits.items()} if metric else {}
        val = {k: [c for c in v if c[0]] for k, v in val.items()}
        val = {k: v for k, v in val.items() if v}
        if series or val:
            path, rel = _figure(rep, f"convergence_{group.slug()}")
            converged = {init: [c.epoch for c in conv if c.epoch is not None] for init, conv in results.items()}
            figures.convergence_plot(series or val, val, converged, group.label(), metric, path)
            lines += [f"### {group.label()}", "", image(f"convergence {group.label()}", rel), ""]
        for init, conv in results.items():
            epochs = [c.epoch for c in conv if c.epoch is not None]
            never = [f"seed {c.run.seed}" for c in conv if c.epoch is None and c.metric]
            body.append([group.label(), init, metric or "none logged", f"{len(epochs)}/{len(conv)}",
                         _mean_std(epochs, opts.ddof, 1) if epochs else "—",
                         ", ".join(never) or "—"])
    if body:
        lines += table(["task", "init", "validation metric", "converged", "epochs (mean ± std)", "not converged"],
                       body)
    return lines


def _reuse_section(rep: Report) -> list[str]:
    opts = rep.options
    lines = ["## Feature reuse and uniqueness", "",
             f"CKA between each of the first three conv layers before and after fine-tuning (weights from "
             f"first_layers.npz; kernel positions as examples, filters as features), linear and RBF (bandwidth "
             f"{opts.rbf_threshold:g} × median distance), and SVCCA (99% variance; n/a where too few examples). "
             f"Uniqueness: linear CKA between random halves of a layer's filters ({opts.uniqueness_splits} splits; "
             f"lower = more unique filters), for the weights before (init) and after (final) fine-tuning.", ""]
    finetune = [r for r in rep.runs if not r.is_pretraining]
    lines += _missing("No first_layers.npz", [r for r in finetune if r.first_layers is None])
    runs = [r for r in finetune if r.first_layers is not None]
    if not runs:
        rep.notes["feature reuse"].append("no fine-tuning run has first_layers.npz")
        return lines + ["Not computed: no fine-tuning run has first_layers.npz.", ""]
    for run in runs:
        try:
            rep.reuse += _run_reuse(run, opts)
        except (AnalysisError, OSError, ValueError) as exc:  # one bad file: noted, the other runs go on
            rep.notes["feature reuse"].append(f"{run.rel}: {exc}")
    lines += [f"- {n}" for n in rep.notes["feature reuse"]]
    cells: dict[tuple, list[dict]] = defaultdict(list)
    for row in rep.reuse:
        cells[(GroupKey(row["task"], row["setting"], row["fraction"]), row["init"], row["layer"])].append(row)
    body = []
    for (group, init, layer), rows in sorted(cells.items(), key=lambda kv: (*kv[0][:2], LAYERS.index(kv[0][2]))):
        def stat(key):
            vals = [r[key] for r in rows if r[key] is not None]
            return _mean_std(vals, opts.ddof, 3) if vals else "n/a"
        body.append([group.label(), init, layer.replace(".weight", ""), len(rows), stat("linear_cka"), stat("rbf_cka"),
                     stat("svcca"), stat("uniqueness_init"), stat("uniqueness_final")])
    lines += table(["task", "init", "layer", "n", "linear CKA", "RBF CKA", "SVCCA", "uniqueness init",
                    "uniqueness final"], body)
    for group in sorted({g for g, _, _ in cells}):
        inits = sorted({i for g, i, _ in cells if g == group})
        values = {}
        for kernel, key in (("linear", "linear_cka"), ("RBF", "rbf_cka")):
            spread = {(i, l): describe([r[key] for r in cells[(g, i, l)]], opts.ddof) for g, i, l in cells if g == group}
            values[kernel] = {cell: (s.mean, s.std) for cell, s in spread.items()}
        path, rel = _figure(rep, f"reuse_{group.slug()}")
        figures.reuse_plot(list(LAYERS), inits, values, ["linear", "RBF"], f"feature reuse: {group.label()}", path)
        lines += [image(f"feature reuse {group.label()}", rel), ""]
    return lines


def _run_reuse(run: Run, opts: ReportOptions) -> list[dict]:
    layers = load_first_layers(run.first_layers)
    rows = []
    for k, reuse in enumerate(feature_reuse(layers, opts.rbf_threshold)):
        init_w, final_w = layers[reuse.layer]
        unique = [feature_uniqueness(w, opts.uniqueness_splits, opts.seed + k)[0] if w.shape[0] >= 4 else None
                  for w in (init_w, final_w)]  # fewer than 4 filters cannot be split into halves
        rows.append({"path": run.rel, "task": run.task, "setting": run.setting, "fraction": run.fraction,
                     "init": run.init, "seed": run.seed, "layer": reuse.layer, "linear_cka": reuse.linear_cka,
                     "rbf_cka": reuse.rbf_cka, "svcca": reuse.svcca, "uniqueness_init": unique[0],
                     "uniqueness_final": unique[1]})
    return rows


def _pattern_label(inits: list[str], pattern: tuple[bool, ...]) -> str:
    right = [i for i, ok in zip(inits, pattern) if ok]
    return "none" if not right else ("all" if len(right) == len(inits) else " + ".join(right))


def _overlap_section(rep: Report) -> list[str]:
    lines = ["## Prediction overlap and similarity", "",
             "Overlap: the fraction of test units right under exactly the named inits (and wrong under the others), "
             "against the fraction expected if each model erred independently at its own accuracy; models of "
             "different inits are matched by seed rank (the i-th seed of each). Similarity: P(two models are both "
             "right or both wrong) against a1·a2 + (1−a1)(1−a2); the diagonal compares seeds of one init.", ""]
    finetune = [r for r in rep.runs if not r.is_pretraining and r.metrics is not None]
    lines += _missing("No predictions.parquet", [r for r in finetune if r.predictions is None])
    groups = _by_group([r for r in finetune if r.predictions is not None])
    groups = {g: inits for g, inits in groups.items() if sum(len(v) for v in inits.values()) >= 2}
    if not groups:
        rep.notes["prediction overlap"].append("fewer than two runs of one task have predictions.parquet")
        return lines + ["Not computed: no task has two or more runs with predictions.parquet.", ""]
    notes = rep.notes["prediction overlap"]
    for group, inits in groups.items():
        lines += [f"### {group.label()}", ""]
        correct: dict[str, list] = {}
        for init, runs in inits.items():
            for run in runs:
                try:
                    correct.setdefault(init, []).append(load_correctness(run.predictions))
                except AnalysisError as exc:  # one unreadable file: that run is left out, and said so
                    notes.append(f"{run.rel}: left out: {exc}")
                    lines += [f"- `{run.rel}` left out: {exc}", ""]
        correct = {init: runs for init, runs in correct.items() if runs}
        if sum(len(v) for v in correct.values()) < 2:
            lines += ["Not computed: fewer than two readable predictions.parquet.", ""]
            continue
        names = list(correct)
        for make in ((_overlap_table,) if len(names) >= 2 else ()) + (_similarity_table,):
            try:
                lines += make(rep, group, names, correct)
            except AnalysisError as exc:  # e.g. runs without common test units: this table is not made
                notes.append(f"{group.label()}: {exc}")
                lines += [f"Not computed: {exc}.", ""]
    return lines


def _overlap_table(rep: Report, group: GroupKey, names: list[str], correct: dict) -> list[str]:
    tuples = min(len(correct[n]) for n in names)
    sums: dict[tuple, list[float]] = defaultdict(lambda: [0.0, 0.0])
    units = []
    for t in range(tuples):
        matrix = align([correct[n][t] for n in names])
        units.append(matrix.shape[1])
        for cell in prediction_overlap(matrix):
            sums[cell.pattern][0] += cell.observed / tuples
            sums[cell.pattern][1] += cell.expected / tuples
    body, labels, obs, exp = [], [], [], []
    for pattern, (o, e) in sorted(sums.items(), key=lambda kv: (-sum(kv[0]), kv[0])):
        label = _pattern_label(names, pattern)
        rep.overlap.append({"task": group.task, "setting": group.setting, "fraction": group.fraction,
                            "right_under": label, **{f"right_{n}": ok for n, ok in zip(names, pattern)},
                            "observed": o, "expected": e, "model_sets": tuples, "units": int(np.mean(units))})
        body.append([label, f"{o * 100:.2f}", f"{e * 100:.2f}", fmt(o / e, 3) if e > 0 else "n/a"])
        labels.append(label)
        obs.append(o)
        exp.append(e)
    path, rel = _figure(rep, f"overlap_{group.slug()}")
    figures.overlap_plot(labels, obs, exp, f"prediction overlap: {group.label()}", path)
    return ([f"Overlap of {', '.join(names)} ({tuples} model set(s), {int(np.mean(units))} test units each):", ""]
            + table(["right only under", "observed %", "expected %", "observed / expected"], body)
            + [image(f"prediction overlap {group.label()}", rel), ""])


def _similarity_table(rep: Report, group: GroupKey, names: list[str], correct: dict) -> list[str]:
    k = len(names)
    observed = np.full((k, k), np.nan)
    expected = np.full((k, k), np.nan)
    body, rows = [], []
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
            body.append([a, b, len(pairs), f"{observed[i, j]:.4f}", f"{expected[i, j]:.4f}"])
    rep.similarity += rows  # only once every pair could be aligned
    path, rel = _figure(rep, f"similarity_{group.slug()}")
    figures.similarity_heatmap(names, observed, expected, f"prediction similarity: {group.label()}", path)
    return (["Prediction similarity:", ""]
            + table(["init a", "init b", "model pairs", "observed", "expected (independent)"], body)
            + [image(f"prediction similarity {group.label()}", rel), ""])


def _files_section(rep: Report) -> list[str]:
    tables = [f for f in rep.files if not f.startswith("figures/")]
    return ["## Files", ""] + [f"- [{name}]({name})" for name in tables] + [""]
