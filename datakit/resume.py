"""`--resume auto|never`: what a datakit command that writes does with a folder that is not empty.

    earlier = check_output_folder(out, resume, "tlx shard")   # False: a fresh start; True: continue

The words and their meaning are the trainers' (docs/trainer.md; the trainers also take a
checkpoint PATH, which has no counterpart here):

- `auto` (the default, as in the trainers): continue this command's own earlier work in the
  folder: what an interrupted or finished run with the same options left there. Each command
  then checks that the earlier work is its own (same inputs, same options) and refuses it in
  one line otherwise, naming what differs; a finished result with the same options is not
  made again.
- `never`: refuse a folder that is not empty (a fresh start only).

Either way a folder holding anything that is not part of a tlx dataset (see
manifest.TOP_LEVEL) is refused: it is not a tlx command's earlier work, and writing into it
could mix a dataset with someone's files. Temporary files of a killed writer and hidden files
(the folder lock, .DS_Store) do not count.

One writer per folder: every command that writes a dataset folder (scan, plan, write, shard,
convert) holds its lock (`output_lock`, tlxcore.lock.folder_lock) while it works, so a second
one is refused in one line naming the holder's pid; the partitions of one write hold it shared.

    with output_lock(out, "tlx shard"):    # FolderBusy if another live process writes there
        ...
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from datakit.errors import DatakitError
from datakit.manifest import Layout
from tlxcore.lock import folder_lock

RESUME_MODES = ("auto", "never")
_HELD: dict[Path, int] = {}      # folders whose lock this process holds -> nesting depth


@contextmanager
def output_lock(folder: str | os.PathLike, command: str, shared: bool = False) -> Iterator[None]:
    """Hold the folder's write lock for the block (tlxcore.lock.folder_lock: a second process is
    refused naming the holder's pid, a dead holder's lock is taken over). Reentrant within the
    process: `tlx shard` holds it across scan, plan and write, which take it themselves when
    called alone. `shared`: the partitions of one `tlx write`, which run side by side."""
    key = Path(folder).resolve()
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield
        finally:
            _HELD[key] -= 1
        return
    with folder_lock(folder, command, shared=shared):
        _HELD[key] = 1
        try:
            yield
        finally:
            del _HELD[key]


def check_resume_mode(resume: str) -> str:
    if resume not in RESUME_MODES:
        raise DatakitError(f"--resume {resume!r} is not one of: {', '.join(RESUME_MODES)}")
    return resume


def refuse_foreign(folder: str | os.PathLike) -> None:
    """DatakitError if `folder` is a file or holds anything a tlx dataset folder does not."""
    root = Path(folder)
    if root.exists() and not root.is_dir():
        raise DatakitError(f"output {str(root)!r} is a file, not a folder")
    foreign = Layout(root).foreign_entries()
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise DatakitError(f"output folder {str(root)!r} holds {foreign[0]!r}{more}, which no tlx command "
                           f"writes: it is not a tlx dataset folder; choose a new or empty folder")


def check_output_folder(folder: str | os.PathLike, resume: str, command: str) -> bool:
    """Refuse what `resume` does not allow (see the module docstring); True when the folder holds
    earlier work of a tlx command (the caller checks it is its own and made with its options)."""
    check_resume_mode(resume)
    refuse_foreign(folder)
    root = Path(folder)
    if not (root.is_dir() and any(not p.name.startswith(".") for p in root.iterdir())):
        return False
    if resume == "never":
        raise DatakitError(f"output folder {str(root)!r} is not empty and --resume is never; choose a new folder, "
                           f"or use --resume auto to continue the earlier `{command}` there")
    return True


# Option names as the commands spell them, where a config's own field name is not the flag's.
_FLAGS = {"exclude_classes": "--exclude-class"}


def differing_options(made: dict, asked: dict) -> list[str]:
    """The flags (e.g. `--size`) whose values differ between the config earlier work was made
    with and the one asked for now, for a refusal that says what differs."""
    return [_FLAGS.get(k, "--" + k.replace("_", "-")) for k in sorted(set(made) | set(asked))
            if made.get(k) != asked.get(k)]
