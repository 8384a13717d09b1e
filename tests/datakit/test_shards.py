"""ShardWriter output loads with webdataset and DALI, is byte-reproducible and refuses bad keys."""
import numpy as np
import pytest

from datakit.shards import ShardWriter, sha256_file, ustar_header
from tests.fixtures.optional import need


def _write(path, n=5):
    with ShardWriter(path) as w:
        for i in range(n):
            w.write(f"p00ab-v{i // 2:04d}-s{i:04d}", {"hu.raw": np.full((4, 4), i, "<i2").tobytes(),
                                                      "cls": str(i % 3).encode()})
    return w.info


def test_info_counts_and_hash(tmp_path):
    info = _write(tmp_path / "a.tar")
    assert info.samples == 5
    assert info.bytes == (tmp_path / "a.tar").stat().st_size
    assert info.sha256 == sha256_file(tmp_path / "a.tar")
    assert not list(tmp_path.glob("*.partial*"))
    lines = (tmp_path / "a.idx").read_text().splitlines()
    assert lines[0] == "v1.2 5" and len(lines) == 6


def test_byte_reproducible(tmp_path):
    assert _write(tmp_path / "a.tar").sha256 == _write(tmp_path / "b.tar").sha256


def _tarfile_shard(path, samples):
    """The same samples written by Python's tarfile, as ShardWriter did before it built its own headers."""
    import io
    import tarfile

    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for key, members in samples:
            for ext, data in members.items():
                ti = tarfile.TarInfo(f"{key}.{ext}")
                ti.size, ti.mtime, ti.mode, ti.uid, ti.gid, ti.uname, ti.gname = len(data), 0, 0o644, 0, 0, "", ""
                tar.addfile(ti, io.BytesIO(data))


@pytest.mark.parametrize("sizes", [[0], [1, 511, 512, 513], [10239, 10240 - 512 * 3], [131072, 7, 70000]])
def test_shards_are_byte_for_byte_what_tarfile_writes(tmp_path, sizes):
    import tarfile

    rng = np.random.default_rng(len(sizes))
    samples = [(f"k{i:03d}-{'x' * (i * 30 % 80)}", {"hu.zst": rng.bytes(n), "cls": str(i).encode()})
               for i, n in enumerate(sizes)]
    with ShardWriter(tmp_path / "ours.tar") as w:
        for key, members in samples:
            w.write(key, members)
    _tarfile_shard(tmp_path / "ref.tar", samples)
    assert (tmp_path / "ours.tar").read_bytes() == (tmp_path / "ref.tar").read_bytes()
    ti = tarfile.TarInfo("a" * 100)
    ti.size, ti.mtime, ti.mode, ti.uid, ti.gid, ti.uname, ti.gname = 12345, 0, 0o644, 0, 0, "", ""
    assert ustar_header("a" * 100, 12345) == ti.tobuf(tarfile.USTAR_FORMAT)
    with pytest.raises(ValueError, match="exceeds the 8 GiB"):
        ustar_header("k.cls", 8 ** 11)


def test_webdataset_reads_every_sample(tmp_path):
    wds = need("webdataset")
    _write(tmp_path / "a.tar")
    samples = list(wds.WebDataset(str(tmp_path / "a.tar"), shardshuffle=False))
    assert [s["__key__"] for s in samples] == [f"p00ab-v{i // 2:04d}-s{i:04d}" for i in range(5)]
    assert [np.frombuffer(s["hu.raw"], "<i2")[0] for s in samples] == list(range(5))
    assert [int(s["cls"]) for s in samples] == [0, 1, 2, 0, 1]


def test_dali_reads_every_sample_with_our_index(tmp_path):
    need("nvidia.dali")
    from nvidia.dali import fn, pipeline_def

    _write(tmp_path / "a.tar")

    @pipeline_def(batch_size=5, num_threads=1, device_id=None)
    def pipe():
        return tuple(fn.readers.webdataset(paths=[str(tmp_path / "a.tar")], index_paths=[str(tmp_path / "a.idx")],
                                           ext=["hu.raw", "cls"]))

    p = pipe()
    p.build()
    hu, cls = p.run()
    assert [int(np.array(hu[i]).view("<i2")[0]) for i in range(5)] == list(range(5))
    assert [int(bytes(np.array(cls[i]))) for i in range(5)] == [0, 1, 2, 0, 1]


@pytest.mark.parametrize("key", ["a.b", "a/b", "1.2.840.10008", ""])
def test_refuses_keys_readers_would_split(tmp_path, key):
    w = ShardWriter(tmp_path / "a.tar")
    with pytest.raises(ValueError, match=r"must match \[A-Za-z0-9_-\]\+"):
        w.write(key, {"cls": b"1"})
    w.abort()
    assert not list(tmp_path.iterdir())


def test_refuses_duplicate_key_and_long_names(tmp_path):
    w = ShardWriter(tmp_path / "a.tar")
    w.write("k", {"cls": b"1"})
    with pytest.raises(ValueError, match="written twice"):
        w.write("k", {"cls": b"1"})
    with pytest.raises(ValueError, match="at most 100 characters"):
        w.write("x" * 98, {"cls": b"1"})
    w.abort()


def test_failed_writer_leaves_no_final_shard(tmp_path):
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path / "a.tar") as w:
            w.write("k", {"cls": b"1"})
            raise RuntimeError("killed")
    assert not list(tmp_path.iterdir())
