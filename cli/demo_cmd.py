"""`tlx demo`: the whole pipeline on a small synthetic CT cohort and synthetic natural images, step by step:
the study's question (CT against natural-image pretraining, and sequential) in miniature.

Each step is the command a user would type, run as a subprocess (so the demo
exercises exactly the documented entry points) and skipped when its output is
already there, so an interrupted demo continues where it stopped. The options that
shape its outputs are kept in <out>/demo.json: a demo folder made with others is
refused, not taken as done (its steps would be skipped and its old report shown).
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import click

from cli.main import UserError

# Synthetic data only: a fixed key is fine here. Real data needs the user's own TLX_SECRET.
DEMO_SECRET = "tlx-demo-secret-for-synthetic-data-only"
OPTIONS_FILE = "demo.json"   # the options below that change a demo's outputs (--workers does not)


@dataclass
class Step:
    title: str
    argv: list[str]
    done_when: Path  # the step is skipped when this file exists
    group: str | None = None   # consecutive steps of one group are independent: they may run side by side


# The inits the demo compares on the CT radnet task: the study's question in miniature (docs/study.md).
PRETRAINED = ("ct-simclr", "natural-simclr", "natural-then-ct")
SETTINGS = {  # setting -> the options that make it; 10 % of the train split for fine-tuning, all of it for linear
    "linear": ["--setting", "linear", "--lr", "1e-2"],
    "finetune": ["--setting", "finetune", "--fraction", "0.1", "--lr", "1e-3"],
}
VIEW = "32"   # px: slices are stored, pretrained and evaluated at this size (no resizing anywhere)


def demo_steps(out: Path, patients: int, pretrain_epochs: int, finetune_epochs: int,
               seeds: int, workers: int) -> list[Step]:
    """The demo's commands: CT cohort and natural images -> datasets -> three SimCLR runs (CT, natural,
    natural-then-CT continuing the natural run's schedule) -> radnet from each and from scratch, linear
    and fine-tuned at 10 %, `seeds` seeds each -> features, scale factors, report."""
    py = sys.executable
    tlx = [py, "-m", "cli.main"]
    cohort, data, natural, natural_data = out / "cohort", out / "data", out / "natural", out / "natural-data"
    runs = out / "runs"
    small = ["--device", "cpu", "--model", "resnet-tiny", "--workers", str(workers)]
    steps = [
        Step("synthesise a CT cohort as DICOM files",
             tlx + ["synth", "--out", str(cohort), "--patients", str(patients), "--matrix", "64", "--seed", "0"],
             cohort / "cohort.json"),
        Step("shard it: scan + plan + write, then verify",
             tlx + ["shard", "--dicom-root", str(cohort), "--out", str(data), "--size", VIEW,
                    "--fractions", "0.6,0.2,0.2", "--samples-per-shard", "500", "--resume"],
             data / "manifest.json"),
        Step("verify every shard and count", tlx + ["verify", str(data)], data / ".demo-verified"),
        Step("synthesise natural images (10 classes of coloured shapes, JPEG)",
             tlx + ["synth", "--kind", "natural", "--out", str(natural), "--matrix", "64", "--seed", "0"],
             natural / "natural.json"),
        Step("convert them to a jpg/cls dataset",
             tlx + ["convert", "class-folder", "--root", str(natural), "--out", str(natural_data), "--size", VIEW],
             natural_data / "manifest.json"),
    ]
    pretrain = runs / "pretrain"
    simclr = [py, "-m", "trainer.simclr", "--image-size", VIEW, "--batch-size", "64", "--loader", "torch",
              "--eval-every", "0", *small]
    natural_last = str(pretrain / "natural-simclr" / "checkpoints" / "last.pt")
    for name, title, args in (
            ("ct-simclr", "pretrain SimCLR on the CT slices", ["--data", str(data), "--epochs", str(pretrain_epochs)]),
            ("natural-simclr", "pretrain SimCLR on the natural images",
             ["--data", str(natural_data), "--epochs", str(pretrain_epochs)]),
            ("natural-then-ct", "continue the natural run on the CT slices (sequential pretraining)",
             ["--data", str(data), "--init", natural_last, "--init-epoch", str(pretrain_epochs),
              "--epochs", str(2 * pretrain_epochs)])):
        steps.append(Step(title, [*simclr, *args, "--out", str(pretrain / name)], pretrain / name / "done.json",
                          group=None if name == "natural-then-ct" else "pretrain"))
    finetuned = []
    for setting, setting_args in SETTINGS.items():
        for init in (*PRETRAINED, "scratch"):
            init_args = ["--init", "scratch" if init == "scratch" else str(pretrain / init / "checkpoints" / "last.pt")]
            fraction = "0.1" if setting == "finetune" else "1.0"
            for seed in range(seeds):
                run_dir = runs / "radnet" / init / setting / f"frac-{fraction}" / f"seed-{seed}"
                if setting == "finetune":
                    finetuned.append(run_dir)
                steps.append(Step(
                    f"radnet from {init}, {setting}, seed {seed}",
                    [py, "-m", "trainer.finetune", "--task", "radnet", "--data", str(data), *init_args,
                     "--init-name", init, *setting_args, "--seed", str(seed), "--out", str(runs),
                     "--epochs", str(finetune_epochs), "--batch-size", "32", "--optimizer", "adamw", *small],
                    run_dir / "result.json", group="radnet"))
    # a small probe: 64 test images, 4,000 positions, 2 draws (the defaults are sized for ResNet-50 at 256 px)
    steps.append(Step("save the fine-tuned runs' activations on a probe set",
                      tlx + ["features", *map(str, finetuned), "--probe", str(data), "--images", "64", "--points",
                             "4000", "--repeats", "2", "--device", "cpu"], finetuned[-1] / "features.npz"))
    report = out / "report"
    steps.append(Step("estimate the dataset's scale factors S_LB and S_UB",
                      tlx + ["scale-factors", str(data), "--out", str(report), "--dump-pairs"],
                      report / "scale_factors.json"))
    steps.append(Step("analyze the runs", tlx + ["analyze", str(runs), "--out", str(report)], report / "index.md"))
    return steps


def same_demo(out: Path, steps: list[Step], options: dict[str, int]) -> None:
    """Continue only the demo these options make: UserError naming the options that differ from
    <out>/demo.json's, or when steps are done but no demo.json says with which options; else record them."""
    path = out / OPTIONS_FILE
    if path.exists():
        saved = json.loads(path.read_text())
        changed = [f"--{k.replace('_', '-')} {saved.get(k)} (now {v})" for k, v in options.items() if saved.get(k) != v]
        if changed:
            raise UserError(f"{out} holds a demo made with {', '.join(changed)}; rerun with its options to continue "
                            f"it, or pick another --out")
        return
    if any(step.done_when.exists() for step in steps):
        raise UserError(f"{out} holds demo steps but no {OPTIONS_FILE} saying with which options they were made; "
                        f"pick another --out, or remove {out}")
    path.write_text(json.dumps(options, indent=1) + "\n")


