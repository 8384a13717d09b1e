"""tlx scan against the synthetic cohort's ground truth: every file accounted for, right codes, right labels, no PHI."""
import json
import os

import numpy as np
import pyarrow.parquet as pq
import pydicom
import pytest
from click.testing import CliRunner

from cli.main import cli
from datakit.dicom_pixels import read_hu
from datakit.errors import DatakitError
from datakit.scan import INDEX, scan
from datakit.synth.make_cohort import GROUND_TRUTH, synth_cohort

SECRET = b"tlx-scan-test-secret-0123"   # 16 bytes at least (datakit.secret)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.getbasetemp() / "datakit-read-cohort"     # shared with test_synth.py
    if not (out / GROUND_TRUTH).exists():
        synth_cohort(out, patients=3, seed=0, matrix=32, workers=1)
    return out, json.loads((out / GROUND_TRUTH).read_text())


@pytest.fixture(scope="module")
def scanned(cohort, tmp_path_factory):
    root, truth = cohort
    out = tmp_path_factory.mktemp("scanned")
    summary = scan(root, out, workers=2, secret=SECRET)
    rows = pq.read_table(out / INDEX).to_pylist()
    return summary, {r["path"]: r for r in rows}, out


def test_one_row_per_file_found_and_codes_match_the_ground_truth(cohort, scanned):
    _, truth = cohort
    summary, rows, _ = scanned
    assert sorted(rows) == [f["path"] for f in truth["files"]]
    wrong = [(f["path"], f["expect"], rows[f["path"]]["reject_code"]) for f in truth["files"]
             if rows[f["path"]]["reject_code"] != f["expect"]]
    assert wrong == []
    assert all(r["reject_reason"] for r in rows.values() if r["reject_code"])
    assert summary.files == len(rows) and summary.candidates == sum(r["reject_code"] is None for r in rows.values())


def test_labels_match_the_intended_class(cohort, scanned):
    _, truth = cohort
    _, rows, _ = scanned
    intended = {s["key"]: s["label"] for s in truth["series"]}
    candidates = [f for f in truth["files"] if f["expect"] is None]
    assert {(intended[f["series"]], rows[f["path"]]["label"]) for f in candidates} == \
        {(intended[f["series"]],) * 2 for f in candidates}
    for f in candidates:
        r = rows[f["path"]]
        if r["label_rule"] != "default":
            assert r["label_keyword"] and r["label_field"] in ("SeriesDescription", "ProtocolName",
                                                               "BodyPartExamined", "StudyDescription")


def test_no_phi_outside_the_path_column(cohort, scanned):
    _, truth = cohort
    _, _, out = scanned
    table = pq.read_table(out / INDEX).drop(["path"])
    text = json.dumps(table.to_pylist(), default=str)
    leaked = [p for p in truth["phi"] if p in text]
    assert leaked == []
    descriptions = {s["description"] for s in truth["series"]} | {s["study_description"] for s in truth["series"]}
    assert not [d for d in descriptions if f'"{d}"' in text]


def test_identities_are_pseudonyms_that_keep_equality(cohort, scanned):
    root, truth = cohort
    _, rows, _ = scanned
    resent = next(s for s in truth["series"] if s["kind"] == "resent")
    by_series = {}
    for f in truth["files"]:
        if f["series"] and f["expect"] is None:
            by_series.setdefault(f["series"], []).append(rows[f["path"]])
    a, b = by_series[resent["key"]], by_series[resent["duplicate_of"]]
    assert {r["patient"] for r in a} == {r["patient"] for r in b} and len({r["patient"] for r in a}) == 1
    assert {r["series"] for r in a}.isdisjoint({r["series"] for r in b})
    copy = next(f for f in truth["files"] if f["kind"] == "copy")
    original = copy["note"].removeprefix("byte-identical copy of ")
    assert rows[copy["path"]]["sop"] == rows[original]["sop"]
    ds = pydicom.dcmread(root / original, stop_before_pixels=True)
    assert ds.SOPInstanceUID not in rows[original]["sop"] and len(rows[original]["sop"]) == 16


def test_geometry_columns(cohort, scanned):
    _, truth = cohort
    _, rows, _ = scanned
    volume = next(s for s in truth["series"] if s["kind"] == "volume")
    vol_rows = [rows[f["path"]] for f in truth["files"] if f["series"] == volume["key"] and f["expect"] is None]
    for r in vol_rows:
        assert r["slice_pos"] == pytest.approx(r["ipp_z"])        # axial: the normal is +z
        assert r["iop"] == [1, 0, 0, 0, 1, 0] and r["pixel_spacing_row"] > 0 and r["slice_thickness"] > 0
    by_instance = sorted(vol_rows, key=lambda r: r["instance_number"])
    steps = np.diff([r["slice_pos"] for r in by_instance])
    assert np.allclose(np.abs(steps), vol_rows[0]["slice_thickness"], atol=1e-3)


