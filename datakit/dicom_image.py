"""Non-CT DICOM images (X-ray: CR, DX; mammography: MG) as 8-bit display images, under tlx shard's
reader and PHI rules.

    image = read_xray(path, secret)              # XrayImage; raises SliceRejected(code, reason)
    image.pixels                                 # uint8 [H, W], windowed for display, bone bright
    image.patient, image.image, image.study      # HMAC pseudonyms of PatientID and the UIDs

The same reader as `tlx shard`: the header by datakit.dicom_header.read_header, the pixels by
datakit.dicom_pixels.read_hu (stored values through the Modality LUT, i.e. RescaleSlope and
RescaleIntercept; "HU" is its CT name), the same burned-in rules (datakit.burned_in) and the
same pseudonyms (datakit.pseudonym, HMAC under the user's secret). Nothing of the header's text
reaches the caller: only pseudonyms, code strings that look like codes (datakit.dicom_header's
shown_term) and the display transform used.

Display (PS3.3 C.11.2), in this order:
- `lut`: the first VOI LUT of the VOI LUT Sequence, its output scaled by the LUT's own range;
- `window`: the first WindowCenter/WindowWidth pair with its VOILUTFunction (LINEAR,
  LINEAR_EXACT, SIGMOID), scaled from the function's output range [y_min, y_max];
- `minmax`: neither is present: the image's own minimum and maximum.
Both VOI steps are pydicom's (pydicom.pixels.apply_voi_lut). MONOCHROME1 images (brighter =
less signal) are inverted after the VOI, so every output shows bone bright.

Which files pass (code: reason, as rejects.parquet gives them): Modality CR, DX or MG (`not-xray`);
SOP class CR, DX or MG image storage, or secondary capture when `allow_secondary_capture` (public
X-ray sets such as SIIM-ACR and CBIS-DDSM were exported as secondary captures: `secondary-capture`);
no burned-in flag unless `allow_burned_in` (`burned-in`); a PatientID and SOPInstanceUID to make
pseudonyms of (`no-id`); pixels read_hu can read (its own codes).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from datakit.burned_in import BURNED_IN_REASONS, burned_in_flag
from datakit.dicom_header import SliceRejected, header_row, pydicom_quiet, read_header, shown_term
from datakit.dicom_pixels import read_hu
from datakit.pseudonym import pseudonym

XRAY_MODALITIES = ("CR", "DX", "MG")
XRAY_IMAGE_CLASSES = frozenset({
    "1.2.840.10008.5.1.4.1.1.1",                                    # CR Image Storage
    "1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1.1",  # Digital X-Ray (presentation, processing)
    "1.2.840.10008.5.1.4.1.1.1.2", "1.2.840.10008.5.1.4.1.1.1.2.1",  # Digital Mammography X-Ray
})
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
VOI_KINDS = ("lut", "window", "minmax")


@dataclass(frozen=True)
class XrayImage:
    pixels: np.ndarray        # uint8 [H, W]
    patient: str              # pseudonym of PatientID
    image: str                # pseudonym of SOPInstanceUID
    study: str | None         # pseudonym of StudyInstanceUID (None when absent)
    modality: str
    view: str | None          # ViewPosition as a code (PA, AP, LL, CC, MLO), None when absent or not a code
    laterality: str | None    # ImageLaterality (L, R) as a code
    voi: str                  # lut | window | minmax


def check_xray_header(values: dict, allow_secondary_capture: bool, allow_burned_in: bool) -> None:
    """SliceRejected unless the header is that of an X-ray or mammography image tlx may read."""
    modality, sop_class = values.get("Modality"), values.get("SOPClassUID")
    if modality not in XRAY_MODALITIES:
        raise SliceRejected("not-xray", f"Modality is {shown_term(modality) if modality else 'missing'}; "
                                        f"read here: {', '.join(XRAY_MODALITIES)}")
    if sop_class == SECONDARY_CAPTURE or str(sop_class or "").startswith(SECONDARY_CAPTURE + "."):
        if not allow_secondary_capture:
            raise SliceRejected("secondary-capture", "a secondary capture (it may be a screenshot with burned-in "
                                                     "text); --allow-secondary-capture reads X-ray sets exported so")
    elif sop_class not in XRAY_IMAGE_CLASSES:
        raise SliceRejected("not-image-storage", f"SOP class {shown_term(sop_class, 64) if sop_class else 'missing'} "
                                                 "is not CR, DX or MG image storage")
    flag = burned_in_flag(values)
    if flag is not None and not allow_burned_in:
        raise SliceRejected("burned-in", BURNED_IN_REASONS[flag])
    for keyword in ("PatientID", "SOPInstanceUID"):
        if not str(values.get(keyword) or "").strip():
            raise SliceRejected("no-id", f"no {keyword}: the image cannot get a pseudonym")


def read_xray(path: str | os.PathLike, secret: bytes, allow_secondary_capture: bool = False,
              allow_burned_in: bool = False) -> XrayImage:
    """One X-ray or mammogram as a display image with pseudonymous ids; SliceRejected(code, reason)."""
    header = read_header(path)
    values = header.values
    check_xray_header(values, allow_secondary_capture, allow_burned_in)
    modality_values = read_hu(path, header_row(header))       # stored values through the Modality LUT
    voi_ds = _voi_dataset(path)
    display, voi = display_values(modality_values, voi_ds)
    if values.get("PhotometricInterpretation") == "MONOCHROME1":
        display = 1.0 - display
    study = values.get("StudyInstanceUID")
    return XrayImage(pixels=np.round(display * 255).astype(np.uint8),
                     patient=pseudonym(secret, str(values["PatientID"]).strip()),
                     image=pseudonym(secret, str(values["SOPInstanceUID"]).strip()),
                     study=pseudonym(secret, str(study).strip()) if study else None,
                     modality=values["Modality"], view=_code(voi_ds.get("ViewPosition")),
                     laterality=_code(voi_ds.get("ImageLaterality")), voi=voi)


def _code(value) -> str | None:
    """A code string as tlx may show it (letters, digits, `_ . -` and spaces), else None."""
    if value is None or not str(value).strip():
        return None
    shown = shown_term(value)
    return None if shown.startswith("an invalid value") else shown.upper()


def _voi_dataset(path):
    """The header as pydicom reads it (pixels left out), for the VOI module and the view codes."""
    import pydicom
    with pydicom_quiet():
        try:
            return pydicom.dcmread(path, stop_before_pixels=True, force=True)
        except Exception as exc:  # noqa: BLE001 - read_header read it; a file pydicom cannot is a reject
            raise SliceRejected("unreadable-header", f"pydicom cannot read the VOI module ({type(exc).__name__})") \
                from exc


def display_values(values: np.ndarray, ds) -> tuple[np.ndarray, str]:
    """float64 [0, 1] display values of Modality LUT output `values` and which VOI gave them."""
    from pydicom.pixels import apply_voi_lut

    lut = ds.get("VOILUTSequence")
    has_lut = bool(lut) and lut[0].get("LUTDescriptor") is not None and lut[0].get("LUTData") is not None
    has_window = ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None
    try:
        with pydicom_quiet(), np.errstate(over="ignore"):    # SIGMOID's exp saturates at the far ends
            if has_lut:
                table = np.asarray(apply_voi_lut(np.arange(-(1 << 16), 1 << 16), ds), np.float64)
                out = np.asarray(apply_voi_lut(np.round(values).astype(np.int64), ds), np.float64)
                return _scaled(out, table.min(), table.max()), "lut"
            if has_window:
                lo, hi = np.asarray(apply_voi_lut(np.array([-1e15, 1e15]), ds), np.float64)
                return _scaled(np.asarray(apply_voi_lut(values.astype(np.float64), ds), np.float64), lo, hi), "window"
    except (ValueError, NotImplementedError, AttributeError, IndexError, TypeError, OverflowError) as exc:
        raise SliceRejected("bad-voi", f"the VOI LUT or window cannot be applied ({exc})") from exc
    values = values.astype(np.float64)
    return _scaled(values, float(values.min()), float(values.max())), "minmax"


def _scaled(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if not np.isfinite([lo, hi]).all() or hi <= lo:
        return np.zeros(values.shape, np.float64)
    return np.clip((values - lo) / (hi - lo), 0.0, 1.0)
