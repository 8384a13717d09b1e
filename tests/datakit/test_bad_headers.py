"""Present but broken header values are rejected, never read as absent, and HU that cannot be a CT
slice's never reach a shard (issue 10, items 3, 4, 5 and 18)."""
import errno
import re

import numpy as np
import pytest
from pydicom.uid import ImplicitVRLittleEndian

from datakit.dicom_header import SliceRejected, header_row, read_header, read_header_pydicom
from datakit.dicom_pixels import read_hu
from datakit.hu_slice import implausible_hu
from datakit.scan import _FileScanner, classify
from datakit.walk import os_reason
from datakit.write_convert import Encoder, convert_slice
from tests.datakit.test_dicom import SIGNED, make, save

# Explicit VR little endian element header of (0028,1052) RescaleIntercept, (0028,1053) RescaleSlope, ...
TAG = {"RescaleIntercept": b"\x28\x00\x52\x10DS", "RescaleSlope": b"\x28\x00\x53\x10DS",
       "ImageOrientationPatient": b"\x20\x00\x37\x00DS", "PixelSpacing": b"\x28\x00\x30\x00DS"}


def patch_value(path, keyword: str, text: str):
    """Overwrite the value of a DS element in place with `text` (padded to its length): pydicom
    refuses to write such values, real files carry them."""
    data = bytearray(path.read_bytes())
    at = data.find(TAG[keyword])
    assert at > 0
    length = int.from_bytes(data[at + 6:at + 8], "little")
    assert len(text) <= length
    data[at + 8:at + 8 + length] = text.ljust(length).encode()
    path.write_bytes(bytes(data))
    return path


def scan_code(path):
    return classify(read_header(path), path.stat().st_size)


@pytest.mark.parametrize("keyword", ["RescaleIntercept", "RescaleSlope"])
@pytest.mark.parametrize("text", ["NaN", "inf", "-1024x", "abc"])
def test_present_but_broken_rescale_is_bad_rescale_not_the_identity(tmp_path, keyword, text):
    """Read as absent, an intercept of 'NaN' gave HU shifted by +1024 (stored values taken as HU)."""
    path = patch_value(save(make(RescaleIntercept="-1024.0", RescaleSlope="1.00000"), tmp_path / "x.dcm"), keyword,
                       text)
    for header in (read_header(path), read_header_pydicom(path)):
        assert keyword in header.invalid and header.values[keyword] is None
    code, reason = scan_code(path)
    assert code == "bad-rescale" and reason.startswith(f"{keyword} is present but not a finite number")
    for row in (None, header_row(read_header(path))):
        with pytest.raises(SliceRejected, match=f"{keyword} is present but not a finite number") as info:
            read_hu(path, row)
        assert info.value.code == "bad-rescale"


def test_absent_rescale_still_means_the_identity(tmp_path):
    ds = make()
    del ds.RescaleSlope, ds.RescaleIntercept
    path = save(ds, tmp_path / "x.dcm")
    assert scan_code(path) is None and read_header(path).invalid == frozenset()
    np.testing.assert_array_equal(read_hu(path), SIGNED.astype(np.float32))


@pytest.mark.parametrize("change, message", [
    (dict(PixelSpacing=[0, 0]), r"PixelSpacing is 0\\0; it must be two positive numbers"),
    (dict(PixelSpacing=[-0.7, -0.7]), r"PixelSpacing is -0.7\\-0.7; it must be two positive"),
    (dict(PixelSpacing=[1e6, 1e6]), r"gives a field of view of 40000000 mm, more than 1000 mm"),
    (dict(PixelSpacing=[0.7]), r"PixelSpacing is 0.7; it must be two positive numbers"),
    (dict(SliceThickness=0), r"SliceThickness is 0 mm, outside \(0, 100\] mm"),
    (dict(SliceThickness=-2), r"SliceThickness is -2 mm"),
    (dict(SliceThickness=1e6), r"SliceThickness is 1e\+06 mm"),
    (dict(ImagePositionPatient=[0, 12.5]), r"ImagePositionPatient has 2 values, not 3"),
])
def test_malformed_geometry_is_bad_geometry(tmp_path, change, message):
    code, reason = scan_code(save(make(**change), tmp_path / "x.dcm"))
    assert code == "bad-geometry"
    assert re.search(message, reason), reason


def test_a_one_pixel_slice_is_bad_geometry(tmp_path):
    one = np.array([[7]], dtype=np.int16)
    code, reason = scan_code(save(make(one), tmp_path / "x.dcm", pixels=one))
    assert (code, reason) == ("bad-geometry", "the image is 1x1 pixels; a CT slice has at least 16 per side")


@pytest.mark.parametrize("keyword, text", [("ImageOrientationPatient", "1\\0\\0\\0\\NaN\\0"),
                                           ("PixelSpacing", "0.7\\abc")])