def test_read_hu_from_the_index_row_matches_pydicom_for_every_syntax(cohort, scanned):
    root, truth = cohort
    _, rows, _ = scanned
    seen = set()
    for f in truth["files"]:
        r = rows[f["path"]]
        if f["expect"] is not None or r["transfer_syntax"] in seen:
            continue
        seen.add(r["transfer_syntax"])
        ds = pydicom.dcmread(root / f["path"])
        expected = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_array_equal(read_hu(root / f["path"], r), expected.astype(np.float32))
        native = r["transfer_syntax"] in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2")
        assert (r["pixel_offset"] is not None) == (r["transfer_syntax"] != "1.2.840.10008.1.2.1.99")   # deflated
        assert (r["pixel_length"] is not None) == native            # encapsulated: undefined length
    assert len(seen) >= 8          # explicit/implicit LE, BE, deflate, RLE, JPEG-LS, JPEG 2000, JPEG lossless


def test_parallel_and_serial_scans_write_the_same_index(cohort, scanned, tmp_path):
    root, _ = cohort
    _, _, out = scanned
    scan(root, tmp_path, workers=1, secret=SECRET)
    assert pq.read_table(tmp_path / INDEX).equals(pq.read_table(out / INDEX))


def test_walk_survives_symlink_loops_dangling_links_and_fifos(tmp_path):
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    synth_like = root / "a" / "b" / "x.txt"
    synth_like.write_text("junk")
    os.symlink("../..", root / "a" / "b" / "loop")
    os.symlink("missing", root / "dangling")
    os.mkfifo(root / "fifo")
    with pytest.raises(DatakitError, match="no DICOM files found"):
        scan(root, tmp_path / "out", workers=1, secret=SECRET)
    rows = {r["path"]: r["reject_code"] for r in pq.read_table(tmp_path / "out" / INDEX).to_pylist()}
    assert rows == {"a/b/x.txt": "not-dicom", "dangling": "unreadable", "fifo": "not-a-file"}


