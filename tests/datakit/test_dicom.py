"""read_header / read_hu on one oddity each, pydicom-test style; messages pinned, HU checked against pixel_array."""
import time

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

from datakit.dicom_header import SliceRejected, header_row, read_header, time_limit
from datakit.dicom_pixels import read_hu
from datakit.synth.jpeg_lossless import encode_sv1

RNG = np.random.default_rng(0)
SIGNED = RNG.integers(-1024, 3000, (40, 36)).astype(np.int16)   # J2K needs 32+ pixels a side


def make(pixels=SIGNED, **attrs) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = "1.2.3.4"
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Modality, ds.PatientID = "CT", "P1"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SeriesDescription = "Thorax"
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored, ds.HighBit = ds.BitsAllocated, ds.BitsAllocated - 1
    ds.PixelRepresentation = int(pixels.dtype.kind == "i")
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, 12.5], [1, 0, 0, 0, 1, 0]
    ds.PixelData = pixels.tobytes()
    for k, v in attrs.items():
        setattr(ds, k, v)
    return ds


def save(ds, path, ts=ExplicitVRLittleEndian, pixels=SIGNED):
    if ts == JPEGLosslessSV1:
        ds.PixelData = encapsulate([encode_sv1(pixels.view(np.uint16), precision=int(ds.BitsStored))])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = ts
    elif ts.is_compressed:
        ds.compress(ts, pixels, generate_instance_uid=False)
    else:
        if ts == ExplicitVRBigEndian:
            ds.PixelData = pixels.astype(pixels.dtype.newbyteorder(">")).tobytes()
        ds.file_meta.TransferSyntaxUID = ts
    ds.save_as(path, enforce_file_format=True)
    return path


def both_ways(path):
    """read_hu with the scan's row (fast path for native data) and without (header parsed here)."""
    row = header_row(read_header(path))
    return read_hu(path, row), read_hu(path)


@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian,
                                DeflatedExplicitVRLittleEndian, JPEGLosslessSV1, JPEGLSLossless, JPEG2000Lossless,
                                RLELossless])
def test_transfer_syntaxes_give_the_same_hu_as_pydicom(tmp_path, ts, monkeypatch):
    from datakit import dicom_pixels

    path = save(make(), tmp_path / "x.dcm", ts)
    expected = pydicom.dcmread(path).pixel_array.astype(np.float32) - 1024
    np.testing.assert_array_equal(expected, SIGNED.astype(np.float32) - 1024)
    for hu in both_ways(path):
        np.testing.assert_array_equal(hu, expected)
    h = read_header(path)
    native = ts in (ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian)
    assert (h.pixel_offset is not None) == (ts != DeflatedExplicitVRLittleEndian)
    assert (h.pixel_length is not None) == native
    assert h.values["ImagePositionPatient"] == (0.0, 0.0, 12.5) and h.values["SeriesDescription"] == "Thorax"
    if ts.is_compressed and ts != DeflatedExplicitVRLittleEndian:
        # With the index row, compressed pixels are decoded from the PixelData value, not via dcmread.
        monkeypatch.setattr(dicom_pixels, "_read_with_pydicom", lambda *a: pytest.fail("dataset parsed again"))
        np.testing.assert_array_equal(read_hu(path, header_row(h)), expected)


def test_missing_rescale_is_identity_and_float_slope_is_exact(tmp_path):
    ds = make()
    del ds.RescaleSlope, ds.RescaleIntercept
    for hu in both_ways(save(ds, tmp_path / "a.dcm")):
        np.testing.assert_array_equal(hu, SIGNED.astype(np.float32))
    for hu in both_ways(save(make(RescaleSlope=0.7, RescaleIntercept=-1000.25), tmp_path / "b.dcm")):
        np.testing.assert_array_equal(hu, (SIGNED.astype(np.float64) * 0.7 - 1000.25).astype(np.float32))


def test_bits_stored_masks_high_bits_and_sign_extends(tmp_path):
    values = RNG.integers(0, 4096, (8, 8)).astype(np.uint16)
    junk = values | np.uint16(0xA000)                      # overlay bits above BitsStored = 12
    ds = make(junk, BitsStored=12, HighBit=11, RescaleIntercept=0)
    for hu in both_ways(save(ds, tmp_path / "u.dcm", pixels=junk)):
        np.testing.assert_array_equal(hu, values.astype(np.float32))
    signed = RNG.integers(-2048, 2048, (8, 8)).astype(np.int16)
    raw = (signed.view(np.uint16) & 0x0FFF) | 0x5000      # 12-bit two's complement, junk above
    ds = make(raw.view(np.int16), BitsStored=12, HighBit=11, RescaleIntercept=0)
    for hu in both_ways(save(ds, tmp_path / "s.dcm", pixels=raw.view(np.int16))):
        np.testing.assert_array_equal(hu, signed.astype(np.float32))


