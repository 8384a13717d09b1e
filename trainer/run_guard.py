"""One writer per run folder, and a stop in one line: what a trainer's main() wraps its run in.

    with drawn(enabled=env.is_main) as progress, RunGuard(env, "trainer.simclr") as guard:
        train(cfg, env, progress, guard)
    # inside, once the run folder is known and the options are checked, before anything is read or written there:
    guard.hold(run_folder)        # FolderBusy on every rank if another job writes there

The lock is tlxcore.lock.folder_lock (an flock on <run>/.tlx.lock), held by rank 0 alone: rank 0
is the only rank that writes into the run folder (config.json, logs, checkpoints). Rank 0 tells
every rank whether it got the lock, so a refused job stops on all its ranks at once with the same
line, instead of the other ranks waiting in their first collective for a rank 0 that is gone.

torchrun restarts: torchrun stops every worker before it starts the next attempt, and the kernel
drops a dead process's flock with its last descriptor (tlxcore.lock closes it in forked children,
such as data-loader workers, so none outlives rank 0 holding it). On a network file system a
node that died keeps its locks until the server notices (an NFSv4 lease: 90 s by default), and
the restarted rank 0 may run on another node. So a lock held by a rank 0 of the same torchrun
job (the lock file names the job: TORCHELASTIC_RUN_ID, the rendezvous id) is waited for, up to
RESTART_WAIT_S, before the refusal; any other holder is refused at once.

A KeyboardInterrupt (Ctrl-C, or SIGTERM through trainer.errors.exit_on_user_error: torchrun and
SLURM stop workers with it), or an error raised while handling one, leaves the block as a
RunInterrupted whose message says how to go on: rerun the same command, which continues from
checkpoints/last.pt (--resume auto).
"""
from __future__ import annotations

import os
import signal
import time
from contextlib import ExitStack
from pathlib import Path

import torch.distributed as dist

from tlxcore.lock import LOCK_NAME, FolderBusy, folder_lock
from trainer.dist import Dist, is_distributed
from trainer.errors import RunInterrupted, stop_cause

# Why 120 s: longer than an NFSv4 server's default lease (90 s), after which it drops the locks of a
# client (node) that stopped answering; shorter than torchrun's and NCCL's collective timeouts (10-30 min),
# which the other ranks wait under meanwhile.
RESTART_WAIT_S = 120.0
POLL_S = 1.0


class RunGuard:
    def __init__(self, env: Dist, command: str):
        self.env = env
        job = os.environ.get("TORCHELASTIC_RUN_ID")
        self.command = f"{command}, torchrun job {job}" if job else command   # written into the lock file
        self.folder: Path | None = None
        self._held = ExitStack()

    def __enter__(self) -> RunGuard:
        return self

    def hold(self, folder: str | os.PathLike) -> None:
        """Take the run folder's lock on rank 0 (creating the folder); FolderBusy on every rank if it is taken."""
        folder = Path(folder)
        refusal = None
        if self.env.is_main:
            try:
                self._take(folder)
            except FolderBusy as exc:
                refusal = str(exc)
        if is_distributed():   # every rank learns rank 0's outcome
            box = [refusal]
            dist.broadcast_object_list(box, src=0)
            refusal = box[0]
        if refusal is not None:
            raise FolderBusy(refusal)
        self.folder = folder

    def _take(self, folder: Path) -> None:
        deadline = time.monotonic() + RESTART_WAIT_S
        while True:
            try:
                self._held.enter_context(folder_lock(folder, self.command))
                return
            except FolderBusy:
                if not (self._same_job(folder) and time.monotonic() < deadline):
                    raise
                time.sleep(POLL_S)

    def _same_job(self, folder: Path) -> bool:
        """Does the lock file name this torchrun job (a rank 0 of an earlier attempt)?"""
        if "torchrun job" not in self.command:
            return False
        try:
            holder = (folder / LOCK_NAME).read_text(errors="replace")
        except OSError:
            return False
        return holder.rstrip().endswith(f"({self.command})")

    def interrupted(self) -> str:
        """The line that says how to continue a stopped run."""
        if self.folder is None:
            return "interrupted before the run started; nothing was written: rerun the same command"
        if (self.folder / "checkpoints" / "last.pt").exists():
            return (f"interrupted: rerun the same command to continue {self.folder} from its last checkpoint "
                    f"(--resume auto)")
        return f"interrupted before the first checkpoint of {self.folder}: rerun the same command to start it again"

    def __exit__(self, kind, exc, tb) -> bool:
        self._held.close()   # releases the lock
        stop = stop_cause(exc)
        if stop is not None and not isinstance(exc, RunInterrupted):
            raise RunInterrupted(self.interrupted(), getattr(stop, "signum", signal.SIGINT)) from None
        return False
