"""Copies of one file (same SOPInstanceUID): a corrupt first copy falls back to the next, and no
reason claims "kept" for a file that was rejected (issue 10, item 1). Also a series mixing matrix
sizes (item 5)."""
import numpy as np
import polars as pl
from pydicom.uid import RLELossless

from datakit.dicom_header import read_header
from datakit.pipeline import shard
from datakit.plan import PlanConfig
from datakit.verify import verify_dataset
from datakit.write_config import RunOptions, WriteConfig
from tests.datakit.test_dicom import make, save

N = 8


def write_series(folder, uid: str, n: int = N, matrix=(40, 36), ts=RLELossless, first=0):
    """n axial slices of one series, each with its own pixels and SOP UID."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(int(uid.split(".")[-1]))
    paths = []
    for i in range(first, first + n):
        pixels = rng.integers(0, 1500, matrix).astype(np.int16)
        ds = make(pixels, SOPInstanceUID=f"{uid}.{i}", SeriesInstanceUID=uid, StudyInstanceUID="1.2.9",
                  ImagePositionPatient=[0, 0, 2.5 * i], InstanceNumber=i + 1)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        paths.append(save(ds, folder / f"IM{i:04d}", ts, pixels=pixels))
    return paths


def corrupt_rle(path):
    """200 bytes of the RLE stream overwritten, the file's length unchanged."""
    data = bytearray(path.read_bytes())
    middle = read_header(path).pixel_offset + (len(data) - read_header(path).pixel_offset) // 2
    data[middle:middle + 200] = b"\x80" * 200
    path.write_bytes(bytes(data))


def run_shard(root, out, monkeypatch):
    monkeypatch.setenv("TLX_SECRET", "tlx-copies-test-secret-0123")
    return shard(root, out, plan_config=PlanConfig(min_slices=3, fractions=(1.0, 0.0, 0.0)),
                 write_config=WriteConfig(size=(16, 16), min_coverage=0.0), options=RunOptions(workers=1))


def test_a_corrupt_first_copy_falls_back_to_the_intact_one(tmp_path, monkeypatch):
    """One RLE series stored twice; the copy with the smaller path has 6 of 8 slices corrupt. Before:
    those 6 were lost as `undecodable` and the intact copies rejected as `duplicate-sop`, whose reason
    said the (rejected) file named in duplicate_of was kept."""
    first = write_series(tmp_path / "root" / "a", "1.2.826.7")
    second = write_series(tmp_path / "root" / "b", "1.2.826.7")
    for path in first[:6]:
        corrupt_rle(path)
    summary = run_shard(tmp_path / "root", tmp_path / "data", monkeypatch)
    manifest = summary.write.manifest
    rejects = pl.read_parquet(tmp_path / "data" / "rejects.parquet")
    rel = {p: p.relative_to(tmp_path / "root").as_posix() for p in first + second}

    assert manifest["files"]["kept"] == N                            # every slice, 6 of them from b/
    assert manifest["files"]["found"] == 2 * N == manifest["files"]["kept"] + len(rejects)
    bad = rejects.filter(pl.col("code") == "undecodable")
    assert sorted(bad["path"]) == sorted(rel[p] for p in first[:6]) and set(bad["stage"]) == {"write"}
    dup = rejects.filter(pl.col("code") == "duplicate-sop")
    assert sorted(dup["path"]) == sorted(rel[p] for p in second[6:])
    assert sorted(dup["duplicate_of"]) == sorted(rel[p] for p in first[6:])
    # No reject names, as the file standing for it, a file that was itself rejected.
    assert not set(rejects["duplicate_of"].drop_nulls()) & set(rejects["path"])
    assert "kept" not in " ".join(dup["reason"])
    assert verify_dataset(tmp_path / "data").ok


