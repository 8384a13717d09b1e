"""What a training run writes besides checkpoints: config.json, metrics.jsonl, steps.jsonl, notes, and
their live views metrics.csv and tensorboard/ (trainer.live_log).

    log = RunLog(run_dir, enabled=env.is_main, progress=progress)   # a no-op on ranks other than 0
    log.write_config(config)                          # config.json (atomic; trainer.config.run_config)
    log.resume_at(epochs_done=3, step=940)            # drop lines a crashed run wrote after its checkpoint
    log.begin(step=940, total=3000)                   # the first progress tick (ETA counts from here)
    log.step(941, 3000, epoch=4, loss=5.1, lr=4.8, images_per_s=1520.0)   # steps.jsonl line + progress tick
    log.epoch({"epoch": 4, "step": 1250, ...})        # metrics.jsonl: one line per epoch (docs/run-format.md)
    log.note("resumed from .../last.pt at step 940")  # a line for the user

Both trainers log through it, a steps.jsonl line every `--log-every` steps (log_every_flag).
Nothing is written before write_config, which creates the run folder. Notes go to the progress callback's `note` (the
tlxcore.progress Drawer that the trainer's entry point opens on rank 0), so TLX_QUIET
silences them as it silences progress; a callback without `note` (the default `silent`)
drops them.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

from tlxcore.atomic import write_json_atomic, write_text_atomic
from tlxcore.progress import Progress, Tick, silent
from trainer.config import opt
from trainer.live_log import MetricsCsv, read_jsonl, tensorboard_add, tensorboard_writer


def log_every_flag():
    """The `--log-every` field of a trainer's config dataclass."""
    return opt(10, "steps between steps.jsonl lines and progress updates")


class RunLog:
    def __init__(self, run_dir: str | os.PathLike, enabled: bool = True, progress: Progress = silent):
        self.dir = Path(run_dir)
        self.enabled = enabled
        self.progress = progress
        self.csv = MetricsCsv(self.dir / "metrics.csv")
        self._tensorboard = None
        self._purge_step: int | None = None

    def write_config(self, config: dict[str, Any]) -> None:
        if self.enabled:
            write_json_atomic(config, self.dir / "config.json")

    def _append(self, name: str, row: dict[str, Any], source: str) -> None:
        if self.enabled:
            with open(self.dir / name, "a") as f:
                f.write(json.dumps(row) + "\n")
            self.csv.append(source, row)
            if self._tensorboard is None:   # opened on the first line, so a refused run leaves no event file
                self._tensorboard = tensorboard_writer(self.dir, self._purge_step) or False
            tensorboard_add(self._tensorboard or None, source, row)

    def epoch(self, row: dict[str, Any]) -> None:
        self._append("metrics.jsonl", row, "epoch")

    def begin(self, step: int, total: int) -> None:
        """The first progress tick of a session: the drawer's rate and ETA count from `step` on (a resumed
        run's earlier steps are not this session's speed)."""
        if self.enabled:
            self.progress(Tick("train", step, total, "steps"))

    def step(self, step: int, total: int, epoch: int, loss: float, lr: float, images_per_s: float) -> None:
        """A steps.jsonl line and a progress tick; `loss` is the step's loss averaged over the ranks."""
        self._append("steps.jsonl", {"step": step, "epoch": epoch, "loss": loss, "lr": lr,
                                     "images_per_s": images_per_s}, "step")
        if self.enabled:
            self.progress(Tick("train", step, total, "steps", f"epoch {epoch}  loss {loss:.4f}  lr {lr:.3g}  "
                                                             f"{images_per_s:,.0f} img/s"))

    def _keep(self, name: str, keep: Callable[[dict], bool]) -> None:
        path = self.dir / name
        if self.enabled and path.exists():
            rows = read_jsonl(path)
            write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in rows if keep(r)))

    def resume_at(self, epochs_done: int, step: int) -> None:
        """Forget what was logged after the checkpoint we resume from (it will be logged again)."""
        self._keep("metrics.jsonl", lambda r: r["epoch"] <= epochs_done and not r.get("partial"))
        self._keep("steps.jsonl", lambda r: r["step"] <= step)
        if self.enabled:
            self.csv.rebuild(read_jsonl(self.dir / "steps.jsonl"), read_jsonl(self.dir / "metrics.jsonl"))
        self._purge_step = step + 1   # TensorBoard drops events past the checkpoint when it reopens

    def note(self, text: str) -> None:
        note = getattr(self.progress, "note", None)
        if self.enabled and note is not None:
            note(text)
