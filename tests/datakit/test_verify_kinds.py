"""`tlx verify` on every dataset kind `tlx convert` writes (segmentation, multilabel,
image-classification): a fresh conversion verifies with every check, including decoding;
a corrupted shard, a changed table and a patient leak are each reported."""
import json
import shutil

import polars as pl
import pytest
from click.testing import CliRunner

from cli.main import cli
from datakit.convert.class_folder import ClassFolderOptions, convert_class_folder
from datakit.convert.image_folder import ImageFolderOptions, convert_image_folder
from datakit.convert.nifti_seg import NiftiSegOptions, convert_nifti_seg
from datakit.verify import verify_dataset
from tests.fixtures.task_datasets import write_chestxray, write_class_folders, write_lits_cases

ALL_CHECKS = ["format", "shards", "keys", "counts", "leaks", "pixels"]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """kind -> dataset folder, one tiny conversion of each kind."""
    tmp = tmp_path_factory.mktemp("kinds")
    out = {}
    convert_nifti_seg(NiftiSegOptions(images=str(write_lits_cases(tmp / "lits", n_cases=5)), out=str(tmp / "seg"),
                                      preset="lits", size=16, workers=1, samples_per_shard=7, val=1, test=1))
    out["segmentation"] = tmp / "seg"
    root, csv_path = write_chestxray(tmp / "cxr", n_patients=10, size=24)
    convert_image_folder(ImageFolderOptions(root=str(root), labels=str(csv_path), out=str(tmp / "multi"), size=16,
                                            val=0.2, test=0.2, workers=1, samples_per_shard=6))
    out["multilabel"] = tmp / "multi"
    convert_class_folder(ClassFolderOptions(root=str(write_class_folders(tmp / "nat", per_class=5, size=16)),
                                            out=str(tmp / "cls"), val=0.2, test=0.2, workers=1, samples_per_shard=5))
    out["image-classification"] = tmp / "cls"
    return out


def _copy(converted, kind, tmp_path):
    dest = tmp_path / kind
    shutil.copytree(converted[kind], dest)
    return dest, json.loads((dest / "manifest.json").read_text())


@pytest.mark.parametrize("kind", ["segmentation", "multilabel", "image-classification"])
def test_every_converted_kind_verifies_with_every_check(converted, kind):
    report = verify_dataset(converted[kind], workers=1, decode=True)
    assert report.problems == []
    assert report.kind == kind and report.checked == ALL_CHECKS
    manifest = json.loads((converted[kind] / "manifest.json").read_text())
    slices = pl.read_parquet(converted[kind] / "slices.parquet")
    assert report.shards == len(manifest["shards"]) > 2
    assert report.samples == len(slices) == sum(s["samples"] for s in manifest["splits"].values())
    result = CliRunner().invoke(cli, ["verify", str(converted[kind]), "--workers", "1"])
    assert result.exit_code == 0 and f"OK: {report.shards} shards, {report.samples} samples" in result.output


@pytest.mark.parametrize("kind", ["segmentation", "multilabel", "image-classification"])
def test_a_corrupted_shard_and_a_miscounted_split_are_reported(converted, kind, tmp_path):
    ds, manifest = _copy(converted, kind, tmp_path)
    first = manifest["shards"][0]
    data = bytearray((ds / first["path"]).read_bytes())
    data[600] ^= 0xFF                                       # one flipped byte in the first payload
    (ds / first["path"]).write_bytes(bytes(data))
    split = first["split"]
    manifest["splits"][split]["samples"] += 1
    (ds / "manifest.json").write_text(json.dumps(manifest))
    result = CliRunner().invoke(cli, ["verify", str(ds), "--workers", "1", "--decode"])
    assert result.exit_code == 1
    assert f"{first['path']}: sha256 differs from the manifest" in result.output
    n = manifest["splits"][split]["samples"]
    assert f"split {split}: manifest says samples = {n}, the data says {n - 1}" in result.output


