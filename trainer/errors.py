"""Errors a user can fix, and a stop the user asked for; the command line prints either as one line.

    if __name__ == "__main__":
        exit_on_user_error(main)        # python -m trainer.X: a UserError -> "Error: ..." and exit code 2;
                                        # Ctrl-C or SIGTERM -> "interrupted: ..." and exit code 130 or 143
"""
import os
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator

from tlxcore.errors import UserError


class TrainerError(UserError):
    """Bad input or configuration for training (the message says what and how to fix it)."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM stopped a run; the message says how to continue it (trainer/run_guard.py).
    A KeyboardInterrupt, so that code catching that (and tests expecting it) still sees one."""

    def __init__(self, message: str, signum: int = signal.SIGINT):
        super().__init__(message)
        self.signum = signum


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C's KeyboardInterrupt: torchrun stops its workers with
    it (after a failed rank, or when torchrun itself gets Ctrl-C or SIGTERM), and so does SLURM at a job's
    time limit. Raised, not left to the default action, so that the run's `finally` blocks run and one line
    says how to continue."""

    signum = signal.SIGTERM


def _terminate(signum, frame):
    raise Terminated()


def stop_cause(exc: BaseException | None) -> KeyboardInterrupt | None:
    """The Ctrl-C or SIGTERM behind `exc`: itself, or what it was raised while handling (an interrupt that lands
    inside a library's C++ code, e.g. torch.save's zip writer, comes back as that library's RuntimeError)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


@contextmanager
def stops_deferred() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait until the block is done, then stop the run as usual: a checkpoint being written
    is finished (and the run continues from it) rather than torn off mid-file. A no-op off the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    before = {s: signal.signal(s, lambda signum, frame: caught.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
    if caught:   # as the handlers in place before would have
        handler = before[caught[0]]
        if callable(handler):
            handler(caught[0], None)
        elif handler == signal.SIG_DFL:
            signal.raise_signal(caught[0])


def leave_stops_to_the_trainer(worker_id: int = 0) -> None:
    """A torch DataLoader's worker_init_fn: the worker ignores Ctrl-C and SIGTERM, which reach it with its
    trainer (a terminal's Ctrl-C, torchrun's and SLURM's SIGTERM go to the whole process group). torch's own
    SIGTERM handler in a worker would kill it first, and the trainer would then die of "DataLoader worker
    killed by signal" with a traceback instead of stopping in one line; the trainer stops its workers itself."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.excepthook = _quiet_when_the_trainer_left(sys.excepthook)


def worker_batches(loader: Iterable) -> Iterator:
    """The batches of a torch DataLoader, its worker processes started and shut down with Ctrl-C and SIGTERM
    deferred (stops_deferred). Python runs fork's at-fork callbacks (logging's lock release among them) and a
    DataLoader iterator's __del__ (its workers' shutdown) with their exceptions ignored: a stop raised there
    was printed as "Exception ignored" and lost, and the run went on (seen: SIGTERM in logging._releaseLock
    while an epoch's worker forked; the trainer ran on until killed)."""
    with stops_deferred():
        batches = iter(loader)
    try:
        yield from batches
    finally:
        with stops_deferred():
            del batches   # the last reference: the workers' shutdown runs here, not in a later __del__


def _quiet_when_the_trainer_left(hook: Callable) -> Callable:
    """A worker hands each batch's tensors to its trainer as file descriptors through multiprocessing's
    resource_sharer thread, which reports any error through sys.excepthook. When the trainer stops (Ctrl-C,
    SIGTERM) in the middle of such a hand-off, the worker's thread sees the connection reset and would print a
    traceback under the trainer's one-line message. That error says only that the trainer left: stay quiet."""
    def hook_unless_left(kind, value, traceback):
        if not issubclass(kind, (ConnectionResetError, BrokenPipeError, EOFError)):
            hook(kind, value, traceback)
    return hook_unless_left


def exit_on_user_error(main: Callable[[], object]) -> None:
    """Run a module's main(). A UserError (TrainerError, DatakitError from the dataset reader, a busy folder)
    becomes one line on stderr and exit code 2 (as in the tlx CLI). Ctrl-C and SIGTERM become one line saying
    how to continue (rank 0 only: every rank is stopped at once) and exit code 128 + the signal's number."""
    signal.signal(signal.SIGTERM, _terminate)
    try:
        main()
    except UserError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as exc:
        if int(os.environ.get("RANK", 0)) == 0:
            text = str(exc) if isinstance(exc, RunInterrupted) else "interrupted: rerun the same command to continue"
            print(text, file=sys.stderr)
        sys.exit(128 + int(getattr(exc, "signum", signal.SIGINT)))
