"""`tlx analyze` and `tlx scale-factors`: parse options, call analysis, print a summary.

Heavy imports (numpy, polars, matplotlib) happen inside the commands, so `tlx --help`
stays instant.
"""
from __future__ import annotations

from pathlib import Path

import click

from tlxcore.runtime import default_workers, quiet


def _parse_sizes(values: tuple[str, ...]) -> dict[str, int]:
    sizes = {}
    for value in values:
        name, sep, number = value.rpartition("=")
        if not sep or not name or not number.isdigit() or int(number) < 1:
            raise click.BadParameter(f"{value!r} is not INIT=SAMPLES (e.g. radnet-1.28M=1281167)", param_hint="--size")
        sizes[name] = int(number)
    return sizes


def _parse_pair(value: str | None) -> tuple[str, str] | None:
    if value is None:
        return None
    small, sep, large = value.partition(":")
    if not sep or not small or not large:
        raise click.BadParameter(f"{value!r} is not SMALL:LARGE (e.g. radnet-1.28M:radnet-12M)",
                                 param_hint="--scale-pair")
    return small, large


@click.command()
@click.argument("runs_dir", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Report folder (index.md, figures/, CSV tables).")
@click.option("--summary", type=click.Path(dir_okay=False, path_type=Path),
              help="Published results: CSV with task, metric, init, mean, std, n, ddof (optional setting, fraction).")
@click.option("--ddof", type=click.Choice(["0", "1"]), default="0", show_default=True,
              help="Std convention of the tables: 0 population (the paper's), 1 sample.")
@click.option("--alpha", type=float, default=0.05, show_default=True, help="Significance level marked in figures.")
@click.option("--patience", type=int, default=10, show_default=True,
              help="Convergence: epochs without enough improvement.")
@click.option("--min-improvement", type=float, default=0.005, show_default=True,
              help="Convergence: improvement that counts (0.005 = 0.5%).")
@click.option("--absolute-improvement", is_flag=True,
              help="Convergence: --min-improvement is absolute, not relative to the best so far.")
@click.option("--convergence-metric", help="Validation metric for convergence (default: the task's headline metric).")
@click.option("--rbf-threshold", type=float, default=1.0, show_default=True,
              help="RBF CKA bandwidth in units of the median distance.")
@click.option("--rbf-bandwidth", type=click.Choice(["study-code", "kornblith"]), default="study-code",
              show_default=True, help="Which median: of the nonzero squared distances, torch's lower median (the "
                                      "study's CKA code), or of all of them (Kornblith's code).")
@click.option("--weight-layout", type=click.Choice(["study-code", "kernel-positions"]), default="study-code",
              show_default=True, help="Conv weights as a representation: the study's (out*kh*kw) x in, or tlx's "
                                      "kernel positions x filters.")
@click.option("--uniqueness-chunks", type=int, default=8, show_default=True,
              help="Uniqueness (the study's): contiguous filter chunks compared pairwise.")
@click.option("--redundancy-splits", type=int, default=10, show_default=True,
              help="Redundancy (tlx): random halvings of a layer's filters.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--scale-factors", "scale_factors", type=click.Path(dir_okay=False, path_type=Path),
              help="scale_factors.json from `tlx scale-factors` (default: found in --out or RUNS_DIR).")
@click.option("--s-lb", type=float, help="Give S_LB by hand (e.g. the paper's 1.136).")
@click.option("--s-ub", type=float, help="Give S_UB by hand (e.g. the paper's 3.807).")
@click.option("--scale-pair", help="SMALL:LARGE pretraining inits to interpolate between (default: found from sizes).")
@click.option("--size", "sizes", multiple=True, metavar="INIT=N",
              help="Pretraining samples of an init (default: its pretraining run's data_train_samples). Repeatable.")
@click.option("--interpolation", type=click.Choice(["log", "linear"]), default="log", show_default=True,
              help="Interpolate scale-adjusted results in log or linear dataset size.")
def analyze(runs_dir, out_dir, summary, ddof, alpha, patience, min_improvement, absolute_improvement,
            convergence_metric, rbf_threshold, rbf_bandwidth, weight_layout, uniqueness_chunks,
            redundancy_splits, seed, scale_factors, s_lb, s_ub, scale_pair,
            sizes, interpolation):
    """Turn run directories (and/or a published table) into tables, Welch tests and figures.

    Reads every config.json below RUNS_DIR (docs/run-format.md) and writes OUT/index.md
    with result tables, pairwise comparisons, scale-adjusted results, scale factors and
    slice utility against distance, convergence, feature reuse and uniqueness, activation
    similarity (runs with features.npz from `tlx features`), prediction overlap and pixel
    maps (runs with masks.npz from --save-masks), each figure a PNG and each table a CSV
    beside it. A section that lacks its inputs says what is missing.

    \b
    Example:
      tlx analyze runs/ --out report/
      tlx analyze --summary published.csv --out report/
      tlx analyze runs/ --out report/ --s-lb 1.136 --s-ub 3.807 --scale-pair radnet-1.28M:radnet-12M
    """
    from analysis.report import ReportOptions, build_report

    options = ReportOptions(
        ddof=int(ddof), alpha=alpha, patience=patience, min_improvement=min_improvement,
        relative_improvement=not absolute_improvement, convergence_metric=convergence_metric,
        rbf_threshold=rbf_threshold, rbf_bandwidth=rbf_bandwidth, weight_layout=weight_layout,
        uniqueness_chunks=uniqueness_chunks,
        redundancy_splits=redundancy_splits, seed=seed,
        scale_factors=str(scale_factors) if scale_factors else None, s_lb=s_lb, s_ub=s_ub,
        scale_pair=_parse_pair(scale_pair), sizes=_parse_sizes(sizes), interpolation=interpolation)
    report = build_report(runs_dir, out_dir, summary, options)
    if not quiet():
        _print_report(report)


def _print_report(report) -> None:
    from rich.console import Console
    from rich.table import Table

    from analysis.markdown import fmt
    from analysis.results import by_table
    from analysis.runs import fraction_label

    console = Console()
    for note in report.variants:   # runs of different configs in one cell: shown apart, never averaged
        console.print(f"[yellow]different configs, shown apart:[/yellow] {note}")
    tables = by_table(report.results)
    settings: dict = {}
    for (group, metric), inits in tables.items():
        if metric == report.headline(group):
            settings.setdefault((group.setting, group.fraction, group.shots), {})[(group.task, metric)] = inits
    for (setting, fraction, shots), rows in sorted(settings.items()):
        inits = sorted({i for row in rows.values() for i in row})
        subset = f"{shots} examples per class" if shots else f"{fraction_label(fraction)} of the data"
        t = Table(title=f"{setting}, {subset}: mean ± std (n)")
        t.add_column("task")
        t.add_column("metric")
        for init in inits:
            t.add_column(init, justify="right")
        for (task, metric), row in sorted(rows.items()):
            best = max(r.summary.mean for r in row.values())
            cells = []
            for init in inits:
                s = row[init].summary if init in row else None
                text = "" if s is None else f"{fmt(s.mean)} ± {fmt(s.std)} ({s.n})"
                cells.append(f"[bold]{text}[/bold]" if s is not None and s.mean == best else text)
            t.add_row(task, metric, *cells)
        console.print(t)
    pairs = [c for c in report.comparisons if c.init_a < c.init_b]
    significant = sum(1 for c in pairs if c.test.p < report.options.alpha)
    console.print(f"comparisons: {significant} of {len(pairs)} pairs differ at p < {report.options.alpha:g}")
    for bound, sf in sorted(report.scale_factors.items()):
        console.print(f"S_{bound.upper()} = {sf.value:.4g}" + (f" (se {sf.se:.3g})" if sf.se else ""))
    converged = [c for c in report.convergence if c.metric]
    if converged:
        console.print(f"convergence: {sum(c.epoch is not None for c in converged)} of {len(converged)} runs converged")
    for section, notes in report.notes.items():
        for note in notes:
            console.print(f"[yellow]{section}: {note}[/yellow]")
    console.print(f"report: {report.index}")


@click.command("scale-factors")
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for scale_factors.json and scale_factors_volumes.csv (e.g. the report folder).")
@click.option("--split", type=click.Choice(["train", "val", "test", "all"]), default="train", show_default=True,
              help="Whose volumes: train is what pretraining sees.")
@click.option("--bound", type=click.Choice(["both", "lb", "ub"]), default="both", show_default=True)
@click.option("--compressor", type=click.Choice(["gzip", "zstd"]), default="gzip", show_default=True,
              help="S_LB compressor: gzip as in the paper; zstd is faster and sees across slices.")
@click.option("--level", type=int, help="Compression level (default: gzip 9 as the study's Python gzip, zstd 3).")
@click.option("--lb-estimator", type=click.Choice(["study-code", "per-volume"]), default="study-code",
              show_default=True,
              help="S_LB as the study's code computed it (random slices drawn with replacement from the whole split; "
                   "total random bytes over total volume bytes) or tlx's per-volume form (random slices of other "
                   "volumes; weighed by slices).")
@click.option("--estimator", type=click.Choice(["study-code", "paper-text"]), default="study-code", show_default=True,
              help="S_UB as the study's code computed it (smoothed histograms; MI_max of the first slice, MI_min of "
                   "the first 101 against a random baseline volume's slices; r not clipped; volumes over 300 slices "
                   "skipped, those with effective slices outside (0, n) dropped) or as its text describes it.")
@click.option("--max-slices", type=click.IntRange(min=0),
              help="S_UB skips volumes with more slices (default: 300 for study-code, none for paper-text; 0: none).")
@click.option("--dump-pairs", is_flag=True,
              help="Also write scale_factors_pairs.parquet: (volume, i, j, distance, utility) of every slice pair, "
                   "for the utility-against-distance plot (Fig. SF4).")
@click.option("--bins", type=int, default=64, show_default=True, help="Histogram bins per axis for the MI.")
@click.option("--hu-range", type=(float, float), help="Fixed binning range LO HI (default: each slice's min..max).")
@click.option("--volumes", type=int, help="Quick estimate: a random sample of this many volumes, with a 95% CI.")
@click.option("--baseline-slices", type=int,
              help="paper-text: slices of the random other volume for the MI baseline (default: all of them).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--workers", type=int, default=default_workers, show_default="the cores this process may use",
              help="Processes (CPU) or reader threads (GPU).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="auto: the GPU when torch sees one.")
@click.option("--method", type=click.Choice(["bincount", "onehot", "torch", "torch-float"]),
              help="How joint histograms are counted (default: bincount on CPU, torch on GPU).")
def scale_factors(data_dir, out_dir, split, bound, compressor, level, lb_estimator, estimator, max_slices, dump_pairs,
                  bins, hu_range, volumes, baseline_slices, seed, workers, device, method):
    """Estimate a dataset's scale factors S_LB (compressibility) and S_UB (mutual information).

    S says how many CT slices are worth one independent image (paper supplement S4).
    Writes OUT/scale_factors.json, which `tlx analyze` picks up from the same folder,
    and OUT/scale_factors_volumes.csv with one row per volume. A volume that fails
    is listed, never silently dropped.

    \b
    Example:
      tlx scale-factors data/ --out report/
      tlx scale-factors data/ --out report/ --volumes 500 --compressor zstd   # quick estimate with a CI
    """
    from rich.console import Console

    from analysis.errors import AnalysisError
    from analysis.scale_factors import ScaleFactorConfig, estimate_scale_factors, write_results
    from tlxcore.progress import drawn

    cfg = ScaleFactorConfig(split=split, lower=bound in ("both", "lb"), upper=bound in ("both", "ub"),
                            compressor=compressor, level=level, lb_estimator=lb_estimator, estimator=estimator,
                            max_slices=max_slices,
                            dump_pairs=dump_pairs, bins=bins, value_range=hu_range, volumes=volumes,
                            baseline_slices=baseline_slices, seed=seed, workers=workers, device=device, method=method)
    with drawn() as progress:
        result = estimate_scale_factors(data_dir, cfg, progress=progress)
    path = write_results(result, out_dir)
    console = Console(stderr=False)
    failed = result["volumes_failed"]
    for entry in failed[:10]:
        console.print(f"[red]volume {entry['volume']} failed: {entry['error']}[/red]")
    if failed:
        console.print(f"[red]{len(failed)} of {result['volumes_sampled']} volumes failed and are not in S "
                      f"(listed in {path})[/red]")
    if result["volumes_ok"] == 0:
        raise AnalysisError(f"every volume failed; first error: {failed[0]['error']}")
    for key in ("s_lb", "s_ub"):
        if key in result:
            entry = result[key]
            ci = f" (95% CI {entry['ci95'][0]:.4g} – {entry['ci95'][1]:.4g})" if entry["ci95"] else ""
            if entry["value"] is None:
                console.print(f"[red]{key.upper()}: no volume to compute it on ({entry.get('volumes_skipped', 0)} "
                              f"skipped over {entry.get('max_slices')} slices, {entry.get('volumes_dropped', 0)} "
                              f"dropped)[/red]")
                continue
            skipped, dropped = entry.get("volumes_skipped"), entry.get("volumes_dropped")
            note = f"; {skipped} volume(s) over {entry['max_slices']} slices skipped" if skipped else ""
            note += (f"; {dropped} volume(s) dropped as the study's code dropped them (ub_dropped in the volumes "
                     f"CSV)") if dropped else ""
            console.print(f"{key.upper()} = {entry['value']:.4g}{ci}{note}")
    console.print(f"{result['volumes_ok']} volumes, {result['slices_processed']} slices, "
                  f"{result['mi_evaluations']:,} MI evaluations in {result['seconds']:.1f} s -> {path}")
