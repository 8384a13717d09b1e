"""tlx synth: real DICOM files, deterministic, with every trap of a real export and a truthful cohort.json."""
import hashlib
import json
from collections import Counter

import numpy as np
import pydicom
import pytest
from click.testing import CliRunner

from cli.main import cli
from datakit.dicom_pixels import read_hu
from datakit.errors import DatakitError
from datakit.synth.cohort import (
    CLASSES,
    EXPLICIT_LE,
    JPEG_LOSSLESS,
    OTHER_SYNTAXES,
    SPECIAL_SYNTAXES,
    TRAPS,
    apply_syntax_mix,
    plan_patient,
)
from datakit.synth.make_cohort import GROUND_TRUTH, synth_cohort
from datakit.synth.write import write_patient


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    # Made once per session through the CLI (test_scan.py looks for it at the same place).
    out = tmp_path_factory.getbasetemp() / "datakit-read-cohort"
    if not (out / GROUND_TRUTH).exists():
        result = CliRunner().invoke(cli, ["synth", "--out", str(out), "--patients", "3", "--matrix", "32",
                                          "--seed", "0", "--workers", "1"])
        assert result.exit_code == 0, result.output
        assert "cohort.json" in result.output
    return out, json.loads((out / GROUND_TRUTH).read_text())


def _first_file(truth, series_key):
    return next(f["path"] for f in truth["files"] if f["series"] == series_key)


def test_ground_truth_lists_exactly_the_files_on_disk(cohort):
    out, truth = cohort
    on_disk = sorted(str(p.relative_to(out).as_posix()) for p in out.rglob("*") if p.is_file())
    assert on_disk == [f["path"] for f in truth["files"]]
    series = {s["key"] for s in truth["series"]}
    assert all(f["series"] in series for f in truth["files"] if f["series"] is not None)


def test_every_trap_class_and_transfer_syntax_is_present(cohort):
    out, truth = cohort
    kinds = {f["kind"] for f in truth["files"]}
    assert {"volume", "scout", "short", "resent", "copy", "truncated", "mr", "mpr-coronal", "dose-sc", "dose-sr",
            "dose-info", "multi-frame", "junk", "corrupt", "dicomdir", "ground-truth"} <= kinds
    assert {s["label"] for s in truth["series"] if s["kind"] == "volume"} == set(CLASSES)
    volumes = [s for s in truth["series"] if s["kind"] == "volume"]
    assert set(SPECIAL_SYNTAXES) <= {s["transfer_syntax"] for s in volumes}
    for s in volumes:   # the file meta says what the plan says
        ds = pydicom.dcmread(out / _first_file(truth, s["key"]), stop_before_pixels=True)
        assert ds.file_meta.TransferSyntaxUID == s["transfer_syntax"]
    short = [s for s in truth["series"] if s["kind"] == "short"]
    assert short and all(s["slices"] < 30 for s in short)
    assert all(s["slices"] >= 30 for s in volumes)
    assert len(TRAPS) > 3   # so 3 patients carry several traps each


def test_messy_layout_suffixes_depths_and_dicomdir(cohort):
    out, truth = cohort
    paths = [f["path"] for f in truth["files"] if f["kind"] == "volume"]
    assert any(not p.endswith(".dcm") for p in paths) and any(p.endswith(".dcm") for p in paths)
    depths = {f["path"].count("/") for f in truth["files"]}
    assert min(depths) <= 1 and max(depths) >= 5
    ds = pydicom.dcmread(out / "DICOMDIR")
    assert ds.file_meta.MediaStorageSOPClassUID == "1.2.840.10008.1.3.10"


def test_headers_carry_phi_and_german_text(cohort):
    out, truth = cohort
    vol = next(f for f in truth["files"] if f["kind"] == "volume")
    ds = pydicom.dcmread(out / vol["path"], stop_before_pixels=True)
    for keyword in ("PatientName", "PatientBirthDate", "AccessionNumber", "InstitutionName", "PatientID",
                    "ReferringPhysicianName"):
        assert str(ds.get(keyword, "")) in truth["phi"], keyword
    texts = " ".join(s["study_description"] + " " + s["description"] for s in truth["series"])
    assert any(w in texts for w in ("Schädel", "Becken", "Weichteil", "Knochen", "Lunge", "Kopf", "Hüfte"))
    assert any(w in texts for w in ("Chest", "Head", "Bone", "Soft", "Knee", "Pelvis", "Brain"))


def test_resent_series_has_the_same_pixels_under_new_uids_and_copies_are_exact(cohort):
    out, truth = cohort
    resent = next(s for s in truth["series"] if s["kind"] == "resent")
    a = pydicom.dcmread(out / _first_file(truth, resent["key"]))
    b = pydicom.dcmread(out / _first_file(truth, resent["duplicate_of"]))
    assert a.SeriesInstanceUID != b.SeriesInstanceUID and a.SOPInstanceUID != b.SOPInstanceUID
    assert a.InstanceNumber == b.InstanceNumber
    np.testing.assert_array_equal(a.pixel_array, b.pixel_array)
    for f in (f for f in truth["files"] if f["kind"] == "copy"):
        source = f["note"].removeprefix("byte-identical copy of ")
        assert (out / f["path"]).read_bytes() == (out / source).read_bytes()


