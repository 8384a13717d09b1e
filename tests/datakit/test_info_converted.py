"""`tlx info` of converted datasets: labels with their positives, missing and uncertain; masks' pixels."""
import json
import math

import numpy as np
import polars as pl
from click.testing import CliRunner

from cli.main import cli
from datakit.convert.cxr import CxrOptions, convert_cxr
from datakit.convert.image_mask import ImageMaskOptions, convert_image_mask
from datakit.info import dataset_info
from tests.fixtures.cxr_sources import write_chexpert
from tests.fixtures.mask_sources import write_drive
from tests.fixtures.task_datasets import read_shards


def test_info_of_a_multilabel_dataset_counts_the_stored_targets(tmp_path):
    root, _ = write_chexpert(tmp_path / "CheXpert-v1.0-small", n_patients=8)
    m = convert_cxr(CxrOptions(root=str(root), out=str(tmp_path / "o"), preset="chexpert", uncertain="ignore",
                               blank="ignore", size=8, workers=1))
    info = dataset_info(tmp_path / "o")
    want = {}
    for split, s in read_shards(tmp_path / "o", m).values():
        for name, t in zip(m["classes"], np.frombuffer(s["labels"], "<f4")):
            got = want.setdefault((split, name), [0, 0])
            got[0] += t == 1
            got[1] += math.isnan(t)
    rows = {(r["split"], r["label"]): [r["positives"], r["missing"]] for r in info.by_split_label.to_dicts()}
    assert rows == {k: [int(a), int(b)] for k, (a, b) in want.items()} and sum(v[1] for v in rows.values()) > 10
    assert dict(zip(info.by_split["split"], info.by_split["samples"])) == \
        {s: v["samples"] for s, v in m["splits"].items()}
    result = CliRunner().invoke(cli, ["info", str(tmp_path / "o")])
    assert result.exit_code == 0 and "kind multilabel (cxr)" in result.output and "uncertain" in result.output


def test_info_of_a_segmentation_dataset_sums_mask_pixels(tmp_path):
    root, _ = write_drive(tmp_path / "DRIVE")
    convert_image_mask(ImageMaskOptions(root=str(root), out=str(tmp_path / "o"), preset="drive", size=16, workers=1,
                                        val=1))
    info = dataset_info(tmp_path / "o")
    slices = pl.read_parquet(tmp_path / "o" / "slices.parquet")
    vessel = info.by_split_label.filter(pl.col("label") == "vessel")
    assert vessel["pixels"].sum() == slices["pixels_vessel"].sum()
    assert dict(zip(vessel["split"], vessel["samples"])) == {
        s: int((slices.filter(pl.col("split") == s)["pixels_vessel"] > 0).sum()) for s in ("train", "val", "test")}
    assert set(info.diversity.columns) >= {"volumes_min", "max_volume_share"}
    assert json.loads((tmp_path / "o" / "manifest.json").read_text())["kind"] == "segmentation"
