"""`tlx convert nifti-seg`: LiTS and BraTS layouts -> segmentation shards with masks, split by patient."""

import numpy as np
import polars as pl
import pytest
import zstandard

from datakit.convert.nifti_seg import NiftiSegOptions, convert_nifti_seg
from datakit.errors import DatakitError
from tests.fixtures.task_datasets import LITS_HU, read_shards, write_brats_cases, write_lits_cases


def _arr(data, spec):
    return np.frombuffer(zstandard.ZstdDecompressor().decompress(data), dtype=spec["dtype"]).reshape(spec["shape"])


@pytest.fixture(scope="module")
def lits(tmp_path_factory):
    root = tmp_path_factory.mktemp("lits")
    write_lits_cases(root / "src", n_cases=6, bad_label_case=5)
    out = root / "out"
    manifest = convert_nifti_seg(NiftiSegOptions(images=str(root / "src"), out=str(out), preset="lits", size=32,
                                                 workers=1, samples_per_shard=7))
    return out, manifest


def test_lits_manifest_counts_and_nothing_lost(lits):
    out, m = lits
    assert m["kind"] == "segmentation" and m["classes"] == ["background", "liver", "tumor"]
    assert m["members"]["img.zst"] == {"role": "image", "codec": "zstd", "dtype": "int16", "byteorder": "little",
                                       "shape": [32, 32]}
    volumes = pl.read_parquet(out / "volumes.parquet")
    rejects = pl.read_parquet(out / "rejects.parquet")
    # 6 cases found: 5 kept with all 6 slices, case 5 rejected for its stray label value
    assert volumes.filter(pl.col("kept"))["slices_kept"].to_list() == [6] * 5
    assert rejects.select("volume", "code").rows() == [("5", "unknown-label")]
    assert "label values [7] of case 5 are not in the label map" in rejects["reason"][0]
    slices = pl.read_parquet(out / "slices.parquet")
    assert len(slices) == 30 == sum(s["samples"] for s in m["splits"].values())
    assert slices["key"].n_unique() == 30
    # by patient: no patient in two splits; a small cohort still gets a val and a test patient
    assert slices.group_by("patient").agg(pl.col("split").n_unique())["split"].max() == 1
    assert {s: m["splits"][s]["patients"] for s in ("train", "val", "test")} == {"train": 3, "val": 1, "test": 1}
    assert not (out / "work" / "staging").exists()


def test_lits_shards_hold_masks_that_match_the_image(lits):
    out, m = lits
    samples = read_shards(out, m)
    slices = pl.read_parquet(out / "slices.parquet")
    assert set(samples) == set(slices["key"])
    for row in slices.iter_rows(named=True):
        split, sample = samples[row["key"]]
        assert split == row["split"]
        img, mask = _arr(sample["img.zst"], m["members"]["img.zst"]), _arr(sample["mask.zst"], m["members"]["mask.zst"])
        assert np.bincount(mask.ravel(), minlength=3).tolist() == \
            [row["pixels_background"], row["pixels_liver"], row["pixels_tumor"]]
        # 24x20 slices padded to square and halved-ish: interiors keep their HU exactly where blocks are wide
        assert set(np.unique(img[mask == 2])) <= set(range(LITS_HU["liver"], LITS_HU["tumor"] + 1))
        if row["slice_index"] in (0, 5):
            assert row["pixels_liver"] == 0  # the fixture's first and last slices show no liver


def test_brats_preset_keeps_t1_t1ce_flair_maps_labels_and_drops_empty_slices(tmp_path):
    write_brats_cases(tmp_path / "src", n_cases=4)
    out = tmp_path / "out"
    m = convert_nifti_seg(NiftiSegOptions(images=str(tmp_path / "src"), out=str(out), preset="brats", size=16,
                                          val=1, test=1, workers=1))
    assert m["classes"] == ["background", "necrotic", "edema", "enhancing"]
    assert m["members"]["img.zst"]["shape"] == [3, 16, 16]
    volumes = pl.read_parquet(out / "volumes.parquet")
    assert volumes["slices_empty"].to_list() == [1] * 4 and volumes["slices_kept"].to_list() == [5] * 4
    samples = read_shards(out, m)
    key = next(k for k in samples if k.endswith("s0003"))
    img = _arr(samples[key][1]["img.zst"], m["members"]["img.zst"])
    mask = _arr(samples[key][1]["mask.zst"], m["members"]["mask.zst"])
    brain = (mask == 0) & (img[0] > 0)
    # channel c holds modality (t1, t1ce, flair) = fixture values 100, 200, 400: t2 (300) is dropped
    assert [float(np.median(img[c][brain])) for c in range(3)] == [100.0, 200.0, 400.0]
    assert set(np.unique(mask)) == {0, 1, 2, 3}  # BraTS label 4 became class 3 (enhancing)


