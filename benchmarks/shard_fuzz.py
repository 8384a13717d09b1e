"""Acceptance: `tlx shard` over a synthetic cohort, all of pydicom's test files and mutated copies of
cohort files gives no traceback, no hang and exact accounting (issue 10, "Done when").

    python -m benchmarks.shard_fuzz                              # 4 patients at 64x64, pydicom's files, 500 mutants
    python -m benchmarks.shard_fuzz --patients 2 --matrix 32 --mutants 100 --pydicom 40   # a quick look

The DICOM root holds `cohort/` (tlx synth), `pydicom/` (pydicom's test corpus, every file) and
`aa-mutants/` (copies of cohort DICOM files, each changed by one mutation of MUTATIONS: bit flips,
cuts, inserted and deleted bytes, overwritten pixel streams, broken lengths, header values
turned into NaN, inf, 1e30 or text, flipped PixelRepresentation, absurd Rows). Mutants sort
before the cohort, so where a mutant keeps its original's SOP UID it is the copy tried first and
the intact original its fallback. `tlx shard` runs as a child process under a wall-clock limit
(a hang is a timeout), then `tlx verify`. Checked: exit codes 0, no "Traceback" and no decoder
panic in the output, and exact accounting: the files on disk = the index's paths = manifest
`found`; every found file is kept (a planned slice's source) or rejected exactly once; kept +
rejected = found. Prints a table and writes JSON (--json).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from benchmarks import workdir

SECRET = "tlx-shard-fuzz-secret-0123"   # 16 bytes at least (datakit.secret)
# Explicit VR little endian element headers of the values the value mutations break.
DS_TAGS = {"RescaleIntercept": b"\x28\x00\x52\x10DS", "RescaleSlope": b"\x28\x00\x53\x10DS",
           "PixelSpacing": b"\x28\x00\x30\x00DS", "SliceThickness": b"\x18\x00\x50\x00DS",
           "ImageOrientationPatient": b"\x20\x00\x37\x00DS", "ImagePositionPatient": b"\x20\x00\x32\x00DS"}
US_TAGS = {"Rows": b"\x28\x00\x10\x00US", "PixelRepresentation": b"\x28\x00\x03\x01US",
           "BitsStored": b"\x28\x00\x01\x01US"}
BAD_DS = ("NaN", "inf", "-inf", "1e30", "abc", "-1024x", "0", "-1", "1e6")


def _flip(data: bytearray, rng, lo: int = 0, hi: int | None = None, n: int | None = None) -> str:
    hi = len(data) if hi is None else min(hi, len(data))
    n = n or int(rng.integers(1, 17))
    for pos in rng.integers(lo, hi, n):
        data[pos] ^= 1 << int(rng.integers(0, 8))
    return f"{n} bits in {lo}..{hi}"


def _element(data: bytearray, tags: dict, rng) -> tuple[str, int] | None:
    """A random one of `tags` and where its element starts, or None if the file lacks it."""
    name = str(rng.choice(sorted(tags)))
    at = data.find(tags[name])
    return (name, at) if at >= 0 else None


def _set_ds(data: bytearray, rng) -> str | None:
    if (found := _element(data, DS_TAGS, rng)) is None:
        return None
    name, at = found
    length = struct.unpack_from("<H", data, at + 6)[0]
    value = str(rng.choice(BAD_DS))
    if name in ("PixelSpacing", "ImageOrientationPatient", "ImagePositionPatient"):
        value = "\\".join([value] * {"PixelSpacing": 2, "ImageOrientationPatient": 6}.get(name, 3))
    text = value.encode()[:length].ljust(length)
    data[at + 8:at + 8 + length] = text
    return f"{name}={text.decode().strip()!r}"


def _set_us(data: bytearray, rng) -> str | None:
    if (found := _element(data, US_TAGS, rng)) is None:
        return None
    name, at = found
    value = {"Rows": int(rng.choice([1, 2, 65535])), "PixelRepresentation": int(data[at + 8] ^ 1),
             "BitsStored": int(rng.choice([0, 1, 17, 40]))}[name]
    struct.pack_into("<H", data, at + 8, value)
    return f"{name}={value}"


def _pixel_offset(data: bytes) -> int:
    at = data.rfind(b"\xe0\x7f\x10\x00")
    return at if at > 0 else len(data) // 2


def mutate(data: bytes, kind: str, rng) -> tuple[bytes, str]:
    """One mutation of a DICOM file's bytes: (the new bytes, what was done)."""
    b = bytearray(data)
    pix = _pixel_offset(data)
    if kind == "flip-header":
        return bytes(b), _flip(b, rng, 0, pix)
    if kind == "flip-anywhere":
        return bytes(b), _flip(b, rng)
    if kind == "flip-pixels":
        return bytes(b), _flip(b, rng, pix, None, int(rng.integers(1, 200)))
    if kind == "truncate":
        cut = int(rng.integers(0, len(b)))
        return bytes(b[:cut]), f"cut at {cut} of {len(b)}"
    if kind == "overwrite-200":
        at = int(rng.integers(pix, max(pix + 1, len(b) - 200)))
        b[at:at + 200] = rng.integers(0, 256, 200, dtype=np.uint8).tobytes()[:len(b) - at]
        return bytes(b), f"200 bytes at {at}"
    if kind == "insert":
        at = int(rng.integers(0, len(b)))
        return bytes(b[:at] + rng.bytes(int(rng.integers(1, 64))) + b[at:]), f"bytes inserted at {at}"
    if kind == "delete":
        at = int(rng.integers(0, len(b)))
        return bytes(b[:at] + b[at + int(rng.integers(1, 64)):]), f"bytes deleted at {at}"
    if kind == "length":
        at = int(rng.integers(132, pix))
        struct.pack_into("<I", b, at, int(rng.choice([0xFFFFFFF0, 0x7FFFFFFF, 0xFFFFFFFF, 3])))
        return bytes(b), f"a 32-bit length-like field at {at}"
    if kind in ("ds-value", "us-value"):
        what = (_set_ds if kind == "ds-value" else _set_us)(b, rng)
        return (bytes(b), what) if what else mutate(data, "flip-header", rng)
    if kind == "copy":
        return bytes(b), "an exact copy (same SOP UID)"
    if kind == "empty":
        return b"" if rng.random() < 0.5 else bytes(b[:132]), "empty, or a preamble and DICM only"
    raise ValueError(kind)


