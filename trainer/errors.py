"""Errors a user can fix; the CLI prints their message on one line, without a traceback.

    if __name__ == "__main__":
        exit_on_user_error(main)        # python -m trainer.X: a UserError -> "Error: ..." and exit code 2
"""
import sys
from typing import Callable

from tlxcore.errors import UserError


class TrainerError(UserError):
    """Bad input or configuration for training (the message says what and how to fix it)."""


def exit_on_user_error(main: Callable[[], object]) -> None:
    """Run a module's main(); a UserError (TrainerError, DatakitError from the dataset reader, a busy
    folder) becomes one line on stderr and exit code 2 (as in the tlx CLI)."""
    try:
        main()
    except UserError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        sys.exit(2)
