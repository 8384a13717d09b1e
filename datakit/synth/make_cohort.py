"""`tlx synth`: a synthetic CT cohort as real DICOM files, with a ground-truth file beside it.

    from datakit.synth.make_cohort import synth_cohort
    summary = synth_cohort("cohort/", patients=40, seed=0, matrix=512, progress=progress)
    synth_cohort("mix/", patients=20, seed=4, syntax_mix="realistic")   # 80/15/5 % explicit LE / JPEG lossless / other

Writes DICOM files in four folder layouts (with and without .dcm suffixes, flat and
deep, names in folder names as some viewer exports have), the junk real exports
contain, and `cohort.json`: every file with the series it belongs to, what it is
(volume slice, scout, re-sent duplicate, exact copy, dose report, ...) and the reject
code scan is expected to give it; every series with its intended label; and the PHI
strings that must never reach a shareable output. The same seed gives byte-identical
files; patient i is the same whatever the number of patients.
"""
from __future__ import annotations

import contextlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from datakit.errors import DatakitError
from datakit.synth.cohort import SYNTAX_MIXES, apply_syntax_mix, plan_patient
from datakit.synth.write import write_junk, write_patient
from tlxcore.atomic import write_text_atomic
from tlxcore.progress import Progress, Tick, silent
from tlxcore.runtime import default_workers

GROUND_TRUTH = "cohort.json"
MIN_MATRIX, MAX_MATRIX = 32, 1024


def _one_patient(args) -> dict:
    out, seed, index, n, matrix, syntax_mix, syntaxes = args
    plan = plan_patient(seed, index, n, matrix, syntax_mix)
    for st in plan.studies:
        for s in st.series:
            s.transfer_syntax = syntaxes.get(s.key, s.transfer_syntax)
    files = write_patient(Path(out), plan)
    series = [{"key": s.key, "kind": s.kind, "label": s.label, "region": s.phantom, "slices": s.slices,
               "rows": s.rows, "columns": s.cols, "transfer_syntax": s.transfer_syntax, "expect": s.expect,
               "duplicate_of": s.duplicate_of, "study_description": st.description, "description": s.description,
               "patient_index": index}
              for st in plan.studies for s in st.series]
    return {"files": files, "series": series, "phi": plan.phi, "patient_id": plan.patient_id}


def synth_cohort(out: str | os.PathLike, patients: int = 40, seed: int = 0, matrix: int = 512,
                 workers: int | None = None, progress: Progress = silent, syntax_mix: str = "traps") -> dict:
    """Write the cohort under `out` (must be empty or absent); returns the ground truth's counts.
    `progress` gets a Tick("synth", patients written, patients) after each patient. `syntax_mix`:
    "traps" (one volume per special transfer syntax, the rest explicit VR LE) or "realistic" (the
    volumes' syntaxes by REALISTIC_MIX's shares of slices, as a typical PACS export has them)."""
    out = Path(out)
    if patients < 1:
        raise DatakitError(f"--patients must be at least 1, got {patients}")
    if not MIN_MATRIX <= matrix <= MAX_MATRIX:
        raise DatakitError(f"--matrix must be in {MIN_MATRIX}..{MAX_MATRIX}, got {matrix}")
    if syntax_mix not in SYNTAX_MIXES:
        raise DatakitError(f"--syntax-mix {syntax_mix!r} is not one of: {', '.join(SYNTAX_MIXES)}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DatakitError(f"output folder {str(out)!r} is not empty; choose a new folder")
    out.mkdir(parents=True, exist_ok=True)
    workers = max(1, min(workers or default_workers(), patients))
    syntaxes: dict[str, str] = {}
    if syntax_mix == "realistic":          # decided over the whole cohort (metadata only), written per patient
        plans = [plan_patient(seed, i, patients, matrix, syntax_mix) for i in range(patients)]
        apply_syntax_mix(plans)
        syntaxes = {s.key: s.transfer_syntax for p in plans for st in p.studies for s in st.series}
    jobs = [(str(out), seed, i, patients, matrix, syntax_mix, syntaxes) for i in range(patients)]
    results = []
    progress(Tick("synth", 0, patients, "patients"))
    with contextlib.ExitStack() as stack:
        pool = stack.enter_context(ProcessPoolExecutor(workers)) if workers > 1 else None
        for result in (pool.map if pool else map)(_one_patient, jobs):
            results.append(result)
            progress(Tick("synth", len(results), patients, "patients"))
    files = [f for r in results for f in r["files"]]
    files += write_junk(out, seed, plan_patient(seed, 0, patients, matrix))
    files.append({"path": GROUND_TRUTH, "series": None, "kind": "ground-truth", "instance": None,
                  "expect": "not-dicom", "note": "this file"})
    truth = {
        "generator": "tlx synth", "version": 1, "seed": seed, "patients": patients, "matrix": matrix,
        **({"syntax_mix": syntax_mix} if syntax_mix != "traps" else {}),    # the default's file stays as it was
        "series": [s for r in results for s in r["series"]],
        "files": sorted(files, key=lambda f: f["path"]),
        "phi": sorted({v for r in results for v in r["phi"]}),
    }
    # Written last and atomically: its presence means the cohort is complete (`tlx demo` relies on it).
    write_text_atomic(out / GROUND_TRUTH, json.dumps(truth, indent=1, ensure_ascii=False) + "\n")
    return summarize(truth)


def summarize(truth: dict) -> dict:
    files = truth["files"]
    kinds: dict[str, int] = {}
    for f in files:
        kinds[f["kind"]] = kinds.get(f["kind"], 0) + 1
    return {"patients": truth["patients"], "files": len(files), "series": len(truth["series"]),
            "by_kind": dict(sorted(kinds.items()))}
