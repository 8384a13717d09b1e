"""The report's index.md, rendered from a computed `Report` (analysis.report) and nothing else.

    >>> text = render_index(report)           # the whole index.md
    >>> lines = scale_factors_section(report) # one section, as Markdown lines

Every section function reads the report and returns lines; none computes a statistic
or changes the report, so rendering twice gives the same text.
"""
from __future__ import annotations

import math
from collections import defaultdict
from itertools import combinations
from typing import TYPE_CHECKING

from analysis.markdown import fmt, fmt_p, image, table
from analysis.results import by_table
from analysis.runs import GroupKey, Run, fraction_label
from analysis.scale_adjust import BOUND_LABELS

if TYPE_CHECKING:
    from analysis.report import Report
    from analysis.report_compute import ComparisonPanel, OverlapPanel, SimilarityPanel
    from analysis.stats import Summary


def render_index(rep: Report) -> str:
    lines = header(rep)
    for section in (runs_section, results_section, comparisons_section, adjusted_section, scale_factors_section,
                    curves_section, slice_utility_section, convergence_section, reuse_section, activation_section,
                    overlap_section, pixel_map_section, files_section):
        lines += section(rep)
    return "\n".join(lines) + "\n"


def mean_std(summary: Summary, digits: int) -> str:
    """'mean ± std' over seeds in the report's std convention (n/a: the sample std of one value)."""
    return f"{summary.mean:.{digits}f} ± " + ("n/a" if math.isnan(summary.std) else f"{summary.std:.{digits}f}")


def missing(note: str, runs: list[Run], limit: int = 8) -> list[str]:
    names = [r.rel for r in runs]
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return [f"{note}: " + ", ".join(f"`{n}`" for n in names[:limit]) + more + ".", ""] if names else []


def header(rep: Report) -> list[str]:
    inputs = []
    if rep.runs_dir is not None:
        inputs.append(f"runs folder `{rep.runs_dir}`")
    if rep.summary is not None:
        inputs.append(f"summary table `{rep.summary}`")
    convention = ("population std (ddof=0), as in the paper's tables" if rep.options.ddof == 0
                  else "sample std (ddof=1)")
    return ["# tlx analysis report", "",
            f"Made by tlx {rep.tool_version} from {' and '.join(inputs)}. Every table below is also a file in this "
            f"folder; formulas and choices are in tlx's docs/analysis.md.", "",
            f"**Std convention:** mean ± std over seeds, std = {convention}; n = number of seeds. "
            f"Welch tests always use the sample variance (ddof=1), whatever the tables show.", ""] + variants_note(rep)


def variants_note(rep: Report) -> list[str]:
    """The table cells whose runs differ in config (besides the seed): never averaged, each config its own init."""
    if not rep.variants:
        return []
    return ["**Runs of different configs in one table cell:** a cell averages seeds of one config, so the runs "
            "below are shown apart, each config as its own init `<init> [<what differs>]` in every table and test "
            "(runs whose config.json differ in anything but the seed, the fold, where and how they ran, and how "
            "often they saved and logged):", ""] + [f"- {note}" for note in rep.variants] + [""]


def runs_section(rep: Report) -> list[str]:
    lines = ["## Runs", ""]
    finetune = [r for r in rep.runs if not r.is_pretraining]
    complete = [r for r in finetune if r.metrics is not None]
    pretrain = [r for r in rep.runs if r.is_pretraining]
    lines += table(["runs found", "fine-tuning, complete", "fine-tuning, no result.json", "pretraining", "left out"],
                   [[len(rep.runs) + len(rep.problems), len(complete), len(finetune) - len(complete), len(pretrain),
                     len(rep.problems)]])
    lines += missing("Without result.json (not complete; curves only)", [r for r in finetune if r.metrics is None])
    undefined = [f"`{r.rel}`: {', '.join(r.undefined)}" for r in finetune if r.undefined]
    if undefined:
        lines += ["Metrics that result.json gives as null (undefined on that test set; left out of the tables): "
                  + "; ".join(undefined) + ".", ""]
    if rep.problems:
        lines += ["Left out:", ""] + [f"- {p}" for p in rep.problems] + [""]
    return lines


