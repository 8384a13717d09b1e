"""`tlx convert pcam` (HDF5) and `tlx convert npy-volumes` (MRNet)."""
import numpy as np
import polars as pl
import pytest
import zstandard

from datakit.convert.images import resize_uint8
from datakit.convert.npy_volumes import NpyVolumeOptions, convert_npy_volumes
from datakit.errors import DatakitError
from datakit.verify import verify_dataset
from tests.fixtures.optional import need
from tests.fixtures.other_sources import PCAM, write_mrnet, write_pcam
from tests.fixtures.task_datasets import read_shards


def unzstd(data: bytes, shape) -> np.ndarray:
    return np.frombuffer(zstandard.ZstdDecompressor().decompress(data), np.uint8).reshape(shape)


def nothing_written(out) -> bool:
    return not out.exists() or not [p for p in out.iterdir() if not p.name.startswith(".")]


def test_pcam_official_splits_patches_and_slides(tmp_path):
    need("h5py")
    from datakit.convert.pcam import PcamOptions, convert_pcam
    root, truth = write_pcam(tmp_path / "pcam")
    m = convert_pcam(PcamOptions(root=str(root), out=str(tmp_path / "o"), workers=1))
    assert m["kind"] == "image-classification" and m["classes"] == ["normal", "tumor"]
    assert [m["splits"][s]["samples"] for s in ("train", "val", "test")] == [12, 4, 4]
    source = {"train": "train", "val": "valid", "test": "test"}
    for key, (split, s) in read_shards(tmp_path / "o", m).items():
        x, y, _ = truth[source[split]]
        i = int(key.split("-")[1])
        assert key.startswith(split) and int(s["cls"]) == y[i]
        assert np.array_equal(unzstd(s["img.zst"], (3, 96, 96)), x[i].transpose(2, 0, 1))
    slices = pl.read_parquet(tmp_path / "o" / "slices.parquet")
    assert m["splits"]["train"]["patients"] == 3
    for key, patient, index in slices.select("key", "patient", "index").rows():
        assert patient == truth[source[key.split("-")[0]]][2][index]
    assert verify_dataset(tmp_path / "o", workers=1, decode=True).problems == []
    small = convert_pcam(PcamOptions(root=str(root), out=str(tmp_path / "g"), size=32, channels=1, meta="none",
                                     workers=1))
    assert small["members"]["img.zst"]["shape"] == [32, 32] and small["config"]["split_by"] == "official"


def test_pcam_bad_files_are_one_line_errors(tmp_path):
    h5py = need("h5py")
    from datakit.convert.pcam import PcamOptions, convert_pcam
    root, _ = write_pcam(tmp_path / "pcam")
    with h5py.File(root / f"{PCAM}valid_y.h5", "w") as f:
        f.create_dataset("labels", data=np.zeros((4, 1, 1, 1), np.uint8))
    with pytest.raises(DatakitError,
                       match=r"^camelyonpatch_level_2_split_valid_y.h5 has no dataset 'y'; it holds: labels$"):
        convert_pcam(PcamOptions(root=str(root), out=str(tmp_path / "o"), workers=1))
    root, _ = write_pcam(tmp_path / "leak")
    meta = root / f"{PCAM}test_meta.csv"
    meta.write_text(meta.read_text().replace("camelyon16_test_tumor_000", "camelyon16_train_tumor_000"))
    with pytest.raises(DatakitError, match=r"puts 1 patient\(s\) into two splits, e.g. patient "
                                           r"'camelyon16_train_tumor_000' into test and train"):
        convert_pcam(PcamOptions(root=str(root), out=str(tmp_path / "o"), workers=1))
    assert nothing_written(tmp_path / "o")


