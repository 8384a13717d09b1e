"""torchrun entry for the multi-node restart tests: run a trainer module, SIGKILL ranks in a planned order.

    TLX_TEST_KILLS=1,0 TLX_TEST_KILL_AT=3 TLX_TEST_KILL_DIR=/tmp/k torchrun ... kill_once.py trainer.simclr --data ...

TLX_TEST_KILLS lists the ranks that die, one per torchrun round: the first round loses rank 1, the
round after it rank 0, the next one runs to the end. The victim dies at the start of its
TLX_TEST_KILL_AT-th optimizer step since its process started (before the update), by SIGKILL from
itself: no cleanup, no exception, like a node that loses power, at a step that does not depend on
timing. It first writes TLX_TEST_KILL_DIR/kill-<i> (which the test reads, and which tells the
later rounds that kill i happened).

The other ranks of that round reach the same step and then stay busy for TLX_TEST_SURVIVOR_SLEEP
seconds (default 30), like a rank 0 writing a large checkpoint: their agent restarts them for the
membership change (SIGTERM) before they notice the death themselves. That is the case where only
the victim's agent counts a restart (issue 17's hang); without the pause the survivors often fail
on the closed connection first, their agent counts too, and the counts happen to match.

Every process appends to TLX_TEST_KILL_DIR/processes.jsonl when it starts (rank, the restart count
its agent gave it) and when it exits (the optimizer steps it ran and its exit code: 0, or 143 for
a survivor that torchrun stopped with SIGTERM; a SIGKILLed victim writes nothing), so a test can
tell which round resumed where and which agent counted which restart.
"""
import json
import os
import runpy
import signal
import sys
import time
from pathlib import Path

from torch.optim.optimizer import register_optimizer_step_pre_hook

STARTED = time.time()
_steps = [0]


def _this_rounds_kill(kills: list[str], folder: Path) -> int | None:
    """Index of the kill planned for this process's round: the first not yet done, or done while it ran."""
    for i in range(len(kills)):
        marker = folder / f"kill-{i}"
        if not marker.exists() or marker.stat().st_mtime >= STARTED:
            return i
    return None


def _maybe_die(optimizer, args, kwargs):
    _steps[0] += 1
    if _steps[0] != int(os.environ["TLX_TEST_KILL_AT"]):
        return
    kills = [r for r in os.environ["TLX_TEST_KILLS"].split(",") if r]   # empty: an uninterrupted run
    folder = Path(os.environ["TLX_TEST_KILL_DIR"])
    i = _this_rounds_kill(kills, folder)
    if i is None:
        return
    marker = folder / f"kill-{i}"
    if kills[i] == os.environ["RANK"] and not marker.exists():
        marker.write_text(f"rank {kills[i]} killed at its step {_steps[0]}\n")
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(float(os.environ.get("TLX_TEST_SURVIVOR_SLEEP", "30")))


def _record(event: str, **fields) -> None:
    row = {"event": event, "rank": int(os.environ["RANK"]), "pid": os.getpid(), **fields}
    with open(Path(os.environ["TLX_TEST_KILL_DIR"]) / "processes.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")   # one short write in append mode: lines of two processes do not mix


if __name__ == "__main__":
    _record("start", restart_count=int(os.environ["TORCHELASTIC_RESTART_COUNT"]))
    register_optimizer_step_pre_hook(_maybe_die)  # every optimizer: LARS in simclr, AdamW/SGD in finetune
    module, sys.argv = sys.argv[1], [sys.argv[1], *sys.argv[2:]]
    code = 1                                      # an exception other than SystemExit
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exc:                     # exit_on_user_error: 2, or 143 after torchrun's SIGTERM
        code = 0 if exc.code is None else exc.code
        raise
    finally:
        _record("exit", steps=_steps[0], code=code)
