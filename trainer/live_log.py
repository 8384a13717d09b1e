"""Copies of a run's numbers for the tools people watch training with: metrics.csv and TensorBoard.

steps.jsonl and metrics.jsonl stay the record (docs/run-format.md); these two are views of it, written by
trainer.runlog.RunLog on rank 0 as the lines are appended:

    metrics.csv      long form, one row per number: source (step|epoch), step, epoch, metric, value.
                     Long rather than wide because step and epoch rows carry different fields (loss, lr,
                     img/s per step; train loss, kNN or val metrics per epoch), so the header never changes.
                     pandas: pd.read_csv(p).pivot_table(index=["source", "step"], columns="metric", values="value")
    tensorboard/     event files, when the optional `tensorboard` package is installed (pip install
                     'tlx[tensorboard]'; TLX_TENSORBOARD=0 turns it off). Tags are "step/<metric>" and
                     "epoch/<metric>", x = the optimizer step.

On resume both are cut back to the checkpoint, as the JSONL files are: metrics.csv is rebuilt from them, and
the TensorBoard writer purges events after the resumed step.
"""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

from tlxcore.atomic import write_text_atomic

CSV_FIELDS = ("source", "step", "epoch", "metric", "value")


def numbers(row: dict[str, Any]) -> dict[str, float]:
    """The row's plottable fields: numbers other than the step and epoch counters (bools are flags, not values)."""
    return {k: float(v) for k, v in row.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("step", "epoch")}


def csv_rows(source: str, row: dict[str, Any]) -> list[tuple]:
    return [(source, row.get("step", ""), row.get("epoch", ""), k, repr(v)) for k, v in numbers(row).items()]


def _csv_text(rows: list[tuple], header: bool) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if header:
        w.writerow(CSV_FIELDS)
    w.writerows(rows)
    return buf.getvalue()


class MetricsCsv:
    def __init__(self, path: Path):
        self.path = path

    def append(self, source: str, row: dict[str, Any]) -> None:
        header = not self.path.exists()
        with open(self.path, "a", newline="") as f:
            f.write(_csv_text(csv_rows(source, row), header))

    def rebuild(self, steps: list[dict], epochs: list[dict]) -> None:
        """The CSV of what the JSONL files now hold, steps then epochs (each in file order)."""
        rows = [r for s in steps for r in csv_rows("step", s)] + [r for e in epochs for r in csv_rows("epoch", e)]
        write_text_atomic(self.path, _csv_text(rows, header=True))


def tensorboard_writer(run_dir: Path, purge_step: int | None = None):
    """A torch SummaryWriter on RUN/tensorboard, or None when the package is missing or TLX_TENSORBOARD=0."""
    if os.environ.get("TLX_TENSORBOARD", "1") == "0":
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:   # the optional extra is not installed: metrics.csv and the JSONL files still are
        return None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=purge_step)


def tensorboard_add(writer, source: str, row: dict[str, Any]) -> None:
    if writer is None or "step" not in row:
        return
    for k, v in numbers(row).items():
        writer.add_scalar(f"{source}/{k}", v, global_step=int(row["step"]))
    writer.flush()   # a live view: a crash must not hold back what was already logged


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
