"""`tlx sweep`: an experiment matrix file -> fine-tuning runs with deterministic directories.

    sweep = load_sweep("experiments.toml")
    for run in sweep.runs: run.run_dir, run_state(run), sweep.command(run)
    refuse_differing(sweep)            # TrainerError if a run folder holds a run of other options
    failures = run_sequentially(sweep, pending(sweep.runs))
    print(slurm_script(sweep, pending(sweep.runs)))

The file format (docs/finetune.md; an example in docs/experiments.example.toml):

    out = "runs"                                         # root of the run directories
    launcher = "torchrun --standalone --nproc_per_node 8 -m trainer.finetune"
    tasks_file = "tasks.toml"                            # optional extra task entries
    [data]    radnet = "/data/radnet-1.28M" ...          # dataset of each task
    [inits]   scratch = "scratch", "radnet-1.28M" = "runs/pretrain/radnet-1.28M/checkpoints/last.pt" ...
    [args]    workers = 8                                # trainer.finetune flags for every run
    [[matrix]]                                           # one block per group of experiments
    tasks = ["radnet"]; inits = ["scratch", "radnet-1.28M"]; settings = ["finetune", "linear"]
    fractions = [1.0, 0.1, 0.01]; seeds = [0, 1, 2, 3]   # or shots = [1, 5, 10] (--shots) in place of fractions
    folds = 5                                            # optional: k-fold, one run per fold (--folds 5 --fold i)
    args = { epochs = 50 }                               # this block's own flags (override [args])
    [slurm]   partition = "gpu", gres = "gpu:8", time = "24:00:00"   # #SBATCH lines of --emit slurm

Relative paths (out, data, inits, tasks_file) are relative to the file's folder, so
the same file means the same runs wherever the command is typed. A run's directory is
trainer.finetune's default, <out>/<task>/<init>/<setting>/frac-<f>/seed-<n>; a run is
complete when its result.json exists (skipped), started when checkpoints/last.pt exists
(it resumes), else pending; either of the first two `differs` when its config.json holds
other options than the matrix gives it (trainer/sweep_check.py): then `--run` and `--emit`
refuse, naming the options, rather than skip or resume a run that is not the one asked for.
No torch here: planning a sweep is instant.
"""
from __future__ import annotations

import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path

from trainer.errors import TrainerError
from trainer.sweep_check import differences
from trainer.tasks import SETTINGS, format_fraction, get_task, run_dir

TOP_KEYS = {"out", "launcher", "tasks_file", "data", "inits", "args", "matrix", "slurm"}
MATRIX_KEYS = {"tasks", "inits", "settings", "fractions", "shots", "seeds", "folds", "args"}
# Flags the matrix sets itself; [args] may not set them.
RESERVED = {"task", "data", "init", "init-name", "setting", "fraction", "seed", "out", "run-dir", "tasks-file", "shots",
            "folds", "fold"}
STATES = ("complete", "started", "differs", "pending")


@dataclass(frozen=True)
class SweepRun:
    task: str
    init_name: str
    init: str
    setting: str
    fraction: float
    seed: int
    data: str
    args: tuple[str, ...]
    run_dir: Path
    tasks_file: str | None = None
    shots: int | None = None               # --shots in place of --fraction
    fold: tuple[int, int] | None = None    # (i, K): --fold i --folds K

    def flags(self) -> list[str]:
        """trainer.finetune's flags for this run, but --out (the run folder says where)."""
        subset = ["--shots", str(self.shots)] if self.shots else ["--fraction", format_fraction(self.fraction)]
        folds = ["--folds", str(self.fold[1]), "--fold", str(self.fold[0])] if self.fold else []
        return ["--task", self.task, "--data", self.data, "--init", self.init, "--init-name", self.init_name,
                "--setting", self.setting, *subset, "--seed", str(self.seed), *folds,
                *(["--tasks-file", self.tasks_file] if self.tasks_file else []), *self.args]

    @property
    def subset(self) -> str:
        """The column of `tlx sweep`'s table: the fraction, or K-shot."""
        return f"{self.shots}-shot" if self.shots else format_fraction(self.fraction)


@dataclass
class Sweep:
    path: Path
    out: Path
    launcher: list[str]
    tasks_file: str | None
    runs: list[SweepRun]
    slurm: dict = field(default_factory=dict)

    def command(self, run: SweepRun) -> list[str]:
        return [*self.launcher, *run.flags(), "--out", str(self.out)]


