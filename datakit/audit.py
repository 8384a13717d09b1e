"""`tlx audit DATA`: search every shareable file of a dataset for PHI before it is shared.

    report = audit_dataset("data/", deny_list="names.txt", progress=progress)
    report.clean                 # True: nothing found
    report.findings              # [Finding(file, where, check)]: the first MAX_LISTED of each (file, check)
    report.counts                # (file, check) -> how many
    report.checked, report.skipped    # files audited (as findings name them); files not audited, with why

What is read (datakit.audit_files, one function per kind of file; audit_rules, what a string
is checked for):
- slices.parquet, volumes.parquet: every string value, the column names and the file's
  metadata; for ct-slices also every column against what the format says it holds
  (pseudonyms, codes, classes, split names, hashes), and text columns the format does not
  define; date or time columns;
- manifest.json: every key and string value (ct-slices: against what each field holds);
- shards: every tar member's name and header (owner names, ids, mtime, link names, pax
  records), and every line of the .idx files;
- any other file under the dataset folder (logs, notes): line by line; binary ones cannot
  be read and are findings, as are temporary files of an unfinished write and links;
- every file's path.
Not read: `work/`, `rejects.parquet` and the writer's lock `.tlx.lock`, which are operator-side
(they hold source paths) and never shared (docs/dataset-format.md; `tlx pack` leaves work/ out,
empties rejects.parquet's source columns and runs this audit on its copy); pixels (tlx does no
OCR: burned-in text is handled by datakit.burned_in's flags).

Findings never quote the value: a file, a place in it and what is wrong with what stands
there, so a report can be passed on without passing on what it found.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from datakit.audit_rules import TextChecker, as_strings, load_deny_list
from tlxcore.atomic import is_partial
from tlxcore.lock import LOCK_NAME
from tlxcore.progress import Progress, Tick, silent
from tlxcore.runtime import default_workers

OPERATOR_SIDE = {"work": "operator-side intermediates (source paths); never shared",
                 "rejects.parquet": "the operator's report of rejected files (source paths); never shared",
                 LOCK_NAME: "the writer's lock (process id and host of the last writer); never shared"}
MAX_LISTED = 20          # findings kept per (file, check); the rest are counted
FLUSH_STRINGS = 1 << 20  # strings checked at once
MIN_POOL_TARS = 64       # fewer tars are read here: starting worker processes would cost more


@dataclass(frozen=True)
class Finding:
    file: str            # relative to the dataset folder
    where: str           # e.g. "column patient, row 3", "member 7 name", "line 2", "$.warnings[0]"
    check: str           # e.g. "not a pseudonym (16 hex digits)", "a DICOM-looking date", "deny-list line 4"


@dataclass
class AuditReport:
    dataset: str
    kind: str
    checked: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    strings: int = 0     # strings checked

    @property
    def clean(self) -> bool:
        return not self.counts

    def add(self, file: str, where: str, check: str) -> None:
        self.counts[(file, check)] += 1
        if self.counts[(file, check)] <= MAX_LISTED:
            self.findings.append(Finding(file, where, check))


class AuditContext:
    """What the per-file audits share: the dataset's kind, classes and members, the checker, the report."""

    def __init__(self, root: Path, manifest: dict, checker: TextChecker, report: AuditReport):
        self.root, self.manifest, self.checker, self.report = root, manifest, checker, report
        self.kind = manifest.get("kind", "")
        self.classes = list(manifest.get("classes") or [])
        self.exts = sorted(manifest.get("members") or {})
        self.names: dict[str, str] = {}   # relative path -> how findings name the file (audit_files.audit_paths)
        self._pending: dict = {}
        self._pending_strings = 0

    def check(self, file: str, values, expect=None, where=lambda i: f"value {i}") -> None:
        """Check strings (a list or a pyarrow array): a finding per problem, located by `where(i)`.

        Strings wait in a buffer per `expect` and are checked FLUSH_STRINGS at a time (and at
        `flush`): each pyarrow regex call compiles its pattern, which costs more than matching
        the few hundred member names of a shard. `where` must not depend on later state."""
        values = as_strings(values)
        if not len(values):
            return
        self.report.strings += len(values)
        self._pending.setdefault(expect, []).append((values, file, where))
        self._pending_strings += len(values)
        if self._pending_strings >= FLUSH_STRINGS:
            self.flush()

    def flush(self) -> None:
        for expect, parts in self._pending.items():
            arrays = [a for a, _, _ in parts]
            if any(pa.types.is_large_string(a.type) for a in arrays):
                arrays = [a.cast(pa.large_string()) for a in arrays]
            starts = np.cumsum([0] + [len(a) for a in arrays])
            for i, check in self.checker.check(pa.concat_arrays(arrays), expect):
                part = int(np.searchsorted(starts, i, side="right")) - 1
                _, file, where = parts[part]
                self.report.add(file, where(i - int(starts[part])), check)
        self._pending, self._pending_strings = {}, 0


