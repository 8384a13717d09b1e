"""`tlx show DATA|RUN` (libraries: datakit.show for datasets, trainer.show_views for pretraining runs)."""
from __future__ import annotations

from pathlib import Path

import click


@click.command(epilog="""\b
Examples:
  tlx show data/ --out data.png                           # 4 samples per split and label
  tlx show data/ --out lungs.png --split train --label thorax --window -1000 400 --per-label 8
  tlx show data/ --out one.png --key 3f9a0c1e2b4d5a6f-0042
  tlx show runs/pretrain/ct --out views.png               # the slices and the two views SimCLR trains on
""")
@click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="PNG file to write.")
@click.option("--split", "splits", multiple=True, help="Splits to show (repeatable) [default: every non-empty one].")
@click.option("--label", "labels", multiple=True, help="Labels (classes) to show (repeatable) [default: all].")
@click.option("--key", "keys", multiple=True, help="Show these samples only (repeatable).")
@click.option("--per-label", type=click.IntRange(min=1), default=4, show_default=True,
              help="Samples per split and label (drawn with --seed).")
@click.option("--window", type=(float, float), default=None, metavar="LOW HIGH",
              help="HU window of CT pixels [default: each image scaled to its own min and max].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--samples", type=click.IntRange(min=1), default=8, show_default=True,
              help="RUN: rows of (slice, view 1, view 2).")
@click.option("--epoch", type=click.IntRange(min=0), default=0, show_default=True, help="RUN: whose views.")
@click.option("--data", type=click.Path(exists=True, file_okay=False), default=None,
              help="RUN: the dataset, where the run's config.json path does not reach it from here.")
def show(path, out, splits, labels, keys, per_label, window, seed, samples, epoch, data):
    """Draw a dataset's samples (a folder with manifest.json) or a pretraining run's views (a folder with
    config.json) into a PNG grid, each image captioned with its key and label."""
    if (path / "manifest.json").exists():
        from datakit.show import show_dataset

        shown = show_dataset(path, out, splits=list(splits) or None, labels=list(labels) or None,
                             keys=list(keys) or None, per_label=per_label, window=window, seed=seed)
        click.echo(f"wrote {shown.path}: {sum(len(k) for _, _, k in shown.rows)} samples in {len(shown.rows)} rows "
                   f"(split / label)")
        return
    from trainer.show_views import show_views

    written = show_views(path, out, samples=samples, epoch=epoch, data=data)
    click.echo(f"wrote {written}: {samples} rows of slice, view 1, view 2 (epoch {epoch})")
