"""`tlx convert image-mask`: masks as images, unions, RLE (SIIM-ACR), a field of view, DICOM X-rays."""
import csv

import numpy as np
import polars as pl
import pytest
import zstandard
from PIL import Image

from datakit.convert.image_mask import ImageMaskOptions, convert_image_mask
from datakit.convert.images import resize_mask
from datakit.convert.rle import RleError, decode_rle, encode_rle
from datakit.errors import DatakitError
from datakit.verify import verify_dataset
from tests.fixtures.mask_sources import write_drive, write_montgomery, write_siim
from tests.fixtures.task_datasets import read_shards

SECRET = b"0123456789abcdef-an-x-ray-secret"


def decoded(sample: dict, ext: str, size: int) -> np.ndarray:
    return np.frombuffer(zstandard.ZstdDecompressor().decompress(sample[ext]), np.uint8).reshape(size, size)


def nothing_written(out) -> bool:
    return not out.exists() or not [p for p in out.iterdir() if not p.name.startswith(".")]


@pytest.mark.parametrize("form", ["relative", "absolute"])
@pytest.mark.parametrize("order", ["column", "row"])
def test_rle_round_trip(form, order):
    rng = np.random.default_rng(3)
    for shape in ((7, 5), (16, 16), (1, 9)):
        mask = rng.random(shape) < 0.3
        text = encode_rle(mask, form, order)
        assert np.array_equal(decode_rle(text, *shape, form=form, order=order), mask)
    assert encode_rle(np.zeros((4, 4), bool), form, order) == "-1"
    assert not decode_rle(" -1", 4, 4, form, order).any() and not decode_rle("", 4, 4, form, order).any()


def test_rle_forms_by_hand():
    """SIIM-ACR's mask_functions.rle2mask: 0-based offsets from the end of the previous run, filled column by
    column (mask.reshape(width, height).T). The usual Kaggle form: 1-based starts."""
    relative = decode_rle("1 2 3 1", height=4, width=3, form="relative")
    absolute = decode_rle("2 2 7 1", height=4, width=3, form="absolute")
    want = np.zeros((4, 3), bool)
    want[1:3, 0] = True        # pixels 1, 2: column 0, rows 1 and 2
    want[2, 1] = True          # pixel 6 = column 1, row 2
    assert np.array_equal(relative, want) and np.array_equal(absolute, want)
    with pytest.raises(RleError, match=r"^run 2 ends at pixel 13, beyond the 4x3 image's 12 pixels$"):
        decode_rle("1 2 8 2", 4, 3)
    with pytest.raises(RleError, match=r"holds 3 numbers, not pairs"):
        decode_rle("1 2 3", 4, 3)
    with pytest.raises(RleError, match=r"whole numbers"):
        decode_rle("1 x", 4, 3)


def test_montgomery_unites_left_and_right_lungs(tmp_path):
    root, truth = write_montgomery(tmp_path / "MontgomerySet", n=6)
    m = convert_image_mask(ImageMaskOptions(root=str(root), out=str(tmp_path / "o"), preset="montgomery", size=20,
                                            workers=1, val=1, test=1))
    assert m["kind"] == "segmentation" and m["classes"] == ["background", "lung"]
    samples = read_shards(tmp_path / "o", m)
    assert len(samples) == 6
    for key, (_, s) in samples.items():
        want = resize_mask(truth[key].astype(np.uint8), 20)        # 20x16 padded to 20x20, class 1 = lung
        assert np.array_equal(decoded(s, "mask.zst", 20), want) and want.sum() > 0
    slices = pl.read_parquet(tmp_path / "o" / "slices.parquet")
    assert dict(zip(slices["key"], slices["patient"]))["MCUCXR_0002_1"] == "0002"
    assert slices.group_by("patient").agg(pl.col("split").n_unique())["split"].max() == 1
    rejects = pl.read_parquet(tmp_path / "o" / "rejects.parquet")
    assert rejects.select("path", "code").rows() == [("ClinicalReadings/MCUCXR_0001_0.txt", "unmatched")]
    assert verify_dataset(tmp_path / "o", workers=1, decode=True).problems == []


