"""The base of every error a user can fix. DatakitError, TrainerError and AnalysisError derive
from it; the CLI and the trainers' entry points print it as one line with exit code 2."""


class UserError(Exception):
    """Bad input, a busy folder, a missing secret: the message says what is wrong and how to fix it.

    Raised in a torch DataLoader worker (a shard that does not decode), it reaches the main process
    rebuilt by torch with the worker's whole traceback as its message ("Caught DatakitError in
    DataLoader worker process 0.\\nOriginal Traceback ..."); str() gives back the one line the worker
    raised, so the entry points still print one line."""

    def __str__(self) -> str:
        text = super().__str__()
        if "\nOriginal Traceback" not in text:
            return text
        last = text.rstrip().rsplit("\n", 1)[-1]
        name = type(self).__name__
        for prefix in (f"{type(self).__module__}.{name}: ", f"{name}: "):
            if last.startswith(prefix):
                return last[len(prefix):]
        return last
