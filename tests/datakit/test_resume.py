"""The one vocabulary of the datakit commands that write: `--resume auto|never` (a bare `--resume`,
the spelling before there were two words, is auto), the refusal of a folder that is not a tlx
command's earlier work, and the progress callback every long-running library function takes."""
import json
import re
import shutil

import polars as pl
import pytest
from click.testing import CliRunner

from cli.main import cli
from datakit.errors import DatakitError
from datakit.scan import scan
from datakit.write import write_dataset
from datakit.write_config import RunOptions, WriteConfig
from tests.datakit.write_helpers import PLAN_ARGS, SECRET, WRITE_ARGS, copy_plan
from tlxcore.lock import LOCK_NAME
from tlxcore.progress import Tick
from tlxcore.runtime import default_workers

CONFIG = WriteConfig(size=(32, 32), samples_per_shard=16)   # = WRITE_ARGS
ENV = {"TLX_SECRET": SECRET}


def _one_line_error(result, pattern: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert re.search(pattern, lines[0]), lines[0]


def _files(folder) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != LOCK_NAME}      # the lock names the pid of its last holder


def test_bare_resume_is_auto_before_or_after_the_dataset_folder(sharded):
    """`tlx write DATA --resume` and `tlx write --resume DATA` (where click would take DATA for the
    option's value) both mean auto, as does no --resume at all: the finished dataset of the same
    options is not made again. never refuses it; a word that is neither is refused."""
    ds, _ = sharded
    before = _files(ds)
    for args in (["write", str(ds), *WRITE_ARGS, "--resume"], ["write", "--resume", str(ds), *WRITE_ARGS],
                 ["write", str(ds), *WRITE_ARGS, "--resume", "auto"], ["write", str(ds), *WRITE_ARGS]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0 and "dataset already complete: " in result.output, (args, result.output)
    _one_line_error(CliRunner().invoke(cli, ["write", str(ds), *WRITE_ARGS, "--resume", "never"]),
                    r"already holds a finished dataset \(manifest.json\); choose a new output folder")
    result = CliRunner().invoke(cli, ["write", str(ds), "--resume", "none"])
    assert result.exit_code == 2 and "Invalid value for '--resume': 'none' is not one of 'auto', 'never'" in \
        result.output
    assert _files(ds) == before


def test_shard_again_continues_its_own_dataset_and_refuses_other_options_before_replanning(cohort, sharded):
    root, _ = cohort
    ds, _ = sharded
    before = _files(ds)
    args = ["shard", "--dicom-root", str(root), "--out", str(ds), *PLAN_ARGS, *WRITE_ARGS]
    result = CliRunner().invoke(cli, [*args, "--resume"], env=ENV)
    assert result.exit_code == 0 and "dataset already complete: " in result.output, result.output
    _one_line_error(CliRunner().invoke(cli, [*args, "--min-slices", "5"], env=ENV),
                    r"already holds a finished dataset made with other options \(--min-slices differ\); choose a "
                    r"new output folder")
    _one_line_error(CliRunner().invoke(cli, [*args, "--zstd-level", "9"], env=ENV),
                    r"made with other options \(--zstd-level differ\)")
    assert _files(ds) == before               # nothing re-planned, rescanned or rewritten


@pytest.mark.parametrize("command", ["scan", "shard", "convert", "write", "plan"])
def test_a_folder_that_is_not_a_tlx_dataset_is_refused_in_one_line(command, cohort, sharded, tmp_path):
    """Whatever --resume says: writing into someone's folder could mix a dataset with their files.
    Hidden files (.DS_Store, the folder lock) and a killed writer's temporary files do not count."""
    from tests.fixtures.task_datasets import write_class_folders

    root, _ = cohort
    if command in ("write", "plan"):
        out = copy_plan(sharded[0], tmp_path / "ds")
    else:
        out = tmp_path / "mine"
        out.mkdir()
    (out / "thesis.tex").write_text("someone's files")
    (out / ".DS_Store").write_bytes(b"")
    args = {"scan": ["scan", "--dicom-root", str(root), "--out", str(out)],
            "shard": ["shard", "--dicom-root", str(root), "--out", str(out)],
            "convert": ["convert", "class-folder", "--root", str(write_class_folders(tmp_path / "natural")),
                        "--out", str(out)],
            "write": ["write", str(out), *WRITE_ARGS],
            "plan": ["plan", str(out)]}[command]
    before = _files(out)
    for resume in ("auto", "never"):
        _one_line_error(CliRunner().invoke(cli, [*args, "--resume", resume], env=ENV),
                        rf"output folder '.*{out.name}' holds 'thesis.tex', which no tlx command writes: it is not a "
                        r"tlx dataset folder; choose a new or empty folder")
    assert _files(out) == before


def test_never_wants_an_empty_folder_and_auto_rescans_only_its_own_scan(cohort, tmp_path):
    root, truth = cohort
    out = tmp_path / "data"
    out.mkdir()
    (out / ".DS_Store").write_bytes(b"")                       # hidden: the folder counts as empty
    (out / "manifest.json.partial-4242").write_bytes(b"{")     # a killed writer's: not foreign, but not empty
    with pytest.raises(DatakitError, match=r"is not empty and --resume is never; choose a new folder, or use "
                                           r"--resume auto to continue the earlier `tlx scan` there"):
        scan(root, out, workers=1, secret=SECRET.encode(), resume="never")
    (out / "manifest.json.partial-4242").unlink()
    scan(root, out, workers=1, secret=SECRET.encode(), resume="never")
    index = (out / "work" / "index.parquet").read_bytes()
    scan(root, out, workers=1, secret=SECRET.encode())                    # auto: its own scan of this root, made again
    assert (out / "work" / "index.parquet").read_bytes() == index
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(root / truth["files"][0]["path"], other / "one.dcm")
    with pytest.raises(DatakitError, match=r"index.parquet was scanned from '.*cohort', not '.*other'; resume with "
                                           r"that --dicom-root"):
        scan(other, out, workers=1, secret=SECRET.encode())
    assert (out / "work" / "index.parquet").read_bytes() == index


def test_plan_again_gives_the_same_plan_and_never_replans_under_a_write_of_another_plan(sharded, tmp_path):
    ds = tmp_path / "ds"
    shutil.copytree(sharded[0], ds)                            # copy2: the plan's index fingerprint holds
    plan_files = ("plan.parquet", "plan_volumes.parquet", "plan_rejects.parquet", "plan.json")
    before = {name: (ds / "work" / name).read_bytes() for name in plan_files}
    result = CliRunner().invoke(cli, ["plan", str(ds), *PLAN_ARGS])
    assert result.exit_code == 0, result.output
    assert {name: (ds / "work" / name).read_bytes() for name in plan_files} == before
    _one_line_error(CliRunner().invoke(cli, ["plan", str(ds), *PLAN_ARGS, "--resume", "never"]),
                    r"already holds a plan \(work/plan.json\) and --resume is never; use --resume auto to plan again")
    _one_line_error(CliRunner().invoke(cli, ["plan", str(ds), *PLAN_ARGS, "--min-slices", "5"]),
                    r"holds output of `tlx write` \(manifest.json\) made from a plan of other options \(--min-slices "
                    r"differ\): planning again would orphan it")
    assert {name: (ds / "work" / name).read_bytes() for name in plan_files} == before


def test_scan_progress_ticks_count_files_and_end_at_their_total(cohort, tmp_path):
    """While the walk streams its total is unknown; the last tick has it. --workers defaults to the
    cores this process may use (tlxcore.runtime.default_workers)."""
    ticks = []
    summary = scan(cohort[0], tmp_path, secret=SECRET.encode(), progress=ticks.append)
    assert summary.workers == default_workers()
    assert ticks and {t.stage for t in ticks} == {"scan"} and {t.unit for t in ticks} == {"files"}
    assert all(t.total is None for t in ticks[:-1])
    assert [t.done for t in ticks] == sorted(t.done for t in ticks)
    assert ticks[-1] == Tick("scan", summary.files, summary.files, "files")
    assert summary.files == sum(1 for p in cohort[0].rglob("*") if p.is_file())


def test_write_progress_ticks_reach_their_totals(sharded, tmp_path):
    ds = copy_plan(sharded[0], tmp_path / "ds")
    ticks = []
    summary = write_dataset(ds, CONFIG, RunOptions(workers=1), progress=ticks.append)
    planned = len(pl.read_parquet(ds / "work" / "plan.parquet"))
    kept = summary.manifest["files"]["kept"]
    convert = [t for t in ticks if t.stage == "convert"]
    shards = [t for t in ticks if t.stage == "shards"]
    assert {t.stage for t in ticks} == {"convert", "shards"} and ticks.index(shards[0]) > ticks.index(convert[-1])
    assert convert[0] == Tick("convert", 0, planned, "slices") and convert[-1] == Tick("convert", planned, planned,
                                                                                        "slices")
    assert shards[0] == Tick("shards", 0, kept, "slices") and shards[-1] == Tick("shards", kept, kept, "slices")
    for stage in (convert, shards):
        assert [t.done for t in stage] == sorted(t.done for t in stage) and len({t.total for t in stage}) == 1
    assert len(convert) == summary.volumes_converted + 1   # one tick per volume staged


def test_a_log_file_shows_done_total_and_eta(sharded, monkeypatch):
    """Not a terminal (a SLURM job log): plain lines with done/total, percent, elapsed time and ETA."""
    monkeypatch.setenv("TLX_QUIET", "0")
    ds, _ = sharded
    result = CliRunner().invoke(cli, ["verify", str(ds), "--workers", "1"])
    assert result.exit_code == 0, result.output
    n = len(json.loads((ds / "manifest.json").read_text())["shards"])
    lines = result.output.splitlines()
    assert re.fullmatch(rf"verify  0/{n} shards  0%  elapsed 0:00:00  ETA \?", lines[0]), lines
    assert re.fullmatch(rf"verify  {n}/{n} shards  100%  elapsed \d+:\d\d:\d\d", lines[1]), lines
    assert lines[2].startswith(f"OK: {n} shards")
