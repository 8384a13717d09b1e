"""`tlx analyze`: runs (and/or a published summary table) -> report/index.md, figures and tables.

    >>> from analysis.report import build_report, compute_report, ReportOptions
    >>> report = build_report("runs/", "report/")                         # compute, then write every file
    >>> report = build_report(None, "report/", summary="published.csv")   # statistics of a published table
    >>> report.results, report.comparisons, report.notes["feature reuse"]
    >>> report = compute_report("runs/", "report/")                       # the numbers only, nothing written

The report is computed first, then rendered: `compute_report` builds a `Report` that
holds every number, table row, note and figure's data; `analysis.report_markdown`
turns it into index.md and `analysis.report_files` draws its figures and writes its
tables, neither changing it. Each section of index.md either shows its numbers or
says what it is missing (e.g. runs without first_layers.npz). Written next to
index.md: results.csv, comparisons.csv, convergence.csv, feature_reuse.csv,
overlap.csv, similarity.csv, runs.csv, report_config.json and figures/*.png.
Formulas and choices: docs/analysis.md.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from analysis.cka import BANDWIDTHS
from analysis.convergence import ConvergenceRule, RunConvergence
from analysis.curves import CurvePanel, curve_panels
from analysis.errors import AnalysisError
from analysis.report_activations import ActivationPanel, activation_panels
from analysis.report_compute import (
    ComparisonPanel,
    ConvergencePanel,
    OverlapGroup,
    OverlapPanel,
    PretrainingPanel,
    ReuseCell,
    ReusePanel,
    ScaleAdjustment,
    SimilarityPanel,
    comparison_panels,
    convergence_panels,
    overlap_groups,
    pretraining_panel,
    reuse_cells,
    reuse_rows,
    scale_adjustment,
    slice_utility_panel,
)
from analysis.report_pixel_maps import PixelMapPanel, pixel_map_panels
from analysis.results import ResultRow, compare, merge, read_summary_csv, results_from_runs
from analysis.runs import GroupKey, Run, find_runs, headline_metric, variant_notes
from analysis.scale_adjust import SPACES, pretraining_sizes
from analysis.slice_utility import SliceUtilityPanel
from analysis.weights import LAYOUTS
from tlxcore.runtime import tool_version

SECTIONS = ("runs", "result tables", "pairwise comparisons", "scale-adjusted results", "scale factors", "curves",
            "slice utility", "convergence", "feature reuse", "activation similarity", "prediction overlap",
            "pixel maps")


@dataclass
class ReportOptions:
    ddof: int = 0                              # std convention of the tables (0: population, as the paper)
    alpha: float = 0.05                        # significance level marked in figures and counts
    patience: int = 10                         # convergence: epochs without enough improvement
    min_improvement: float = 0.005             # convergence: 0.5 %
    relative_improvement: bool = True          # convergence: min_improvement relative to the best so far
    convergence_metric: str | None = None      # validation metric (None: the task's headline metric)
    rbf_threshold: float = 1.0                 # RBF CKA bandwidth, in units of the median distance
    rbf_bandwidth: str = "study-code"          # which median: the study's CKA code's or Kornblith's (analysis.cka)
    weight_layout: str = "study-code"          # weights as (out*kh*kw) x in (the study's) or kernel positions x filters
    uniqueness_chunks: int = 8                 # the study's uniqueness: contiguous filter chunks compared pairwise
    redundancy_splits: int = 10                # random halvings per layer for tlx's redundancy
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
        if self.redundancy_splits < 1:  # (0 gave a mean of no values: NaN with numpy warnings)
            raise AnalysisError(f"redundancy_splits must be >= 1, got {self.redundancy_splits}")
        if self.uniqueness_chunks < 2:
            raise AnalysisError(f"uniqueness_chunks must be >= 2, got {self.uniqueness_chunks}")
        if self.weight_layout not in LAYOUTS:
            raise AnalysisError(f"weight_layout {self.weight_layout!r} is not known; use one of {', '.join(LAYOUTS)}")
        if not self.rbf_threshold > 0:  # (checked here once, not as a note for every run's weights)
            raise AnalysisError(f"rbf_threshold must be > 0, got {self.rbf_threshold}")
        if self.rbf_bandwidth not in BANDWIDTHS:
            raise AnalysisError(f"rbf_bandwidth {self.rbf_bandwidth!r} is not known; use one of "
                                f"{', '.join(BANDWIDTHS)}")
        self.rule = ConvergenceRule(self.patience, self.min_improvement, self.relative_improvement)


@dataclass
class Report:
    """Everything `tlx analyze` computed; index.md, the figures and the tables are rendered from it alone."""

    out_dir: Path
    index: Path
    options: ReportOptions
    runs_dir: Path | str | None = None       # the inputs, as given (the header names them)
    summary: Path | str | None = None
    tool_version: str = "unknown"
    runs: list[Run] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)    # runs left out, one line each
    variants: list[str] = field(default_factory=list)    # table cells whose runs differ in config: shown apart
    results: list[ResultRow] = field(default_factory=list)
    comparisons: list = field(default_factory=list)
    comparison_panels: list[ComparisonPanel] = field(default_factory=list)
    scale: ScaleAdjustment = field(default_factory=ScaleAdjustment)
    slice_utility: SliceUtilityPanel | None = None   # Fig. SF4 (None: no slice pairs)
    convergence: list[RunConvergence] = field(default_factory=list)
    pretraining: PretrainingPanel | None = None
    convergence_panels: list[ConvergencePanel] = field(default_factory=list)
    reuse: list[dict] = field(default_factory=list)      # feature_reuse.csv rows
    reuse_cells: list[ReuseCell] = field(default_factory=list)
    reuse_panels: list[ReusePanel] = field(default_factory=list)
    overlap: list[dict] = field(default_factory=list)    # overlap.csv rows
    similarity: list[dict] = field(default_factory=list)  # similarity.csv rows
    overlap_groups: list[OverlapGroup] = field(default_factory=list)
    activations: list[dict] = field(default_factory=list)          # activation_similarity.csv rows
    activation_panels: list[ActivationPanel] = field(default_factory=list)
    pixel_maps: list[PixelMapPanel] = field(default_factory=list)
    curves: list[CurvePanel] = field(default_factory=list)   # metric vs shots, fraction, pretraining size
    notes: dict[str, list[str]] = field(default_factory=lambda: {s: [] for s in SECTIONS})

    def headline(self, group: GroupKey) -> str:
        """The metric figures and the terminal show for a group: the one its runs declare, else by name."""
        names = {r.metric for r in self.results if r.group == group}
        declared = next((r.declared_metric for r in self.runs if r.group == group and r.declared_metric), None)
        return headline_metric(names, declared)

    @property
    def scale_factors(self) -> dict:
        """"lb"/"ub" -> ScaleFactor used for the scale-adjusted results (empty: none)."""
        return self.scale.factors

    @property
    def figures(self) -> list[str]:
        """Every figure's path relative to the report folder, in the order index.md shows them."""
        overlap = [t for g in self.overlap_groups for t in (g.overlap, g.similarity)
                   if isinstance(t, (OverlapPanel, SimilarityPanel))]
        panels = ([*self.comparison_panels] + [*self.curves] + ([self.slice_utility] if self.slice_utility else [])
                  + ([self.pretraining] if self.pretraining else [])
                  + [p for p in self.convergence_panels if p.figure] + [*self.reuse_panels]
                  + [*self.activation_panels] + overlap)
        return [p.figure for p in panels] + [f for p in self.pixel_maps for f in p.figures]

    @property
    def tables(self) -> list[str]:
        """The table files written beside index.md (one for each table with rows), in a fixed order."""
        sf4 = self.slice_utility.rows if self.slice_utility else []
        optional = (("runs.csv", self.runs), ("slice_utility.csv", sf4), ("convergence.csv", self.convergence),
                    ("feature_reuse.csv", self.reuse), ("activation_similarity.csv", self.activations),
                    ("overlap.csv", self.overlap), ("similarity.csv", self.similarity),
                    ("pixel_overlap.csv", [row for p in self.pixel_maps for row in p.rows]),
                    ("curves.csv", [row for c in self.curves for row in c.rows]))
        return (["results.csv", "comparisons.csv"] + [name for name, rows in optional if rows]
                + ["report_config.json"])

    @property
    def files(self) -> list[str]:
        return self.figures + self.tables


