"""Errors a user can fix; the CLI prints their message on one line, without a traceback."""


class AnalysisError(Exception):
    """Bad input for an analysis (the message says what and how to fix it)."""
