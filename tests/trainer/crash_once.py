"""torchrun entry for the restart test: trainer.simclr (through its command-line entry, exit_on_user_error), but
rank 1 dies hard once, at optimizer step TLX_TEST_CRASH_AT.

A marker file makes it crash only in the first attempt; torchrun --max-restarts then restarts every rank and
they resume from checkpoints/last.pt on their own (--resume auto).
"""
import os
import sys
from pathlib import Path

from trainer import simclr
from trainer.errors import exit_on_user_error
from trainer.optim import LARS

_step = LARS.step
_calls = [0]


def _step_or_die(self, *args, **kwargs):
    _calls[0] += 1
    marker = Path(os.environ["TLX_TEST_CRASH_MARKER"])
    if os.environ.get("RANK") == "1" and _calls[0] == int(os.environ["TLX_TEST_CRASH_AT"]) and not marker.exists():
        marker.touch()
        os._exit(17)  # like a node failure: no cleanup, no exception handling
    return _step(self, *args, **kwargs)


if __name__ == "__main__":
    LARS.step = _step_or_die
    exit_on_user_error(lambda: simclr.main(sys.argv[1:]))   # as `python -m trainer.simclr` runs it
