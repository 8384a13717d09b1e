"""Dataset scale factors (paper, supplement S4): how many independent images a CT dataset is worth.

Neighbouring slices of a scan are alike, so N slices carry the information of fewer
than N independent images. S = slices / effective independent slices, bounded two ways:

- S_LB (compressibility): per volume, compressed bytes per slice of an equally large
  set of random slices of other volumes over those of the whole volume in slice
  order. A compressor only finds the redundancy its window reaches (gzip: 32 KiB,
  less than one 256x256 int16 slice, so it sees almost none between slices; zstd
  level 3: 2 MiB), hence a lower bound.
- S_UB (mutual information): slices of a volume are added one by one in random
  order; each adds 1 - (highest relative MI to the slices already added), with MI
  relative between the mean MI to slices of a random other volume (0) and the
  slice's MI with itself (1). Effective slices = the sum of those utilities.

For both, a volume of n slices is worth n / S_v effective slices, and the dataset's
S = total slices / total effective slices. Everything random (slice order, the other
volume, the random slices, the volume sample) comes from `seed` and the volume's
position, so results do not depend on the number of workers.

    >>> result = estimate_scale_factors("data/", ScaleFactorConfig(volumes=200, workers=8))
    >>> result["s_ub"]["value"], result["s_ub"]["ci95"]
    >>> with tlxcore.progress.drawn() as progress:                  # what the CLI does: a bar or log lines
    ...     estimate_scale_factors("data/", cfg, progress=progress)  # Tick("scale factors", done, total, "volumes")
"""
from __future__ import annotations

import gzip
import importlib.util
import json
import math
import time
from concurrent.futures import FIRST_COMPLETED, Executor, ProcessPoolExecutor, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from analysis.dataset import CTDataset, ImageMember, SliceRefs, read_slices
from analysis.errors import AnalysisError
from analysis.mi import PairwiseMI, quantize
from tlxcore.atomic import atomic_write, write_json_atomic
from tlxcore.progress import Progress, Tick, silent

RESULT_FORMAT = "tlx-scale-factors"
RESULT_VERSION = 1
COMPRESSORS = {"gzip": 6, "zstd": 3}  # name -> default level (gzip's command-line default; zstd's)
DEVICES = ("cpu", "cuda", "auto")
STAGE = "scale factors"  # the progress stage: ticks count volumes
Z95 = 1.959963984540054


