"""Finding every file under a folder: any names, any depth, symlink loops, unreadable entries.

    for entry in walk_files(root): entry.path (relative, POSIX), entry.size, entry.problem

Symlinked folders are followed once (a folder reached again, through a loop or a
second link, is not walked twice); entries that are not regular files (sockets,
FIFOs, devices: opening a FIFO would block forever) and entries that cannot be
stat'ed (dangling links, permission errors) are reported with a problem instead
of being skipped, so scan can account for everything it found. Order is sorted by
path within each folder, so the walk is deterministic.

Names that are not UTF-8 (a Latin-1 `Pat\xe9` folder from a CD export) come from the walk as
Python's surrogate-escaped strings, which Parquet cannot store: `storable` gives the index a
readable `path` ("Pat\\xe9/IM1") and the exact bytes (`path_bytes`), and `source_path` turns an
index row back into the name on disk.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator


def os_reason(exc: OSError) -> str:
    """What went wrong, for a reject reason: the system's words ("Permission denied"), else the
    exception's own text; never "None" (an OSError raised by a library often has no strerror)."""
    text = exc.strerror or str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200] if text.splitlines() else type(exc).__name__


def storable(rel: str) -> tuple[str, bytes | None]:
    """(path, path_bytes) of a walked path for the index: the path itself and None when it is
    UTF-8; else its bytes shown with \\xNN escapes, and the exact bytes (lossless)."""
    try:
        rel.encode("utf-8")
        return rel, None
    except UnicodeEncodeError:
        raw = os.fsencode(rel)
        return raw.decode("utf-8", "backslashreplace"), raw


def source_path(row) -> str:
    """The name on disk (relative to the DICOM root) of an index row: its `path_bytes` when set."""
    raw = row.get("path_bytes")
    return os.fsdecode(raw) if raw else row["path"]


@dataclass(frozen=True)
class Found:
    path: str                    # relative to the root, POSIX separators
    size: int
    problem: tuple[str, str] | None = None   # (code, reason) when the entry cannot be read as a file


def walk_files(root: str | os.PathLike) -> Iterator[Found]:
    root = Path(root)
    seen: set[tuple[int, int]] = set()
    st = root.stat()
    seen.add((st.st_dev, st.st_ino))
    stack = [("", root)]
    while stack:
        rel, folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            yield Found(rel or ".", 0, ("unreadable", f"cannot list the folder ({os_reason(exc)})"))
            continue
        subfolders = []
        for e in entries:
            path = f"{rel}/{e.name}" if rel else e.name
            try:
                st = e.stat()                       # follows symlinks
            except OSError as exc:
                yield Found(path, 0, ("unreadable", f"cannot stat ({os_reason(exc)}; a dangling link?)"))
                continue
            if stat.S_ISDIR(st.st_mode):
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    subfolders.append((path, Path(e.path)))
            elif stat.S_ISREG(st.st_mode):
                yield Found(path, st.st_size)
            else:
                yield Found(path, 0, ("not-a-file", "not a regular file (socket, FIFO or device)"))
        stack.extend(reversed(subfolders))        # depth first, in name order