def test_when_every_copy_is_corrupt_each_is_rejected_with_its_own_code(tmp_path, monkeypatch):
    first = write_series(tmp_path / "root" / "a", "1.2.826.8")
    second = write_series(tmp_path / "root" / "b", "1.2.826.8")
    for path in (first[0], second[0]):
        corrupt_rle(path)
    second[1].write_bytes(second[1].read_bytes()[:-300])                 # the second copy of slice 1: cut short
    corrupt_rle(first[1])
    summary = run_shard(tmp_path / "root", tmp_path / "data", monkeypatch)
    rejects = pl.read_parquet(tmp_path / "data" / "rejects.parquet")
    code = dict(zip(rejects["path"], rejects["code"]))
    assert summary.write.manifest["files"]["kept"] == N - 2
    assert (code["a/IM0000"], code["b/IM0000"]) == ("undecodable", "undecodable")
    assert (code["a/IM0001"], code["b/IM0001"]) == ("undecodable", "truncated")
    assert len(rejects) + N - 2 == 2 * N and len(set(rejects["path"])) == len(rejects)
    assert verify_dataset(tmp_path / "data").ok


def test_a_series_mixing_matrix_sizes_keeps_its_most_common_one(tmp_path, monkeypatch):
    write_series(tmp_path / "root" / "s", "1.2.826.9", n=6)
    write_series(tmp_path / "root" / "s", "1.2.826.9", n=2, matrix=(64, 64), first=6)
    summary = run_shard(tmp_path / "root", tmp_path / "data", monkeypatch)
    rejects = pl.read_parquet(tmp_path / "data" / "rejects.parquet")
    assert summary.write.manifest["files"]["kept"] == 6
    assert rejects.select("path", "code").rows() == [("s/IM0006", "mixed-matrix"), ("s/IM0007", "mixed-matrix")]
    assert set(rejects["reason"]) == {"its series mixes matrix sizes: this slice is 64x64, most of the series 40x36"}


def test_fallbacks_are_byte_identical_across_workers(tmp_path, monkeypatch):
    first = write_series(tmp_path / "root" / "a", "1.2.826.10")
    write_series(tmp_path / "root" / "b", "1.2.826.10")
    corrupt_rle(first[3])
    run_shard(tmp_path / "root", tmp_path / "one", monkeypatch)
    monkeypatch.setenv("TLX_SECRET", "tlx-copies-test-secret-0123")
    shard(tmp_path / "root", tmp_path / "two", plan_config=PlanConfig(min_slices=3, fractions=(1.0, 0.0, 0.0)),
          write_config=WriteConfig(size=(16, 16), min_coverage=0.0), options=RunOptions(workers=2))
    for name in ("manifest.json", "rejects.parquet", "slices.parquet", "shards/train/train-000000.tar"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name


def test_a_volume_staged_before_fallbacks_existed_still_reads(tmp_path):
    """A write begun by the previous version and resumed by this one: its staged files lack source_row
    and failures (no copy was tried), which read as nulls instead of failing the assembly."""
    import pyarrow as pa

    from datakit.manifest import Layout
    from datakit.write_staging import STAGED_SCHEMA, Staging

    staging = Staging(Layout(tmp_path))
    old = pa.schema([f for f in STAGED_SCHEMA if f.name not in ("source_row", "failures")])
    path = staging.volume_path("ab12")
    path.parent.mkdir(parents=True)
    with pa.OSFile(str(path), "wb") as f, pa.ipc.new_file(f, old) as writer:
        writer.write_table(pa.table({"row": [7], "slice_index": [0], "key": ["ab12-00000"], "code": [None],
                                     "reason": [None], "coverage": [0.5], "pixel_hash": ["h"], "payload": [b"x"]},
                                    schema=old))
    meta = staging.read_meta("ab12").to_pylist()
    assert meta == [{"row": 7, "slice_index": 0, "key": "ab12-00000", "code": None, "reason": None, "coverage": 0.5,
                     "pixel_hash": "h", "source_row": None, "failures": None}]
