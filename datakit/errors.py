"""Errors a user can fix; the CLI prints their message on one line, without a traceback."""
from tlxcore.errors import UserError


class DatakitError(UserError):
    """Bad input or configuration for a datakit stage (the message says what and how to fix it)."""