def _flags(args: dict, where: str) -> tuple[str, ...]:
    """{"image_size": 64, "window": [-200, 300], "allow_partial_init": True} -> trainer.finetune flags."""
    out: list[str] = []
    for key, value in args.items():
        flag = key.replace("_", "-")
        if flag in RESERVED:
            raise TrainerError(f"{where}: {key!r} is set by the matrix itself; "
                               f"flags it sets: {', '.join(sorted(RESERVED))}")
        if isinstance(value, bool):
            out.append(f"--{flag}" if value else f"--no-{flag}")
        elif isinstance(value, list):
            out += [f"--{flag}", *map(str, value)]
        else:
            out += [f"--{flag}", str(value)]
    return tuple(out)


def _path(base: Path, value: str) -> str:
    return value if value == "scratch" or Path(value).is_absolute() else str((base / value).resolve())


def _list(block: dict, key: str, where: str) -> list:
    value = block.get(key)
    if not isinstance(value, list) or not value:
        raise TrainerError(f"{where}: {key} must be a non-empty list")
    return value


def load_sweep(path: Path | str) -> Sweep:
    path = Path(path)
    if not path.is_file():
        raise TrainerError(f"sweep file {path} not found")
    try:
        doc = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise TrainerError(f"{path}: not valid TOML ({exc})") from None
    unknown = set(doc) - TOP_KEYS
    if unknown:
        raise TrainerError(f"{path}: unknown keys {sorted(unknown)}; known: {', '.join(sorted(TOP_KEYS))}")
    base = path.parent
    out = Path(_path(base, doc.get("out", "runs")))
    tasks_file = _path(base, doc["tasks_file"]) if doc.get("tasks_file") else None
    launcher = shlex.split(doc["launcher"]) if doc.get("launcher") else [sys.executable, "-m", "trainer.finetune"]
    data = {k: _path(base, v) for k, v in doc.get("data", {}).items()}
    inits = {k: _path(base, v) for k, v in doc.get("inits", {}).items()}
    common = doc.get("args", {})
    runs: dict[Path, SweepRun] = {}
    blocks = doc.get("matrix", [])
    if not blocks:
        raise TrainerError(f"{path}: no [[matrix]] block: nothing to run")
    for b, block in enumerate(blocks, start=1):
        where = f"{path.name} [[matrix]] #{b}"
        unknown = set(block) - MATRIX_KEYS
        if unknown:
            raise TrainerError(f"{where}: unknown keys {sorted(unknown)}; known: {', '.join(sorted(MATRIX_KEYS))}")
        args = _flags({**common, **block.get("args", {})}, where)
        tasks = _list(block, "tasks", where)
        for task in tasks:
            get_task(task, tasks_file)
            if task not in data:
                raise TrainerError(f"{where}: task {task!r} has no dataset in [data] "
                                   f"(it has: {', '.join(data) or 'none'})")
        names = _list(block, "inits", where)
        for name in names:
            if name not in inits and name != "scratch":
                raise TrainerError(f"{where}: init {name!r} is not in [inits] ({', '.join(inits) or 'none'})")
        settings = _list(block, "settings", where) if "settings" in block else ["finetune"]
        for s in settings:
            if s not in SETTINGS:
                raise TrainerError(f"{where}: setting {s!r} is not one of: {', '.join(SETTINGS)}")
        fractions = _list(block, "fractions", where) if "fractions" in block else [1.0]
        if not all(isinstance(f, (int, float)) and not isinstance(f, bool) for f in fractions):
            raise TrainerError(f"{where}: fractions must be numbers in (0, 1], got {fractions}")
        seeds = _list(block, "seeds", where) if "seeds" in block else [0]
        if not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
            raise TrainerError(f"{where}: seeds must be integers, got {seeds}")
        subsets, folds = _subsets(block, fractions, where), _folds(block, where)
        for task, name, setting, (fraction, shots), seed, fold in product(tasks, names, settings, subsets, seeds,
                                                                            folds):
            run = SweepRun(task, name, inits.get(name, "scratch"), setting, float(fraction), seed, data[task], args,
                           run_dir(out, task, name, setting, float(fraction), seed, shots=shots, fold=fold),
                           tasks_file, shots, fold)
            if run.run_dir in runs and runs[run.run_dir] != run:
                raise TrainerError(f"{where}: {run.run_dir} is also made by an earlier block with other flags; "
                                   f"one directory, one run")
            runs[run.run_dir] = run
    return Sweep(path, out, launcher, tasks_file, list(runs.values()), doc.get("slurm", {}))


def _subsets(block: dict, fractions: list, where: str) -> list[tuple[float, int | None]]:
    """(fraction, shots) of each run: the fractions, or with `shots` each K at fraction 1."""
    if "shots" not in block:
        return [(float(f), None) for f in fractions]
    if "fractions" in block:
        raise TrainerError(f"{where}: give fractions or shots, not both")
    shots = _list(block, "shots", where)
    if not all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in shots):
        raise TrainerError(f"{where}: shots must be integers >= 1, got {shots}")
    return [(1.0, k) for k in shots]


