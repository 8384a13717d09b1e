"""`tlx demo`: the whole pipeline on a small synthetic CT cohort, step by step.

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


def demo_steps(out: Path, patients: int, pretrain_epochs: int, finetune_epochs: int,
               seeds: int, workers: int) -> list[Step]:
    py = sys.executable
    tlx = [py, "-m", "cli.main"]
    cohort, data, runs = out / "cohort", out / "data", out / "runs"
    pretrain = runs / "pretrain" / "demo-simclr"
    small = ["--device", "cpu", "--model", "resnet-tiny", "--workers", str(workers)]
    steps = [
        Step("synthesise a CT cohort as DICOM files",
             tlx + ["synth", "--out", str(cohort), "--patients", str(patients), "--matrix", "64", "--seed", "0"],
             cohort / "cohort.json"),
        Step("shard it: scan + plan + write, then verify",
             tlx + ["shard", "--dicom-root", str(cohort), "--out", str(data), "--size", "64",
                    "--fractions", "0.6,0.2,0.2", "--samples-per-shard", "500", "--resume"],
             data / "manifest.json"),
        Step("verify every shard and count", tlx + ["verify", str(data)], data / ".demo-verified"),
        Step("pretrain SimCLR (paper recipe, tiny ResNet, CPU)",
             [py, "-m", "trainer.simclr", "--data", str(data), "--out", str(pretrain), "--image-size", "64",
              "--batch-size", "64", "--epochs", str(pretrain_epochs), "--loader", "torch", *small],
             pretrain / "done.json"),
    ]
    run_dirs = []
    for init, init_args in (("demo-simclr", ["--init", str(pretrain / "checkpoints" / "last.pt")]),
                            ("scratch", ["--init", "scratch"])):
        for seed in range(seeds):
            run_dir = runs / "radnet" / init / "finetune" / "frac-1.0" / f"seed-{seed}"
            run_dirs.append(run_dir)
            steps.append(Step(
                f"fine-tune radnet from {init}, seed {seed}",
                [py, "-m", "trainer.finetune", "--task", "radnet", "--data", str(data), *init_args,
                 "--init-name", init, "--setting", "finetune", "--seed", str(seed), "--out", str(runs),
                 "--epochs", str(finetune_epochs), "--batch-size", "64", "--optimizer", "adamw", "--lr", "1e-3",
                 *small],
                run_dir / "result.json"))
    # a small probe: 64 test images, 4,000 positions, 2 draws (the defaults are sized for ResNet-50 at 256 px)
    steps.append(Step("save the fine-tuned runs' activations on a probe set",
                      tlx + ["features", *map(str, run_dirs), "--probe", str(data), "--images", "64", "--points",
                             "4000", "--repeats", "2", "--device", "cpu"], run_dirs[-1] / "features.npz"))
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


def as_typed(argv: list[str]) -> str:
    """The command line a user would type for a step."""
    if argv[1:3] == ["-m", "cli.main"]:
        return shlex.join(["tlx", *argv[3:]])
    return shlex.join(["python", *argv[1:]])


@click.command(epilog="""\b
Example:
  tlx demo                       # 1-2 minutes on a 2-core CPU, everything under demo/
  tlx demo --out /tmp/demo --patients 40 --finetune-epochs 5
""")
@click.option("--out", default="demo", show_default=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the cohort, dataset, runs and report (an interrupted demo continues).")
@click.option("--patients", default=30, show_default=True, type=click.IntRange(min=6),
              help="Synthetic patients (enough that every split holds several).")
@click.option("--pretrain-epochs", default=2, show_default=True, type=click.IntRange(min=1))
@click.option("--finetune-epochs", default=3, show_default=True, type=click.IntRange(min=1))
@click.option("--seeds", default=2, show_default=True, type=click.IntRange(min=1, max=10),
              help="Fine-tuning seeds per init.")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(min=0),
              help="Data-loader worker processes for training.")
def demo(out: Path, patients: int, pretrain_epochs: int, finetune_epochs: int, seeds: int, workers: int) -> None:
    """Run the whole pipeline on a small synthetic CT cohort, on the CPU.

    \b
    1. tlx synth           a cohort of phantom CT series as real DICOM files, with export traps
    2. tlx shard           scan + plan + write to patient-split WebDataset shards, then tlx verify
    3. trainer.simclr      a few epochs of SimCLR pretraining of a tiny ResNet
    4. trainer.finetune    the radnet task from that checkpoint and from scratch, several seeds
    5. tlx features        the fine-tuned runs' activations on the test split, for CCA/CKA
    6. tlx scale-factors   how much less a slice is worth than an independent image (S_LB, S_UB)
    7. tlx analyze         tables, Welch tests, convergence, feature reuse, activation similarity, overlap

    Every step prints the command it runs, so each can be repeated by hand.
    """
    from rich.console import Console

    console = Console()
    out.mkdir(parents=True, exist_ok=True)
    steps = demo_steps(out, patients, pretrain_epochs, finetune_epochs, seeds, workers)
    same_demo(out, steps, {"patients": patients, "pretrain_epochs": pretrain_epochs,
                           "finetune_epochs": finetune_epochs, "seeds": seeds})
    env = dict(os.environ)
    if not env.get("TLX_SECRET"):
        env["TLX_SECRET"] = DEMO_SECRET
        console.print("[dim]TLX_SECRET not set: using a fixed demo key (fine for synthetic data only)[/dim]")
    started = time.time()
    for i, step in enumerate(steps, 1):
        if step.done_when.exists():
            console.print(f"[bold]{i}/{len(steps)}[/bold] {step.title}: [green]already done[/green]")
            continue
        console.rule(f"{i}/{len(steps)} {step.title}")
        print_command(console, step.argv)
        t0 = time.time()
        result = subprocess.run(step.argv, env=env)
        if result.returncode != 0:
            raise UserError(f"step {i} ({step.title}) failed with exit code {result.returncode}; "
                                       f"fix the cause and rerun `tlx demo --out {out}` to continue")
        if not step.done_when.exists():
            step.done_when.parent.mkdir(parents=True, exist_ok=True)
            step.done_when.write_text(f'{{"seconds": {time.time() - t0:.1f}}}\n')
        console.print(f"[green]done[/green] in {time.time() - t0:.0f} s")
    console.rule("demo finished")
    console.print(f"{time.time() - started:.0f} s in all. Report: {out / 'report' / 'index.md'}; "
                  f"dataset: {out / 'data'}; runs: {out / 'runs'}")
