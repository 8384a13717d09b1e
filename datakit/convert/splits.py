"""Train/val/test assignment of whole groups (patients, or single images when the source
does not say which patient an image belongs to), so no group straddles two splits.

    split_of = assign_splits(groups, val=30, test=30, seed=0)           # 30 patients each
    split_of = assign_splits(groups, val=0.1, test=0.1, seed=0, strata=label_of)
    split_of = patient_splits([(patient, official_split_or_None), ...], val=0.1, test=0.1, seed=0)

`val`/`test` >= 1 are numbers of groups, < 1 fractions of them (at least one group
when the fraction is above 0, so a small cohort still gets a val and a test patient).
With `strata` (one label per group) fractions apply within each stratum instead: after a seeded permutation of the
stratum, its j-th group (of n) goes to val when (j + u) / n < val, to test when < val +
test, else to train (u uniform per stratum), so every label keeps its share. The
result depends only on the seed and the set of groups, not on their order.
"""
from __future__ import annotations

import re

import numpy as np

from datakit.errors import DatakitError


def assign_splits(groups: list[str], val: float, test: float, seed: int,
                  strata: dict[str, str] | None = None) -> dict[str, str]:
    groups = sorted(set(groups))
    n = len(groups)
    for name, v in (("--val", val), ("--test", test)):
        if v < 0 or (v >= 1 and v != int(v)):
            raise DatakitError(f"{name} {v} must be a fraction in [0, 1) or a whole number of patients")
    rng = np.random.default_rng(seed)
    if strata is None or val >= 1 or test >= 1:
        n_val, n_test = (int(v) if v >= 1 else max(int(v > 0), int(round(v * n))) for v in (val, test))
        if n_val + n_test >= n:
            raise DatakitError(f"--val {val} and --test {test} take {n_val} + {n_test} of {n} patients, "
                               f"leaving none to train on")
        order = [groups[i] for i in rng.permutation(n)]
        return {g: "val" if i < n_val else "test" if i < n_val + n_test else "train" for i, g in enumerate(order)}
    if val + test >= 1:
        raise DatakitError(f"--val {val} + --test {test} must leave a training share (sum < 1)")
    by_stratum: dict[str, list[str]] = {}
    for g in groups:  # groups are sorted, so each stratum's list is too
        by_stratum.setdefault(strata[g], []).append(g)
    out: dict[str, str] = {}
    for stratum in sorted(by_stratum):
        members = by_stratum[stratum]
        u = rng.random()
        for j, i in enumerate(rng.permutation(len(members))):
            pos = (j + u) / len(members)
            out[members[i]] = "val" if pos < val else "test" if pos < val + test else "train"
    return out


def patient_splits(pairs: list[tuple[str, str | None]], val: float, test: float, seed: int) -> dict[str, str]:
    """patient -> split from (patient, the source's split or None) per image: the source's own where it
    gives one (a patient in two of its splits is an error: a split list that leaks), the splits it
    lacks drawn per patient from its train patients; from all patients when it gives none."""
    official: dict[str, set] = {}
    for patient, split in pairs:
        official.setdefault(patient, set()).add(split)
    mixed = sorted(p for p, s in official.items() if len(s) > 1)
    if mixed:
        where = sorted(str(s) for s in official[mixed[0]])
        raise DatakitError(f"the source's split list puts {len(mixed)} patient(s) into two splits, e.g. patient "
                           f"{mixed[0]!r} into {' and '.join(where)}; a patient belongs to one split")
    given = {next(iter(s)) for s in official.values()}
    if given == {None}:
        return assign_splits(list(official), val, test, seed)
    if None in given:
        raise DatakitError(f"the source gives a split for some patients and not for others "
                           f"({sum(s == {None} for s in official.values())} without); give every image its split")
    drawn_from = sorted(p for p, s in official.items() if s == {"train"})
    lacking = (0 if "val" in given else val, 0 if "test" in given else test)
    draw = assign_splits(drawn_from, *lacking, seed) if any(lacking) else {}
    return {p: draw.get(p, next(iter(s))) for p, s in official.items()}


def patient_from_id(source_id: str, regex: str | None, what: str = "case") -> str:
    """The patient in a case or image id by --patient-regex (its group `patient`, else group 1, else the
    whole match); the id itself without one (each case its own patient)."""
    if not regex:
        return source_id
    try:
        m = re.search(regex, source_id)
    except re.error as exc:
        raise DatakitError(f"--patient-regex {regex!r} is not a regular expression ({exc})") from None
    if not m:
        raise DatakitError(f"--patient-regex {regex!r} does not match {what} {source_id!r}")
    return m.group("patient") if "patient" in m.re.groupindex else m.group(1) if m.groups() else m.group(0)


def patients_from_csv(path: str, id_col: str, patient_col: str) -> dict[str, str]:
    """image id -> patient from a CSV's two columns (`--patients FILE`); one-line DatakitError for a missing
    column, a blank patient, or an id given two patients (its images could not be kept in one split)."""
    from datakit.convert.tables import read_csv

    out: dict[str, str] = {}
    for n, row in enumerate(read_csv(path, "--patients", required=[id_col, patient_col]), start=1):
        image, patient = row[id_col].strip(), row[patient_col].strip()
        if not image or not patient:
            raise DatakitError(f"--patients {path} data row {n}: blank {id_col if not image else patient_col!r}; "
                               f"every row names an image and its patient")
        if out.setdefault(image, patient) != patient:
            raise DatakitError(f"--patients {path} gives image {image!r} two patients ({out[image]!r} and "
                               f"{patient!r}); an image belongs to one patient")
    return out
