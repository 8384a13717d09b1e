"""Dataset scale factors (paper, supplement S4): how many independent images a CT dataset is worth.

Neighbouring slices of a scan are alike, so N slices carry the information of fewer
than N independent images. S = slices / effective independent slices, bounded two ways:

- S_LB (compressibility): per volume, the compressed bytes of the whole volume in slice
  order against those of as many random slices. Two forms (`lb_estimator`): `study-code`
  (default; the study's compressibility script) draws the random slices with replacement
  from every slice of the split (the volume's own included) and gives S_LB = total random
  bytes / total volume bytes; `per-volume` (tlx's earlier form) draws them without
  replacement from the other volumes and weighs volumes by their slices like S_UB. A
  compressor only finds the redundancy its window reaches (gzip: 32 KiB, less than one
  256x256 int16 slice, so it sees almost none between slices; zstd level 3: 2 MiB), hence
  a lower bound.
- S_UB (mutual information): slices of a volume are added one by one in random
  order; each adds 1 - (highest relative MI to the slices already added), with MI
  relative between a baseline MI (0) and the MI of a slice with itself (1). Effective
  slices = the sum of those utilities. Two estimators (`estimator`): `study-code`
  (default) as the study's S_UB script computed its 3.807: Gaussian-smoothed joint
  histograms; MI_max = the self-MI of the volume's first slice; MI_min = the mean MI of
  its first 101 slices, each with one random slice of a baseline volume drawn from the
  volumes at or after it in a random order of the split (so possibly itself); r not
  clipped; volumes over 300 slices skipped and volumes whose effective slices fall
  outside (0, n) dropped. `paper-text` as the text describes it: plug-in MI, per-slice
  normalisation against all slices of a random other volume, r clipped to [0, 1], every
  volume.

A volume of n slices is worth n / S_v effective slices, and S_UB (and the per-volume S_LB)
= total slices / total effective slices. Everything random (slice order, the baseline
volume and slices, the random slices, the volume sample) comes from `seed` and the volume's
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
from dataclasses import asdict, dataclass, field
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
COMPRESSORS = {"gzip": 9, "zstd": 3}  # name -> default level (gzip.open's default, as the study; zstd's)
ESTIMATORS = ("study-code", "paper-text")  # S_UB: as the study's code computed it, or as its text describes it
LB_ESTIMATORS = ("study-code", "per-volume")  # S_LB: the study's sampling and sums, or tlx's earlier per-volume form
STUDY_SIGMA = 1.0          # study-code: Gaussian smoothing of each joint histogram, in bins
STUDY_MAX_SLICES = 300     # study-code: longer volumes were skipped
STUDY_BASELINE_SLICES = 101  # study-code: MI_min from the first 101 slices (its baseline loop stops after i == 100)
DEVICES = ("cpu", "cuda", "auto")
STAGE = "scale factors"  # the progress stage: ticks count volumes
Z95 = 1.959963984540054


@dataclass
class ScaleFactorConfig:
    split: str = "train"                  # which split's volumes (train: what pretraining sees), or "all"
    lower: bool = True                    # compute S_LB
    upper: bool = True                    # compute S_UB
    compressor: str = "gzip"              # S_LB compressor: gzip (as in the paper) or zstd (faster, wider window)
    lb_estimator: str = "study-code"      # S_LB: study-code or per-volume (see the module docstring)
    estimator: str = "study-code"         # S_UB: study-code or paper-text (see the module docstring)
    max_slices: int | None = None         # S_UB skips longer volumes (None: 300 for study-code, no limit for
                                          # paper-text; 0: no limit)
    dump_pairs: bool = False              # keep (volume, i, j, distance, utility) of every slice pair (Fig. SF4)
    level: int | None = None              # compression level (None: the compressor's default above)
    bins: int = 64                        # histogram bins per axis (64x64 joint histograms, as in the paper)
    value_range: tuple[float, float] | None = None  # fixed binning range (HU); None: each slice's min..max
    volumes: int | None = None            # process a random sample of this many volumes (None: all)
    baseline_slices: int | None = None    # paper-text: slices of the random other volume for the baseline (None: all)
    seed: int = 0
    workers: int = 1                      # processes (CPU) or reader threads (GPU)
    device: str = "cpu"                   # cpu | cuda | auto (cuda when torch sees a GPU)
    method: str | None = None             # MI counting: None picks bincount on cpu, torch on cuda

    def __post_init__(self):
        if self.compressor not in COMPRESSORS:
            raise AnalysisError(f"compressor {self.compressor!r} is not known; use one of {sorted(COMPRESSORS)}")
        if self.estimator not in ESTIMATORS:
            raise AnalysisError(f"estimator {self.estimator!r} is not known; use one of {', '.join(ESTIMATORS)}")
        if self.lb_estimator not in LB_ESTIMATORS:
            raise AnalysisError(f"S_LB estimator {self.lb_estimator!r} is not known; use one of "
                                f"{', '.join(LB_ESTIMATORS)}")
        if self.baseline_slices is not None and self.estimator == "study-code":
            raise AnalysisError(f"baseline_slices is for the paper-text estimator; study-code compares each of a "
                                f"volume's first {STUDY_BASELINE_SLICES} slices with one random baseline slice, as the "
                                f"study's code did")
        if self.max_slices is not None and self.max_slices < 0:
            raise AnalysisError(f"max_slices must be >= 0 (0: no limit) or None, got {self.max_slices}")
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

    @property
    def sigma(self) -> float:
        """Histogram smoothing of the S_UB estimator, in bins (0: none)."""
        return STUDY_SIGMA if self.estimator == "study-code" else 0.0

    @property
    def slice_limit(self) -> int | None:
        """S_UB's longest volume (None: no limit)."""
        if self.max_slices is None:
            return STUDY_MAX_SLICES if self.estimator == "study-code" else None
        return self.max_slices or None


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


