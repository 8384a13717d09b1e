"""Errors a user can fix; the CLI prints their message on one line, without a traceback."""


class TrainerError(Exception):
    """Bad input or configuration for training (the message says what and how to fix it)."""
