"""The pixel hash of a stored slice (slices.parquet's `pixel_hash`): equal hash = pixel-identical slices.

    digest = pixel_hash(stored)                    # 32 hex digits, the algorithm of this tlx (PIXEL_HASH)
    digest = pixel_hash(stored, "blake2b-128")     # as a dataset of format version 1 recorded it

`stored` is the slice's stored int16 pixels, little-endian, C order, before encoding. Write
dedups slices by it (assemble.dedup_pixels) and verify checks it against the decoded pixels,
so both must use the algorithm the dataset names: manifest.json's `pixel_hash`, absent in
format version 1, whose hash was BLAKE2b-128. Since version 2 it is XXH3-128, 20x cheaper on a
256x256 slice (0.01 against 0.24 ms; benchmarks/RESULTS.md) and as good for telling slices apart:
it guards against accidents (re-sent series, repeated positions), not against an adversary who
crafts colliding pixels, which no one feeding their own PACS export is.
"""
from __future__ import annotations

import hashlib

from datakit.errors import DatakitError

PIXEL_HASH = "xxh3-128"
FORMAT_1_PIXEL_HASH = "blake2b-128"
PIXEL_HASHES = (PIXEL_HASH, FORMAT_1_PIXEL_HASH)


def pixel_hash(stored: bytes, algorithm: str = PIXEL_HASH) -> str:
    if algorithm == PIXEL_HASH:
        import xxhash

        return xxhash.xxh3_128_hexdigest(stored)
    if algorithm == FORMAT_1_PIXEL_HASH:
        return hashlib.blake2b(stored, digest_size=16).hexdigest()
    raise DatakitError(f"pixel hash {algorithm!r} is unknown to this tlx; it knows {', '.join(PIXEL_HASHES)}")


def dataset_pixel_hash(manifest: dict) -> str:
    """The algorithm of a dataset's pixel hashes: its manifest's `pixel_hash`, BLAKE2b-128 where absent."""
    return manifest.get("pixel_hash") or FORMAT_1_PIXEL_HASH
