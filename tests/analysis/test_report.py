"""`tlx analyze` on a synthetic run tree: every section is there, with numbers computed here independently."""
import json
import math
import re

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner
from scipy import stats

from analysis.errors import AnalysisError
from analysis.report import ReportOptions, build_report
from analysis.weights import uniqueness_values
from cli.main import cli
from tests.analysis.synthetic import first_layers, write_run

ACC = {"scratch": [0.70, 0.72, 0.71], "radnet-small": [0.80, 0.83, 0.81], "radnet-large": [0.90, 0.88]}
SIZES = {"radnet-small": 1000, "radnet-large": 10000}
S_LB, S_UB = 1.5, 3.0
UNITS = 120
SECTIONS = ["## Runs", "## Result tables", "## Pairwise comparisons", "## Scale-adjusted results", "## Scale factors",
            "## Curves",
            "## Convergence", "## Feature reuse and uniqueness", "## Prediction overlap and similarity", "## Files"]


def converged_epoch(acc):
    """val_accuracy = min(acc, 0.1 * epoch): flat from the first epoch that reaches acc."""
    return math.ceil(acc * 10 - 1e-9)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    base = tmp_path_factory.mktemp("analyze")
    root = base / "runs"
    rng = np.random.default_rng(0)
    truth = {"correct": {}, "layers": {}}
    for init, size in SIZES.items():
        write_run(root, "simclr", init, 0, setting="pretrain", data_train_samples=size,
                  curve=[{"epoch": e, "train_loss": 6.0 / e} for e in range(1, 6)])
    for init, accs in ACC.items():
        for seed, acc in enumerate(accs):
            last = 12 if (init, seed) == ("scratch", 2) else 30  # this one stops before it can converge
            curve = [{"epoch": e, "train_loss": 1.0 / e + seed, "val_accuracy": min(acc, 0.1 * e)}
                     for e in range(1, last + 1)]
            correct = None
            if (init, seed) != ("radnet-large", 1):
                correct = {f"s{u:03d}": bool(x) for u, x in enumerate(rng.random(UNITS) < acc)}
                truth["correct"][(init, seed)] = correct
            layers = None
            if seed < 2 and (init, seed) != ("radnet-large", 1):
                layers = truth["layers"][(init, seed)] = first_layers(rng, 0.3 + seed)
            write_run(root, "radnet", init, seed, metrics={"accuracy": acc, "mean_auc": acc + 0.05}, curve=curve,
                      correct=correct, first_layers=layers)
    write_run(root, "radnet", "radnet-large", 9, curve=[{"epoch": 1, "train_loss": 1.0}])  # no result.json yet
    (root / "broken").mkdir()
    (root / "broken" / "config.json").write_text(json.dumps({"task": "radnet", "init": "x"}))
    out = base / "report"
    out.mkdir()
    (out / "scale_factors.json").write_text(json.dumps({
        "format": "tlx-scale-factors", "version": 1, "s_lb": {"value": S_LB, "ci95": None},
        "s_ub": {"value": S_UB, "ci95": None}}))
    report = build_report(root, out, options=ReportOptions(redundancy_splits=3))
    return root, out, report, truth


def test_every_section_is_there_and_every_linked_figure_exists(tree):
    _, out, report, _ = tree
    text = (out / "index.md").read_text()
    positions = [text.index(s) for s in SECTIONS]
    assert positions == sorted(positions)
    figures = re.findall(r"\]\((figures/[^)]+\.png)\)", text)
    names = {f.split("/")[1].split("_")[0] for f in figures}
    assert names == {"compare", "curve", "pretraining", "convergence", "reuse", "overlap", "similarity"}
    for fig in figures:
        assert (out / fig).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for table in ("results.csv", "comparisons.csv", "runs.csv", "convergence.csv", "feature_reuse.csv",
                  "overlap.csv", "similarity.csv", "report_config.json"):
        assert f"]({table})" in text and (out / table).is_file()


def test_runs_section_counts_and_names_what_is_missing(tree):
    _, out, report, _ = tree
    text = (out / "index.md").read_text()
    assert "| 12 | 8 | 1 | 2 | 1 |" in text  # found, complete, incomplete, pretraining, left out
    assert "`radnet/radnet-large/finetune/frac-1/seed-9`" in text
    assert "broken: left out: config.json lacks 'init'" not in text  # it has init; it lacks setting
    assert "broken: left out: config.json lacks 'setting'" in text
    assert "No predictions.parquet: `radnet/radnet-large/finetune/frac-1/seed-1`." in text
    assert "No first_layers.npz: " in text and "seed-2" in text.split("No first_layers.npz: ")[1].split("\n")[0]