def test_errors_name_the_bad_value(tmp_path):
    write_lits_cases(tmp_path / "src", n_cases=2)
    with pytest.raises(DatakitError, match=r"no label volume under .* matches the label pattern\(s\) x_\{case\}.nii"):
        convert_nifti_seg(NiftiSegOptions(images=str(tmp_path / "src"), out=str(tmp_path / "o1"),
                                          classes=("bg", "liver"), label_pattern="x_{case}.nii"))
    with pytest.raises(DatakitError, match=r"say which label value is which class: --classes"):
        convert_nifti_seg(NiftiSegOptions(images=str(tmp_path / "src"), out=str(tmp_path / "o2")))
    with pytest.raises(DatakitError, match=r"--dtype 'int8' is not one of: int16, float32"):
        convert_nifti_seg(NiftiSegOptions(images=str(tmp_path / "src"), out=str(tmp_path / "o3"), preset="lits",
                                          dtype="int8"))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(DatakitError, match=r"output folder .*full' holds 'x', which no tlx command writes: it is not "
                                           r"a tlx dataset folder; choose a new or empty folder"):
        convert_nifti_seg(NiftiSegOptions(images=str(tmp_path / "src"), out=str(tmp_path / "full"), preset="lits"))
    # were re.error and ValueError tracebacks
    with pytest.raises(DatakitError, match=r"--patient-regex '\(' is not a regular expression \(missing \)"):
        convert_nifti_seg(NiftiSegOptions(images=str(tmp_path / "src"), out=str(tmp_path / "o4"), preset="lits",
                                          patient_regex="("))
    from click.testing import CliRunner

    from cli.main import cli
    result = CliRunner().invoke(cli, ["convert", "nifti-seg", "--images", str(tmp_path / "src"), "--out",
                                      str(tmp_path / "o5"), "--preset", "lits", "--channels", "x"])
    assert result.exit_code == 2 and result.output.strip().splitlines()[-1] == \
        "Error: Invalid value for --channels: 'x' must be a comma list of whole numbers, e.g. 1,2,0"


def test_a_volume_declaring_an_absurd_size_is_rejected_before_it_is_read(tmp_path):
    """A 1 KB .nii.gz whose header says 1500^3 voxels: nibabel allocated the 6.75 GB whole before
    finding the data short; now its case is refused from the header, and the others convert."""
    import gzip

    import nibabel as nib
    write_lits_cases(tmp_path / "src", n_cases=3)
    header = nib.load(str(tmp_path / "src" / "volume-2.nii")).header.copy()
    header.set_data_shape((1500, 1500, 1500))
    (tmp_path / "src" / "volume-2.nii").unlink()
    with gzip.open(tmp_path / "src" / "volume-2.nii.gz", "wb") as f:
        f.write(header.binaryblock + bytes(4 + 1000))
    nib.save(nib.load(str(tmp_path / "src" / "segmentation-2.nii")), str(tmp_path / "src" / "segmentation-2.nii.gz"))
    (tmp_path / "src" / "segmentation-2.nii").unlink()
    for i in (0, 1):   # one layout for all: the .nii.gz one
        for stem in ("volume", "segmentation"):
            path = tmp_path / "src" / f"{stem}-{i}.nii"
            nib.save(nib.load(str(path)), str(path) + ".gz")
            path.unlink()
    m = convert_nifti_seg(NiftiSegOptions(images=str(tmp_path / "src"), out=str(tmp_path / "out"), preset="lits",
                                          size=16, val=0, test=0, workers=1))
    rejects = pl.read_parquet(tmp_path / "out" / "rejects.parquet")
    assert rejects.select("volume", "code").rows() == [("2", "bad-geometry")]
    assert "declares 1500x1500x1500 voxels, more than the limit" in rejects["reason"][0]
    assert m["splits"]["train"]["volumes"] == 2


def _msd_folders(root, cases: dict[str, tuple[str, str]]):
    """imagesTr/ and labelsTr/ with one case per entry: case -> (image suffix, label suffix)."""
    from tests.fixtures.task_datasets import _save_nifti, lits_volume

    rng = np.random.default_rng(3)
    for case, (img_ext, lab_ext) in cases.items():
        img, lab = lits_volume(rng, (24, 20, 6))
        if img_ext:
            _save_nifti(img, root / "imagesTr" / f"{case}{img_ext}")
        if lab_ext:
            _save_nifti(lab, root / "labelsTr" / f"{case}{lab_ext}")


