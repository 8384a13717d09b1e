"""Decoding plugins: tlx picks the fastest installed one per lossless transfer syntax (python-gdcm for JPEG
lossless where installed), and every lossless plugin gives the same pixels, on pydicom's own compressed
files and on the synthetic cohort's 12- and 16-bit JPEG lossless slices."""
import os
import warnings

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_files
from pydicom.pixels import get_decoder

from datakit.dicom_header import SliceRejected, header_row, read_header
from datakit.dicom_pixels import (
    J2K_LOSSLESS,
    JPEG_LOSSLESS,
    JPEG_LS,
    LOSSY_ORDER,
    RLE_LOSSLESS,
    first_available,
    plugin_order,
    preferred_plugin,
    read_hu,
)
from tests.fixtures.optional import need

LOSSLESS = JPEG_LOSSLESS | J2K_LOSSLESS | {"1.2.840.10008.1.2.4.80", RLE_LOSSLESS}
pytestmark = pytest.mark.filterwarnings("ignore")


def _lossless_corpus():
    out = []
    # "**/*" lists only the files pydicom ships; a pattern such as "*.dcm" also matches pydicom-data's online
    # files, which pydicom then downloads from GitHub (not reachable in CI: the test hung to its timeout).
    for path in sorted(f for f in get_testdata_files() if f.endswith(".dcm") and os.path.isfile(f)):
        try:
            ts = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
        except Exception:  # noqa: BLE001 - pydicom's deliberately broken files
            continue
        if ts in LOSSLESS:
            out.append((path, str(ts)))
    return out


def _by_plugin(path, ts):
    """pixel_array of the file decoded by each installed plugin (None where that plugin fails)."""
    out = {}
    for plugin in get_decoder(ts).available_plugins:
        ds = pydicom.dcmread(path)
        ds.pixel_array_options(decoding_plugin=plugin)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                out[plugin] = ds.pixel_array
            except Exception:  # noqa: BLE001 - a plugin that cannot decode this file
                out[plugin] = None
    return out


def test_every_lossless_plugin_gives_tlx_the_same_pixels_on_pydicoms_files():
    files = _lossless_corpus()
    assert {ts for _, ts in files} >= {"1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.90",
                                       "1.2.840.10008.1.2.4.80", RLE_LOSSLESS}
    compared = 0
    for path, ts in files:
        decoded = {k: v for k, v in _by_plugin(path, ts).items() if v is not None}
        arrays = list(decoded.values())
        assert all(np.array_equal(a, arrays[0]) and a.dtype == arrays[0].dtype for a in arrays), (path, list(decoded))
        try:
            hu = read_hu(path)
        except SliceRejected:                  # colour, multi-frame: not CT slices, rejected before decoding
            continue
        ds = pydicom.dcmread(path)
        expected = arrays[0].astype(np.float64) * float(ds.get("RescaleSlope", 1) or 1) + \
            float(ds.get("RescaleIntercept", 0) or 0)
        np.testing.assert_array_equal(hu, expected.astype(np.float32), err_msg=path)
        compared += 1
    assert compared >= 4


def test_plugin_order_fastest_first_and_lossy_syntaxes_keep_pydicoms_order():
    assert plugin_order("1.2.840.10008.1.2.4.70")[0] == "gdcm"
    assert first_available(plugin_order("1.2.840.10008.1.2.4.70"), ("pylibjpeg",)) == "pylibjpeg"   # no gdcm
    assert first_available(plugin_order("1.2.840.10008.1.2.4.80"), ("gdcm", "pyjpegls", "pylibjpeg")) == "pyjpegls"
    assert first_available(plugin_order("1.2.840.10008.1.2.4.90"), ("gdcm", "pillow", "pylibjpeg")) == "pylibjpeg"
    for lossy in ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.91"):
        assert "gdcm" not in plugin_order(lossy) and plugin_order(lossy) == LOSSY_ORDER
    assert all(ts in JPEG_LS or ts in JPEG_LOSSLESS or ts in J2K_LOSSLESS for ts in
               ("1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.201"))
    assert preferred_plugin(RLE_LOSSLESS) is None


@pytest.mark.parametrize("bits, signed", [(12, False), (12, True), (16, True), (16, False)])
def test_gdcm_decodes_tlx_synth_jpeg_lossless_as_libjpeg_does(tmp_path, bits, signed):
    need("gdcm")
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLosslessSV1

    from datakit.synth.jpeg_lossless import encode_sv1
    from tests.datakit.test_dicom import make, save

    assert preferred_plugin(str(JPEGLosslessSV1)) == "gdcm"
    rng = np.random.default_rng(bits + signed)
    lo, hi = (-(1 << (bits - 1)), 1 << (bits - 1)) if signed else (0, 1 << bits)
    values = rng.integers(lo, hi, (24, 36)).astype(np.int16 if signed else np.uint16)
    values.flat[:2] = lo, hi - 1
    ds = make(values, BitsStored=bits, HighBit=bits - 1, PixelRepresentation=int(signed), RescaleIntercept=0)
    path = save(ds, tmp_path / "plain.dcm", pixels=values)
    ds = pydicom.dcmread(path)
    ds.PixelData = encapsulate([encode_sv1(values.view(np.uint16), precision=bits)])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    ds.save_as(tmp_path / "jll.dcm", enforce_file_format=True)
    by_plugin = _by_plugin(tmp_path / "jll.dcm", JPEGLosslessSV1)
    assert np.array_equal(by_plugin["gdcm"], values) and np.array_equal(by_plugin["pylibjpeg"], values)
    row = header_row(read_header(tmp_path / "jll.dcm"))
    np.testing.assert_array_equal(read_hu(tmp_path / "jll.dcm", row, exact=True), values)