def test_results_csv_has_the_means_and_population_stds(tree):
    _, out, _, _ = tree
    results = pl.read_csv(out / "results.csv")
    assert results.columns == ["task", "setting", "fraction", "metric", "init", "n", "mean", "std", "ddof", "shots"]
    for init, accs in ACC.items():
        row = results.filter((pl.col("init") == init) & (pl.col("metric") == "accuracy")).row(0, named=True)
        assert (row["task"], row["setting"], row["fraction"]) == ("radnet", "finetune", 1.0)
        assert row["n"] == len(accs) and row["ddof"] == 0
        assert row["mean"] == pytest.approx(sum(accs) / len(accs))
        assert row["std"] == pytest.approx(math.sqrt(sum((a - row["mean"]) ** 2 for a in accs) / len(accs)))
    text = (out / "index.md").read_text()
    assert "**0.8900 ± 0.0100** (2)" in text  # radnet-large: best accuracy, bold, n = 2


def test_comparisons_csv_matches_scipy_welch(tree):
    _, out, _, _ = tree
    comps = pl.read_csv(out / "comparisons.csv")
    assert comps.columns == ["task", "setting", "fraction", "metric", "init_a", "init_b", "delta_pct", "t", "df", "p",
                             "shots"]
    inits = 5  # three inits and two scale-adjusted columns, two metrics, every ordered pair
    assert comps.height == 2 * inits * (inits - 1)
    for a in ACC:
        for b in ACC:
            if a == b:
                continue
            row = comps.filter((pl.col("init_a") == a) & (pl.col("init_b") == b) & (pl.col("metric") == "accuracy"))
            row = row.row(0, named=True)
            ref = stats.ttest_ind(ACC[a], ACC[b], equal_var=False)
            assert row["delta_pct"] == pytest.approx(100 * (np.mean(ACC[a]) / np.mean(ACC[b]) - 1))
            assert (row["t"], row["df"], row["p"]) == pytest.approx((ref.statistic, ref.df, ref.pvalue))


def test_scale_adjusted_columns_interpolate_between_the_pretraining_sets(tree):
    _, out, _, _ = tree
    results = pl.read_csv(out / "results.csv").filter(pl.col("metric") == "accuracy")
    small, large = np.mean(ACC["radnet-small"]), np.mean(ACC["radnet-large"])
    for label, s in (("LB-adj.", S_LB), ("UB-adj.", S_UB)):
        w = math.log(s) / math.log(10000 / 1000)
        row = results.filter(pl.col("init") == f"radnet-small ({label})").row(0, named=True)
        assert row["mean"] == pytest.approx((1 - w) * small + w * large)
        se2 = (1 - w) ** 2 * np.var(ACC["radnet-small"], ddof=1) / 3 + w**2 * np.var(ACC["radnet-large"], ddof=1) / 2
        assert row["n"] == 2 and row["std"] == pytest.approx(math.sqrt(2 * se2 * 1 / 2))  # sample -> ddof 0: (n-1)/n
    text = (out / "index.md").read_text()
    assert "| S_LB | 1.5 | — |" in text and "| S_UB | 3 | — |" in text and "scale_factors.json`." in text


def test_convergence_epochs_and_the_run_that_never_converged(tree):
    _, out, report, _ = tree
    conv = pl.read_csv(out / "convergence.csv")
    for init, accs in ACC.items():
        for seed, acc in enumerate(accs):
            row = conv.filter((pl.col("init") == init) & (pl.col("seed") == seed)).row(0, named=True)
            expected = None if (init, seed) == ("scratch", 2) else converged_epoch(acc)
            assert row["converged_epoch"] == expected, (init, seed)
            assert row["metric"] == "val_accuracy"
    text = (out / "index.md").read_text()
    assert "| radnet / finetune / 100% | scratch | val_accuracy | 2/3 | 7.5 ± 0.5 | seed 2 |" in text


def study_layout(W):
    """The study's layout written out: one row per (filter, row, column), the input channels as columns."""
    out, _, kh, kw = W.shape
    return np.array([W[o, :, y, x] for o in range(out) for y in range(kh) for x in range(kw)], dtype=np.float64)