def test_unsigned_8_bit_and_monochrome1(tmp_path):
    pix = RNG.integers(0, 256, (6, 6)).astype(np.uint8)
    for hu in both_ways(save(make(pix, PhotometricInterpretation="MONOCHROME1"), tmp_path / "m.dcm", pixels=pix)):
        np.testing.assert_array_equal(hu, pix.astype(np.float32) - 1024)   # display inversion is not HU


@pytest.mark.parametrize("change, code, message", [
    (dict(NumberOfFrames=2), "multi-frame", r"2 frames in one file"),
    (dict(SamplesPerPixel=3), "not-grayscale", r"SamplesPerPixel=3"),
    (dict(PhotometricInterpretation="PALETTE COLOR"), "not-grayscale", r"PALETTE COLOR; supported: MONOCHROME1"),
    (dict(BitsAllocated=12), "unsupported-pixels", r"BitsAllocated=12; supported: 8, 16, 32"),
    (dict(Rows=60000), "bad-geometry", r"declared size 60000x36 exceeds the limit of 8192 per side"),
    (dict(Rows=8000, Columns=8000, NumberOfFrames=3), "bad-geometry", r"exceeds the limit of 256 MiB"),
    (dict(Rows=0), "bad-geometry", r"Rows/Columns missing or zero"),
    (dict(RescaleSlope=0), "bad-rescale", r"RescaleSlope is 0"),
])
def test_declared_formats_refused_before_reading_pixels(tmp_path, change, code, message):
    path = save(make(**change), tmp_path / "x.dcm")
    for call in (lambda: read_hu(path), lambda: read_hu(path, header_row(read_header(path)))):
        with pytest.raises(SliceRejected, match=message) as info:
            call()
        assert info.value.code == code


def test_missing_and_truncated_pixel_data(tmp_path):
    ds = make()
    del ds.PixelData
    with pytest.raises(SliceRejected, match="the file has no PixelData"):
        read_hu(save(ds, tmp_path / "none.dcm"))
    path = save(make(), tmp_path / "cut.dcm")
    path.write_bytes(path.read_bytes()[:-100])
    for call in (lambda: read_hu(path), lambda: read_hu(path, header_row(read_header(path)))):
        with pytest.raises(SliceRejected, match=r"PixelData holds \d+ bytes; 40x36 .*needs 2880") as info:
            call()
        assert info.value.code == "truncated"


def test_jpeg_lossless_encoder_round_trips_12_and_16_bits():
    for pixels, precision in ((RNG.integers(0, 4096, (33, 17)).astype(np.uint16), 12),
                              (RNG.integers(-32768, 32768, (16, 40)).astype(np.int16), 16)):
        ds = make(pixels, BitsStored=precision, HighBit=precision - 1)
        ds.PixelData = encapsulate([encode_sv1(pixels.view(np.uint16), precision)])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
        np.testing.assert_array_equal(ds.pixel_array, pixels)


def test_codestream_size_must_match_the_header(tmp_path):
    path = save(make(), tmp_path / "j2k.dcm", JPEG2000Lossless)
    data = bytearray(path.read_bytes())
    siz = data.find(b"\xff\x4f\xff\x51")
    data[siz + 8:siz + 12] = (50000).to_bytes(4, "big")       # Xsiz: a width the header does not declare
    path.write_bytes(bytes(data))
    with pytest.raises(SliceRejected, match=r"the codestream says 40x50000, the DICOM header 40x36") as info:
        read_hu(path)
    assert info.value.code == "pixel-header-mismatch"


def test_not_dicom_and_preamble_less_files(tmp_path):
    (tmp_path / "junk").write_bytes(b"hello world, not a DICOM file at all" * 10)
    with pytest.raises(SliceRejected, match="not a DICOM file") as info:
        read_header(tmp_path / "junk")
    assert info.value.code == "not-dicom"
    path = save(make(), tmp_path / "full.dcm")
    raw = pydicom.dcmread(path)
    raw.preamble = None
    del raw.file_meta
    raw.save_as(tmp_path / "raw", implicit_vr=False, little_endian=True)   # a bare dataset, no preamble, no meta
    np.testing.assert_array_equal(read_hu(tmp_path / "raw"), SIGNED.astype(np.float32) - 1024)


