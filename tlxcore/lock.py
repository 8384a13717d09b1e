"""One writer per folder: every command that writes a dataset or a run holds an exclusive lock.

    from tlxcore.lock import folder_lock
    with folder_lock(out, "tlx shard"):       # FolderBusy if another live process holds it
        ...
    with folder_lock(out, "tlx write --partition 1/4", shared=True):   # partitions run side by side
        ...

The lock is an flock(2) on `<folder>/.tlx.lock`. The kernel releases it when the holder's
last descriptor closes, which includes the holder dying by kill -9 or a node reboot: a stale
lock of a dead process is taken over with no file to delete and no pid to guess. The file
holds the holder's pid, host and command, for the refusal message only; it stays behind
after a run (an empty lock, not a sign of a live writer). The descriptor is close-on-exec, so
spawned workers do not inherit it. `shared=True` takes a shared lock instead: any number of shared
holders (the partitions of one `tlx write` on a SLURM array) exclude every exclusive one, and the
file names the last shared holder. Network file systems: flock works on NFSv4 and Lustre
(mounted with flock); on a mount without lock support the lock is taken by nobody, and the
message says so rather than pretending.
"""
from __future__ import annotations

import errno
import fcntl
import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from tlxcore.errors import UserError

LOCK_NAME = ".tlx.lock"
# Descriptors of the locks this process holds. A forked child (a torch DataLoader worker, a fork-context
# pool) inherits them whatever close-on-exec says, and the flock lives while any copy is open: a child that
# outlives its parent by seconds (a worker noticing its parent died) would keep the folder locked against
# the parent's own restart. Each child closes its copies at once (closing a copy leaves the parent's lock).
_HELD: set[int] = set()


def _close_in_child() -> None:
    for fd in _HELD:
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


os.register_at_fork(after_in_child=_close_in_child)


class FolderBusy(UserError):
    """Another live process writes into the folder."""


def _holder(path: Path) -> str:
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return "another process"
    return text or "another process"


@contextmanager
def folder_lock(folder: str | os.PathLike, command: str, shared: bool = False) -> Iterator[Path]:
    """Hold the folder's write lock for the block (the folder is created if missing); `shared`: a
    shared lock, held beside other shared holders (see the module docstring)."""
    folder = Path(folder)
    blocked = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
    if blocked is not None:   # mkdir would raise FileExistsError/NotADirectoryError: say it in one line
        raise UserError(f"{str(folder)!r} cannot be an output folder: {str(blocked)!r} is a file; give a folder "
                        f"path (a new one, or the run's or dataset's own)")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise FolderBusy(f"{folder} is being written by {_holder(path)}; wait for it to finish, "
                                 f"or stop it, or pick another output folder") from None
            if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise FolderBusy(f"cannot lock {folder}: its file system does not support locks "
                                 f"({os.strerror(exc.errno)}); write to a local or lock-capable file system") from None
            raise
        _HELD.add(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} ({command})\n".encode())
        yield path
    finally:
        _HELD.discard(fd)
        os.close(fd)  # releases the lock