def reference_linear_cka(W0, W1):
    """Sample-space CKA <HKH, HLH> / (|HKH| |HLH|) with K = XX^T; HKH = X_c X_c^T (columns centred)."""
    X, Y = study_layout(W0), study_layout(W1)
    X, Y = X - X.mean(0), Y - Y.mean(0)
    K, L = X @ X.T, Y @ Y.T
    return np.sum(K * L) / np.sqrt(np.sum(K * K) * np.sum(L * L))


def test_feature_reuse_is_the_cka_of_the_weights(tree):
    _, out, _, truth = tree
    reuse = pl.read_csv(out / "feature_reuse.csv")
    assert reuse.height == 3 * len(truth["layers"])
    for (init, seed), arrays in truth["layers"].items():
        for layer in ("conv1.weight", "layer1.0.conv1.weight", "layer1.0.conv2.weight"):
            row = reuse.filter((pl.col("init") == init) & (pl.col("seed") == seed) & (pl.col("layer") == layer))
            expected = reference_linear_cka(arrays[f"init/{layer}"], arrays[f"final/{layer}"])
            assert row["linear_cka"][0] == pytest.approx(expected, abs=1e-6)
            assert 0 < row["rbf_cka"][0] <= 1 and 0 < row["uniqueness_final"][0] < 1
            pairs = uniqueness_values(arrays[f"final/{layer}"])       # the study's 28 chunk pairs, its bandwidth
            assert row["uniqueness_final"][0] == pytest.approx(pairs.mean(), abs=1e-9)
            assert row["uniqueness_final_sd"][0] == pytest.approx(pairs.std(), abs=1e-9)
            assert row["rbf_bandwidth"][0] == "study-code"
    # more change (seed 1: 1.3 x noise) leaves less of the initial weights
    s0 = reuse.filter((pl.col("init") == "scratch") & (pl.col("seed") == 0))["linear_cka"].to_list()
    s1 = reuse.filter((pl.col("init") == "scratch") & (pl.col("seed") == 1))["linear_cka"].to_list()
    assert all(a > b for a, b in zip(s0, s1))


def test_overlap_and_similarity_are_counted_from_the_predictions(tree):
    _, out, _, truth = tree
    # radnet-large, radnet-small, scratch: seed rank 0 of each (radnet-large has one seed with predictions)
    names = sorted(ACC)
    matrix = np.array([[truth["correct"][(n, 0)][f"s{u:03d}"] for u in range(UNITS)] for n in names])
    overlap = pl.read_csv(out / "overlap.csv")
    assert overlap.height == 2 ** 3  # every right/wrong pattern of three inits
    for row in overlap.iter_rows(named=True):
        pattern = [row[f"right_{n}"] for n in names]
        count = sum(all(matrix[m, u] == pattern[m] for m in range(3)) for u in range(UNITS))
        assert row["observed"] == pytest.approx(count / UNITS)
        acc = matrix.mean(1)
        assert row["expected"] == pytest.approx(np.prod([acc[m] if pattern[m] else 1 - acc[m] for m in range(3)]))
    sim = pl.read_csv(out / "similarity.csv")
    row = sim.filter((pl.col("init_a") == "radnet-small") & (pl.col("init_b") == "scratch")).row(0, named=True)
    pairs = [(a, b) for a in range(3) for b in range(3)]
    observed = np.mean([np.mean([truth["correct"][("radnet-small", a)][k] == truth["correct"][("scratch", b)][k]
                                 for k in truth["correct"][("scratch", b)]]) for a, b in pairs])
    assert row["pairs"] == 9 and row["observed"] == pytest.approx(observed)
    accuracy = {key: np.mean(list(c.values())) for key, c in truth["correct"].items()}
    expected = np.mean([accuracy[("radnet-small", a)] * accuracy[("scratch", b)]
                        + (1 - accuracy[("radnet-small", a)]) * (1 - accuracy[("scratch", b)]) for a, b in pairs])
    assert row["expected"] == pytest.approx(expected)