MUTATIONS = ("flip-header", "flip-anywhere", "flip-pixels", "truncate", "overwrite-200", "insert", "delete",
             "length", "ds-value", "us-value", "copy", "empty")


def build_corpus(root: Path, cohort: Path, pydicom_files: int | None, mutants: int, seed: int = 0) -> dict:
    """The DICOM root: cohort/ (hard links), pydicom/ (its test files), aa-mutants/. Returns what is in it."""
    from pydicom.data import get_testdata_files

    shutil.copytree(cohort, root / "cohort", copy_function=os.link)
    corpus = sorted(f for f in get_testdata_files() if os.path.isfile(f))[:pydicom_files]
    for i, f in enumerate(corpus):
        dest = root / "pydicom" / f"{i:03d}-{Path(f).name}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, dest)
    sources = sorted(p for p in cohort.rglob("*") if p.is_file() and p.stat().st_size > 1024
                     and p.read_bytes()[128:132] == b"DICM")
    rng = np.random.default_rng(seed)
    made = []
    for i in range(mutants):
        src, kind = sources[int(rng.integers(len(sources)))], MUTATIONS[i % len(MUTATIONS)]
        data, what = mutate(src.read_bytes(), kind, rng)
        dest = root / "aa-mutants" / f"{i:04d}-{kind}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
        made.append({"path": dest.relative_to(root).as_posix(), "kind": kind, "what": what,
                     "source": src.relative_to(cohort).as_posix()})
    return {"pydicom_files": len(corpus), "mutants": made, "cohort_files": sum(1 for p in cohort.rglob("*")
                                                                               if p.is_file())}