@dataclass
class ScaleFactorConfig:
    split: str = "train"                  # which split's volumes (train: what pretraining sees), or "all"
    lower: bool = True                    # compute S_LB
    upper: bool = True                    # compute S_UB
    compressor: str = "gzip"              # S_LB compressor: gzip (as in the paper) or zstd (faster, wider window)
    level: int | None = None              # compression level (None: the compressor's default above)
    bins: int = 64                        # histogram bins per axis (64x64 joint histograms, as in the paper)
    value_range: tuple[float, float] | None = None  # fixed binning range (HU); None: each slice's min..max
    volumes: int | None = None            # process a random sample of this many volumes (None: all)
    baseline_slices: int | None = None    # slices of the random other volume for the MI baseline (None: all)
    seed: int = 0
    workers: int = 1                      # processes (CPU) or reader threads (GPU)
    device: str = "cpu"                   # cpu | cuda | auto (cuda when torch sees a GPU)
    method: str | None = None             # MI counting: None picks bincount on cpu, torch on cuda

    def __post_init__(self):
        if self.compressor not in COMPRESSORS:
            raise AnalysisError(f"compressor {self.compressor!r} is not known; use one of {sorted(COMPRESSORS)}")
        if self.device not in DEVICES:
            raise AnalysisError(f"device {self.device!r} is not known; use one of {DEVICES}")
        if not (self.lower or self.upper):
            raise AnalysisError("nothing to compute: both the lower and the upper bound are switched off")
        for name in ("volumes", "baseline_slices"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise AnalysisError(f"{name} must be a positive count or None (all), got {value}")
        if self.workers < 1:
            raise AnalysisError(f"workers must be >= 1, got {self.workers}")
        # checked here, not first inside every volume (each would be read and compressed, then fail)
        if not 2 <= self.bins <= 4096:
            raise AnalysisError(f"bins must be in 2..4096, got {self.bins}")
        if self.value_range is not None and not self.value_range[1] > self.value_range[0]:
            raise AnalysisError(f"the binning range must be LO HI with HI > LO, got {tuple(self.value_range)}")


# ---------------------------------------------------------------- the two bounds for one volume

def compressed_size(data: bytes, compressor: str, level: int | None = None) -> int:
    level = COMPRESSORS[compressor] if level is None else level
    if compressor == "gzip":
        return len(gzip.compress(data, compresslevel=level, mtime=0))
    import zstandard

    return len(zstandard.ZstdCompressor(level=level).compress(data))


def lower_bound_volume(volume: np.ndarray, random_slices: np.ndarray, compressor: str,
                       level: int | None = None) -> tuple[int, int, float]:
    """(bytes of the volume, bytes of the random set, S_LB_v = per-slice bytes random / volume)."""
    c_vol = compressed_size(np.ascontiguousarray(volume).tobytes(), compressor, level)
    c_rand = compressed_size(np.ascontiguousarray(random_slices).tobytes(), compressor, level)
    return c_vol, c_rand, (c_rand / len(random_slices)) / (c_vol / len(volume))


def effective_slices(mi: np.ndarray, self_mi: np.ndarray, baseline: np.ndarray) -> tuple[float, np.ndarray]:
    """Effective independent slices of a volume whose slices are in the order they are added.

    mi: (n, n) MI between slices; self_mi: (n,) MI of each slice with itself (its
    entropy); baseline: (n,) mean MI of each slice to slices of a random other volume.
    Relative MI of slice i to slice j = (mi_ij - baseline_i) / (self_mi_i - baseline_i),
    clipped to [0, 1]; a slice whose self-MI does not exceed its baseline carries
    nothing a random slice would not, so its relative MI is 1. Returns (sum, utilities).
    """
    n = len(self_mi)
    span = self_mi - baseline
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = (mi - baseline[:, None]) / span[:, None]
    rel = np.where((span > 1e-12)[:, None], rel, 1.0)
    rel = np.clip(rel, 0.0, 1.0)
    utility = np.ones(n)
    for i in range(1, n):
        utility[i] = 1.0 - rel[i, :i].max()
    return float(utility.sum()), utility


def upper_bound_codes(codes: np.ndarray, other_codes: np.ndarray, engine: PairwiseMI) -> tuple[float, float]:
    """(effective slices, S_UB_v) from binned slices (see analysis.mi.quantize), in the order they are added."""
    mi = engine.within(codes)
    baseline = engine.between(codes, other_codes).mean(1)
    eff, _ = effective_slices(mi, np.diag(mi).copy(), baseline)
    return eff, len(codes) / eff


# ---------------------------------------------------------------- planning: what each volume reads

@dataclass
class VolumeTask:
    """Everything one worker needs for one volume (picklable; no dataset object)."""

    position: int            # index of the volume in the dataset
    volume: str
    refs: SliceRefs          # the volume's slices, in slice order
    order: np.ndarray        # random order in which slices are added (S_UB)
    other_volume: str
    other_refs: SliceRefs    # slices of a random other volume (S_UB baseline)
    random_refs: SliceRefs   # random slices of other volumes (S_LB)


def plan_tasks(ds: CTDataset, cfg: ScaleFactorConfig) -> tuple[list[int], Callable[[int], VolumeTask]]:
    """The volume positions to process, and a function making each one's task from its own RNG."""
    n_vol = len(ds)
    if n_vol < 2:
        raise AnalysisError(f"scale factors need at least 2 volumes (a random other volume is the baseline), "
                            f"split {cfg.split!r} has {n_vol}")
    if cfg.volumes is not None and cfg.volumes < n_vol:
        chosen = sorted(np.random.default_rng([cfg.seed, 1]).choice(n_vol, cfg.volumes, replace=False).tolist())
    else:
        chosen = list(range(n_vol))
    total_rows = int(ds.slice_counts.sum())
    starts = np.r_[0, np.cumsum(ds.slice_counts)]

    def make(v: int) -> VolumeTask:
        rng = np.random.default_rng([cfg.seed, 2, v])  # the volume's own stream: independent of workers
        n = int(ds.slice_counts[v])
        order = rng.permutation(n)
        u = int(rng.integers(n_vol - 1))
        u += u >= v
        other = ds.refs(u)
        if cfg.baseline_slices is not None and cfg.baseline_slices < len(other):
            other = other.take(np.sort(rng.choice(len(other), cfg.baseline_slices, replace=False)))
        k = min(n, total_rows - n)
        rows = rng.choice(total_rows - n, k, replace=False)
        rows = rows + np.where(rows >= starts[v], n, 0)  # skip over the volume's own rows
        return VolumeTask(v, ds.volumes[v], ds.refs(v), order, ds.volumes[u], other, ds.global_refs(rows))

    return chosen, make


# ---------------------------------------------------------------- one volume, start to end

@dataclass
class VolumeResult:
    position: int
    volume: str
    slices: int
    lb_volume_bytes: int | None = None
    lb_random_bytes: int | None = None
    s_lb: float | None = None
    ub_effective_slices: float | None = None
    s_ub: float | None = None
    mi_evaluations: int = 0
    error: str | None = None


@dataclass
class _Prepared:
    task: VolumeTask
    result: VolumeResult
    codes: np.ndarray | None = None        # the volume's slices, binned, in the order they are added
    other_codes: np.ndarray | None = None  # the baseline volume's slices, binned


def _prepare(task: VolumeTask, cfg: ScaleFactorConfig, member: ImageMember) -> _Prepared:
    """Read and bin the volume and what it is compared with; the lower bound (CPU work) on the way."""
    result = VolumeResult(task.position, task.volume, len(task.refs))
    prepared = _Prepared(task, result)
    try:
        volume = read_slices(task.refs, member)
        if cfg.lower:
            random_slices = read_slices(task.random_refs, member)
            result.lb_volume_bytes, result.lb_random_bytes, result.s_lb = lower_bound_volume(
                volume, random_slices, cfg.compressor, cfg.level)
        if cfg.upper:
            prepared.codes = quantize(volume[task.order], cfg.bins, cfg.value_range)
            prepared.other_codes = quantize(read_slices(task.other_refs, member), cfg.bins, cfg.value_range)
    except Exception as exc:  # noqa: BLE001 - recorded in the result and reported, never dropped
        result.error = f"{type(exc).__name__}: {exc}"
    return prepared


def _finish(prepared: _Prepared, cfg: ScaleFactorConfig, engine: PairwiseMI) -> VolumeResult:
    result = prepared.result
    if cfg.upper and result.error is None:
        try:
            before = engine.evaluations
            result.ub_effective_slices, result.s_ub = upper_bound_codes(prepared.codes, prepared.other_codes, engine)
            result.mi_evaluations = engine.evaluations - before
        except Exception as exc:  # noqa: BLE001 - recorded in the result and reported, never dropped
            result.error = f"{type(exc).__name__}: {exc}"
    return result


def _cpu_worker(task: VolumeTask, cfg: ScaleFactorConfig, member: ImageMember) -> VolumeResult:
    engine = PairwiseMI(cfg.bins, cfg.method or "bincount", "cpu")
    return _finish(_prepare(task, cfg, member), cfg, engine)


def _bounded_map(executor: Executor, fn, items: Iterable, window: int) -> Iterator:
    """executor.map that keeps at most `window` items in flight; yields results as they finish."""
    items = iter(items)
    pending = set()
    while True:
        while len(pending) < window:
            item = next(items, None)
            if item is None:
                break
            pending.add(executor.submit(fn, item))
        if not pending:
            return
        done, pending = wait(pending, return_when=FIRST_COMPLETED)
        for future in done:
            yield future.result()


def _resolve_device(device: str) -> str:
    if device == "cpu":
        return "cpu"
    has_cuda = False
    if importlib.util.find_spec("torch") is not None:
        import torch  # optional accelerator: only looked at when a GPU is asked for

        has_cuda = torch.cuda.is_available()
    if device == "cuda" and not has_cuda:
        raise AnalysisError("device 'cuda' was asked for but torch sees no GPU; use --device cpu")
    return "cuda" if has_cuda else "cpu"


def _try_engine(engine: PairwiseMI) -> None:
    """A tiny MI on the device before hours of reading: a product the GPU or its torch does not offer (e.g. int8
    on an older GPU) is one error now, not the same error in every volume at the end."""
    k = 16 // engine.bins + 2  # slices enough for the int8 product (more than 16 one-hot columns)
    codes = (np.arange(k * 64).reshape(k, 64) % engine.bins).astype(np.uint8 if engine.bins <= 256 else np.uint16)
    try:
        engine.within(codes)
    except Exception as exc:  # noqa: BLE001 - becomes the user's one-line error
        hint = "; try --method torch-float (float32 products)" if engine.method == "torch" else ""
        raise AnalysisError(f"MI method {engine.method!r} fails on {engine.device} ({type(exc).__name__}: "
                            f"{exc}){hint}") from None


def _run(ds: CTDataset, cfg: ScaleFactorConfig, positions: list[int], make,
         progress: Progress = silent) -> list[VolumeResult]:
    """Every chosen volume's result, in position order; one tick per finished volume."""
    results: list[VolumeResult] = []
    failed = 0
    progress(Tick(STAGE, 0, len(positions), "volumes"))
    for result in _results(ds, cfg, (make(v) for v in positions)):
        results.append(result)
        failed += result.error is not None
        progress(Tick(STAGE, len(results), len(positions), "volumes", f"{failed} failed" if failed else ""))
    return sorted(results, key=lambda r: r.position)


def _results(ds: CTDataset, cfg: ScaleFactorConfig, tasks: Iterator[VolumeTask]) -> Iterator[VolumeResult]:
    """The tasks' results as they finish, on the GPU, in this process or in a process pool."""
    if _resolve_device(cfg.device) == "cuda":
        # Reader threads decode and compress (both release the GIL); the GPU counts histograms.
        engine = PairwiseMI(cfg.bins, cfg.method or "torch", "cuda")
        if cfg.upper:
            _try_engine(engine)
        with ThreadPoolExecutor(cfg.workers) as pool:
            for prepared in _bounded_map(pool, lambda t: _prepare(t, cfg, ds.member), tasks, 2 * cfg.workers):
                yield _finish(prepared, cfg, engine)
    elif cfg.workers == 1:
        for task in tasks:
            yield _cpu_worker(task, cfg, ds.member)
    else:
        with ProcessPoolExecutor(cfg.workers) as pool:
            yield from _bounded_map(pool, _WorkerCall(cfg, ds.member), tasks, 4 * cfg.workers)


@dataclass
class _WorkerCall:
    """A picklable `task -> result` for the process pool."""

    cfg: ScaleFactorConfig
    member: ImageMember

    def __call__(self, task: VolumeTask) -> VolumeResult:
        return _cpu_worker(task, self.cfg, self.member)


# ---------------------------------------------------------------- from volumes to the dataset

def aggregate(slices: np.ndarray, effective: np.ndarray, population: int) -> dict:
    """S = sum(slices) / sum(effective) over the processed volumes, with a 95% CI when they are a sample.

    The CI is the ratio estimator's (Cochran, Sampling Techniques, 3rd ed., ch. 6):
    var(S) = (1 - f) / (k (k - 1)) * sum (n_v - S e_v)^2 / mean(e)^2 with f = k / population.
    """
    slices = np.asarray(slices, dtype=np.float64)
    effective = np.asarray(effective, dtype=np.float64)
    k = len(slices)
    if k == 0:
        return {"value": None, "ci95": None, "slice_weighted_mean": None, "volumes": 0}
    s = slices.sum() / effective.sum()
    ci = None
    if k < population and k > 1:
        f = k / population
        var = (1 - f) / (k * (k - 1)) * np.sum((slices - s * effective) ** 2) / effective.mean() ** 2
        half = Z95 * math.sqrt(var)
        ci = [float(s - half), float(s + half)]
    per_volume = slices / effective
    return {"value": float(s), "ci95": ci, "slice_weighted_mean": float(np.sum(slices * per_volume) / slices.sum()),
            "volumes": k}


def estimate_scale_factors(data_dir: Path | str, cfg: ScaleFactorConfig | None = None,
                           progress: Progress = silent) -> dict:
    """S_LB and S_UB of a tlx dataset, as a JSON-ready dict (see `write_results`); `progress` gets a Tick
    (stage "scale factors", unit volumes) at the start and after each volume."""
    cfg = cfg or ScaleFactorConfig()
    started = time.perf_counter()
    ds = CTDataset(data_dir, cfg.split)
    positions, make = plan_tasks(ds, cfg)
    results = _run(ds, cfg, positions, make, progress)
    ok = [r for r in results if r.error is None]
    failed = [{"volume": r.volume, "slices": r.slices, "error": r.error} for r in results if r.error is not None]
    slices = np.array([r.slices for r in ok])
    out = {
        "format": RESULT_FORMAT,
        "version": RESULT_VERSION,
        "dataset": str(Path(data_dir).resolve()),
        "split": cfg.split,
        "config": asdict(cfg),
        "volumes_in_split": len(ds),
        "slices_in_split": int(ds.slice_counts.sum()),
        "volumes_sampled": len(positions),
        "volumes_ok": len(ok),
        "volumes_failed": failed,
        "slices_processed": int(slices.sum()),
        "mi_evaluations": int(sum(r.mi_evaluations for r in results)),
        "seconds": round(time.perf_counter() - started, 3),
    }
    population = len(ds)
    if cfg.lower:
        effective = slices / np.array([r.s_lb for r in ok]) if ok else np.array([])
        out["s_lb"] = aggregate(slices, effective, population)
        out["s_lb"].update(compressor=cfg.compressor, level=cfg.level or COMPRESSORS[cfg.compressor])
    if cfg.upper:
        out["s_ub"] = aggregate(slices, np.array([r.ub_effective_slices for r in ok]), population)
        out["s_ub"].update(bins=cfg.bins, baseline_slices=cfg.baseline_slices)
    out["per_volume"] = [asdict(r) for r in results]
    return out


RESULT_NAME = "scale_factors.json"


def write_results(result: dict, out_dir: Path | str) -> Path:
    """scale_factors.json (what `tlx analyze` reads) and scale_factors_volumes.csv (one row per volume)."""
    import polars as pl

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {k: v for k, v in result.items() if k != "per_volume"}
    path = out_dir / RESULT_NAME
    write_json_atomic(summary, path)
    if result.get("per_volume"):
        # every row decides the column types: a volume failing after the first 100 (polars' default look-ahead)
        # must not be refused for its error string
        with atomic_write(out_dir / "scale_factors_volumes.csv") as f:
            pl.DataFrame(result["per_volume"], infer_schema_length=None).drop("position").write_csv(f)
    return path


@dataclass(frozen=True)
class ScaleFactor:
    """One bound as `tlx analyze` uses it: value and standard error (0 when all volumes were used)."""

    value: float
    se: float = 0.0
    volumes_failed: int = 0  # volumes `tlx scale-factors` could not compute, left out of the value


def load_results(path: Path | str) -> dict[str, ScaleFactor]:
    """{"lb": ScaleFactor, "ub": ScaleFactor} (whichever were computed) from scale_factors.json."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:  # ValueError: not JSON, not UTF-8
        raise AnalysisError(f"cannot read scale factors from {path}: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != RESULT_FORMAT or data.get("version") != RESULT_VERSION:
        raise AnalysisError(f"{path} is not a {RESULT_FORMAT} v{RESULT_VERSION} file "
                            f"(write it with `tlx scale-factors`)")
    out = {}
    failed = len(data.get("volumes_failed") or [])
    for bound in ("lb", "ub"):
        entry = data.get(f"s_{bound}")
        if entry and entry.get("value") is not None:
            ci = entry.get("ci95")
            out[bound] = ScaleFactor(entry["value"], (ci[1] - ci[0]) / (2 * Z95) if ci else 0.0, failed)
    return out


def from_values(lb: float | None = None, ub: float | None = None) -> dict[str, ScaleFactor]:
    """Scale factors given by hand (e.g. the paper's 1.136 and 3.807)."""
    out = {}
    for bound, value in (("lb", lb), ("ub", ub)):
        if value is not None:
            if not value >= 1:
                raise AnalysisError(f"a scale factor must be >= 1 (slices worth at most one image each), got {value}")
            out[bound] = ScaleFactor(float(value))
    return out

