"""What phase 1 of write leaves for phase 2: one staged file per volume under work/staging/.

    staging = Staging(layout)
    fresh = staging.claim(identity)              # first run records the options; later runs must match
    staging.write_volume("3f9c0a1b7d2e4c55", table)   # written to a temporary name, then renamed
    staging.is_staged("3f9c0a1b7d2e4c55")
    meta = staging.read_meta(volume)             # every column but the payloads
    payloads = staging.read_payloads(volume)     # memory-mapped: only the slices asked for are read

A staged file is an Arrow IPC file with one row per planned slice of the volume: the
slice's index row, its key, and either its coverage, pixel hash and encoded payload or
the code and reason it could not be read; `source_row` (the copy of the file whose pixels
are stored: the planned file itself unless it could not be read) and `failures` (every copy
tried that could not be read, with its code and reason). The file is complete or absent: a kill at any
moment loses at most the volumes being converted, and a rerun converts exactly those.
The files depend only on the plan and the conversion options, never on which partition
or run made them, which is what makes N partitions + assembly equal one run.
"""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from datakit.errors import DatakitError
from datakit.manifest import Layout, read_json
from tlxcore.atomic import atomic_write, json_text, write_json_atomic

STAGED_SCHEMA = pa.schema([
    ("row", pa.int64()), ("slice_index", pa.int32()), ("key", pa.string()),
    ("code", pa.string()), ("reason", pa.string()),        # null when the slice was converted
    ("coverage", pa.float32()), ("pixel_hash", pa.string()), ("payload", pa.binary()),
    ("source_row", pa.int64()),                            # the copy whose pixels are stored (null: none read)
    ("failures", pa.list_(pa.struct([("row", pa.int64()), ("code", pa.string()), ("reason", pa.string())]))),
])
META_COLUMNS = [n for n in STAGED_SCHEMA.names if n != "payload"]


class Staging:
    def __init__(self, layout: Layout):
        self.dir = layout.staging
        self.volumes_dir = self.dir / "volumes"
        self.identity_path = self.dir / "identity.json"

    # --- identity: the plan and the options the staged files were made with
    def claim(self, identity: dict) -> bool:
        """Record `identity` on first use (returns True) or check it (returns False); refuse to mix
        staged files made from another plan or with other options (the partitions of one write
        must agree)."""
        if self.identity_path.exists():
            have = read_json(self.identity_path, "work/staging/identity.json")
            if have.get("staged_format") != identity.get("staged_format"):
                raise DatakitError(
                    f"{self.dir} was staged by another version of tlx (staged format {have.get('staged_format', 1)}, "
                    f"this one writes {identity.get('staged_format')}: other pixel hashes and payloads); delete "
                    f"{self.dir} to start the write over")
            if have != identity:
                diff = sorted(k for k in set(have) | set(identity) if have.get(k) != identity.get(k))
                raise DatakitError(
                    f"{self.dir} was started with another plan or other options ({', '.join(diff)} differ); "
                    f"rerun with the same options, or delete {self.dir} to start the write over")
            return False
        self.volumes_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(identity, self.identity_path, sort_keys=True)
        # Two partitions may claim at once: whoever wins the rename, both must agree.
        if read_json(self.identity_path, "work/staging/identity.json") != identity:
            raise DatakitError(f"another write with other options claimed {self.dir} at the same time")
        return True

    def exists(self) -> bool:
        return self.dir.exists()

    # --- volumes
    def volume_path(self, volume: str) -> Path:
        return self.volumes_dir / volume[:2] / f"{volume}.arrow"

    def is_staged(self, volume: str) -> bool:
        return self.volume_path(volume).exists()

    def staged(self, volumes) -> set[str]:
        return {v for v in volumes if self.is_staged(v)}

    def write_volume(self, volume: str, table: pa.Table) -> int:
        """Write one volume's staged file atomically; returns its size in bytes."""
        path = self.volume_path(volume)
        with atomic_write(path) as f, pa.ipc.new_file(f, STAGED_SCHEMA) as writer:
            writer.write_table(table.cast(STAGED_SCHEMA))
        return path.stat().st_size

    def _open(self, volume: str) -> pa.Table:
        with pa.memory_map(str(self.volume_path(volume))) as source:
            return pa.ipc.open_file(source).read_all()

    def read_meta(self, volume: str) -> pa.Table:
        table = self._open(volume)
        for name in META_COLUMNS:   # staged before source_row / failures existed: no copy was tried
            if name not in table.column_names:
                table = table.append_column(STAGED_SCHEMA.field(name), pa.nulls(table.num_rows,
                                                                                STAGED_SCHEMA.field(name).type))
        return table.select(META_COLUMNS)

    def read_payloads(self, volume: str) -> pa.ChunkedArray:
        """The payload column, memory-mapped (pages are read only for the slices used)."""
        return self._open(volume).column("payload")


# What a staged file holds beyond the options: 2 = xxh3-128 pixel hashes, zstd frames with checksums
# (format version 2). Staged files of another format must not be assembled with these: pixel
# dedup compares hashes, which would never match across algorithms.
STAGED_FORMAT = 2


def identity_of(plan_json: dict, write_config: dict) -> dict:
    """What staged files depend on: the plan (as plan.json says it), the conversion options and the
    staged format."""
    import hashlib

    return {"plan_sha256": hashlib.sha256(json_text(plan_json, sort_keys=True).encode()).hexdigest(),
            "write": write_config, "staged_format": STAGED_FORMAT}
