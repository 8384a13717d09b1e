"""Curves in tlx analyze (metric vs shots, fraction, pretraining size; band over seeds and folds), and folds as
repeats with the fold visible."""
import polars as pl
import pytest

from analysis.curves import curve_panels
from analysis.report import ReportOptions, build_report
from analysis.results import results_from_runs
from analysis.runs import find_runs
from tests.analysis.synthetic import write_run


def _tree(root):
    # scratch at 1 and 5 shots, two seeds each; radnet-1.28M at 1 and 5 shots, one seed
    for k, seed, acc in ((1, 0, 0.5), (1, 1, 0.6), (5, 0, 0.8), (5, 1, 0.9)):
        write_run(root / f"s{k}", "radnet", "scratch", seed, metrics={"accuracy": acc}, shots=k, model="resnet50")
    for k, acc in ((1, 0.7), (5, 0.95)):
        write_run(root / f"s{k}", "radnet", "radnet-1.28M", 0, metrics={"accuracy": acc}, shots=k, model="resnet50",
                  init_pretrain_samples=1_280_000)
    # fractions, and a second pretraining size through --size
    for frac, acc in ((0.1, 0.85), (1.0, 0.97)):
        write_run(root, "radnet", "radnet-1.28M", 0, fraction=frac, metrics={"accuracy": acc}, model="resnet50",
                  init_pretrain_samples=1_280_000)
        write_run(root, "radnet", "radnet-12M", 0, fraction=frac, metrics={"accuracy": acc + 0.01}, model="resnet50")


def test_curves_against_shots_fraction_and_pretraining_size(tmp_path):
    root = tmp_path / "runs"
    _tree(root)
    runs, problems = find_runs(root)
    assert problems == [] and len(runs) == 10
    panels, unsized = curve_panels(runs, lambda group: "accuracy", sizes={"radnet-12M": 12_000_000}, ddof=0)
    by = {(p.curve, p.subset): p for p in panels}
    shots = {(r["line"], r["x"]): r for r in by[("shots", "")].rows}
    assert shots[("scratch", 1)]["n"] == 2 and shots[("scratch", 1)]["mean"] == pytest.approx(0.55)
    assert shots[("scratch", 1)]["std"] == pytest.approx(0.05)          # population std of 0.5, 0.6
    assert (shots[("scratch", 1)]["lo"], shots[("scratch", 1)]["hi"]) == (pytest.approx(0.5), pytest.approx(0.6))
    assert shots[("radnet-1.28M", 5)]["std"] is None and shots[("radnet-1.28M", 5)]["lo"] == 0.95   # one run: no band
    fraction = {(r["line"], r["x"]): r["mean"] for r in by[("fraction", "")].rows}
    assert fraction == {("radnet-1.28M", 0.1): 0.85, ("radnet-1.28M", 1.0): 0.97,
                        ("radnet-12M", 0.1): pytest.approx(0.86), ("radnet-12M", 1.0): pytest.approx(0.98)}
    size = {(r["line"], r["x"]): r["mean"] for r in by[("size", "100%")].rows}   # a line per model
    assert size == {("resnet50", 1_280_000): 0.97, ("resnet50", 12_000_000): pytest.approx(0.98)}
    assert ("size", "1-shot") not in by          # one size only at 1 shot: no curve
    assert unsized == ["scratch"]


def test_analyze_writes_curves_and_counts_folds_as_repeats(tmp_path):
    root = tmp_path / "runs"
    _tree(root)
    for fold, acc in enumerate((0.6, 0.7, 0.8)):     # 3 folds of one seed: n = 3
        write_run(root / f"fold{fold}", "lits", "scratch", 0, metrics={"dice_mean": acc}, folds=3, fold=fold)
    rep = build_report(root, tmp_path / "report", options=ReportOptions(sizes={"radnet-12M": 12_000_000}))
    lits = [r for r in results_from_runs(rep.runs) if r.group.task == "lits"]
    assert len(lits) == 1 and lits[0].summary.n == 3 and lits[0].summary.mean == pytest.approx(0.7)
    runs_csv = pl.read_csv(tmp_path / "report" / "runs.csv")
    assert sorted(runs_csv.filter(pl.col("task") == "lits")["fold"].to_list()) == ["0/3", "1/3", "2/3"]
    curves = pl.read_csv(tmp_path / "report" / "curves.csv")
    assert set(curves["curve"]) == {"shots", "fraction", "size"}
    for panel in rep.curves:
        assert (tmp_path / "report" / panel.figure).stat().st_size > 1000
    index = (tmp_path / "report" / "index.md").read_text()
    assert "## Curves" in index and "radnet / finetune: accuracy vs shots" in index
    assert "### finetune, 5 examples per class" in index