class NoScale(AnalysisError):
    """study-code: MI_max <= MI_min, so r has no scale; the volume is left out of S_UB (see relative_mi)."""


def relative_mi(mi: np.ndarray, self_mi: np.ndarray, baseline: np.ndarray, estimator: str = "study-code"
                ) -> np.ndarray:
    """r_ij, how much of slice i slice j already holds, between 0 (a random slice) and 1 (itself).

    mi: (n, n) MI between slices; self_mi: MI of slices with themselves; baseline: MI of slices with
    slices of a baseline volume.
    - paper-text: self_mi (n,) and baseline (n,) per slice (baseline_i: the mean MI of slice i to the
      baseline volume's slices); r_ij = (mi_ij - baseline_i) / (self_mi_i - baseline_i), clipped to
      [0, 1]; a slice whose self-MI does not exceed its baseline carries nothing a random slice would
      not: r = 1.
    - study-code: one MI_max = mean(self_mi) and MI_min = mean(baseline) for the whole volume (the study's
      code passes one self-MI, its first slice's, and one MI per baseline pair), r_ij = (mi_ij - MI_min) /
      (MI_max - MI_min), not clipped (so a utility may leave [0, 1]). MI_max <= MI_min raises NoScale: the
      study's code divided by zero there (NaN effective slices: the volume dropped) or went on with r's
      sign reversed.
    """
    if estimator == "study-code":
        mi_max, mi_min = float(np.mean(self_mi)), float(np.mean(baseline))
        if not mi_max > mi_min:
            raise NoScale(f"MI_max {mi_max:.6g} <= MI_min {mi_min:.6g}: the volume's first slice shares no more "
                          f"with itself than its slices share with the baseline volume's")
        return (mi - mi_min) / (mi_max - mi_min)
    if estimator != "paper-text":
        raise AnalysisError(f"estimator {estimator!r} is not known; use one of {', '.join(ESTIMATORS)}")
    span = self_mi - baseline
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = (mi - baseline[:, None]) / span[:, None]
    rel = np.where((span > 1e-12)[:, None], rel, 1.0)
    return np.clip(rel, 0.0, 1.0)


