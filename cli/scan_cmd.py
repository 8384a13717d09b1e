"""`tlx scan`: read DICOM headers into DATASET_DIR/work/index.parquet (library: datakit.scan)."""
from __future__ import annotations

import click

from cli.datakit_cmds import WORKERS, BareResumeCommand, resume_option


@click.command(cls=BareResumeCommand, epilog="""\b
Example:
  export TLX_SECRET=$(openssl rand -hex 32)      # key for patient pseudonyms; keep it
  tlx scan --dicom-root /pacs/export --out data/
  tlx scan --dicom-root cohort/ --out data/ --workers 8 --label-rules my_rules.toml
""")
@click.option("--dicom-root", required=True, type=click.Path(file_okay=False, path_type=str),
              help="Folder to walk: any depth, any file names.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=str),
              help="Dataset folder; the index goes to OUT/work/index.parquet.")
@WORKERS
@click.option("--secret-file", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="File holding the pseudonym secret (default: env TLX_SECRET).")
@click.option("--label-rules", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="Label rules TOML replacing the shipped datakit/label_rules.toml.")
@resume_option("tlx scan")
def scan(dicom_root, out_dir, workers, secret_file, label_rules, resume):
    """Stage 1: read every file's DICOM header (never its pixels) into work/index.parquet.

    Every file found gets a row: usable CT slices with label, pseudonyms and geometry;
    everything else with a reject code and reason. work/scan.json records the DICOM root
    (for tlx write) and the label rules' name and sha256 (for the manifest). With --resume
    auto a folder holding an earlier scan of the same root and rules is scanned again.
    """
    from datakit.scan import scan as run_scan
    from datakit.secret import load_secret
    from tlxcore.progress import drawn

    secret = load_secret(secret_file)
    with drawn() as progress:
        summary = run_scan(dicom_root, out_dir, workers=workers, secret=secret, label_rules=label_rules,
                           resume=resume, progress=progress)
    print_scan_summary(summary)


def print_scan_summary(summary) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"scanned {summary.files} files in {summary.seconds:.1f} s on {summary.workers} worker(s): "
                  f"{summary.dicom} DICOM, {summary.candidates} CT slice candidates "
                  f"({summary.patients} patients, {summary.series} series)")
    table = Table()
    table.add_column("outcome")
    table.add_column("files", justify="right")
    for label, n in summary.by_label.items():
        table.add_row(f"candidate: {label}", str(n))
    for code, n in summary.by_code.items():
        table.add_row(f"rejected: {code}", str(n))
    console.print(table)
    console.print(f"index: {summary.index_path}; DICOM root and label rules recorded in "
                  f"{summary.index_path.with_name('scan.json')}")
