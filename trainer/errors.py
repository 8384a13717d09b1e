"""Errors a user can fix, and a stop the user asked for; the command line prints either as one line.

    if __name__ == "__main__":
        exit_on_user_error(main)        # python -m trainer.X: a UserError -> "Error: ..." and exit code 2;
                                        # Ctrl-C or SIGTERM -> "interrupted: ..." and exit code 130 or 143
"""
import os
import signal
import sys
from typing import Callable

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