def utilities(rel: np.ndarray) -> np.ndarray:
    """u_k = 1 - max_{j < k} r_kj for slices in the order they are added (the first adds 1)."""
    utility = np.ones(len(rel))
    for i in range(1, len(rel)):
        utility[i] = 1.0 - rel[i, :i].max()
    return utility


def effective_slices(mi: np.ndarray, self_mi: np.ndarray, baseline: np.ndarray,
                     estimator: str = "study-code") -> tuple[float, np.ndarray]:
    """(effective independent slices, utilities) of a volume whose slices are in the order they are added."""
    utility = utilities(relative_mi(mi, self_mi, baseline, estimator))
    return float(utility.sum()), utility


def relative_mi_codes(codes: np.ndarray, other_codes: np.ndarray, engine: PairwiseMI,
                      estimator: str = "study-code", order: np.ndarray | None = None) -> np.ndarray:
    """r of binned slices (see analysis.mi.quantize; the engine smooths or not) in the order they are added.

    codes[k] is slice order[k] of the volume (order None: slice order). paper-text: other_codes are the
    baseline volume's slices, each slice's baseline its mean MI to all of them. study-code: other_codes[i]
    is the one random baseline slice of the volume's i-th slice in slice order (i < len(other_codes));
    MI_max is the self-MI of slice 0."""
    mi = engine.within(codes)
    if estimator != "study-code":
        return relative_mi(mi, np.diag(mi).copy(), engine.between(codes, other_codes).mean(1), estimator)
    position = np.argsort(order) if order is not None else np.arange(len(codes))  # slice -> row of codes
    baseline = engine.paired(codes[position[:len(other_codes)]], other_codes)
    return relative_mi(mi, np.array([mi[position[0], position[0]]]), baseline, estimator)


def upper_bound_codes(codes: np.ndarray, other_codes: np.ndarray, engine: PairwiseMI,
                      estimator: str = "study-code", order: np.ndarray | None = None) -> tuple[float, float]:
    """(effective slices, S_UB_v) from binned slices, in the order they are added (see relative_mi_codes)."""
    eff = float(utilities(relative_mi_codes(codes, other_codes, engine, estimator, order)).sum())
    return eff, len(codes) / eff


def study_keeps(effective: float, slices: int) -> bool:
    """The study's S_UB script kept a volume only when 0 < effective slices < slices (else it returned 0, 0):
    a one-slice volume, or one whose unclipped utilities sum to n or more or to 0 or less, is left out."""
    return 0 < effective < slices


def slice_pairs(rel: np.ndarray, order: np.ndarray, slice_index: np.ndarray) -> dict[str, np.ndarray]:
    """Every ordered pair (i, j), i != j, of a volume's slices as slice_index values, their distance |i - j| and
    the utility 1 - r_ij of slice i once slice j is known (rel in the order the slices were added)."""
    n = len(order)
    original = np.empty((n, n))
    original[np.ix_(order, order)] = rel          # back from the order of adding to slice order
    a, b = np.nonzero(~np.eye(n, dtype=bool))
    i, j = slice_index[a], slice_index[b]
    return {"i": i.astype(np.int32), "j": j.astype(np.int32), "distance": np.abs(i - j).astype(np.int32),
            "utility": (1.0 - original[a, b]).astype(np.float32)}


# ---------------------------------------------------------------- planning: what each volume reads

