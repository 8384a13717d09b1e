"""Running write's and verify's tasks: inline (--workers 1) or on a process pool.

    for result in run_tasks(fn, tasks, workers=4, initializer=init, initargs=(...,)):
        ...                       # results in completion order, at most 4 x workers tasks in flight

Workers are started with "spawn" (polars and rich run threads in the parent; forking a
threaded process can deadlock) and die with the parent (see write_convert.init_worker).
An exception in a task is not swallowed: it cancels the rest and is raised here.
"""
from __future__ import annotations

import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Callable, Iterable, Iterator


def run_tasks(fn: Callable, tasks: Iterable, workers: int, initializer: Callable | None = None,
              initargs: tuple = (), inline_fn: Callable | None = None) -> Iterator:
    """Results of fn(task) for every task. With one worker, `inline_fn` (or fn) runs here.
    Each worker runs `initializer(*initargs)` (default: die_with_parent) once."""
    if workers <= 1:
        run_here = inline_fn or fn
        for task in tasks:
            yield run_here(task)
        return
    import multiprocessing

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=initializer or die_with_parent, initargs=initargs) as pool:
        pending = set()
        it = iter(tasks)
        try:
            for task in it:
                pending.add(pool.submit(fn, task))
                if len(pending) >= 4 * workers:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for f in done:
                        yield f.result()
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in done:
                    yield f.result()
        except BaseException:  # Ctrl-C, an error: the queued tasks go, the pool ends after the running ones
            for f in pending:
                f.cancel()
            raise


def die_with_parent() -> None:
    """A pool worker's first act (every datakit pool's initializer calls it). Linux: ask the kernel
    to SIGKILL this process when its parent dies (PR_SET_PDEATHSIG), so a kill -9 of `tlx write`
    or `tlx scan` never leaves workers writing behind a resumed run's back; a parent that died
    while the worker started (before prctl) makes it exit here. Ctrl-C is ignored: the terminal
    sends it to every process of the job, and the parent, which handles it, ends the pool (a
    worker that took it would print a traceback of its own)."""
    import ctypes
    import multiprocessing
    import signal
    import sys

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    parent = multiprocessing.parent_process()
    if os.getppid() == 1 or (parent is not None and parent.pid is not None and os.getppid() != parent.pid):
        os._exit(1)  # the parent died before prctl took effect (orphans go to init or a subreaper)
