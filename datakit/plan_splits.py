"""Splits of small cohorts: no split with a positive fraction left empty when it can be helped, and
a warning whenever a split is empty or rests on fewer than MIN_SPLIT_PATIENTS patients.

    splits = fill_empty_splits(splits, sizes, fractions)     # after plan's stratified assignment
    warnings = split_warnings(fractions, by_split)           # plan.json and the manifest record them

Why: with few patients, whole-patient stratification by slice counts can give every unit to
train and val (8 synthetic patients, fractions 0.8/0.1/0.1, 2 seeds of 10), and nothing said
so until fine-tuning failed on an empty test split.
"""
from __future__ import annotations

from collections import Counter

from datakit.manifest import SPLITS

MIN_SPLIT_PATIENTS = 3    # below this a split's metrics rest on one or two people


def fill_empty_splits(splits: list[str], sizes: list[float], fractions) -> list[str]:
    """Give every split with a positive fraction at least one unit, whenever there are at least as
    many units as such splits. An empty split takes, from the splits holding two or more units,
    the unit whose size (slices) is closest to the split's share of all slices (ties: the earlier
    unit in the seeded order), so the repair disturbs the balance as little as one move can.
    `splits[i]` is unit i's split, `sizes[i]` its slices; returns the new list."""
    splits, total = list(splits), sum(sizes)
    for name, fraction in zip(SPLITS, fractions):
        if fraction <= 0 or name in splits:
            continue
        held = Counter(splits)
        donors = [i for i, s in enumerate(splits) if held[s] > 1]
        if not donors:
            break                                       # fewer units than splits: nothing to move
        best = min(donors, key=lambda i: (abs(sizes[i] - fraction * total), i))
        splits[best] = name
    return splits


def split_warnings(fractions, by_split: dict) -> list[str]:
    """One sentence per split with a positive fraction that is empty or has fewer than
    MIN_SPLIT_PATIENTS patients. `by_split`: split -> {"patients": n, "slices" or "samples": n}."""
    out = []
    for name, fraction in zip(SPLITS, fractions):
        counts = by_split.get(name) or {}
        patients = counts.get("patients", 0)
        if fraction <= 0 or patients >= MIN_SPLIT_PATIENTS:
            continue
        if patients == 0:
            out.append(f"split {name} is empty although --fractions gives it {fraction:g}: training or evaluating "
                       f"on it will fail; add patients, or give it fraction 0")
        else:
            slices = counts.get("slices", counts.get("samples", 0))
            out.append(f"split {name} has only {patients} patient{'s' * (patients > 1)} ({slices} slices), fewer "
                       f"than {MIN_SPLIT_PATIENTS}: its metrics rest on too few people; add patients, or change "
                       f"--fractions")
    return out


def class_warnings(fractions, by_split_label: dict[str, dict[str, int]]) -> list[str]:
    """One sentence per non-empty split (of a positive fraction) that lacks classes another split holds: a
    model cannot learn a class train lacks, and a val or test split without a class has no per-class metric
    for it (a small cohort's accuracy of 0.0 on such a split is no bug). `by_split_label`: split -> {label: n}."""
    present = {name: {lab for lab, n in by_split_label.get(name, {}).items() if n > 0} for name in SPLITS}
    everywhere = set().union(*present.values())
    out = []
    for name, fraction in zip(SPLITS, fractions):
        missing = sorted(everywhere - present[name])
        if fraction <= 0 or not present[name] or not missing:
            continue
        others = sorted(s for s in SPLITS if s != name and present[s] & set(missing))
        why = ("the model never sees them in training" if name == "train"
               else "its metrics say nothing about them")
        out.append(f"split {name} has no slices of class{'es' * (len(missing) > 1)} {', '.join(missing)} "
                   f"(in {', '.join(others)}): {why}; add patients, or leave the class out with --exclude-class")
    return out
