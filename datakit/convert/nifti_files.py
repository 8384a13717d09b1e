"""The files of `tlx convert nifti-seg`: its cases under --labels and --images, and a reject for
every other file there, so nothing below either folder is left out without a word.

    cases, unused = find_cases(images, labels, layout)     # layout: image/label patterns, modalities

A pattern ending in `.nii` or `.nii.gz` matches either suffix (exports mix them: an image
`X.nii` with its label `X.nii.gz`); an image is looked up with its label's suffix first.
Every path (in `Case` and in the rejects) is the folder as given on the command line joined
with the file's path below it, the one convention of the converter's rejects.parquet.

Files no case uses get one of:
- `no-image`    (given by the converter) a label file whose case has no image file;
- `no-label`    an image file (it matches the image pattern) of a case without a label file;
- `duplicate-case`  a second label or image file of one case (`X.nii` beside `X.nii.gz`);
- `unused-modality` an image of a modality not asked for (BraTS's T2 under the brats preset);
- `unmatched`   a file that matches neither pattern (README, dataset.json, `._*` resource forks);
- `not-a-file` / `unreadable` what datakit.walk reports (FIFOs, sockets, dangling links).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datakit.convert.builder import stage_reject
from datakit.errors import DatakitError
from datakit.walk import walk_files

NIFTI_SUFFIXES = (".nii.gz", ".nii")


@dataclass(frozen=True)
class Case:
    case: str
    images: tuple[str, ...]      # one per modality (or one); a missing one is its expected name
    label: str


def split_suffix(pattern: str) -> tuple[str, str | None]:
    """(pattern without its NIfTI suffix, the suffix), or (pattern, None) if it has none."""
    for suffix in NIFTI_SUFFIXES:
        if pattern.endswith(suffix):
            return pattern[:-len(suffix)], suffix
    return pattern, None


def pattern_regex(pattern: str, option: str = "--label-pattern") -> re.Pattern:
    """`{case}/{case}_seg.nii.gz` -> a regex: group `case` (repeats must agree), `modality` for
    `{modality}`, `ext` for a NIfTI suffix (either one matches)."""
    stem, suffix = split_suffix(pattern)
    parts = re.split(r"(\{case\}|\{modality\})", stem)
    if "{case}" not in parts:
        raise DatakitError(f"{option} {pattern!r} must contain {{case}}")
    regex, seen = "", set()
    for part in parts:
        if part in ("{case}", "{modality}"):
            name = part[1:-1]
            regex += f"(?P={name})" if name in seen else f"(?P<{name}>[^/]+?)"
            seen.add(name)
        else:
            regex += re.escape(part)
    return re.compile(regex + (r"(?P<ext>\.nii(?:\.gz)?)" if suffix else ""))


def _image_names(layout: Any, case: str, ext: str | None) -> list[list[str]]:
    """Per modality, the image file names to try (relative to --images): the label's suffix first."""
    stem, suffix = split_suffix(layout.image_pattern)
    suffixes = [suffix] if suffix is None else [ext or suffix] + [s for s in NIFTI_SUFFIXES if s != (ext or suffix)]
    return [[stem.format(case=case, modality=mod) + (s or "") for s in suffixes] for mod in layout.modalities or ("",)]


def _walk(folder: Path) -> dict[str, Any]:
    """Every entry below `folder`: normalised full path -> (path below the folder, walk.Found)."""
    return {os.path.normpath(folder / f.path): (f.path, f) for f in walk_files(folder)}


def find_cases(images: Path, labels: Path, layout: Any) -> tuple[list[Case], list[dict]]:
    """The cases of `layout` (sorted by case id) and a reject per file below the folders that no case uses."""
    label_files, image_files = _walk(labels), _walk(images)
    regex = pattern_regex(layout.label_pattern)
    by_case: dict[str, list[tuple[str, str | None]]] = {}
    for full, (rel, found) in sorted(label_files.items(), key=lambda kv: kv[1][0]):
        m = regex.fullmatch(rel)
        if m and found.problem is None:
            by_case.setdefault(m["case"], []).append((full, m.groupdict().get("ext")))
    cases, used, rejects = [], set(), []
    for case, files in sorted(by_case.items()):
        (label, ext), *others = files
        rejects += [stage_reject(p, "duplicate-case", f"a second label file of case {case}: the case is read from "
                                 f"{label}; remove one of them", volume=case) for p, _ in others]
        names = []
        for tries in _image_names(layout, case, ext):
            present = [str(images / t) for t in tries if os.path.normpath(images / t) in image_files
                       and image_files[os.path.normpath(images / t)][1].problem is None]
            names.append(present[0] if present else str(images / tries[0]))
        cases.append(Case(case, tuple(names), label))
        used |= {os.path.normpath(p) for p in (label, *names)} | {os.path.normpath(p) for p, _ in others}
    known = {c.case for c in cases}
    for full, (rel, found) in sorted({**image_files, **label_files}.items()):
        if full not in used:
            rejects.append(_unused(full, rel, found, full in image_files, layout, known, labels))
    return cases, rejects


def _unused(full: str, rel: str, found, under_images: bool, layout: Any, cases: set, labels: Path) -> dict:
    """The reject of a file below --images or --labels that no case uses."""
    if found.problem is not None:
        return stage_reject(full, *found.problem)
    m = pattern_regex(layout.image_pattern, "--image-pattern").fullmatch(rel) if under_images else None
    if m is None:
        return stage_reject(full, "unmatched", f"matches neither the image pattern {layout.image_pattern!r} nor the "
                                               f"label pattern {layout.label_pattern!r}; no case uses it")
    case, modality = m["case"], m.groupdict().get("modality")
    if layout.modalities and modality not in layout.modalities:
        return stage_reject(full, "unused-modality", f"modality {modality!r} is not one of --modalities "
                                                     f"{','.join(layout.modalities)}", volume=case)
    if case in cases:
        return stage_reject(full, "duplicate-case", f"a second image file of case {case} (another suffix); remove "
                                                    "one of them", volume=case)
    return stage_reject(full, "no-label", f"no label file of case {case} below {labels} (label pattern "
                                          f"{layout.label_pattern!r})", volume=case)
