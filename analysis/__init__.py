"""analysis: result tables, Welch tests, scale factors, CKA/SVCCA, convergence and prediction overlap.

Reads runs (docs/run-format.md) through their documented files and datasets
(docs/dataset-format.md) through datakit.read, the one reader of the format; never
imports trainer or datakit's internals, never needs torch (an optional GPU accelerator
for the scale factors' MI). Long work reports through a tlxcore.progress callback;
only the CLI draws. Formulas: docs/analysis.md.

    report.py          ReportOptions, Report; compute_report (every number, nothing written), build_report
    report_compute.py  each section's numbers and figure data (panels), from runs and results
    report_markdown.py render_index and the section functions: index.md from a Report, nothing computed
    report_files.py    write_report: figures, CSV tables, report_config.json and index.md, atomically
    markdown.py        fmt, fmt_p, table, image: Markdown cells
    figures.py         the report's matplotlib figures (Agg)
    runs.py            find_runs: every config.json below a folder (flat or nested `args` shape)
    results.py         result rows, published summary tables, pairwise comparisons
    stats.py           describe (mean, std, ddof), welch, welch_from_summary
    scale_adjust.py    interpolate_at_scale: "LB-adj." / "UB-adj." results
    scale_factors.py   estimate_scale_factors: S_LB (compression; study-code or per-volume) and S_UB (MI; study-code or
                       paper-text) of a dataset
    mi.py              quantize, PairwiseMI: batched joint-histogram mutual information (plain or smoothed)
    slice_utility.py   utility against slice distance from the dumped slice pairs (Fig. SF4)
    dataset.py         CTDataset, read_slices: the volumes of a tlx dataset, on top of datakit.read
    convergence.py     time_to_convergence
    cka.py             linear_cka, rbf_cka (the study's or Kornblith's bandwidth), unbiased_cka, MinibatchCKA, cka_pairs
    svcca.py           svcca, cca, covariance_similarities
    weights.py         feature_reuse, uniqueness(_values) (the study's), redundancy (tlx's) from first_layers.npz; both
                       layouts
    activations.py     features.npz (`tlx features`): CCA, SVCCA, CKA of two models' activations
    report_activations.py  which models the activation similarity section compares
    overlap.py         prediction_overlap, prediction_similarity
    pixel_maps.py      masks.npz (--save-masks): per-pixel overlap and overlay views
    report_pixel_maps.py   the pixel maps section's panels
"""
