"""The inputs of `tlx convert image-mask`: images, their masks (image files or RLE strings in a CSV) and
field-of-view masks, found by file patterns below one root, checked before anything is written.

    found = find_pairs(root, layout)             # pairs by (id, split value), and a reject per other file
    sizes = check_sizes(found.pairs, layout)     # DatakitError: a mask not of its image's size, an RLE run
                                                 # beyond its image

Patterns are paths below the root with `{id}` (the image id, required), `{split}` (a folder or
word naming the source's split, mapped by the layout's split map), `*` (any characters within
one folder or file name) and `**/` (any folders); a placeholder used twice must match the same
text. Each mask pattern names its class (`lung=ManualMask/leftMask/{id}.png`); patterns of one
class are united (Montgomery's left and right lung masks).

Rejects (docs/datakit-input.md): `no-mask` (an image lacking one of its mask or FOV files, or an
RLE row), `no-image` (a mask or RLE id without its image), `unmatched` (a file no pattern
matches), `not-a-file` / `unreadable` (datakit.walk's).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from datakit.convert.builder import stage_reject
from datakit.convert.rle import RleError, run_starts
from datakit.convert.tables import read_csv
from datakit.errors import DatakitError
from datakit.walk import walk_files

DICOM_SUFFIXES = (".dcm", ".dicom")


@dataclass(frozen=True)
class MaskLayout:
    image_pattern: str
    mask_patterns: tuple[tuple[str, str], ...] = ()   # (class, pattern)
    fov_pattern: str | None = None
    rle: str | None = None                            # CSV of run-length strings
    rle_id_col: str = "ImageId"
    rle_col: str = "EncodedPixels"
    rle_class: str = "foreground"
    rle_form: str = "relative"
    rle_order: str = "column"
    split_map: tuple[tuple[str, str], ...] = ()       # {split} value -> train | val | test


@dataclass(frozen=True)
class Pair:
    id: str
    split_value: str | None
    image: str                                        # path below the root
    masks: tuple[tuple[str, str], ...] = ()           # (class, path below the root)
    fov: str | None = None
    rle: tuple[str, ...] = ()                         # the CSV's strings for this image (united)

    @property
    def dicom(self) -> bool:
        return self.image.lower().endswith(DICOM_SUFFIXES)


@dataclass
class Found:
    pairs: list[Pair]
    rejects: list[dict] = field(default_factory=list)


def pattern_regex(pattern: str, option: str) -> re.Pattern:
    """A pattern as a regex with groups `id` and `split` (repeats must agree)."""
    if "{id}" not in pattern:
        raise DatakitError(f"{option} {pattern!r} must contain {{id}}")
    regex, seen = "", set()
    for part in re.split(r"(\{id\}|\{split\}|\*\*/|\*)", pattern):
        if part in ("{id}", "{split}"):
            name = part[1:-1]
            regex += f"(?P={name})" if name in seen else f"(?P<{name}>[^/]+?)"
            seen.add(name)
        elif part == "**/":
            regex += "(?:[^/]+/)*"
        elif part == "*":
            regex += "[^/]*"
        else:
            regex += re.escape(part)
    return re.compile(regex)


def _index(files: dict[str, object], pattern: str, option: str) -> dict[tuple, str]:
    """(id, split value) -> path of every file the pattern matches; two files of one id are an error."""
    regex, out = pattern_regex(pattern, option), {}
    for rel in sorted(files):
        m = regex.fullmatch(rel)
        if m:
            key = (m["id"], m.groupdict().get("split"))
            if key in out:
                raise DatakitError(f"{option} {pattern!r} matches two files of id {key[0]!r}: {out[key]} and {rel}; "
                                   f"make the pattern more specific")
            out[key] = rel
    return out


def find_pairs(root: Path, layout: MaskLayout) -> Found:
    """Every image with its masks, by the layout's patterns; a reject for every other file below root."""
    if not root.is_dir():
        raise DatakitError(f"--root {root} is not a folder")
    walked = {f.path: f for f in walk_files(root)}
    files = {rel: f for rel, f in walked.items() if f.problem is None}
    images = _index(files, layout.image_pattern, "--image-pattern")
    masks = [(cls, _index(files, pat, "--mask"), pat) for cls, pat in layout.mask_patterns]
    fov = _index(files, layout.fov_pattern, "--fov-pattern") if layout.fov_pattern else None
    rle = _rle_rows(layout) if layout.rle else None
    found, used = Found([]), set()
    for key, image in sorted(images.items()):
        others = [index[key] for _, index, _ in masks if key in index] + ([fov[key]] if fov and key in fov else [])
        lacking = [pat for _, index, pat in masks if key not in index]
        lacking += [layout.fov_pattern] if fov is not None and key not in fov else []
        lacking += [f"a row of {Path(layout.rle).name}"] if rle is not None and key[0] not in rle else []
        used |= {image, *others}
        if lacking:
            found.rejects += [stage_reject(rel, "no-mask", f"image {key[0]} has no {lacking[0]}")
                              for rel in (image, *others)]
            continue
        found.pairs.append(Pair(key[0], key[1], image, tuple((cls, index[key]) for cls, index, _ in masks),
                                fov[key] if fov is not None else None,
                                tuple(rle[key[0]]) if rle is not None else ()))
    ids = {k[0] for k in images}
    for index in [i for _, i, _ in masks] + ([fov] if fov is not None else []):
        for key, rel in sorted(index.items()):
            if key not in images:
                found.rejects.append(stage_reject(rel, "no-image", f"no image of id {key[0]} matches "
                                                                   f"{layout.image_pattern!r}"))
                used.add(rel)
    for missing in sorted(set(rle or ()) - ids):
        found.rejects.append(stage_reject(missing, "no-image", f"{Path(layout.rle).name} names id {missing} but no "
                                                               f"image of it matches {layout.image_pattern!r}"))
    for rel, f in sorted(walked.items()):
        if f.problem is not None:
            found.rejects.append(stage_reject(rel, *f.problem))
        elif rel not in used and not _is(rel, layout.rle, root):
            found.rejects.append(stage_reject(rel, "unmatched", "no --image-pattern, --mask or --fov-pattern "
                                                                "matches it"))
    return found


