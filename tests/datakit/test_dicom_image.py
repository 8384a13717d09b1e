"""datakit.dicom_image: X-ray and mammography DICOM through tlx shard's reader and PHI rules."""
import numpy as np
import pytest

from datakit.dicom_header import SliceRejected
from datakit.dicom_image import read_xray
from datakit.pseudonym import pseudonym
from tests.fixtures.xray_dicom import CR, MG, SC, write_xray

SECRET = b"0123456789abcdef-an-x-ray-secret"
RAMP = np.tile(np.arange(0, 4096, 256, dtype=np.uint16), (3, 1))      # 0, 256, ..., 3840


def test_window_linear_and_monochrome1_inverted(tmp_path):
    """LINEAR (PS3.3 C.11.2.1.2.1): x <= c - 0.5 - (w-1)/2 -> y_min, x > c - 0.5 + (w-1)/2 -> y_max, else
    ((x - (c - 0.5)) / (w - 1) + 0.5) * (y_max - y_min) + y_min; here c 2048, w 1025: 0 up to 1535, 1 from 2560."""
    mono2 = read_xray(write_xray(tmp_path / "a.dcm", RAMP, window=(2048, 1025)), SECRET)
    x = RAMP[0].astype(float)
    want = np.clip((x - 2047.5) / 1024 + 0.5, 0, 1)
    assert mono2.voi == "window" and np.array_equal(mono2.pixels[0], np.round(want * 255).astype(np.uint8))
    mono1 = read_xray(write_xray(tmp_path / "b.dcm", RAMP, window=(2048, 1025), photometric="MONOCHROME1"), SECRET)
    assert np.array_equal(mono1.pixels[0], np.round((1 - want) * 255).astype(np.uint8))


def test_voi_lut_is_preferred_and_rescale_applies_first(tmp_path):
    """A VOI LUT (first mapped 1024, 256 entries of 0..2040) wins over the window; input below the first
    mapped value takes the first entry, above the last the last; output scaled by the LUT's range."""
    lut = list(range(0, 2048, 8))
    img = read_xray(write_xray(tmp_path / "l.dcm", RAMP, voi_lut=(1024, lut, 12), window=(0, 10)), SECRET)
    x = np.clip(RAMP[0].astype(int) - 1024, 0, 255)
    assert img.voi == "lut" and np.array_equal(img.pixels[0], np.round(np.array(lut)[x] / 2040 * 255).astype(np.uint8))
    rescaled = read_xray(write_xray(tmp_path / "r.dcm", RAMP, rescale=(1.0, -1024.0), voi_lut=(0, lut, 12)), SECRET)
    x = np.clip(RAMP[0].astype(int) - 1024, 0, 255)            # the LUT sees stored value + intercept
    assert np.array_equal(rescaled.pixels[0], np.round(np.array(lut)[x] / 2040 * 255).astype(np.uint8))


def test_without_voi_the_image_range_is_used_and_sigmoid_is_read(tmp_path):
    img = read_xray(write_xray(tmp_path / "m.dcm", RAMP), SECRET)
    assert img.voi == "minmax" and img.pixels.min() == 0 and img.pixels.max() == 255
    sig = read_xray(write_xray(tmp_path / "s.dcm", RAMP, window=(2048, 1024), voi_function="SIGMOID"), SECRET)
    want = 1 / (1 + np.exp(-4 * (RAMP[0] - 2048.0) / 1024))
    assert sig.voi == "window" and np.abs(sig.pixels[0].astype(int) - np.round(want * 255)).max() <= 1


def test_ids_are_pseudonyms_and_codes_only(tmp_path):
    img = read_xray(write_xray(tmp_path / "p.dcm", RAMP, modality="MG", sop_class=MG, patient_id="PAT-7",
                               sop_uid="1.2.3.4.5.6", view="MLO"), SECRET)
    assert (img.patient, img.image, img.modality, img.view) == (pseudonym(SECRET, "PAT-7"),
                                                                pseudonym(SECRET, "1.2.3.4.5.6"), "MG", "MLO")
    assert "DOE" not in repr(img) and "1950" not in repr(img)


@pytest.mark.parametrize("kw,code", [(dict(modality="CT"), "not-xray"),
                                     (dict(modality="CR", sop_class=SC), "secondary-capture"),
                                     (dict(modality="CR", sop_class="1.2.840.10008.5.1.4.1.1.4"), "not-image-storage"),
                                     (dict(burned_in="YES"), "burned-in"), (dict(patient_id=""), "no-id")])
def test_files_tlx_may_not_read_are_rejected(tmp_path, kw, code):
    path = write_xray(tmp_path / "x.dcm", RAMP, **kw)
    with pytest.raises(SliceRejected) as err:
        read_xray(path, SECRET)
    assert err.value.code == code and "DOE" not in err.value.reason
    if code == "secondary-capture":
        assert read_xray(path, SECRET, allow_secondary_capture=True).modality == "CR"


def test_cr_storage_is_read(tmp_path):
    assert read_xray(write_xray(tmp_path / "c.dcm", RAMP, modality="CR", sop_class=CR), SECRET).pixels.shape == (3, 16)
