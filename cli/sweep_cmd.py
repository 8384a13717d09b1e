"""`tlx sweep`: show, run or submit an experiment matrix of fine-tuning runs (trainer/sweep.py)."""
from __future__ import annotations

import shlex
import sys

import click


def _print_table(sweep) -> None:
    from rich.console import Console
    from rich.table import Table

    from trainer.sweep import run_state, state_rows

    fractions, rows = state_rows(sweep.runs)
    table = Table(title=f"{sweep.path.name}: complete/runs (seeds x folds) per data fraction or K-shot "
                        f"(+started, !other options)",
                  title_justify="left")
    for col in ("task", "init", "setting"):
        table.add_column(col, no_wrap=True)
    for f in fractions:
        table.add_column(f, justify="right")
    for task, init, setting, cells in rows:
        shown = []
        for f in fractions:
            c = cells.get(f)
            if c is None:
                shown.append("")
                continue
            total = sum(c.values())
            colour = ("red" if c["differs"] else "green" if c["complete"] == total
                      else "yellow" if c["complete"] or c["started"] else "white")
            extra = (f" +{c['started']}" if c["started"] else "") + (f" !{c['differs']}" if c["differs"] else "")
            shown.append(f"[{colour}]{c['complete']}/{total}{extra}[/{colour}]")
        table.add_row(task, init, setting, *shown)
    states = [run_state(r) for r in sweep.runs]
    # stderr, so `tlx sweep x.toml --emit slurm > sweep.sh` writes only the script; wide enough
    # for whole names even when not printing to a terminal (rich would assume 80 columns)
    names = max((len(r.task) + len(r.init_name) + len(r.setting) for r in sweep.runs), default=0)
    console = Console(stderr=True, width=max(Console(stderr=True).width, names + 12 * len(fractions) + 16))
    console.print(table)
    console.print(f"{len(states)} runs: {states.count('complete')} complete, {states.count('started')} started, "
                  f"{states.count('pending')} pending  (runs under {sweep.out})"
                  + (f"; {states.count('differs')} made with other options than the matrix's" if "differs" in states
                     else ""))


@click.command()
@click.argument("matrix_file", type=click.Path(dir_okay=False))
@click.option("--run", "run_", is_flag=True, help="run every incomplete run here, one after another")
@click.option("--emit", type=click.Choice(["slurm"]), help="print a job-array script for the incomplete runs")
@click.option("--dry-run", is_flag=True, help="with --run: print the commands instead of running them")
@click.option("--keep-going", is_flag=True, help="with --run: continue after a failed run")
def sweep(matrix_file, run_, emit, dry_run, keep_going):
    """Expand an experiment matrix (tasks x inits x settings x fractions x seeds) into runs.

    Without --run or --emit it only shows the state of the matrix; complete runs
    (result.json present) are always skipped, started ones resume. A complete or
    started run whose config.json holds other options than the matrix gives it is
    shown as `!`, and --run and --emit refuse, naming the options. The file format
    is in docs/finetune.md, with an example in docs/experiments.example.toml.

    \b
    Example:
      tlx sweep experiments.toml                         # the state table
      tlx sweep experiments.toml --run --dry-run         # the commands of the incomplete runs
      tlx sweep experiments.toml --run                   # run them here, sequentially
      tlx sweep experiments.toml --emit slurm > sweep.sh && sbatch sweep.sh
    """
    from trainer.sweep import load_sweep, pending, refuse_differing, run_sequentially, slurm_script

    if run_ and emit:
        raise click.UsageError("--run and --emit are exclusive: run here, or write a script for SLURM")
    s = load_sweep(matrix_file)
    _print_table(s)
    if run_ or emit:
        refuse_differing(s)
    todo = pending(s.runs)
    if emit == "slurm":
        script = slurm_script(s, todo)
        s.out.mkdir(parents=True, exist_ok=True)  # SLURM opens #SBATCH --output there before the script runs
        click.echo(script, nl=False)
    elif run_ and dry_run:
        for r in todo:
            click.echo(shlex.join(s.command(r)))
    elif run_:
        failed = run_sequentially(s, todo, keep_going=keep_going, echo=lambda m: click.echo(m, err=True))
        if failed:
            click.echo(f"{len(failed)} run(s) failed", err=True)
            sys.exit(1)
