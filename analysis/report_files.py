"""Write a computed `Report` (analysis.report) to its folder: figures, tables, report_config.json, index.md.

    >>> write_report(report)     # report.out_dir/index.md, figures/*.png, results.csv, ...

Only reads the report. Every file is written through tlxcore.atomic (a reader sees the
old file or the whole new one), index.md last, so an index never links a file that is
not there yet.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from typing import TYPE_CHECKING

from analysis import figures
from analysis.report_markdown import render_index
from analysis.results import comparisons_frame, results_frame
from analysis.weights import LAYERS
from tlxcore.atomic import atomic_write, write_text_atomic

if TYPE_CHECKING:
    from analysis.report import Report


def write_report(rep: Report) -> None:
    (rep.out_dir / "figures").mkdir(parents=True, exist_ok=True)
    draw_figures(rep)
    write_tables(rep)
    write_text_atomic(rep.index, render_index(rep))


def draw_figures(rep: Report) -> None:
    """Every figure the report links, each from the numbers its panel holds."""
    out, alpha = rep.out_dir, rep.options.alpha
    for c in rep.comparison_panels:
        figures.comparison_heatmap(c.inits, c.delta, c.p, f"{c.group.label()}: {c.metric}", out / c.figure, alpha)
    for c in rep.curves:
        figures.curve_plot(c.rows, c.curve, c.title, out / c.figure)
    if rep.slice_utility is not None:
        figures.slice_utility_plot(rep.slice_utility.rows, out / rep.slice_utility.figure)
    if rep.pretraining is not None:
        figures.pretraining_plot(rep.pretraining.loss, rep.pretraining.knn, out / rep.pretraining.figure)
    for v in rep.convergence_panels:
        if v.figure:
            figures.convergence_plot(v.series or v.val, v.val, v.converged, v.group.label(), v.metric, out / v.figure)
    for r in rep.reuse_panels:
        figures.reuse_plot(list(LAYERS), r.inits, r.values, ["linear", "RBF"], f"feature reuse: {r.group.label()}",
                           out / r.figure)
    for a in rep.activation_panels:
        figures.activation_plot(a.layers, a.cells, f"activation similarity: {a.group.label()}", out / a.figure)
    for px in rep.pixel_maps:
        figures.overlap_plot([c[0] for c in px.cells], [c[1] for c in px.cells], [c[2] for c in px.cells],
                             f"pixel overlap: {px.group.label()}", out / px.overlap_figure)
        if px.figure:
            figures.pixel_map_plot(px.views, px.images, px.names[:2], f"pixel maps: {px.group.label()}",
                                   out / px.figure)
    for entry in rep.overlap_groups:
        o, s = entry.overlap, entry.similarity
        if o is not None and not isinstance(o, str):
            figures.overlap_plot([c[0] for c in o.cells], [c[1] for c in o.cells], [c[2] for c in o.cells],
                                 f"prediction overlap: {o.group.label()}", out / o.figure)
        if s is not None and not isinstance(s, str):
            figures.similarity_heatmap(s.names, s.observed, s.expected, f"prediction similarity: {s.group.label()}",
                                       out / s.figure)


def write_tables(rep: Report) -> None:
    """The CSV tables of `rep.tables` and report_config.json (every option used)."""
    import polars as pl

    frames = {"results.csv": results_frame(rep.results), "comparisons.csv": comparisons_frame(rep.comparisons)}
    runs = [{"path": r.rel, "task": r.task, "init": r.init, "setting": r.setting, "fraction": r.fraction,
             "seed": r.seed, "fold": r.fold, "shots": r.shots or None, "complete": r.metrics is not None,
             "epochs_logged": len(r.curve),
             "predictions": r.predictions is not None, "first_layers": r.first_layers is not None,
             "features": r.features is not None, "masks": r.masks is not None} for r in rep.runs]
    conv = [{"path": c.run.rel, "task": c.run.task, "setting": c.run.setting, "fraction": c.run.fraction,
             "init": c.run.init, "seed": c.run.seed, "metric": c.metric, "converged_epoch": c.epoch,
             "epochs_logged": c.epochs_seen} for c in rep.convergence]
    sf4 = rep.slice_utility.rows if rep.slice_utility else []
    pixels = [row for p in rep.pixel_maps for row in p.rows]
    curves = [row for c in rep.curves for row in c.rows]
    for rows, name in ((runs, "runs.csv"), (sf4, "slice_utility.csv"), (conv, "convergence.csv"),
                       (curves, "curves.csv"),
                       (rep.reuse, "feature_reuse.csv"), (rep.activations, "activation_similarity.csv"),
                       (pixels, "pixel_overlap.csv"),
                       (rep.overlap, "overlap.csv"), (rep.similarity, "similarity.csv")):
        if rows:
            frames[name] = pl.DataFrame(rows, infer_schema_length=None)
    for name, frame in frames.items():
        with atomic_write(rep.out_dir / name) as f:
            frame.write_csv(f)
    options = json.dumps(asdict(rep.options), indent=2, default=str) + "\n"
    write_text_atomic(rep.out_dir / "report_config.json", options)
