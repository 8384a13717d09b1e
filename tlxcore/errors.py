"""The base of every error a user can fix. DatakitError, TrainerError and AnalysisError derive
from it; the CLI and the trainers' entry points print it as one line with exit code 2."""


class UserError(Exception):
    """Bad input, a busy folder, a missing secret: the message says what is wrong and how to fix it."""
