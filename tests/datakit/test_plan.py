"""tlx plan on index tables built here: every file accounted for, dedup, slice order, leak-free
stratified splits, subsets, global order; one-line errors on bad input."""
import json

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from benchmarks.plan_scale import make_index
from cli.main import cli
from datakit.errors import DatakitError
from datakit.plan import PlanConfig, make_plan, sample_key_expr
from datakit.pseudonym import pseudonym
from datakit.scan import write_index


def h(value: str) -> str:
    return pseudonym(b"plan-test", value)


def volume_rows(patient, series, n, label="head", positions=None, instances=None, prefix=None):
    positions = positions if positions is not None else [100.0 - 2.5 * i for i in range(n)]
    instances = instances if instances is not None else list(range(1, n + 1))
    return [{"path": f"{prefix or patient}/{series}/IM{i:04d}", "size": 1000, "patient": h(patient),
             "series": h(series), "sop": h(f"{series}/{i}"), "slice_pos": positions[i], "instance_number": instances[i],
             "label": label, "label_rule": label, "label_keyword": label, "label_field": "BodyPartExamined"}
            for i in range(n)]


def planned(ds):
    return (pl.read_parquet(ds / "work" / "plan.parquet").with_columns(pl.col("volume", "split").cast(pl.String)),
            pl.read_parquet(ds / "work" / "plan_rejects.parquet"),
            pl.read_parquet(ds / "work" / "plan_volumes.parquet"))


@pytest.fixture
def messy(tmp_path):
    """One patient's good volume, its exact file copies, a short series, a mixed-patient series,
    an unlabelled file and a file scan rejected."""
    good = volume_rows("P1", "S1", 40)
    copies = [dict(r, path="zz-copy/" + r["path"]) for r in good[:3]]
    short = volume_rows("P1", "S2", 10)
    mixed = volume_rows("P2", "S3", 35) + [dict(volume_rows("P3", "S3", 36)[35], sop=h("S3/extra"))]
    unlabelled = [dict(volume_rows("P4", "S4", 1)[0], label=None)]
    scan_reject = [{"path": "junk/readme.txt", "size": 5, "reject_code": "not-dicom", "reject_reason": "not DICOM"}]
    rows = good + copies + short + mixed + unlabelled + scan_reject
    write_index(rows, tmp_path / "work" / "index.parquet")
    return tmp_path, rows


def test_every_file_is_planned_or_rejected_with_its_reason(messy):
    ds, rows = messy
    summary = make_plan(ds, PlanConfig(min_slices=30))
    plan, rejects, volumes = planned(ds)
    assert len(plan) + len(rejects) == len(rows) == summary.found
    assert summary.rejected_by_code == {"duplicate-sop": 3, "small-volume": 10, "mixed-patients": 36,
                                        "no-label": 1, "not-dicom": 1}
    # Copies: the smallest path is kept, the other named in duplicate_of.
    dup = rejects.filter(pl.col("code") == "duplicate-sop")
    assert sorted(dup["path"]) == sorted(r["path"] for r in rows[40:43])
    assert sorted(dup["duplicate_of"]) == sorted(r["path"] for r in rows[:3])
    assert set(rejects.filter(pl.col("code") == "small-volume")["reason"]) == {
        "its series has 10 slices, fewer than --min-slices 30"}
    assert set(plan["volume"]) == {h("S1")} and len(plan) == 40
    by_volume = dict(zip(volumes["volume"], volumes["reason"]))
    assert by_volume[h("S1")] is None and "fewer than --min-slices" in by_volume[h("S2")]
    assert "several patients" in by_volume[h("S3")]
    assert volumes.filter(pl.col("volume") == h("S1"))["files"][0] == 43   # the copies are files of it too


