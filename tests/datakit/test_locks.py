"""One writer per dataset folder, and no worker outlives its command (issue 10, items 12 and 13)."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
from datakit.resume import output_lock
from tests.datakit.test_dicom import make, save
from tests.datakit.write_helpers import PLAN_ARGS, SECRET, WRITE_ARGS, copy_plan
from tlxcore.lock import FolderBusy

ENV = {"TLX_SECRET": SECRET, "TLX_QUIET": "1"}
HOLD = """
import sys, time
from tlxcore.lock import folder_lock
with folder_lock(sys.argv[1], sys.argv[2], shared=sys.argv[3] == "shared"):
    print("locked", flush=True)
    time.sleep(60)
"""


def hold(folder, command="tlx shard", mode="exclusive"):
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), command, mode], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    return p


def refused(args, pid):
    result = CliRunner().invoke(cli, args, env=ENV)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and f"is being written by pid {pid} on " in lines[0], result.output


def test_a_second_writer_is_refused_naming_the_holder_and_a_dead_ones_lock_is_taken_over(cohort, sharded, tmp_path):
    """Two `tlx shard` into one --out: one crashed on a shared temporary name, the other's resume
    stayed blocked. Now the second is refused in one line naming the first one's pid."""
    root, _ = cohort
    ds = copy_plan(sharded[0], tmp_path / "data")
    holder = hold(ds)
    try:
        refused(["shard", "--dicom-root", str(root), "--out", str(ds), *PLAN_ARGS, *WRITE_ARGS], holder.pid)
        refused(["scan", "--dicom-root", str(root), "--out", str(ds)], holder.pid)
        refused(["plan", str(ds), *PLAN_ARGS], holder.pid)
        refused(["write", str(ds), *WRITE_ARGS], holder.pid)
        refused(["convert", "class-folder", "--root", str(tmp_path), "--out", str(ds)], holder.pid)
    finally:
        holder.kill()                                          # kill -9: the kernel drops its lock
        holder.wait()
    result = CliRunner().invoke(cli, ["write", str(ds), *WRITE_ARGS], env=ENV)
    assert result.exit_code == 0 and f"wrote {ds}" in result.output, result.output


def test_partitions_share_the_lock_and_exclude_a_whole_write_and_their_twins(tmp_path):
    holder = hold(tmp_path, "tlx write --partition 0/2", "shared")
    try:
        with output_lock(tmp_path, "tlx write --partition 1/2", shared=True):     # the other partition runs
            pass
        with pytest.raises(FolderBusy, match=r"being written by pid \d+ .*\(tlx write --partition"):
            with output_lock(tmp_path, "tlx write"):
                pass
    finally:
        holder.kill()
        holder.wait()
    twin = hold(tmp_path / "work" / "partitions" / "0-of-2", "tlx write --partition 0/2")
    try:
        from datakit.manifest import Layout
        from datakit.write import write_lock

        with pytest.raises(FolderBusy, match=rf"being written by pid {twin.pid} "):
            with write_lock(Layout(tmp_path), (0, 2)):
                pass
        with write_lock(Layout(tmp_path), (1, 2)):
            pass
    finally:
        twin.kill()
        twin.wait()


def test_the_lock_is_reentrant_within_one_process(tmp_path):
    with output_lock(tmp_path, "tlx shard"), output_lock(tmp_path, "tlx scan"):
        pass
    with output_lock(tmp_path, "tlx plan"):      # released: taken again
        pass


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                pass
    return out


def _alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _open_files(pid: int) -> list[str]:
    try:
        return [os.readlink(f) for f in (Path("/proc") / str(pid) / "fd").iterdir()]
    except OSError:
        return []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill_9_during_the_scan_leaves_no_worker_behind(tmp_path):
    """Forked scan workers inherited work/index.parquet.partial and, after a kill -9 of the scan,
    waited on their pipes for good (2 still alive 16 minutes later, 5 of 5 tries)."""
    root = tmp_path / "root"
    root.mkdir()
    one = save(make(), root / "one.dcm")
    for i in range(20000):                                   # hard links: a scan of many files in no space
        os.link(one, root / f"f{i:05d}")
    out = tmp_path / "out"
    scan = subprocess.Popen([sys.executable, "-m", "cli.main", "scan", "--dicom-root", str(root), "--out", str(out),
                             "--workers", "2"], env={**os.environ, **ENV}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline, workers = time.monotonic() + 60, []
    while time.monotonic() < deadline and scan.poll() is None:
        workers = [c for c in _children(scan.pid) if "spawn_main" in (Path("/proc") / str(c) / "cmdline").read_text()]
        if len(workers) >= 2 and list((out / "work").glob("index.parquet.partial-*")):
            break
        time.sleep(0.05)
    assert scan.poll() is None and len(workers) >= 2, "the scan ended before it could be killed: use more files"
    for w in workers:                    # spawned, not forked: no worker holds the index's temporary file
        assert not [f for f in _open_files(w) if str(out) in f], _open_files(w)
    scan.send_signal(signal.SIGKILL)
    scan.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.05)
    assert not [w for w in workers if _alive(w)]
