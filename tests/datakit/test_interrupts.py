"""Ctrl-C and a full disk end a datakit command with one line saying how to go on, and going on
gives the dataset an uninterrupted run gives (issue 10, items 15 and 16)."""
import errno
import os
import signal
import subprocess
import sys
import time
from concurrent.futures.process import _RemoteTraceback

from click.testing import CliRunner

from cli.main import cli, disk_full
from tests.datakit.write_helpers import PLAN_ARGS, SECRET, WRITE_ARGS, copy_plan, output_files

ENV = {"TLX_SECRET": SECRET, "TLX_QUIET": "1"}


def test_ctrl_c_prints_one_line_and_the_same_command_continues(cohort, sharded, tmp_path):
    """`tlx shard` printed only "Aborted!" (and each pool worker a traceback of its own)."""
    root, _ = cohort
    out = tmp_path / "data"
    args = [sys.executable, "-m", "cli.main", "shard", "--dicom-root", str(root), "--out", str(out), *PLAN_ARGS,
            *WRITE_ARGS, "--workers", "2"]
    run = subprocess.Popen(args, env={**os.environ, **ENV}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and run.poll() is None:
        if list((out / "work" / "staging" / "volumes").glob("*/*.arrow")):
            break
        time.sleep(0.02)
    assert run.poll() is None, "shard ended before it could be interrupted"
    os.killpg(run.pid, signal.SIGINT)             # what Ctrl-C does: the whole process group, workers too
    stdout, stderr = run.communicate(timeout=120)
    assert run.returncode == 130, (stdout, stderr)
    assert "Traceback" not in stdout + stderr and "Aborted" not in stdout + stderr, stderr
    assert stderr.strip().splitlines() == [
        "interrupted: run the same command again to continue where it stopped (--resume auto, the default, keeps "
        "what is done)"]
    again = subprocess.run(args, env={**os.environ, **ENV}, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert output_files(out) == output_files(sharded[0])


def test_a_full_disk_is_one_line_naming_the_file_and_a_rerun_finishes(sharded, tmp_path, monkeypatch):
    """A full disk printed 1-4 chained tracebacks."""
    ds = copy_plan(sharded[0], tmp_path / "data")
    real_fsync = os.fsync

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)
    result = CliRunner().invoke(cli, ["write", str(ds), *WRITE_ARGS], env=ENV)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: no space left on device writing {ds}/work/staging/"), lines
    assert lines[0].endswith(": free space, then run the same command again (--resume auto continues what was "
                             "finished)")
    assert not list(ds.rglob("*.partial-*"))
    result = CliRunner().invoke(cli, ["write", str(ds), *WRITE_ARGS], env=ENV)
    assert result.exit_code == 0, result.output
    assert output_files(ds) == output_files(sharded[0])


def test_a_full_disk_in_a_worker_is_found_behind_the_pool_error():
    inner = OSError(errno.ENOSPC, "No space left on device")
    inner.filename = "/data/work/staging/volumes/ab/ab12.arrow"
    try:
        try:
            raise inner
        except OSError as exc:
            raise exc from _RemoteTraceback("the worker's traceback")
    except OSError as outer:
        wrapped = RuntimeError("while assembling")
        wrapped.__context__ = outer
    assert disk_full(wrapped) is inner
    assert disk_full(RuntimeError("other")) is None and disk_full(OSError(errno.EACCES, "denied")) is None
