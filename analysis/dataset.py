"""Read the CT volumes of a tlx dataset (docs/dataset-format.md), for the scale factors.

    >>> ds = CTDataset("data/", split="train")
    >>> ds.volumes[:2], ds.slice_counts[:2]          # volume ids and their slice counts
    >>> refs = ds.refs(0)                             # where each slice of volume 0 lies, in slice order
    >>> pixels = read_slices(refs, ds.member)         # (slices, H, W) int16 HU

Slices of a volume are scattered over many shards (the writer shuffles globally), so
they are read by offset: the `.idx` beside each shard gives every member's data
offset and size (the tar headers are parsed instead when an index is missing).
Only the dataset contract is used here, never datakit's code.
"""
from __future__ import annotations

import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from analysis.errors import AnalysisError

FORMAT = "tlx-shards"
FORMAT_VERSIONS = (1,)
CODECS = ("zstd", "raw")
SPLITS = ("train", "val", "test", "all")


@dataclass(frozen=True)
class ImageMember:
    ext: str
    codec: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)


@dataclass(frozen=True)
class SliceRefs:
    """Where the slices of one volume are: parallel arrays, in slice order."""

    paths: tuple[str, ...]
    offsets: np.ndarray
    sizes: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets)

    def take(self, idx) -> "SliceRefs":
        idx = np.asarray(idx)
        return SliceRefs(tuple(self.paths[i] for i in idx), self.offsets[idx], self.sizes[idx])


def load_manifest(root: Path) -> dict:
    path = root / "manifest.json"
    if not path.is_file():
        raise AnalysisError(f"{root} is not a tlx dataset: no manifest.json (make one with `tlx shard`)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AnalysisError(f"{path} cannot be read ({type(exc).__name__}: {exc}); run `tlx verify` on the dataset") \
            from None
    if not isinstance(manifest, dict):
        raise AnalysisError(f"{path} is not a JSON object; run `tlx verify` on the dataset")
    if manifest.get("format") != FORMAT or manifest.get("format_version") not in FORMAT_VERSIONS:
        raise AnalysisError(f"{path}: format {manifest.get('format')!r} version {manifest.get('format_version')!r} "
                            f"is not known; this tlx reads {FORMAT!r} versions {FORMAT_VERSIONS}")
    return manifest


def image_member(manifest: dict) -> ImageMember:
    images = [(ext, m) for ext, m in manifest.get("members", {}).items() if m.get("role") == "image"]
    if len(images) != 1:
        raise AnalysisError(f"the manifest must name exactly one member with role 'image', found {len(images)}")
    ext, m = images[0]
    if m.get("codec") not in CODECS:
        raise AnalysisError(f"image codec {m.get('codec')!r} is not supported for scale factors; use one of {CODECS}")
    dtype = np.dtype(m.get("dtype", "int16")).newbyteorder("<" if m.get("byteorder", "little") == "little" else ">")
    shape = tuple(int(s) for s in m.get("shape", ()))
    if len(shape) == 3 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) != 2:
        raise AnalysisError(f"scale factors need single-channel 2-D images, the manifest says shape {list(shape)}")
    return ImageMember(ext, m["codec"], dtype.str, shape)


def _index_entries(tar_path: Path, ext: str) -> dict[str, tuple[int, int]]:
    """key -> (data offset, size) of the `ext` member of every sample in one shard."""
    idx_path = tar_path.with_suffix(".idx")
    out: dict[str, tuple[int, int]] = {}
    suffix = "." + ext
    if idx_path.is_file():
        lines = idx_path.read_text().splitlines()
        for line in lines[1:]:
            parts = line.split()
            for i in range(0, len(parts), 4):
                if parts[i] == ext:
                    out[parts[i + 3][:-len(suffix)]] = (int(parts[i + 1]), int(parts[i + 2]))
        return out
    with tarfile.open(tar_path) as tar:  # no index: the tar's own headers say the same
        for info in tar:
            if info.name.endswith(suffix):
                out[info.name[:-len(suffix)]] = (info.offset_data, info.size)
    return out