def print_command(console, argv: list[str]) -> None:
    """`$ <command>` on one line, however narrow the terminal or log: a command pasted from a log must run
    (rich would wrap it at the terminal's width, or at 80 columns in a log file)."""
    console.print(f"$ {as_typed(argv)}", style="dim", soft_wrap=True, markup=False, highlight=False)


def batches(numbered: list[tuple[int, Step]], jobs: int) -> list[list[tuple[int, Step]]]:
    """Consecutive steps of one group together (each a batch of its own with jobs 1 or no group)."""
    out: list[list[tuple[int, Step]]] = []
    for i, step in numbered:
        if jobs > 1 and step.group and out and out[-1][-1][1].group == step.group:
            out[-1].append((i, step))
        else:
            out.append([(i, step)])
    return out


def run_step(i: int, step: Step, env: dict, out: Path, console, log: Path | None) -> None:
    """Run one step (its output to the terminal, or to `log`); mark it done; UserError if it fails."""
    t0 = time.time()
    if log is None:
        result = subprocess.run(step.argv, env=env)
    else:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as f:
            result = subprocess.run(step.argv, env=env, stdout=f, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-20:]) if log is not None else ""
        raise UserError(f"step {i} ({step.title}) failed with exit code {result.returncode}"
                        f"{f' (its log: {log})' if log else ''}; fix the cause and rerun `tlx demo --out {out}` "
                        f"to continue" + (f"\n{tail}" if tail else ""))
    if not step.done_when.exists():
        step.done_when.parent.mkdir(parents=True, exist_ok=True)
        step.done_when.write_text(f'{{"seconds": {time.time() - t0:.1f}}}\n')
    console.print(f"[green]done[/green] {i}. {step.title} in {time.time() - t0:.0f} s", soft_wrap=True)


def run_side_by_side(todo: list[tuple[int, Step]], total: int, env: dict, out: Path, console, jobs: int) -> None:
    """Independent steps, `jobs` at a time, each one thread (OMP_NUM_THREADS) and its output in
    <out>/logs/<step>.log; each command is printed as it starts."""
    from concurrent.futures import ThreadPoolExecutor

    console.rule(f"{todo[0][0]}-{todo[-1][0]}/{total}: {len(todo)} independent steps, {jobs} at a time")
    def start(item):
        i, step = item
        print_command(console, step.argv)
        run_step(i, step, env, out, console, out / "logs" / f"{i:02d}.log")

    pool = ThreadPoolExecutor(jobs)
    try:
        for future in [pool.submit(start, item) for item in todo]:
            future.result()
    except BaseException:   # the first failure stops the demo: steps not started are dropped, running ones end
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown()


