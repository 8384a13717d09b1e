"""Benchmark: the S_UB computation of `tlx scale-factors` (batched joint-histogram MI), and S_LB's compression.

    python -m benchmarks.scale_factors                      # CPU: 2 volumes of 130 slices, 256 x 256
    python -m benchmarks.scale_factors --device cuda        # GPU (torch int8 one-hot products), same volumes
    python -m benchmarks.scale_factors --slices 40 --volumes 1   # a quick look
    python -m benchmarks.scale_factors --estimator paper-text    # plug-in MI (no histogram smoothing)

Measures what one volume costs in `analysis.scale_factors.upper_bound_codes`: every
pair of its slices (within) plus the baseline: study-code (the default) pairs each of the
first min(n, 101) slices with one slice of the other volume, n(n-1)/2 + min(n, 101) MI
evaluations for n slices with the bincount method (n^2 + min(n, 101) with the one-hot
product); paper-text compares every slice with all slices of the other volume (or
--baseline-slices of them): n(n-1)/2 + n^2. Binning (quantize) is timed separately;
reading and decoding shards is not included (it is I/O, measured by the loader
benchmarks). Also times the one-hot product on numpy (why it is not the CPU default)
and gzip (level 9, the default, and 6) and zstd on one volume (S_LB's cost). The S_UB
estimator is the default `study-code` (each joint histogram smoothed: one G C G^T and a
logarithm per cell on top of the counting) unless --estimator paper-text.

The projection to RadNet-12M (90,663 volumes, 12,034,617 slices: 132.7 per volume)
multiplies the measured per-volume time by (132.7 / n)^2 (pairs grow quadratically;
slightly pessimistic for study-code's fixed 101-slice baseline and a fixed --baseline-slices)
and by the volume count, for one
process; it is a projection from a measurement, labelled as such. Prints a table and
writes JSON (--json, default benchmarks/out/scale_factors.json).
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np

from analysis.mi import PairwiseMI, quantize
from analysis.scale_factors import (
    ESTIMATORS,
    STUDY_BASELINE_SLICES,
    STUDY_SIGMA,
    _resolve_device,
    lower_bound_volume,
    upper_bound_codes,
)
from tlxcore.atomic import write_json_atomic

RADNET_VOLUMES = 90_663
RADNET_SLICES = 12_034_617
TARGET_GPU_S = 3600.0  # issue 5: the whole of RadNet-12M within an hour on one H100


def ct_like_volume(rng: np.random.Generator, slices: int, size: int) -> np.ndarray:
    """int16 HU: air around an elliptic body of soft tissue with smooth structure that drifts between slices."""
    yy, xx = np.mgrid[-1:1:size * 1j, -1:1:size * 1j]
    body = (xx / 0.8) ** 2 + (yy / 0.6) ** 2 < 1
    k = np.fft.fftfreq(size)
    lowpass = np.exp(-(k[:, None] ** 2 + k[None, :] ** 2) * 2000)
    field = np.real(np.fft.ifft2(np.fft.fft2(rng.normal(size=(size, size))) * lowpass))
    out = np.empty((slices, size, size), dtype=np.int16)
    for i in range(slices):
        step = np.real(np.fft.ifft2(np.fft.fft2(rng.normal(size=(size, size))) * lowpass))
        field = 0.95 * field + 0.31 * step
        tissue = 40 + 300 * field / (np.abs(field).max() + 1e-9) + rng.normal(0, 15, (size, size))
        out[i] = np.where(body, tissue, -1000 + rng.normal(0, 5, (size, size))).astype(np.int16)
    return out


def time_upper_bound(volumes, others, engine: PairwiseMI, estimator: str) -> dict:
    t_bin = t_mi = 0.0
    evaluations = engine.evaluations
    for volume, other in zip(volumes, others):
        t0 = time.perf_counter()
        codes, other_codes = quantize(volume), quantize(other)
        t1 = time.perf_counter()
        upper_bound_codes(codes, other_codes, engine, estimator)  # returns to the host: the device is synchronised
        t2 = time.perf_counter()
        t_bin += t1 - t0
        t_mi += t2 - t1
    evaluations = engine.evaluations - evaluations
    n = len(volumes)
    return {"volumes": n, "binning_s_per_volume": t_bin / n, "mi_s_per_volume": t_mi / n,
            "s_per_volume": (t_bin + t_mi) / n, "volumes_per_s": n / (t_bin + t_mi),
            "mi_evaluations": evaluations, "mi_evaluations_per_s": evaluations / t_mi}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slices", type=int, default=130)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--volumes", type=int, default=2, help="volumes timed (one more is made as the baseline)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--method", choices=["bincount", "onehot", "torch", "torch-float"],
                        help="default: bincount (cpu), torch (cuda)")
    parser.add_argument("--baseline-slices", type=int,
                        help="paper-text: slices of the other volume in the MI baseline (default: all)")
    parser.add_argument("--estimator", choices=ESTIMATORS, default="study-code")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/out/scale_factors.json"))
    args = parser.parse_args(argv)

    device = _resolve_device(args.device)
    method = args.method or ("torch" if device == "cuda" else "bincount")
    rng = np.random.default_rng(args.seed)
    volumes = [ct_like_volume(rng, args.slices, args.size) for _ in range(args.volumes + 1)]
    # study-code: the partner slices of the first 101 slices (here simply the other volume's first ones)
    keep = min(args.slices, STUDY_BASELINE_SLICES) if args.estimator == "study-code" else args.baseline_slices
    others = [v[:keep] for v in volumes[1:] + volumes[:1]]
    engine = PairwiseMI(64, method, device, sigma=STUDY_SIGMA if args.estimator == "study-code" else 0.0)
    if device == "cuda":  # first call pays for CUDA/cuBLAS start-up: not part of the rate
        upper_bound_codes(quantize(volumes[0][:8]), quantize(others[0][:8]), engine, args.estimator)
    ub = time_upper_bound(volumes[:args.volumes], others[:args.volumes], engine, args.estimator)

    # The one-hot product on numpy, on a block of 8 x 8 slice pairs (enough to get its rate).
    onehot = PairwiseMI(64, "onehot", "cpu")
    codes = quantize(volumes[0][:8])
    t0 = time.perf_counter()
    onehot.between(codes, codes)
    onehot_rate = 64 / (time.perf_counter() - t0)

    lb = {}
    for name, compressor, level in (("gzip", "gzip", None), ("gzip-6", "gzip", 6), ("zstd", "zstd", None)):
        t0 = time.perf_counter()
        lower_bound_volume(volumes[0], volumes[1], compressor, level)
        lb[name] = time.perf_counter() - t0

    per_volume_pairs = ub["mi_evaluations"] / args.volumes
    scale = (RADNET_SLICES / RADNET_VOLUMES / args.slices) ** 2
    projected_s = ub["s_per_volume"] * scale * RADNET_VOLUMES
    result = {
        "benchmark": "scale_factors", "date": time.strftime("%Y-%m-%d"), "machine": platform.platform(),
        "cpus": os.cpu_count(), "device": device, "method": method, "estimator": args.estimator,
        "slices": args.slices, "size": args.size,
        "baseline_slices": keep,
        "upper_bound": ub, "mi_evaluations_per_volume": per_volume_pairs,
        "onehot_numpy_mi_evaluations_per_s": onehot_rate,
        "lower_bound_s_per_volume": lb,
        "projection_radnet12m": {"volumes": RADNET_VOLUMES, "slices_per_volume": RADNET_SLICES / RADNET_VOLUMES,
                                 "upper_bound_hours_one_process": projected_s / 3600,
                                 "gpu_target_met": (projected_s <= TARGET_GPU_S) if device == "cuda" else None},
    }
    if device == "cuda":
        import torch

        result["gpu"] = torch.cuda.get_device_name()
    print_table(result, args.volumes)
    write_json_atomic(result, args.json)
    return result


def print_table(result: dict, volumes: int) -> None:
    ub, lb = result["upper_bound"], result["lower_bound_s_per_volume"]
    print(f"S_UB ({result['estimator']}) on {result['device']} ({result['method']}), {volumes} volume(s) of "
          f"{result['slices']} x "
          f"{result['size']}x{result['size']}:")
    print(f"  binning        {ub['binning_s_per_volume']:.3f} s/volume")
    print(f"  MI             {ub['mi_s_per_volume']:.3f} s/volume, {ub['mi_evaluations_per_s']:,.0f} MI evaluations/s "
          f"({result['mi_evaluations_per_volume']:,.0f} per volume)")
    print(f"  total          {ub['volumes_per_s']:.4f} volumes/s")
    print(f"  one-hot numpy  {result['onehot_numpy_mi_evaluations_per_s']:,.0f} MI evaluations/s (for comparison)")
    print(f"S_LB: gzip level 9 {lb['gzip']:.2f} s/volume, level 6 {lb['gzip-6']:.2f} s/volume, "
          f"zstd {lb['zstd']:.2f} s/volume")
    print(f"projection to RadNet-12M ({RADNET_VOLUMES:,} volumes x {RADNET_SLICES / RADNET_VOLUMES:.1f} slices), "
          f"one process: {result['projection_radnet12m']['upper_bound_hours_one_process']:,.1f} h for S_UB")


if __name__ == "__main__":
    main()
