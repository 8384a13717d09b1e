"""RunGuard: one writer per run folder on rank 0 (every rank refused alike), torchrun restarts, one-line stops."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from dist_helpers import run_ranks

import trainer.run_guard as rg
from tests.fixtures.datasets import make_ct_dataset
from tests.fixtures.lock_holder import held, start_holder
from tlxcore.lock import FolderBusy, folder_lock
from trainer.dist import Dist
from trainer.errors import RunInterrupted, Terminated

ONE = Dist(0, 0, 1, torch.device("cpu"), None)


def _rank_tries_the_lock(folder, report):
    from trainer.dist import close_dist, init_dist
    env = init_dist("cpu")
    try:
        with rg.RunGuard(env, "trainer.simclr") as guard:
            guard.hold(folder)
        outcome = "held"
    except FolderBusy as exc:
        outcome = f"refused: {exc}"
    Path(report, f"rank{env.rank}").write_text(outcome)
    close_dist(env)


def test_every_rank_is_refused_when_another_job_writes_the_run_folder(tmp_path):
    """Rank 0 alone takes the lock and tells the others: a refused job stops on all its ranks with the
    same line (rank 1 does not wait in a collective for a rank 0 that has gone)."""
    run, report = tmp_path / "run", tmp_path / "report"
    report.mkdir()
    with held(run) as holder:
        run_ranks(_rank_tries_the_lock, str(run), str(report), world=2)
    outcomes = [(report / f"rank{r}").read_text() for r in (0, 1)]
    assert outcomes[0] == outcomes[1]
    assert outcomes[0].startswith(f"refused: {run} is being written by pid {holder.pid} on ")
    run_ranks(_rank_tries_the_lock, str(run), str(report), world=2)   # the holder gone, the lock is free
    assert [(report / f"rank{r}").read_text() for r in (0, 1)] == ["held", "held"]


def test_a_restarted_rank_0_waits_for_its_own_jobs_earlier_attempt_only(tmp_path, monkeypatch):
    """The lock file names the torchrun job (TORCHELASTIC_RUN_ID): a holder of the same job is a rank 0
    of an earlier attempt whose lock the file system has not dropped yet (a dead node's NFS lease):
    waited for. Another job's is refused at once."""
    monkeypatch.setattr(rg, "RESTART_WAIT_S", 30.0)
    monkeypatch.setattr(rg, "POLL_S", 0.1)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-7")
    holder = start_holder(tmp_path, "trainer.simclr, torchrun job job-7", seconds=1.5)
    t0 = time.monotonic()
    with rg.RunGuard(ONE, "trainer.simclr") as guard:
        guard.hold(tmp_path)
        assert f"pid {os.getpid()} " in (tmp_path / ".tlx.lock").read_text()
        assert (tmp_path / ".tlx.lock").read_text().endswith("(trainer.simclr, torchrun job job-7)\n")
    assert 0.5 < time.monotonic() - t0 < 20
    holder.wait()
    with held(tmp_path, "trainer.simclr, torchrun job job-8"):
        t0 = time.monotonic()
        with pytest.raises(FolderBusy, match=r"being written by pid \d+ on .*\(trainer.simclr, torchrun job job-8\)"):
            with rg.RunGuard(ONE, "trainer.simclr") as guard:
                guard.hold(tmp_path)
        assert time.monotonic() - t0 < 5


def test_an_interrupt_leaves_as_one_line_saying_how_to_continue(tmp_path):
    with pytest.raises(RunInterrupted, match=r"^interrupted before the run started; nothing was written"):
        with rg.RunGuard(ONE, "trainer.simclr"):
            raise KeyboardInterrupt
    with pytest.raises(RunInterrupted, match=rf"^interrupted before the first checkpoint of {tmp_path}: rerun the "
                                             r"same command to start it again$") as info:
        with rg.RunGuard(ONE, "trainer.simclr") as guard:
            guard.hold(tmp_path)
            raise KeyboardInterrupt
    assert info.value.signum == signal.SIGINT and isinstance(info.value, KeyboardInterrupt)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"")
    with pytest.raises(RunInterrupted, match=rf"^interrupted: rerun the same command to continue {tmp_path} from "
                                             r"its last checkpoint \(--resume auto\)$") as info:
        with rg.RunGuard(ONE, "trainer.simclr") as guard:
            guard.hold(tmp_path)
            raise Terminated()
    assert info.value.signum == signal.SIGTERM
    with folder_lock(tmp_path, "after"):   # the guard let go of the lock on the way out
        pass


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return make_ct_dataset(tmp_path_factory.mktemp("ds") / "ds", shard_sizes={"train": [3, 12, 5, 17]}, image_size=40)


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_and_sigterm_stop_a_trainer_with_one_line(ds, tmp_path, sig, code):
    """Ctrl-C reaches the whole process group (the trainer and its data-loader workers); torchrun and
    SLURM stop a worker with SIGTERM. Either way: one line on stderr, no traceback, exit code 128 + signal."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "trainer.simclr", "--data", str(ds), "--out", str(out), "--device", "cpu",
           "--model", "resnet-tiny", "--image-size", "32", "--batch-size", "8", "--epochs", "1000", "--workers", "1",
           "--loader", "torch", "--log-every", "1", "--checkpoint-every", "1", "--eval-every", "0"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while not (out / "checkpoints" / "last.pt").exists() and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(p.pid, sig)
    _, err = p.communicate(timeout=120)
    assert p.returncode == code, err[-3000:]
    assert err == f"interrupted: rerun the same command to continue {out} from its last checkpoint (--resume auto)\n"


def test_a_checkpoint_being_written_is_finished_before_a_stop(tmp_path):
    """Ctrl-C inside torch.save came back as torch's RuntimeError ("unexpected pos ...") with a traceback:
    the write now finishes first, then the stop happens; and an error raised while handling a stop is the stop."""
    from trainer.checkpoint import load_checkpoint, new_checkpoint, save_checkpoint
    from trainer.errors import stops_deferred

    done = []
    with pytest.raises(KeyboardInterrupt):
        with stops_deferred():
            signal.raise_signal(signal.SIGINT)
            save_checkpoint(new_checkpoint("m", {"w": torch.ones(3)}), tmp_path / "last.pt")
            done.append(True)
    assert done == [True] and torch.equal(load_checkpoint(tmp_path / "last.pt")["encoder"]["w"], torch.ones(3))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler   # handlers put back
    with pytest.raises(RunInterrupted, match=r"^interrupted before the run started") as info:
        with rg.RunGuard(ONE, "trainer.simclr"):
            try:
                raise Terminated()
            except KeyboardInterrupt:
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 79040 vs 78936")
    assert info.value.signum == signal.SIGTERM


def test_a_loader_worker_stays_quiet_when_its_trainer_leaves_mid_hand_off():
    # The CI flake this pins: the trainer stopped while a worker's resource_sharer thread handed it a batch,
    # and the worker printed "ConnectionResetError" under the one-line message. Other errors still print.
    code = (
        "import sys\n"
        "from trainer.errors import leave_stops_to_the_trainer\n"
        "leave_stops_to_the_trainer(0)\n"
        "for kind in (ConnectionResetError, BrokenPipeError, ValueError):\n"
        "    sys.excepthook(kind, kind('x'), None)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "ConnectionResetError" not in done.stderr and "BrokenPipeError" not in done.stderr
    assert done.stderr.strip() == "ValueError: x"


# A SIGTERM that arrives while a DataLoader forks its worker: the handler runs inside fork's at-fork callback
# (logging's lock release), where Python ignores exceptions. Raised there, the stop was lost and the trainer
# ran on (the CI hang of test_ctrl_c_and_sigterm_stop_a_trainer_with_one_line). In its own process: an at-fork
# callback cannot be removed.
_FORK_STOP = r"""
import os, signal, sys
import torch
from torch.utils.data import DataLoader
from trainer.errors import Terminated, _terminate, leave_stops_to_the_trainer, worker_batches

signal.signal(signal.SIGTERM, _terminate)
armed = [True]

def stop_while_forking():
    if armed:
        armed.clear()
        signal.raise_signal(signal.SIGTERM)

os.register_at_fork(after_in_parent=stop_while_forking)
loader = DataLoader(list(range(8)), batch_size=2, num_workers=1, worker_init_fn=leave_stops_to_the_trainer)
try:
    seen = [int(b.sum()) for b in (worker_batches(loader) if sys.argv[1] == "deferred" else loader)]
except Terminated:
    print("stopped")
else:
    print("ran on", seen)
"""


@pytest.mark.parametrize("how, outcome", [("deferred", "stopped"), ("plain", "ran on [1, 5, 9, 13]")])
def test_a_stop_while_a_loader_worker_forks_is_not_lost(how, outcome):
    done = subprocess.run([sys.executable, "-c", _FORK_STOP, how], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.stdout.strip() == outcome, done.stderr[-2000:]
    # plain DataLoader iteration: the stop landed in the callback and was only printed (what worker_batches fixes)
    assert ("Exception ignored" in done.stderr) == (how == "plain")