def test_a_nan_in_the_geometry_is_bad_geometry_not_absent(tmp_path, keyword, text):
    """A NaN in ImageOrientationPatient made the whole value absent, which skipped the not-axial check."""
    ds = make(ImageOrientationPatient=["1.000000", "0.000000", "0.000000", "0.000000", "1.000000", "0.000000"],
              PixelSpacing=["0.700000", "0.700000"])
    path = patch_value(save(ds, tmp_path / "x.dcm"), keyword, text)
    assert scan_code(path) == ("bad-geometry", f"{keyword} is present but not finite numbers")


def test_the_same_checks_hold_for_implicit_vr_files_read_by_pydicom(tmp_path):
    path = save(make(SliceThickness=0), tmp_path / "x.dcm", ImplicitVRLittleEndian)
    header = read_header_pydicom(path)
    assert classify(header, path.stat().st_size)[0] == "bad-geometry"


def hu_of(tmp_path, pixels, **attrs):
    path = save(make(pixels, **attrs), tmp_path / "x.dcm", pixels=pixels)
    return path, header_row(read_header(path))


@pytest.mark.parametrize("case, message", [
    ("unsigned-read-of-signed", r"HU span .*beyond int16 .* would be clipped"),
    ("slope-1e30", r"beyond int16"),
    ("intercept-1e30", r"beyond int16"),
    ("32-bit-around-4e6", r"beyond int16"),
    ("constant", r"every pixel is -1000 HU: a constant image holds no anatomy"),
    ("mostly-implausible", r"only 0% of the pixels lie within -1100..4000 HU"),
])
def test_hu_beyond_int16_or_implausible_is_rejected_not_clipped(tmp_path, case, message):
    """These slices were clipped to int16 and kept: air read as 64512, saturated slices, constant ones."""
    ramp = np.linspace(-1000, 1500, 40 * 36).reshape(40, 36)
    pixels, attrs = {
        "unsigned-read-of-signed": (ramp.astype(np.int16).view(np.uint16), dict(RescaleIntercept=0)),
        "slope-1e30": (ramp.astype(np.int16), dict(RescaleSlope=1e30)),
        "intercept-1e30": (ramp.astype(np.int16), dict(RescaleIntercept=1e30)),
        "32-bit-around-4e6": ((ramp + 4e6).astype(np.int32), dict(RescaleIntercept=0)),
        "constant": (np.full((40, 36), 24, np.int16), dict(RescaleIntercept=-1024)),
        "mostly-implausible": ((ramp + 6000).astype(np.int16), dict(RescaleIntercept=0)),
    }[case]
    path, row = hu_of(tmp_path, pixels, **attrs)
    with pytest.raises(SliceRejected, match=message) as info:
        convert_slice(path, row, (32, 32), Encoder("raw"), hu_floor=-1024)
    assert info.value.code == "implausible-hu"


def test_plausible_slices_pass_padding_and_metal_included():
    hu = np.full((64, 64), -3024.0, np.float32)            # padding outside the reconstruction circle
    yy, xx = np.mgrid[:64, :64]
    hu[(yy - 32) ** 2 + (xx - 32) ** 2 < 30 ** 2] = 40.0
    hu[30:34, 30:34] = 30000.0                              # metal
    assert implausible_hu(hu) is None                       # --hu-floor none: padding is a minority
    assert implausible_hu(np.maximum(hu, -1024)) is None


def test_reasons_never_say_none_for_an_error_without_strerror(tmp_path, monkeypatch):
    """'cannot read the file (None)': an OSError raised by a library carries no strerror."""
    import datakit.scan as scan_module

    def broken(*_a, **_k):
        raise OSError("the device went away")

    monkeypatch.setattr(scan_module, "read_header", broken)
    (tmp_path / "a.dcm").write_bytes(b"x")
    row = _FileScanner(str(tmp_path), b"s", None).row("a.dcm", 1)
    assert (row["reject_code"], row["reject_reason"]) == ("unreadable", "cannot read the file (the device went away)")
    assert os_reason(OSError(errno.EACCES, "Permission denied")) == "Permission denied"
    assert os_reason(OSError()) == "OSError"


def test_absurd_position_and_one_bit_pixels_are_rejected(tmp_path):
    """Both were kept by the fuzz run: a slice 1 km away sorted to its volume's end, and 1 of 12 bits
    made a binary image that passed every other check."""
    code, reason = scan_code(save(make(ImagePositionPatient=[1e6, 1e6, 1e6]), tmp_path / "a.dcm"))
    assert (code, reason) == ("bad-geometry", "ImagePositionPatient 1e+06\\1e+06\\1e+06 lies more than 10 m from "
                                              "the scanner's origin")
    code, reason = scan_code(save(make(BitsStored=1, HighBit=0), tmp_path / "b.dcm"))
    assert (code, reason) == ("unsupported-pixels", "BitsStored=1; a CT slice stores at least 8 bits (12-16)")
