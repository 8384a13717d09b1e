"""One rich progress bar for the long loops of analysis, silent when TLX_QUIET=1."""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Callable, Iterator


def quiet() -> bool:
    return os.environ.get("TLX_QUIET", "") not in ("", "0")


@contextmanager
def progress(total: int, description: str) -> Iterator[Callable[[int], None]]:
    """`with progress(n, "volumes") as advance: ... advance(1)`; nothing is drawn when quiet."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, disable=quiet(), transient=False) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)