@dataclass
class VolumeTask:
    """Everything one worker needs for one volume (picklable; no dataset object)."""

    position: int            # index of the volume in the dataset
    volume: str
    refs: SliceRefs          # the volume's slices, in slice order
    order: np.ndarray        # random order in which slices are added (S_UB)
    other_volume: str        # the S_UB baseline volume (study-code: possibly the volume itself)
    other_refs: SliceRefs    # its slices (paper-text: all or a sample; study-code: the partner of each of the
                             # volume's first 101 slices, in slice order)
    random_refs: SliceRefs   # random slices for S_LB (study-code: any of the split's; per-volume: other volumes')
    slice_index: np.ndarray  # slices.parquet's slice_index of the volume's slices, in slice order


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
    # study-code: the study's script shuffled its volumes and gave the k-th one the baseline
    # np.random.randint(k, N): a volume at or after it in that order, itself included
    shuffled = np.random.default_rng([cfg.seed, 3]).permutation(n_vol)
    rank = np.empty(n_vol, dtype=np.int64)
    rank[shuffled] = np.arange(n_vol)

    def make(v: int) -> VolumeTask:
        rng = np.random.default_rng([cfg.seed, 2, v])  # the volume's own stream: independent of workers
        n = int(ds.slice_counts[v])
        order = rng.permutation(n)
        if cfg.estimator == "study-code":
            u = int(shuffled[rng.integers(rank[v], n_vol)])
            other = ds.refs(u)
            other = other.take(rng.integers(len(other), size=min(n, STUDY_BASELINE_SLICES)))  # with replacement
        else:
            u = int(rng.integers(n_vol - 1))
            u += u >= v
            other = ds.refs(u)
            if cfg.baseline_slices is not None and cfg.baseline_slices < len(other):
                other = other.take(np.sort(rng.choice(len(other), cfg.baseline_slices, replace=False)))
        if cfg.lb_estimator == "study-code":
            rows = rng.integers(total_rows, size=n)  # random.choice over every slice file, n times
        else:
            k = min(n, total_rows - n)
            rows = rng.choice(total_rows - n, k, replace=False)
            rows = rows + np.where(rows >= starts[v], n, 0)  # skip over the volume's own rows
        return VolumeTask(v, ds.volumes[v], ds.refs(v), order, ds.volumes[u], other, ds.global_refs(rows),
                          ds.slice_indices(v))

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
    ub_skipped: bool = False     # S_UB not computed: more slices than the estimator's limit
    ub_dropped: str | None = None  # study-code: computed but left out of S_UB as the study's code left it out (why)
    error: str | None = None
    pairs: dict | None = field(default=None, repr=False)   # --dump-pairs: slice_pairs' columns (not in the CSV)


@dataclass
class _Prepared:
    task: VolumeTask
    result: VolumeResult
    codes: np.ndarray | None = None        # the volume's slices, binned, in the order they are added
    other_codes: np.ndarray | None = None  # the baseline volume's slices, binned


def _prepare(task: VolumeTask, cfg: ScaleFactorConfig, member: ImageMember) -> _Prepared:
    """Read and bin the volume and what it is compared with; the lower bound (CPU work) on the way."""
    result = VolumeResult(task.position, task.volume, len(task.refs))
    limit = cfg.slice_limit
    result.ub_skipped = cfg.upper and limit is not None and len(task.refs) > limit
    prepared = _Prepared(task, result)
    try:
        volume = read_slices(task.refs, member) if cfg.lower or not result.ub_skipped else None
        if cfg.lower:
            random_slices = read_slices(task.random_refs, member)
            result.lb_volume_bytes, result.lb_random_bytes, result.s_lb = lower_bound_volume(
                volume, random_slices, cfg.compressor, cfg.level)
        if cfg.upper and not result.ub_skipped:
            prepared.codes = quantize(volume[task.order], cfg.bins, cfg.value_range)
            prepared.other_codes = quantize(read_slices(task.other_refs, member), cfg.bins, cfg.value_range)
    except Exception as exc:  # noqa: BLE001 - recorded in the result and reported, never dropped
        result.error = f"{type(exc).__name__}: {exc}"
    return prepared