def test_drive_rgb_official_splits_and_field_of_view(tmp_path):
    root, truth = write_drive(tmp_path / "DRIVE")
    m = convert_image_mask(ImageMaskOptions(root=str(root), out=str(tmp_path / "o"), preset="drive", size=18,
                                            workers=1, val=2))
    assert m["members"]["img.zst"]["shape"] == [3, 18, 18] and m["members"]["fov.zst"]["role"] == "fov"
    assert [m["splits"][s]["samples"] for s in ("train", "val", "test")] == [4, 2, 3]
    for key, (split, s) in read_shards(tmp_path / "o", m).items():
        source_split, image_id = key.split("-")
        vessels, fov = truth[(source_split, image_id)]
        assert (split == "test") == (source_split == "test")
        assert np.array_equal(decoded(s, "fov.zst", 18), resize_mask(fov.astype(np.uint8), 18))
        assert np.array_equal(decoded(s, "mask.zst", 18), resize_mask(vessels.astype(np.uint8), 18))
    assert verify_dataset(tmp_path / "o", workers=1, decode=True).problems == []


def test_siim_dicom_rle_union_and_pseudonyms(tmp_path):
    root, truth, patients = write_siim(tmp_path / "siim", SECRET)
    (tmp_path / "key").write_bytes(SECRET)
    m = convert_image_mask(ImageMaskOptions(root=str(root), out=str(tmp_path / "o"), preset="siim-acr", size=24,
                                            workers=1, val=1, test=1, secret=str(tmp_path / "key")))
    samples = read_shards(tmp_path / "o", m)
    assert set(samples) == set(truth)                  # keys: pseudonyms of the SOP instance UIDs
    for key, (_, s) in samples.items():                # size = image size: the RLE round trip is exact
        assert np.array_equal(decoded(s, "mask.zst", 24), truth[key].astype(np.uint8))
    assert sum(t.any() for t in truth.values()) == 6       # 2 of 8 are -1 (no pneumothorax)
    slices = pl.read_parquet(tmp_path / "o" / "slices.parquet")
    assert dict(zip(slices["key"], slices["patient"])) == patients and "source" not in slices.columns
    assert m["config"]["secret_fingerprint"] and "1.2.276" not in (tmp_path / "o" / "manifest.json").read_text()
    from datakit.audit import audit_dataset
    assert audit_dataset(tmp_path / "o").findings == []
    assert verify_dataset(tmp_path / "o", workers=1, decode=True).problems == []


def test_rle_longer_than_its_image_and_mask_size_mismatch_are_refused(tmp_path):
    root, _, _ = write_siim(tmp_path / "siim", SECRET, n=3)
    (tmp_path / "key").write_bytes(SECRET)
    rows = list(csv.reader(open(root / "train-rle.csv")))
    rows[1][1] = " 570 10"                               # 24x24 = 576 pixels
    with open(root / "train-rle.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    with pytest.raises(DatakitError, match=r"^--rle .*train-rle.csv: string 1 of image 1\.2\.276\S+ runs to pixel 580, "
                                           r"longer than the 24x24 image \(576 pixels\); check --rle-form"):
        convert_image_mask(ImageMaskOptions(root=str(root), out=str(tmp_path / "o"), preset="siim-acr", size=24,
                                            workers=1, secret=str(tmp_path / "key")))
    assert nothing_written(tmp_path / "o")
    root, _ = write_montgomery(tmp_path / "MontgomerySet", n=3)
    Image.fromarray(np.zeros((20, 17), np.uint8)).save(root / "ManualMask" / "rightMask" / "MCUCXR_0001_1.png")
    with pytest.raises(DatakitError, match=r"^mask ManualMask/rightMask/MCUCXR_0001_1.png is 17x20 \(width x height\), "
                                           r"its image CXR_png/MCUCXR_0001_1.png 16x20; masks must cover"):
        convert_image_mask(ImageMaskOptions(root=str(root), out=str(tmp_path / "o2"), preset="montgomery", workers=1))
    assert nothing_written(tmp_path / "o2")


