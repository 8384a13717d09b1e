"""The dataset reader follows docs/dataset-format.md and refuses what it cannot read."""
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from datakit.errors import DatakitError
from datakit.read import SampleReader, open_dataset
from tests.fixtures.datasets import CLASSES, make_ct_dataset


@pytest.fixture(scope="module")
def ds_root(tmp_path_factory):
    return make_ct_dataset(tmp_path_factory.mktemp("ds"), shard_sizes={"train": [5, 11, 3, 18]})


def test_manifest_members_and_shards(ds_root):
    ds = open_dataset(ds_root)
    assert ds.kind == "ct-slices" and ds.classes == CLASSES
    ext, spec = ds.member("image")
    assert (ext, spec.codec, spec.shape, spec.nbytes) == ("hu.zst", "zstd", (32, 32), 2048)
    assert ds.member("label")[0] == "cls"
    assert [s.samples for s in ds.split_shards("train")] == [5, 11, 3, 18]
    assert (ds.num_samples("train"), ds.num_samples("val"), ds.num_samples("test")) == (37, 14, 14)


@pytest.mark.parametrize("codec", ["zstd", "raw"])
def test_table_reads_every_sample_in_slices_parquet_order(tmp_path, codec):
    root = make_ct_dataset(tmp_path, codec=codec, splits={"train": 12, "val": 5})
    ds = open_dataset(root)
    rows = pq.read_table(root / "slices.parquet").to_pylist()
    reader = SampleReader(ds)
    for split in ("train", "val"):
        table = ds.sample_table(split, with_keys=True)
        want = [r for r in rows if r["split"] == split]
        assert list(table.keys) == [r["key"] for r in want]
        ext = ds.member("image")[0]
        for i, r in enumerate(want):
            hu = reader.read(table, i, ext)
            assert hu.dtype == np.dtype("<i2") and hu.shape == (32, 32)
            assert reader.read(table, i, "cls") == r["label_index"]
            assert hu.min() >= -1024 and hu.max() <= 3071
        # the bytes the reader returns are exactly what the writer hashed
        import hashlib
        assert hashlib.sha256(reader.read(table, 0, ext).tobytes()).hexdigest()[:16] == want[0]["pixel_hash"]


def _edit_manifest(root, **changes):
    m = json.loads((root / "manifest.json").read_text())
    m.update(changes)
    (root / "manifest.json").write_text(json.dumps(m))


def test_refuses_missing_unknown_version_and_codec(tmp_path):
    with pytest.raises(DatakitError, match=r"is not a tlx dataset: no manifest.json"):
        open_dataset(tmp_path)
    root = make_ct_dataset(tmp_path / "a", splits={"train": 4})
    _edit_manifest(root, format_version=3)
    with pytest.raises(DatakitError, match=r"format_version 3 is unknown to this tlx; it reads 1, 2 \(update tlx\)"):
        open_dataset(root)
    _edit_manifest(root, format_version=1, members={"hu.lz4": {"role": "image", "codec": "lz4"}})
    with pytest.raises(DatakitError, match=r"member 'hu.lz4' has codec 'lz4'; known: zstd-shuffle, zstd, raw, "
                                           r"ascii-int, png, jpeg"):
        open_dataset(root)


def test_refuses_index_that_disagrees_with_manifest(tmp_path):
    root = make_ct_dataset(tmp_path, splits={"train": 6})
    ds = open_dataset(root)
    with pytest.raises(DatakitError, match="split 'training' is not one of train, val, test"):
        ds.sample_table("training")
    with pytest.raises(DatakitError, match="no member with role 'mask'; the dataset has roles image, label"):
        ds.member("mask")
    idx = root / "shards/train/train-000000.idx"
    lines = idx.read_text().splitlines()
    idx.write_text("\n".join(lines[:2] + [" ".join(lines[2].split()[:4])] + lines[3:]) + "\n")  # a member gone
    with pytest.raises(DatakitError, match=r"train-000000.idx line 3: sample has no member 'cls' \(the manifest"):
        ds.sample_table("train")
    idx.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(DatakitError, match=r"lists 5 samples \(header 6\), manifest says 6"):
        ds.sample_table("train")
    idx.unlink()
    with pytest.raises(DatakitError, match="index .*train-000000.idx' of shard train-000000.tar is missing"):
        ds.sample_table("train")


def test_truncated_shard_is_a_clear_error(tmp_path):
    root = make_ct_dataset(tmp_path, splits={"train": 6})
    ds = open_dataset(root)
    table = ds.sample_table("train")
    tar = root / "shards/train/train-000000.tar"
    size = tar.stat().st_size
    tar.write_bytes(tar.read_bytes()[: int(table.offset["hu.zst"][5]) + 10])
    with pytest.raises(DatakitError, match=rf"train-000000.tar: {int(table.offset['hu.zst'][5]) + 10} bytes, the "
                                           rf"manifest says {size}: the shard was cut short or changed"):
        SampleReader(ds).read(table, 0, "hu.zst")      # the size check on first open: sample 0 is intact
    with pytest.raises(DatakitError, match=r"short read at offset \d+ \(10 of \d+ bytes\); shard truncated\?"):
        SampleReader(ds, check="none").read(table, 5, "hu.zst")