def _finish(prepared: _Prepared, cfg: ScaleFactorConfig, engine: PairwiseMI) -> VolumeResult:
    result = prepared.result
    if cfg.upper and result.error is None and not result.ub_skipped:
        try:
            before = engine.evaluations
            try:
                rel = relative_mi_codes(prepared.codes, prepared.other_codes, engine, cfg.estimator,
                                        prepared.task.order)
            except NoScale as exc:
                result.ub_dropped = str(exc)
                return result
            finally:
                result.mi_evaluations = engine.evaluations - before
            result.ub_effective_slices = float(utilities(rel).sum())
            if cfg.estimator == "study-code" and not study_keeps(result.ub_effective_slices, result.slices):
                result.ub_dropped = (f"effective slices {result.ub_effective_slices:.6g} not in (0, {result.slices}): "
                                     f"the study's code left such volumes out")
                return result
            result.s_ub = result.slices / result.ub_effective_slices
            if cfg.dump_pairs:
                result.pairs = slice_pairs(rel, prepared.task.order, prepared.task.slice_index)
        except Exception as exc:  # noqa: BLE001 - recorded in the result and reported, never dropped
            result.error = f"{type(exc).__name__}: {exc}"
    return result


def _cpu_worker(task: VolumeTask, cfg: ScaleFactorConfig, member: ImageMember) -> VolumeResult:
    engine = PairwiseMI(cfg.bins, cfg.method or "bincount", "cpu", sigma=cfg.sigma)
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
        engine = PairwiseMI(cfg.bins, cfg.method or "torch", "cuda", sigma=cfg.sigma)
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

def aggregate(slices: np.ndarray, effective: np.ndarray, population: float) -> dict:
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
    if cfg.lower:
        out["s_lb"] = _lower_summary(ok, len(ds), cfg)
    if cfg.upper:
        out["s_ub"] = _upper_summary(ok, ds, cfg)
    out["per_volume"] = [{k: v for k, v in asdict(r).items() if k != "pairs"} for r in results]
    if cfg.dump_pairs:
        out["pairs"] = _pair_columns(results)
    return out


def _lower_summary(ok: list[VolumeResult], population: int, cfg: ScaleFactorConfig) -> dict:
    """S_LB over the volumes that worked. study-code: total random bytes / total volume bytes, as the study's
    compressibility script summed them (its CI: the ratio estimator of those sums). per-volume: total slices /
    total effective slices n_v / S_LB,v."""
    slices = np.array([r.slices for r in ok], dtype=np.float64)
    if cfg.lb_estimator == "study-code":
        summary = aggregate(np.array([r.lb_random_bytes for r in ok]), np.array([r.lb_volume_bytes for r in ok]),
                            population)
        if ok:  # aggregate weighs by its first argument; this one is per slice, as for the other estimators
            summary["slice_weighted_mean"] = float(np.sum(slices * [r.s_lb for r in ok]) / slices.sum())
    else:
        summary = aggregate(slices, slices / np.array([r.s_lb for r in ok]) if ok else np.array([]), population)
    summary.update(estimator=cfg.lb_estimator, compressor=cfg.compressor,
                   level=COMPRESSORS[cfg.compressor] if cfg.level is None else cfg.level)
    return summary


def _upper_summary(ok: list[VolumeResult], ds: CTDataset, cfg: ScaleFactorConfig) -> dict:
    """S_UB over the volumes it was computed for; skipped volumes (over the slice limit) are out of the sample and
    of the population alike, so a sampled CI is the one of the volumes the estimator covers. The population
    shrinks by the share of computed volumes the study-code estimator dropped (which unprocessed ones it would
    drop is not known): with every volume processed there is no sampling error."""
    limit = cfg.slice_limit
    computed = [r for r in ok if not r.ub_skipped]
    used = [r for r in computed if r.ub_dropped is None]
    population = int(np.sum(ds.slice_counts <= limit)) if limit is not None else len(ds)
    if computed:
        population = population * len(used) / len(computed)
    summary = aggregate(np.array([r.slices for r in used]), np.array([r.ub_effective_slices for r in used]),
                        population)
    summary.update(estimator=cfg.estimator, smoothing_sigma=cfg.sigma, max_slices=limit,
                   volumes_skipped=sum(r.ub_skipped for r in ok),
                   volumes_dropped=sum(r.ub_dropped is not None for r in ok), bins=cfg.bins,
                   baseline_slices=STUDY_BASELINE_SLICES if cfg.estimator == "study-code" else cfg.baseline_slices)
    return summary