def test_a_changed_file_is_read_again(tmp_path):
    path = save(make(), tmp_path / "x.dcm")
    row = {**header_row(read_header(path)), "size": path.stat().st_size}
    save(make(SIGNED[:12].copy()), path)                             # rewritten after the scan: smaller image
    assert read_hu(path, row).shape == (12, 36)


def test_time_limit_turns_a_stall_into_a_reject():
    with pytest.raises(SliceRejected, match=r"reading took longer than 0.05 s") as info:
        with time_limit(0.05):
            time.sleep(2)
    assert info.value.code == "timeout"


@pytest.mark.parametrize("ts", [JPEGLosslessSV1, JPEGLSLossless, JPEG2000Lossless, RLELossless])
def test_compressed_pixel_data_cut_short_is_truncated(tmp_path, ts):
    """A compressed slice cut short inside its PixelData: libjpeg decoded the cut JPEG frame into a
    slice with made-up rows and no error, CharLS spent ~30 s in C on the cut JPEG-LS stream, and RLE
    and JPEG 2000 came out as 'no-pixel-data'. Now: 'truncated', before any decoder runs."""
    path = save(make(), tmp_path / "x.dcm", ts)
    data = path.read_bytes()
    offset = read_header(path).pixel_offset
    path.write_bytes(data[:offset + (len(data) - offset) * 6 // 10])
    t0 = time.monotonic()
    for row in (None, {**header_row(read_header(path)), "size": path.stat().st_size}):
        with pytest.raises(SliceRejected, match="the file ends inside its compressed pixel data") as info:
            read_hu(path, row)
        assert info.value.code == "truncated"
    assert time.monotonic() - t0 < 2
    # Only the sequence delimiter missing (a writer that leaves it out): read as before.
    assert data.endswith(b"\xfe\xff\xdd\xe0" + bytes(4))
    path.write_bytes(data[:-8])
    np.testing.assert_array_equal(read_hu(path), SIGNED.astype(np.float32) - 1024)
    path.write_bytes(data[:-4])                                   # cut inside the delimiter's header
    with pytest.raises(SliceRejected, match="inside an item header"):
        read_hu(path)


def test_a_decoder_panic_is_a_reject_not_a_crash(tmp_path):
    """pylibjpeg-rle (Rust) panics on some corrupt RLE segments with pyo3's PanicException, a
    BaseException: it ended `tlx write` with a traceback. One flipped bit in a segment's first
    control byte of pydicom's MR_small_RLE.dcm is such a file."""
    from pydicom.data import get_testdata_file
    from pydicom.encaps import generate_frames

    src = get_testdata_file("MR_small_RLE.dcm")
    data = bytearray(open(src, "rb").read())
    offset = read_header(src).pixel_offset
    frame = next(generate_frames(bytes(data[offset:]), number_of_frames=1))
    data[bytes(data).index(frame) + 64] ^= 0x80          # the first control byte of the first segment
    path = tmp_path / "rle-flipped.dcm"
    path.write_bytes(bytes(data))
    for row in (None, {**header_row(read_header(path)), "size": len(data)}):
        with pytest.raises(SliceRejected) as info:
            read_hu(path, row)
        assert info.value.code == "undecodable" and "PanicException" in info.value.reason


def test_a_timeout_in_the_fast_decode_is_not_retried_without_a_guard(tmp_path, monkeypatch):
    """The timeout raised inside a decoder ends the read; the fast path used to swallow it and decode
    the file again through pydicom with no time guard left (a hang on a file that stalls a decoder)."""
    from pydicom.data import get_testdata_file

    from datakit import dicom_pixels

    def stall(*args, **kwargs):
        time.sleep(5)

    retried = []
    monkeypatch.setattr(dicom_pixels, "PIXEL_TIMEOUT_S", 0.2)
    monkeypatch.setattr(dicom_pixels, "_decode_buffer", stall)
    monkeypatch.setattr(dicom_pixels, "_read_with_pydicom", lambda *a: retried.append(a))
    t0 = time.monotonic()
    with pytest.raises(SliceRejected) as info:
        read_hu(get_testdata_file("MR_small_RLE.dcm"))
    assert info.value.code == "timeout" and not retried and time.monotonic() - t0 < 2


@pytest.mark.parametrize("name", ["MR_small_jpeg_ls_lossless.dcm", "JPEGLSNearLossless_16.dcm"])
def test_jpeg_ls_is_decoded_by_charls_with_pydicoms_output_and_falls_back(name, monkeypatch):
    from pydicom.data import get_testdata_file

    from datakit import dicom_pixels

    path = get_testdata_file(name)
    ds = pydicom.dcmread(path)
    expected = ds.pixel_array.astype(np.float64) * float(ds.get("RescaleSlope", 1) or 1) + \
        float(ds.get("RescaleIntercept", 0) or 0)
    assert dicom_pixels.preferred_plugin(ds.file_meta.TransferSyntaxUID) == "pyjpegls"
    np.testing.assert_array_equal(read_hu(path), expected.astype(np.float32))
    # A preferred plugin that fails (pydicom raises for an unknown one) leaves the decision to
    # pydicom's own plugins: same pixels, no reject.
    monkeypatch.setattr(dicom_pixels, "preferred_plugin", lambda ts: "no-such-plugin")
    np.testing.assert_array_equal(read_hu(path), expected.astype(np.float32))


@pytest.mark.parametrize("private_bytes, pixels", [(0, SIGNED), (600_000, SIGNED), (600_000, None), (10, None)])
def test_deflated_header_is_read_from_its_start_or_whole_when_longer(tmp_path, private_bytes, pixels):
    """Scan inflates only the first 256 KiB of a deflated dataset when the header ends there; a longer
    header (a big private element) or one without PixelData is walked whole: same values either way."""
    from datakit import dicom_header

    ds = make()
    if private_bytes:
        ds.add_new(0x00091010, "OB", RNG.integers(0, 255, private_bytes, dtype=np.uint8).tobytes())
    if pixels is None:
        del ds.PixelData
    path = save(ds, tmp_path / "d.dcm", DeflatedExplicitVRLittleEndian)
    h = read_header(path)
    assert h.transfer_syntax == DeflatedExplicitVRLittleEndian
    assert h.values["ImagePositionPatient"] == (0.0, 0.0, 12.5) and h.values["SeriesDescription"] == "Thorax"
    assert h.pixel_tag == (dicom_header.PIXEL_DATA if pixels is not None else 0) and h.pixel_offset is None
    assert {k: h.values.get(k) for k in dicom_header.KEYWORDS} == \
        {k: v for k, v in dicom_header.read_header_pydicom(path).values.items() if k in dicom_header.KEYWORDS}


def test_deflated_file_that_inflates_to_an_absurd_size_is_refused_before_pydicom(tmp_path, monkeypatch):
    """A few MB of deflated zeros inflate to GB: read_hu refuses such a file before pydicom inflates it
    whole in memory (limit lowered here so the test file stays small)."""
    from datakit import dicom_header, dicom_pixels

    ds = make()
    ds.add_new(0x7FE10010, "OB", bytes(4 << 20))              # 4 MiB of zeros after PixelData, deflated to ~4 KB
    path = save(ds, tmp_path / "bomb.dcm", DeflatedExplicitVRLittleEndian)
    assert path.stat().st_size < 64 << 10
    row = header_row(read_header(path))
    np.testing.assert_array_equal(read_hu(path, row), SIGNED.astype(np.float32) - 1024)   # under the limit: read
    monkeypatch.setattr(dicom_header, "MAX_INFLATED_BYTES", 1 << 20)
    monkeypatch.setattr(dicom_pixels, "_read_with_pydicom", lambda *a: pytest.fail("pydicom inflated it"))
    for call in (lambda: read_hu(path), lambda: read_hu(path, row)):
        with pytest.raises(SliceRejected, match=r"the deflated data set inflates to more than 1 MiB") as info:
            call()
        assert info.value.code == "undecodable"


def test_deflated_bomb_the_header_walker_cannot_follow_is_refused_before_pydicom(tmp_path, monkeypatch):
    """Scan's fallback to pydicom inflated a deflated data set whole: a 1.5 MB file holding a CT header and
    then 1.5 GB of deflated zeros (the walker stops at them) took 3.2 GB and parsed zeros for minutes.
    (Limit lowered here so the test file stays small.)"""
    import zlib

    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    from datakit import dicom_header

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2", "1.2.3"
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_file_meta_info(buf, meta, enforce_standard=True)
    body = b"\x08\x00\x60\x00CS\x02\x00CT" + bytes(2 << 20)          # Modality, then zeros: no valid VR
    deflater = zlib.compressobj(1, zlib.DEFLATED, -zlib.MAX_WBITS)
    path = tmp_path / "bomb.dcm"
    path.write_bytes(bytes(128) + b"DICM" + buf.getvalue() + deflater.compress(body) + deflater.flush())
    monkeypatch.setattr(dicom_header, "MAX_INFLATED_BYTES", 1 << 20)
    monkeypatch.setattr(dicom_header, "read_header_pydicom", lambda *a: pytest.fail("pydicom inflated it"))
    with pytest.raises(SliceRejected, match=r"the deflated data set inflates to more than 1 MiB") as info:
        read_header(path)
    assert info.value.code == "undecodable"


@pytest.mark.parametrize("dtype", ["<u2", ">u2", "<i2", ">i2", "<u1", "<i4", "<u4"])
def test_native_width_masking_equals_the_int64_definition(dtype):
    from datakit.dicom_pixels import _mask_stored

    dt = np.dtype(dtype)
    bits = dt.itemsize * 8
    raw = RNG.integers(0, 2 ** bits, (16, 16), dtype=np.uint64).astype(dt.str.replace("i", "u")).view(dt)
    for stored in range(8 if bits > 8 else 1, bits + 1):
        for signed in (0, 1):
            row = {"bits_stored": stored, "pixel_representation": signed}
            values = raw.view(dt.str.replace("i", "u")).astype(np.int64) & ((1 << stored) - 1)
            if signed:
                values = (values ^ (1 << (stored - 1))) - (1 << (stored - 1))
            if stored == bits:
                values = raw
            out = _mask_stored(raw, row)
            assert np.array_equal(out, values), (stored, signed)
            assert out.dtype.itemsize == dt.itemsize                  # never widened


@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian,
                                DeflatedExplicitVRLittleEndian, JPEGLosslessSV1, RLELossless])