def run_cli(args: list[str], timeout: float) -> dict:
    """A tlx command as a child process: exit code, seconds, output, and whether it timed out (a hang)."""
    env = {**os.environ, "TLX_SECRET": SECRET, "TLX_QUIET": "1"}
    t0 = time.monotonic()
    try:
        p = subprocess.run([sys.executable, "-m", "cli.main", *args], env=env, capture_output=True, text=True,
                           timeout=timeout, errors="replace")
        rc, out, hung = p.returncode, p.stdout + p.stderr, False
    except subprocess.TimeoutExpired as exc:
        rc, hung = None, True
        out = "".join(x.decode(errors="replace") if isinstance(x, bytes) else (x or "")
                      for x in (exc.stdout, exc.stderr))
    return {"rc": rc, "seconds": round(time.monotonic() - t0, 1), "hung": hung,
            "tracebacks": out.count("Traceback (most recent call last)"),
            "panics": len(re.findall(r"panicked at", out)),
            "output_tail": out[-2000:]}


WRITE_FILTERS = ("low-coverage", "duplicate-pixels", "not-in-subset")   # write's codes that are not read failures


def _of(rejects, code: str) -> list[str]:
    import polars as pl

    return rejects.filter(pl.col("code") == code)["duplicate_of"].drop_nulls().to_list()


def account(root: Path, out: Path) -> dict:
    """Exact accounting of the dataset `out` made from `root` (see the module docstring)."""
    import polars as pl

    from datakit.walk import storable, walk_files

    on_disk = sorted(storable(f.path)[0] for f in walk_files(root))
    manifest = json.loads((out / "manifest.json").read_text())
    index = pl.read_parquet(out / "work" / "index.parquet", columns=["path"])["path"].to_list()
    rejects = pl.read_parquet(out / "rejects.parquet")
    rejected = rejects["path"].to_list()
    kept_paths = set(index) - set(rejected)
    f = manifest["files"]
    checks = {
        "disk == index": on_disk == sorted(index),
        "found == files on disk": f["found"] == len(on_disk),
        "kept + rejected == found": f["kept"] + f["rejected"] == f["found"] == f["kept"] + len(rejects),
        "every file rejected at most once": len(rejected) == len(set(rejected)),
        "every file kept or rejected": len(kept_paths) == f["kept"] and set(rejected) <= set(index),
        "reasons all set, none says (None)": bool(rejects["reason"].is_not_null().all())
        and not rejects["reason"].str.contains(r"\(None\)").any(),
        # A copy (same SOP UID) stands for the copy that was read, whatever became of that one later
        # (low coverage...), but never for one that could not be read: then the next copy is read.
        "duplicate-sop never names an unreadable copy": not set(_of(rejects, "duplicate-sop")) & set(
            rejects.filter((pl.col("stage") == "write") & ~pl.col("code").is_in(list(WRITE_FILTERS)))["path"]),
        "duplicate-pixels names a kept slice": not set(_of(rejects, "duplicate-pixels")) & set(rejected),
    }
    return {"found": f["found"], "kept": f["kept"], "rejected": f["rejected"],
            "rejected_by_code": dict(sorted(Counter(rejects["code"]).items())), "checks": checks}


def outcome_by_mutation(corpus: dict, out: Path) -> dict:
    """mutation kind -> {outcome (kept or reject code): mutants}."""
    import polars as pl

    code = dict(pl.read_parquet(out / "rejects.parquet").select("path", "code").iter_rows())
    table: dict[str, Counter] = {}
    for m in corpus["mutants"]:
        table.setdefault(m["kind"], Counter())[code.get(m["path"], "kept")] += 1
    return {k: dict(sorted(v.items())) for k, v in table.items()}


