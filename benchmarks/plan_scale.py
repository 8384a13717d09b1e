"""Benchmark: `tlx plan` on an index the size of the paper's RadNet-12M.

    python -m benchmarks.plan_scale                     # 12,034,617 rows, 90,663 volumes, 15,000 patients
    python -m benchmarks.plan_scale --rows 200000 --volumes 1500 --patients 250   # a quick look

Writes a synthetic work/index.parquet with every column scan writes (realistic content:
16-hex pseudonyms, DICOM-like paths, a few percent scan rejects, SOP copies, small
volumes, several labels), then runs the real plan code in a child process and reports
wall time and the child's peak resident memory (VmHWM of that process only, so the
generator's memory does not count). Targets (issue 2): < 30 s and < 4 GB on a
2-core machine. Prints a table and writes JSON (--json).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks import workdir

LABELS = ["head", "thorax", "abdomen", "extremities", "pelvis", "spine", "other"]
LABEL_P = [0.22, 0.25, 0.25, 0.06, 0.07, 0.05, 0.10]
TARGET_S, TARGET_GB = 30.0, 4.0


def _hex16(rng: np.random.Generator, n: int) -> pa.Array:
    """n random 16-hex-digit strings (what pseudonym() returns), built without a Python loop."""
    data = rng.integers(0, 2**63, size=n, dtype=np.int64).astype(">u8").tobytes().hex().encode()
    offsets = np.arange(0, 16 * (n + 1), 16, dtype=np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data))


def make_index(path: Path, rows: int, volumes: int, patients: int, seed: int = 0) -> dict:
    """A synthetic index.parquet with exactly `rows` rows; returns what it put in."""
    rng = np.random.default_rng(seed)
    n_scan_rejects = rows // 200          # scouts, dose reports, junk files: 0.5 %
    n_copies = rows // 200                # file copies (same SOP UID, other path): 0.5 %
    n_slices = rows - n_scan_rejects - n_copies
    # Slice counts per volume: log-normal around the paper's mean (133), 2 % small volumes.
    sizes = np.maximum(30, rng.lognormal(np.log(110), 0.6, volumes)).astype(np.int64)
    small = rng.random(volumes) < 0.02
    sizes[small] = rng.integers(1, 30, small.sum())
    sizes = np.maximum(1, np.round(sizes * (n_slices / sizes.sum()))).astype(np.int64)
    sizes[np.argmax(sizes)] += n_slices - sizes.sum()
    vol_patient = np.sort(rng.integers(0, patients, volumes))
    vol_label = rng.choice(len(LABELS), size=volumes, p=LABEL_P)
    vol_of_row = np.repeat(np.arange(volumes), sizes)
    slice_no = np.arange(n_slices) - np.repeat(np.cumsum(sizes) - sizes, sizes)

    patient_ids, series_ids = _hex16(rng, patients), _hex16(rng, volumes)
    study_ids = _hex16(rng, volumes)
    base = pl.DataFrame({"v": vol_of_row, "i": slice_no, "p": vol_patient[vol_of_row]})
    t = base.select(
        path=pl.format("PACS/{}/{}/{}/IM{}", pl.col("p").cast(pl.String).str.zfill(6),
                       (pl.col("v") % 7).cast(pl.String), pl.col("v").cast(pl.String).str.zfill(7),
                       pl.col("i").cast(pl.String).str.zfill(5)),
        slice_pos=(pl.col("i") * -1.25 + 40.0),
        instance_number=(pl.col("i") + 1).cast(pl.Int32))
    slices = pa.table({
        "path": t["path"].to_arrow().cast(pa.string()),
        "reject_code": pa.nulls(n_slices, pa.string()), "reject_reason": pa.nulls(n_slices, pa.string()),
        "patient": patient_ids.take(vol_patient[vol_of_row]), "study": study_ids.take(vol_of_row),
        "series": series_ids.take(vol_of_row), "sop": _hex16(rng, n_slices),
        "slice_pos": t["slice_pos"].to_arrow(), "instance_number": t["instance_number"].to_arrow(),
        "label": pa.array(np.array(LABELS)[vol_label[vol_of_row]]),
    })
    # File copies: the same header (same SOP UID) under another path.
    copy_rows = rng.choice(n_slices, n_copies, replace=False)
    copies = slices.take(copy_rows)
    copies = copies.set_column(0, "path", pa.array(["COPY/" + p for p in copies["path"].to_pylist()]))
    # Scan rejects: a scout per study-ish, a few non-DICOM files (no UIDs).
    rej_series = rng.integers(0, volumes, n_scan_rejects)
    is_junk = rng.random(n_scan_rejects) < 0.3
    rejects = pa.table({
        "path": pa.array([f"PACS/misc/file{i:08d}" for i in range(n_scan_rejects)]),
        "reject_code": pa.array(np.where(is_junk, "not-dicom", "scout")),
        "reject_reason": pa.array(np.where(is_junk, "not a DICOM file (no DICM preamble)",
                                           "localizer image (ImageType LOCALIZER)")),
        "patient": pa.array(np.where(is_junk, None, np.asarray(patient_ids.take(vol_patient[rej_series])))),
        "study": pa.nulls(n_scan_rejects, pa.string()), "series": pa.nulls(n_scan_rejects, pa.string()),
        "sop": pa.nulls(n_scan_rejects, pa.string()), "slice_pos": pa.nulls(n_scan_rejects, pa.float64()),
        "instance_number": pa.nulls(n_scan_rejects, pa.int32()), "label": pa.nulls(n_scan_rejects, pa.string()),
    })
    table = pa.concat_tables([slices, copies, rejects.cast(slices.schema)])
    n = table.num_rows
    assert n == rows, (n, rows)
    labels = table["label"]
    const = {
        "size": pa.array(np.full(n, 526_000, np.int64)),
        "modality": pa.array(np.full(n, "CT")),
        "sop_class_uid": pa.array(np.full(n, "1.2.840.10008.5.1.4.1.1.2")),
        "image_type": pa.array(np.full(n, "ORIGINAL\\PRIMARY\\AXIAL")),
        "transfer_syntax": pa.array(np.full(n, "1.2.840.10008.1.2.1")),
        "rows": pa.array(np.full(n, 512, np.int32)), "columns": pa.array(np.full(n, 512, np.int32)),
        "bits_allocated": pa.array(np.full(n, 16, np.int32)), "bits_stored": pa.array(np.full(n, 12, np.int32)),
        "pixel_representation": pa.array(np.full(n, 1, np.int32)),
        "samples_per_pixel": pa.array(np.full(n, 1, np.int32)), "number_of_frames": pa.array(np.full(n, 1, np.int32)),
        "photometric": pa.array(np.full(n, "MONOCHROME2")),
        "rescale_slope": pa.array(np.ones(n)), "rescale_intercept": pa.array(np.full(n, -1024.0)),
        "pixel_spacing_row": pa.array(np.full(n, 0.7, np.float32)),
        "pixel_spacing_col": pa.array(np.full(n, 0.7, np.float32)),
        "slice_thickness": pa.array(np.full(n, 1.25, np.float32)),
        "ipp_x": pa.array(np.full(n, -180.0)), "ipp_y": pa.array(np.full(n, -180.0)),
        "ipp_z": table["slice_pos"],
        "iop": pa.FixedSizeListArray.from_arrays(pa.array(np.tile([1.0, 0, 0, 0, 1, 0], n)), 6),
        "label_rule": labels, "label_keyword": labels, "label_field": pa.array(np.full(n, "BodyPartExamined")),
        "pixel_offset": pa.array(np.full(n, 1_234, np.int64)), "pixel_length": pa.array(np.full(n, 524_288, np.int64)),
        "burned_in": pa.nulls(n, pa.string()),
    }
    for name, col in const.items():
        table = table.append_column(name, col)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=1 << 20)
    return {"rows": n, "volumes": volumes, "patients": patients, "small_volumes": int(small.sum()),
            "copies": n_copies, "scan_rejects": n_scan_rejects}


_CHILD = """
import json, resource, sys, time
t0 = time.perf_counter()
from datakit.plan import PlanConfig, make_plan
s = make_plan(sys.argv[1], PlanConfig(**json.loads(sys.argv[2])))
wall = time.perf_counter() - t0
ru = resource.getrusage(resource.RUSAGE_SELF)
# VmHWM: the peak RSS of this process's own memory. ru_maxrss is not used: Linux carries the
# parent's peak over fork+exec into it, and the parent here just built a 12M-row table.
peak = int(next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM:"))) * 1024
print(json.dumps({"seconds": wall, "cpu_seconds": ru.ru_utime + ru.ru_stime, "max_rss_bytes": peak,
                  "planned": s.planned, "found": s.found, "rejected_by_code": s.rejected_by_code,
                  "by_split": s.by_split}))
"""


def run_plan_child(dataset: Path, config: dict | None = None) -> dict:
    """The real plan in a fresh process, so its peak memory is its own."""
    out = subprocess.run([sys.executable, "-c", _CHILD, str(dataset), json.dumps(config or {})],
                         capture_output=True, text=True,
                         env={**os.environ, "TLX_QUIET": "1"})
    if out.returncode:
        raise SystemExit(f"plan failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=12_034_617)
    ap.add_argument("--volumes", type=int, default=90_663)
    ap.add_argument("--patients", type=int, default=15_000)
    ap.add_argument("--workdir", type=workdir, default=None, help="where the index goes (default: a temp folder)")
    ap.add_argument("--repeat", type=int, default=3, help="plan runs (each in a fresh process); the median counts")
    ap.add_argument("--subset-size", type=int, default=None, help="plan a subset (as tlx plan --subset-size)")
    ap.add_argument("--exclude-class", action="append", default=[], help="as tlx plan --exclude-class")
    ap.add_argument("--json", type=Path, default=Path("benchmarks/out/plan_scale.json"))
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        dataset = Path(tmp) / "ds"
        t0 = time.perf_counter()
        made = make_index(dataset / "work" / "index.parquet", args.rows, args.volumes, args.patients)
        gen_s = time.perf_counter() - t0
        runs = []
        for _ in range(args.repeat):
            runs.append(run_plan_child(dataset, {"subset_size": args.subset_size,
                                                 "exclude_classes": args.exclude_class}))
            runs[-1]["load_average_after"] = os.getloadavg()
        runs.sort(key=lambda r: r["seconds"])
        result = runs[len(runs) // 2]
        index_mb = (dataset / "work" / "index.parquet").stat().st_size / 1e6
        plan_mb = (dataset / "work" / "plan.parquet").stat().st_size / 1e6
    gb = result["max_rss_bytes"] / 1e9
    report = {"benchmark": "plan_scale", "machine": f"{platform.node()}: {os.cpu_count()} cores, {platform.machine()}",
              "plan_options": {"subset_size": args.subset_size, "exclude_classes": args.exclude_class},
              "index": made, "index_mb": round(index_mb, 1), "plan_mb": round(plan_mb, 1),
              "generate_seconds": round(gen_s, 1), "plan_seconds": round(result["seconds"], 2),
              "plan_seconds_all_runs": [round(r["seconds"], 2) for r in runs],
              "plan_cpu_seconds": round(result["cpu_seconds"], 2),
              "load_average_after_each_run": [r["load_average_after"] for r in runs],
              "peak_rss_gb": round(gb, 2), "peak_rss_gb_all_runs": [round(r["max_rss_bytes"] / 1e9, 2) for r in runs],
              "planned": result["planned"], "rejected_by_code": result["rejected_by_code"],
              "by_split": result["by_split"],
              "target": {"seconds": TARGET_S, "peak_rss_gb": TARGET_GB},
              "met": result["seconds"] < TARGET_S and gb < TARGET_GB}
    all_s = ", ".join(f"{r['seconds']:.1f}" for r in runs)
    print(f"{'index rows':<24}{made['rows']:>14,}\n"
          f"{'volumes / patients':<24}{made['volumes']:>7,} / {made['patients']:,}\n"
          f"{'planned slices':<24}{result['planned']:>14,}\n"
          f"{'plan wall time':<24}{result['seconds']:>12.1f} s   (target < {TARGET_S:.0f} s; median of {all_s})\n"
          f"{'plan peak RSS':<24}{gb:>12.2f} GB  (target < {TARGET_GB:.0f} GB)\n"
          f"{'targets met':<24}{str(report['met']):>14}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