class CTDataset:
    """The volumes of one split (or all) of a tlx dataset, each a list of slice locations."""

    def __init__(self, root: Path | str, split: str = "train"):
        import polars as pl

        self.root = Path(root)
        if split not in SPLITS:
            raise AnalysisError(f"split {split!r} is not known; use one of {SPLITS}")
        self.manifest = load_manifest(self.root)
        self.member = image_member(self.manifest)
        slices_path = self.root / "slices.parquet"
        if not slices_path.is_file():
            raise AnalysisError(f"{self.root} has no slices.parquet: not a complete tlx dataset")
        try:
            table = pl.read_parquet(slices_path)
        except (OSError, pl.exceptions.PolarsError) as exc:  # cut short, overwritten
            raise AnalysisError(f"{slices_path} cannot be read as Parquet ({type(exc).__name__}: {exc}); "
                                f"run `tlx verify` on the dataset") from None
        missing = {"key", "split", "shard", "volume", "slice_index"} - set(table.columns)
        if missing:
            raise AnalysisError(f"slices.parquet lacks column(s) {sorted(missing)}: scale factors need volumes")
        if split != "all":
            table = table.filter(pl.col("split") == split)
        if table.height == 0:
            raise AnalysisError(f"split {split!r} of {self.root} holds no slices")
        table = table.sort(["volume", "slice_index"])
        self._locate(table)
        volumes = table["volume"].to_numpy()
        starts = np.flatnonzero(np.r_[True, volumes[1:] != volumes[:-1]])
        self.volumes: list[str] = [str(v) for v in volumes[starts]]
        self._starts = np.r_[starts, len(volumes)]
        self.slice_counts = np.diff(self._starts)

    def _locate(self, table) -> None:
        shards = table["shard"].to_list()
        keys = table["key"].to_list()
        entries = {}
        for s in sorted(set(shards)):
            try:
                entries[s] = _index_entries(self.root / s, self.member.ext)
            except (OSError, ValueError, IndexError, tarfile.TarError) as exc:  # a missing shard, a garbled .idx
                raise AnalysisError(f"{s}: cannot list its samples ({type(exc).__name__}: {exc}); "
                                    f"run `tlx verify` on the dataset") from None
        offsets = np.empty(len(keys), np.int64)
        sizes = np.empty(len(keys), np.int64)
        for i, (shard, key) in enumerate(zip(shards, keys)):
            try:
                offsets[i], sizes[i] = entries[shard][key]
            except KeyError:
                raise AnalysisError(f"sample {key!r} of slices.parquet is not in {shard} "
                                    f"(run `tlx verify` on the dataset)") from None
        full = {s: str(self.root / s) for s in entries}  # one string per shard, shared by its rows
        self._paths = np.asarray([full[s] for s in shards], dtype=object)
        self._offsets, self._sizes = offsets, sizes

    def __len__(self) -> int:
        return len(self.volumes)

    def refs(self, v: int) -> SliceRefs:
        lo, hi = self._starts[v], self._starts[v + 1]
        return SliceRefs(tuple(self._paths[lo:hi]), self._offsets[lo:hi], self._sizes[lo:hi])

    def global_refs(self, rows) -> SliceRefs:
        """Slices by row number of the (volume, slice_index)-sorted table."""
        rows = np.asarray(rows)
        return SliceRefs(tuple(self._paths[rows]), self._offsets[rows], self._sizes[rows])


def read_slices(refs: SliceRefs, member: ImageMember) -> np.ndarray:
    """(len(refs), H, W) pixels, decoded, in the order of `refs`."""
    import zstandard

    dtype = member.numpy_dtype
    nbytes = int(np.prod(member.shape)) * dtype.itemsize
    out = np.empty((len(refs), *member.shape), dtype=dtype.newbyteorder("="))
    decoder = zstandard.ZstdDecompressor() if member.codec == "zstd" else None
    fds: dict[str, int] = {}
    try:
        for i, (path, offset, size) in enumerate(zip(refs.paths, refs.offsets, refs.sizes)):
            if path not in fds:
                fds[path] = os.open(path, os.O_RDONLY)
            data = os.pread(fds[path], int(size), int(offset))
            if len(data) != size:
                raise AnalysisError(f"{path}: short read at offset {offset} (truncated shard?)")
            if decoder is not None:
                data = decoder.decompress(data, max_output_size=nbytes)
            if len(data) != nbytes:
                raise AnalysisError(f"{path}: a slice decodes to {len(data)} bytes, expected {nbytes} "
                                    f"for {member.dtype} {list(member.shape)}")
            out[i] = np.frombuffer(data, dtype=dtype).reshape(member.shape)
    finally:
        for fd in fds.values():
            os.close(fd)
    return out