def _files(root: Path, report: AuditReport) -> list[tuple[str, Path]]:
    """(relative path, path) of every file to audit, sorted; operator-side entries go to report.skipped,
    links are findings (what they point at is not the dataset's to vouch for)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        rel_dir = Path(dirpath).relative_to(root)
        for d in sorted(dirnames):
            if (rel_dir / d).as_posix() in OPERATOR_SIDE:
                report.skipped[f"{d}/"] = OPERATOR_SIDE[d]
                dirnames.remove(d)
            elif os.path.islink(os.path.join(dirpath, d)):
                report.add((rel_dir / d).as_posix(), "file", "a link to a folder, not part of the dataset format")
        for name in filenames:
            rel = (rel_dir / name).as_posix()
            if rel in OPERATOR_SIDE:
                report.skipped[rel] = OPERATOR_SIDE[rel]
            elif os.path.islink(os.path.join(dirpath, name)):
                report.add(rel, "file", "a link, not part of the dataset format")
            else:
                out.append((rel, Path(dirpath) / name))
    return sorted(out)


def audit_dataset(dataset_dir: str | os.PathLike, deny_list: str | os.PathLike | None = None,
                  workers: int | None = None, progress: Progress = silent) -> AuditReport:
    """Audit a finished dataset (see the module docstring). DatakitError (one line) for a folder that
    is not one, or a deny list that cannot be used. The tars' headers are read by `workers` processes
    (default: the cores this process may use; one for fewer than MIN_POOL_TARS tars). `progress` gets
    Tick("audit", files done, files)."""
    from datakit import audit_files as af
    from datakit.manifest import read_manifest
    from datakit.write_pool import run_tasks

    root = Path(dataset_dir)
    deny = load_deny_list(deny_list) if deny_list is not None else None
    manifest = read_manifest(root)
    report = AuditReport(dataset=str(root), kind=manifest.get("kind", ""))
    ctx = AuditContext(root, manifest, TextChecker(deny), report)
    files = _files(root, report)
    af.audit_paths(ctx, [rel for rel, _ in files])
    progress(Tick("audit", 0, len(files), "files"))
    tars = [(rel, path) for rel, path in files if _is_tar(rel, path)]
    workers = 1 if len(tars) < MIN_POOL_TARS else max(1, workers or default_workers())
    done = 0
    for rel, headers in run_tasks(_read_tar, tars, workers):
        af.audit_tar(ctx, rel, headers)
        report.checked.append(ctx.names[rel])
        done += 1
        progress(Tick("audit", done, len(files), "files"))
    for rel, path in files:
        if _is_tar(rel, path):
            continue
        if is_partial(path):
            report.add(ctx.names[rel], "file", "a temporary file of an unfinished write (delete it before sharing)")
        elif rel == "manifest.json":
            af.audit_manifest(ctx, rel, path)
        elif rel in af.TABLES:
            af.audit_parquet(ctx, rel, path)
        elif rel.startswith("shards/") and rel.endswith(".idx"):
            af.audit_idx(ctx, rel, path)
        else:
            af.audit_text(ctx, rel, path)
        report.checked.append(ctx.names[rel])
        done += 1
        progress(Tick("audit", done, len(files), "files"))
    ctx.flush()
    report.checked.sort()
    report.findings.sort(key=lambda f: (f.file, f.check))   # the pool returns tars in completion order
    return report


def _is_tar(rel: str, path: Path) -> bool:
    return rel.startswith("shards/") and rel.endswith(".tar") and not is_partial(path)


def _read_tar(task: tuple[str, Path]):
    from datakit.audit_files import read_tar_headers

    rel, path = task
    return rel, read_tar_headers(str(path))
