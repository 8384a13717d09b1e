"""Atomic writes: a reader sees the old file or the whole new one, never half of one.

    from tlxcore.atomic import atomic_write, write_bytes_atomic, write_json_atomic
    with atomic_write(path) as f:            # binary; atomic_write(path, "w") for text
        f.write(payload)
    write_json_atomic({"a": 1}, path)        # indent 2, a newline at the end

The temporary file sits beside the target (same file system, so the rename is atomic) under
the one name `<name>.partial-<pid>`: two processes never write through the same temporary
file, and a crashed writer's leftovers are recognisable (`is_partial`). The data is fsynced
before the rename, so a power cut cannot leave the new name pointing at empty blocks.
"""
from __future__ import annotations

import errno
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

PARTIAL = ".partial-"
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def tmp_name(path: str | os.PathLike) -> Path:
    """The temporary name beside `path` that this process writes through."""
    path = Path(path)
    return path.with_name(f"{path.name}{PARTIAL}{os.getpid()}")


def is_partial(path: str | os.PathLike) -> bool:
    """True for a temporary file of some writer (finished or crashed)."""
    return PARTIAL in Path(path).name


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO[Any]]:
    """Open a temporary file beside `path`; on a clean exit fsync it and rename it over `path`.
    On an exception the temporary file is removed and `path` is left as it was."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write mode must be 'wb' or 'w', not {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(path)
    try:
        with open(tmp, mode, encoding=encoding if mode == "w" else None) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in _NO_SPACE and exc.filename is None:
            exc.filename = str(path)      # a full disk's error names the file (write() names none)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_write(path) as f:
        f.write(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(text)


def json_text(obj: Any, sort_keys: bool = False) -> str:
    """The one JSON spelling of tlx's files: indent 2, a final newline (sort_keys for
    byte-reproducible manifests)."""
    return json.dumps(obj, indent=2, sort_keys=sort_keys) + "\n"


def write_json_atomic(obj: Any, path: str | os.PathLike, sort_keys: bool = False) -> None:
    write_text_atomic(path, json_text(obj, sort_keys))
