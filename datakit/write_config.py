"""The options of `tlx write` that shape its output (saved in the manifest), and the ones that do not."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from datakit.errors import DatakitError

CODECS = ("zstd-shuffle", "zstd", "raw")
# A floor must stay below body_coverage's -500 HU threshold, so that coverage never depends on it.
HU_FLOOR_RANGE = (-32768, -501)


@dataclass(frozen=True)
class WriteConfig:
    """Everything that decides the bytes `tlx write` produces; saved in manifest.json."""

    size: tuple[int, int] = (256, 256)   # stored slice size (H, W)
    codec: str = "zstd-shuffle"          # payload codec: byte-shuffled int16 under zstd, zstd of raw int16, or raw
    zstd_level: int = 3
    min_coverage: float = 0.25           # slices whose body covers less of the image are dropped
    samples_per_shard: int = 5000        # ~0.25 GB per shard at 256x256 with zstd-shuffle level 3
    hu_floor: int | None = -1024         # HU below it (scanner padding) are set to it; None keeps raw values

    def check(self) -> None:
        h, w = self.size
        if not (8 <= h <= 2048 and 8 <= w <= 2048):
            raise DatakitError(f"--size {h}x{w} must be between 8 and 2048 pixels per side (e.g. 256 or 256x256)")
        if self.codec not in CODECS:
            raise DatakitError(f"--codec {self.codec!r} is not one of: {', '.join(CODECS)}")
        if not 1 <= self.zstd_level <= 22:
            raise DatakitError(f"--zstd-level must be in 1..22, got {self.zstd_level}")
        if not 0 <= self.min_coverage <= 1:
            raise DatakitError(f"--min-coverage must be a fraction in [0, 1], got {self.min_coverage}")
        if self.samples_per_shard < 1:
            raise DatakitError(f"--samples-per-shard must be at least 1, got {self.samples_per_shard}")
        lo, hi = HU_FLOOR_RANGE
        if self.hu_floor is not None and not (isinstance(self.hu_floor, int) and lo <= self.hu_floor <= hi):
            raise DatakitError(f"--hu-floor {self.hu_floor!r} must be a whole HU value from {lo} to {hi}, "
                               "or 'none' to keep raw values")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["size"] = list(self.size)
        return d


@dataclass(frozen=True)
class RunOptions:
    """How one `tlx write` process runs; never changes the output, so not in the manifest."""

    workers: int | None = None           # None: tlxcore.runtime.default_workers()
    partition: tuple[int, int] = (0, 1)  # (i, N): this run converts volumes with partition_unit % N == i
    resume: str = "auto"                 # auto | never (datakit.resume)
    keep_staging: bool = False
    dicom_root: str | None = None        # None: where scan recorded it


def parse_partition(text: str) -> tuple[int, int]:
    """'i/N' with 0 <= i < N (0-based, like a SLURM array index)."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise DatakitError(f"--partition {text!r} must look like i/N, e.g. 0/4 (i counts from 0)") from None
    if n < 1 or not 0 <= i < n:
        raise DatakitError(f"--partition {text!r}: N must be >= 1 and i in 0..N-1")
    return i, n


def parse_size(text: str) -> tuple[int, int]:
    """'256' or '256x192' (H x W)."""
    try:
        parts = [int(x) for x in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2:
        raise DatakitError(f"--size {text!r} must be a number of pixels or HxW, e.g. 256 or 256x256")
    return parts[0], parts[1]


def parse_hu_floor(text: str) -> int | None:
    """'-1024' or 'none' (keep raw values)."""
    if text.strip().lower() == "none":
        return None
    lo, hi = HU_FLOOR_RANGE
    try:
        return int(text)
    except ValueError:
        raise DatakitError(f"--hu-floor {text!r} must be a whole HU value from {lo} to {hi}, "
                           "or 'none' to keep raw values") from None
