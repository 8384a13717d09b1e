"""The one reader of the dataset format (docs/dataset-format.md): manifest, shards, members.

The trainers, analysis and `tlx verify` read datasets through this module and nothing else;
it imports nothing of datakit's writers, only the format.

    from datakit.read import open_dataset, SampleReader
    ds = open_dataset("data/")                  # DatakitError: no manifest, unknown format_version, ...
    ds.kind, ds.classes                         # "ct-slices", ["head", "thorax", ...]
    ext, spec = ds.member("image")              # "hu.zst", MemberSpec(codec="zstd", dtype="int16", shape=(256, 256))
    table = ds.sample_table("train")            # every sample of the split: shard, offset, size per member
    reader = SampleReader(ds)                   # picklable; opens files lazily (safe in worker processes)
    hu = reader.read(table, i, ext)             # np.ndarray int16 (256, 256): sample i's pixels, decoded
    label = reader.read(table, i, "cls")        # int
    value = decode_member(spec, data)           # one member's bytes, decoded (what `tlx verify --decode` uses)

For users' own code (docs/dataset-format.md, "Reading a dataset from your own code"):

    read_sample(sample["hu.zst"], "hu.zst", "data/")     # bytes from a tar / webdataset / DALI -> np.ndarray
    for s in iter_dataset("data/", "train"): ...         # slices.parquet row + members by role, in order
    torch_dataset("data/", "train", transform)           # a map-style torch Dataset

The table is built from the `.idx` files beside the shards (DALI's index: the data
offset and size of every member), so a sample is read with one positioned read of
exactly its bytes; no tar is scanned. Sample `i` of a split is the i-th sample in
manifest shard order, then tar order (the order of slices.parquet).

Integrity: a shard's byte size is checked against the manifest when a reader first opens it
(one fstat; `check="sha256"` or TLX_SHARD_CHECK=sha256 also hashes it whole, see SampleReader),
and zstd frames written since format version 2 carry a content checksum that every decode
verifies, so a flipped byte is an error, never silently wrong pixels. A member that does not
decode is one DatakitError naming the shard, the sample key and the member.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from datakit.errors import DatakitError

FORMAT = "tlx-shards"
FORMAT_VERSIONS = (1, 2)
CODECS = ("zstd-shuffle", "zstd", "raw", "ascii-int", "png", "jpeg")
ARRAY_CODECS = ("zstd-shuffle", "zstd", "raw")
SPLITS = ("train", "val", "test")
SHARD_CHECKS = ("size", "sha256", "none")


@dataclass(frozen=True)
class MemberSpec:
    ext: str
    role: str
    codec: str
    dtype: str | None = None
    byteorder: str = "little"
    shape: tuple[int, ...] | None = None

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype(self.dtype).newbyteorder("<" if self.byteorder == "little" else ">")

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.numpy_dtype.itemsize


@dataclass(frozen=True)
class ShardSpec:
    split: str
    path: Path
    index: Path
    samples: int
    bytes: int
    sha256: str


@dataclass
class SampleTable:
    """Where every sample of a split lives: `shard[i]`, and per member ext `offset[ext][i]`, `size[ext][i]`."""
    split: str
    shard_paths: list[Path]
    shard: np.ndarray                     # int32, index into shard_paths
    offset: dict[str, np.ndarray]         # int64 data offsets
    size: dict[str, np.ndarray]           # int64 sizes
    keys: np.ndarray | None = None        # object array of str, only when asked for

    def __len__(self) -> int:
        return len(self.shard)

    def save(self, folder: str | os.PathLike, exts: list[str]) -> Path:
        """Write the arrays of `exts` as .npy files, for other processes to memory-map (see `load`)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "shard.npy", self.shard)
        for e in exts:
            np.save(folder / f"offset.{e}.npy", self.offset[e])
            np.save(folder / f"size.{e}.npy", self.size[e])
        (folder / "meta.json").write_text(json.dumps({"split": self.split, "exts": exts,
                                                     "shard_paths": [str(p) for p in self.shard_paths]}))
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "SampleTable":
        """A saved table, memory-mapped: processes on one machine share its pages."""
        folder = Path(folder)
        meta = json.loads((folder / "meta.json").read_text())
        mm = (lambda name: np.load(folder / name, mmap_mode="r"))
        return cls(meta["split"], [Path(p) for p in meta["shard_paths"]], mm("shard.npy"),
                   {e: mm(f"offset.{e}.npy") for e in meta["exts"]}, {e: mm(f"size.{e}.npy") for e in meta["exts"]})


