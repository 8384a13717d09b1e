"""`tlx pack DATA OUT` (library: datakit.pack): the shareable copy, verified and audited before it exists."""
from __future__ import annotations

import click

from cli.datakit_cmds import WORKERS


@click.command(epilog="""\b
Example:
  tlx pack data/ share/ct-v1 --deny-list names.txt
  tar -cf ct-v1.tar -C share ct-v1                   # what leaves the hospital
""")
@click.argument("dataset_dir", type=click.Path(file_okay=False, path_type=str))
@click.argument("out", type=click.Path(path_type=str))
@click.option("--deny-list", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="UTF-8 file of names and ids (one per line) that must appear nowhere (as in tlx audit).")
@WORKERS
def pack(dataset_dir, out, deny_list, workers):
    """Copy DATASET_DIR's shareable files to OUT: no work/, and rejects.parquet without its source paths and
    reasons. OUT appears only after `tlx verify` and `tlx audit` pass on the copy."""
    from datakit.pack import pack_dataset
    from tlxcore.progress import drawn

    with drawn() as progress:
        report = pack_dataset(dataset_dir, out, deny_list=deny_list, workers=workers, progress=progress)
    click.echo(f"packed {len(report.files)} files into {out} ({report.linked} hard-linked, "
               f"{report.copied} copied); tlx verify and tlx audit passed "
               f"({report.audit.strings} strings{', with the deny list' if deny_list else ''}). "
               f"Not included: work/, source paths and reasons of rejects.parquet")
