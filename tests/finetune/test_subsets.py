"""--shots (nested K-shot subsets) and --folds/--fold (patient-grouped, stratified k-fold)."""
import json

import numpy as np
import polars as pl
import pytest

import trainer.finetune as ft
from tests.fixtures.datasets import make_ct_dataset
from trainer.errors import TrainerError
from trainer.subsets import patient_folds, shot_subset

TINY = ["--model", "resnet-tiny", "--device", "cpu", "--workers", "0", "--batch-size", "4", "--lr", "3e-3",
        "--optimizer", "adamw", "--epochs", "1"]


def _single(n=60, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return [f"k{i:03d}" for i in range(n)], rng.integers(0, classes, n)


def test_single_label_shots_are_exactly_k_per_class_and_nested():
    keys, labels = _single()
    subsets = {k: shot_subset(keys, labels, seed=4, shots=k, names=["a", "b", "c"]) for k in (1, 5, 10)}
    for k, picked in subsets.items():
        assert len(set(picked.tolist())) == len(picked) == 3 * k
        assert np.bincount(labels[picked], minlength=3).tolist() == [k, k, k]
    assert set(subsets[1]) < set(subsets[5]) < set(subsets[10])
    assert set(shot_subset(keys, labels, seed=5, shots=5, names=["a", "b", "c"])) != set(subsets[5])
    # the same subset whatever order the rows come in
    perm = np.random.default_rng(1).permutation(len(keys))
    again = shot_subset([keys[i] for i in perm], labels[perm], seed=4, shots=5, names=["a", "b", "c"])
    assert {keys[perm[i]] for i in again} == {keys[i] for i in subsets[5]}


def test_too_few_examples_of_a_class_is_an_error_naming_it():
    keys, labels = [f"k{i}" for i in range(7)], np.array([0, 0, 0, 1, 1, 1, 2])
    with pytest.raises(TrainerError, match=r"^--shots 2: these classes have fewer than 2 training examples: c \(1\)$"):
        shot_subset(keys, labels, seed=0, shots=2, names=["a", "b", "c"])


def test_multilabel_shots_hold_at_least_k_per_label_and_nest():
    rng = np.random.default_rng(0)
    labels = rng.random((200, 4)) < np.array([0.05, 0.2, 0.4, 0.6])
    keys = [f"k{i:03d}" for i in range(200)]
    none = ~labels.any(1)
    assert none.sum() >= 10
    previous = set()
    for k in (1, 2, 5):
        picked = shot_subset(keys, labels, seed=0, shots=k, names=list("abcd"))
        counts = labels[picked].sum(0)
        assert (counts >= k).all() and none[picked].sum() == k           # label-less rows: the label `none`, K of them
        assert len(picked) <= k * 5 and len(set(picked.tolist())) == len(picked)
        assert previous <= set(picked.tolist())
        previous = set(picked.tolist())


def test_folds_keep_every_patient_in_one_fold_and_stratify():
    rng = np.random.default_rng(3)
    patients = np.repeat(np.arange(40), rng.integers(1, 6, 40))
    labels = (patients % 4 == 0).astype(int)        # a label per patient: 10 of 40 patients are class 1
    fold = patient_folds(labels, [f"p{p}" for p in patients], folds=5, seed=0)
    for p in np.unique(patients):
        assert len(set(fold[patients == p])) == 1
    assert sorted(set(fold.tolist())) == [0, 1, 2, 3, 4]
    for c in (0, 1):   # stratified by samples: each fold within 2 samples of its fifth of the class (patients: 1-5)
        per_fold = np.array([((fold == f) & (labels == c)).sum() for f in range(5)])
        assert per_fold.sum() == (labels == c).sum() and np.abs(per_fold - per_fold.sum() / 5).max() <= 2
    assert np.array_equal(fold, patient_folds(labels, [f"p{p}" for p in patients], folds=5, seed=0))
    with pytest.raises(TrainerError, match=r"^--folds 5: the train split has only 3 patients"):
        patient_folds(np.array([0, 1, 0]), ["a", "b", "c"], folds=5, seed=0)


@pytest.fixture(scope="module")
def ct(tmp_path_factory):
    return make_ct_dataset(tmp_path_factory.mktemp("ct") / "ds", splits={"train": 60, "val": 12, "test": 12},
                           num_classes=3)


def test_shots_run_names_config_and_saved_indices(ct, tmp_path):
    ft.main(["--task", "radnet", "--data", str(ct), "--out", str(tmp_path), "--shots", "2", *TINY])
    run = tmp_path / "radnet" / "scratch" / "finetune" / "shots-2" / "seed-0"
    cfg = json.loads((run / "config.json").read_text())
    assert (cfg["shots"], cfg["subset_samples"], cfg["fraction"]) == (2, 6, 1.0)
    subset = pl.read_parquet(run / "subset.parquet")
    assert subset["labels"].to_list().count(["0"]) == subset["labels"].to_list().count(["2"]) == 2
    assert sorted(subset["order"].to_list()) == list(range(6))          # the order they were picked in
    meta = pl.read_parquet(ct / "slices.parquet").filter(pl.col("split") == "train")
    assert [meta["key"][i] for i in subset["index"].to_list()] == subset["key"].to_list()
    with pytest.raises(TrainerError, match=r"^--shots 30: these classes have fewer than 30 training examples"):
        ft.main(["--task", "radnet", "--data", str(ct), "--out", str(tmp_path), "--shots", "30", *TINY])
    with pytest.raises(TrainerError, match=r"^--shots 2 and --fraction 0.5 both choose the training subset"):
        ft.main(["--task", "radnet", "--data", str(ct), "--out", str(tmp_path), "--shots", "2", "--fraction", "0.5",
                 *TINY])


def test_a_fold_run_tests_on_its_held_out_patients(ct, tmp_path):
    ft.main(["--task", "radnet", "--data", str(ct), "--out", str(tmp_path), "--folds", "3", "--fold", "1", *TINY])
    run = tmp_path / "radnet" / "scratch" / "finetune" / "frac-1.0" / "seed-0" / "fold-1-of-3"
    folds = pl.read_parquet(run / "folds.parquet")
    meta = pl.read_parquet(ct / "slices.parquet").filter(pl.col("split") == "train").join(folds, on="key")
    assert len(meta) == 60 and set(folds["group_by"]) == {"patient"}
    assert meta.group_by("patient").agg(pl.col("fold").n_unique())["fold"].max() == 1   # no patient in two folds
    held_out = set(meta.filter(pl.col("fold") == 1)["key"])
    tested = set(pl.read_parquet(run / "predictions.parquet")["sample"])
    trained = set(pl.read_parquet(run / "subset.parquet")["key"])
    assert tested == held_out and not tested & trained and len(tested | trained) == 60
    cfg = json.loads((run / "config.json").read_text())
    assert (cfg["folds"], cfg["fold"], cfg["subset_samples"]) == (3, 1, 60 - len(held_out))
    for bad, message in ((["--folds", "3", "--fold", "3"], r"^--fold 3 is out of range for --folds 3: 0..2$"),
                         (["--folds", "3"], r"^--folds K and --fold i come together"),
                         (["--folds", "1", "--fold", "0"], r"^--folds 1 must be at least 2$")):
        with pytest.raises(TrainerError, match=message):
            ft.main(["--task", "radnet", "--data", str(ct), "--out", str(tmp_path), *bad, *TINY])
