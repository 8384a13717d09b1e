"""`tlx convert cxr`: presets in their real layouts, label policies, views, patient splits, merges."""
import csv
import json
import math

import numpy as np
import polars as pl
import pytest

from datakit.convert.cxr import CxrOptions, convert_cxr
from datakit.convert.cxr_merge import CxrMergeOptions, merge_cxr
from datakit.errors import DatakitError
from datakit.verify import verify_dataset
from tests.fixtures.cxr_sources import write_chexpert, write_mimic, write_nih, write_padchest
from tests.fixtures.task_datasets import read_shards


def convert(root, out, preset, **kw):
    return convert_cxr(CxrOptions(root=str(root), out=str(out), preset=preset, size=8, workers=1, **kw))


def targets_of(out, manifest) -> dict[str, tuple[str, np.ndarray]]:
    return {k: (split, np.frombuffer(s["labels"], "<f4")) for k, (split, s) in read_shards(out, manifest).items()}


def nothing_written(out) -> bool:
    return not out.exists() or not [p for p in out.iterdir() if not p.name.startswith(".")]


@pytest.fixture(scope="module")
def chexpert(tmp_path_factory):
    return write_chexpert(tmp_path_factory.mktemp("cx") / "CheXpert-v1.0-small", n_patients=10)


@pytest.mark.parametrize("uncertain,blank", [("ones", "zeros"), ("zeros", "ignore"), ("ignore", "zeros"),
                                             ("lsr", "zeros")])
def test_chexpert_label_policies(chexpert, tmp_path, uncertain, blank):
    root, truth = chexpert
    m = convert(root, tmp_path / "o", "chexpert", uncertain=uncertain, blank=blank)
    assert m["members"]["labels"] == {"role": "labels", "codec": "raw", "dtype": "float32", "byteorder": "little",
                                      "shape": [14], "missing": "nan"}
    assert m["config"]["label_policy"]["uncertain"] == uncertain and m["config"]["label_policy"]["blank"] == blank
    got = targets_of(tmp_path / "o", m)
    assert len(got) == 13            # the frontal images: 10 train + 3 valid
    counts = {"unc": 0}
    for key, (split, t) in got.items():
        assert split == ("test" if truth[key]["split"] == "test" else split)
        for name, value in zip(m["classes"], t):
            state = truth[key]["states"][name]
            if state in (0, 1):
                assert value == state
            elif state is None:
                assert value == 0 if blank == "zeros" else math.isnan(value)
            elif split != "train":                                       # uncertain in val/test: never scored
                assert math.isnan(value)
            else:
                counts["unc"] += 1
                if uncertain == "lsr":
                    assert 0.55 <= value < 0.85
                else:
                    assert (value == 1 if uncertain == "ones"
                            else value == 0 if uncertain == "zeros" else math.isnan(value))
    assert counts["unc"] > 5
    slices = pl.read_parquet(tmp_path / "o" / "slices.parquet")
    row = slices.row(0, named=True)
    assert set(row["uncertain"]) == {n for n, s in truth[row["key"]]["states"].items() if s == -1}
    assert verify_dataset(tmp_path / "o", workers=1, decode=True).problems == []


def test_lsr_draws_repeat_per_seed_and_differ_across_seeds(chexpert, tmp_path):
    root, _ = chexpert
    runs = [targets_of(tmp_path / str(i), convert(root, tmp_path / str(i), "chexpert", uncertain="lsr", seed=s))
            for i, s in enumerate((0, 0, 1))]
    soft = lambda got: {k: t[(t > 0) & (t < 1)].tolist() for k, (_, t) in got.items()}   # noqa: E731
    assert soft(runs[0]) == soft(runs[1])
    common = [k for k in runs[0] if k in runs[2] and soft(runs[0])[k]]
    assert common and any(soft(runs[0])[k] != soft(runs[2])[k] for k in common)


def test_chexpert_views_patients_and_official_test(chexpert, tmp_path):
    root, truth = chexpert
    m = convert(root, tmp_path / "o", "chexpert", views="all", val=2)
    slices = pl.read_parquet(tmp_path / "o" / "slices.parquet")
    assert len(slices) == 26 and set(slices["view"]) == {"AP", "PA", "LATERAL"}
    assert slices.group_by("patient").agg(pl.col("split").n_unique())["split"].max() == 1
    assert {truth[k]["split"] for k in slices.filter(pl.col("split") == "test")["key"]} == {"test"}
    assert m["splits"]["val"]["patients"] == 2 and m["splits"]["test"]["patients"] == 3
    lateral = convert(root, tmp_path / "lat", "chexpert", views="lateral")
    rejects = pl.read_parquet(tmp_path / "lat" / "rejects.parquet")
    assert sum(v["samples"] for v in lateral["splits"].values()) == 13
    assert rejects["code"].to_list() == ["view"] * 13 and all("frontal" in p for p in rejects["path"])