def test_mrnet_chosen_slices_labels_and_parts(tmp_path):
    root, truth = write_mrnet(tmp_path / "MRNet-v1.0")
    (root / "train" / "sagittal" / "0099.npy").write_bytes(b"not npy")        # listed by no label file
    m = convert_npy_volumes(NpyVolumeOptions(root=str(root), out=str(tmp_path / "o"), slices="center3", size=16,
                                             workers=1, val=2))
    assert m["classes"] == ["abnormal", "acl", "meniscus"] and m["members"]["img.zst"]["shape"] == [3, 16, 16]
    assert [m["splits"][s]["samples"] for s in ("train", "val", "test")] == [8, 2, 4]
    for key, (split, s) in read_shards(tmp_path / "o", m).items():
        volume, labels = truth[key]
        n = volume.shape[0]
        want = np.stack([resize_uint8(volume[n // 2 + d], 16) for d in (-1, 0, 1)])
        assert np.array_equal(unzstd(s["img.zst"], (3, 16, 16)), want)
        assert {c for c, h in zip(m["classes"], np.frombuffer(s["labels"], np.uint8)) if h} == labels
        assert (split == "test") == key.startswith("valid")
    rejects = pl.read_parquet(tmp_path / "o" / "rejects.parquet")
    assert rejects.select("path", "code").rows() == [("train/sagittal/0099.npy", "no-label")]
    assert verify_dataset(tmp_path / "o", workers=1, decode=True).problems == []
    np.save(root / "train" / "sagittal" / "0001.npy", np.zeros((2, 16, 16), np.uint8))   # center3 needs 3 slices
    m = convert_npy_volumes(NpyVolumeOptions(root=str(root), out=str(tmp_path / "short"), slices="center3", size=16,
                                             workers=1, val=2))
    assert sum(v["samples"] for v in m["splits"].values()) == 13
    rejects = pl.read_parquet(tmp_path / "short" / "rejects.parquet").filter(pl.col("code") == "too-few-slices")
    assert rejects.select("path", "reason").rows() == [
        ("train/sagittal/0001.npy", "2 slices; the offsets [-1, 0, 1] from the middle slice leave the volume")]
    assert verify_dataset(tmp_path / "short", workers=1).problems == []
    with pytest.raises(DatakitError, match=r"^--slices '1,2' must be center, center3 or 1 or 3 offsets"):
        convert_npy_volumes(NpyVolumeOptions(root=str(root), out=str(tmp_path / "x"), slices="1,2"))


def test_cbis_ddsm_mammograms_matched_by_series_uid(tmp_path):
    from datakit.convert.dicom_images import DicomImagesOptions, convert_dicom_images
    from datakit.pseudonym import pseudonym
    from tests.fixtures.xray_dicom import write_cbis
    secret = b"0123456789abcdef-a-mammo-secret!"
    (tmp_path / "key").write_bytes(secret)
    root, truth = write_cbis(tmp_path / "cbis")
    m = convert_dicom_images(DicomImagesOptions(
        root=str(root / "CBIS-DDSM"), out=str(tmp_path / "o"), preset="cbis-ddsm", size=20, workers=1, val=1,
        labels=(str(root / "mass_case_description_train_set.csv"),),
        test_labels=(str(root / "mass_case_description_test_set.csv"),), secret=str(tmp_path / "key")))
    assert m["classes"] == ["BENIGN", "MALIGNANT"]
    slices = pl.read_parquet(tmp_path / "o" / "slices.parquet")
    want = {pseudonym(secret, uid): label for uid, label in truth.items()}
    assert dict(zip(slices["key"], slices["label"])) == want          # patient 0: two lesions -> MALIGNANT
    assert set(slices.filter(pl.col("split") == "test")["patient"]) == {pseudonym(secret, f"P_{p:05d}") for p in (4, 5)}
    assert set(slices["modality"]) == {"MG"} and set(slices["voi"]) == {"minmax"}
    rejects = pl.read_parquet(tmp_path / "o" / "rejects.parquet")
    assert rejects["code"].to_list() == ["no-label"] * 6 and all("ROI mask" in p for p in rejects["path"])
    assert verify_dataset(tmp_path / "o", workers=1, decode=True).problems == []
    with pytest.raises(DatakitError, match=r"name one image as BENIGN and MALIGNANT .*--conflicts last-class"):
        convert_dicom_images(DicomImagesOptions(
            root=str(root / "CBIS-DDSM"), out=str(tmp_path / "x"), preset="cbis-ddsm", conflicts="refuse",
            labels=(str(root / "mass_case_description_train_set.csv"),), secret=str(tmp_path / "key")))
    assert nothing_written(tmp_path / "x")