def _folds(block: dict, where: str) -> list[tuple[int, int] | None]:
    """`folds = K`: one run per fold (i, K); else one run without folds."""
    if "folds" not in block:
        return [None]
    k = block["folds"]
    if not isinstance(k, int) or isinstance(k, bool) or k < 2:
        raise TrainerError(f"{where}: folds must be an integer >= 2, got {k!r}")
    return [(i, k) for i in range(k)]


def run_state(run: SweepRun) -> str:
    complete = (run.run_dir / "result.json").exists()
    if not complete and not (run.run_dir / "checkpoints" / "last.pt").exists():
        return "pending"
    if run_differences(run):
        return "differs"
    return "complete" if complete else "started"


def run_differences(run: SweepRun) -> list[str]:
    """How the run folder's options differ from the matrix's (trainer/sweep_check.py); [] when they do not."""
    return differences(run.run_dir, run.flags(), run.task, run.fraction, run.tasks_file)


def pending(runs: list[SweepRun]) -> list[SweepRun]:
    """The runs not complete yet (started ones resume from their last checkpoint)."""
    return [r for r in runs if run_state(r) in ("started", "pending")]


def refuse_differing(sweep: Sweep) -> None:
    """TrainerError naming the runs whose folders hold other options than the matrix gives them (complete or
    started ones: skipping or resuming them would report a run that is not the one asked for)."""
    differ = [r for r in sweep.runs if run_state(r) == "differs"]
    if differ:
        first = differ[0]
        raise TrainerError(f"{len(differ)} run folder(s) under {sweep.out} hold runs made with other options than "
                           f"{sweep.path.name} gives them, e.g. {first.run_dir.relative_to(sweep.out)}: "
                           f"{'; '.join(run_differences(first))}; give the matrix a new `out`, or remove those "
                           f"runs, or set the options they were made with")


def state_rows(runs: list[SweepRun]) -> tuple[list[str], list[tuple[str, str, str, dict]]]:
    """The matrix as a table: fraction (or K-shot) columns, and per (task, init, setting) a cell per
    column with the count of complete / started / all runs (seeds and folds)."""
    columns = [r.subset for r in sorted(runs, key=lambda r: (r.shots or 0, -r.fraction))]
    rows: dict[tuple[str, str, str], dict[str, dict[str, int]]] = {}
    for r in runs:
        cell = rows.setdefault((r.task, r.init_name, r.setting), {}).setdefault(r.subset, dict.fromkeys(STATES, 0))
        cell[run_state(r)] += 1
    return list(dict.fromkeys(columns)), [(*key, cells) for key, cells in rows.items()]


def run_sequentially(sweep: Sweep, runs: list[SweepRun], keep_going: bool = False, echo=print) -> list[SweepRun]:
    """Run each run as its own process, one after another; returns the ones that failed.
    Stops at the first failure unless `keep_going`."""
    failed = []
    for i, run in enumerate(runs, start=1):
        cmd = sweep.command(run)
        echo(f"[{i}/{len(runs)}] {run.run_dir}\n$ {shlex.join(cmd)}")   # the command on one line, to paste
        if subprocess.run(cmd).returncode != 0:
            failed.append(run)
            echo(f"[{i}/{len(runs)}] failed: {shlex.join(cmd)}")
            if not keep_going:
                break
    return failed


def slurm_script(sweep: Sweep, runs: list[SweepRun]) -> str:
    """A bash script for `sbatch`: one array task per run (a rerun skips runs complete by then)."""
    if not runs:
        raise TrainerError(f"every run of {sweep.path.name} is complete: nothing to submit")
    options = {"job-name": "tlx-sweep", "output": str(sweep.out / "slurm-%A_%a.out"), **sweep.slurm}
    lines = ["#!/bin/bash", f"# generated by `tlx sweep {sweep.path.name} --emit slurm`: {len(runs)} runs not "
             f"complete when generated; trainer.finetune skips a run that is complete by the time it starts"]
    lines += [f"#SBATCH --{k}={v}" for k, v in options.items()]
    lines += [f"#SBATCH --array=0-{len(runs) - 1}", "set -euo pipefail", f"mkdir -p {shlex.quote(str(sweep.out))}",
              'case "$SLURM_ARRAY_TASK_ID" in']
    lines += [f"  {i}) {shlex.join(sweep.command(run))} ;;" for i, run in enumerate(runs)]
    lines += ['  *) echo "no run for array index $SLURM_ARRAY_TASK_ID" >&2; exit 1 ;;', "esac", ""]
    return "\n".join(lines)