def compute_report(runs_dir: Path | str | None, out_dir: Path | str, summary: Path | str | None = None,
                   options: ReportOptions | None = None) -> Report:
    """Every number of the report; writes nothing (`out_dir` is where a scale_factors.json may be found)."""
    options = options or ReportOptions()
    if runs_dir is None and summary is None:
        raise AnalysisError("nothing to analyse: give a runs folder and/or --summary published.csv")
    out = Path(out_dir)
    rep = Report(out, out / "index.md", options, runs_dir, summary, tool_version())
    if runs_dir is not None:
        rep.runs, rep.problems = find_runs(runs_dir)
        rep.notes["runs"] += rep.problems
        rep.variants = variant_notes(rep.runs)
    rows = results_from_runs(rep.runs, options.ddof)
    if summary is not None:
        rows = merge(rows, read_summary_csv(summary, options.ddof))
    rep.scale, adjusted = scale_adjustment(rows, rep.runs, out, runs_dir, options,
                                          rep.notes["scale-adjusted results"])
    rep.results = sorted(rows + adjusted, key=lambda r: (r.group, r.metric, r.init))
    if not rep.results:
        rep.notes["result tables"].append("no complete run (result.json) and no summary table: nothing to tabulate")
    rep.comparisons = compare(rep.results)
    rep.comparison_panels = comparison_panels(rep.results, rep.comparisons, rep.headline)
    if not rep.comparison_panels:
        rep.notes["pairwise comparisons"].append("no task has results for two or more inits")
    _note_scale_factors(rep)
    rep.slice_utility = slice_utility_panel(options, out, runs_dir, rep.notes["slice utility"])
    rep.pretraining = pretraining_panel(rep.runs)
    rep.convergence_panels = convergence_panels(rep.runs, options)
    rep.convergence = [c for panel in rep.convergence_panels for conv in panel.results.values() for c in conv]
    if not any(r.curve for r in rep.runs):
        rep.notes["convergence"].append("no run has metrics.jsonl")
    rep.reuse = reuse_rows(rep.runs, options, rep.notes["feature reuse"])
    rep.reuse_cells, rep.reuse_panels = reuse_cells(rep.reuse, options.ddof)
    rep.activations, rep.activation_panels = activation_panels(rep.runs, rep.notes["activation similarity"],
                                                               options.ddof)
    rep.overlap_groups = overlap_groups(rep.runs, rep.notes["prediction overlap"])
    rep.overlap = [row for g in rep.overlap_groups if isinstance(g.overlap, OverlapPanel) for row in g.overlap.rows]
    rep.similarity = [row for g in rep.overlap_groups if isinstance(g.similarity, SimilarityPanel)
                      for row in g.similarity.rows]
    rep.pixel_maps = pixel_map_panels(rep.runs, rep.notes["pixel maps"])
    rep.curves, unsized = curve_panels(rep.runs, rep.headline, {**pretraining_sizes(rep.runs), **options.sizes},
                                       options.ddof)
    if unsized and any(c.curve == "size" for c in rep.curves):
        rep.notes["curves"].append(f"left out of the pretraining-size curves (size unknown; give --size INIT=N): "
                                   f"{', '.join(unsized)}")
    return rep


def _note_scale_factors(rep: Report) -> None:
    notes = rep.notes["scale factors"]
    if not rep.scale.factors:
        notes.append("not computed (run `tlx scale-factors`)")
        return
    failed = max(sf.volumes_failed for sf in rep.scale.factors.values())
    if failed:
        notes.append(f"{failed} volume(s) failed in `tlx scale-factors` and are not in S "
                     f"(their errors: `volumes_failed` in the scale factors file)")


def build_report(runs_dir: Path | str | None, out_dir: Path | str, summary: Path | str | None = None,
                 options: ReportOptions | None = None) -> Report:
    """Analyse a run tree and/or a summary table; write the report; return its numbers."""
    from analysis.report_files import write_report

    report = compute_report(runs_dir, out_dir, summary, options)
    write_report(report)
    return report