def test_pixels_are_plausible_ct_in_hu(cohort):
    out, truth = cohort
    thorax = next(s for s in truth["series"] if s["kind"] == "volume" and s["label"] == "thorax")
    path = [f["path"] for f in truth["files"] if f["series"] == thorax["key"]][thorax["slices"] // 2]
    hu = read_hu(out / path)
    assert hu.dtype == np.float32 and hu.shape == (thorax["rows"], thorax["columns"])
    assert hu.min() <= -1000 + 60          # air (or padding outside the field of view)
    assert hu.max() >= 700                 # bone
    assert ((hu > -900) & (hu < -700)).mean() > 0.02      # lung


def test_same_seed_same_bytes_other_seed_other_bytes(cohort, tmp_path):
    # Patient 1 of the module's cohort again (compressed series included), and with another seed.
    out, truth = cohort

    def files(root):
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
    write_patient(tmp_path / "a", plan_patient(0, 1, 3, 32))
    again = files(tmp_path / "a")
    assert again and all(again[p] == (out / p).read_bytes() for p in again)
    assert any(f["transfer_syntax"] != "1.2.840.10008.1.2.1" for f in truth["series"] if f["patient_index"] == 1)
    other = plan_patient(6, 1, 3, 32)
    assert other.patient_id != plan_patient(0, 1, 3, 32).patient_id
    assert other.studies[0].uid != plan_patient(0, 1, 3, 32).studies[0].uid


def test_bad_arguments_are_one_line_errors(tmp_path):
    with pytest.raises(DatakitError, match=r"--patients must be at least 1, got 0"):
        synth_cohort(tmp_path / "x", patients=0)
    with pytest.raises(DatakitError, match=r"--matrix must be in 32..1024, got 8"):
        synth_cohort(tmp_path / "x", matrix=8)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    with pytest.raises(DatakitError, match=r"output folder .*full.* is not empty"):
        synth_cohort(tmp_path / "full")
    result = CliRunner().invoke(cli, ["synth", "--out", str(tmp_path / "full"), "--patients", "1"])
    assert result.exit_code == 2 and "is not empty" in result.output
    assert len(result.output.strip().splitlines()) == 1


# sha256 of patient 1's files (seed 0, 3 patients, matrix 32: explicit and implicit VR LE, RLE and JPEG lossless
# series), names and bytes in path order, as tlx synth wrote them before python-gdcm was installed beside it
# (pydicom then picked gdcm's RLE encoder, which writes other bytes; synth names its encoders since).
PATIENT_1_SHA256 = "3864690bd05ad601cd6bccac0624c94d4819d66ad2e5ebf9e03dd62cc261cd75"


def test_the_default_cohort_keeps_its_bytes_whatever_encoders_are_installed(tmp_path):
    plan = plan_patient(0, 1, 3, 32)
    assert {s.transfer_syntax for st in plan.studies for s in st.series} >= {"1.2.840.10008.1.2.5", JPEG_LOSSLESS}
    write_patient(tmp_path, plan)
    h = hashlib.sha256()
    for p in sorted(tmp_path.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(tmp_path).as_posix().encode())
            h.update(p.read_bytes())
    assert h.hexdigest() == PATIENT_1_SHA256


def _slices_by_syntax(plans):
    shares = Counter()
    for p in plans:
        for s in (s for st in p.studies for s in st.series if s.kind == "volume"):
            shares[s.transfer_syntax] += s.slices
    return shares


@pytest.mark.parametrize("seed, patients", [(4, 20), (1, 20), (0, 60)])
def test_realistic_mix_holds_80_15_5_percent_of_slices(seed, patients):
    plans = [plan_patient(seed, i, patients, 32, "realistic") for i in range(patients)]
    assert _slices_by_syntax(plans).keys() == {EXPLICIT_LE}      # before the mix: no syntax traps
    apply_syntax_mix(plans)
    by_ts = _slices_by_syntax(plans)
    total = sum(by_ts.values())
    other = sum(n for ts, n in by_ts.items() if ts in OTHER_SYNTAXES)
    assert other + by_ts[EXPLICIT_LE] + by_ts[JPEG_LOSSLESS] == total
    assert abs(by_ts[EXPLICIT_LE] / total - 0.80) < 0.02
    assert abs(by_ts[JPEG_LOSSLESS] / total - 0.15) < 0.02
    assert abs(other / total - 0.05) < 0.02
    if patients >= 60:                                           # the rare ones cycle: each appears
        assert set(OTHER_SYNTAXES) <= by_ts.keys()


def test_realistic_mix_is_written_as_planned_and_recorded(tmp_path):
    out = tmp_path / "mix"
    result = CliRunner().invoke(cli, ["synth", "--out", str(out), "--patients", "3", "--matrix", "32", "--seed", "4",
                                      "--syntax-mix", "realistic", "--workers", "1"])
    assert result.exit_code == 0, result.output
    truth = json.loads((out / GROUND_TRUTH).read_text())
    assert truth["syntax_mix"] == "realistic"
    volumes = [s for s in truth["series"] if s["kind"] == "volume"]
    assert {s["transfer_syntax"] for s in volumes} >= {EXPLICIT_LE, JPEG_LOSSLESS}
    for s in volumes:
        ds = pydicom.dcmread(out / _first_file(truth, s["key"]), stop_before_pixels=True)
        assert ds.file_meta.TransferSyntaxUID == s["transfer_syntax"]
    with pytest.raises(DatakitError, match=r"--syntax-mix 'most' is not one of: traps, realistic"):
        synth_cohort(tmp_path / "y", syntax_mix="most")
