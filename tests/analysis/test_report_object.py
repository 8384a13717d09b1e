"""The report is computed once into a Report, then rendered from it alone: rendering is repeatable, changes
nothing, writes nothing it was not asked to, and a section renders from a Report built by hand."""
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from analysis.report import Report, ReportOptions, compute_report
from analysis.report_compute import ComparisonPanel, ScaleAdjustment
from analysis.report_files import write_report, write_tables
from analysis.report_markdown import comparisons_section, render_index, scale_factors_section
from analysis.results import ResultRow, compare
from analysis.runs import GroupKey
from analysis.scale_factors import ScaleFactor
from analysis.stats import describe
from tests.analysis.synthetic import first_layers, write_run

ACC = {"scratch": [0.70, 0.74], "ct": [0.80, 0.81, 0.86]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("object") / "runs"
    rng = np.random.default_rng(1)
    for init, accs in ACC.items():
        for seed, acc in enumerate(accs):
            write_run(root, "radnet", init, seed, metrics={"accuracy": acc},
                      curve=[{"epoch": e, "train_loss": 1.0 / e, "val_accuracy": min(acc, 0.1 * e)}
                             for e in range(1, 25)],
                      correct={f"s{u}": bool(x) for u, x in enumerate(rng.random(40) < acc)},
                      first_layers=first_layers(rng, 0.5))
    return root


@pytest.fixture(scope="module")
def computed(runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("computed") / "report"
    return compute_report(runs, out, options=ReportOptions(redundancy_splits=1))


def snapshot(rep: Report) -> tuple:
    """What rendering could change, in comparable form."""
    return (repr(rep.notes), rep.files, [r.record() for r in rep.results], len(rep.comparisons), repr(rep.reuse),
            repr(rep.overlap), repr(rep.similarity), [c.epoch for c in rep.convergence])


def test_compute_once_render_twice_gives_the_same_text_and_files_and_changes_nothing(computed, tmp_path):
    rep = computed
    assert not rep.out_dir.exists()  # computing writes nothing
    before = snapshot(rep)
    first = render_index(rep)
    assert render_index(rep) == first and snapshot(rep) == before
    write_report(rep)
    assert snapshot(rep) == before
    assert rep.index.read_text() == first
    assert sorted(p.name for p in (rep.out_dir / "figures").iterdir()) == sorted(Path(f).name for f in rep.figures)
    assert len(rep.figures) == 5  # comparison, convergence, reuse, overlap, similarity
    other = replace(rep, out_dir=tmp_path, index=tmp_path / "index.md")
    write_report(other)
    for rel in ["index.md"] + rep.files:
        assert (tmp_path / rel).read_bytes() == (rep.out_dir / rel).read_bytes(), rel


def test_tables_are_written_without_any_section_having_run(computed, tmp_path):
    write_tables(replace(computed, out_dir=tmp_path))
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == sorted(computed.tables)
    assert {"results.csv", "comparisons.csv", "runs.csv", "convergence.csv", "feature_reuse.csv", "overlap.csv",
            "similarity.csv", "report_config.json"} == set(written)
    results = pl.read_csv(tmp_path / "results.csv")
    ct = results.filter(pl.col("init") == "ct").row(0, named=True)
    assert ct["n"] == 3 and ct["mean"] == pytest.approx(np.mean(ACC["ct"]))
    assert ct["std"] == pytest.approx(np.std(ACC["ct"]))
    assert pl.read_csv(tmp_path / "convergence.csv").height == 5  # one row per fine-tuning run
    assert pl.read_csv(tmp_path / "feature_reuse.csv").height == 5 * 3  # three layers per run


def hand_built(tmp_path: Path) -> Report:
    group = GroupKey("radnet", "finetune", 1.0)
    rows = [ResultRow(group, "accuracy", init, describe(vals, 0), tuple(vals)) for init, vals in ACC.items()]
    comparisons = compare(rows)
    pairs = {(c.init_a, c.init_b): c for c in comparisons}
    delta = np.array([[np.nan, pairs[("ct", "scratch")].delta_pct], [pairs[("scratch", "ct")].delta_pct, np.nan]])
    p = np.array([[np.nan, pairs[("ct", "scratch")].test.p], [pairs[("scratch", "ct")].test.p, np.nan]])
    rep = Report(tmp_path, tmp_path / "index.md", ReportOptions(alpha=0.5), results=rows, comparisons=comparisons,
                 comparison_panels=[ComparisonPanel(group, "accuracy", ["ct", "scratch"], pairs, delta, p)],
                 scale=ScaleAdjustment({"lb": ScaleFactor(1.136, 0.01, 2, "gzip level 9"), "ub": ScaleFactor(3.807)},
                                       "values given by hand"))
    rep.notes["scale factors"].append("2 volume(s) failed")
    return rep


def test_the_scale_factors_section_renders_from_a_hand_built_report(tmp_path):
    rep = hand_built(tmp_path)
    lo, hi = 1.136 - 1.96 * 0.01, 1.136 + 1.96 * 0.01
    assert scale_factors_section(rep) == [
        "## Scale factors", "", "From values given by hand.", "",
        "| bound | value | 95% CI | computed with |", "|---|---|---|---|",
        f"| S_LB | 1.136 | {lo:.4g} – {hi:.4g} | gzip level 9 |", "| S_UB | 3.807 | — | given by hand |", "",
        "**2 volume(s) failed.**", ""]
    assert not (tmp_path / "index.md").exists()


def test_the_comparisons_section_renders_the_panels_it_is_given(tmp_path):
    rep = hand_built(tmp_path)
    c = next(c for c in rep.comparisons if (c.init_a, c.init_b) == ("ct", "scratch"))
    assert c.delta_pct == pytest.approx(100 * (np.mean(ACC["ct"]) / np.mean(ACC["scratch"]) - 1))
    lines = comparisons_section(rep)
    assert "### radnet / finetune / 100%: accuracy" in lines
    assert "![comparisons radnet / finetune / 100%](figures/compare_radnet_finetune_100_accuracy.png)" in lines
    row = next(line for line in lines if line.startswith("| ct | scratch |"))
    assert row.split(" | ")[2] == f"{c.delta_pct:+.2f}"
    mark = " *" if c.test.p < 0.5 else ""
    assert row.endswith(mark + " |")
    assert lines[-2] == f"{int(c.test.p < 0.5)} of 1 unordered pairs (all metrics) differ at p < 0.5 " \
                        f"(uncorrected for multiple comparisons)."
    assert math.isfinite(c.test.t)
    rep.comparison_panels = []
    assert "No task has results for two or more inits: nothing to compare." in comparisons_section(rep)
