"""Slices whose pixels may show names, dates, ids or a face: flagged from the header at scan, rejected
by plan as `burned-in` with the reason, kept only with --allow-burned-in, which the manifest records.
The synthetic cohort is left as it is (tests and benchmarks pin its bytes); the tags are set on copies
of its files."""
import json
import shutil

import polars as pl
import pydicom
import pytest
from click.testing import CliRunner

from cli.main import cli
from datakit.burned_in import (
    BURNED_IN_REASONS,
    FLAGS,
    SUSPECT_IMAGE_TYPE_WORDS,
    burned_in_flag,
)
from datakit.dicom_header import read_header, read_header_pydicom
from tests.datakit.write_helpers import SECRET

ENV = {"TLX_SECRET": SECRET, "TLX_QUIET": "1"}
ARGS = ["--fractions", "0.5,0.25,0.25", "--size", "16", "--samples-per-shard", "64", "--workers", "1"]
# series of the 4-patient test cohort (all explicit VR little endian but the last) -> tags set on their copies
SERIES = {
    "p000-st2-se1": {"BurnedInAnnotation": "YES"},
    "p001-st2-se1": {"RecognizableVisualFeatures": "YES"},
    "p002-st2-se1": {"ImageType": ["DERIVED", "SECONDARY", "VRT"]},
    "p001-st1-se2": {"BurnedInAnnotation": "NO", "RecognizableVisualFeatures": "NO"},   # said not to: kept
    "p003-st2-se1": {},
    "p002-st1-se1": {},            # JPEG lossless, patient p002's other series: rejection is per slice
}
FLAGGED = {"p000-st2-se1": "annotation", "p001-st2-se1": "visual-features", "p002-st2-se1": "image-type-vrt"}


@pytest.mark.parametrize(("values", "flag"), [
    ({}, None),
    ({"BurnedInAnnotation": "NO", "RecognizableVisualFeatures": "NO"}, None),
    ({"BurnedInAnnotation": "YES"}, "annotation"),
    ({"BurnedInAnnotation": " yes "}, "annotation"),
    ({"BurnedInAnnotation": "MAYBE"}, "annotation-invalid"),
    ({"RecognizableVisualFeatures": "YES"}, "visual-features"),
    ({"RecognizableVisualFeatures": "Y"}, "visual-features-invalid"),
    ({"BurnedInAnnotation": "NO", "RecognizableVisualFeatures": "YES"}, "visual-features"),
    ({"ImageType": ("ORIGINAL", "PRIMARY", "AXIAL")}, None),
    ({"ImageType": ("DERIVED", "SECONDARY", "MPR")}, None),
    ({"ImageType": ("DERIVED", "SECONDARY", "AXIAL", "MIP")}, None),
    ({"ImageType": ("DERIVED", "SECONDARY", "VRT")}, "image-type-vrt"),
    ({"ImageType": ("DERIVED", "SECONDARY", "SECONDARY CAPTURE")}, "image-type-capture"),
    ({"ImageType": ("DERIVED", "SECONDARY", "OTHER", "CSA REPORT")}, "image-type-report"),
    ({"ImageType": ("ORIGINAL", "PRIMARY", "AXIAL"), "BurnedInAnnotation": "YES"}, "annotation"),
])
def test_flags_come_from_the_two_tags_then_the_image_type(values, flag):
    assert burned_in_flag(values) == flag


def test_every_flag_has_a_reason_that_quotes_no_header_text():
    assert len(FLAGS) == 4 + len(SUSPECT_IMAGE_TYPE_WORDS)
    for flag in FLAGS:
        reason = BURNED_IN_REASONS[flag]
        assert reason and "\n" not in reason


@pytest.fixture(scope="module")
def flagged_root(cohort, tmp_path_factory):
    """A DICOM root of the SERIES' files, copied from the cohort, with their tags set."""
    root, truth = cohort
    out = tmp_path_factory.mktemp("burned-in") / "dicom"
    files = {}
    for entry in truth["files"]:
        if entry["series"] in SERIES and entry["kind"] == "volume":
            dest = out / entry["path"]
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(root / entry["path"], dest)
            if SERIES[entry["series"]]:
                ds = pydicom.dcmread(dest)
                for keyword, value in SERIES[entry["series"]].items():
                    setattr(ds, keyword, value)
                ds.save_as(dest)
            files.setdefault(entry["series"], []).append(entry["path"])
    assert set(files) == set(SERIES)
    return out, files


