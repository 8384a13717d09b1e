"""The CT volumes of a tlx dataset, for the scale factors, read through datakit.read (the one reader).

    >>> ds = CTDataset("data/", split="train")
    >>> ds.volumes[:2], ds.slice_counts[:2]          # volume ids and their slice counts
    >>> refs = ds.refs(0)                             # where each slice of volume 0 lies, in slice order
    >>> pixels = read_slices(refs, ds.member)         # (slices, H, W) int16 HU

datakit.read opens the manifest, lists where every sample's members lie (from the
`.idx` beside each shard) and decodes a member's bytes. What the scale factors need
on top of it lives here: the volumes and slice order of slices.parquet joined to those
locations, and the reading of one volume's slices, which the writer's global shuffle
scatters over many shards. Errors of the dataset become AnalysisError, naming the file.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from analysis.errors import AnalysisError
from datakit.errors import DatakitError
from datakit.read import SPLITS as DATASET_SPLITS
from datakit.read import SampleReader, TlxDataset, open_dataset

CODECS = ("zstd-shuffle", "zstd", "raw")
SPLITS = (*DATASET_SPLITS, "all")
VERIFY = "run `tlx verify` on the dataset"


@dataclass(frozen=True)
class ImageMember:
    """The image member of a dataset as the scale factors read it: one channel, 2-D (picklable)."""

    ext: str
    codec: str
    dtype: str
    shape: tuple[int, int]
    reader: SampleReader     # a template: each read_slices call works on its own copy

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


def open_tlx(root: Path) -> TlxDataset:
    """datakit.read.open_dataset, its refusals as AnalysisError: in datakit's words (no manifest, an unknown
    format version), or, for a manifest that cannot be parsed, naming it and pointing to `tlx verify`."""
    manifest = root / "manifest.json"
    try:
        return open_dataset(root)
    except DatakitError as exc:
        if not isinstance(exc.__cause__, ValueError):  # (a JSONDecodeError is a ValueError)
            raise AnalysisError(str(exc)) from None
        reason = str(exc).removeprefix(f"{manifest}: ")
    # datakit.read lets these through for a manifest that is not UTF-8 or is JSON of another shape
    except (OSError, ValueError, TypeError, AttributeError, KeyError) as exc:
        reason = f"{type(exc).__name__}: {exc}"
    raise AnalysisError(f"{manifest} cannot be read: {reason}; {VERIFY}")


def image_member(dataset: TlxDataset) -> ImageMember:
    images = [spec for spec in dataset.members.values() if spec.role == "image"]
    if len(images) != 1:
        raise AnalysisError(f"the manifest must name exactly one member with role 'image', found {len(images)}")
    spec = images[0]
    if spec.codec not in CODECS:
        raise AnalysisError(f"image codec {spec.codec!r} is not supported for scale factors; use one of {CODECS}")
    if spec.dtype is None:
        raise AnalysisError(f"the manifest names no dtype for the image member {spec.ext!r}; {VERIFY}")
    shape = tuple(int(s) for s in spec.shape or ())
    if len(shape) == 3 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) != 2:
        raise AnalysisError(f"scale factors need single-channel 2-D images, the manifest says shape {list(shape)}")
    return ImageMember(spec.ext, spec.codec, spec.numpy_dtype.str, shape, SampleReader(dataset))


def _slices_table(root: Path, split: str):
    """slices.parquet's rows of the split (all rows for "all"), sorted by volume and slice index."""
    import polars as pl

    path = root / "slices.parquet"
    if not path.is_file():
        raise AnalysisError(f"{root} has no slices.parquet: not a complete tlx dataset")
    try:
        table = pl.read_parquet(path)
    except (OSError, pl.exceptions.PolarsError) as exc:  # cut short, overwritten
        raise AnalysisError(f"{path} cannot be read as Parquet ({type(exc).__name__}: {exc}); {VERIFY}") from None
    missing = {"key", "split", "shard", "volume", "slice_index"} - set(table.columns)
    if missing:
        raise AnalysisError(f"slices.parquet lacks column(s) {sorted(missing)}: scale factors need volumes")
    if split != "all":
        table = table.filter(pl.col("split") == split)
    if table.height == 0:
        raise AnalysisError(f"split {split!r} of {root} holds no slices")
    return table.sort(["volume", "slice_index"])


