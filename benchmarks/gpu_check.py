"""One prepared GPU check: every GPU path of tlx and its headline figures, measured in one run of under 8 minutes.

    python -m benchmarks.gpu_check --out gpu-check/             # on one H100 (wheels: scripts/gpu_wheels.sh)
    python -m benchmarks.gpu_check --dry-run --out /tmp/gc/     # every step on the CPU at tiny sizes (CI)
    python -m benchmarks.gpu_check --steps ceiling,finetune --out gpu-check/

Steps, in order, each in its own process with its own time budget (a step that fails records its
error, one past its budget is stopped and keeps the figures it had; the run goes on either way):
  environment     GPU, memory, driver, torch/CUDA/cuDNN/DALI versions, cores, the carried packages
  ceiling         trainer.simclr's train step, ResNet-50 at 256 px, bf16 + channels_last, synthetic input,
                  per-GPU batch 128/256/512, eager and torch.compile: img/s and peak memory
  real_data       tlx synth + tlx shard on all cores (slices/s), two-view loader samples/s (torch, DALI on
                  the GPU), training img/s with each loader as % of synthetic input
  distributed     1-process NCCL group, DDP + SyncBatchNorm fwd/bwd, gradient caching vs one big batch
                  (tolerance stated), two identical short runs (data order, views, loss difference)
  finetune        U-Net segmentation and classification steps in bf16: img/s
  scale_factors   MI evaluations/s, int8 torch._int_mm and float32, projected time for RadNet-12M
Writes OUT/gpu_check.json (every figure, error and detail), OUT/gpu_check.md (the tables) and
OUT/gpu_check.log (the steps' own output); prints the tables. `--dry-run` runs the same code on the
CPU with tiny sizes (resnet-tiny, 32 px, a few steps, DALI in its CPU-only mode) and records what
needs CUDA as such: it checks that the script runs, not how fast anything is.
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.gpu_check_core import Record, sizes
from tlxcore.atomic import write_json_atomic, write_text_atomic
from tlxcore.errors import UserError

STEPS = {
    "environment": "benchmarks.gpu_check_model:environment",
    "ceiling": "benchmarks.gpu_check_model:ceiling",
    "real_data": "benchmarks.gpu_check_data:real_data",
    "distributed": "benchmarks.gpu_check_dist:distributed",
    "finetune": "benchmarks.gpu_check_model:finetune",
    "scale_factors": "benchmarks.gpu_check_mi:scale_factors",
}
RUN_BUDGET_S = 465  # the whole run, start-up included: under 8 minutes with room for the last step's stop
STOP_GRACE_S = 5    # a step's process gets this long past its budget before it is killed


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n")[0],
                                epilog=__doc__.split("\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for gpu_check.json, gpu_check.md, gpu_check.log")
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: check that every step runs")
    p.add_argument("--steps", default=",".join(STEPS), help="comma-separated subset of: " + ", ".join(STEPS))
    p.add_argument("--budget", type=float, default=RUN_BUDGET_S, help="seconds for the whole run")
    p.add_argument("--work", help="scratch folder for the cohort and shards [default: a new temporary folder, "
                                  "removed at the end]")
    p.add_argument("--commit", default=None, help="the tlx commit measured, for the report [default: git's HEAD]")
    p.add_argument("--child", help=argparse.SUPPRESS)      # run one step in this process (the parent starts it)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--budget-s", type=float, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """The whole check (or, with --child, one step); returns the exit code: 0 when every step ran clean."""
    args = parse(argv)
    if args.child:
        return run_child(args)
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = [s for s in steps if s not in STEPS]
    if unknown or not steps:
        raise UserError(f"--steps {args.steps!r}: {', '.join(unknown) or 'none given'} not among "
                        f"{', '.join(STEPS)}")
    if args.budget <= 0:
        raise UserError(f"--budget {args.budget:g}: give the run's seconds, more than 0 (default {RUN_BUDGET_S})")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {args.out!r} is a file; give a folder (made if absent)")
    if not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            raise UserError("no CUDA GPU is visible: run the check on the GPU machine, or add --dry-run")
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="tlx-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        report = run_steps(args, steps, out, work)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    print(markdown(report))
    return 0 if all(s["status"] == "ok" for s in report["steps"].values()) else 1


def run_steps(args: argparse.Namespace, steps: list[str], out: Path, work: Path) -> dict:
    sz = sizes(args.dry_run)
    start = time.monotonic()
    report = {"mode": "dry-run (CPU, tiny sizes)" if args.dry_run else "GPU",
              "date": datetime.date.today().isoformat(), "commit": args.commit or _git_head(),
              "budget_s": args.budget, "steps": {}, "sizes": dict(vars(sz))}
    log = out / "gpu_check.log"
    log.write_text("")
    for name in steps:
        left = args.budget - (time.monotonic() - start)
        budget = min(sz.budgets[name], left - STOP_GRACE_S)
        if budget < 3:
            report["steps"][name] = {"status": "not run", "seconds": 0.0, "budget_s": max(budget, 0.0),
                                     "figures": [], "errors": [], "details": {},
                                     "note": "the run's time budget was spent"}
        else:
            cmd = [sys.executable, "-m", "benchmarks.gpu_check", "--out", str(out), "--child", name,
                   "--result", str(work / f"step-{name}.json"), "--work", str(work), "--budget-s", str(budget)]
            report["steps"][name] = run_step(cmd + (["--dry-run"] if args.dry_run else []),
                                             work / f"step-{name}.json", budget, log, name,
                                             {"OMP_NUM_THREADS": "1"} if args.dry_run else {})
        step = report["steps"][name]
        report["seconds"] = round(time.monotonic() - start, 1)
        write_json_atomic(report, out / "gpu_check.json")
        write_text_atomic(out / "gpu_check.md", markdown(report))
        print(f"gpu_check: {name:14s} {step['status']:8s} {step['seconds']:6.1f} s of {step['budget_s']:.0f} "
              f"(CPU {step.get('cpu_s', 0):.1f} s)"
              + "".join(f"\n    {e['part']}: {e['error']}" for e in step["errors"]), flush=True)
    return report


def run_step(cmd: list[str], result: Path, budget: float, log: Path, name: str, env: dict | None = None,
             grace: float = STOP_GRACE_S) -> dict:
    """Run one step's process (`cmd`, which writes `result` as it goes) for at most `budget` s (+ grace);
    its output goes to `log`. Returns the step's record with status ok | failed | timeout | crashed.
    The dry run passes OMP_NUM_THREADS=1 in `env`: on a shared 2-core machine two threads per process
    made a toy training step 40 times slower than one."""
    result.unlink(missing_ok=True)
    env = {**os.environ, "TLX_QUIET": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    t0, cpu0 = time.monotonic(), _children_cpu()
    with open(log, "a") as f:
        f.write(f"\n===== {name} (budget {budget:.0f} s)\n")
        f.flush()
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout=budget + grace)
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the step and whatever it started (loader workers, ranks)
            rc, timed_out = proc.wait(), True
    seconds = round(time.monotonic() - t0, 1)
    record = json.loads(result.read_text()) if result.exists() else {"figures": [], "errors": [], "details": {}}
    if timed_out:
        status, note = "timeout", f"stopped after {budget:.0f} s + {grace:g} s; figures so far kept"
    elif not result.exists() or (rc != 0 and not record["errors"]):
        status, note = "crashed", f"exit code {rc} (see gpu_check.log)"
    else:
        status, note = ("failed" if record["errors"] else "ok"), ""
    return {**record, "status": status, "seconds": seconds, "cpu_s": round(_children_cpu() - cpu0, 1),
            "budget_s": round(budget, 1), "note": note}


def _children_cpu() -> float:
    """CPU seconds of every finished child process (and of theirs that were waited for)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_child(args: argparse.Namespace) -> int:
    """One step in this process: its function gets (record, sizes, work folder)."""
    module, fn = STEPS[args.child].split(":")
    rec = Record(args.result, args.child, deadline=time.monotonic() + args.budget_s - 1)
    step = getattr(importlib.import_module(module), fn)
    rec.run(args.child, step, rec, sizes(args.dry_run), Path(args.work))
    return 1 if rec.data["errors"] else 0


