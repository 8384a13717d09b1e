"""The dataset contract on disk: where each file of a dataset lives, and manifest.json.

    layout = Layout(dataset_dir)
    layout.index, layout.plan, layout.staging, layout.manifest, layout.shard_path("train", 3)
    manifest = read_manifest(dataset_dir)      # refuses a format version it does not know

docs/dataset-format.md is the reader's description of the same thing (datakit.read its one
reader); keep them in step. Every file of a dataset is written through tlxcore.atomic (a
temporary name, then a rename), so a kill at any moment leaves either the old file or the
new one under the final name, never half of one.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from datakit.errors import DatakitError
from tlxcore.atomic import is_partial

FORMAT = "tlx-shards"
FORMAT_VERSION = 2         # 2: codec zstd-shuffle, zstd frames with checksums, pixel_hash xxh3-128
KIND = "ct-slices"
SPLITS = ("train", "val", "test")
# What a dataset folder holds at its top level, whichever command wrote it (tlx scan, plan, write,
# shard, convert). Besides these only temporary files of a killed writer and hidden files (the
# folder lock, .DS_Store) may be there; anything else means the folder is not a tlx dataset.
TOP_LEVEL = frozenset({"manifest.json", "slices.parquet", "volumes.parquet", "rejects.parquet", "shards", "work"})


@dataclass(frozen=True)
class Layout:
    """Paths of one dataset folder (shared part) and its work/ folder (operator side)."""

    root: Path

    def __init__(self, root: str | os.PathLike):
        object.__setattr__(self, "root", Path(root))

    # shareable output
    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def slices(self) -> Path:
        return self.root / "slices.parquet"

    @property
    def volumes(self) -> Path:
        return self.root / "volumes.parquet"

    @property
    def rejects(self) -> Path:
        return self.root / "rejects.parquet"

    @property
    def shards(self) -> Path:
        return self.root / "shards"

    def shard_path(self, split: str, number: int) -> Path:
        return self.shards / split / f"{split}-{number:06d}.tar"

    # operator-side intermediates
    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def index(self) -> Path:
        return self.work / "index.parquet"

    @property
    def plan(self) -> Path:
        return self.work / "plan.parquet"

    @property
    def plan_volumes(self) -> Path:
        return self.work / "plan_volumes.parquet"

    @property
    def plan_rejects(self) -> Path:
        return self.work / "plan_rejects.parquet"

    @property
    def plan_copies(self) -> Path:
        """work/plan_copies.parquet: the other copies (same SOP UID) of planned files, write's fallbacks."""
        return self.work / "plan_copies.parquet"

    @property
    def plan_json(self) -> Path:
        return self.work / "plan.json"

    @property
    def scan_record(self) -> Path:
        """work/scan.json: the DICOM root and the label rules the index was made from."""
        return self.work / "scan.json"

    @property
    def staging(self) -> Path:
        return self.work / "staging"

    @property
    def assemble_lock(self) -> Path:
        return self.work / "assemble.lock"

    def foreign_entries(self) -> list[str]:
        """Names at the top level of the folder that no tlx command writes (sorted; [] if absent)."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if p.name not in TOP_LEVEL and not p.name.startswith(".") and not is_partial(p))

    def final_outputs(self) -> list[Path]:
        """What `tlx write` produces (present = the folder is not fresh for a write)."""
        return [p for p in (self.manifest, self.slices, self.volumes, self.rejects, self.shards) if p.exists()]


def read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise DatakitError(f"{what} not found: {path}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatakitError(f"{what} is not valid JSON: {path} ({exc})") from exc


def read_manifest(dataset_dir: str | os.PathLike) -> dict:
    """manifest.json of a finished dataset, read by datakit.read (which refuses a format version
    it does not know); an unfinished write is named as such."""
    from datakit.read import open_dataset

    layout = Layout(dataset_dir)
    if not layout.root.is_dir():
        raise DatakitError(f"dataset folder not found: {layout.root}")
    if not layout.manifest.exists():
        raise DatakitError(f"{layout.root} holds no manifest.json: not a finished tlx dataset "
                           f"(run `tlx write {layout.root}` to finish an interrupted write)")
    return open_dataset(layout.root).manifest
