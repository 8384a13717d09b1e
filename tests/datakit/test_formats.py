"""Format version 2 (codec zstd-shuffle, zstd frames with checksums, XXH3-128 pixel hashes) and the
datasets of version 1 that tlx still reads: loads, verifies, trains a step. Corrupt members are one
error naming the shard and the sample; the shard size check on first open.

tests/fixtures/format_v1 is a dataset as `tlx shard` wrote it before version 2 (commit 667e151:
`tlx synth --patients 3 --matrix 32 --seed 0`, then `tlx shard --size 32 --subset-size 72
--samples-per-shard 16 --min-slices 10`; work/ left out): codec zstd without frame checksums,
BLAKE2b-128 pixel hashes, format_version 1.
"""
import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from datakit.errors import DatakitError
from datakit.pixel_hash import pixel_hash
from datakit.read import MemberSpec, SampleReader, byte_unshuffle, decode_member, open_dataset
from datakit.verify import verify_dataset
from datakit.write_convert import Encoder, byte_shuffle
from tests.fixtures.datasets import make_ct_dataset
from tlxcore.errors import UserError

V1 = Path(__file__).parents[1] / "fixtures" / "format_v1"


@pytest.fixture
def v1(tmp_path):
    shutil.copytree(V1, tmp_path / "v1")
    return tmp_path / "v1"


def _first_member(root: Path, ext: str) -> tuple[Path, int, int, str]:
    """(shard, data offset, size, key) of the first sample's `ext` member of the first train shard."""
    idx = sorted((root / "shards" / "train").glob("*.idx"))[0]
    tok = idx.read_text().splitlines()[1].split()
    j = tok.index(ext)
    return idx.with_suffix(".tar"), int(tok[j + 1]), int(tok[j + 2]), tok[j + 3].split(".")[0]


def test_format_1_dataset_loads_and_verifies_with_its_own_pixel_hash(v1):
    ds = open_dataset(v1)
    assert ds.manifest["format_version"] == 1 and "pixel_hash" not in ds.manifest
    ext, spec = ds.member("image")
    assert (ext, spec.codec, spec.shape) == ("hu.zst", "zstd", (32, 32))
    report = verify_dataset(v1, workers=1, decode=True)
    assert report.problems == [] and "pixels" in report.checked and report.samples == 72
    slices = pl.read_parquet(v1 / "slices.parquet")
    table, reader = ds.sample_table("train"), SampleReader(ds)
    train = slices.filter(pl.col("split") == "train")
    assert [pixel_hash(reader.read(table, i, ext), "blake2b-128") for i in range(len(table))] == \
        train["pixel_hash"].to_list()


def test_format_1_dataset_trains_a_step(v1, tmp_path):
    from trainer import simclr

    state = simclr.main(["--data", str(v1), "--out", str(tmp_path / "run"), "--device", "cpu", "--model",
                         "resnet-tiny", "--image-size", "32", "--batch-size", "8", "--epochs", "1", "--max-steps", "1",
                         "--workers", "0", "--loader", "torch", "--eval-every", "0"])
    assert state["step"] == 1
    line = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert np.isfinite(line["train_loss"])


@pytest.mark.parametrize("dtype", ["<i2", ">i2", "<u2", "|u1", "<i4", ">f4"])
def test_byte_shuffle_round_trips_every_value_and_byte_order(dtype):
    rng = np.random.default_rng(0)
    dt = np.dtype(dtype)
    if dt.kind == "f":
        arr = rng.normal(0, 1e3, (17, 9)).astype(dt)
    else:
        info = np.iinfo(dt)
        arr = rng.integers(info.min, info.max, (17, 9), endpoint=True).astype(dt)
        arr.flat[:2] = info.min, info.max
    planes = arr.view(np.uint8).reshape(arr.size, dt.itemsize).T.tobytes()     # plane j = byte j of every element
    out = byte_unshuffle(planes, dt).reshape(arr.shape)
    assert np.array_equal(out, arr) and out.dtype == dt.newbyteorder("=")
    if dtype == "<i2":                                                           # the writer's side
        assert byte_shuffle(arr).tobytes() == planes


def test_zstd_shuffle_is_smaller_than_zstd_and_decodes_to_the_same_pixels():
    y, x = np.mgrid[-1:1:256j, -1:1:256j]
    body = x ** 2 + y ** 2 < 0.7          # noisy tissue in air at the HU floor, as tlx stores a slice
    img = np.where(body, 40.0 + np.random.default_rng(1).normal(0, 20, (256, 256)), -1024.0)
    stored = np.rint(img).astype("<i2")
    spec = MemberSpec("hu.szst", "image", "zstd-shuffle", "int16", "little", (256, 256))
    shuffled, plain = Encoder("zstd-shuffle").encode(stored), Encoder("zstd").encode(stored)
    assert np.array_equal(decode_member(spec, shuffled), stored)
    assert len(shuffled) < 0.9 * len(plain)


