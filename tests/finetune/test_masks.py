"""--save-masks, --decoder and --lars-form in trainer.finetune: what config.json records, masks.npz against the
run's own per-slice Dice, a resume from before the flags, and the pixel maps `tlx analyze` draws from the masks."""
import json

import numpy as np
import polars as pl
import pytest
import torch

import trainer.finetune as ft
from analysis.report import ReportOptions, build_report
from datakit.convert.nifti_seg import NiftiSegOptions, convert_nifti_seg
from tests.fixtures.task_datasets import write_lits_cases
from trainer.checkpoint import new_checkpoint, save_checkpoint
from trainer.errors import TrainerError
from trainer.models import build_encoder

TINY = ["--model", "resnet-tiny", "--device", "cpu", "--workers", "0", "--optimizer", "adamw", "--image-size", "32",
        "--epochs", "2", "--batch-size", "4", "--lr", "5e-3"]


@pytest.fixture(scope="module")
def lits(tmp_path_factory):
    base = tmp_path_factory.mktemp("masks")
    write_lits_cases(base / "src", n_cases=6, shape=(32, 32, 6))
    convert_nifti_seg(NiftiSegOptions(images=str(base / "src"), out=str(base / "data"), preset="lits", size=32,
                                      workers=1))
    torch.manual_seed(11)
    init = base / "pre" / "ct-init" / "checkpoints" / "last.pt"
    save_checkpoint(new_checkpoint("resnet-tiny", build_encoder("resnet-tiny").state_dict(), step=1, epoch=1), init)
    runs = base / "runs"
    for args in (["--init", "scratch"], ["--init", str(init)]):
        ft.main(["--task", "lits", "--data", str(base / "data"), "--out", str(runs), "--save-masks", *args, *TINY])
    return base, runs


def test_masks_hold_the_test_slices_the_per_slice_dice_was_computed_from(lits):
    _, runs = lits
    run = runs / "lits" / "scratch" / "finetune" / "frac-1.0" / "seed-0"
    cfg = json.loads((run / "config.json").read_text())
    assert (cfg["decoder"], cfg["lars_form"], cfg["save_masks"]) == ("backboned-unet", "study-code", True)
    with np.load(run / "masks.npz") as npz:
        keys, pred, target, classes = npz["keys"], npz["pred"], npz["target"], npz["classes"].tolist()
    assert pred.dtype == np.uint8 and pred.shape == target.shape and pred.shape[1:] == (32, 32)
    assert classes == ["background", "liver", "tumor"]
    predictions = pl.read_parquet(run / "predictions.parquet")
    assert sorted(keys.tolist()) == sorted(set(predictions["sample"])) and len(set(keys.tolist())) == len(keys)
    liver = dict(predictions.filter(pl.col("class") == "liver").select("sample", "dice").iter_rows())
    for k, p, t in zip(keys, pred, target):
        inter, both = np.sum((p == 1) & (t == 1)), np.sum(p == 1) + np.sum(t == 1)
        expected = 2 * inter / both if both else float("nan")
        assert liver[k] == pytest.approx(expected, nan_ok=True)


def test_pixel_maps_from_two_inits(lits):
    base, runs = lits
    report = build_report(runs, base / "report", options=ReportOptions(redundancy_splits=1))
    (panel,) = report.pixel_maps
    assert panel.names == ["ct-init", "scratch"] and panel.model_sets == 1
    table = pl.read_csv(base / "report" / "pixel_overlap.csv")
    assert table["observed"].sum() == pytest.approx(1.0)
    assert not any("without the CT slices" in n for n in report.notes["pixel maps"])   # the dataset was readable
    assert set(panel.images) == {v.key for v in panel.views}


def test_save_masks_is_for_segmentation_and_old_checkpoints_resume_only_as_they_ran(tmp_path):
    with pytest.raises(TrainerError, match="--save-masks stores segmentation masks; task radnet is classification"):
        ft.main(["--task", "radnet", "--data", str(tmp_path), "--save-masks", *TINY])
    old_lars = ft.saved_config({"optimizer": "lars", "kind": "classification"})
    assert old_lars == {"optimizer": "lars", "kind": "classification", "lars_form": "lr-outside"}
    old_seg = ft.saved_config({"optimizer": "adamw", "kind": "segmentation"})
    assert old_seg["decoder"] == "smp-unet" and "lars_form" not in old_seg   # AdamW runs never had a LARS form
    assert old_seg["seg_loss"] == "ce"                                       # nor another loss than CE
    assert ft.saved_config({"kind": "segmentation", "decoder": "backboned-unet"})["decoder"] == "backboned-unet"
