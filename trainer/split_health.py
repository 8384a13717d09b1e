"""Warnings about splits that cannot give a meaningful number: classes the training subset lacks.

    for line in class_gaps(classes, train=subset_labels, val=val_labels, test=test_labels):
        log.note(f"warning: {line}")

A small cohort (or a small --fraction / --shots subset) can leave a class out of training that val or test
hold: the model can never predict it, so every such sample is an error, and a test split made only of such
classes scores an accuracy of exactly 0. That is a property of the split, not a bug, and the run says so
before it trains. Single-label classification only (labels are class indices).
"""
from __future__ import annotations

import numpy as np


def class_gaps(classes: list[str], train: np.ndarray, val: np.ndarray, test: np.ndarray) -> list[str]:
    held = {name: set(np.unique(np.asarray(labels, dtype=np.int64)).tolist())
            for name, labels in (("train", train), ("val", val), ("test", test))}
    out = []
    for split in ("val", "test"):
        lacking = sorted(held[split] - held["train"])
        if not lacking:
            continue
        n = int(np.isin(np.asarray(val if split == "val" else test), lacking).sum())
        total = len(val if split == "val" else test)
        names = ", ".join(classes[i] for i in lacking)
        line = (f"the training subset has no samples of class{'es' * (len(lacking) > 1)} {names}, which {n} of "
                f"{total} {split} samples belong to: the model cannot predict them, so they all count as errors")
        if n == total:
            line += f"; {split} accuracy 0 is the expected result, not a failure"
        out.append(line + " (more patients, a larger --fraction or --shots, or a dataset without the class)")
    return out