def _pair_columns(results: list[VolumeResult]) -> dict[str, np.ndarray | list[str]]:
    """--dump-pairs: the slice pairs of every volume S_UB was computed for, as columns."""
    with_pairs = [r for r in results if r.pairs is not None]
    columns = {"volume": [r.volume for r in with_pairs for _ in range(len(r.pairs["i"]))]}
    for key in ("i", "j", "distance", "utility"):
        columns[key] = (np.concatenate([r.pairs[key] for r in with_pairs]) if with_pairs
                        else np.array([], np.float32 if key == "utility" else np.int32))
    return columns


RESULT_NAME = "scale_factors.json"
PAIRS_NAME = "scale_factors_pairs.parquet"


def write_results(result: dict, out_dir: Path | str) -> Path:
    """scale_factors.json (what `tlx analyze` reads), scale_factors_volumes.csv (one row per volume) and, with
    --dump-pairs, scale_factors_pairs.parquet (volume, i, j, distance, utility)."""
    import polars as pl

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {k: v for k, v in result.items() if k not in ("per_volume", "pairs")}
    if "pairs" in result:
        summary["pairs_file"] = PAIRS_NAME
    path = out_dir / RESULT_NAME
    if result.get("per_volume"):
        # every row decides the column types: a volume failing after the first 100 (polars' default look-ahead)
        # must not be refused for its error string
        with atomic_write(out_dir / "scale_factors_volumes.csv") as f:
            pl.DataFrame(result["per_volume"], infer_schema_length=None).drop("position").write_csv(f)
    if "pairs" in result:
        with atomic_write(out_dir / PAIRS_NAME) as f:
            pl.DataFrame(result["pairs"]).write_parquet(f)
    elif (out_dir / PAIRS_NAME).exists():
        (out_dir / PAIRS_NAME).unlink()  # a dump of an earlier run would be read as this one's
    write_json_atomic(summary, path)  # last: analyze finds the pairs file it names
    return path


@dataclass(frozen=True)
class ScaleFactor:
    """One bound as `tlx analyze` uses it: value and standard error (0 when all volumes were used)."""

    value: float
    se: float = 0.0
    volumes_failed: int = 0  # volumes `tlx scale-factors` could not compute, left out of the value
    how: str = ""            # how it was computed (compressor and level; S_UB estimator), as the file says


def _how(bound: str, entry: dict) -> str:
    if bound == "lb":
        how = f"{entry['compressor']} level {entry['level']}" if "compressor" in entry else ""
        return how + (f", estimator {entry['estimator']}" if "estimator" in entry else "")
    if "estimator" not in entry:  # files of tlx before the study-code estimator: the paper's text
        return "estimator not recorded (paper-text: files written before study-code existed)"
    skipped, dropped = entry.get("volumes_skipped") or 0, entry.get("volumes_dropped") or 0
    return (f"estimator {entry['estimator']}"
            + (f", {skipped} volume(s) over {entry['max_slices']} slices skipped" if skipped else "")
            + (f", {dropped} volume(s) dropped as the study's code dropped them" if dropped else ""))


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
            out[bound] = ScaleFactor(entry["value"], (ci[1] - ci[0]) / (2 * Z95) if ci else 0.0, failed,
                                     _how(bound, entry))
    return out


def pairs_path(path: Path | str) -> Path | None:
    """The slice pairs file (--dump-pairs) a scale_factors.json names, beside it; None when it names none."""
    path = Path(path)
    try:
        name = json.loads(path.read_text()).get("pairs_file")
    except (OSError, ValueError, AttributeError):
        return None  # load_results has already said why the file cannot be used
    return path.parent / name if isinstance(name, str) and name else None


def from_values(lb: float | None = None, ub: float | None = None) -> dict[str, ScaleFactor]:
    """Scale factors given by hand (e.g. the paper's 1.136 and 3.807)."""
    out = {}
    for bound, value in (("lb", lb), ("ub", ub)):
        if value is not None:
            if not value >= 1:
                raise AnalysisError(f"a scale factor must be >= 1 (slices worth at most one image each), got {value}")
            out[bound] = ScaleFactor(float(value))
    return out

