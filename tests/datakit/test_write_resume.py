"""`tlx write` split into partitions, or killed with SIGKILL at several points and resumed, gives
byte for byte the dataset of one uninterrupted run; no half-written shard ever has its final name."""
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time

import pytest
from click.testing import CliRunner

from cli.main import cli
from datakit.write import write_dataset
from datakit.write_config import RunOptions, WriteConfig
from tests.datakit.write_helpers import WRITE_ARGS, copy_plan, output_files

CONFIG = WriteConfig(size=(32, 32), samples_per_shard=16)   # = WRITE_ARGS


@pytest.fixture(scope="module")
def reference(sharded):
    ds, _ = sharded
    return output_files(ds)


def test_partitions_then_assembly_equal_one_run(sharded, reference, tmp_path):
    ds = copy_plan(sharded[0], tmp_path / "parts")
    summaries = [write_dataset(ds, CONFIG, RunOptions(workers=1, partition=(i, 3))) for i in (2, 0, 1)]
    assert [s.assembled for s in summaries] == [False, False, True]
    assert summaries[0].volumes_pending > summaries[1].volumes_pending > 0
    assert sum(s.volumes_converted for s in summaries) == len({k.split("-")[0] for k in _keys(ds)})
    assert output_files(ds) == reference
    assert not (ds / "work" / "staging").exists()


def _keys(ds):
    import polars as pl

    return pl.read_parquet(ds / "work" / "plan.parquet", columns=["volume", "slice_index"]).select(
        pl.format("{}-{}", pl.col("volume").cast(pl.String), "slice_index")).to_series().to_list()


def _start(ds, *extra):
    return subprocess.Popen([sys.executable, "-m", "cli.main", "write", str(ds), *WRITE_ARGS, *extra],
                            env={**os.environ, "TLX_QUIET": "1"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _kill_when(proc, condition, timeout=120.0):
    """SIGKILL `proc` as soon as `condition()` holds; fail if it finished (or hung) first."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if condition():
            proc.send_signal(signal.SIGKILL)
            assert proc.wait() == -signal.SIGKILL
            return
        time.sleep(0.002)
    out = proc.communicate()[0].decode() if proc.poll() is not None else "(still running)"
    proc.kill()
    pytest.fail(f"tlx write ended before the kill point: {out}")


def _staged(ds):
    return sorted((ds / "work" / "staging" / "volumes").glob("*/*.arrow"))


def _final_shards(ds):
    return sorted((ds / "shards").glob("*/*.tar")) if (ds / "shards").exists() else []


def _assert_final_shards_complete(ds):
    """Every tar under its final name is whole: it parses to the end and its .idx matches it."""
    for tar_path in _final_shards(ds):
        with tarfile.open(tar_path) as tar:
            members = tar.getmembers()
        lines = tar_path.with_suffix(".idx").read_text().splitlines()
        assert len(lines) - 1 == len({m.name.split(".")[0] for m in members}) == int(lines[0].split()[1])


@pytest.mark.parametrize("point", ["convert", "convert-2-workers", "shards", "before-manifest"])
def test_kill_9_then_resume_equals_an_uninterrupted_run(point, sharded, reference, tmp_path):
    ds = copy_plan(sharded[0], tmp_path / "killed")
    n_shards = sum(1 for name in reference if name.endswith(".tar"))
    conditions = {
        "convert": lambda: len(_staged(ds)) >= 3,
        "convert-2-workers": lambda: len(_staged(ds)) >= 3,
        "shards": lambda: len(_final_shards(ds)) >= 3,
        "before-manifest": lambda: len(_final_shards(ds)) == n_shards,
    }
    proc = _start(ds, *(["--workers", "2"] if point == "convert-2-workers" else []))
    _kill_when(proc, conditions[point])
    assert not (ds / "manifest.json").exists()
    _assert_final_shards_complete(ds)
    if point == "convert-2-workers":  # the pool's workers died with their parent: nothing more gets written
        before = sorted((ds / "work" / "staging" / "volumes").rglob("*"))
        time.sleep(1.0)
        assert sorted((ds / "work" / "staging" / "volumes").rglob("*")) == before
    if point == "shards":  # kill the resumed run too, a few shards later
        done = len(_final_shards(ds))
        proc = _start(ds, "--resume")            # the spelling before auto|never: auto
        _kill_when(proc, lambda: len(_final_shards(ds)) >= done + 3)
        _assert_final_shards_complete(ds)

    refused = CliRunner().invoke(cli, ["write", str(ds), *WRITE_ARGS, "--resume", "never"])
    assert refused.exit_code == 2 and "--resume is never; use --resume auto" in refused.output
    summary = write_dataset(ds, CONFIG, RunOptions(workers=1, resume="auto"))
    assert summary.assembled
    assert output_files(ds) == reference
    assert not list(ds.rglob("*.partial-*"))


def test_tables_half_written_by_a_killed_assembly_do_not_stay_in_the_dataset(sharded, reference, tmp_path):
    """A kill -9 while assembly writes slices.parquet (or the manifest) leaves its temporary file beside
    it; the resumed run tidied shards/ only, so the finished dataset kept the stray file."""
    ds = copy_plan(sharded[0], tmp_path / "tables")
    for name in ("slices.parquet", "rejects.parquet", "manifest.json"):
        (ds / f"{name}.partial-4242").write_bytes(b"cut short")
    write_dataset(ds, CONFIG, RunOptions(workers=1, resume="auto"))
    assert output_files(ds) == reference

def test_resume_of_a_finished_dataset_does_nothing(sharded, reference, tmp_path):
    ds = copy_plan(sharded[0], tmp_path / "done")
    write_dataset(ds, CONFIG, RunOptions(workers=1))
    again = write_dataset(ds, CONFIG, RunOptions(workers=1, resume="auto"))
    assert again.already_complete and again.volumes_converted == 0
    assert output_files(ds) == reference


def test_staging_of_other_options_is_refused(sharded, tmp_path):
    ds = copy_plan(sharded[0], tmp_path / "mixed")
    write_dataset(ds, CONFIG, RunOptions(workers=1, partition=(0, 2)))
    with pytest.raises(Exception, match=r"was started with another plan or other options \(write differ\)"):
        write_dataset(ds, WriteConfig(size=(32, 32), samples_per_shard=16, codec="raw"),
                      RunOptions(workers=1, partition=(1, 2)))


def test_resume_after_staging_deleted_rewrites_shards_of_other_options(sharded, tmp_path):
    """A write killed before its manifest, restarted with other options: the identity check says to
    delete work/staging; the --resume after that must not keep the earlier options' shards."""
    other = WriteConfig(size=(32, 32), samples_per_shard=16, hu_floor=None)
    fresh = copy_plan(sharded[0], tmp_path / "fresh")
    write_dataset(fresh, other, RunOptions(workers=1))
    ds = copy_plan(sharded[0], tmp_path / "restarted")
    write_dataset(ds, CONFIG, RunOptions(workers=1, keep_staging=True))
    (ds / "manifest.json").unlink()                     # as if killed just before the manifest
    with pytest.raises(Exception, match=r"was started with another plan or other options"):
        write_dataset(ds, other, RunOptions(workers=1, resume="auto"))
    shutil.rmtree(ds / "work" / "staging")              # what that message says to do
    write_dataset(ds, other, RunOptions(workers=1, resume="auto"))
    assert output_files(ds) == output_files(fresh)