def test_the_header_walker_reads_both_tags_as_pydicom_does(flagged_root):
    root, files = flagged_root
    for series in ("p000-st2-se1", "p001-st2-se1", "p001-st1-se2"):
        path = root / files[series][0]
        fast, slow = read_header(path), read_header_pydicom(path)
        for keyword in ("BurnedInAnnotation", "RecognizableVisualFeatures"):
            assert fast.values.get(keyword) == slow.values[keyword] == SERIES[series].get(keyword)


def _shard(root, out, *extra):
    result = CliRunner().invoke(cli, ["shard", "--dicom-root", str(root), "--out", str(out), *ARGS, *extra], env=ENV)
    assert result.exit_code == 0, result.output
    return result.output


def test_burned_in_slices_are_rejected_with_their_reason_by_default(flagged_root, tmp_path):
    root, files = flagged_root
    ds = tmp_path / "data"
    output = _shard(root, ds)
    flagged = {p: FLAGGED[s] for s, paths in files.items() if s in FLAGGED for p in paths}
    index = pl.read_parquet(ds / "work" / "index.parquet", columns=["path", "burned_in"])
    assert dict(index.filter(pl.col("burned_in").is_not_null()).iter_rows()) == flagged
    rejects = pl.read_parquet(ds / "rejects.parquet").filter(pl.col("code") == "burned-in")
    assert sorted(rejects["path"]) == sorted(flagged) and set(rejects["stage"]) == {"plan"}
    for path, reason in rejects.select("path", "reason").iter_rows():
        assert reason == f"{BURNED_IN_REASONS[flagged[path]]}; tlx reads no text in pixels; --allow-burned-in " \
                         "keeps such slices (recorded in the manifest)"
    slices = pl.read_parquet(ds / "slices.parquet")
    assert not set(rejects["volume"]) & set(slices["volume"])           # no slice of a flagged series is kept
    assert slices["patient"].n_unique() == 3                            # p001, p002 (its other series), p003
    manifest = json.loads((ds / "manifest.json").read_text())
    assert manifest["files"]["rejected_by_code"]["burned-in"] == len(flagged) == sum(len(files[s]) for s in FLAGGED)
    assert manifest["files"]["found"] == manifest["files"]["kept"] + manifest["files"]["rejected"]
    assert manifest["config"]["plan"]["allow_burned_in"] is False
    assert not any("burned-in" in w for w in manifest["warnings"])
    assert f"burned-in {len(flagged)}" in " ".join(output.split())

    # The opt-in is a plan option: continuing this dataset with it is refused, naming it.
    result = CliRunner().invoke(cli, ["shard", "--dicom-root", str(root), "--out", str(ds), *ARGS,
                                      "--allow-burned-in"], env=ENV)
    assert result.exit_code == 2 and "(--allow-burned-in differ)" in result.output, result.output


def test_allow_burned_in_keeps_them_and_the_manifest_records_it(flagged_root, tmp_path):
    root, files = flagged_root
    ds = tmp_path / "data"
    output = _shard(root, ds, "--allow-burned-in")
    n_flagged = sum(len(files[s]) for s in FLAGGED)
    assert json.loads((ds / "work" / "plan.json").read_text())["burned_in_planned"] == n_flagged
    rejects = pl.read_parquet(ds / "rejects.parquet")
    assert "burned-in" not in set(rejects["code"])
    manifest = json.loads((ds / "manifest.json").read_text())
    assert manifest["config"]["plan"]["allow_burned_in"] is True
    warning = (f"--allow-burned-in was used: {n_flagged} planned slices flagged as likely to show burned-in text "
               "or a face (BurnedInAnnotation, RecognizableVisualFeatures or ImageType) were not rejected; their "
               "pixels may identify patients (tlx reads no text in pixels)")
    assert warning in manifest["warnings"]
    assert warning in " ".join(output.split())
    kept = pl.read_parquet(ds / "slices.parquet")["patient"].n_unique()
    assert kept == 4 and manifest["files"]["found"] == manifest["files"]["kept"] + manifest["files"]["rejected"]
