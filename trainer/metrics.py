"""Evaluation metrics of the downstream tasks, on numpy arrays (no torch here).

    accuracy(pred, target)                       single-label
    class_auc(probs, target)                     single-label: binary AUC, or one-vs-rest macro over classes
    roc_auc(scores, targets)                     one label; NaN when the test set lacks a class; NaN targets skipped
    mean_auc(scores, targets, labels)            multi-label: auc_<label> and mean_auc
    dice_counts(pred_mask, true_mask, n, regions)  per-slice overlap counts (what the evaluator gathers)
    dice_metrics(counts, volumes, class_names)   dice_<class> (per image), _volume, _global; dice_mean(_global)

Missing labels (NaN targets of multi-label data: `tlx convert cxr --uncertain ignore`, a label a
merged source lacks) are left out of that label's AUC, and out of predictions.parquet; targets
other than 0, 1 or NaN (soft labels) cannot be scored and are refused.

Dice and empty ground truth: per slice and class, dice = 2|P∩T| / (|P| + |T|). A class
absent from both the truth and the prediction of a slice gives NaN (nothing to find
and nothing wrongly found: it is left out of the mean, not counted as 1), a class
absent from the truth but predicted gives 0. `dice_<class>` is the mean over the test
slices where it is defined (per image); `dice_<class>_volume` pools the counts of all slices of a
volume first (the usual 3D Dice) and averages over volumes; `dice_<class>_global` pools the
counts of the whole split (one Dice over all its pixels, as SIIM-ACR and DRIVE papers often
report); `dice_mean` averages `dice_<class>` over the foreground classes (and regions),
`dice_mean_global` the `dice_<class>_global`. A metric with no defined
value at all is NaN, written as null in result.json.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.stats import rankdata


def accuracy(pred: np.ndarray, target: np.ndarray) -> float:
    pred, target = np.asarray(pred), np.asarray(target)
    if len(target) == 0:
        return math.nan
    return float(np.mean(pred == target))


def roc_auc(scores: np.ndarray, targets: np.ndarray) -> float:
    """Area under the ROC curve of one binary label (Mann-Whitney U with mid-ranks for ties).

    NaN when the targets hold only positives or only negatives: the AUC is undefined,
    and pretending 0.5 or 1.0 would bias the mean over labels. NaN targets (missing) are left out."""
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.float64)
    known = ~np.isnan(targets)
    scores, targets = scores[known], targets[known].astype(bool)
    n_pos = int(targets.sum())
    n_neg = len(targets) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(scores)  # average ranks: a tie between a positive and a negative counts 1/2
    return float((ranks[targets].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def class_auc(probs: np.ndarray, target: np.ndarray) -> float:
    """Single-label AUC from class probabilities [n, C]: with 2 classes the AUC of class 1's probability;
    with more, the one-vs-rest macro average (each class's probability against "this class or not"), over
    the classes whose AUC is defined (present and absent in `target`), as sklearn's roc_auc_score
    (multi_class="ovr", average="macro") where every class is present. NaN when none is defined."""
    probs, target = np.asarray(probs, dtype=np.float64), np.asarray(target)
    if probs.shape[1] == 2:
        return roc_auc(probs[:, 1], target == 1)
    per_class = [roc_auc(probs[:, c], target == c) for c in range(probs.shape[1])]
    defined = [v for v in per_class if not math.isnan(v)]
    return float(np.mean(defined)) if defined else math.nan


def mean_auc(scores: np.ndarray, targets: np.ndarray, labels: list[str],
             exclude_from_mean: tuple[str, ...] = ()) -> dict[str, float]:
    """`auc_<label>` for every label and `mean_auc`, the mean over the labels whose AUC is
    defined (labels absent from the test set are skipped) and not in `exclude_from_mean`."""
    scores, targets = np.asarray(scores), np.asarray(targets)
    out = {f"auc_{name}": roc_auc(scores[:, i], targets[:, i]) for i, name in enumerate(labels)}
    used = [out[f"auc_{name}"] for name in labels if name not in exclude_from_mean]
    used = [v for v in used if not math.isnan(v)]
    out["mean_auc"] = float(np.mean(used)) if used else math.nan
    return out


def _overlap(p: np.ndarray, t: np.ndarray) -> np.ndarray:
    return np.stack([(p & t).sum((-1, -2)), p.sum((-1, -2)), t.sum((-1, -2))], axis=-1).astype(np.int64)


def dice_counts(pred: np.ndarray, truth: np.ndarray, n_classes: int,
                regions: tuple[tuple[int, ...], ...] = ()) -> np.ndarray:
    """[intersection, predicted, true] pixel counts of masks [..., H, W] of class indices:
    int64 [..., n_classes + len(regions), 3]. A region is a union of classes (BraTS'
    whole tumour = necrosis | edema | enhancing) and is scored like one more class."""
    pred, truth = np.asarray(pred), np.asarray(truth)
    classes = np.arange(n_classes).reshape(n_classes, 1, 1)
    counts = [_overlap(pred[..., None, :, :] == classes, truth[..., None, :, :] == classes)]
    counts += [_overlap(np.isin(pred, r), np.isin(truth, r))[..., None, :] for r in regions]
    return np.concatenate(counts, axis=-2)


def dice_from_counts(counts: np.ndarray) -> np.ndarray:
    """Dice from [..., 3] counts; NaN where predicted and true are both empty."""
    counts = np.asarray(counts, dtype=np.float64)
    denom = counts[..., 1] + counts[..., 2]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2 * counts[..., 0] / np.where(denom > 0, denom, 1), np.nan)


def _nanmean(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    return float(values.mean()) if len(values) else math.nan


def dice_metrics(counts: np.ndarray, volumes: list[str], names: list[str]) -> dict[str, float]:
    """Aggregate per-slice counts [n_slices, len(names), 3] (index 0 = background, which is
    not reported) into dice_<name> (per slice), dice_<name>_volume and dice_mean."""
    counts = np.asarray(counts)
    per_slice = dice_from_counts(counts)  # [n_slices, n_names]
    volumes = np.asarray(volumes)
    out: dict[str, float] = {}
    for j, name in enumerate(names):
        if j == 0:
            continue
        out[f"dice_{name}"] = _nanmean(per_slice[:, j])
        pooled = [dice_from_counts(counts[volumes == v, j].sum(0)) for v in np.unique(volumes)]
        out[f"dice_{name}_volume"] = _nanmean(np.array(pooled))
        out[f"dice_{name}_global"] = float(dice_from_counts(counts[:, j].sum(0)))
    out["dice_mean"] = _nanmean(np.array([out[f"dice_{n}"] for n in names[1:]]))
    out["dice_mean_global"] = _nanmean(np.array([out[f"dice_{n}_global"] for n in names[1:]]))
    return out


# ---------------------------------------------------------------------------------------------
# A task's evaluation records -> metrics and the rows of predictions.parquet (docs/run-format.md)

def classification_results(probs: np.ndarray, targets: np.ndarray, keys: list[str]) -> tuple[dict, dict]:
    """accuracy; with two classes also `auc` (class 1's probability as the score: PCam's tumor, a
    mammogram's malignancy), the metric binary tasks are usually reported by."""
    pred = np.argmax(probs, axis=1)
    correct = pred == targets
    rows = {"sample": list(keys), "correct": correct.tolist(), "target": targets.astype(np.int64).tolist(),
            "pred": pred.astype(np.int64).tolist(), "confidence": probs.max(1).astype(np.float64).tolist()}
    return {"accuracy": accuracy(pred, targets), "auc": class_auc(probs, targets)}, rows


def multilabel_results(scores: np.ndarray, targets: np.ndarray, keys: list[str], labels: list[str],
                       exclude_from_mean: tuple[str, ...] = ()) -> tuple[dict, dict]:
    """Per-label AUC and mean_auc; rows per sample and label whose target is known (missing ones are
    not scored, so they are not listed either)."""
    from trainer.errors import TrainerError

    targets = np.asarray(targets, dtype=np.float64)
    known = ~np.isnan(targets)
    soft = known & (targets != 0) & (targets != 1)
    if soft.any():
        raise TrainerError(f"{int(soft.sum())} evaluation targets are neither 0, 1 nor missing (soft labels, e.g. "
                           f"{targets[soft][0]:g}); an AUC needs 0 or 1: convert val and test without label smoothing")
    n, n_labels = scores.shape
    sample = np.repeat(np.asarray(keys, dtype=object), n_labels)[known.ravel()]
    label = np.tile(np.asarray(labels, dtype=object), n)[known.ravel()]
    truth = targets[known].astype(bool)
    rows = {"sample": sample.tolist(), "label": label.tolist(), "target": truth.tolist(),
            "score": scores[known].astype(np.float64).tolist(), "correct": ((scores[known] >= 0.5) == truth).tolist()}
    return mean_auc(scores, targets, labels, exclude_from_mean), rows


def segmentation_results(counts: np.ndarray, keys: list[str], volumes: list[str],
                         names: list[str]) -> tuple[dict, dict]:
    """`counts` [n_slices, len(names), 3] from dice_counts; names[0] is the background."""
    dice = dice_from_counts(counts)[:, 1:]                      # [n, foreground names]
    n, m = dice.shape
    absent = np.isnan(dice)
    rows = {"sample": np.repeat(np.asarray(keys, dtype=object), m).tolist(),
            "volume": np.repeat(np.asarray(volumes, dtype=object), m).tolist(),
            "class": np.tile(np.asarray(names[1:], dtype=object), n).tolist(),
            "dice": dice.ravel().tolist(),
            "correct": (absent | (np.nan_to_num(dice) >= 0.5)).ravel().tolist()}
    return dice_metrics(counts, volumes, names), rows
