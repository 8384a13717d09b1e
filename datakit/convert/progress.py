"""A rich progress bar over an iterable, silent when TLX_QUIET=1 (tests set it)."""
from __future__ import annotations

from typing import Iterable, Iterator, TypeVar

from datakit.write_pool import quiet

T = TypeVar("T")


def progress(items: Iterable[T], total: int, description: str) -> Iterator[T]:
    if quiet() or total == 0:
        yield from items
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  transient=False) as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)
