"""Write options that change the dataset: the raw codec, an exact subset (RadNet-1.28M style), the HU floor."""
import json
import tarfile

import numpy as np
import polars as pl
import pytest

from datakit.assemble import subset_report
from datakit.plan import PlanConfig, make_plan
from datakit.verify import verify_dataset
from datakit.write import write_dataset
from datakit.write_config import RunOptions, WriteConfig
from tests.datakit.write_helpers import SECRET, WRITE_ARGS, copy_plan, image_decoder


@pytest.fixture(scope="module")
def subset_raw(sharded, tmp_path_factory):
    """The reference cohort re-planned as a 150-slice subset without class "other", written raw."""
    ds = copy_plan(sharded[0], tmp_path_factory.mktemp("subset") / "data")
    # A tiny cohort: a volume or two per split and class, one of them a re-sent copy that plan
    # counts and write drops, so the margin must cover a whole volume.
    summary = make_plan(ds, PlanConfig(fractions=(0.5, 0.25, 0.25), subset_size=150, exclude_classes=("other",),
                                       subset_margin=2.0))
    write_dataset(ds, WriteConfig(size=(24, 24), codec="raw", samples_per_shard=20), RunOptions(workers=1))
    return ds, summary


def test_subset_is_cut_exactly_to_its_targets(subset_raw, sharded):
    ds, summary = subset_raw
    slices = pl.read_parquet(ds / "slices.parquet")
    assert len(slices) == 150
    got = {(s, lab): n for s, lab, n in slices.group_by("split", "label").len().rows()}
    want = {(s, lab): n for s, by in summary.subset_targets.items() for lab, n in by.items()}
    assert got == want
    assert "other" not in set(slices["label"])
    # Leak-free against the full dataset: each subset volume is in the split it has there.
    full = pl.read_parquet(sharded[0] / "volumes.parquet").filter("kept").select("volume", full_split="split")
    both = slices.select("volume", "split").unique().join(full, on="volume")
    assert (both["split"] == both["full_split"]).all()
    rejects = pl.read_parquet(ds / "rejects.parquet")
    assert {"excluded-class", "not-in-subset"} <= set(rejects["code"])
    manifest = json.loads((ds / "manifest.json").read_text())
    assert manifest["files"]["found"] == len(slices) + len(rejects)
    assert manifest["subset"] == {"size": 150, "written": 150, "short": {}}


def test_subset_shortfall_is_reported_not_hidden():
    kept = pl.DataFrame({"split": ["train"] * 34 + ["val"] * 10, "label": ["thorax"] * 34 + ["head"] * 10})
    targets = {"train": {"thorax": 35}, "val": {"head": 10}, "test": {}}
    assert subset_report(kept, targets) == {"size": 45, "written": 44, "short": {"train": {"thorax": 1}}}


def test_raw_codec_is_named_in_the_manifest_and_decodes(subset_raw):
    ds, _ = subset_raw
    manifest = json.loads((ds / "manifest.json").read_text())
    assert manifest["members"]["hu.raw"] == {"role": "image", "codec": "raw", "dtype": "int16",
                                             "byteorder": "little", "shape": [24, 24], "units": "HU"}
    assert manifest["config"]["write"]["codec"] == "raw" and manifest["config"]["plan"]["subset_size"] == 150
    train = [e["samples"] for e in manifest["shards"] if e["split"] == "train"]
    assert train[:-1] == [20] * (len(train) - 1) and 0 < train[-1] <= 20
    report = verify_dataset(ds, workers=1, decode=True)
    assert report.problems == []


def _pixels(ds) -> dict:
    """key -> stored int16 slice, from every shard."""
    manifest = json.loads((ds / "manifest.json").read_text())
    ext, decode = image_decoder(manifest)
    out = {}
    for entry in manifest["shards"]:
        with tarfile.open(ds / entry["path"]) as tar:
            for m in tar.getmembers():
                if m.name.endswith("." + ext):
                    out[m.name.split(".")[0]] = decode(tar.extractfile(m).read())
    return out


@pytest.fixture(scope="module")
def raw_hu(sharded, tmp_path_factory):
    """The reference plan written again with --hu-floor none (raw HU, padding included)."""
    from click.testing import CliRunner

    from cli.main import cli

    ds = copy_plan(sharded[0], tmp_path_factory.mktemp("raw-hu") / "data")
    result = CliRunner().invoke(cli, ["write", str(ds), *WRITE_ARGS, "--hu-floor", "none"],
                                env={"TLX_SECRET": SECRET, "TLX_QUIET": "1"})
    assert result.exit_code == 0, result.output
    return ds


def test_hu_floor_clips_padding_to_air_and_keeps_coverage(sharded, raw_hu):
    floored_ds, _ = sharded
    floored, raw = _pixels(floored_ds), _pixels(raw_hu)
    assert set(floored) == set(raw)        # the same slices kept: coverage does not depend on the floor
    # The synthetic cohort pads some series with -3024 outside the reconstruction circle (32 -> 32 px:
    # no resize, so every other pixel must be the same).
    padded = [k for k, img in raw.items() if img.min() < -1024]
    assert len(padded) >= 20 and min(raw[k].min() for k in padded) == -3024
    assert min(img.min() for img in floored.values()) == -1024
    for k in padded:
        assert floored[k].min() == -1024
        keep = raw[k] >= -1024
        assert np.array_equal(floored[k][keep], raw[k][keep]) and (floored[k][~keep] == -1024).all()
    a, b = (pl.read_parquet(d / "slices.parquet").sort("key") for d in (floored_ds, raw_hu))
    assert a["key"].to_list() == b["key"].to_list()
    assert a["coverage"].to_list() == b["coverage"].to_list()
    configs = [json.loads((d / "manifest.json").read_text())["config"]["write"] for d in (floored_ds, raw_hu)]
    assert configs[0]["hu_floor"] == -1024 and configs[1]["hu_floor"] is None