def test_nii_beside_nii_gz_is_converted_and_every_unused_file_is_reported(tmp_path):
    """`.nii` files beside `.nii.gz` ones were ignored (12 inputs in no output), and an image X.nii with
    its label X.nii.gz was reported as 'image file X.nii.gz not found'."""
    _msd_folders(tmp_path, {"liver_0": (".nii.gz", ".nii.gz"), "liver_1": (".nii.gz", ".nii.gz"),
                            "liver_2": (".nii", ".nii"), "liver_3": (".nii", ".nii"), "liver_4": (".nii", ".nii.gz"),
                            "liver_5": (".nii.gz", ".nii"), "orphan": (".nii.gz", None), "lonely": (None, ".nii")})
    (tmp_path / "imagesTr" / "README.txt").write_text("MSD Task03")
    import nibabel as nib
    nib.save(nib.load(str(tmp_path / "labelsTr" / "liver_0.nii.gz")), str(tmp_path / "labelsTr" / "liver_0.nii"))
    images, labels = f"{tmp_path}/imagesTr", f"{tmp_path}/labelsTr"
    m = convert_nifti_seg(NiftiSegOptions(images=images, labels=labels, out=str(tmp_path / "out"), preset="lits",
                                          size=16, val=1, test=1, workers=1))
    volumes = pl.read_parquet(tmp_path / "out" / "volumes.parquet")
    assert sorted(volumes.filter("kept")["volume"]) == [f"liver_{i}" for i in range(6)]
    rejects = pl.read_parquet(tmp_path / "out" / "rejects.parquet")
    assert sorted(rejects.select("path", "code").rows()) == [
        (f"{images}/README.txt", "unmatched"), (f"{images}/orphan.nii.gz", "no-label"),
        (f"{labels}/liver_0.nii.gz", "duplicate-case"), (f"{labels}/lonely.nii", "no-image")]
    assert "case lonely has no image file" in rejects.filter(pl.col("code") == "no-image")["reason"][0]
    # every file below both folders: used by a kept case or rejected
    files = {str(p) for p in tmp_path.glob("*Tr/*")}
    used = {f"{images}/{c}{e}" for c, e in (("liver_0", ".nii.gz"), ("liver_1", ".nii.gz"), ("liver_2", ".nii"),
                                             ("liver_3", ".nii"), ("liver_4", ".nii"), ("liver_5", ".nii.gz"))}
    used |= {f"{labels}/{c}{e}" for c, e in (("liver_0", ".nii"), ("liver_1", ".nii.gz"), ("liver_2", ".nii"),
                                             ("liver_3", ".nii"), ("liver_4", ".nii.gz"), ("liver_5", ".nii"))}
    assert files == used | set(rejects["path"]) and not used & set(rejects["path"])
    assert sum(s["samples"] for s in m["splits"].values()) == 36


def test_brats_t2_is_reported_as_an_unused_modality(tmp_path):
    write_brats_cases(tmp_path / "src", n_cases=3)
    convert_nifti_seg(NiftiSegOptions(images=str(tmp_path / "src"), out=str(tmp_path / "out"), preset="brats",
                                      size=16, val=1, test=1, workers=1))
    rejects = pl.read_parquet(tmp_path / "out" / "rejects.parquet")
    assert set(rejects["code"]) == {"unused-modality"} and len(rejects) == 3
    assert all(p.endswith("_t2.nii.gz") for p in rejects["path"])


def test_a_case_with_nan_or_inf_voxels_is_rejected_and_the_others_convert(tmp_path):
    """NaN voxels became 0 without a word; one case with inf aborted the whole conversion."""
    import nibabel as nib

    write_lits_cases(tmp_path / "src", n_cases=5)
    for case, value in ((1, np.nan), (3, np.inf)):
        path = tmp_path / "src" / f"volume-{case}.nii"
        data = np.asarray(nib.load(str(path)).dataobj).astype(np.float32)
        data[3, 4, 2] = value
        nib.save(nib.Nifti1Image(data, affine=np.diag([0.8, 0.8, 2.5, 1.0])), str(path))
    m = convert_nifti_seg(NiftiSegOptions(images=str(tmp_path / "src"), out=str(tmp_path / "out"), preset="lits",
                                          size=16, val=0, test=0, workers=1))
    rejects = pl.read_parquet(tmp_path / "out" / "rejects.parquet")
    assert rejects.select("volume", "code").rows() == [("1", "non-finite"), ("3", "non-finite")]
    assert set(rejects["reason"]) == {"1 of 2880 voxels are NaN or infinite; the case cannot be stored (NaN would "
                                      "become 0 without a word)"}
    assert rejects["path"].to_list() == [f"{tmp_path}/src/volume-1.nii", f"{tmp_path}/src/volume-3.nii"]
    assert m["splits"]["train"]["volumes"] == 3


@pytest.mark.parametrize("bad", range(4))
def test_no_split_is_left_empty_when_a_case_is_rejected(tmp_path, bad):
    """4 cases gave 3/1/0 patients: splits were dealt before the test patient's case was rejected."""
    write_lits_cases(tmp_path / "src", n_cases=4, bad_label_case=bad)
    m = convert_nifti_seg(NiftiSegOptions(images=str(tmp_path / "src"), out=str(tmp_path / "out"), preset="lits",
                                          size=8, workers=1))
    assert {s: m["splits"][s]["patients"] for s in ("train", "val", "test")} == {"train": 1, "val": 1, "test": 1}