def member_specs(members: dict[str, dict], where: str | os.PathLike) -> dict[str, MemberSpec]:
    """The manifest's `members` object as MemberSpecs; DatakitError naming `where` for an unknown codec."""
    specs = {}
    for ext, m in members.items():
        if m.get("codec") not in CODECS:
            raise DatakitError(f"{where}: member {ext!r} has codec {m.get('codec')!r}; known: {', '.join(CODECS)}")
        shape = tuple(m["shape"]) if m.get("shape") is not None else None
        specs[ext] = MemberSpec(ext, m.get("role", ""), m["codec"], m.get("dtype"), m.get("byteorder", "little"),
                                shape)
    return specs


def decode_member(spec: MemberSpec, data: bytes, zstd=None):
    """One member's value: an int for ascii-int, an array of the spec's dtype and shape for
    zstd-shuffle/zstd/raw, an image array for png/jpeg. `zstd`: a zstandard.ZstdDecompressor to
    reuse. Raises DatakitError naming the member when its bytes do not decode to the declared
    value (a zstd frame whose checksum fails, a cut frame, the wrong size, ...)."""
    try:
        if spec.codec == "ascii-int":
            return int(data)
        if spec.codec in ("png", "jpeg"):
            from PIL import Image
            return np.asarray(Image.open(io.BytesIO(data)))
        if spec.codec in ("zstd", "zstd-shuffle"):
            if zstd is None:
                import zstandard
                zstd = zstandard.ZstdDecompressor()
            data = zstd.decompress(data, max_output_size=spec.nbytes)
    except Exception as exc:  # noqa: BLE001 - zstd, PIL and int() raise their own kinds on bad bytes
        raise DatakitError(f"member {spec.ext!r} ({spec.codec}) does not decode: {_one_line(exc)}") from exc
    if len(data) != spec.nbytes:
        raise DatakitError(f"member {spec.ext!r}: {len(data)} bytes do not hold shape {spec.shape} of {spec.dtype}")
    if spec.codec == "zstd-shuffle":
        return byte_unshuffle(data, spec.numpy_dtype).reshape(spec.shape)
    return np.frombuffer(data, dtype=spec.numpy_dtype).reshape(spec.shape)


def byte_unshuffle(data: bytes, dtype: np.dtype) -> np.ndarray:
    """The array whose bytes `data` holds byte-shuffled (codec zstd-shuffle): plane j (the j-th
    n-byte run) holds byte j of every element, elements in `dtype`'s byte order. For 2-byte
    elements a shift-or of the two planes (0.1 ms for 256x256, 8x cheaper than a transposing
    copy); the array comes back in native byte order with the values `dtype` gives them."""
    k = dtype.itemsize
    planes = np.frombuffer(data, np.uint8)
    n = planes.size // k
    if k == 1:
        return planes.view(dtype)
    native = dtype.newbyteorder("=")
    if k == 2:
        little = dtype.byteorder == "<" or (dtype.byteorder == "=" and sys.byteorder == "little")
        lo, hi = (planes[:n], planes[n:]) if little else (planes[n:], planes[:n])
        out = hi.astype(np.uint16)
        out <<= 8
        out |= lo
        return out.view(native)
    return planes.reshape(k, n).T.copy().view(dtype).ravel().astype(native, copy=False)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]


