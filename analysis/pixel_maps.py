"""Pixel maps (paper Fig. 7): where one init's segmentation is right and another's wrong, pixel by pixel.

    >>> masks = load_masks("runs/lits/radnet/finetune/frac-1/seed-0/masks.npz")   # --save-masks
    >>> overlap, views = pixel_overlap([masks_a, masks_b], names=["imagenet", "radnet"], slices=4)

masks.npz (docs/run-format.md) holds a segmentation run's test slices: `keys` (sample
keys), `pred` and `target` (uint8 class per pixel, slices x H x W) and `classes`. Runs
are joined on their common keys; their targets must agree. A pixel is right under a
model when its predicted class is the true one.

Pixels every model and the truth call background are left out: on CT they are most of
the image and would swamp the table (they are right under every model). Over the rest
(`units`), the same observed-against-expected patterns as the per-slice overlap
(analysis.overlap.prediction_overlap). The views are the slices with the most pixels right
under exactly one of the first two models: the truth, and where only A or only B is right.
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from analysis.errors import AnalysisError
from analysis.overlap import OverlapCell, prediction_overlap


@dataclass
class Masks:
    path: Path
    keys: np.ndarray          # (slices,) str
    pred: np.ndarray          # (slices, H, W) uint8
    target: np.ndarray
    classes: list[str]


def load_masks(path: Path | str) -> Masks:
    """A run's masks.npz, checked: keys unique, pred and target of one shape per key."""
    path = Path(path)
    try:
        with np.load(path) as npz:
            keys, pred, target = npz["keys"].astype(str), npz["pred"], npz["target"]
            classes = [str(c) for c in npz["classes"]]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise AnalysisError(f"{path} cannot be read as masks ({type(exc).__name__}: {exc})") from None
    if pred.shape != target.shape or pred.ndim != 3 or len(keys) != len(pred):
        raise AnalysisError(f"{path}: pred {pred.shape}, target {target.shape} and {len(keys)} keys do not match")
    if len(set(keys.tolist())) != len(keys):
        raise AnalysisError(f"{path}: a sample key appears more than once")
    return Masks(path, keys, pred, target, classes)


def _common(masks: list[Masks]) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """(keys, each run's predictions, the target) over the slices every run has, in key order."""
    common = set(masks[0].keys.tolist())
    for m in masks[1:]:
        common &= set(m.keys.tolist())
    if not common:
        raise AnalysisError("the runs' masks share no test slice (different test sets?)")
    keys = np.array(sorted(common))
    rows = []
    for m in masks:
        order = np.argsort(m.keys)
        rows.append(order[np.searchsorted(m.keys, keys, sorter=order)])
    target = masks[0].target[rows[0]]
    for m, r in zip(masks[1:], rows[1:]):
        if m.target.shape[1:] != target.shape[1:] or not np.array_equal(m.target[r], target):
            raise AnalysisError(f"{m.path} and {masks[0].path} disagree on the true masks of common slices")
    return keys, [m.pred[r] for m, r in zip(masks, rows)], target


@dataclass
class PixelView:
    key: str
    target: np.ndarray        # (H, W) true classes
    only: list[np.ndarray]    # (H, W) bool: right only under model 0, only under model 1


def pixel_overlap(masks: list[Masks], slices: int = 4) -> tuple[list[OverlapCell], int, list[PixelView]]:
    """(patterns over the pixels any model or the truth marks foreground, how many pixels, views of the slices
    with most pixels right under exactly one of the first two models)."""
    keys, preds, target = _common(masks)
    relevant = target > 0
    for p in preds:
        relevant |= p > 0
    if not relevant.any():
        raise AnalysisError("no pixel is foreground in the truth or any prediction: nothing to compare")
    correct = np.stack([(p == target)[relevant] for p in preds])
    cells = prediction_overlap(correct)
    views = []
    if len(preds) >= 2:
        a, b = preds[0] == target, preds[1] == target
        only_a, only_b = a & ~b, b & ~a
        disagreement = (only_a | only_b).sum((1, 2))
        for s in np.argsort(-disagreement, kind="stable")[:slices]:
            if disagreement[s] > 0:
                views.append(PixelView(str(keys[s]), target[s], [only_a[s], only_b[s]]))
    return cells, int(relevant.sum()), views