def results_section(rep: Report) -> list[str]:
    lines = ["## Result tables", ""]
    if not rep.results:
        return lines + ["No results: no run has a result.json and no summary table was given.", ""]
    lines += ["Mean ± std (n) per init; the best mean of each row in **bold** (higher is better for every metric). "
              "Rows marked adj. are scale-adjusted (see below).", ""]
    settings: dict[tuple[str, float, int], dict] = defaultdict(dict)
    for (group, metric), inits in by_table(rep.results).items():
        settings[(group.setting, group.fraction, group.shots)][(group.task, metric)] = inits
    for (setting, fraction, shots), tables in sorted(settings.items()):
        inits = sorted({i for row in tables.values() for i in row})
        subset = f"{shots} examples per class" if shots else f"{fraction_label(fraction)} of the training data"
        lines += [f"### {setting}, {subset}", ""]
        headlines = {rep.headline(GroupKey(task, setting, fraction, shots)) for task, _ in tables}
        body = [[task, metric] + _result_cells(row, inits)
                for (task, metric), row in sorted(tables.items(), key=lambda kv: (kv[0][0], kv[0][1] not in headlines,
                                                                                  kv[0][1]))]
        lines += table(["task", "metric"] + inits, body)
    return lines


def _result_cells(row: dict, inits: list[str]) -> list[str]:
    """'mean ± std (n)' per init, the best mean in bold; empty where an init has no result."""
    best = max(r.summary.mean for r in row.values())
    cells = []
    for init in inits:
        if init not in row:
            cells.append("")
            continue
        s = row[init].summary
        text = f"{fmt(s.mean)} ± {fmt(s.std)}"
        cells.append((f"**{text}**" if s.mean == best else text) + f" ({s.n})")
    return cells


def comparisons_section(rep: Report) -> list[str]:
    lines = ["## Pairwise comparisons", "",
             "For every pair of inits on a task: relative difference 100 (mean_a / mean_b − 1) % (row a vs "
             "column b) and the two-sided Welch t-test. Figures show each task's headline metric; "
             "`comparisons.csv` holds every metric and ordered pair.", ""]
    for panel in rep.comparison_panels:
        lines += _comparison_panel(panel, rep.options.alpha)
    if not rep.comparison_panels:
        return lines + ["No task has results for two or more inits: nothing to compare.", ""]
    n_sig = sum(1 for c in rep.comparisons if c.init_a < c.init_b and c.test.p < rep.options.alpha)
    n_all = sum(1 for c in rep.comparisons if c.init_a < c.init_b)
    return lines + [f"{n_sig} of {n_all} unordered pairs (all metrics) differ at p < {rep.options.alpha:g} "
                    f"(uncorrected for multiple comparisons).", ""]


def _comparison_panel(panel: ComparisonPanel, alpha: float) -> list[str]:
    label = panel.group.label()
    lines = [f"### {label}: {panel.metric}", "", image(f"comparisons {label}", panel.figure), ""]
    body = []
    for a, b in combinations(panel.inits, 2):
        c = panel.pairs[(a, b)]
        mark = " *" if c.test.p < alpha else ""
        delta = f"{c.delta_pct:+.2f}" if math.isfinite(c.delta_pct) else "n/a"
        body.append([a, b, delta, fmt(c.test.t, 3), fmt(c.test.df, 2), fmt_p(c.test.p) + mark])
    return lines + table(["init a", "init b", "Δ % (a vs b)", "t", "df", "p"], body)


def adjusted_section(rep: Report) -> list[str]:
    lines = ["## Scale-adjusted results", ""]
    notes = rep.notes["scale-adjusted results"]
    adjusted = [r for r in rep.results if r.source == "scale-adjusted"]
    if not adjusted:
        return lines + [f"Not computed: {n}." for n in notes] + [""]
    scale = rep.scale
    (small, large), sizes = scale.pair, scale.sizes
    factors = ", ".join(f"S_{b.upper()} = {sf.value:.4g}" + (f" (se {sf.se:.3g})" if sf.se else "")
                        for b, sf in sorted(scale.factors.items()))
    lines += [f"The result of pretraining on {small} interpolated ({rep.options.interpolation} size) between "
              f"{small} ({sizes[small]:,} samples) and {large} ({sizes[large]:,} samples) at S × "
              f"{sizes[small]:,} samples, with {factors} from {scale.source}. They appear as extra "
              f"init columns ({', '.join(f'{small} ({BOUND_LABELS[b]})' for b in sorted(scale.factors))}) "
              f"in the result tables and comparisons.", ""]
    body = [[r.group.label(), r.metric, r.init, f"{fmt(r.summary.mean)} ± {fmt(r.summary.std)} ({r.summary.n})"]
            for r in adjusted]
    lines += table(["task", "metric", "init", "mean ± std (n)"], body)
    return lines + [f"- {n}" for n in notes] + [""]


