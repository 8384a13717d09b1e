"""Slices whose pixels may show text (names, dates, ids) or a face: what the header says about it.

    flag = burned_in_flag(header.values)    # None, or a code of FLAGS, e.g. "annotation"
    BURNED_IN_REASONS[flag]                 # the sentence plan's `burned-in` reject gives

Scan stores the flag of every file in the index's `burned_in` column; plan rejects flagged
candidates (code `burned-in`) unless `--allow-burned-in`, which the manifest then records.
tlx reads no text in pixels (no OCR): this is all it knows, from three header fields:

- BurnedInAnnotation (0028,0301) YES: the image shows text identifying the patient.
- RecognizableVisualFeatures (0028,0302) YES: the image shows a face or other features
  that identify the patient (e.g. a volume rendering of a head).
- ImageType naming what typically carries burned-in text and is not already rejected at scan
  (scan rejects secondary captures, SCREEN SAVE and DOSE images): screen captures, reports,
  filming and print pages, and 3D renderings (VRT, SSD), which show faces and annotations.
  Many exports lack the two tags above, so ImageType is what is left to go by.

A value of either tag other than YES or NO (a broken export) cannot be read as NO: it is
flagged too. Absent or empty tags do not flag a slice.
"""
from __future__ import annotations

from collections.abc import Mapping

BURNED_IN_TAGS = {"BurnedInAnnotation": "annotation", "RecognizableVisualFeatures": "visual-features"}
# Words of ImageType values (split at spaces, `_` and `-`) that typically mark an image with burned-in
# text or a rendered face. Axial ORIGINAL/DERIVED, PRIMARY/SECONDARY, AXIAL, MPR, MIP do not.
SUSPECT_IMAGE_TYPE_WORDS = ("CAPTURE", "SCREENSHOT", "SAVE", "SCREENSAVE", "REPORT", "FILMING", "PRINT",
                            "VRT", "SSD", "3D")

BURNED_IN_REASONS = {
    "annotation": "BurnedInAnnotation is YES: its pixels show text that identifies the patient",
    "annotation-invalid": "BurnedInAnnotation is neither YES nor NO, so burned-in text cannot be ruled out",
    "visual-features": "RecognizableVisualFeatures is YES: its pixels show features (a face) that identify "
                       "the patient",
    "visual-features-invalid": "RecognizableVisualFeatures is neither YES nor NO, so identifying features "
                               "cannot be ruled out",
    **{f"image-type-{w.lower()}": f"its ImageType says {w}: such images typically carry burned-in text or a "
                                   "rendered face" for w in SUSPECT_IMAGE_TYPE_WORDS},
}
FLAGS = tuple(BURNED_IN_REASONS)
ALLOW_HINT = "tlx reads no text in pixels; --allow-burned-in keeps such slices (recorded in the manifest)"


def burned_in_flag(values: Mapping) -> str | None:
    """The first reason (in BURNED_IN_REASONS order) to think a slice shows identifying text or
    features, from its header values (keyword -> value, as datakit.dicom_header reads them)."""
    for keyword, code in BURNED_IN_TAGS.items():
        value = values.get(keyword)
        text = str(value).strip().upper() if value is not None else ""
        if text == "YES":
            return code
        if text not in ("", "NO"):
            return f"{code}-invalid"
    for term in values.get("ImageType") or ():
        words = str(term).upper().replace("_", " ").replace("-", " ").split()
        for w in SUSPECT_IMAGE_TYPE_WORDS:
            if w in words:
                return f"image-type-{w.lower()}"
    return None


def burned_in_warning(count: int) -> str:
    """The manifest's warning when --allow-burned-in kept flagged slices in the plan."""
    return (f"--allow-burned-in was used: {count} planned slices flagged as likely to show burned-in text or "
            "a face (BurnedInAnnotation, RecognizableVisualFeatures or ImageType) were not rejected; their "
            "pixels may identify patients (tlx reads no text in pixels)")


def plan_burned_in_warnings(plan_json: dict) -> list[str]:
    """The manifest's record of --allow-burned-in (besides config.plan.allow_burned_in): [] without it."""
    if not (plan_json.get("config") or {}).get("allow_burned_in"):
        return []
    return [burned_in_warning(int(plan_json.get("burned_in_planned") or 0))]
