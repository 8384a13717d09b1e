"""analysis: result tables, Welch tests, scale factors, CKA/SVCCA, convergence and prediction overlap.

Reads runs (docs/run-format.md) and datasets (docs/dataset-format.md) only through
their documented files; never imports trainer or datakit, never needs torch (an
optional GPU accelerator for the scale factors' MI). Formulas: docs/analysis.md.

    report.py         build_report(runs_dir, out_dir, summary, ReportOptions) -> index.md, figures, CSVs
    runs.py           find_runs: every config.json below a folder
    results.py        result rows, published summary tables, pairwise comparisons
    stats.py          describe (mean, std, ddof), welch, welch_from_summary
    scale_adjust.py   interpolate_at_scale: "LB-adj." / "UB-adj." results
    scale_factors.py  estimate_scale_factors: S_LB (compression) and S_UB (MI) of a dataset
    mi.py             quantize, PairwiseMI: batched joint-histogram mutual information
    dataset.py        CTDataset, read_slices: volumes of a tlx dataset by offset
    convergence.py    time_to_convergence
    cka.py            linear_cka, rbf_cka, unbiased_cka, MinibatchCKA
    svcca.py          svcca
    weights.py        feature_reuse, feature_uniqueness from first_layers.npz
    overlap.py        prediction_overlap, prediction_similarity
    figures.py        the report's matplotlib figures (Agg)
"""