def test_mimic_official_split_metadata_views(tmp_path):
    root, truth = write_mimic(tmp_path / "mimic")
    m = convert(root, tmp_path / "o", "mimic-cxr", uncertain="ones")
    got = targets_of(tmp_path / "o", m)
    assert len(got) == 9 and all(truth[k]["view"] == "PA" and truth[k]["split"] == s for k, (s, _) in got.items())
    assert m["config"]["official_splits"] == ["test", "train", "val"]
    assert pl.read_parquet(tmp_path / "o" / "rejects.parquet")["code"].to_list() == ["view"] * 9


def test_a_patient_in_two_splits_of_the_split_list_is_refused(tmp_path):
    root, _ = write_mimic(tmp_path / "mimic")
    path = root / "mimic-cxr-2.0.0-split.csv"
    rows = list(csv.DictReader(open(path)))
    rows[1]["split"] = "test" if rows[1]["split"] != "test" else "train"     # subject 0's lateral image
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with pytest.raises(DatakitError, match=r"^the source's split list puts 1 patient\(s\) into two splits, e.g. "
                                           r"patient '10000032' into (test and train|train and test); a patient "
                                           r"belongs to one split$"):
        convert(root, tmp_path / "o", "mimic-cxr")
    assert nothing_written(tmp_path / "o")


def test_unknown_columns_and_labels_are_one_line_errors(chexpert, tmp_path):
    root, _ = chexpert
    bad = tmp_path / "train.csv"
    text = (root / "train.csv").read_text().replace("Pleural Effusion", "Effusion")
    bad.write_text(text)
    with pytest.raises(DatakitError, match=r"^--labels .*train.csv has no column\(s\) \['Pleural Effusion'\]; its "
                                           r"columns: Path, Sex, Age"):
        convert(root, tmp_path / "o", "chexpert", labels=str(bad))
    with pytest.raises(DatakitError, match=r"^--classes Edema, Flu: \['Flu'\] not among the source's labels"):
        convert(root, tmp_path / "o", "chexpert", classes=("Edema", "Flu"))
    bad.write_text(text.replace("Effusion", "Pleural Effusion").replace(",1.0,", ",yes,", 1))
    with pytest.raises(DatakitError, match=r"line \d+: column '.*' holds 'yes'; expected 1, 0, -1 \(uncertain\) or "
                                           r"blank$"):
        convert(root, tmp_path / "o", "chexpert", labels=str(bad))
    with pytest.raises(DatakitError, match=r"^--uncertain 'maybe' is not one of: ones, zeros, lsr, ignore$"):
        convert(root, tmp_path / "o", "chexpert", uncertain="maybe")
    assert nothing_written(tmp_path / "o")


def test_padchest_and_nih_labels_and_splits(tmp_path):
    root, truth = write_padchest(tmp_path / "pc")
    m = convert(root, tmp_path / "pc-out", "padchest", val=2, test=2)
    assert m["classes"] == ["Cardiomegaly", "No Finding", "Pleural Effusion", "Pneumonia", "aortic elongation"]
    names = {"normal": "No Finding", "cardiomegaly": "Cardiomegaly", "pleural effusion": "Pleural Effusion",
             "pneumonia": "Pneumonia", "aortic elongation": "aortic elongation"}
    for key, (_, t) in targets_of(tmp_path / "pc-out", m).items():
        assert {c for c, v in zip(m["classes"], t) if v == 1} == {names[f] for f in truth[key]["found"]}
    assert [m["splits"][s]["patients"] for s in ("train", "val", "test")] == [8, 2, 2]
    root, truth = write_nih(tmp_path / "nih")
    m = convert(root, tmp_path / "nih-out", "nih", val=1)
    assert m["classes"][:4] == ["No Finding", "Atelectasis", "Cardiomegaly", "Pleural Effusion"]
    got = targets_of(tmp_path / "nih-out", m)
    assert len(got) == 20 and {k for k, (s, _) in got.items() if s == "test"} == \
        {k for k, v in truth.items() if v["split"] == "test"}
    for key, (_, t) in got.items():
        found = {"Pleural Effusion" if f == "Effusion" else f.replace("_", " ") for f in truth[key]["found"]}
        assert {c for c, v in zip(m["classes"], t) if v == 1} == (found or {"No Finding"})
    assert verify_dataset(tmp_path / "nih-out", workers=1).problems == []


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("merge")
    out = {}
    for name, write in (("chexpert", write_chexpert), ("mimic-cxr", write_mimic), ("nih", write_nih),
                        ("padchest", write_padchest)):
        root, _ = write(tmp / name / "src")
        out[name] = tmp / name / "out"
        convert(root, out[name], name, uncertain="ignore")
    return out