def test_label_map_multiclass_overlap_and_missing_masks(tmp_path):
    root = tmp_path / "src"
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (12, 12, 3)).astype(np.uint8)).save(_path(root / "img" / f"c{i}.png"))
        values = rng.choice([0, 1, 2], (12, 12)).astype(np.uint8) * 50    # 0, 50, 100
        if i == 5:
            values[0, 0] = 7
        Image.fromarray(values).save(_path(root / "lab" / f"c{i}.png"))
    Image.fromarray(np.zeros((12, 12), np.uint8)).save(root / "img" / "lonely.png")
    m = convert_image_mask(ImageMaskOptions(root=str(root), out=str(tmp_path / "o"), image_pattern="img/{id}.png",
                                            mask_patterns=("lab/{id}.png",),
                                            label_map="0:background,50:liver,100:tumor",
                                            channels=3, size=12, workers=1, val=1, test=1))
    assert m["classes"] == ["background", "liver", "tumor"]
    for key, (_, s) in read_shards(tmp_path / "o", m).items():
        want = np.asarray(Image.open(root / "lab" / f"{key}.png")) // 50
        assert np.array_equal(decoded(s, "mask.zst", 12), want)
    rejects = dict(pl.read_parquet(tmp_path / "o" / "rejects.parquet").select("path", "code").rows())
    assert rejects == {"img/c5.png": "unknown-label", "img/lonely.png": "no-mask"}


def test_masks_of_two_classes_that_overlap_reject_their_image(tmp_path):
    root = tmp_path / "src"
    for i in range(3):
        Image.fromarray(np.full((8, 8), 90, np.uint8)).save(_path(root / "img" / f"c{i}.png"))
        a, b = np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8)
        a[:4], b[4 - (i == 0):] = 255, 255          # c0: row 3 is both
        Image.fromarray(a).save(_path(root / "a" / f"c{i}.png"))
        Image.fromarray(b).save(_path(root / "b" / f"c{i}.png"))
    m = convert_image_mask(ImageMaskOptions(root=str(root), out=str(tmp_path / "o"), image_pattern="img/{id}.png",
                                            mask_patterns=("left=a/{id}.png", "right=b/{id}.png"), size=8, workers=1,
                                            val=0, test=0))
    assert m["classes"] == ["background", "left", "right"] and m["splits"]["train"]["samples"] == 2
    rejects = pl.read_parquet(tmp_path / "o" / "rejects.parquet")
    assert rejects.select("path", "code", "reason").rows() == [("img/c0.png", "mask-overlap",
                                                                "8 pixels are both left and right")]
    volumes = pl.read_parquet(tmp_path / "o" / "volumes.parquet")
    assert volumes.filter(~pl.col("kept"))["volume"].to_list() == ["c0"]
    assert verify_dataset(tmp_path / "o", workers=1, decode=True).problems == []


def _path(p):
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def _binary_set(root, n=8, size=10):
    """n gray images c0..c{n-1} with one binary mask each; image i's mask marks rows 0..i."""
    for i in range(n):
        Image.fromarray(np.full((size, size), 10 * i, np.uint8)).save(_path(root / "img" / f"c{i}.png"))
        mask = np.zeros((size, size), np.uint8)
        mask[:i + 1] = 255
        Image.fromarray(mask).save(_path(root / "lab" / f"c{i}.png"))


def test_a_patient_column_keeps_each_patients_images_in_one_split(tmp_path):
    from click.testing import CliRunner

    from cli.main import cli
    root = tmp_path / "src"
    _binary_set(root)
    want = {f"c{i}": f"p{i // 2}" for i in range(8)}             # 4 patients of 2 images
    (tmp_path / "patients.csv").write_text("image,subject\n" + "".join(f"{k},{p}\n" for k, p in want.items()))
    result = CliRunner().invoke(cli, ["convert", "image-mask", "--root", str(root), "--out", str(tmp_path / "o"),
                                      "--image-pattern", "img/{id}.png", "--mask", "lab/{id}.png", "--patients",
                                      str(tmp_path / "patients.csv"), "--patients-id-col", "image", "--patient-col",
                                      "subject", "--size", "10", "--workers", "1", "--val", "1", "--test", "1"])
    assert result.exit_code == 0, result.output
    slices = pl.read_parquet(tmp_path / "o" / "slices.parquet")
    assert dict(zip(slices["key"], slices["patient"])) == want
    per_patient = slices.group_by("patient").agg(pl.col("split").n_unique(), pl.len())
    assert per_patient["split"].max() == 1 and per_patient["len"].to_list() == [2] * 4
    assert sorted(slices.group_by("split").agg(pl.col("patient").n_unique()).rows()) == \
        [("test", 1), ("train", 2), ("val", 1)]
    assert {r["key"]: r["pixels_foreground"] for r in slices.to_dicts()} == {f"c{i}": 10 * (i + 1) for i in range(8)}
    assert verify_dataset(tmp_path / "o", workers=1, decode=True).problems == []


