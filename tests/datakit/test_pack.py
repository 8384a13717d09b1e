"""`tlx pack`: the shareable copy holds every sample and count, no work/, no source path or name, and appears
only after tlx verify and tlx audit pass on it."""
import polars as pl
import pytest
from click.testing import CliRunner

from cli.main import cli
from datakit.audit_rules import TextChecker, load_deny_list
from datakit.errors import DatakitError
from datakit.pack import pack_dataset
from datakit.verify import verify_dataset
from tests.datakit.test_audit import deny_list  # noqa: F401 - the cohort's PHI as a fixture


def test_the_pack_keeps_every_sample_and_count_and_drops_every_source_path(sharded, deny_list, tmp_path):  # noqa: F811
    ds, _ = sharded
    result = CliRunner().invoke(cli, ["pack", str(ds), str(tmp_path / "share"), "--deny-list", str(deny_list)])
    assert result.exit_code == 0, result.output
    pack = tmp_path / "share"
    assert sorted(p.name for p in pack.iterdir()) == ["manifest.json", "rejects.parquet", "shards", "slices.parquet",
                                                     "volumes.parquet"]
    for name in ("manifest.json", "slices.parquet", "volumes.parquet"):
        assert (pack / name).read_bytes() == (ds / name).read_bytes()
    shards = sorted(p.relative_to(ds).as_posix() for p in (ds / "shards").rglob("*") if p.is_file())
    assert sorted(p.relative_to(pack).as_posix() for p in (pack / "shards").rglob("*") if p.is_file()) == shards
    before, after = pl.read_parquet(ds / "rejects.parquet"), pl.read_parquet(pack / "rejects.parquet")
    assert after.select("volume", "stage", "code").equals(before.select("volume", "stage", "code"))
    assert after["path"].null_count() == after["reason"].null_count() == len(after) == len(before) > 0
    # the source paths name the cohort's patients; none of it is left in any string of the pack's rejects
    strings = [c for c in after.columns if after[c].dtype == pl.String]
    assert not any(TextChecker(load_deny_list(deny_list)).check(after[c].to_arrow()) for c in strings)
    assert TextChecker(load_deny_list(deny_list)).check(before["path"].to_arrow())
    report = verify_dataset(pack)
    assert report.ok, report.problems
    assert report.samples == len(pl.read_parquet(ds / "slices.parquet")) > 0
    assert f"packed {len(shards) + 4} files into" in result.output
    assert "tlx verify and tlx audit passed" in result.output


def test_a_pack_that_fails_the_audit_is_not_written(sharded, tmp_path):
    ds, _ = sharded
    split = pl.read_parquet(ds / "slices.parquet")["patient"][0]   # a pseudonym, denied here to make the audit fail
    deny = tmp_path / "deny.txt"
    deny.write_text(split + "\n")
    with pytest.raises(DatakitError, match=r"tlx audit found \d+ problems in the pack .*nothing was written"):
        pack_dataset(ds, tmp_path / "share", deny_list=deny)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deny.txt"]   # no OUT, no half-made hidden folder


@pytest.mark.parametrize("where, message", [
    ("inside", r"is inside the dataset .*; give a folder outside it"),
    ("full", r"exists and is not an empty folder; give a new folder for the pack"),
])
def test_bad_outputs_are_refused_before_anything_is_written(sharded, tmp_path, where, message):
    ds, _ = sharded
    out = ds / "shards" / "pack" if where == "inside" else tmp_path / "full"
    if where == "full":
        out.mkdir()
        (out / "x").write_text("x")
    with pytest.raises(DatakitError, match=message):
        pack_dataset(ds, out)
    assert not (ds / "shards" / "pack").exists()


def test_a_folder_that_is_not_a_dataset_is_refused(tmp_path):
    (tmp_path / "d").mkdir()
    result = CliRunner().invoke(cli, ["pack", str(tmp_path / "d"), str(tmp_path / "o")])
    assert result.exit_code == 2 and "holds no manifest.json" in result.output
