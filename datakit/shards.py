"""Writing one WebDataset shard: a plain POSIX tar, its DALI index, its sha256.

    with ShardWriter("shards/train/train-000000.tar") as w:
        w.write("p1a2b-v0003-s0042", {"hu.zst": payload, "cls": b"2"})
    info = w.info          # ShardInfo(path, index_path, samples, bytes, sha256)

What the format needs (DESIGN.md, "known traps"):
- both readers take the key to be everything before the *first* dot of a member
  name, so keys may not contain dots (or path separators);
- DALI's own indexer mishandles member names over 100 characters, and a USTAR
  header holds only 100, so longer names are refused here and the `.idx` is
  written from the offsets this writer knows (data offsets, not header offsets);
- mtime, uid, gid and names are fixed so the same samples give the same bytes;
- headers are built here, not by tarfile (whose per-member overhead was ~4% of a
  whole `tlx shard` run): the bytes are those tarfile writes for such members
  (tested), and they no longer depend on the Python version's tarfile;
- the tar (and its .idx) is written through tlxcore.atomic: under a temporary name,
  renamed when complete, so no half-written shard is ever visible under its final name.
"""
from __future__ import annotations

import hashlib
import re
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from tlxcore.atomic import atomic_write, write_text_atomic

_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_EXT = re.compile(r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$")
_BLOCK = 512                  # tar block
_RECORD = 20 * _BLOCK         # a tar ends with two zero blocks, padded to a whole record (tar -b20)
# USTAR header of a regular file, after the 148 bytes of name, mode, uid, gid, size and mtime and the
# 8-byte checksum: type "0", no link name, magic "ustar\0" version "00", empty owner names, no device
# numbers, no name prefix, padding to 512.
_TAIL = b"0" + bytes(100) + b"ustar\x0000" + bytes(32 + 32 + 8 + 8 + 155 + 12)
_TAIL_SUM = sum(_TAIL) + 8 * ord(" ")   # the checksum counts its own field as 8 spaces


def ustar_header(name: str, size: int) -> bytes:
    """The 512-byte header of a regular file named `name` (<= 100 ASCII characters) with mode 0644,
    uid/gid 0, empty owner names and mtime 0: what tarfile writes in USTAR format for it."""
    if size >= 8 ** 11:
        raise ValueError(f"member {name!r} of {size} bytes exceeds the 8 GiB a USTAR header can hold")
    head = (name.encode("ascii").ljust(100, b"\0") + b"0000644\0" + b"0000000\0" * 2 + b"%011o\0" % size
            + b"00000000000\0")
    return head + b"%06o\0 " % (sum(head) + _TAIL_SUM) + _TAIL


@dataclass(frozen=True)
class ShardInfo:
    path: Path
    index_path: Path
    samples: int
    bytes: int
    sha256: str


class _HashingFile:
    """A write-only file that hashes and counts what goes through it."""

    def __init__(self, f):
        self.f, self.sha, self.pos = f, hashlib.sha256(), 0

    def write(self, b) -> int:
        self.sha.update(b)
        self.pos += len(b)
        return self.f.write(b)

    def tell(self) -> int:
        return self.pos


class ShardAborted(Exception):
    """What ShardWriter.abort hands its atomic_write, so that the temporary file goes."""


def index_path_for(tar_path: Path | str) -> Path:
    return Path(tar_path).with_suffix(".idx")


class ShardWriter:
    def __init__(self, path: Path | str):
        self.path = Path(path)
        if self.path.suffix != ".tar":
            raise ValueError(f"shard path must end in .tar, got {self.path.name!r}")
        self._open = ExitStack()           # the tar's atomic_write, left open until close() or abort()
        self._file = _HashingFile(self._open.enter_context(atomic_write(self.path)))
        self._index_lines: list[str] = []
        self._keys: set[str] = set()
        self.info: ShardInfo | None = None

    def write(self, key: str, members: dict[str, bytes]) -> None:
        """Append one sample: `members` maps extension (e.g. "hu.zst", "cls") to bytes."""
        if not _KEY.match(key):
            raise ValueError(f"sample key {key!r} must match [A-Za-z0-9_-]+ (no dots, no path separators)")
        if key in self._keys:
            raise ValueError(f"sample key {key!r} written twice to {self.path.name}")
        if not members:
            raise ValueError(f"sample {key!r} has no members")
        self._keys.add(key)
        parts = []
        for ext, data in members.items():
            name = f"{key}.{ext}"
            if not _EXT.match(ext) or len(name) > 100:
                raise ValueError(f"member name {name!r} must be at most 100 characters of [A-Za-z0-9_.-]")
            header_at = self._file.pos
            # One 512-byte USTAR header (names <= 100 chars never need an extension header), the
            # data, zeros up to the next block.
            self._file.write(ustar_header(name, len(data)))
            self._file.write(data)
            if len(data) % _BLOCK:
                self._file.write(bytes(_BLOCK - len(data) % _BLOCK))
            parts.append(f"{ext} {header_at + _BLOCK} {len(data)} {name}")
        self._index_lines.append(" ".join(parts))

    def close(self) -> ShardInfo:
        """Finish the tar, write the DALI index, and move both to their final names."""
        if self.info is not None:
            return self.info
        end = self._file.pos + 2 * _BLOCK
        self._file.write(bytes(2 * _BLOCK + (-end) % _RECORD))
        index_path = index_path_for(self.path)
        # The index first: a tar under its final name always has its index beside it.
        lines = [f"v1.2 {len(self._index_lines)}", *self._index_lines]
        write_text_atomic(index_path, "".join(line + "\n" for line in lines))
        self._open.close()                 # fsync, rename to the final name
        self.info = ShardInfo(self.path, index_path, len(self._index_lines), self._file.pos, self._file.sha.hexdigest())
        return self.info

    def abort(self) -> None:
        """Drop a shard that will not be finished (atomic_write removes the temporary file)."""
        self._open.__exit__(ShardAborted, ShardAborted(self.path.name), None)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def sha256_file(path: Path | str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
