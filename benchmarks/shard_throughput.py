"""Benchmark: `tlx shard` against merely reading the files, and against what users would write instead.

    python -m benchmarks.shard_throughput                              # tlx synth --patients 20 --seed 4
    python -m benchmarks.shard_throughput --cohort cohort/ --rounds 5  # an existing cohort
    python -m benchmarks.shard_throughput --peers none --rounds 3      # tlx and the ceiling only

The cohort (default: `tlx synth --patients 20 --seed 4 --matrix 512 --syntax-mix realistic`, about
80/15/5 % of slices explicit VR LE / JPEG lossless / other syntaxes, as PACS exports) is planned once;
the slices the plan converts are what every variant reads. Each variant runs in a fresh process and
is measured by its CPU time (user + system, its worker processes included, imports included): on a
machine shared with other jobs CPU time is far steadier than wall time. The variants are run in
rounds, each round every variant once in a rotated order, and a variant's figure is the median
(and range) over rounds of ceiling CPU / variant CPU, each round's ratio from runs next to each other.
Every file is read once before the first round (page cache).

  ceiling          pydicom dcmread + pixel_array of each planned slice with the decoding plugins tlx
                   picks: merely reading the files (benchmarks/shard_peers.py)
  ceiling-default  the same with pydicom's own plugin choice
  tlx-1, tlx-2     `tlx shard` end to end (scan, plan, write: 256 x 256, the default codec) with
                   --workers 1 and 2 (the ratio counts all CPU time of both workers)
  pydicom-wds, litdata, monai   peers: the same 256 x 256 int16 zstd-3 payloads (shard_peers.py)
  imports          `python -c` importing what `tlx shard` imports: the fixed cost of a run
  scan, headers    `tlx scan --workers 1` against pydicom dcmread(stop_before_pixels) of every file
  tlx-1-baseline   with --baseline DIR: `tlx shard --workers 1` of another tlx checkout (say, the
                   commit before a change), interleaved with the rest

Then, in this process: the share of each stage and per-slice step in an instrumented `tlx shard
--workers 1` (CPU time), read_hu against pydicom per transfer syntax, and the payload codecs on the
stored slices. Target (issue 15): tlx-1 >= 0.7 x the ceiling (aim 1.0). Prints tables, writes JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import workdir

SECRET = "benchmark-secret-0123456789abcdef"
TARGET = 0.7
PEERS = ("pydicom-wds", "litdata", "monai")
IMPORTS = ("import cli.main, datakit.pipeline, datakit.write_convert, datakit.assemble, pydicom.pixels, zstandard, "
           "xxhash, numpy; from datakit.components import label; "
           "label(numpy.ones((2, 2), bool), numpy.ones((3, 3), bool))")


def _cpu_of(cmd: list[str], env: dict) -> tuple[float, float]:
    """(CPU seconds of the process and its children, wall seconds). Runs in the folder of the code
    under test (env's PYTHONPATH): `python -m` puts the working folder first on sys.path."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, cwd=env["PYTHONPATH"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), wall


def plan_once(cohort: Path, work: Path) -> dict:
    """Scan and plan the cohort once: the planned slices' paths and syntaxes (what every variant reads)."""
    import polars as pl

    from datakit.plan import make_plan
    from datakit.scan import scan

    ds = work / "planned"
    scan(cohort, ds, workers=1, secret=SECRET.encode())
    make_plan(ds)
    rows = pl.read_parquet(ds / "work" / "plan.parquet", columns=["row"])["row"]
    index = pl.read_parquet(ds / "work" / "index.parquet", columns=["path", "transfer_syntax"])[rows.to_list()]
    listing = {"files": [str(cohort / p) for p in index["path"]], "syntaxes": index["transfer_syntax"].to_list(),
               "all_files": sorted(str(p) for p in cohort.rglob("*") if p.is_file())}
    (work / "files.json").write_text(json.dumps(listing))
    return listing


def commands(cohort: Path, work: Path, variants: list[str]) -> dict[str, list[str]]:
    py = sys.executable
    out = {}
    for v in variants:
        if v.startswith("tlx-"):
            out[v] = [py, "-m", "cli.main", "shard", "--dicom-root", str(cohort), "--out", str(work / v),
                      "--workers", v.split("-")[1]]
        elif v == "imports":
            out[v] = [py, "-c", IMPORTS]
        elif v == "scan":
            out[v] = [py, "-m", "cli.main", "scan", "--dicom-root", str(cohort), "--out", str(work / v),
                      "--workers", "1"]
        else:
            out[v] = [py, "-m", "benchmarks.shard_peers", v, str(work / "files.json"), str(work / v)]
    return out


def rounds(cohort: Path, work: Path, variants: list[str], n_rounds: int, baseline: Path | None = None) -> dict:
    """Every variant once per round, in an order rotated by one each round; CPU, wall and load of every run."""
    env = {**os.environ, "TLX_QUIET": "1", "TLX_SECRET": SECRET, "PYTHONPATH": os.getcwd()}
    cmds = commands(cohort, work, variants)
    envs = {v: env for v in variants}
    if baseline is not None:
        cmds["tlx-1-baseline"] = [*commands(cohort, work, ["tlx-1"])["tlx-1"][:-4], "--out",
                                  str(work / "tlx-1-baseline"), "--workers", "1"]
        envs["tlx-1-baseline"] = {**env, "PYTHONPATH": str(baseline)}
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    for r in range(n_rounds):
        order = variants[r % len(variants):] + variants[:r % len(variants)]
        for v in order:
            shutil.rmtree(work / v, ignore_errors=True)
            load = os.getloadavg()[0]
            cpu, wall = _cpu_of(cmds[v], envs[v])
            runs[v].append({"round": r, "cpu_s": round(cpu, 3), "wall_s": round(wall, 3), "load_1min": load,
                            "load_1min_after": os.getloadavg()[0]})
            if v != "tlx-1":
                shutil.rmtree(work / v, ignore_errors=True)
    return runs


def ratios(runs: dict, slices: int) -> dict:
    """Per variant: ceiling CPU / variant CPU per round, its median and range; ms of CPU per slice."""
    out = {}
    for v, rs in runs.items():
        per_round = [c["cpu_s"] / x["cpu_s"] for c, x in zip(runs["ceiling"], rs)]
        cpu = [x["cpu_s"] for x in rs]
        out[v] = {"x_ceiling_median": round(statistics.median(per_round), 3),
                  "x_ceiling_range": [round(min(per_round), 3), round(max(per_round), 3)],
                  "cpu_s_median": round(statistics.median(cpu), 3),
                  "cpu_ms_per_slice": round(statistics.median(cpu) / slices * 1000, 3),
                  "wall_s_median": round(statistics.median(x["wall_s"] for x in rs), 3)}
    return out


def breakdown(cohort: Path, work: Path) -> dict:
    """One instrumented `tlx shard --workers 1` in this process: CPU seconds of each stage (scan, plan,
    convert, assemble) and of each per-slice step of phase 1 (the functions write_convert calls), and
    read_hu's CPU per transfer syntax."""
    from collections import Counter

    import datakit.write as write_mod
    import datakit.write_convert as wc
    from datakit.plan import make_plan
    from datakit.scan import scan
    from datakit.write import write_dataset
    from datakit.write_config import RunOptions

    spent: Counter = Counter()
    by_ts: Counter = Counter()
    count_ts: Counter = Counter()

    def timer(name, fn):
        def timed(*a, **k):
            t0 = time.process_time()
            try:
                return fn(*a, **k)
            finally:
                dt = time.process_time() - t0
                spent[name] += dt
                if name == "read_hu":
                    by_ts[a[1]["transfer_syntax"]] += dt
                    count_ts[a[1]["transfer_syntax"]] += 1
        return timed

    steps = ("read_hu", "apply_hu_floor", "implausible_hu", "body_coverage", "resize_to_int16", "pixel_hash")
    saved = {n: getattr(wc, n) for n in steps}
    saved_encode, saved_stage, saved_assemble = wc.Encoder.encode, wc.Staging.write_volume, write_mod._assemble
    ds = work / "tlx-breakdown"
    shutil.rmtree(ds, ignore_errors=True)
    stages = {}
    try:
        for name, fn in saved.items():
            setattr(wc, name, timer(name, fn))
        wc.Encoder.encode = timer("encode", saved_encode)
        wc.Staging.write_volume = timer("staging", saved_stage)
        write_mod._assemble = timer("assemble", saved_assemble)
        t0 = time.process_time()
        scan(cohort, ds, workers=1, secret=SECRET.encode())
        stages["scan"] = time.process_time() - t0
        t0 = time.process_time()
        make_plan(ds)
        stages["plan"] = time.process_time() - t0
        t0 = time.process_time()
        summary = write_dataset(ds, options=RunOptions(workers=1, dicom_root=str(cohort), keep_staging=True))
        stages["write"] = time.process_time() - t0
    finally:
        for name, fn in saved.items():
            setattr(wc, name, fn)
        wc.Encoder.encode, wc.Staging.write_volume, write_mod._assemble = saved_encode, saved_stage, saved_assemble
    stages["assemble"] = spent.pop("assemble")
    stages["convert"] = stages.pop("write") - stages["assemble"]
    n = summary.slices_converted + summary.slices_unreadable
    total = sum(stages.values())
    per_slice = {k: round(v / n * 1000, 3) for k, v in spent.most_common()}
    per_slice["other (reading rows, copies, staging tables, loop)"] = round(
        (stages["convert"] - sum(spent.values())) / n * 1000, 3)
    shares = {**{f"stage {k}": round(v / total, 3) for k, v in stages.items() if k != "convert"},
              **{f"convert: {k}": round(v * n / 1000 / total, 3) for k, v in per_slice.items()}}
    return {"slices": n, "stage_cpu_s": {k: round(v, 3) for k, v in stages.items()}, "ms_per_slice": per_slice,
            "shares": shares,
            "read_hu_ms_by_syntax": {ts: {"slices": count_ts[ts], "ms": round(by_ts[ts] / count_ts[ts] * 1000, 3)}
                                     for ts in sorted(by_ts)}}


def assembly_scaling(ds: Path, repeats: int = 3) -> dict:
    """Phase 2 alone, from the staged volumes the breakdown run kept, with 1 and 2 workers (threads),
    interleaved: wall and CPU seconds (best of `repeats`). Equal wall times mean it is bound by I/O
    and the serial decisions, not by the shard writing the workers share."""
    from datakit.assemble import assemble
    from datakit.manifest import Layout
    from datakit.write_config import WriteConfig

    layout = Layout(ds)
    best = {w: {"wall_s": float("inf"), "cpu_s": float("inf")} for w in (1, 2)}
    for _ in range(repeats):
        for w in (1, 2):
            for p in layout.final_outputs():
                shutil.rmtree(p) if p.is_dir() else p.unlink()
            t0, c0 = time.perf_counter(), time.process_time()
            assemble(layout, WriteConfig(), w, "benchmark")
            best[w]["wall_s"] = min(best[w]["wall_s"], round(time.perf_counter() - t0, 3))
            best[w]["cpu_s"] = min(best[w]["cpu_s"], round(time.process_time() - c0, 3))
    return {f"workers {w}": v for w, v in best.items()}


def reader_checks(ds: Path, repeats: int = 50) -> dict:
    """What datakit.read's shard check costs on first open: a fresh SampleReader reads the first sample
    of every shard, with check none, size (the default) and sha256; CPU per shard opened, best of
    `repeats`, and the sha256 rate."""
    from datakit.read import SampleReader, open_dataset

    tds = open_dataset(ds)
    ext, _ = tds.member("image")
    tables = [tds.sample_table(s) for s in ("train", "val", "test") if tds.num_samples(s)]
    firsts = [(t, int(i)) for t in tables for i in np.unique(t.shard, return_index=True)[1]]
    out = {"shards": len(firsts), "bytes": sum(s.bytes for s in tds.shards)}
    for check in ("none", "size", "sha256"):
        best = float("inf")
        for _ in range(repeats if check != "sha256" else 3):
            reader = SampleReader(tds, check=check)
            t0 = time.process_time()
            for table, i in firsts:
                reader.read(table, i, ext)
            best = min(best, time.process_time() - t0)
            reader.close()
        out[f"{check}_ms_per_shard"] = round(best / len(firsts) * 1000, 4)
    sha = (out["sha256_ms_per_shard"] - out["size_ms_per_shard"]) * len(firsts) / 1000
    out["sha256_mb_per_s"] = round(out["bytes"] / 1e6 / sha, 1) if sha > 0 else None
    return out


def codec_figures(ds: Path, limit: int = 400, repeats: int = 3) -> dict:
    """The stored slices of a written dataset under each payload codec: size ratio, encode and decode
    CPU per slice (decode = datakit.read.decode_member, what the loaders run), best of `repeats`."""
    from datakit.read import MemberSpec, SampleReader, decode_member, open_dataset
    from datakit.write_convert import Encoder

    tds = open_dataset(ds)
    ext, _ = tds.member("image")
    table, reader = tds.sample_table("train"), SampleReader(tds)
    stored = [np.ascontiguousarray(reader.read(table, i, ext), "<i2") for i in range(min(limit, len(table)))]
    raw = sum(s.nbytes for s in stored)
    out = {"slices": len(stored)}
    for codec, level in (("zstd-shuffle", 3), ("zstd", 3), ("zstd-shuffle", 1), ("zstd", 1)):
        enc = Encoder(codec, level)
        spec = MemberSpec("x", "image", codec, "int16", "little", stored[0].shape)
        best_e = best_d = float("inf")
        for _ in range(repeats):
            t0 = time.process_time()
            payloads = [enc.encode(s) for s in stored]
            best_e = min(best_e, time.process_time() - t0)
            t0 = time.process_time()
            for p in payloads:
                decode_member(spec, p)
            best_d = min(best_d, time.process_time() - t0)
        out[f"{codec} level {level}"] = {"ratio": round(raw / sum(map(len, payloads)), 3),
                                         "encode_ms": round(best_e / len(stored) * 1000, 3),
                                         "decode_ms": round(best_d / len(stored) * 1000, 3)}
    return out


def report(r: dict) -> None:
    print(f"{r['planned_slices']} planned slices ({r['mix']}), {r['rounds']} rounds, load average "
          f"{r['load_min']:.1f}-{r['load_max']:.1f} during the runs\n")
    print(f"{'variant':<18}{'x ceiling (median)':>20}{'range':>16}{'CPU ms/slice':>14}{'wall s':>9}")
    for v, x in r["ratios"].items():
        if v in ("imports", "scan", "headers"):
            continue
        print(f"{v:<18}{x['x_ceiling_median']:>20.2f}{str(x['x_ceiling_range']):>16}{x['cpu_ms_per_slice']:>14.2f}"
              f"{x['wall_s_median']:>9.1f}")
    if "imports" in r["ratios"]:
        print(f"\nfixed cost: python + tlx shard's imports {r['ratios']['imports']['cpu_s_median']:.2f} s CPU")
    if "scan_vs_headers" in r:
        print(f"tlx scan vs pydicom header-only read of every file: {r['scan_vs_headers']['median']:.2f}x "
              f"(range {r['scan_vs_headers']['range']})")
    if "breakdown" in r:
        b = r["breakdown"]
        print("\nstage CPU s: " + ", ".join(f"{k} {v}" for k, v in b["stage_cpu_s"].items()))
        print("shares: " + ", ".join(f"{k} {v:.1%}" for k, v in b["shares"].items()))
        print("read_hu ms by syntax: " + ", ".join(f"{k} {v['ms']} ({v['slices']})"
                                                 for k, v in b["read_hu_ms_by_syntax"].items()))
    if "assembly" in r:
        print("assembly alone: " + ", ".join(f"{k}: {v['wall_s']} s wall, {v['cpu_s']} s CPU"
                                             for k, v in r["assembly"].items()))
    if "codec" in r:
        print("\ncodec on " + str(r["codec"]["slices"]) + " stored slices: " + "; ".join(
            f"{k}: ratio {v['ratio']}, enc {v['encode_ms']} ms, dec {v['decode_ms']} ms"
            for k, v in r["codec"].items() if k != "slices"))
    if "reader_checks" in r:
        c = r["reader_checks"]
        print(f"shard check on first open ({c['shards']} shards, {c['bytes'] / 1e6:.0f} MB): none "
              f"{c['none_ms_per_shard']} ms, size {c['size_ms_per_shard']} ms, sha256 {c['sha256_ms_per_shard']} ms "
              f"per shard ({c['sha256_mb_per_s']} MB/s)")
    print(f"\ntarget tlx-1 >= {TARGET} x ceiling: {r['met']}")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cohort", type=Path, default=None, help="existing DICOM folder (default: synthesise one)")
    ap.add_argument("--patients", type=int, default=20)
    ap.add_argument("--seed", type=int, default=4)
    ap.add_argument("--matrix", type=int, default=512)
    ap.add_argument("--syntax-mix", default="realistic", choices=("realistic", "traps"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--peers", default=",".join(PEERS), help=f"comma-separated of {', '.join(PEERS)}, or none")
    ap.add_argument("--no-breakdown", action="store_true", help="skip the instrumented run and the codec table")
    ap.add_argument("--baseline", type=Path, default=None, help="another tlx checkout: adds variant tlx-1-baseline")
    ap.add_argument("--workdir", type=workdir, default=None)
    ap.add_argument("--json", type=Path, default=Path("benchmarks/out/shard_throughput.json"))
    args = ap.parse_args(argv)
    os.environ.setdefault("TLX_QUIET", "1")
    peers = [] if args.peers == "none" else [p for p in args.peers.split(",") if p]
    variants = ["ceiling", "ceiling-default", "tlx-1", "tlx-2", "imports", "scan", "headers", *peers]
    if args.baseline is not None:
        variants.append("tlx-1-baseline")
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        cohort = args.cohort
        if cohort is None:
            from datakit.synth.make_cohort import synth_cohort

            cohort = work / "cohort"
            synth_cohort(cohort, patients=args.patients, seed=args.seed, matrix=args.matrix,
                         syntax_mix=args.syntax_mix)
        listing = plan_once(cohort, work)
        n = len(listing["files"])
        for p in cohort.rglob("*"):        # the page cache: every variant reads from memory
            if p.is_file():
                p.read_bytes()
        runs = rounds(cohort, work, variants, args.rounds, args.baseline)
        loads = [x[k] for rs in runs.values() for x in rs for k in ("load_1min", "load_1min_after")]
        from collections import Counter

        kinds = Counter("explicit VR LE" if ts == "1.2.840.10008.1.2.1" else
                        "JPEG lossless" if ts in ("1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.57") else "other"
                        for ts in listing["syntaxes"])
        r = {"benchmark": "shard_throughput", "planned_slices": n, "rounds": args.rounds,
             "cohort": str(args.cohort or f"tlx synth --patients {args.patients} --seed {args.seed} --matrix "
                                          f"{args.matrix} --syntax-mix {args.syntax_mix}"),
             "mix": ", ".join(f"{k} {v / n:.0%}" for k, v in kinds.most_common()),
             "planned_by_transfer_syntax": dict(Counter(listing["syntaxes"]).most_common()),
             "runs": runs, "ratios": ratios(runs, n), "load_min": min(loads), "load_max": max(loads)}
        per_round = [h["cpu_s"] / s["cpu_s"] for h, s in zip(runs["headers"], runs["scan"])]
        r["scan_vs_headers"] = {"median": round(statistics.median(per_round), 3),
                                "range": [round(min(per_round), 3), round(max(per_round), 3)],
                                "files": len(listing["all_files"])}
        if not args.no_breakdown:
            r["breakdown"] = breakdown(cohort, work)
            r["assembly"] = assembly_scaling(work / "tlx-breakdown")
            r["codec"] = codec_figures(work / "tlx-1")
            r["reader_checks"] = reader_checks(work / "tlx-1")
    r.update(machine=f"{platform.node()}: {os.cpu_count()} cores, {platform.machine()}, {platform.processor()}",
             python=platform.python_version(), date=time.strftime("%Y-%m-%d"))
    r["met"] = r["ratios"]["tlx-1"]["x_ceiling_median"] >= TARGET
    report(r)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(r, indent=2) + "\n")
    return r


if __name__ == "__main__":
    main()