def scale_factors_section(rep: Report) -> list[str]:
    lines = ["## Scale factors", ""]
    factors = rep.scale.factors
    if not factors:
        return lines + ["No scale factors: run `tlx scale-factors DATA --out REPORT` (writes scale_factors.json "
                        "here) or pass --s-lb/--s-ub.", ""]
    body = []
    for bound, sf in sorted(factors.items()):
        ci = (f"{sf.value - 1.96 * sf.se:.4g} – {sf.value + 1.96 * sf.se:.4g}" if sf.se else "—")
        body.append([f"S_{bound.upper()}", f"{sf.value:.4g}", ci, sf.how or "given by hand"])
    lines += [f"From {rep.scale.source}.", ""] + table(["bound", "value", "95% CI", "computed with"], body)
    for note in rep.notes["scale factors"]:  # volumes that failed in `tlx scale-factors`
        lines += [f"**{note}.**", ""]
    return lines


def slice_utility_section(rep: Report) -> list[str]:
    lines = ["### Slice utility against slice distance (Fig. SF4)", ""]
    panel = rep.slice_utility
    if panel is None:
        return lines + [f"Not computed: {n}." for n in rep.notes["slice utility"]] + [""]
    lines += [f"Utility 1 − r_ij of slice i once slice j of the same volume is known, by the distance |i − j| in "
              f"slices: {panel.pairs:,} ordered pairs of {panel.volumes} volume(s) from `{panel.source}` (the "
              f"scale factors' S_UB estimator). `slice_utility.csv` holds every distance.", "",
              image("slice utility against distance", panel.figure), ""]
    shown = panel.rows[:10]
    body = [[r["distance"], r["pairs"], fmt(r["mean"], 3), fmt(r["q10"], 3), fmt(r["median"], 3), fmt(r["q90"], 3)]
            for r in shown]
    return lines + table(["distance", "pairs", "mean utility", "10th pct", "median", "90th pct"], body)


def convergence_section(rep: Report) -> list[str]:
    opts = rep.options
    kind = "relative to the best so far" if opts.relative_improvement else "absolute"
    lines = ["## Convergence", "",
             f"Time to convergence = first epoch after which the validation metric did not improve by at least "
             f"{opts.min_improvement * 100:g}% ({kind}) for {opts.patience} epochs; runs that never met this are "
             f"counted as not converged.", ""]
    lines += missing("No metrics.jsonl (no curve)", [r for r in rep.runs if not r.curve])
    if not any(r.curve for r in rep.runs):
        return lines + ["No run has a metrics.jsonl: no curves.", ""]
    if rep.pretraining is not None:
        lines += ["### Pretraining", "",
                  image("pretraining loss per step and kNN accuracy per epoch", rep.pretraining.figure), ""]
    body = []
    for panel in rep.convergence_panels:
        label = panel.group.label()
        if panel.figure:
            lines += [f"### {label}", "", image(f"convergence {label}", panel.figure), ""]
        for init, conv in panel.results.items():
            never = [f"seed {c.run.seed}" for c in conv if c.epoch is None and c.metric]
            epochs = panel.epochs[init]
            body.append([label, init, panel.metric or "none logged", f"{len(panel.converged[init])}/{len(conv)}",
                         mean_std(epochs, 1) if epochs else "—", ", ".join(never) or "—"])
    if body:
        lines += table(["task", "init", "validation metric", "converged", "epochs (mean ± std)", "not converged"],
                       body)
    return lines


LAYOUT_TEXT = {"study-code": "the study's layout: (filter, row, column) positions as examples, input channels as "
                              "features",
               "kernel-positions": "kernel positions as examples, filters as features"}
BANDWIDTH_TEXT = {"study-code": "the root of the median nonzero squared distance, as the study's CKA code",
                  "kornblith": "the root of the median squared distance, as Kornblith's code"}


