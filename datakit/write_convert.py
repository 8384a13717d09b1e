"""Phase 1 of write, one volume at a time: DICOM files -> one staged file (see write_staging).

    result = convert_volume(task)      # runs in a worker process (or inline with --workers 1)

Per slice: read_hu (the file is read in full exactly once, here) -> the HU floor (padding
outside the reconstruction circle becomes air) -> body coverage on the native-resolution HU ->
area resize to the fixed size -> int16 -> pixel hash of the stored bytes -> encode with the
chosen codec. A slice that cannot be read is kept in the staged
file with its reject code and reason, so phase 2 accounts for every planned slice.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from datakit.dicom_header import SliceRejected
from datakit.dicom_pixels import read_hu
from datakit.hu_slice import apply_hu_floor, body_coverage, resize_area, to_int16
from datakit.write_config import CODECS
from datakit.write_staging import Staging

MEMBER_EXT = {"zstd": "hu.zst", "raw": "hu.raw"}
PIXEL_HASH_BYTES = 16


@dataclass(frozen=True)
class VolumeTask:
    volume: str
    rows: list[dict]           # index columns read_hu needs + row, slice_index, key, path
    dicom_root: str
    size: tuple[int, int]
    codec: str
    zstd_level: int
    hu_floor: int | None


@dataclass(frozen=True)
class VolumeResult:
    volume: str
    slices: int
    converted: int
    bytes: int


def pixel_hash(stored: bytes) -> str:
    """Hash of the stored little-endian int16 pixels (equal hash = pixel-identical slices)."""
    return hashlib.blake2b(stored, digest_size=PIXEL_HASH_BYTES).hexdigest()


class Encoder:
    """int16 pixels -> payload bytes, and back (the manifest names the codec)."""

    def __init__(self, codec: str, level: int = 3):
        if codec not in CODECS:
            raise ValueError(f"codec {codec!r} is not one of {CODECS}")
        self.codec, self.level = codec, level
        if codec == "zstd":
            import zstandard

            # Content size in the frame header: a reader can allocate once; no checksum, the
            # shard's sha256 already covers the bytes.
            self._c = zstandard.ZstdCompressor(level=level, write_content_size=True)

    def encode(self, stored: bytes) -> bytes:
        return self._c.compress(stored) if self.codec == "zstd" else stored

    @staticmethod
    def decode(codec: str, payload: bytes, shape: tuple[int, int]) -> np.ndarray:
        if codec == "zstd":
            import zstandard

            payload = zstandard.ZstdDecompressor().decompress(payload)
        return np.frombuffer(payload, dtype="<i2").reshape(shape)


def convert_slice(path: Path, row: dict, size: tuple[int, int], encoder: Encoder,
                  hu_floor: int | None = None) -> tuple[float, str, bytes]:
    """coverage, pixel hash, payload of one slice; raises SliceRejected."""
    hu = apply_hu_floor(read_hu(path, row), hu_floor)
    coverage = body_coverage(hu)
    stored = to_int16(resize_area(hu, size)).astype("<i2", copy=False).tobytes()
    return coverage, pixel_hash(stored), encoder.encode(stored)


def convert_volume(task: VolumeTask, staging: Staging) -> VolumeResult:
    encoder = Encoder(task.codec, task.zstd_level)
    root = Path(task.dicom_root)
    cols = {n: [] for n in ("row", "slice_index", "key", "code", "reason", "coverage", "pixel_hash", "payload")}
    converted = 0
    for r in sorted(task.rows, key=lambda r: r["slice_index"]):
        try:
            coverage, digest, payload = convert_slice(root / r["path"], r, task.size, encoder, task.hu_floor)
            code = reason = None
            converted += 1
        except SliceRejected as exc:
            coverage, digest, payload, code, reason = None, None, None, exc.code, exc.reason
        for name, value in (("row", r["row"]), ("slice_index", r["slice_index"]), ("key", r["key"]),
                            ("code", code), ("reason", reason), ("coverage", coverage),
                            ("pixel_hash", digest), ("payload", payload)):
            cols[name].append(value)
    nbytes = staging.write_volume(task.volume, pa.table(cols))
    return VolumeResult(task.volume, len(task.rows), converted, nbytes)


# --------------------------------------------------------------- worker processes

_STAGING: Staging | None = None


def init_worker(layout_root: str) -> None:
    """Process-pool initializer: die with the parent, one thread per worker."""
    global _STAGING
    from datakit.manifest import Layout
    from datakit.write_pool import die_with_parent

    die_with_parent()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _STAGING = Staging(Layout(layout_root))


def convert_in_worker(task: VolumeTask) -> VolumeResult:
    return convert_volume(task, _STAGING)
