"""What a training run writes besides checkpoints: config.json, metrics.jsonl, steps.jsonl, a progress line.

    log = RunLog(run_dir, enabled=env.is_main)       # every method is a no-op on ranks other than 0
    log.write_config(config)                          # config.json (atomic)
    log.resume_at(epochs_done=3, step=940)            # drop lines a crashed run wrote after its checkpoint
    log.step({"step": 941, "loss": 5.1, "lr": 4.8})   # steps.jsonl: one line per logged step
    log.epoch({"epoch": 4, "train_loss": 5.0, ...})   # metrics.jsonl: one line per epoch (docs/run-format.md)
    with log.progress(total_steps, done=940) as bar:
        bar.update(step, "loss 5.10  lr 4.80  1520 img/s")

The progress line is rich's, drawn only on an interactive terminal and only when
TLX_QUIET is unset; elsewhere (torchrun into a log file) `note` lines are printed instead.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from trainer.config import save_json


def quiet() -> bool:
    return os.environ.get("TLX_QUIET", "") not in ("", "0")


class _Bar:
    def __init__(self, progress, task, plain: bool, every: int):
        self.progress, self.task, self.plain, self.every = progress, task, plain, every

    def update(self, step: int, text: str) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=step, description=text)
        elif self.plain and step % self.every == 0:
            print(f"step {step}: {text}", flush=True)


class RunLog:
    def __init__(self, run_dir: str | os.PathLike, enabled: bool = True):
        self.dir = Path(run_dir)
        self.enabled = enabled
        if enabled:
            self.dir.mkdir(parents=True, exist_ok=True)

    def write_config(self, config: dict[str, Any]) -> None:
        if self.enabled:
            save_json(config, self.dir / "config.json")

    def _append(self, name: str, row: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.dir / name, "a") as f:
                f.write(json.dumps(row) + "\n")

    def epoch(self, row: dict[str, Any]) -> None:
        self._append("metrics.jsonl", row)

    def step(self, row: dict[str, Any]) -> None:
        self._append("steps.jsonl", row)

    def _keep(self, name: str, keep) -> None:
        path = self.dir / name
        if self.enabled and path.exists():
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in rows if keep(r)))
            os.replace(tmp, path)

    def resume_at(self, epochs_done: int, step: int) -> None:
        """Forget what was logged after the checkpoint we resume from (it will be logged again)."""
        self._keep("metrics.jsonl", lambda r: r["epoch"] <= epochs_done and not r.get("partial"))
        self._keep("steps.jsonl", lambda r: r["step"] <= step)

    def note(self, text: str) -> None:
        if self.enabled and not quiet():
            print(text, flush=True)

    @contextlib.contextmanager
    def progress(self, total: int, done: int = 0, every: int = 50):
        show = self.enabled and not quiet()
        if not (show and sys.stdout.isatty()):
            yield _Bar(None, None, show, every)
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeRemainingColumn()) as progress:
            yield _Bar(progress, progress.add_task("starting", total=total, completed=done), True, every)