def reuse_section(rep: Report) -> list[str]:
    opts = rep.options
    lines = ["## Feature reuse and uniqueness", "",
             f"CKA between each of the first three conv layers before and after fine-tuning (weights from "
             f"first_layers.npz; {LAYOUT_TEXT[opts.weight_layout]}), linear and RBF (bandwidth "
             f"{opts.rbf_threshold:g} × {BANDWIDTH_TEXT[opts.rbf_bandwidth]}), and SVCCA (99% variance; n/a where "
             f"too few examples). Uniqueness (the study's coefficient): 1 − mean RBF CKA between the "
             f"{opts.uniqueness_chunks} contiguous chunks of a layer's filters (higher = more unique filters; the "
             f"spread over the chunk pairs is in feature_reuse.csv). Redundancy (tlx): linear CKA "
             f"between random halves of the filters ({opts.redundancy_splits} splits; higher = more redundant). Both "
             f"for the weights before (init) and after (final) fine-tuning.", ""]
    finetune = [r for r in rep.runs if not r.is_pretraining]
    lines += missing("No first_layers.npz", [r for r in finetune if r.first_layers is None])
    if not any(r.first_layers is not None for r in finetune):
        return lines + ["Not computed: no fine-tuning run has first_layers.npz.", ""]
    lines += [f"- {n}" for n in rep.notes["feature reuse"]] + ([""] if rep.notes["feature reuse"] else [])
    keys = ("linear_cka", "rbf_cka", "svcca", "uniqueness_init", "uniqueness_final", "redundancy_init",
            "redundancy_final")
    body = [[c.group.label(), c.init, c.layer.replace(".weight", ""), c.n]
            + [mean_std(c.stats[key], 3) if c.stats[key] else "n/a" for key in keys]
            for c in rep.reuse_cells]
    lines += table(["task", "init", "layer", "n", "linear CKA", "RBF CKA", "SVCCA", "uniqueness init",
                    "uniqueness final", "redundancy init", "redundancy final"], body)
    for panel in rep.reuse_panels:
        lines += [image(f"feature reuse {panel.group.label()}", panel.figure), ""]
    return lines


def activation_section(rep: Report) -> list[str]:
    lines = ["## Activation similarity (CCA, SVCCA, CKA)", "",
             "Layer-wise similarity of activations on a probe set (Juodelyte et al.), from each run's features.npz "
             "(`tlx features RUN --probe DATA`): conv1 and the four stages, sampled positions and channels, the "
             "mean over the draws. Mean CCA (all canonical correlations), SVCCA (99% variance) and linear CKA. "
             "Comparisons: each run's init against its fine-tuned encoder; fine-tuned encoders of two inits "
             "(matched by seed rank); the random encoders of two seeds (the floor). Mean ± std over pairs.", ""]
    finetune = [r for r in rep.runs if not r.is_pretraining]
    lines += missing("No features.npz", [r for r in finetune if r.features is None])
    notes = rep.notes["activation similarity"]
    lines += [f"- {n}" for n in notes] + ([""] if notes else [])
    if not rep.activation_panels:
        return lines + ["Not computed: no pair of models to compare.", ""]
    for panel in rep.activation_panels:
        label = panel.group.label()
        body = [[c.comparison, c.label, c.layer, c.n] + [mean_std(c.stats[m], 3) for m in ("mean_cca", "svcca", "cka")]
                for c in panel.cells]
        lines += [f"### {label}", ""]
        lines += table(["comparison", "models", "layer", "pairs", "mean CCA", "SVCCA", "linear CKA"], body)
        lines += [image(f"activation similarity {label}", panel.figure), ""]
    return lines


def overlap_section(rep: Report) -> list[str]:
    lines = ["## Prediction overlap and similarity", "",
             "Overlap: the fraction of test units right under exactly the named inits (and wrong under the others), "
             "against the fraction expected if each model erred independently at its own accuracy; models of "
             "different inits are matched by seed rank (the i-th seed of each). Similarity: P(two models are both "
             "right or both wrong) against a1·a2 + (1−a1)(1−a2); the diagonal compares seeds of one init.", ""]
    finetune = [r for r in rep.runs if not r.is_pretraining and r.metrics is not None]
    lines += missing("No predictions.parquet", [r for r in finetune if r.predictions is None])
    if not rep.overlap_groups:
        return lines + ["Not computed: no task has two or more runs with predictions.parquet.", ""]
    for entry in rep.overlap_groups:
        lines += [f"### {entry.group.label()}", ""]
        for rel, error in entry.left_out:
            lines += [f"- `{rel}` left out: {error}", ""]
        if not entry.readable:
            lines += ["Not computed: fewer than two readable predictions.parquet.", ""]
            continue
        for made, render in ((entry.overlap, _overlap_table), (entry.similarity, _similarity_table)):
            if isinstance(made, str):
                lines += [f"Not computed: {made}.", ""]
            elif made is not None:
                lines += render(made)
    return lines