def as_typed(argv: list[str]) -> str:
    """The command line a user would type for a step."""
    if argv[1:3] == ["-m", "cli.main"]:
        return shlex.join(["tlx", *argv[3:]])
    return shlex.join(["python", *argv[1:]])


@click.command(epilog="""\b
Example:
  tlx demo                       # about 3 minutes on 2 cores (5 CPU minutes), everything under demo/
  tlx demo --out /tmp/demo --patients 40 --finetune-epochs 8
""")
@click.option("--out", default="demo", show_default=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the cohort, dataset, runs and report (an interrupted demo continues).")
@click.option("--patients", default=30, show_default=True, type=click.IntRange(min=6),
              help="Synthetic patients (enough that every split holds several).")
@click.option("--pretrain-epochs", default=3, show_default=True, type=click.IntRange(min=1),
              help="SimCLR epochs on each domain (the sequential run: as many on natural, then as many on CT).")
@click.option("--finetune-epochs", default=5, show_default=True, type=click.IntRange(min=1),
              help="Epochs of every radnet run, linear and fine-tuned.")
@click.option("--seeds", default=3, show_default=True, type=click.IntRange(min=1, max=10),
              help="radnet seeds per init and setting.")
@click.option("--workers", default=0, show_default=True, type=click.IntRange(min=0),
              help="Data-loader worker processes for training (0: in the training process; the demo's data is "
                   "tiny, and each worker would import torch again for every one of its 27 training runs).")
@click.option("--jobs", default=None, type=click.IntRange(min=1),
              help="Independent steps run side by side, one thread each [default: the CPUs this process may use, "
                   "at most 4]; 1 runs every step in turn with its output on the terminal.")
def demo(out: Path, patients: int, pretrain_epochs: int, finetune_epochs: int, seeds: int, workers: int,
         jobs: int | None) -> None:
    """Run the whole pipeline on a small synthetic CT cohort and natural images, on the CPU.

    \b
    1. tlx synth           a cohort of phantom CT series as real DICOM files, with export traps
    2. tlx shard           scan + plan + write to patient-split WebDataset shards, then tlx verify
    3. tlx synth --kind natural, tlx convert class-folder   natural images as a jpg/cls dataset
    4. trainer.simclr      SimCLR of a tiny ResNet on CT, on natural images, and natural-then-CT (--init-epoch)
    5. trainer.finetune    radnet from each and from scratch: linear and fine-tuned at 10 %, several seeds
    6. tlx features        the fine-tuned runs' activations on the test split, for CCA/CKA
    7. tlx scale-factors   how much less a slice is worth than an independent image (S_LB, S_UB)
    8. tlx analyze         tables, Welch tests, convergence, feature reuse, activation similarity, overlap

    Every step prints the command it runs, so each can be repeated by hand.
    """
    from rich.console import Console

    console = Console()
    jobs = jobs or min(4, len(os.sched_getaffinity(0)))
    out.mkdir(parents=True, exist_ok=True)
    steps = demo_steps(out, patients, pretrain_epochs, finetune_epochs, seeds, workers)
    same_demo(out, steps, {"patients": patients, "pretrain_epochs": pretrain_epochs,
                           "finetune_epochs": finetune_epochs, "seeds": seeds})
    env = dict(os.environ)
    # One thread per step: at 32 px a tiny ResNet gains nothing from intra-op threads, and on a busy 2-core
    # machine two OpenMP threads spin-wait (measured: 10x the CPU seconds per image). A user's setting is kept.
    env.setdefault("OMP_NUM_THREADS", "1")
    if not env.get("TLX_SECRET"):
        env["TLX_SECRET"] = DEMO_SECRET
        console.print("[dim]TLX_SECRET not set: using a fixed demo key (fine for synthetic data only)[/dim]")
    started = time.time()
    for batch in batches(list(enumerate(steps, 1)), jobs):
        todo = []
        for i, step in batch:
            if step.done_when.exists():
                console.print(f"[bold]{i}/{len(steps)}[/bold] {step.title}: [green]already done[/green]",
                              soft_wrap=True)
            else:
                todo.append((i, step))
        if len(todo) == 1:
            i, step = todo[0]
            console.rule(f"{i}/{len(steps)} {step.title}")
            print_command(console, step.argv)
            run_step(i, step, env, out, console, log=None)
        elif todo:
            run_side_by_side(todo, len(steps), env, out, console, jobs)
    console.rule("demo finished")
    console.print(f"{time.time() - started:.0f} s in all. Report: {out / 'report' / 'index.md'}; "
                  f"dataset: {out / 'data'}; runs: {out / 'runs'}")