def test_merge_takes_the_label_intersection_and_keeps_each_source_split(sources, tmp_path):
    m = merge_cxr(CxrMergeOptions(sources=tuple(str(p) for p in sources.values()), out=str(tmp_path / "m"), workers=1))
    assert m["classes"] == ["No Finding", "Cardiomegaly", "Pneumonia", "Pleural Effusion"]
    merged = targets_of(tmp_path / "m", m)
    total = 0
    for name, folder in sources.items():
        src_manifest = json.loads((folder / "manifest.json").read_text())
        src = targets_of(folder, src_manifest)
        share = next(s for s in m["config"]["sources"] if s["name"] == name)
        assert share["samples"] == {s: src_manifest["splits"][s]["samples"] for s in ("train", "val", "test")}
        assert share["absent"] == []
        for key, (split, t) in src.items():
            got_split, got = merged[f"{name}-{key}"]
            want = t[[src_manifest["classes"].index(c) for c in m["classes"]]]
            assert got_split == split and np.array_equal(got, want, equal_nan=True)
        total += len(src)
    assert len(merged) == total
    slices = pl.read_parquet(tmp_path / "m" / "slices.parquet")
    assert slices.group_by("patient").agg(pl.col("split").n_unique())["split"].max() == 1
    assert set(slices["source_dataset"]) == set(sources)
    assert verify_dataset(tmp_path / "m", workers=1, decode=True).problems == []


def test_merge_union_masks_labels_a_source_lacks(sources, tmp_path):
    m = merge_cxr(CxrMergeOptions(sources=(f"cx={sources['chexpert']}", f"pc={sources['padchest']}"),
                                  out=str(tmp_path / "u"), labels="union", workers=1))
    assert "aortic elongation" in m["classes"] and "Support Devices" in m["classes"]
    share = {s["name"]: s for s in m["config"]["sources"]}
    assert "Support Devices" in share["pc"]["absent"] and share["cx"]["absent"] == ["aortic elongation"]
    j = m["classes"].index("Support Devices")
    cx_manifest = json.loads((sources["chexpert"] / "manifest.json").read_text())
    cx = targets_of(sources["chexpert"], cx_manifest)
    k = cx_manifest["classes"].index("Support Devices")
    for key, (_, t) in targets_of(tmp_path / "u", m).items():
        want = cx[key[3:]][1][k] if key.startswith("cx-") else np.nan
        assert np.array_equal(t[j], want, equal_nan=True)
    assert verify_dataset(tmp_path / "u", workers=1).problems == []


def test_merge_refusals(sources, chexpert, tmp_path):
    root, _ = chexpert
    convert_cxr(CxrOptions(root=str(root), out=str(tmp_path / "big"), preset="chexpert", size=16, workers=1))
    with pytest.raises(DatakitError, match=r"stores zstd uint8 images of shape \[16, 16\], .* \[8, 8\]; convert them"):
        merge_cxr(CxrMergeOptions(sources=(f"a={sources['nih']}", f"b={tmp_path / 'big'}"), out=str(tmp_path / "o")))
    with pytest.raises(DatakitError, match=r"are both preset chexpert: one dataset's patients would be split twice"):
        merge_cxr(CxrMergeOptions(sources=(str(sources["chexpert"]), f"x={sources['chexpert']}"),
                                  out=str(tmp_path / "o")))
    with pytest.raises(DatakitError, match=r"^--merge needs at least two datasets; got 1$"):
        merge_cxr(CxrMergeOptions(sources=(str(sources["nih"]),), out=str(tmp_path / "o")))
    assert nothing_written(tmp_path / "o")