def _overlap_table(panel: OverlapPanel) -> list[str]:
    label = panel.group.label()
    body = [[name, f"{o * 100:.2f}", f"{e * 100:.2f}", fmt(o / e, 3) if e > 0 else "n/a"]
            for name, o, e in panel.cells]
    return ([f"Overlap of {', '.join(panel.names)} ({panel.model_sets} model set(s), {panel.units} test units each):",
             ""]
            + table(["right only under", "observed %", "expected %", "observed / expected"], body)
            + [image(f"prediction overlap {label}", panel.figure), ""])


def _similarity_table(panel: SimilarityPanel) -> list[str]:
    body = [[r["init_a"], r["init_b"], r["pairs"], f"{r['observed']:.4f}", f"{r['expected']:.4f}"]
            for r in panel.rows]
    return (["Prediction similarity:", ""]
            + table(["init a", "init b", "model pairs", "observed", "expected (independent)"], body)
            + [image(f"prediction similarity {panel.group.label()}", panel.figure), ""])


def pixel_map_section(rep: Report) -> list[str]:
    lines = ["## Pixel maps (Fig. 7)", "",
             "Segmentation runs with masks.npz (`--save-masks`): the fraction of pixels right under exactly the named "
             "inits, against independent errors, over the pixels that the truth or any model marks foreground "
             "(background everywhere is left out), averaged over model sets matched by seed rank; and overlays of "
             "the slices where the first two inits disagree most: green right only under the first, magenta right "
             "only under the second, the true foreground outlined.", ""]
    segmentation = [r for r in rep.runs if not r.is_pretraining and r.metrics is not None
                    and r.config.get("kind") == "segmentation"]
    lines += missing("Segmentation runs without masks.npz", [r for r in segmentation if r.masks is None])
    lines += [f"- {n}" for n in rep.notes["pixel maps"]] + ([""] if rep.notes["pixel maps"] else [])
    if not rep.pixel_maps:
        return lines + ["Not computed: no task has masks.npz from two or more inits.", ""]
    for panel in rep.pixel_maps:
        label = panel.group.label()
        body = [[name, f"{o * 100:.3f}", f"{e * 100:.3f}", fmt(o / e, 3) if e > 0 else "n/a"]
                for name, o, e in panel.cells]
        lines += [f"### {label}", "",
                  f"{', '.join(panel.names)}: {panel.model_sets} model set(s), {panel.units:,} compared pixels each.",
                  ""]
        lines += table(["right only under", "observed %", "expected %", "observed / expected"], body)
        lines += [image(f"pixel overlap {label}", panel.overlap_figure), ""]
        if panel.figure:
            lines += [image(f"pixel maps {label}", panel.figure), ""]
    return lines


def curves_section(rep: Report) -> list[str]:
    from analysis.curves import x_label, x_tick

    lines = ["## Curves", "",
             "The headline test metric against examples per class (`--shots`), the fraction of the training data, "
             "and the pretraining set's size (a line per encoder model); mean over seeds and folds, the band "
             "mean ± std (curves.csv).", ""]
    lines += [f"- {n}" for n in rep.notes["curves"]] + ([""] if rep.notes["curves"] else [])
    if not rep.curves:
        return lines + ["Not drawn: no init has results at two or more shots, fractions or pretraining sizes.", ""]
    for panel in rep.curves:
        body = [[row["line"], x_tick(panel.curve, row["x"]), str(row["n"]), fmt(row["mean"]),
                 "n/a" if row["std"] is None else fmt(row["std"])] for row in panel.rows]
        lines += [f"### {panel.title}", ""] + table(["line", x_label(panel.curve), "n", "mean", "std"], body)
        lines += [image(panel.title, panel.figure), ""]
    return lines


def files_section(rep: Report) -> list[str]:
    return ["## Files", ""] + [f"- [{name}]({name})" for name in rep.tables] + [""]
