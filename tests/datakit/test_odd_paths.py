"""File and folder names that are not UTF-8 (a Latin-1 CD export) are scanned, stored losslessly and
converted, also on resume (issue 10, item 11)."""
import os

import polars as pl

from datakit.pipeline import shard
from datakit.plan import PlanConfig
from datakit.verify import verify_dataset
from datakit.walk import source_path, storable
from datakit.write_config import RunOptions, WriteConfig
from tests.datakit.test_write_copies import N, write_series

LATIN1 = b"Pat\xe9 M\xfcller"          # 'Paté Müller' in Latin-1: not UTF-8


def test_a_name_that_is_not_utf8_is_kept_and_converted(tmp_path, monkeypatch):
    root = tmp_path / "root"
    root.mkdir()
    folder = os.fsdecode(os.fsencode(root) + b"/" + LATIN1)
    write_series(type(root)(folder), "1.2.826.11")
    (root / "ok").mkdir()
    (root / "ok" / os.fsdecode(b"notes-\xff.txt")).write_bytes(b"not DICOM")
    monkeypatch.setenv("TLX_SECRET", "tlx-paths-test-secret-0123")
    options = dict(plan_config=PlanConfig(min_slices=3, fractions=(1.0, 0.0, 0.0)),
                   write_config=WriteConfig(size=(16, 16), min_coverage=0.0), options=RunOptions(workers=1))
    summary = shard(root, tmp_path / "data", **options)
    assert summary.write.manifest["files"] == {"found": N + 1, "kept": N, "rejected": 1,
                                               "rejected_by_code": {"not-dicom": 1}}
    index = pl.read_parquet(tmp_path / "data" / "work" / "index.parquet")
    shown = "Pat\\xe9 M\\xfcller/IM0000"
    row = index.filter(pl.col("path") == shown).row(0, named=True)
    assert row["path_bytes"] == LATIN1 + b"/IM0000"
    assert os.path.exists(os.path.join(os.fsencode(root), os.fsencode(source_path(row))))
    rejects = pl.read_parquet(tmp_path / "data" / "rejects.parquet")
    assert rejects["path"].to_list() == ["ok/notes-\\xff.txt"]
    assert verify_dataset(tmp_path / "data").ok
    again = shard(root, tmp_path / "data", **options)           # --resume auto: the same folder again
    assert again.write.already_complete


def test_storable_round_trips_any_name():
    for name in ("plain/IM1", "Schädel/IM1", os.fsdecode(LATIN1 + b"/x"), os.fsdecode(b"\xff\xfe")):
        shown, raw = storable(name)
        shown.encode("utf-8")
        assert source_path({"path": shown, "path_bytes": raw}) == name
        assert (raw is None) == (shown == name)
