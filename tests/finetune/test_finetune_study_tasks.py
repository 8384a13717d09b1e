"""The study tasks train end to end on converted tiny data: masked labels, Dice losses, binary AUC."""
import json

import numpy as np
import polars as pl

import trainer.finetune as ft
from datakit.convert.cxr import CxrOptions, convert_cxr
from datakit.convert.image_mask import ImageMaskOptions, convert_image_mask
from tests.fixtures.cxr_sources import write_chexpert
from tests.fixtures.mask_sources import write_montgomery
from tests.fixtures.task_datasets import read_shards

TINY = ["--model", "resnet-tiny", "--device", "cpu", "--workers", "0", "--image-size", "16", "--epochs", "2",
        "--batch-size", "4"]


def test_chexpert_with_missing_labels_trains_and_scores_only_known_targets(tmp_path):
    root, _ = write_chexpert(tmp_path / "CheXpert-v1.0-small", n_patients=16, n_valid=4)
    data = tmp_path / "data"
    m = convert_cxr(CxrOptions(root=str(root), out=str(data), preset="chexpert", uncertain="ignore", blank="ignore",
                               views="all", size=16, workers=1, val=3))
    result = ft.main(["--task", "chexpert", "--data", str(data), "--run-dir", str(tmp_path / "run"), *TINY])
    assert set(result["metrics"]) == {"mean_auc", *(f"auc_{c}" for c in m["classes"])}
    known = sum(int(np.count_nonzero(~np.isnan(np.frombuffer(s["labels"], "<f4"))))
                for split, s in read_shards(data, m).values() if split == "test")
    pred = pl.read_parquet(tmp_path / "run" / "predictions.parquet")
    assert len(pred) == known < 8 * 14 and pred["target"].null_count() == 0
    lines = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(l["train_loss"]) for l in lines)     # NaN targets never reach the loss


def test_montgomery_with_dice_loss(tmp_path):
    root, _ = write_montgomery(tmp_path / "MontgomerySet", n=12, h=16, w=16)
    data = tmp_path / "data"
    convert_image_mask(ImageMaskOptions(root=str(root), out=str(data), preset="montgomery", size=16, workers=1,
                                        val=1, test=1))
    result = ft.main(["--task", "montgomery", "--data", str(data), "--run-dir", str(tmp_path / "run"), *TINY,
                      "--seg-loss", "dice"])
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["seg_loss"] == "dice" and cfg["metric"] == "dice_mean_global"
    assert {"dice_lung", "dice_lung_global", "dice_mean_global"} <= set(result["metrics"])