def test_summary_table_gives_the_same_statistics(tmp_path):
    csv = tmp_path / "published.csv"
    csv.write_text("task,metric,init,mean,std,n,ddof\n"
                   "lits,dice_liver,imagenet,0.91,0.010,4,1\n"
                   "lits,dice_liver,radnet,0.93,0.012,4,0\n")
    report = build_report(None, tmp_path / "report", summary=csv)
    results = pl.read_csv(tmp_path / "report" / "results.csv")
    assert results["std"].to_list() == pytest.approx([0.010 * math.sqrt(3 / 4), 0.012])  # both shown with ddof 0
    row = pl.read_csv(tmp_path / "report" / "comparisons.csv").row(0, named=True)
    ref = stats.ttest_ind_from_stats(0.91, 0.010, 4, 0.93, 0.012 * math.sqrt(4 / 3), 4, equal_var=False)
    assert (row["init_a"], row["t"], row["p"]) == ("imagenet", pytest.approx(ref.statistic), pytest.approx(ref.pvalue))
    text = report.index.read_text()
    assert all(s in text for s in SECTIONS)
    assert "No run has a metrics.jsonl" in text and "Not computed: no fine-tuning run has first_layers.npz" in text


def test_summary_table_errors_name_the_problem(tmp_path):
    csv = tmp_path / "bad.csv"
    csv.write_text("task,metric,init,mean,std,n\nlits,dice,a,0.9,0.1,4\n")
    with pytest.raises(AnalysisError, match=r"lacks column\(s\) \['ddof'\]"):
        build_report(None, tmp_path / "r", summary=csv)
    csv.write_text("task,metric,init,mean,std,n,ddof\nlits,dice,a,0.9,0.1,4,2\n")
    with pytest.raises(AnalysisError, match="bad.csv:2: ddof 2 is not allowed; use one of \\(0, 1\\)"):
        build_report(None, tmp_path / "r", summary=csv)
    csv.write_text("task,metric,init,mean,std,n,ddof,fraction\nlits,dice,a,0.9,0.1,4,1,half\n")
    with pytest.raises(AnalysisError, match="bad.csv:2: fraction 'half' is not a valid float"):
        build_report(None, tmp_path / "r", summary=csv)
    csv.write_text("mean,std,n,ddof,task,metric,init\n0.9,0.1,4,1,lits,dice\n")  # a short row: no init
    with pytest.raises(AnalysisError, match="bad.csv:2: init is empty"):
        build_report(None, tmp_path / "r", summary=csv)
    csv.write_text("task,metric,init,mean,std,n,ddof\n ,dice,a,0.9,0.1,4,1\n")
    with pytest.raises(AnalysisError, match="bad.csv:2: task is empty"):
        build_report(None, tmp_path / "r", summary=csv)
    with pytest.raises(AnalysisError, match="nothing to analyse"):
        build_report(None, tmp_path / "r")
    csv.write_bytes("task,metric,init,mean,std,n,ddof\nlits,dice,Röntgen,0.9,0.1,4,1\n".encode("cp1252"))
    with pytest.raises(AnalysisError, match="bad.csv is not UTF-8 text .*; save it as CSV UTF-8"):
        build_report(None, tmp_path / "r", summary=csv)
    csv.write_text("task,metric,init,mean,std,n,ddof\nlits,dice,\"" + "a" * 200_000 + "\",0.9,0.1,4,1\n")
    with pytest.raises(AnalysisError, match="bad.csv is not a readable CSV table"):
        build_report(None, tmp_path / "r", summary=csv)
    factors = tmp_path / "scale_factors.json"
    factors.write_bytes('{"format": "tlx-scale-factors", "dataset": "Röntgen"}'.encode("cp1252"))
    csv.write_text("task,metric,init,mean,std,n,ddof\nlits,dice,a,0.9,0.1,4,1\n")
    with pytest.raises(AnalysisError, match="cannot read scale factors from .*scale_factors.json"):
        build_report(None, tmp_path / "r", summary=csv, options=ReportOptions(scale_factors=str(factors)))


def test_a_spreadsheets_utf8_csv_with_a_byte_order_mark_is_read(tmp_path):
    csv = tmp_path / "published.csv"
    csv.write_text("task,metric,init,mean,std,n,ddof\nlits,dice,Röntgen,0.9,0.1,4,1\n", encoding="utf-8-sig")
    report = build_report(None, tmp_path / "r", summary=csv)
    assert [(r.group.task, r.init) for r in report.results] == [("lits", "Röntgen")]


def test_bad_options_are_refused_before_any_work():
    with pytest.raises(AnalysisError, match="redundancy_splits must be >= 1, got 0"):
        ReportOptions(redundancy_splits=0)
    with pytest.raises(AnalysisError, match="rbf_threshold must be > 0, got -1"):
        ReportOptions(rbf_threshold=-1)
    with pytest.raises(AnalysisError, match="rbf_bandwidth 'mean' is not known; use one of kornblith, study-code"):
        ReportOptions(rbf_bandwidth="mean")