def test_exact_hu_are_whole_numbers_in_int16_and_deflated_files_skip_pydicom(tmp_path, ts, monkeypatch):
    from datakit import dicom_pixels

    path = save(make(), tmp_path / "x.dcm", ts)
    row = header_row(read_header(path))
    monkeypatch.setattr(dicom_pixels, "_read_with_pydicom", lambda *a: pytest.fail("dataset parsed by pydicom"))
    exact = read_hu(path, row, exact=True)
    assert exact.dtype == np.int16
    np.testing.assert_array_equal(exact, read_hu(path, row))
    np.testing.assert_array_equal(exact, SIGNED.astype(np.int32) - 1024)
    float_slope = save(make(RescaleSlope=0.5), tmp_path / "half.dcm", ts)
    assert read_hu(float_slope, header_row(read_header(float_slope)), exact=True).dtype == np.float32


def test_deflated_file_is_inflated_once(tmp_path, monkeypatch):
    import zlib as zlib_module

    from datakit import dicom_header

    path = save(make(), tmp_path / "d.dcm", DeflatedExplicitVRLittleEndian)
    row = header_row(read_header(path))
    calls = []
    real = zlib_module.decompressobj
    monkeypatch.setattr(dicom_header.zlib, "decompressobj", lambda *a: calls.append(a) or real(*a))
    np.testing.assert_array_equal(read_hu(path, row), SIGNED.astype(np.float32) - 1024)
    assert len(calls) == 1


def test_common_character_sets_decode_as_pydicom_does_without_importing_it():
    import subprocess
    import sys

    from pydicom.charset import python_encoding

    from datakit.dicom_header import COMMON_CODECS

    assert all(python_encoding[k] == v for k, v in COMMON_CODECS.items())
    # scan reads a Latin-1 and a UTF-8 header without pydicom (which costs a scan worker 0.45 s of imports)
    code = ("import sys; from datakit.dicom_header import _decode_text; "
            "assert _decode_text('Schädel'.encode('latin-1'), ('ISO_IR 100',)) == 'Schädel'; "
            "assert _decode_text('Schädel'.encode('utf-8'), ('ISO_IR 192',)) == 'Schädel'; "
            "print('pydicom' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
