"""Progress of long work. Libraries report it through a callback; only entry points draw it.

    from tlxcore.progress import Progress, Tick, silent, drawn

    def scan(root, progress: Progress = silent):          # a library function
        for i, path in enumerate(paths, 1):
            ...
            progress(Tick("scan", i, len(paths), "files"))

    with drawn() as progress:                              # the CLI, or a trainer's main on rank 0
        scan(root, progress=progress)
        progress.note("scan done")                        # a line that does not break the bar

`done` is cumulative. A stage is finished when done == total. What `drawn()` shows:
- TLX_QUIET set (runtime.quiet): nothing, notes included;
- stdout a terminal: one rich bar per stage, with done/total, elapsed and time remaining;
- otherwise (a SLURM or torchrun log file): a plain line per stage at most every
  TLX_PROGRESS_SECONDS seconds (default 30) and when it finishes, with done/total, the
  percentage, elapsed time and ETA, so a job log says how far a job is and how long it needs.
"""
from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

from tlxcore.runtime import quiet


@dataclass(frozen=True)
class Tick:
    stage: str              # what is progressing: "scan", "write", "train", "volumes"
    done: int               # units done so far in this stage (cumulative)
    total: int | None       # units in the stage; None when unknown (a walk)
    unit: str = ""          # "files", "slices", "steps"
    text: str = ""          # a short status: "epoch 3  loss 5.10  1,520 img/s"


Progress = Callable[[Tick], None]


def silent(tick: Tick) -> None:
    """The default callback of every library function: report nothing."""


def clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def log_line(tick: Tick, elapsed: float, done_at_start: int = 0) -> str:
    """The plain progress line of a log file: done/total, %, elapsed, ETA and the status text."""
    unit = f" {tick.unit}" if tick.unit else ""
    parts = [tick.stage]
    if tick.total:
        parts.append(f"{tick.done:,}/{tick.total:,}{unit}  {100 * tick.done / tick.total:.0f}%")
    else:
        parts.append(f"{tick.done:,}{unit}")
    parts.append(f"elapsed {clock(elapsed)}")
    rate = (tick.done - done_at_start) / elapsed if elapsed > 0 else 0.0
    if tick.total and tick.done < tick.total:
        parts.append(f"ETA {clock((tick.total - tick.done) / rate)}" if rate > 0 else "ETA ?")
    if tick.text:
        parts.append(tick.text)
    return "  ".join(parts)


class Drawer:
    """A Progress callback that draws (see the module docstring); use it through `drawn()`."""

    def __init__(self, enabled: bool = True, every_s: float | None = None, stream=None):
        self.stream = stream or sys.stdout
        self.show = enabled and not quiet()
        self.every_s = every_s if every_s is not None else float(os.environ.get("TLX_PROGRESS_SECONDS", "30"))
        self._rich = None
        self._tasks: dict[str, int] = {}
        self._stages: dict[str, tuple[float, int, float]] = {}  # stage -> (start, done at start, last line time)
        if self.show and getattr(self.stream, "isatty", lambda: False)():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            self._rich = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TextColumn("{task.fields[unit]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                  TextColumn("{task.fields[text]}"), console=Console(file=self.stream))
            self._rich.start()

    def __call__(self, tick: Tick) -> None:
        if not self.show:
            return
        now = time.monotonic()
        if tick.stage not in self._stages:
            self._stages[tick.stage] = (now, tick.done, float("-inf"))
        start, done_at_start, last = self._stages[tick.stage]
        if self._rich is not None:
            if tick.stage not in self._tasks:
                self._tasks[tick.stage] = self._rich.add_task(tick.stage, total=tick.total, completed=tick.done,
                                                              unit=tick.unit, text=tick.text)
            self._rich.update(self._tasks[tick.stage], completed=tick.done, total=tick.total, text=tick.text)
            return
        finished = tick.total is not None and tick.done >= tick.total
        if finished or now - last >= self.every_s:
            print(log_line(tick, now - start, done_at_start), file=self.stream, flush=True)
            self._stages[tick.stage] = (start, done_at_start, float("inf") if finished else now)

    def note(self, text: str) -> None:
        """A line for the user (resumed from ..., epoch 3 done), above the bars on a terminal."""
        if not self.show:
            return
        if self._rich is not None:
            self._rich.console.print(text, markup=False, highlight=False)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self._rich is not None:
            self._rich.stop()
            self._rich = None


@contextmanager
def drawn(enabled: bool = True, every_s: float | None = None, stream=None) -> Iterator[Drawer]:
    """A Drawer for the duration of the block (`enabled=False` on ranks other than 0)."""
    drawer = Drawer(enabled, every_s, stream)
    try:
        yield drawer
    finally:
        drawer.close()