def _is(rel: str, path: str | None, root: Path) -> bool:
    """Whether `rel` (below root) is the file `path` (the RLE CSV may lie in the root)."""
    return path is not None and os.path.abspath(root / rel) == os.path.abspath(path)


def _rle_rows(layout: MaskLayout) -> dict[str, list[str]]:
    """id -> its run-length strings (several rows of one id are united, as SIIM-ACR lists several regions)."""
    out: dict[str, list[str]] = {}
    for row in read_csv(Path(layout.rle), "--rle", [layout.rle_id_col, layout.rle_col]):
        out.setdefault(row[layout.rle_id_col].strip(), []).append(row[layout.rle_col].strip())
    return out


def check_rle(pair: Pair, height: int, width: int, layout: MaskLayout) -> None:
    """DatakitError when a string of the pair is not pairs of numbers or has a run beyond its image."""
    for n, text in enumerate(pair.rle, 1):
        try:
            runs = run_starts(text, layout.rle_form)
        except RleError as exc:
            raise DatakitError(f"--rle {layout.rle}: string {n} of image {pair.id} cannot be read: {exc}") from None
        if len(runs) and int((runs[:, 0] + runs[:, 1]).max()) > height * width:
            end = int((runs[:, 0] + runs[:, 1]).max())
            raise DatakitError(f"--rle {layout.rle}: string {n} of image {pair.id} runs to pixel {end}, longer than "
                               f"the {height}x{width} image ({height * width} pixels); check --rle-form and the image")