class TlxDataset:
    def __init__(self, root: Path, manifest: dict[str, Any]):
        self.root = root
        self.manifest = manifest
        self.kind: str = manifest.get("kind", "")
        self.classes: list[str] = list(manifest.get("classes", []))
        self.members: dict[str, MemberSpec] = member_specs(manifest["members"], root)
        self.shards = [ShardSpec(s["split"], root / s["path"], root / s["index"], int(s["samples"]),
                                 int(s.get("bytes", 0)), s.get("sha256", "")) for s in manifest["shards"]]

    def split_shards(self, split: str) -> list[ShardSpec]:
        if split not in SPLITS:
            raise DatakitError(f"split {split!r} is not one of {', '.join(SPLITS)}")
        return [s for s in self.shards if s.split == split]

    def num_samples(self, split: str) -> int:
        return sum(s.samples for s in self.split_shards(split))

    def split_identity(self, split: str) -> dict[str, Any]:
        """What a resume compares: the split's sample count and a hash of its shards' sha256 (or, for a
        manifest without them, their names and counts), so the same data under another path matches."""
        h = hashlib.sha256()
        for s in self.split_shards(split):
            h.update(f"{s.sha256 or s.path.name}:{s.samples}\n".encode())
        return {"samples": self.num_samples(split), "shards_sha256": h.hexdigest()}

    def member(self, role: str) -> tuple[str, MemberSpec]:
        """The (first) member with this role: image, label, labels or mask."""
        for ext, spec in self.members.items():
            if spec.role == role:
                return ext, spec
        roles = sorted({m.role for m in self.members.values()})
        raise DatakitError(f"{self.root}: no member with role {role!r}; the dataset has roles {', '.join(roles)}")

    def sample_table(self, split: str, with_keys: bool = False) -> SampleTable:
        shards = self.split_shards(split)
        exts = list(self.members)
        shard_ids, offsets, sizes, keys = [], {e: [] for e in exts}, {e: [] for e in exts}, []
        for i, s in enumerate(shards):
            parsed = _parse_index(s, exts, with_keys)
            shard_ids.append(np.full(s.samples, i, np.int32))
            for e in exts:
                offsets[e].append(parsed[0][e])
                sizes[e].append(parsed[1][e])
            keys.extend(parsed[2])
        cat = (lambda parts, dt: np.concatenate(parts).astype(dt) if parts else np.zeros(0, dt))
        return SampleTable(split, [s.path for s in shards], cat(shard_ids, np.int32),
                           {e: cat(offsets[e], np.int64) for e in exts},
                           {e: cat(sizes[e], np.int64) for e in exts},
                           np.array(keys, dtype=object) if with_keys else None)


