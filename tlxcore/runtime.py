"""Facts about this process that every command asks: is it quiet, how many workers, which tlx."""
from __future__ import annotations

import os


def quiet() -> bool:
    """TLX_QUIET set to anything but '' or '0' silences progress and notes (tests set it)."""
    return os.environ.get("TLX_QUIET", "") not in ("", "0")


def default_workers() -> int:
    """The cores this process may run on (a SLURM task with 2 of 64 cores gets 2), the default
    of every --workers flag that starts processes."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def tool_version() -> str:
    """The installed tlx version, as manifests and config.json record it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tlx")
    except PackageNotFoundError:
        return "unknown"