def _git_head() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                             check=False, cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() or "unknown"


def _value(v) -> str:
    if v is None:
        return "open"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, float) and v != 0 and (abs(v) < 0.01 or abs(v) >= 1e7):
        return f"{v:.2e}"
    return f"{v:,}" if isinstance(v, int) else f"{v:,.2f}".rstrip("0").rstrip(".")


def markdown(report: dict) -> str:
    """The step table and the figure table (figures not measured read 'open', with the reason)."""
    env = {f["name"]: f["value"] for f in report["steps"].get("environment", {}).get("figures", [])}
    machine = (f"Machine: {env.get('GPU') or 'no GPU'}, {env.get('cores (this process may use)', '?')} cores, "
               f"torch {env.get('torch', '?')}, CUDA {env.get('CUDA (torch built with)') or '-'}, "
               f"DALI {env.get('nvidia.dali', '?')}. Date {report['date']}, tlx commit {report['commit']}, "
               f"{report.get('seconds', 0):.0f} s of a {report['budget_s']:.0f} s budget.")
    lines = [f"# tlx GPU check: {report['mode']}", "", machine, ""]
    if report["mode"] != "GPU":
        lines += ["A dry run checks that every step runs; its figures are of a CPU at toy sizes, not results.", ""]
    lines += ["| step | status | seconds | budget | note |", "|---|---|---|---|---|"]
    for name, s in report["steps"].items():
        errors = "; ".join(f"{e['part']}: {e['error']}" for e in s["errors"])
        lines.append(f"| {name} | {s['status']} | {s['seconds']:.1f} | {s['budget_s']:.0f} | "
                     f"{'; '.join(x for x in (s.get('note', ''), errors) if x)} |")
    lines += ["", "| step | figure | value | unit | note |", "|---|---|---|---|---|"]
    for name, s in report["steps"].items():
        for f in s["figures"]:
            lines.append(f"| {name} | {f['name']} | {_value(f['value'])} | {f['unit']} | {f['note']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        sys.exit(2)
