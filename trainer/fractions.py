"""Data fractions: which training samples a run with `--fraction f` uses.

    order = fraction_order(keys, labels, seed)   # one ordering of the training split per seed
    idx = order.take(0.01)                        # indices of the first round(0.01 * N) samples of it

Properties (tests/finetune/test_fractions.py checks each):
- nested: every subset is a prefix of the same per-seed ordering, so for one seed the
  1% subset lies inside the 10% subset, which lies inside the 50% subset;
- stratified: the ordering interleaves the strata systematically (sample j of a
  stratum with n_s members gets priority (j + u_s) / n_s, u_s uniform), so every prefix
  holds each stratum within one sample of its share;
- at least one example of every class present in the training split: the first
  sample of each class is moved to the front of the ordering; a fraction too small to
  hold one per class is an error rather than a silently wrong subset;
- multi-label aware: `labels` may be a boolean matrix [N, L] (multi-label targets, or
  the classes present in a segmentation slice); a sample's stratum is its rarest
  positive label (or "none"), and every label present gets its own first example;
- reproducible: depends only on the seed and the set of (key, label) pairs, not on
  the order the rows were read in.
"""
from __future__ import annotations

import numpy as np

from trainer.errors import TrainerError


def _strata(labels: np.ndarray) -> np.ndarray:
    """Stratum per sample: the class (single-label) or the rarest positive label (multi)."""
    if labels.ndim == 1:
        return labels.astype(np.int64)
    frequency = labels.sum(0)
    # Rank labels from rarest to most common (ties by index) and pick each row's rarest positive.
    rarity = np.empty(labels.shape[1], dtype=np.int64)
    rarity[np.lexsort((np.arange(labels.shape[1]), frequency))] = np.arange(labels.shape[1])
    masked = np.where(labels, rarity[None, :], labels.shape[1])
    rarest = np.argmin(masked, axis=1)
    return np.where(labels.any(1), rarest, -1)


def fraction_order(keys: list[str] | np.ndarray, labels: np.ndarray, seed: int,
                   class_names: list[str] | None = None) -> "FractionOrder":
    """The per-seed ordering of the training samples (indices into `keys`)."""
    keys = np.asarray(keys, dtype=object)
    labels = np.asarray(labels)
    if len(keys) != len(labels):
        raise ValueError(f"{len(keys)} keys but {len(labels)} labels")
    if len(keys) == 0:
        raise TrainerError("the training split is empty: nothing to take a fraction of")
    by_key = np.argsort(keys, kind="stable")  # independent of the order rows were read in
    lab = labels[by_key]
    strata = _strata(lab)
    rng = np.random.default_rng(seed)
    priority = np.empty(len(keys))
    for s in np.unique(strata):
        members = np.flatnonzero(strata == s)
        perm = rng.permutation(len(members))
        priority[members[perm]] = (np.arange(len(members)) + rng.random()) / len(members)
    tiebreak = rng.random(len(keys))
    order = np.lexsort((tiebreak, priority))

    # The first sample of every class present goes to the front, in ordering order.
    has = (lab[:, None] == np.arange(lab.max() + 1)[None, :]) if lab.ndim == 1 else lab.astype(bool)
    ordered_has = has[order]
    present = np.flatnonzero(ordered_has.any(0))
    first_pos = sorted({int(np.argmax(ordered_has[:, c])) for c in present})
    rest = np.setdiff1d(np.arange(len(order)), first_pos, assume_unique=True)
    final = by_key[order[np.concatenate([np.array(first_pos, dtype=np.int64), rest])]]
    names = class_names or [str(c) for c in range(has.shape[1])]
    return FractionOrder(final, n_required=len(first_pos), present=[names[c] for c in present])


class FractionOrder:
    """An ordering of the training split whose prefixes are the data-fraction subsets."""

    def __init__(self, order: np.ndarray, n_required: int, present: list[str]):
        self.order, self.n_required, self.present = order, n_required, present

    def size(self, fraction: float) -> int:
        if not (0.0 < fraction <= 1.0):
            raise TrainerError(f"--fraction {fraction} must be in (0, 1] (1.0 = all training data)")
        return len(self.order) if fraction == 1.0 else max(1, int(round(fraction * len(self.order))))

    def take(self, fraction: float) -> np.ndarray:
        """Indices (into the keys given) of the subset for `fraction`."""
        n = self.size(fraction)
        if n < self.n_required:
            raise TrainerError(
                f"--fraction {fraction} of {len(self.order)} training samples keeps {n}, but one example of "
                f"each of the {len(self.present)} classes present ({', '.join(self.present)}) needs "
                f"{self.n_required}: use a fraction >= {self.n_required / len(self.order):.3g}")
        return self.order[:n]
