"""The reader against pydicom's own test files and damaged copies of them: read correctly or rejected with a
known code, never a crash, never a hang, never a huge allocation."""
import os
import shutil
import warnings

import numpy as np
import pyarrow.parquet as pq
import pydicom
import pytest
from pydicom.data import get_testdata_files

from datakit.dicom_header import KEYWORDS, SliceRejected, read_header, read_header_pydicom
from datakit.dicom_pixels import read_hu
from datakit.scan import INDEX, scan

KNOWN_CODES = {"not-dicom", "unreadable", "unreadable-header", "dicomdir", "not-ct", "not-image-storage",
               "secondary-capture", "scout", "derived", "no-pixel-data", "unsupported-pixels", "bad-geometry",
               "multi-frame", "not-grayscale", "bad-rescale", "not-axial", "truncated", "undecodable",
               "pixel-header-mismatch", "unsupported-transfer-syntax", "timeout", "not-a-file"}
CORPUS = sorted(f for f in get_testdata_files() if os.path.isfile(f))
pytestmark = pytest.mark.filterwarnings("ignore")


def _expected_hu(path):
    ds = pydicom.dcmread(path)
    return ds.pixel_array.astype(np.float64) * float(ds.get("RescaleSlope", 1) or 1) + \
        float(ds.get("RescaleIntercept", 0) or 0)


def test_corpus_is_there():
    assert len(CORPUS) > 150


def test_header_walker_agrees_with_pydicom_on_every_file():
    compared = 0
    for path in CORPUS:
        try:
            fast = read_header(path)
        except SliceRejected as exc:
            assert exc.code == "not-dicom", (path, exc)
            continue
        slow = read_header_pydicom(path)
        assert {k: fast.values.get(k) for k in KEYWORDS} == {k: slow.values.get(k) for k in KEYWORDS}, path
        assert (fast.transfer_syntax, fast.pixel_offset, fast.pixel_length) == \
            (slow.transfer_syntax, slow.pixel_offset, slow.pixel_length), path
        compared += 1
    assert compared > 150


def test_read_hu_equals_pixel_array_or_rejects_with_a_known_code():
    read, codes, only_tlx = 0, set(), []
    for path in CORPUS:
        try:
            hu = read_hu(path)
        except SliceRejected as exc:
            assert exc.code in KNOWN_CODES and exc.reason, (path, exc)
            codes.add(exc.code)
            continue
        try:
            expected = _expected_hu(path)
        except ValueError:        # pydicom refuses a broken non-pixel value that tlx does not need
            only_tlx.append(os.path.basename(path))
            continue
        np.testing.assert_array_equal(hu, expected.astype(np.float32), err_msg=path)
        read += 1
    assert read >= 45 and only_tlx == ["badVR.dcm"]
    assert {"not-dicom", "no-pixel-data", "not-grayscale", "multi-frame", "truncated"} <= codes


def _damaged_copies(folder):
    """Truncated and bit-flipped copies of the corpus's DICOM files, positions chosen deterministically."""
    rng = np.random.default_rng(2)
    made = 0
    for i, path in enumerate(CORPUS):
        data = open(path, "rb").read()
        if len(data) < 256 or len(data) > 400_000 or b"DICM" not in data[:132]:
            continue
        name = f"f{i:03d}"
        for j, cut in enumerate((140, len(data) // 3, len(data) - 7)):
            (folder / f"{name}-cut{j}").write_bytes(data[:cut])
        header_end = min(len(data), 2048)
        for j in range(4):
            flipped = bytearray(data)
            for pos in rng.integers(132, header_end, 3):
                flipped[pos] ^= 1 << int(rng.integers(8))
            (folder / f"{name}-flip{j}").write_bytes(bytes(flipped))
        made += 7
    return made


@pytest.mark.timeout(240)
def test_scan_and_read_hu_survive_damaged_copies(tmp_path):
    root = tmp_path / "damaged"
    root.mkdir()
    made = _damaged_copies(root)
    assert made > 500
    for i, path in enumerate(CORPUS[:40]):
        shutil.copyfile(path, root / f"orig{i:03d}")
    warnings.simplefilter("ignore")
    summary = scan(root, tmp_path / "out", workers=1, secret=b"tlx-corpus-test-secret-0123")
    rows = pq.read_table(tmp_path / "out" / INDEX).to_pylist()
    assert len(rows) == summary.files == made + 40
    assert {r["reject_code"] for r in rows} - {None} <= KNOWN_CODES
    read = rejected = 0
    for r in rows:
        if r["reject_code"] is not None:
            continue
        try:
            hu = read_hu(root / r["path"], r)
        except SliceRejected as exc:
            assert exc.code in KNOWN_CODES and exc.reason
            rejected += 1
            continue
        assert hu.shape == (r["rows"], r["columns"]) and hu.dtype == np.float32
        read += 1
    assert read > 0 and rejected > 0


def test_scan_codes_for_pydicom_files(tmp_path):
    picks = {"CT_small.dcm": None, "MR_small.dcm": "not-ct", "rtplan.dcm": "not-ct", "DICOMDIR": "dicomdir",
             "MR_truncated.dcm": "not-ct", "README.txt": "not-dicom"}
    for name in picks:
        shutil.copyfile(next(p for p in CORPUS if os.path.basename(p) == name), tmp_path / name)
    scan(tmp_path, tmp_path / "out", workers=1, secret=b"tlx-corpus-test-secret-0123")
    rows = {r["path"]: r for r in pq.read_table(tmp_path / "out" / INDEX).to_pylist()}
    assert {k: rows[k]["reject_code"] for k in picks} == picks
    ct = rows["CT_small.dcm"]
    assert ct["pixel_offset"] is not None and ct["rows"] == 128 and ct["label"] in ("other",) + ("abdomen",)
    np.testing.assert_array_equal(read_hu(tmp_path / "CT_small.dcm", ct),
                                  _expected_hu(tmp_path / "CT_small.dcm").astype(np.float32))
