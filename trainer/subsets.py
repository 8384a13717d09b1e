"""Few-shot subsets (`--shots K`) and patient-grouped k-fold splits (`--folds K --fold i`) of a train split.

    picked = shot_subset(keys, labels, seed=0, shots=5, names=classes)   # indices, in the order they were picked
    fold_of = patient_folds(labels, groups, folds=5, seed=0)             # fold index (0..4) of every sample

Shots (`shot_subset`):
- single-label: exactly K examples of every class, the first K of the class in a per-seed
  permutation (of the samples sorted by key: the same subset whatever order rows were read in);
- multi-label (and segmentation, by the foreground classes a slice shows): a sample counts
  for every label it has, and a sample with no positive label for the pseudo-label `none`.
  The subset is built in rounds k = 1..K: in round k every label (rarest first) that has
  fewer than k examples takes its next not-yet-picked example in its per-seed permutation.
  So every label ends with at least K examples, exactly K where labels do not co-occur, and
  with co-occurring labels at most K x (labels + 1) samples in all;
- nested: K-shot's rounds are the first K rounds of K'-shot's (K < K'), so for a seed the
  1-shot subset lies inside the 5-shot one;
- a label (class) with fewer than K training examples is an error naming it.

Folds (`patient_folds`): every group (a patient; where the dataset names none, a volume,
else the sample itself) goes to one fold whole, so no patient is in two folds. Groups are
placed largest first (ties in a per-seed order), each into the fold where its labels are
least represented so far relative to their totals (ties: the smaller fold), which
stratifies the folds by label as far as whole groups allow.
"""
from __future__ import annotations

import numpy as np

from trainer.errors import TrainerError


def _seeded_order(keys, seed: int) -> np.ndarray:
    """A per-seed permutation of the samples that depends on the keys, not on the row order."""
    by_key = np.argsort(np.asarray(keys, dtype=object), kind="stable")
    return by_key[np.random.default_rng(seed).permutation(len(by_key))]


def _label_matrix(labels: np.ndarray, names: list[str]) -> tuple[np.ndarray, list[str]]:
    """Boolean [N, L] of single- or multi-label targets; label-less rows get the pseudo-label `none`."""
    labels = np.asarray(labels)
    if labels.ndim == 1:
        return labels[:, None] == np.arange(len(names))[None, :], list(names)
    labels = labels.astype(bool)
    none = ~labels.any(1)
    return (np.concatenate([labels, none[:, None]], 1), list(names) + ["none"]) if none.any() else (labels, list(names))


def shot_subset(keys, labels: np.ndarray, seed: int, shots: int, names: list[str]) -> np.ndarray:
    """Indices of the K-shot subset, in the order they were picked (module docstring)."""
    if shots < 1:
        raise TrainerError(f"--shots {shots} must be at least 1")
    has, names = _label_matrix(labels, names)
    counts = has.sum(0)
    short = [f"{names[j]} ({counts[j]})" for j in range(len(names)) if counts[j] < shots]
    if short:
        raise TrainerError(f"--shots {shots}: these classes have fewer than {shots} training examples: "
                           f"{', '.join(short)}")
    order = _seeded_order(keys, seed)
    queues = [order[has[order, j]] for j in range(len(names))]   # each label's examples, in the seed's order
    rarest_first = np.lexsort((np.arange(len(names)), counts))
    picked, taken, have, nxt = [], np.zeros(len(has), bool), np.zeros(len(names), np.int64), np.zeros(len(names), int)
    for k in range(1, shots + 1):
        for j in rarest_first:
            while have[j] < k:
                i = queues[j][nxt[j]]
                nxt[j] += 1
                if not taken[i]:
                    taken[i] = True
                    picked.append(i)
                    have += has[i]
    return np.asarray(picked, dtype=np.int64)


def patient_folds(labels: np.ndarray, groups, folds: int, seed: int) -> np.ndarray:
    """The fold (0..folds-1) of every sample: whole groups per fold, stratified by label (module docstring)."""
    labels = np.asarray(labels)
    has = labels[:, None] == np.arange(labels.max() + 1)[None, :] if labels.ndim == 1 else labels.astype(bool)
    groups = np.asarray(groups, dtype=object)
    unique, group_of = np.unique(groups, return_inverse=True)
    if len(unique) < folds:
        raise TrainerError(f"--folds {folds}: the train split has only {len(unique)} patients (or volumes) to "
                           f"divide; use --folds <= {len(unique)}")
    per_group = np.zeros((len(unique), has.shape[1]), np.int64)
    np.add.at(per_group, group_of, has.astype(np.int64))
    size = np.bincount(group_of, minlength=len(unique))
    ties = np.random.default_rng(seed).permutation(len(unique))
    placed, fold_size = np.zeros((folds, has.shape[1]), np.int64), np.zeros(folds, np.int64)
    totals = np.maximum(per_group.sum(0), 1)
    fold_of_group = np.empty(len(unique), np.int64)
    for g in np.lexsort((ties, -size)):      # largest groups first, ties in the seed's order
        share = ((placed + per_group[g]) / totals)[:, per_group[g] > 0]
        worst = share.max(1) if share.shape[1] else np.zeros(folds)
        f = int(np.lexsort((fold_size, worst))[0])
        fold_of_group[g] = f
        placed[f] += per_group[g]
        fold_size[f] += size[g]
    return fold_of_group[group_of]