def test_segmentation_decode_checks_masks_against_the_table(converted, tmp_path):
    ds, manifest = _copy(converted, "segmentation", tmp_path)
    slices = pl.read_parquet(ds / "slices.parquet")
    liver = slices["pixels_liver"].to_list()
    liver[0] += 1                                           # the table says one liver pixel more
    slices.with_columns(pixels_liver=pl.Series(liver)).write_parquet(ds / "slices.parquet")
    assert verify_dataset(ds, workers=1).problems == []     # a count only decoding can check
    problems = verify_dataset(ds, workers=1, decode=True).problems
    assert problems == [f"{slices['shard'][0]}: decoded masks differ from slices.parquet's pixels_<class> counts"]


def test_a_patient_in_two_splits_and_a_lost_row_are_reported(converted, tmp_path):
    ds, manifest = _copy(converted, "multilabel", tmp_path)
    slices = pl.read_parquet(ds / "slices.parquet")
    train, test = (slices.filter(pl.col("split") == s)["patient"][0] for s in ("train", "test"))
    moved = slices.with_columns(patient=pl.when(pl.col("patient") == test).then(pl.lit(train))
                                .otherwise(pl.col("patient")))
    moved.slice(0, len(moved) - 1).write_parquet(ds / "slices.parquet")
    problems = verify_dataset(ds, workers=1).problems
    assert f"slices.parquet has {len(slices) - 1} rows, the manifest's shards hold {len(slices)} samples" in problems
    assert any(p.startswith("1 patients have samples in more than one split (e.g. ") for p in problems), problems
    # Split per image (no patient column in the source): patients are not compared across splits.
    manifest["config"]["split_by"] = "image"
    (ds / "manifest.json").write_text(json.dumps(manifest))
    assert not any("patients have samples" in p for p in verify_dataset(ds, workers=1).problems)


def test_classification_labels_and_members_are_checked(converted, tmp_path):
    ds, manifest = _copy(converted, "image-classification", tmp_path)
    slices = pl.read_parquet(ds / "slices.parquet")
    flipped = slices.with_columns(label_index=(pl.col("label_index") + 1) % 3)
    flipped.write_parquet(ds / "slices.parquet")
    problems = verify_dataset(ds, workers=1).problems
    assert f"slices.parquet: {len(slices)} rows whose label_index is not their label's index in classes" in problems
    assert f"{manifest['shards'][0]['path']}: cls members differ from slices.parquet's label_index" in problems
    manifest["members"]["extra"] = {"role": "mask", "codec": "zstd", "dtype": "uint8", "shape": [4, 4]}
    (ds / "manifest.json").write_text(json.dumps(manifest))
    assert verify_dataset(ds, workers=1).problems == [
        "manifest.json: kind image-classification needs one member per role image, label; members "
        "['cls', 'extra', 'jpg'] have roles image, label, mask"]
    manifest["kind"] = "video"
    (ds / "manifest.json").write_text(json.dumps(manifest))
    assert verify_dataset(ds, workers=1).problems == [
        "manifest.json: kind 'video' is not one of: ct-slices, segmentation, multilabel, image-classification"]


@pytest.mark.parametrize("kind", ["segmentation", "multilabel", "image-classification"])
def test_info_describes_every_converted_kind(converted, kind):
    """tlx info once refused converted datasets; it now gives their samples, patients and labels per split."""
    from datakit.info import dataset_info
    info = dataset_info(converted[kind])
    manifest = json.loads((converted[kind] / "manifest.json").read_text())
    assert dict(zip(info.by_split["split"], info.by_split["samples"])) == \
        {s: v["samples"] for s, v in manifest["splits"].items()}
    count = "positives" if kind == "multilabel" else "samples"
    for row in info.by_split_label.to_dicts():
        assert row[count] == manifest["splits"][row["split"]]["by_label"].get(row["label"], 0)
    result = CliRunner().invoke(cli, ["info", str(converted[kind])])
    assert result.exit_code == 0 and f"kind {kind}" in " ".join(result.output.split())