def test_bad_patient_lists_are_refused_before_anything_is_written(tmp_path):
    root = tmp_path / "src"
    _binary_set(root, n=4)
    csv_path = tmp_path / "patients.csv"
    options = {"root": str(root), "out": str(tmp_path / "o"), "image_pattern": "img/{id}.png",
               "mask_patterns": ("lab/{id}.png",), "patients": str(csv_path), "size": 10, "workers": 1,
               "val": 0, "test": 0}
    csv_path.write_text("id,patient\nc0,a\nc1,a\nc2,b\n")
    with pytest.raises(DatakitError, match=r"^--patients \S+ has no row for 1 image\(s\), e.g. 'c3' \(column 'id'\); "):
        convert_image_mask(ImageMaskOptions(**options))
    csv_path.write_text("id,patient\nc0,a\nc1,a\nc2,b\nc3,b\nc0,b\n")
    with pytest.raises(DatakitError, match=r"gives image 'c0' two patients \('a' and 'b'\); an image belongs to one"):
        convert_image_mask(ImageMaskOptions(**options))
    csv_path.write_text("id,person\nc0,a\n")
    with pytest.raises(DatakitError,
                       match=r"^--patients \S+ has no column\(s\) \['patient'\]; its columns: id, person$"):
        convert_image_mask(ImageMaskOptions(**options))
    with pytest.raises(DatakitError, match=r"^give the patients either by --patients or by --patient-regex, not both$"):
        convert_image_mask(ImageMaskOptions(**options, patient_regex=r"c(\d)"))
    assert nothing_written(tmp_path / "o")


def test_an_undecodable_mask_rejects_its_image(tmp_path):
    root = tmp_path / "src"
    _binary_set(root, n=4)
    (root / "lab" / "c2.png").write_bytes(b"not a png")
    m = convert_image_mask(ImageMaskOptions(root=str(root), out=str(tmp_path / "o"), image_pattern="img/{id}.png",
                                            mask_patterns=("lab/{id}.png",), size=10, workers=1, val=0, test=0))
    assert m["splits"]["train"]["samples"] == 3
    rejects = pl.read_parquet(tmp_path / "o" / "rejects.parquet")
    assert rejects.select("path", "code").rows() == [("img/c2.png", "undecodable")]
    assert rejects["reason"][0].startswith("mask lab/c2.png: UnidentifiedImageError")
    assert verify_dataset(tmp_path / "o", workers=1, decode=True).problems == []


def test_jpeg_images_with_png_masks(tmp_path):
    root = tmp_path / "src"
    _binary_set(root, n=3)
    for i in range(3):                                   # the same images as JPEG: lossy, so only the mask is exact
        Image.open(root / "img" / f"c{i}.png").convert("RGB").save(root / "img" / f"c{i}.jpg", quality=95)
        (root / "img" / f"c{i}.png").unlink()
    m = convert_image_mask(ImageMaskOptions(root=str(root), out=str(tmp_path / "o"), image_pattern="img/{id}.jpg",
                                            mask_patterns=("lab/{id}.png",), size=10, workers=1, val=0, test=0))
    assert m["members"]["img.zst"]["shape"] == [10, 10] and m["splits"]["train"]["samples"] == 3
    for key, (_, s) in read_shards(tmp_path / "o", m).items():
        i = int(key[1:])
        assert decoded(s, "mask.zst", 10).sum() == 10 * (i + 1)
        assert abs(int(np.median(decoded(s, "img.zst", 10))) - 10 * i) <= 2
