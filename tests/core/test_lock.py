import os
import signal
import subprocess
import sys
import time

import pytest

from tlxcore.errors import UserError
from tlxcore.lock import FolderBusy, folder_lock

HOLD = """
import sys, time
from tlxcore.lock import folder_lock
with folder_lock(sys.argv[1], "holder"):
    print("locked", flush=True)
    time.sleep(60)
"""


def _hold(folder):
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    return p


def test_second_writer_is_refused_naming_the_holder(tmp_path):
    p = _hold(tmp_path)
    try:
        with pytest.raises(FolderBusy, match=rf"being written by pid {p.pid} on .*\(holder\)"):
            with folder_lock(tmp_path, "second"):
                pass
        assert issubclass(FolderBusy, UserError)
    finally:
        p.kill()
        p.wait()


def test_lock_of_a_killed_process_is_taken_over(tmp_path):
    p = _hold(tmp_path)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    with folder_lock(tmp_path, "after") as path:
        assert f"pid {os.getpid()}" in path.read_text()


def test_lock_is_released_after_the_block_and_reentrant_in_sequence(tmp_path):
    for _ in range(2):
        with folder_lock(tmp_path / "new", "x"):
            pass
    t0 = time.monotonic()
    with folder_lock(tmp_path / "new", "y"):
        pass
    assert time.monotonic() - t0 < 1


FORK_AND_DIE = """
import multiprocessing, os, sys, time
from tlxcore.lock import folder_lock
with folder_lock(sys.argv[1], "parent"):
    child = multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,))  # a DataLoader worker, say
    child.start()
    print(child.pid, flush=True)
    os._exit(0)          # the holder dies (kill -9, a node failure) while its forked child lives on
"""


def test_a_forked_child_does_not_keep_its_dead_parents_lock(tmp_path):
    """A fork copies every descriptor, close-on-exec or not, and an flock lives while any copy is open: a
    data-loader worker outliving its trainer by seconds kept the folder locked against the trainer's own
    restart. Forked children close their copies."""
    p = subprocess.Popen([sys.executable, "-c", FORK_AND_DIE, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    child = int(p.stdout.readline())
    assert p.wait(timeout=60) == 0
    try:
        os.kill(child, 0)                       # the child is still alive
        with folder_lock(tmp_path, "restart") as path:
            assert f"pid {os.getpid()}" in path.read_text()
    finally:
        os.kill(child, signal.SIGKILL)


@pytest.mark.parametrize("out", ["afile", "afile/run"])
def test_a_file_where_the_output_folder_should_be_is_one_line(tmp_path, out):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UserError, match=r"cannot be an output folder: '.*afile' is a file; give a folder path"):
        with folder_lock(tmp_path / out, "tlx test"):
            pass
    assert (tmp_path / "afile").read_text() == "x"


def test_a_trainer_given_a_file_as_its_run_folder_stops_in_one_line(tmp_path):
    from tests.fixtures.datasets import make_ct_dataset

    data = make_ct_dataset(tmp_path / "data", splits={"train": 8, "val": 4, "test": 4})
    (tmp_path / "afile").write_text("x")
    done = subprocess.run([sys.executable, "-m", "trainer.simclr", "--data", str(data), "--out",
                           str(tmp_path / "afile"), "--device", "cpu", "--model", "resnet-tiny", "--image-size", "32",
                           "--batch-size", "4", "--epochs", "1", "--workers", "0"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "TLX_QUIET": "1"})
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "afile' is a file; give a folder path" in done.stderr