def test_slices_ordered_along_the_normal_with_fallbacks_and_ties(tmp_path):
    rng = np.random.default_rng(0)
    shuffled = rng.permutation(30).tolist()
    by_pos = volume_rows("P1", "S1", 30, positions=[float(p) for p in shuffled])
    no_pos = volume_rows("P1", "S2", 30, instances=[30 - i for i in range(30)])
    no_pos[5]["slice_pos"] = None                   # one slice without a position: the volume goes by instance
    ties = volume_rows("P1", "S3", 30, positions=[float(i // 2) for i in range(30)],
                       instances=[100 - i for i in range(30)])   # two slices per position, instances descending
    write_index(by_pos + no_pos + ties, tmp_path / "work" / "index.parquet")
    make_plan(tmp_path, PlanConfig(min_slices=30))
    plan, _, volumes = planned(tmp_path)
    paths = pl.read_parquet(tmp_path / "work" / "index.parquet", columns=["path"])["path"]
    order = {v: paths.gather(g.sort("slice_index")["row"]).to_list() for (v,), g in plan.group_by("volume")}
    assert order[h("S1")] == [f"P1/S1/IM{shuffled.index(p):04d}" for p in range(30)]
    assert order[h("S2")] == [f"P1/S2/IM{i:04d}" for i in reversed(range(30))]
    assert order[h("S3")] == [f"P1/S3/IM{i ^ 1:04d}" for i in range(30)]   # ties by instance number
    info = {r["volume"]: r for r in volumes.iter_rows(named=True)}
    assert (info[h("S1")]["order_by"], info[h("S2")]["order_by"]) == ("position", "instance")
    assert info[h("S3")]["duplicate_positions"] == 15
    assert sorted(plan.filter(pl.col("volume") == h("S3"))["slice_index"]) == list(range(30))


@pytest.fixture(scope="module")
def cohort_index(tmp_path_factory):
    """A realistic index: 120k rows, 900 volumes, 300 patients, seven labels, copies and rejects."""
    ds = tmp_path_factory.mktemp("plan-cohort")
    make_index(ds / "work" / "index.parquet", rows=120_000, volumes=900, patients=300, seed=1)
    return ds


def _full_plan(ds, **kw):
    summary = make_plan(ds, PlanConfig(**kw))
    return summary, *planned(ds)


def test_patient_split_is_disjoint_stratified_and_seeded(cohort_index):
    summary, plan, rejects, volumes = _full_plan(cohort_index, seed=7)
    assert summary.found == len(plan) + len(rejects)
    kept = volumes.filter("kept")
    assert kept.group_by("patient").agg(pl.col("split").n_unique())["split"].max() == 1
    shares = plan.group_by("split").len().with_columns(share=pl.col("len") / len(plan))
    share = dict(zip(shares["split"], shares["share"]))
    assert share["train"] == pytest.approx(0.8, abs=0.02)
    assert share["val"] == pytest.approx(0.1, abs=0.02) and share["test"] == pytest.approx(0.1, abs=0.02)
    per_label = kept.group_by("label", "split").agg(pl.col("slices_planned").sum())
    for label, g in per_label.group_by("label"):
        total = g["slices_planned"].sum()
        train = g.filter(pl.col("split") == "train")["slices_planned"].sum()
        if total > 10_000:  # the big strata get the fractions too, not only the whole set
            assert train / total == pytest.approx(0.8, abs=0.05), label
    first = (cohort_index / "work" / "plan.parquet").read_bytes()
    make_plan(cohort_index, PlanConfig(seed=7))
    assert (cohort_index / "work" / "plan.parquet").read_bytes() == first
    make_plan(cohort_index, PlanConfig(seed=8))
    other = planned(cohort_index)[2].filter("kept")
    moved = kept.join(other, on="volume").filter(pl.col("split") != pl.col("split_right"))
    assert len(moved) > len(kept) // 10


def test_volume_split_keeps_volumes_whole_but_not_patients(cohort_index):
    _, plan, _, volumes = _full_plan(cohort_index, split_by="volume", seed=3)
    assert plan.group_by("volume").agg(pl.col("split").n_unique())["split"].max() == 1
    kept = volumes.filter("kept")
    assert kept.group_by("patient").agg(pl.col("split").n_unique())["split"].max() > 1


def test_subset_keeps_class_ratio_excludes_classes_and_splits(cohort_index):
    full, _, _, full_volumes = _full_plan(cohort_index, seed=5)
    summary, plan, rejects, volumes = _full_plan(cohort_index, seed=5, subset_size=20_000,
                                                 exclude_classes=("other",))
    targets = summary.subset_targets
    assert sum(n for by in targets.values() for n in by.values()) == 20_000
    assert all("other" not in by for by in targets.values())
    included = {}
    for by_label in full.by_split_label.values():
        for lab, n in by_label.items():
            if lab != "other":
                included[lab] = included.get(lab, 0) + n
    for lab in included:  # each class's share of the subset is its share of the full set (without "other")
        target = sum(by.get(lab, 0) for by in targets.values())
        assert target / 20_000 == pytest.approx(included[lab] / sum(included.values()), abs=2 / 20_000 * 7)
    # Leak-free: every subset volume keeps the split it has in the full dataset.
    same = volumes.filter("kept").join(full_volumes.select("volume", full_split="split"), on="volume")
    assert len(same) == volumes["kept"].sum() and (same["split"] == same["full_split"]).all()
    assert "other" not in set(plan.join(volumes.select("volume", "label"), on="volume")["label"])
    picked = plan.join(volumes.select("volume", "label"), on="volume").group_by("split", "label").len()
    for s, lab, n in picked.rows():  # enough converted to cut the exact target after write's filters
        assert targets[s][lab] <= n <= targets[s][lab] * 1.25 + 2000
    assert {"excluded-class", "not-in-subset"} <= set(rejects["code"])
    with pytest.raises(DatakitError, match=r"--subset-size 99999999 exceeds the \d+ planned slices"):
        make_plan(cohort_index, PlanConfig(subset_size=99_999_999))


def test_global_order_mixes_volumes_and_partition_units_balance(cohort_index):
    _, plan, _, volumes = _full_plan(cohort_index)
    assert sorted(plan["order"]) == list(range(len(plan)))
    first = plan.sort("order").head(64)
    assert first["volume"].n_unique() >= 48         # 64 consecutive slices come from many volumes
    units = volumes.filter("kept").sort("partition_unit")
    assert units["partition_unit"].to_list() == list(range(len(units)))
    assert units["slices_planned"].is_sorted(descending=True)   # largest first, dealt round-robin
    keys = plan.select(sample_key_expr())
    assert keys.to_series().n_unique() == len(plan)


@pytest.mark.parametrize("config, message", [
    (PlanConfig(fractions=(0.8, 0.3, 0.1)), r"--fractions 0.8,0.3,0.1 must be three numbers >= 0"),
    (PlanConfig(min_slices=0), r"--min-slices must be at least 1, got 0"),
    (PlanConfig(split_by="study"), r"--split-by 'study' is not one of: patient, volume"),
    (PlanConfig(exclude_classes=("lungs",)), r"--exclude-class lungs is not a class of this index"),
])
def test_bad_options_are_one_line_errors(messy, config, message):
    ds, _ = messy
    with pytest.raises(DatakitError, match=message):
        make_plan(ds, config)


def test_missing_index_and_raw_uids_are_refused(tmp_path):
    with pytest.raises(DatakitError, match=r"index.parquet not found: run `tlx scan"):
        make_plan(tmp_path)
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "index.parquet").write_bytes(b"cut short by a full disk")
    with pytest.raises(DatakitError, match=r"index.parquet is not a readable Parquet file \(.*\); rerun `tlx scan`"):
        make_plan(tmp_path)
    rows = volume_rows("P1", "S1", 30)
    write_index([dict(r, series="1.2.840.113619.2.55") for r in rows], tmp_path / "work" / "index.parquet")
    with pytest.raises(DatakitError, match=r"series ids in index.parquet are not pseudonyms"):
        make_plan(tmp_path)


def test_a_plan_killed_while_writing_leaves_no_plan_json_of_the_old_plan(messy, monkeypatch):
    """plan.json marks a complete plan. A re-plan with another seed killed after plan.parquet was
    replaced left the old plan.json beside the new plan.parquet, and `tlx write` went ahead with the
    two mixed (splits of one seed, volume table and subset targets of the other)."""
    import datakit.plan as plan_module
    from datakit.write import write_dataset

    ds, _ = messy
    make_plan(ds, PlanConfig(min_slices=30, seed=0))
    monkeypatch.setattr(plan_module, "write_rejects", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        make_plan(ds, PlanConfig(min_slices=30, seed=1))
    assert (ds / "work" / "plan.parquet").exists() and not (ds / "work" / "plan.json").exists()
    with pytest.raises(DatakitError, match="holds no plan"):
        write_dataset(ds)

def test_plan_cli_prints_the_split_table(messy):
    ds, _ = messy
    result = CliRunner().invoke(cli, ["plan", str(ds), "--min-slices", "30"])
    assert result.exit_code == 0, result.output
    assert "40 of 91 files planned" in result.output and "train" in result.output
    result = CliRunner().invoke(cli, ["plan", str(ds / "nowhere")])
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert "not found: run `tlx scan" in result.output


@pytest.fixture(scope="module")
def tiny_cohorts(tmp_path_factory):
    """n -> dataset folder with an index of n patients, one volume each, of 30 to 210 slices
    (a big patient next to small ones is what leaves a whole-patient split empty)."""
    out = {}
    for n in (2, 3, 5, 8):
        ds = tmp_path_factory.mktemp(f"tiny-{n}")
        sizes = [30 + (i * 47) % 181 for i in range(n)]
        rows = [r for i, size in enumerate(sizes)
                for r in volume_rows(f"P{i}", f"S{i}", size, label=("thorax", "abdomen", "head")[i % 3])]
        write_index(rows, ds / "work" / "index.parquet")
        out[n] = ds
    return out


def _patients_per_split(ds, seed):
    summary = make_plan(ds, PlanConfig(seed=seed))
    return summary, {s: summary.by_split[s]["patients"] for s in ("train", "val", "test")}


def test_small_cohorts_leave_no_split_with_a_fraction_empty(tiny_cohorts, monkeypatch):
    import datakit.plan
    from datakit.plan_splits import MIN_SPLIT_PATIENTS

    for n in (3, 5, 8):
        for seed in range(8):
            summary, patients = _patients_per_split(tiny_cohorts[n], seed)
            assert sum(patients.values()) == n and min(patients.values()) >= 1, (n, seed, patients)
            assert patients["train"] == max(patients.values())
            # Every split with fewer than 3 patients is named, in plan.json too.
            small = [s for s, k in patients.items() if k < MIN_SPLIT_PATIENTS]
            assert [w.split()[1] for w in summary.warnings if "fewer than" in w] == small
            plan_json = json.loads((tiny_cohorts[n] / "work" / "plan.json").read_text())
            assert plan_json["warnings"] == summary.warnings
    _, plan, _, volumes = _full_plan(tiny_cohorts[8], seed=4)
    assert volumes.filter("kept").group_by("patient").agg(pl.col("split").n_unique())["split"].max() == 1
    # Without the repair the stratified assignment alone leaves a split empty in some of these cases.
    monkeypatch.setattr(datakit.plan, "fill_empty_splits", lambda splits, sizes, fractions: splits)
    empty = [(n, seed) for n in (3, 5, 8) for seed in range(8) if 0 in _patients_per_split(tiny_cohorts[n], seed)[1]
             .values()]
    assert len(empty) >= 3, empty


def test_an_empty_split_takes_the_unit_closest_to_its_share():
    from datakit.plan_splits import fill_empty_splits

    sizes = [200, 40, 90, 60, 100, 10]                       # 500 slices: test's 10% is 50
    splits = ["train", "val", "train", "train", "train", "train"]
    assert fill_empty_splits(splits, sizes, (0.8, 0.1, 0.1)) == ["train", "val", "train", "test", "train", "train"]
    assert fill_empty_splits(["train", "val"], [5, 5], (0.8, 0.1, 0.1)) == ["train", "val"]   # nothing to move
    assert fill_empty_splits(["train", "train", "train"], [5, 6, 7], (0.5, 0.5, 0.0)) == ["train", "train", "val"]


def test_too_few_patients_for_the_splits_is_a_warning_not_a_silence(tiny_cohorts):
    summary = make_plan(tiny_cohorts[2], PlanConfig(seed=0))
    empty = [s for s in ("train", "val", "test") if summary.by_split[s]["patients"] == 0]
    assert len(empty) == 1 and summary.by_split["train"]["patients"] == 1
    assert f"split {empty[0]} is empty although --fractions gives it 0.1: training or evaluating on it will " \
           f"fail; add patients, or give it fraction 0" in summary.warnings
    result = CliRunner().invoke(cli, ["plan", str(tiny_cohorts[2])])
    assert result.exit_code == 0 and f"warning: split {empty[0]} is empty" in result.output
    # A split given fraction 0 is meant to be empty: no warning about it, and none gets a unit.
    summary = make_plan(tiny_cohorts[5], PlanConfig(fractions=(0.9, 0.1, 0.0)))
    assert summary.by_split["test"]["patients"] == 0
    assert not any(w.startswith("split test") for w in summary.warnings)


def test_a_split_lacking_classes_the_others_hold_is_warned_about_by_name():
    from datakit.plan_splits import class_warnings

    counts = {"train": {"head": 9, "thorax": 4}, "val": {"head": 2, "pelvis": 1}, "test": {"head": 1}}
    assert class_warnings((0.8, 0.1, 0.1), counts) == [
        "split train has no slices of class pelvis (in val): the model never sees them in training; add patients, "
        "or leave the class out with --exclude-class",
        "split val has no slices of class thorax (in train): its metrics say nothing about them; add patients, or "
        "leave the class out with --exclude-class",
        "split test has no slices of classes pelvis, thorax (in train, val): its metrics say nothing about them; "
        "add patients, or leave the class out with --exclude-class"]
    assert class_warnings((0.8, 0.2, 0.0), {**counts, "test": {}}) == class_warnings((0.8, 0.2, 0.0), counts)[:2]