def test_user_errors_are_one_line(tmp_path, monkeypatch, cohort):
    root, _ = cohort
    with pytest.raises(DatakitError, match=r"DICOM root .*nope.* does not exist"):
        scan(tmp_path / "nope", tmp_path / "o", secret=SECRET)
    (tmp_path / "file").write_text("x")
    with pytest.raises(DatakitError, match=r"is not a folder"):
        scan(tmp_path / "file", tmp_path / "o", secret=SECRET)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatakitError, match=r"holds no files"):
        scan(tmp_path / "empty", tmp_path / "o", secret=SECRET)
    mr_only = tmp_path / "mr"
    mr_only.mkdir()
    mr = next(p for p in root.rglob("*") if p.is_file() and p.name != "DICOMDIR" and
              pydicom.dcmread(p, force=True, stop_before_pixels=True).get("Modality") == "MR")
    (mr_only / "mr1").write_bytes(mr.read_bytes())
    with pytest.raises(DatakitError, match=r"no usable CT slices found under .* \(1 DICOM files: not-ct 1\)"):
        scan(mr_only, tmp_path / "o", secret=SECRET)
    monkeypatch.delenv("TLX_SECRET", raising=False)
    result = CliRunner().invoke(cli, ["scan", "--dicom-root", str(root), "--out", str(tmp_path / "o2")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [result.output.strip()] and "TLX_SECRET" in result.output
    bad = tmp_path / "rules.toml"
    bad.write_text('[[rule]]\nname = "x"\nlabel = "belly"\nkeywords = ["bauch"]\n')
    result = CliRunner().invoke(cli, ["scan", "--dicom-root", str(root), "--out", str(tmp_path / "o3"),
                                      "--label-rules", str(bad)], env={"TLX_SECRET": SECRET.decode()})
    assert result.exit_code == 2 and "label 'belly' is not a class; allowed: head, thorax" in result.output


def test_cli_scan_prints_a_summary_table(cohort, tmp_path):
    root, _ = cohort
    result = CliRunner().invoke(cli, ["scan", "--dicom-root", str(root), "--out", str(tmp_path / "d"),
                                      "--workers", "1"], env={"TLX_SECRET": SECRET.decode()})
    assert result.exit_code == 0, result.output
    assert "candidate: thorax" in result.output and "rejected: scout" in result.output
    assert (tmp_path / "d" / INDEX).exists()


def test_an_index_never_stands_without_its_scan_record(cohort, tmp_path, monkeypatch):
    """`tlx shard` (--resume auto) reuses an index it finds, and the manifest's config.scan comes from
    work/scan.json: a scan killed between the two files must leave no index behind."""
    import datakit.scan as scan_module

    def killed(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(scan_module, "write_json_atomic", killed)
    with pytest.raises(KeyboardInterrupt):
        scan(cohort[0], tmp_path, workers=1, secret=SECRET)
    assert not (tmp_path / INDEX).exists()


def test_a_value_that_runs_on_into_names_is_not_quoted_in_a_reason(tmp_path):
    """Reject reasons reach rejects.parquet, which is shared. A Modality whose length was corrupted
    runs on into the elements after it (institution, physician, patient name): the reason quoted it
    all (found with bit-flipped copies of the synthetic cohort)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    from datakit.dicom_header import shown_term

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.SOPClassUID = CTImageStorage
    ds.Modality, ds.InstitutionName, ds.ReferringPhysicianName = "CT", "St Marys", "Weiss^Klaus"
    ds.PatientName, ds.PatientID = "Smith^Lukas", "PID123"
    ds.save_as(tmp_path / "ok.dcm", enforce_file_format=True)
    data = (tmp_path / "ok.dcm").read_bytes()
    at = data.index(b"\x08\x00\x60\x00CS\x02\x00CT")
    (tmp_path / "ok.dcm").unlink()
    (tmp_path / "x.dcm").write_bytes(data[:at + 6] + b"\x30" + data[at + 7:])   # Modality length 2 -> 48
    with pytest.raises(DatakitError, match="no usable CT slices"):   # the index is written all the same
        scan(tmp_path, tmp_path / "out", workers=1, secret=SECRET)
    row = pq.read_table(tmp_path / "out" / INDEX).to_pylist()[0]
    assert row["reject_code"] == "not-ct" and "Weiss" not in row["reject_reason"]
    assert row["modality"] == "an invalid value of 48 characters"           # nor in the index's columns
    assert "Weiss" not in json.dumps(row, default=str)
    assert row["reject_reason"] == "Modality is an invalid value of 48 characters; only CT is used"
    assert [shown_term(v) for v in ("MR", "CT ", "ORIGINAL")] == ["MR", "CT", "ORIGINAL"]
    assert shown_term("1.2.840.10008.5.1.4.1.1.2", 64) == "1.2.840.10008.5.1.4.1.1.2"


def test_default_workers_are_the_cores_this_process_may_use(tmp_path, monkeypatch):
    """On a SLURM node (--cpus-per-task 2 of 64 cores) os.cpu_count() is 64; scan and tlx convert took
    that many processes, tlx write the 2 of its CPU affinity."""
    import shutil

    from pydicom.data import get_testdata_file

    from datakit.convert.builder import check_workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    shutil.copyfile(get_testdata_file("CT_small.dcm"), tmp_path / "ct.dcm")
    assert scan(tmp_path, tmp_path / "out", secret=SECRET).workers == 1
    assert check_workers(None) == 1 and check_workers(3) == 3


def test_pydicom_never_prints_header_values_of_a_broken_file(tmp_path, caplog):
    """pydicom warns with the invalid value quoted; a SOPClassUID whose length was corrupted ran on into
    the names after it, and tlx shard's terminal (a job log on a cluster) showed them."""
    import logging
    import warnings

    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    from datakit import dicom_header, dicom_pixels

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = "1.2.3.4"
    ds.Modality, ds.InstitutionName, ds.ReferringPhysicianName = "CT", "St Marys", "Weiss^Klaus"
    ds.PatientName, ds.PatientID = "Smith^Lukas", "PID123"
    ds.save_as(tmp_path / "ok.dcm", enforce_file_format=True)
    data = (tmp_path / "ok.dcm").read_bytes()
    at = data.index(b"\x08\x00\x16\x00UI")
    path = tmp_path / "x.dcm"
    path.write_bytes(data[:at + 6] + b"\x90\x00" + data[at + 8:])     # SOPClassUID length 26 -> 144
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.SpecificCharacterSet = ["ISO 2022 IR 100", "Weiss^Klaus"]   # the walker decodes text through pydicom
        ds.SeriesDescription = "Thorax"
        ds.save_as(tmp_path / "charset.dcm", enforce_file_format=True)
    caplog.set_level(logging.DEBUG, logger="pydicom")
    caplog.clear()                                                       # what writing the files logged
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dicom_header.read_header_pydicom(path)
        with pytest.raises(dicom_header.SliceRejected):
            dicom_pixels._read_with_pydicom(path, dicom_header.header_row(dicom_header.read_header(path)))
        dicom_header.read_header(tmp_path / "charset.dcm")
    said = [str(w.message) for w in caught] + [r.getMessage() for r in caplog.records]
    assert not [s for s in said if "Weiss" in s or "Smith" in s], said
    assert not logging.getLogger("pydicom").disabled           # put back afterwards
