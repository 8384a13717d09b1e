"""`tlx audit` knows the columns of the kinds tlx convert writes for the study datasets."""
import polars as pl

from datakit.audit import audit_dataset
from datakit.convert.cxr import CxrOptions, convert_cxr
from datakit.convert.image_mask import ImageMaskOptions, convert_image_mask
from tests.fixtures.cxr_sources import write_mimic
from tests.fixtures.mask_sources import write_siim

SECRET = b"0123456789abcdef-an-x-ray-secret"


def _rewrite(path, **columns):
    frame = pl.read_parquet(path)
    frame.with_columns(**{k: pl.Series(k, v(frame[k].to_list())) for k, v in columns.items()}).write_parquet(path)


def test_labels_views_and_pseudonyms_are_checked(tmp_path):
    root, _ = write_mimic(tmp_path / "mimic")
    convert_cxr(CxrOptions(root=str(root), out=str(tmp_path / "cxr"), preset="mimic-cxr", size=8, workers=1))
    assert audit_dataset(tmp_path / "cxr", workers=1).findings == []
    _rewrite(tmp_path / "cxr" / "slices.parquet", labels=lambda v: [["Flu"]] + v[1:],
             view=lambda v: ["DOE^JANE"] + v[1:])
    found = {(f.where, f.check) for f in audit_dataset(tmp_path / "cxr", workers=1).findings}
    assert found == {("column labels, row 0", "not one of the dataset's classes"),
                     ("column view, row 0", "not a code (at most 64 letters, digits, spaces or _.,+/:()-)")}

    siim, _, _ = write_siim(tmp_path / "siim", SECRET, n=6)
    (tmp_path / "key").write_bytes(SECRET)
    convert_image_mask(ImageMaskOptions(root=str(siim), out=str(tmp_path / "seg"), preset="siim-acr", size=24,
                                        workers=1, val=1, test=1, secret=str(tmp_path / "key")))
    assert audit_dataset(tmp_path / "seg", workers=1).findings == []
    _rewrite(tmp_path / "seg" / "slices.parquet", patient=lambda v: ["17001-aaaa"] + v[1:])
    found = {(f.where, f.check) for f in audit_dataset(tmp_path / "seg", workers=1).findings}
    assert found == {("column patient, row 0", "not a pseudonym (16 hex digits)")}
