"""`tlx audit DATA [--deny-list FILE]` (library: datakit.audit). Prints where, never what, it found."""
from __future__ import annotations

import click

from cli.datakit_cmds import WORKERS


@click.command(epilog="""\b
Example:
  tlx audit data/                                   # dates, UIDs, values that are not what the format says
  tlx audit data/ --deny-list names.txt             # also every name or id of names.txt (one per line)
""")
@click.argument("dataset_dir", type=click.Path(file_okay=False, path_type=str))
@click.option("--deny-list", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="UTF-8 file of names and ids (one per line, # comments) that must appear nowhere.")
@WORKERS
@click.pass_context
def audit(ctx, dataset_dir, deny_list, workers):
    """Search every shareable file of a dataset for PHI; exit 1 listing where, 0 if none.

    Reads slices.parquet and volumes.parquet (every string, against what its column holds),
    manifest.json, the shards' member names and tar headers, the .idx files and any other file
    under DATASET_DIR (logs), for values that are not the pseudonym, code or number the format
    puts there, DICOM-looking dates and UIDs, and the entries of --deny-list. Not read: work/
    and rejects.parquet (operator-side, never shared) and pixels (no OCR). Findings name the
    file and place, never the value.
    """
    from rich.console import Console

    from datakit.audit import MAX_LISTED, audit_dataset
    from tlxcore.progress import drawn

    with drawn() as progress:
        report = audit_dataset(dataset_dir, deny_list=deny_list, workers=workers, progress=progress)
    console = Console(highlight=False)
    out = lambda text: console.print(text, markup=False)
    not_read = "; ".join(f"{name}: {why}" for name, why in sorted(report.skipped.items()))
    if report.clean:
        out(f"audit passed: {len(report.checked)} files of {report.dataset} ({report.kind}), {report.strings} "
            f"strings, nothing found{' (with the deny list)' if deny_list else ''}. Not read: {not_read or 'none'}; "
            "pixels (no OCR)")
        return
    total = sum(report.counts.values())
    out(f"audit FAILED: {total} finding(s) in {report.dataset} ({len(report.checked)} files read):")
    for (file, check), n in sorted(report.counts.items()):
        places = [f.where for f in report.findings if (f.file, f.check) == (file, check)][:3]
        out(f"  {file}: {check}: {n} ({'; '.join(places)}{'; ...' if n > len(places) else ''})")
    out(f"Values are never shown; AuditReport.findings keeps {MAX_LISTED} places per file and finding. "
        f"Not read: {not_read}")
    ctx.exit(1)
