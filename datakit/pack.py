"""`tlx pack DATA OUT`: the shareable copy of a dataset, checked before it exists.

    report = pack_dataset("data/", "share/ct-v1", deny_list="names.txt", progress=progress)
    report.files, report.linked, report.audit        # what went in, how, and the audit of the copy

What goes in: manifest.json, slices.parquet, volumes.parquet and shards/ as they are (hard links where the
file system allows, which costs no space and is safe because tlx never rewrites a finished file in place;
copies otherwise), and rejects.parquet with its source-specific columns emptied: `path` and `duplicate_of`
(paths under the DICOM root, which may hold names) and `reason` (a sentence that may quote a header value)
become null, so the rows, their volume, stage and code still add up in `tlx verify` (kept + rejected = found).
What stays out: work/ (index, plan, staging: source paths), the writer's lock, temporary files.

The copy is assembled in a hidden folder beside OUT, then `tlx verify` (without decoding) and `tlx audit`
run on it; OUT appears only when both pass. Otherwise the folder is removed and the error names what failed.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from datakit.audit import AuditReport, audit_dataset
from datakit.errors import DatakitError
from datakit.manifest import Layout, read_manifest
from datakit.verify import verify_dataset
from tlxcore.progress import Progress, Tick, silent

KEPT_REJECT_COLUMNS = ("volume", "stage", "code")   # the rest of rejects.parquet is nulled (see above)


@dataclass
class PackReport:
    out: str
    files: list[str] = field(default_factory=list)   # relative paths in the pack
    linked: int = 0                                  # of them hard links
    copied: int = 0                                  # copies (rejects.parquet, rewritten, is neither)
    audit: AuditReport | None = None


def pack_dataset(data: str | os.PathLike, out: str | os.PathLike, deny_list: str | os.PathLike | None = None,
                 workers: int | None = None, progress: Progress = silent) -> PackReport:
    src, out = Layout(data), Path(out)
    read_manifest(src.root)   # a finished dataset, in a format version this tlx reads
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DatakitError(f"{out} exists and is not an empty folder; give a new folder for the pack")
    if out.resolve().is_relative_to(src.root.resolve()):
        raise DatakitError(f"{out} is inside the dataset {src.root}; give a folder outside it")
    tmp = out.parent / f".{out.name}.packing-{os.getpid()}"
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        report = _assemble(src, Layout(tmp), progress)
        _check(tmp, out, report, deny_list, workers, progress)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        out.rmdir()   # the empty folder the user named
    tmp.rename(out)
    return report


def _assemble(src: Layout, dst: Layout, progress: Progress) -> PackReport:
    report = PackReport(str(dst.root))
    files = [p for p in (src.manifest, src.slices, src.volumes) if p.exists()]
    files += sorted(p for p in src.shards.glob("*/*") if p.is_file() and ".partial-" not in p.name)
    progress(Tick("pack", 0, len(files) + 1, "files"))
    for n, path in enumerate(files, 1):
        rel = path.relative_to(src.root)
        target = dst.root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
            report.linked += 1
        except OSError:   # another file system, or links not allowed: copy
            shutil.copy2(path, target)
            report.copied += 1
        report.files.append(rel.as_posix())
        progress(Tick("pack", n, len(files) + 1, "files"))
    if src.rejects.exists():
        rejects = pl.read_parquet(src.rejects)
        rejects.with_columns(pl.lit(None, dtype).alias(name) for name, dtype in rejects.schema.items()
                             if name not in KEPT_REJECT_COLUMNS).write_parquet(dst.rejects)
        report.files.append("rejects.parquet")
    progress(Tick("pack", len(files) + 1, len(files) + 1, "files"))
    return report


def _check(tmp: Path, out: Path, report: PackReport, deny_list, workers, progress: Progress) -> None:
    verified = verify_dataset(tmp, workers=workers, progress=progress)
    if not verified.ok:
        raise DatakitError(f"the pack of {out} fails tlx verify ({len(verified.problems)} problems, first: "
                           f"{verified.problems[0].replace(str(tmp), str(out))}); nothing was written")
    report.audit = audit_dataset(tmp, deny_list=deny_list, workers=workers, progress=progress)
    if not report.audit.clean:
        first = report.audit.findings[0]
        raise DatakitError(f"tlx audit found {sum(report.audit.counts.values())} problems in the pack "
                           f"(first: {first.file}, {first.where}: {first.check}); nothing was written. "
                           f"Run `tlx audit` on the dataset for the full list")