def kept_value_mutants(corpus: dict, out: Path) -> list[dict]:
    """The mutants with a broken header value that were kept: each should be a harmless change."""
    import polars as pl

    rejected = set(pl.read_parquet(out / "rejects.parquet")["path"])
    return [m for m in corpus["mutants"] if m["kind"] in ("ds-value", "us-value") and m["path"] not in rejected]


def fuzz(work: Path, cohort: Path, pydicom_files: int | None, mutants: int, workers: int, timeout: float,
         seed: int = 0) -> dict:
    root, out = work / "root", work / "data"
    corpus = build_corpus(root, cohort, pydicom_files, mutants, seed)
    shard = run_cli(["shard", "--dicom-root", str(root), "--out", str(out), "--size", "64", "--min-slices", "5",
                     "--workers", str(workers)], timeout)
    r = {"corpus": {k: v for k, v in corpus.items() if k != "mutants"}, "mutants": len(corpus["mutants"]),
         "shard": shard}
    if shard["rc"] == 0:
        r["verify"] = run_cli(["verify", str(out), "--workers", str(workers)], timeout)
        r["accounting"] = account(root, out)
        r["outcome_by_mutation"] = outcome_by_mutation(corpus, out)
        r["kept_value_mutants"] = kept_value_mutants(corpus, out)
    checks = r.get("accounting", {}).get("checks", {})
    r["passed"] = {"no traceback": shard["tracebacks"] == 0 and r.get("verify", {}).get("tracebacks", 0) == 0,
                   "no decoder panic message": shard["panics"] == 0, "no hang": not shard["hung"],
                   "tlx shard exit 0": shard["rc"] == 0, "tlx verify exit 0": r.get("verify", {}).get("rc") == 0,
                   "exact accounting": bool(checks) and all(checks.values())}
    return r


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patients", type=int, default=4)
    ap.add_argument("--matrix", type=int, default=64)
    ap.add_argument("--mutants", type=int, default=500)
    ap.add_argument("--pydicom", type=int, default=None, help="the first N of pydicom's test files (default: all)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=1800, help="seconds before tlx shard counts as hung")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=workdir, default=None)
    ap.add_argument("--json", type=Path, default=Path("benchmarks/out/shard_fuzz.json"))
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        from datakit.synth.make_cohort import synth_cohort

        cohort = Path(tmp) / "synth"
        synth_cohort(cohort, patients=args.patients, seed=0, matrix=args.matrix)
        r = fuzz(Path(tmp), cohort, args.pydicom, args.mutants, args.workers, args.timeout, args.seed)
    r.update(benchmark="shard_fuzz", machine=f"{platform.node()}: {os.cpu_count()} cores, {platform.machine()}",
             cohort=f"tlx synth --patients {args.patients} --matrix {args.matrix} --seed 0", seed=args.seed)
    c, s = r["corpus"], r["shard"]
    print(f"DICOM root: {c['cohort_files']} cohort files, {c['pydicom_files']} pydicom test files, "
          f"{r['mutants']} mutants; tlx shard {s['seconds']} s (exit {s['rc']})\n")
    if "accounting" in r:
        a = r["accounting"]
        print(f"found {a['found']} = kept {a['kept']} + rejected {a['rejected']}")
        print("rejected by code: " + ", ".join(f"{k} {v}" for k, v in a["rejected_by_code"].items()) + "\n")
        print(f"{'mutation':<16}outcome (kept or reject code: mutants)")
        for kind, outcomes in r["outcome_by_mutation"].items():
            print(f"{kind:<16}" + ", ".join(f"{k} {v}" for k, v in outcomes.items()))
        print()
        for name, ok in a["checks"].items():
            print(f"{'ok  ' if ok else 'FAIL'} {name}")
    for name, ok in r["passed"].items():
        print(f"{'ok  ' if ok else 'FAIL'} {name}")
    if not all(r["passed"].values()):
        print("\n" + s["output_tail"])
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(r, indent=2) + "\n")
    return r


if __name__ == "__main__":
    main()
