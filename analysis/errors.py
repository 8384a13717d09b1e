"""Errors a user can fix; the CLI prints their message on one line, without a traceback."""
from tlxcore.errors import UserError


class AnalysisError(UserError):
    """Bad input for an analysis (the message says what and how to fix it)."""