def test_demo_sized_tree_through_the_cli(tmp_path):
    """The quickstart's end: two inits (scratch, a SimCLR checkpoint), two seeds each, task radnet."""
    root = tmp_path / "runs"
    pre = write_run(root, "simclr", "simclr-demo", 0, setting="pretrain", data_train_samples=500,
                    curve=[{"epoch": 1, "train_loss": 5.0}, {"epoch": 2, "train_loss": 4.0}])
    for init in ("scratch", "simclr-demo"):
        for seed in (0, 1):
            write_run(root, "radnet", init, seed, metrics={"accuracy": 0.5 + 0.1 * seed + (init == "scratch") * 0.05},
                      curve=[{"epoch": 1, "train_loss": 1.0, "val_accuracy": 0.5}],
                      init_checkpoint=None if init == "scratch" else str(pre / "checkpoints" / "last.pt"))
    result = CliRunner().invoke(cli, ["analyze", str(root), "--out", str(tmp_path / "report")],
                                env={"TLX_QUIET": "0"})
    assert result.exit_code == 0, result.output
    assert "radnet" in result.output and "report:" in result.output
    text = (tmp_path / "report" / "index.md").read_text()
    assert "| radnet | accuracy | **0.6000 ± 0.0500** (2) | 0.5500 ± 0.0500 (2) |" in text  # n = 2 per init
    assert "Not computed: no fine-tuning run has first_layers.npz." in text
    assert "Not computed: no task has two or more runs with predictions.parquet." in text
    assert "| radnet / finetune / 100% | scratch | val_accuracy | 0/2 |" in text
    bad = CliRunner().invoke(cli, ["analyze", str(root), "--out", str(tmp_path / "r"), "--scale-pair", "x"])
    assert bad.exit_code == 2 and "is not SMALL:LARGE" in bad.output
    missing = CliRunner().invoke(cli, ["analyze", str(tmp_path / "nope"), "--out", str(tmp_path / "r")])
    assert missing.exit_code == 2 and "does not exist" in missing.output


def test_what_the_trainer_writes_in_odd_cases(tmp_path):
    """null (undefined) metrics, a declared headline metric, pretraining runs that all say init 'scratch'
    with the same seed, a first_layers.npz lacking a layer, and layers too small to halve."""
    root = tmp_path / "runs"
    for name in ("ct-small", "ct-large"):
        write_run(root, "simclr", name, 0, setting="pretrain", data_train_samples=100 if name == "ct-small" else 900,
                  curve=[{"epoch": 1, "train_loss": 3.0}])
    rng = np.random.default_rng(0)
    layers = ("conv1.weight", "layer1.0.conv1.weight", "layer1.0.conv2.weight")
    tiny = {f"{when}/{name}": rng.normal(size=(2, 2, 3, 3)).astype(np.float32)
            for when in ("init", "final") for name in layers}
    for init in ("ct-small", "ct-large"):
        for seed in (0, 1):
            metrics = {"dice_liver": 0.8 + 0.01 * seed + (init == "ct-large") * 0.05, "dice_tumor": None,
                       "dice_mean": 0.5 + 0.01 * seed}
            write_run(root, "lits", init, seed, metrics=metrics, metric="dice_liver",
                      curve=[{"epoch": e, "train_loss": 1.0, "val_dice_liver": 0.8, "val_dice_mean": None}
                             for e in range(1, 13)],
                      first_layers=tiny if seed == 0 else {"init/conv1.weight": tiny["init/conv1.weight"]})
    out = tmp_path / "report"
    report = build_report(root, out, options=ReportOptions(s_lb=2.0, s_ub=3.0, redundancy_splits=2))
    text = report.index.read_text()
    assert "| 6 | 4 | 0 | 2 | 0 |" in text  # both pretraining runs kept
    assert "left out of the tables): `lits/ct-large/finetune/frac-1/seed-0`: dice_tumor" in text
    assert "dice_tumor" not in pl.read_csv(out / "results.csv")["metric"].to_list()
    assert "### lits / finetune / 100%: dice_liver" in text  # the declared metric, not dice_mean
    assert "| ct-large | ct-small (LB-adj.) |" in text  # sizes 900 and 100 found from the pretraining folders
    assert pl.read_csv(out / "convergence.csv")["metric"].unique().to_list() == ["val_dice_liver"]
    assert pl.read_csv(out / "convergence.csv")["converged_epoch"].to_list() == [1, 1, 1, 1]
    reuse = pl.read_csv(out / "feature_reuse.csv")
    assert reuse.height == 6 and reuse["uniqueness_init"].null_count() == 6  # 2 filters: no halves
    assert text.count("lacks ['final/conv1.weight'") == 2  # the two seed-1 runs, named in the section