def _corrupt_every_byte(path: Path, offset: int, size: int, step: int = 1):
    original = path.read_bytes()
    for i in range(offset, offset + size, step):
        data = bytearray(original)
        data[i] ^= 0x04
        path.write_bytes(bytes(data))
        yield i
    path.write_bytes(original)


def test_a_flipped_byte_in_a_format_2_member_is_an_error_naming_shard_and_key(tmp_path):
    root = make_ct_dataset(tmp_path / "ds", splits={"train": 8}, codec="zstd-shuffle")
    ds = open_dataset(root)
    table, (shard, offset, size, key) = ds.sample_table("train"), _first_member(root, "hu.szst")
    want = SampleReader(ds).read(table, 0, "hu.szst")
    errors = 0
    for _ in _corrupt_every_byte(shard, offset, size):         # every byte of the member, one at a time
        try:
            got = SampleReader(ds).read(table, 0, "hu.szst")
        except DatakitError as exc:
            text = str(exc)
            assert text.startswith(f"{shard}: sample {key}: member 'hu.szst' (zstd-shuffle) does not decode: ")
            assert "\n" not in text and text.endswith("run `tlx verify` on the dataset")
            errors += 1
            continue
        assert np.array_equal(got, want)                        # a flip zstd may ignore (an unused bit)
    assert errors >= 0.98 * size                                # (the rest changed nothing read)


def test_format_1_members_fail_loudly_where_zstd_can_tell_and_sha256_catches_the_rest(v1):
    ds = open_dataset(v1)
    table = ds.sample_table("train")
    shard, offset, size, key = _first_member(v1, "hu.zst")
    want = SampleReader(ds).read(table, 0, "hu.zst")
    outcomes = {"error": 0, "silent": 0, "same": 0}
    for _ in _corrupt_every_byte(shard, offset, size):
        try:
            got = SampleReader(ds).read(table, 0, "hu.zst")
        except DatakitError as exc:
            assert str(exc).startswith(f"{shard}: sample {key}: member 'hu.zst' (zstd) does not decode")
            outcomes["error"] += 1
            continue
        outcomes["silent" if not np.array_equal(got, want) else "same"] += 1
        with pytest.raises(DatakitError, match=rf"{shard.name}: sha256 differs from the manifest's"):
            SampleReader(ds, check="sha256").read(table, 0, "hu.zst")
    # Format 1 frames carry no checksum: most flips decode to other pixels (why format 2 adds it).
    assert outcomes["error"] > 0 and outcomes["silent"] > outcomes["error"]


def test_shard_check_option_and_its_environment_variable(v1, monkeypatch):
    ds = open_dataset(v1)
    table = ds.sample_table("train")
    shard = ds.split_shards("train")[0].path
    with open(shard, "ab") as f:
        f.write(b"\0" * 512)
    with pytest.raises(DatakitError, match=rf"{shard.name}: \d+ bytes, the manifest says \d+: the shard was cut "
                                           r"short or changed after it was written; run `tlx verify`"):
        SampleReader(ds).read(table, 0, "hu.zst")
    assert SampleReader(ds, check="none").read(table, 0, "cls") == table_label(v1, 0)
    monkeypatch.setenv("TLX_SHARD_CHECK", "none")
    assert SampleReader(ds).read(table, 0, "cls") == table_label(v1, 0)
    monkeypatch.setenv("TLX_SHARD_CHECK", "md5")
    with pytest.raises(DatakitError, match=r"shard check 'md5' \(TLX_SHARD_CHECK\) is not one of: size, sha256, none"):
        SampleReader(ds)


def table_label(root: Path, i: int) -> int:
    return pl.read_parquet(root / "slices.parquet").filter(pl.col("split") == "train")["label_index"][i]


def test_a_decode_error_in_a_loader_worker_stays_one_line(v1):
    """torch rebuilds a worker's exception with the worker's traceback as its message; str() of a
    UserError gives back the one line the reader raised, which is what the entry points print."""
    ds = open_dataset(v1)
    shard, offset, size, key = _first_member(v1, "hu.zst")
    data = bytearray(shard.read_bytes())
    data[offset:offset + 4] = b"\0\0\0\0"                   # not a zstd frame any more
    shard.write_bytes(bytes(data))
    reader, table = SampleReader(ds), ds.sample_table("train")

    class One(torch.utils.data.Dataset):
        def __len__(self):
            return 1

        def __getitem__(self, i):
            return reader.read(table, i, "hu.zst")

    with pytest.raises(UserError) as caught:
        next(iter(torch.utils.data.DataLoader(One(), num_workers=1)))
    assert "Original Traceback" in caught.value.args[0]
    text = str(caught.value)
    assert "\n" not in text and text.startswith(f"{shard}: sample {key}: member 'hu.zst' (zstd) does not decode")
