"""Which validation epoch is best, when to stop, when to lower the lr: what fine-tuning decides from its
validation results.

    watch = Watch.parse("loss:10", task_metrics=("accuracy", "auc"))   # --early-stop: val loss, patience 10
    best, best_epoch = watch.worst, 0
    for epoch in range(1, epochs + 1):
        if watch.better(val[watch.metric], best):              # a new best epoch (keep its weights)
            best, best_epoch = val[watch.metric], epoch
        if epoch - best_epoch >= watch.patience:               # patience epochs without a better value: stop
            break

- The selection metric is the task's metric (higher is better), or with `--early-stop
  METRIC:PATIENCE` that METRIC: `loss` (the validation loss, lower is better) or one of the
  task's validation metrics. Its best epoch's weights are tested.
- Early stopping: stop after PATIENCE epochs in a row without a strictly better value (Keras'
  EarlyStopping with restore_best_weights, torch-lightning's EarlyStopping). A NaN value is
  never better.
- `--schedule plateau` (torch's ReduceLROnPlateau, threshold 0, cooldown 0): after more than
  `--plateau-patience` epochs in a row without a better selection value, the lr is
  multiplied by `--decay`, and the count starts again.

The validation loss (`val_loss` in metrics.jsonl) is the training loss over the whole split:
the class-weighted mean over samples (pixels for segmentation; the observed label entries for
multilabel, as the masked BCE). For segmentation it is the class-weighted cross-entropy whatever
`--seg-loss` trains with (a soft Dice over a batch is no sum over samples or pixels).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from trainer.errors import TrainerError


@dataclass(frozen=True)
class Watch:
    """A validation quantity: its name in the evaluation's metrics, and whether higher is better."""
    metric: str
    mode: str = "max"          # max | min
    patience: int | None = None

    @classmethod
    def parse(cls, text: str, task_metrics: tuple[str, ...]) -> Watch:
        """`--early-stop METRIC:PATIENCE`; METRIC is `loss` or one of `task_metrics` (a `val_` prefix is allowed)."""
        metric, sep, patience = text.rpartition(":")
        metric = metric.removeprefix("val_")
        allowed = ("loss",) + tuple(task_metrics)
        if not sep or metric not in allowed or not patience.isdigit() or int(patience) < 1:
            raise TrainerError(f"--early-stop {text!r} must be METRIC:PATIENCE with METRIC one of "
                               f"{', '.join(allowed)} and PATIENCE an integer >= 1 (e.g. loss:10)")
        return cls(metric, "min" if metric == "loss" else "max", int(patience))

    @property
    def worst(self) -> float:
        """Where the best value starts: every defined value is better."""
        return math.inf if self.mode == "min" else -math.inf

    def better(self, value: float | None, best: float) -> bool:
        """Strictly better than `best`; a NaN (or None) value never is."""
        if value is None or math.isnan(value):
            return False
        return value < best if self.mode == "min" else value > best


def plateau_step(scale: float, bad: int, improved: bool, patience: int, factor: float) -> tuple[float, int]:
    """torch's ReduceLROnPlateau (mode by the watch, threshold 0, cooldown 0) after one epoch: (lr scale, bad
    epochs). More than `patience` bad epochs in a row multiply the scale by `factor` and reset the count."""
    bad = 0 if improved else bad + 1
    return (scale * factor, 0) if bad > patience else (scale, bad)


@torch.no_grad()
def loss_sums(kind: str, logits: torch.Tensor, target: torch.Tensor,
              class_weights: torch.Tensor | None) -> tuple[float, float]:
    """(weighted loss sum, weight sum) of a batch: their ratio over all batches is the split's loss, the
    training loss's weighted mean (trainer/task_heads.task_loss) taken over the whole split at once."""
    logits = logits.float()
    if kind == "multilabel":   # missing labels (NaN) count for nothing, as in training's masked BCE
        target = target.float()
        observed = ~torch.isnan(target)
        w = observed.float() if class_weights is None else observed * class_weights.expand_as(logits)
        bce = F.binary_cross_entropy_with_logits(logits, torch.where(observed, target, 0.0), reduction="none")
        return float((w * bce).sum()), float(observed.sum())
    target = target.long()
    nll = F.cross_entropy(logits, target, reduction="none")
    w = torch.ones_like(nll) if class_weights is None else class_weights[target]
    return float((w * nll).sum()), float(w.sum())