def test_unreadable_predictions_or_weights_leave_out_that_run_not_the_report(tmp_path):
    """A truncated predictions.parquet or first_layers.npz, and runs with no common test units, are named in their
    section; everything else is still computed."""
    root = tmp_path / "runs"
    rng = np.random.default_rng(0)
    units = {f"s{u}": bool(u % 3) for u in range(30)}
    runs = {}
    for init in ("a", "b"):
        for seed in (0, 1):
            runs[(init, seed)] = write_run(root, "radnet", init, seed, metrics={"accuracy": 0.6 + 0.1 * seed},
                                           correct=units, first_layers=first_layers(rng, 0.5))
    for init, prefix in (("a", "x"), ("b", "y")):  # task "other": the two inits were tested on different samples
        write_run(root, "other", init, 0, metrics={"accuracy": 0.5}, correct={f"{prefix}{u}": True for u in range(5)})
    for name in ("predictions.parquet", "first_layers.npz"):
        path = runs[("b", 1)] / name
        path.write_bytes(path.read_bytes()[:100])
    report = build_report(root, tmp_path / "report", options=ReportOptions(redundancy_splits=2))
    text = report.index.read_text()
    bad = "radnet/b/finetune/frac-1/seed-1"
    assert any(n.startswith(f"{bad}: left out:") and "cannot be read as predictions" in n
               for n in report.notes["prediction overlap"])
    assert f"- `{bad}` left out:" in text
    assert any(n.startswith(f"{bad}: ") and "cannot be read" in n for n in report.notes["feature reuse"])
    assert "Not computed: the runs share no test units" in text
    sim = pl.read_csv(tmp_path / "report" / "similarity.csv")
    assert set(sim["task"]) == {"radnet"}
    ab = sim.filter((pl.col("init_a") == "a") & (pl.col("init_b") == "b")).row(0, named=True)
    assert ab["pairs"] == 2 and ab["observed"] == 1.0  # a's two seeds against b's one readable seed
    assert set(pl.read_csv(tmp_path / "report" / "overlap.csv")["task"]) == {"radnet"}
    assert pl.read_csv(tmp_path / "report" / "feature_reuse.csv").height == 3 * 3


def test_sample_std_convention_reaches_every_table(tmp_path, monkeypatch):
    """--ddof 1: convergence epochs and feature reuse are mean ± sample std too, as the report's header says."""
    from analysis import figures

    plotted = {}
    real_plot = figures.reuse_plot
    monkeypatch.setattr(figures, "reuse_plot", lambda *args: plotted.update(args[2]) or real_plot(*args))
    root = tmp_path / "runs"
    rng = np.random.default_rng(0)
    for seed, acc in enumerate((0.7, 0.8)):  # converge at epochs 7 and 8
        write_run(root, "radnet", "scratch", seed, metrics={"accuracy": acc}, first_layers=first_layers(rng, 0.5),
                  curve=[{"epoch": e, "train_loss": 1.0 / e, "val_accuracy": min(acc, 0.1 * e)} for e in range(1, 31)])
    report = build_report(root, tmp_path / "report", options=ReportOptions(ddof=1, redundancy_splits=2))
    text = report.index.read_text()
    assert "**Std convention:** mean ± std over seeds, std = sample std (ddof=1)" in text
    assert f"| 2/2 | 7.5 ± {math.sqrt(0.5):.1f} |" in text  # sample std of (7, 8), not 0.5
    reuse = pl.read_csv(tmp_path / "report" / "feature_reuse.csv").filter(pl.col("layer") == "conv1.weight")
    cka = reuse["linear_cka"].to_numpy()
    assert f"| {cka.mean():.3f} ± {cka.std(ddof=1):.3f} |" in text
    assert plotted["linear"][("scratch", "conv1.weight")] == pytest.approx((cka.mean(), cka.std(ddof=1)))  # the bars