def open_dataset(root: str | os.PathLike) -> TlxDataset:
    root = Path(root)
    mpath = root / "manifest.json"
    if not mpath.is_file():
        raise DatakitError(f"{str(root)!r} is not a tlx dataset: no manifest.json (make one with `tlx shard`)")
    try:
        manifest = json.loads(mpath.read_text())
    except json.JSONDecodeError as exc:
        raise DatakitError(f"{mpath}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    if manifest.get("format") != FORMAT:
        raise DatakitError(f"{mpath}: format {manifest.get('format')!r} is not {FORMAT!r}")
    version = manifest.get("format_version")
    if version not in FORMAT_VERSIONS:
        raise DatakitError(f"{mpath}: format_version {version!r} is unknown to this tlx; "
                           f"it reads {', '.join(map(str, FORMAT_VERSIONS))} (update tlx)")
    for key in ("members", "shards"):
        if key not in manifest:
            raise DatakitError(f"{mpath}: no {key!r} entry")
    return TlxDataset(root, manifest)


def _parse_index(shard: ShardSpec, exts: list[str], with_keys: bool):
    """Offsets and sizes per member ext from a DALI v1.2 index: `<ext> <offset> <size> <name>` per member."""
    if not shard.index.is_file():
        raise DatakitError(f"index {str(shard.index)!r} of shard {shard.path.name} is missing")
    head, _, body = shard.index.read_text().partition("\n")
    head = head.split()
    if len(head) != 2 or head[0] != "v1.2":
        raise DatakitError(f"{shard.index}: first line {' '.join(head)!r} is not 'v1.2 <count>'")
    count, lines = int(head[1]), body.count("\n") + (not body.endswith("\n") and bool(body))
    if count != shard.samples or lines != count:
        raise DatakitError(f"{shard.index}: lists {lines} samples (header {count}), manifest says {shard.samples}")
    # Fast path: every line names the same members in the same order (what datakit writes), so the
    # index is a space-separated table that pyarrow parses in C++ (millions of samples per second).
    width = 4 * len(exts)
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.csv as pcsv
        names = [f"c{i}" for i in range(width)]
        table = pcsv.read_csv(shard.index, read_options=pcsv.ReadOptions(skip_rows=1, column_names=names),
                              parse_options=pcsv.ParseOptions(delimiter=" "),
                              convert_options=pcsv.ConvertOptions(column_types={
                                  n: (pa.int64() if i % 4 in (1, 2) else pa.string()) for i, n in enumerate(names)}))
    except Exception:  # noqa: BLE001 - ragged or odd lines: the line-by-line path below names the bad line
        table = None
    if table is not None and table.num_rows == count:
        order = [table.column(4 * j)[0].as_py() for j in range(len(exts))]
        if sorted(order) == sorted(exts) and all(pc.all(pc.equal(table.column(4 * j), e)).as_py()
                                                 for j, e in enumerate(order)):
            col = {e: 4 * j for j, e in enumerate(order)}
            keys = [n.split(".", 1)[0] for n in table.column(3).to_pylist()] if with_keys else []
            return ({e: table.column(col[e] + 1).to_numpy() for e in exts},
                    {e: table.column(col[e] + 2).to_numpy() for e in exts}, keys)
    offsets = {e: np.empty(count, np.int64) for e in exts}
    sizes = {e: np.empty(count, np.int64) for e in exts}
    keys = []
    for i, line in enumerate(body.splitlines()):
        tok = line.split()
        found = {tok[j]: (tok[j + 1], tok[j + 2]) for j in range(0, len(tok) - 3, 4)}
        for e in exts:
            if e not in found:
                raise DatakitError(f"{shard.index} line {i + 2}: sample has no member {e!r} "
                                   f"(the manifest says every sample carries {', '.join(exts)})")
            offsets[e][i], sizes[e][i] = int(found[e][0]), int(found[e][1])
        if with_keys:
            keys.append(tok[3].split(".", 1)[0])
    return offsets, sizes, keys


class SampleReader:
    """Reads and decodes members by positioned reads; holds open files per process (fork/spawn safe).

    Each shard is checked when this process first opens it, by `check` (default: the environment's
    TLX_SHARD_CHECK, else "size"):
      size    its byte size against the manifest's (one fstat: microseconds per shard);
      sha256  the size, and its sha256 against the manifest's: the whole shard is read once more
              per process that opens it, about 0.3 s per 5000-sample shard of 0.3 GB (every loader
              worker opens every shard, so it multiplies by the workers): a check before a run
              rather than a default; `tlx verify DATA` does it once, with more besides;
      none    no check.
    A flipped byte inside a member of a dataset of format version 2 fails its zstd frame's checksum
    when it is decoded, whatever the check; format version 1 frames carry none (docs/dataset-format.md).
    """

    def __init__(self, dataset: TlxDataset, check: str | None = None):
        self.members = dataset.members
        self.check = check or os.environ.get("TLX_SHARD_CHECK") or "size"
        if self.check not in SHARD_CHECKS:
            raise DatakitError(f"shard check {self.check!r} (TLX_SHARD_CHECK) is not one of: {', '.join(SHARD_CHECKS)}")
        self.expected = {s.path: (s.bytes, s.sha256) for s in dataset.shards}
        self._fds: dict[Path, int] = {}
        self._pid = None
        self._zstd = None

    def __getstate__(self):  # file descriptors and decompressors do not cross processes
        return {**self.__dict__, "_fds": {}, "_pid": None, "_zstd": None}

    def read_bytes(self, path: Path, offset: int, size: int) -> bytes:
        if self._pid != os.getpid():  # a forked worker must not share the parent's file offsets
            self._fds, self._pid, self._zstd = {}, os.getpid(), None
        fd = self._fds.get(path)
        if fd is None:
            fd = self._open_checked(path)
        data = os.pread(fd, size, offset)
        if len(data) != size:
            raise DatakitError(f"{path}: short read at offset {offset} ({len(data)} of {size} bytes); shard truncated?")
        return data

    def _open_checked(self, path: Path) -> int:
        fd = os.open(path, os.O_RDONLY)
        try:
            want_bytes, want_sha = self.expected.get(Path(path), (None, None))
            if self.check != "none" and want_bytes:
                have = os.fstat(fd).st_size
                if have != want_bytes:
                    raise DatakitError(f"{path}: {have} bytes, the manifest says {want_bytes}: the shard was cut short "
                                       "or changed after it was written; run `tlx verify` on the dataset")
            if self.check == "sha256" and want_sha and _sha256_fd(fd) != want_sha:
                raise DatakitError(f"{path}: sha256 differs from the manifest's: the shard was changed after it was "
                                   "written; run `tlx verify` on the dataset")
        except BaseException:
            os.close(fd)
            raise
        self._fds[path] = fd
        return fd

    def read(self, table: SampleTable, i: int, ext: str):
        return self.read_member(table.shard_paths[table.shard[i]], int(table.offset[ext][i]),
                                int(table.size[ext][i]), ext)

    def read_member(self, path: Path, offset: int, size: int, ext: str):
        """The member `ext` whose bytes lie at `offset` in shard `path`, decoded; DatakitError naming the
        shard and the sample when they do not decode."""
        data = self.read_bytes(path, offset, size)
        try:
            return self.decode(ext, data)
        except DatakitError as exc:
            raise DatakitError(f"{path}: sample {key_at(path, offset)}: {exc}; the shard is corrupt: run `tlx verify` "
                               "on the dataset") from None

    def decode(self, ext: str, data: bytes):
        spec = self.members[ext]
        if spec.codec in ("zstd", "zstd-shuffle") and self._zstd is None:
            import zstandard
            self._zstd = zstandard.ZstdDecompressor()
        return decode_member(spec, data, self._zstd)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}


