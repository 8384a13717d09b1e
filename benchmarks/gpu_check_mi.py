"""benchmarks.gpu_check step on `tlx scale-factors`' GPU methods: MI evaluations/s of the int8 one-hot product
(`torch._int_mm`, method "torch") and of its float32 plan B ("torch-float"), and RadNet-12M's projected time.

    scale_factors(rec, sz, work)

The same measurement as benchmarks.scale_factors (its synthetic CT-like volumes and timing function):
S_UB of each volume, all pairs of its slices plus every slice against another volume's. Projection
to RadNet-12M (90,663 volumes, 132.7 slices each): the measured MI seconds per volume x
(132.7 / slices)^2 x 90,663 on one GPU, counts checked exact by analysis.mi. Binning (quantize) runs on
the CPU (in `tlx scale-factors`' reader threads on a GPU); its projection is given per core apart.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from benchmarks.gpu_check_core import NEEDS_CUDA, Record, Sizes, cores

METHODS = {"torch": "int8 torch._int_mm", "torch-float": "float32 products"}


def scale_factors(rec: Record, sz: Sizes, work: Path) -> None:
    from benchmarks.scale_factors import (
        RADNET_SLICES,
        RADNET_VOLUMES,
        TARGET_GPU_S,
        ct_like_volume,
    )

    rng = np.random.default_rng(0)
    volumes = [ct_like_volume(rng, sz.mi_slices, sz.mi_size) for _ in range(sz.mi_volumes + 1)]
    scale = (RADNET_SLICES / RADNET_VOLUMES / sz.mi_slices) ** 2 * RADNET_VOLUMES
    on_gpu = sz.device == "cuda"
    binning = None
    for method, what in METHODS.items():
        ub = rec.run(f"MI {what}", _measure, volumes, method, sz.device, units=("MI evaluations/s", "h"))
        if ub is None:
            continue
        binning = ub["binning_s_per_volume"]
        hours = ub["mi_s_per_volume"] * scale / 3600
        rec.figure(f"MI {what}", ub["mi_evaluations_per_s"], "MI evaluations/s",
                   f"{sz.mi_volumes} volume(s) of {sz.mi_slices} x {sz.mi_size}x{sz.mi_size}, 64 bins, on "
                   f"{sz.device}, {ub['mi_s_per_volume']:.3f} s per volume")
        note = (f"projected: MI alone, one GPU ({'within' if hours * 3600 <= TARGET_GPU_S else 'over'} the 1 h target)"
                if on_gpu else NEEDS_CUDA)
        rec.figure(f"RadNet-12M S_UB, {what}", hours if on_gpu else None, "h", note)
    if binning is not None:
        n = cores()
        rec.figure("binning (quantize, CPU)", binning, "s/volume",
                   f"one core; RadNet-12M: {binning * scale / 3600:.1f} h on one core, "
                   f"{binning * scale / 3600 / n:.2f} h over {n} cores (projected)")


def _measure(volumes: list, method: str, device: str) -> dict:
    from analysis.mi import PairwiseMI, quantize
    from analysis.scale_factors import upper_bound_codes
    from benchmarks.scale_factors import STUDY_SIGMA, time_upper_bound

    # the default estimator (study-code: smoothed histograms), as `tlx scale-factors` runs it
    engine = PairwiseMI(64, method, device, sigma=STUDY_SIGMA)
    others = volumes[1:] + volumes[:1]
    upper_bound_codes(quantize(volumes[0][:8]), quantize(others[0][:8]), engine)  # CUDA/cuBLAS start-up
    if device == "cuda":
        torch.cuda.synchronize()
    return time_upper_bound(volumes[:-1], others[:-1], engine, "study-code")