def _sample_locations(dataset: TlxDataset, splits: tuple[str, ...], ext: str):
    """(shard paths, frame of shard id, key, offset, size): every sample of `splits`, from datakit.read."""
    import polars as pl

    paths: list[str] = []
    frames = []
    for split in splits:
        try:
            table = dataset.sample_table(split, with_keys=True)
        except (DatakitError, OSError, ValueError, IndexError) as exc:  # a missing or garbled .idx
            raise AnalysisError(f"split {split!r}: cannot list its samples ({exc}); {VERIFY}") from None
        frames.append(pl.DataFrame({"shard_id": table.shard.astype(np.int64) + len(paths),
                                    "key": pl.Series(table.keys.tolist(), dtype=pl.String),
                                    "offset": table.offset[ext], "size": table.size[ext]}))
        paths += [str(p) for p in table.shard_paths]
    return paths, pl.concat(frames)


def _locate(dataset: TlxDataset, table, ext: str, split: str):
    """Each row's (shard id, offset, size) of the `ext` member, with the shard paths the ids index."""
    import polars as pl

    paths, located = _sample_locations(dataset, DATASET_SPLITS if split == "all" else (split,), ext)
    ids = {p: i for i, p in enumerate(paths)}
    shard_ids = {s: ids.get(str(dataset.root / s), -1) if s is not None else -1
                 for s in table["shard"].unique().to_list()}
    rows = (table.select("key", "shard").with_row_index("row")
            .with_columns(shard_id=pl.col("shard").replace_strict(shard_ids, return_dtype=pl.Int64))
            .join(located, on=["shard_id", "key"], how="left").sort("row"))
    if rows.height != table.height:
        raise AnalysisError(f"the shards' indexes list a sample key twice within a shard; {VERIFY}")
    lost = rows.filter(pl.col("offset").is_null())
    if lost.height:
        key, shard = lost.row(0, named=True)["key"], lost.row(0, named=True)["shard"]
        raise AnalysisError(f"sample {key!r} of slices.parquet is not in {shard} ({VERIFY})")
    return paths, rows["shard_id"].to_numpy(), rows["offset"].to_numpy(), rows["size"].to_numpy()


class CTDataset:
    """The volumes of one split (or all) of a tlx dataset, each a list of slice locations."""

    def __init__(self, root: Path | str, split: str = "train"):
        self.root = Path(root)
        if split not in SPLITS:
            raise AnalysisError(f"split {split!r} is not known; use one of {SPLITS}")
        dataset = open_tlx(self.root)
        self.member = image_member(dataset)
        table = _slices_table(self.root, split)
        self._shard_paths, self._shard, self._offsets, self._sizes = _locate(dataset, table, self.member.ext, split)
        volumes = table["volume"].to_numpy()
        self._slice_index = table["slice_index"].to_numpy()
        starts = np.flatnonzero(np.r_[True, volumes[1:] != volumes[:-1]])
        self.volumes: list[str] = [str(v) for v in volumes[starts]]
        self._starts = np.r_[starts, len(volumes)]
        self.slice_counts = np.diff(self._starts)

    def __len__(self) -> int:
        return len(self.volumes)

    def refs(self, v: int) -> SliceRefs:
        return self.global_refs(np.arange(self._starts[v], self._starts[v + 1]))

    def slice_indices(self, v: int) -> np.ndarray:
        """slices.parquet's slice_index of volume v's slices, in slice order (gaps where slices were dropped)."""
        return self._slice_index[self._starts[v]:self._starts[v + 1]]

    def global_refs(self, rows) -> SliceRefs:
        """Slices by row number of the (volume, slice_index)-sorted table."""
        rows = np.asarray(rows)
        return SliceRefs(tuple(self._shard_paths[s] for s in self._shard[rows]), self._offsets[rows],
                         self._sizes[rows])


def read_slices(refs: SliceRefs, member: ImageMember) -> np.ndarray:
    """(len(refs), H, W) pixels, decoded by datakit.read, in the order of `refs`."""
    # A fresh copy of the template reader (its copies, like its pickles, start with no open file): reader
    # threads share no zstd decompressor, and the shard files one call opened are closed when it ends.
    reader = copy.copy(member.reader)
    out = np.empty((len(refs), *member.shape), dtype=member.numpy_dtype.newbyteorder("="))
    try:
        for i, (path, offset, size) in enumerate(zip(refs.paths, refs.offsets, refs.sizes)):
            out[i] = reader.read_member(Path(path), int(offset), int(size), member.ext).reshape(member.shape)
    finally:
        reader.close()
    return out