def key_at(shard: Path, offset: int) -> str:
    """The key of the sample whose member data starts at `offset` in `shard`, from the `.idx` beside
    it (read only when an error has to name the sample); '?' when the index does not say."""
    try:
        for line in Path(shard).with_suffix(".idx").read_text().splitlines()[1:]:
            tok = line.split()
            if any(int(tok[j + 1]) == offset for j in range(0, len(tok) - 3, 4)):
                return tok[3].split(".", 1)[0]
    except (OSError, ValueError, IndexError):
        pass
    return "?"


def _sha256_fd(fd: int, chunk: int = 1 << 22) -> str:
    h, pos = hashlib.sha256(), 0
    while block := os.pread(fd, chunk, pos):
        h.update(block)
        pos += len(block)
    return h.hexdigest()


# ---------------------------------------------------------------- for users' own code
# docs/dataset-format.md, "Reading a dataset from your own code", has tested snippets around these three.

def read_sample(data: bytes, member: str, dataset: "TlxDataset | str | os.PathLike"):
    """One member's bytes, as a tar, webdataset or DALI hands them over, decoded by the dataset's manifest:
    read_sample(sample["hu.zst"], "hu.zst", "data/") -> np.ndarray int16 (H, W); "cls" -> int."""
    ds = dataset if isinstance(dataset, TlxDataset) else open_dataset(dataset)
    if member not in ds.members:
        raise DatakitError(f"member {member!r} is not one of this dataset's: {', '.join(ds.members)}")
    return decode_member(ds.members[member], data)


def iter_dataset(root: str | os.PathLike, split: str):
    """Every sample of `split` in order, as a dict: its slices.parquet row (key, patient, label, ...) plus each
    member decoded under its role's name ("image", "label", "labels", "mask"). Reads positioned bytes only."""
    import pyarrow.parquet as pq

    ds = open_dataset(root)
    table = ds.sample_table(split, with_keys=True)
    rows = pq.read_table(ds.root / "slices.parquet", filters=[("split", "==", split)]).to_pylist()
    if [r["key"] for r in rows] != list(table.keys):
        raise DatakitError(f"{ds.root}: slices.parquet's {split} rows are not the shards' samples in order "
                           f"(run `tlx verify {ds.root}`)")
    reader = SampleReader(ds)
    try:
        for i, row in enumerate(rows):
            yield {**row, **_by_role(ds, reader, table, i)}
    finally:
        reader.close()


def _by_role(ds: TlxDataset, reader: SampleReader, table: SampleTable, i: int) -> dict:
    """Sample i's members decoded, under their roles' names (image, label, labels, mask)."""
    return {ds.members[ext].role: reader.read(table, i, ext) for ext in ds.members}


def torch_dataset(root: str | os.PathLike, split: str, transform=None):
    """A map-style torch.utils.data.Dataset of `split`: item i -> transform({"key", role: value, ...}) (the
    sample's members by role, and its key). Safe in DataLoader workers (files open lazily per process)."""
    from torch.utils.data import Dataset

    ds = open_dataset(root)
    table = ds.sample_table(split, with_keys=True)

    class SplitDataset(Dataset):
        def __init__(self):
            self.reader = SampleReader(ds)

        def __len__(self) -> int:
            return len(table)

        def __getitem__(self, i: int):
            if not 0 <= i < len(table):
                raise IndexError(f"sample {i} of {split}, which has {len(table)}")
            sample = {"key": table.keys[i], **_by_role(ds, self.reader, table, i)}
            return transform(sample) if transform is not None else sample

    return SplitDataset()
